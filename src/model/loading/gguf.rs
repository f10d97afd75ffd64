//! GGUF base models (llama architecture, which Mistral GGUFs use too): the config from the
//! metadata, the tensors under their Hugging Face names and shapes.
//!
//! llama.cpp's converter permutes the rows of `attn_q` and `attn_k` within each head (its RoPE
//! pairs adjacent features, Hugging Face's pairs the two halves). Those rows are put back in
//! Hugging Face order at load, so the decoder's rotate-half RoPE applies unchanged and a LoRA
//! trained on a GGUF base has Hugging Face's math, names and shapes. GGML blocks run along a
//! row (the input dimension), so a row permutation moves whole rows of bytes: quantized q and k
//! stay quantized, bit for bit.

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::model::architecture::{Architecture, LayerTensor, ModelTensor};
use crate::model::config::{ModelConfig, RopeScaling};
use crate::model::frozen::{FrozenWeight, LoadOptions, WeightSource};
use crate::model::projection::{PerProjection, Projection};
use crate::ops::QuantizedWeight;

/// Is `path` a GGUF file (by extension or magic bytes)?
pub fn is_gguf(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// The GGUF name of a Hugging Face tensor name (the table is `architecture.rs`).
pub fn gguf_name(hf: &str) -> Option<String> {
    ModelTensor::from_hf_name(hf).map(ModelTensor::gguf_name)
}

/// An open GGUF file: its metadata and tensor directory (the data stays on disk, mapped).
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    mmap: memmap2::Mmap,
    arch: String,
    /// The family `arch` names, if it is one lora-dpo reads.
    family: Option<Architecture>,
    /// Heads of q and of k.
    heads: (usize, usize),
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        // SAFETY: mapped read-only; the file must not be truncated while we run.
        let mmap = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("{}: cannot map", path.display()))?;
        let content = Content::read(&mut std::io::Cursor::new(&mmap[..]))
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("{}: not a valid GGUF file", path.display()))?;
        let arch = match content.metadata.get("general.architecture") {
            Some(v) => v.to_string().map_err(|e| anyhow::anyhow!("{e}"))?.clone(),
            None => bail!(
                "{}: GGUF metadata has no general.architecture",
                path.display()
            ),
        };
        let family = Architecture::from_gguf_arch(&arch);
        let mut me = Self {
            path: path.to_path_buf(),
            content,
            mmap,
            arch,
            family,
            heads: (0, 0),
        };
        if family.is_some() {
            let h = me.usize_key("attention.head_count")?;
            let kv = me.optional_usize("attention.head_count_kv")?.unwrap_or(h);
            me.heads = (h, kv);
        }
        Ok(me)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &std::collections::HashMap<String, Value> {
        &self.content.metadata
    }

    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.arch)
    }

    fn optional_usize(&self, key: &str) -> Result<Option<usize>> {
        let full = self.key(key);
        let Some(v) = self.content.metadata.get(&full) else {
            return Ok(None);
        };
        let n = match v {
            Value::I32(x) => *x as i64,
            Value::I64(x) => *x,
            Value::I16(x) => *x as i64,
            Value::I8(x) => *x as i64,
            other => other
                .to_u64()
                .map_err(|e| anyhow::anyhow!("{}: metadata `{full}`: {e}", self.path.display()))?
                as i64,
        };
        if n < 0 {
            bail!("{}: metadata `{full}` is negative", self.path.display());
        }
        Ok(Some(n as usize))
    }

    fn usize_key(&self, key: &str) -> Result<usize> {
        self.optional_usize(key)?.with_context(|| {
            format!(
                "{}: GGUF metadata has no `{}`",
                self.path.display(),
                self.key(key)
            )
        })
    }

    /// A float key, rounded through its shortest f32 spelling (GGUF stores f32: 1e-5 reads back
    /// as 9.99999974e-6 otherwise).
    fn optional_f64(&self, key: &str) -> Result<Option<f64>> {
        let full = self.key(key);
        Ok(match self.content.metadata.get(&full) {
            None => None,
            Some(Value::F32(x)) => Some(format!("{x}").parse::<f64>()?),
            Some(Value::F64(x)) => Some(*x),
            Some(other) => bail!(
                "{}: metadata `{full}` is not a float: {other:?}",
                self.path.display()
            ),
        })
    }

    fn token_id(&self, key: &str) -> Option<u32> {
        self.content.metadata.get(key).and_then(|v| {
            v.to_u32()
                .ok()
                .or_else(|| v.to_u64().ok().map(|x| x as u32))
        })
    }

    /// The model configuration the metadata describes.
    pub fn config(&self) -> Result<ModelConfig> {
        let p = self.path.display();
        let Some(architecture) = self.family else {
            bail!(
                "{p}: GGUF architecture `{}` is not supported (supported: {}; Mistral GGUFs \
                 are written as llama)",
                self.arch,
                Architecture::gguf_archs()
            );
        };
        let family = architecture.family();
        let hidden_size = self.usize_key("embedding_length")?;
        let num_attention_heads = self.heads.0;
        let num_key_value_heads = self.heads.1;
        if num_attention_heads == 0
            || num_key_value_heads == 0
            || !num_attention_heads.is_multiple_of(num_key_value_heads)
        {
            bail!(
                "{p}: {num_key_value_heads} key/value heads do not divide {num_attention_heads} \
                 attention heads"
            );
        }
        let head_dim = match self.optional_usize("attention.key_length")? {
            Some(d) => d,
            None => hidden_size / num_attention_heads,
        };
        let vocab_size = match self.content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims()[0],
            None => bail!("{p}: tensor `token_embd.weight` not found"),
        };
        let rope_scaling = self.rope_scaling()?;
        let eos = self.token_id("tokenizer.ggml.eos_token_id");
        let has = |t: LayerTensor| {
            let name = ModelTensor::Layer(0, t).gguf_name();
            self.content.tensor_infos.contains_key(&name)
        };
        // Biases as the file has them: llama.cpp writes what the checkpoint had.
        let biased = PerProjection::from_fn(|p| has(LayerTensor::Bias(p)));
        if family.gguf_permutes_qk && (biased[Projection::Q] || biased[Projection::K]) {
            bail!(
                "{p}: q/k biases in a `{}` GGUF are not supported (their rows are permuted)",
                self.arch
            );
        }
        let config = ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: self.usize_key("feed_forward_length")?,
            num_hidden_layers: self.usize_key("block_count")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: self
                .optional_f64("attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-5),
            rope_theta: self.optional_f64("rope.freq_base")?.unwrap_or(10000.0),
            rope_scaling,
            // llama.cpp's llama, qwen2 and qwen3 attend to the whole context.
            layer_windows: vec![None; self.usize_key("block_count")?],
            biased,
            qk_norm: family.qk_norm,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            max_position_embeddings: self.optional_usize("context_length")?.unwrap_or(4096),
            bos_token_id: self.token_id("tokenizer.ggml.bos_token_id"),
            eos_token_ids: eos.into_iter().collect(),
        };
        if !config.head_dim.is_multiple_of(2) || config.head_dim == 0 {
            bail!("{p}: head dimension {} must be even", config.head_dim);
        }
        if let RopeScaling::Factors(f) = &config.rope_scaling {
            if f.len() != config.head_dim / 2 {
                bail!(
                    "{p}: `rope_freqs.weight` has {} factors, expected head_dim / 2 = {}",
                    f.len(),
                    config.head_dim / 2
                );
            }
        }
        if let Some(rot) = self.optional_usize("rope.dimension_count")? {
            if rot != config.head_dim {
                bail!(
                    "{p}: partial rotary embeddings ({}.rope.dimension_count = {rot}, head \
                     dimension {}) are not supported",
                    self.arch,
                    config.head_dim
                );
            }
        }
        Ok(config)
    }

    fn rope_scaling(&self) -> Result<RopeScaling> {
        let p = self.path.display();
        if let Some(info) = self.content.tensor_infos.get("rope_freqs.weight") {
            // Llama 3.1-style scaling, which llama.cpp's converter writes as one divisor per
            // frequency.
            let q = self.read_stored(info, "rope_freqs.weight")?;
            let factors: Vec<f64> = q
                .dequantize(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .into_iter()
                .map(f64::from)
                .collect();
            return Ok(llama3_parameters(
                &factors,
                self.optional_f64("rope.freq_base")?.unwrap_or(10000.0),
            )
            .unwrap_or(RopeScaling::Factors(factors)));
        }
        let kind = match self.content.metadata.get(&self.key("rope.scaling.type")) {
            Some(v) => v.to_string().map_err(|e| anyhow::anyhow!("{e}"))?.clone(),
            None => "none".to_string(),
        };
        match kind.as_str() {
            "none" => Ok(RopeScaling::None),
            "linear" => {
                let factor = self.optional_f64("rope.scaling.factor")?.unwrap_or(1.0);
                Ok(if factor == 1.0 {
                    RopeScaling::None
                } else {
                    RopeScaling::Linear { factor }
                })
            }
            other => bail!("{p}: RoPE scaling `{other}` is not supported (none, linear)"),
        }
    }

    /// The stored GGML type of a tensor, by its Hugging Face name.
    pub fn ggml_dtype(&self, hf_name: &str) -> Option<GgmlDType> {
        let name = gguf_name(hf_name)?;
        self.content.tensor_infos.get(&name).map(|i| i.ggml_dtype)
    }

    /// The stored types of all tensors with their counts, e.g. `Q4_1 ×211, F32 ×61`.
    pub fn dtype_summary(&self) -> String {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for info in self.content.tensor_infos.values() {
            *counts.entry(ggml_type_name(info.ggml_dtype)).or_default() += 1;
        }
        let mut parts: Vec<(String, usize)> = counts.into_iter().collect();
        parts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let parts: Vec<String> = parts.iter().map(|(t, n)| format!("{t} x{n}")).collect();
        format!("GGUF {}", parts.join(", "))
    }

    /// A tensor as stored, on the CPU.
    fn read_stored(
        &self,
        info: &candle_core::quantized::gguf_file::TensorInfo,
        name: &str,
    ) -> Result<QTensor> {
        info.read(
            &mut std::io::Cursor::new(&self.mmap[..]),
            self.content.tensor_data_offset,
            &Device::Cpu,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("{}: reading tensor `{name}`", self.path.display()))
    }

    /// Reads a tensor by its Hugging Face name, q/k rows in Hugging Face order, on the CPU.
    fn read(&self, hf_name: &str, shape: &[usize]) -> Result<QTensor> {
        let p = self.path.display();
        let name = gguf_name(hf_name)
            .with_context(|| format!("{p}: no GGUF name for tensor `{hf_name}`"))?;
        let info = self
            .content
            .tensor_infos
            .get(&name)
            .with_context(|| format!("{p}: tensor `{name}` ({hf_name}) not found"))?;
        if info.shape.dims() != shape {
            bail!(
                "{p}: tensor `{name}` ({hf_name}) has shape {:?}, expected {shape:?} from the \
                 GGUF metadata",
                info.shape.dims()
            );
        }
        let q = self.read_stored(info, &name)?;
        let permuted = self.family.is_some_and(|f| f.family().gguf_permutes_qk);
        let heads = match ModelTensor::from_hf_name(hf_name) {
            Some(ModelTensor::Layer(_, LayerTensor::Weight(Projection::Q))) if permuted => {
                Some(self.heads.0)
            }
            Some(ModelTensor::Layer(_, LayerTensor::Weight(Projection::K))) if permuted => {
                Some(self.heads.1)
            }
            _ => None,
        };
        match heads {
            Some(h) => unpermute_rows(&q, h).with_context(|| format!("{p}: tensor `{name}`")),
            None => Ok(q),
        }
    }
}

/// The Llama 3 `rope_scaling` that gives these per-frequency divisors (as llama.cpp's converter
/// computes them from config.json), when one of the usual settings does: `factor` = the largest
/// divisor, `low_freq_factor` 1, `high_freq_factor` 4, `original_max_position_embeddings` a power
/// of two. `None` when none fits to 1e-5; the factors are then used as they are.
pub fn llama3_parameters(factors: &[f64], rope_theta: f64) -> Option<RopeScaling> {
    let largest = factors.iter().cloned().fold(f64::MIN, f64::max);
    if factors.is_empty() || largest <= 1.0 {
        return None;
    }
    // Stored as f32: 8.0 stays 8.0, but read back through its shortest spelling anyway.
    let factor: f64 = format!("{}", largest as f32).parse().ok()?;
    let (low_freq_factor, high_freq_factor) = (1.0, 4.0);
    let head_dim = 2 * factors.len();
    for k in 4..=20 {
        let old_len = (1usize << k) as f64;
        let low_wavelen = old_len / low_freq_factor;
        let high_wavelen = old_len / high_freq_factor;
        let fits = factors.iter().enumerate().all(|(i, &f)| {
            // The frequencies as transformers and rotary.rs compute them (in f32).
            let exponent = ((2 * i) as f32 / head_dim as f32) as f64;
            let freq = (1.0 / (rope_theta as f32).powf(exponent as f32)) as f64;
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let want = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth =
                    (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            (f - want).abs() <= 1e-5 * want
        });
        if fits {
            return Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: 1 << k,
            });
        }
    }
    None
}

/// llama.cpp's spelling of a GGML type.
pub fn ggml_type_name(t: GgmlDType) -> String {
    match t {
        GgmlDType::Q2K => "Q2_K".into(),
        GgmlDType::Q3K => "Q3_K".into(),
        GgmlDType::Q4K => "Q4_K".into(),
        GgmlDType::Q5K => "Q5_K".into(),
        GgmlDType::Q6K => "Q6_K".into(),
        GgmlDType::Q8K => "Q8_K".into(),
        other => format!("{other:?}"),
    }
}

/// Undoes llama.cpp's `permute(w, n_head)` on the rows of `w: [n_head · d, in]`: GGUF row
/// `h·d + 2i + j` is Hugging Face row `h·d + j·d/2 + i`. Rows are moved as whole byte chunks, so
/// any GGML type is handled without dequantizing.
pub fn unpermute_rows(w: &QTensor, n_head: usize) -> Result<QTensor> {
    let (rows, cols) = w.shape().dims2()?;
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        bail!("cannot split {rows} rows into {n_head} heads of even size");
    }
    let d = rows / n_head;
    let half = d / 2;
    let dtype = w.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = w.data()?;
    if data.len() != rows * row_bytes {
        bail!(
            "unexpected data size {} for {rows} rows of {row_bytes} bytes",
            data.len()
        );
    }
    let mut out = vec![0u8; data.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = h * d + 2 * i + j;
                let dst = h * d + j * half + i;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    let storage = QStorage::from_data(Cow::Owned(out), &Device::Cpu, dtype)?;
    Ok(QTensor::new(storage, (rows, cols))?)
}

fn is_float(t: GgmlDType) -> bool {
    matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

impl WeightSource for GgufFile {
    fn check_against(&self, config: &ModelConfig) -> Result<()> {
        let p = self.path.display();
        for (hf_name, shape) in config.expected_tensors() {
            let name = gguf_name(&hf_name)
                .with_context(|| format!("{p}: no GGUF name for tensor `{hf_name}`"))?;
            let info = self
                .content
                .tensor_infos
                .get(&name)
                .with_context(|| format!("{p}: tensor `{name}` ({hf_name}) not found"))?;
            if info.shape.dims() != shape.as_slice() {
                bail!(
                    "{p}: tensor `{name}` ({hf_name}) has shape {:?}, expected {shape:?} from \
                     the GGUF metadata",
                    info.shape.dims()
                );
            }
        }
        Ok(())
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|n| self.content.tensor_infos.contains_key(&n))
    }

    fn load_dense(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let q = self.read(name, shape)?;
        Ok(q.dequantize(&Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)?)
    }

    fn load_frozen(
        &self,
        name: &str,
        shape: &[usize],
        options: &LoadOptions,
        device: &Device,
    ) -> Result<FrozenWeight> {
        let q = self.read(name, shape)?;
        if !is_float(q.dtype()) && !options.dequantize_gguf {
            let tiled = QuantizedWeight::from_qtensor(&q, device)?;
            return Ok(FrozenWeight::Quantized(Arc::new(tiled)));
        }
        let dense = q.dequantize(&Device::Cpu)?;
        match options.quantize {
            Some(t) => FrozenWeight::quantize(name, &dense, t, device),
            None => Ok(FrozenWeight::Dense(
                dense.to_dtype(options.dtype)?.to_device(device)?,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's `permute(w, n_head)`: `w.reshape(n_head, 2, d/2, in).swapaxes(1, 2)`.
    fn permute(w: &Tensor, n_head: usize) -> Tensor {
        let (rows, cols) = w.dims2().unwrap();
        w.reshape((n_head, 2, rows / n_head / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap()
    }

    #[test]
    fn unpermute_undoes_llama_cpp_permute_for_dense_and_quantized_rows() {
        let (heads, d, cols) = (3, 8, 64);
        let w = Tensor::arange(0f32, (heads * d * cols) as f32, &Device::Cpu)
            .unwrap()
            .reshape((heads * d, cols))
            .unwrap();
        let w = (w * 0.01).unwrap().sin().unwrap();
        let gguf = permute(&w, heads);
        // Dense rows: exact.
        let q = QTensor::quantize(&gguf, GgmlDType::F32).unwrap();
        let back = unpermute_rows(&q, heads).unwrap();
        let back = back.dequantize(&Device::Cpu).unwrap();
        let diff = (back - &w).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        // Quantized rows: the blocks move with their rows, bit for bit.
        for t in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
            let q = QTensor::quantize(&gguf, t).unwrap();
            let back = unpermute_rows(&q, heads).unwrap();
            assert_eq!(back.dtype(), t);
            let direct = QTensor::quantize(&w, t).unwrap();
            assert_eq!(back.data().unwrap(), direct.data().unwrap(), "{t:?}");
        }
    }

    #[test]
    fn rope_freqs_divisors_are_recognised_or_applied_as_they_are() {
        let mut cfg = ModelConfig::from_json(
            r#"{"architectures":["LlamaForCausalLM"],"vocab_size":8,"hidden_size":64,
            "intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2,
            "rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#,
        )
        .unwrap();
        let llama3 = crate::model::rotary::inverse_frequencies(&cfg);
        cfg.rope_scaling = RopeScaling::None;
        let plain = crate::model::rotary::inverse_frequencies(&cfg);
        // llama.cpp's divisors, rounded to f32 as the GGUF stores them.
        let divisors: Vec<f64> = plain
            .iter()
            .zip(&llama3)
            .map(|(p, l)| (p / l) as f32 as f64)
            .collect();
        assert!(divisors.iter().any(|d| *d > 1.0) && divisors.contains(&1.0));
        let recognised = llama3_parameters(&divisors, 500000.0).unwrap();
        assert_eq!(
            recognised,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192
            }
        );
        // Divisors that fit no Llama 3 setting are applied as they are.
        let odd: Vec<f64> = (0..divisors.len()).map(|i| 1.0 + i as f64 * 0.37).collect();
        assert_eq!(llama3_parameters(&odd, 500000.0), None);
        cfg.rope_scaling = RopeScaling::Factors(divisors.clone());
        let applied = crate::model::rotary::inverse_frequencies(&cfg);
        for ((a, l), d) in applied.iter().zip(&llama3).zip(&divisors) {
            assert!((a - l).abs() <= 1e-6 * l, "{a} vs {l} (divisor {d})");
        }
    }

    #[test]
    fn hf_names_map_to_gguf_names() {
        assert_eq!(
            gguf_name("model.layers.12.self_attn.o_proj.weight").as_deref(),
            Some("blk.12.attn_output.weight")
        );
        assert_eq!(
            gguf_name("model.layers.0.post_attention_layernorm.weight").as_deref(),
            Some("blk.0.ffn_norm.weight")
        );
        assert_eq!(
            gguf_name("lm_head.weight").as_deref(),
            Some("output.weight")
        );
        assert_eq!(gguf_name("model.layers.0.mlp.experts.weight"), None);
    }
}
