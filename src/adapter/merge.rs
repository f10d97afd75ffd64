//! Folding LoRA adapters into the base weights and writing a Hugging Face model folder.
//!
//! Streams tensor by tensor: each tensor is read from its file with a plain positioned read
//! (no memory map, so pages already written do not stay resident), merged in f32
//! (`W + scale · B · A` for each adapter in order), cast to the output dtype and written
//! straight into its shard, whose header is computed up front from the shapes. Tensors are
//! processed in blocks of rows, so peak memory is a few blocks, whatever the model or shard
//! size. A GGUF base is dequantized tensor by tensor (q/k rows put back in Hugging Face order)
//! and gets a config.json (and, where the data module can read its tokenizer, tokenizer files)
//! made from its metadata. Everything goes into a temporary folder beside the output, swapped in
//! whole at the end (an old output stays complete under its name until then), under the
//! output's lock. An output that is, holds or sits inside an input is refused.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::model::config::RopeScaling;
use crate::model::gguf::{self, GgufFile};
use crate::model::weights::{parse_st_dtype, WeightFiles};
use crate::model::{Adapter, Architecture, ModelConfig, Projection, WeightSource};
use crate::source::Source;

use super::overlap::{check_apart, Input};
use candle_core::quantized::GgmlDType;

/// transformers' default `max_shard_size`.
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 5_000_000_000;

/// Files copied unchanged from the base folder when present.
const COPIED_FILES: [&str; 9] = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
];

#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// Output dtype; `None` keeps the dtype the embeddings are stored in.
    pub dtype: Option<DType>,
    /// Largest shard in bytes (a single larger tensor gets a shard of its own).
    pub max_shard_size: u64,
    /// Replace an existing non-empty output folder.
    pub overwrite: bool,
    /// Tensors are read, merged and written in blocks of whole rows of about this many bytes
    /// (as f32, at least one row): the working memory, whatever the tensor size.
    pub block_bytes: usize,
    /// Where the adapters were loaded from (folders or hub repo ids): the output must be apart
    /// from each, as from the model.
    pub adapter_sources: Vec<String>,
}

impl Default for MergeOptions {
    fn default() -> Self {
        Self {
            dtype: None,
            max_shard_size: DEFAULT_MAX_SHARD_SIZE,
            overwrite: false,
            block_bytes: 4 << 20,
            adapter_sources: vec![],
        }
    }
}

/// What `merge` wrote.
#[derive(Debug, Clone)]
pub struct MergeReport {
    pub out_dir: PathBuf,
    pub dtype: DType,
    /// `(file name, bytes of tensor data)` of each shard.
    pub shards: Vec<(String, u64)>,
    /// Sum of the tensors' sizes (`metadata.total_size` of the index).
    pub total_size: u64,
    /// Projections that received at least one adapter.
    pub merged_tensors: usize,
    /// Files written besides the weights (copied, or made from GGUF metadata).
    pub copied_files: Vec<String>,
    /// Things the user should know (for example: a GGUF tokenizer that could not be exported).
    pub notes: Vec<String>,
}

/// Parses a shard size such as `5GB`, `500MB`, `64MiB` or a plain number of bytes.
/// KB/MB/GB are powers of 1000 (as transformers reads them), KiB/MiB/GiB powers of 1024.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .with_context(|| format!("size `{text}`: expected a number with an optional unit"))?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("size `{text}`: unknown unit `{other}` (use B, KB, MB, GB, KiB, MiB, GiB)"),
    };
    let bytes = (value * mult).round();
    if bytes < 1.0 {
        bail!("size `{text}` must be at least 1 byte");
    }
    Ok(bytes as u64)
}

/// Folds `adapters` (in order; none = plain conversion) into the base `model_spec` (folder or
/// hub repo id) and writes a Hugging Face folder at `out`.
pub fn merge(
    model_spec: &str,
    adapters: &[Adapter],
    out: &Path,
    options: &MergeOptions,
) -> Result<MergeReport> {
    let source = Source::parse(model_spec)?;
    if options.max_shard_size == 0 {
        bail!("max_shard_size must be at least 1 byte");
    }
    let (config, base) = match &source {
        Source::File(path) if gguf::is_gguf(path) => {
            let file = GgufFile::open(path)?;
            let config = file.config()?;
            WeightSource::check_against(&file, &config)?;
            (config, Base::Gguf(file))
        }
        Source::File(path) => bail!(
            "{}: expected a Hugging Face model folder (config.json + safetensors), a .gguf \
             file or a hub repo id",
            path.display()
        ),
        _ => {
            let config_path = source.require("config.json")?;
            let config = ModelConfig::from_file(&config_path)?;
            let reader = WeightFiles::open(&source)?;
            reader.check_against(&config)?;
            (
                config,
                Base::Safetensors {
                    reader,
                    config_path,
                },
            )
        }
    };
    check_apart(out, &inputs(model_spec, &source, &options.adapter_sources)?)?;
    // Held until the new folder is in place: a second writer fails at once instead of
    // replacing this one's temporary folder or output.
    let _lock = crate::lock::lock_output(out)?;
    if crate::atomic_dir::recover(out)? {
        eprintln!(
            "{}: put back the previous output, which an interrupted replacement had left only \
             under its .old name",
            out.display()
        );
    }
    check_output(out, options.overwrite)?;
    let dtype = match options.dtype {
        Some(d) => d,
        None => base.default_dtype()?,
    };
    for (i, adapter) in adapters.iter().enumerate() {
        if adapter.layers.len() != config.num_hidden_layers {
            bail!(
                "adapter {} has {} layers, the model {}",
                i + 1,
                adapter.layers.len(),
                config.num_hidden_layers
            );
        }
    }
    let plan = plan_shards(&base.tensors(&config)?, dtype, options.max_shard_size);

    let tmp = temp_dir_for(out)?;
    let result = (|| -> Result<MergeReport> {
        let n = plan.len();
        let mut shards = Vec::with_capacity(n);
        let mut weight_map = BTreeMap::new();
        let mut merged_tensors = 0;
        for (k, shard) in plan.iter().enumerate() {
            let file = if n == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{n:05}.safetensors", k + 1)
            };
            merged_tensors += write_shard(
                &tmp.join(&file),
                shard,
                &base,
                adapters,
                dtype,
                options.block_bytes,
            )?;
            for (name, _) in &shard.tensors {
                weight_map.insert(name.clone(), file.clone());
            }
            shards.push((file, shard.bytes));
        }
        let total_size: u64 = shards.iter().map(|(_, b)| b).sum();
        if n > 1 {
            let index = json!({
                "metadata": {"total_size": total_size},
                "weight_map": weight_map,
            });
            std::fs::write(
                tmp.join("model.safetensors.index.json"),
                serde_json::to_string_pretty(&index)? + "\n",
            )?;
        }
        let mut copied_files = Vec::new();
        let mut notes = Vec::new();
        match &base {
            Base::Safetensors { config_path, .. } => {
                write_config(config_path, &tmp.join("config.json"), dtype)?;
                for name in COPIED_FILES {
                    if let Some(p) = source.find(name)? {
                        std::fs::copy(&p, tmp.join(name))
                            .with_context(|| format!("copying {}", p.display()))?;
                        copied_files.push(name.to_string());
                    }
                }
            }
            Base::Gguf(file) => {
                write_json(&tmp.join("config.json"), &hf_config(&config, dtype)?)?;
                let mut generation = serde_json::Map::new();
                if let Some(bos) = config.bos_token_id {
                    generation.insert("bos_token_id".into(), json!(bos));
                }
                match config.eos_token_ids.as_slice() {
                    [] => {}
                    [one] => {
                        generation.insert("eos_token_id".into(), json!(one));
                    }
                    many => {
                        generation.insert("eos_token_id".into(), json!(many));
                    }
                }
                write_json(
                    &tmp.join("generation_config.json"),
                    &Value::Object(generation),
                )?;
                match gguf_tokenizer(file.path(), &tmp) {
                    Ok(files) => copied_files.extend(files),
                    Err(e) => notes.push(format!("no tokenizer files written: {e:#}")),
                }
            }
        }
        Ok(MergeReport {
            out_dir: out.to_path_buf(),
            dtype,
            shards,
            total_size,
            merged_tensors,
            copied_files,
            notes,
        })
    })();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    crate::fault::point("merge-before-swap");
    // check_output allowed an existing folder only when empty or with --overwrite.
    crate::atomic_dir::replace_dir(&tmp, out)?;
    crate::fault::point("merge-after-swap");
    Ok(report)
}

fn file_name(path: &Path) -> Result<String> {
    Ok(path
        .file_name()
        .with_context(|| format!("{}: the output path has no folder name", path.display()))?
        .to_string_lossy()
        .to_string())
}

fn check_output(out: &Path, overwrite: bool) -> Result<()> {
    if out.is_file() {
        bail!("{}: exists and is a file, not a folder", out.display());
    }
    if out.is_dir() && !overwrite {
        let non_empty = std::fs::read_dir(out)
            .with_context(|| format!("{}: cannot read", out.display()))?
            .next()
            .is_some();
        if non_empty {
            bail!(
                "{}: folder exists and is not empty (choose another --out or pass --overwrite)",
                out.display()
            );
        }
    }
    Ok(())
}

/// The model and the adapters as inputs the output must stay apart from.
fn inputs(model_spec: &str, model: &Source, adapters: &[String]) -> Result<Vec<Input>> {
    let role = match model {
        Source::File(_) => "the model file",
        _ => "the model folder",
    };
    let mut inputs: Vec<Input> = Input::of(role, model_spec, "config.json")?
        .into_iter()
        .collect();
    for (i, spec) in adapters.iter().enumerate() {
        let role = format!("the folder of adapter {}", i + 1);
        inputs.extend(Input::of(&role, spec, "adapter_config.json")?);
    }
    Ok(inputs)
}

/// A fresh `.NAME.tmp` folder beside `out` (a stale one is a killed merge's: the lock says no
/// merge is writing it now).
fn temp_dir_for(out: &Path) -> Result<PathBuf> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("{}: cannot create", parent.display()))?;
    let tmp = parent.join(format!(".{}.tmp", file_name(out)?));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| {
            format!("{}: cannot remove a stale temporary folder", tmp.display())
        })?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    Ok(tmp)
}

/// Copies config.json with `dtype`/`torch_dtype` set to the output dtype.
fn write_config(from: &Path, to: &Path, dtype: DType) -> Result<()> {
    let text = std::fs::read_to_string(from)
        .with_context(|| format!("{}: cannot read", from.display()))?;
    let mut json: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", from.display()))?;
    let name = dtype_name(dtype)?;
    let obj = json
        .as_object_mut()
        .with_context(|| format!("{}: not a JSON object", from.display()))?;
    let mut set = false;
    for key in ["dtype", "torch_dtype"] {
        if let Some(v) = obj.get_mut(key) {
            *v = json!(name);
            set = true;
        }
    }
    if !set {
        obj.insert("torch_dtype".into(), json!(name));
    }
    std::fs::write(to, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("{}: cannot write", to.display()))
}

/// One output shard: its tensors in order with their shapes, and its data size.
struct ShardPlan {
    tensors: Vec<(String, Vec<usize>)>,
    bytes: u64,
}

/// Tensors in order, packed greedily into shards of at most `max` bytes.
fn plan_shards(tensors: &[(String, Vec<usize>)], dtype: DType, max: u64) -> Vec<ShardPlan> {
    let mut shards: Vec<ShardPlan> = Vec::new();
    let mut current = ShardPlan {
        tensors: vec![],
        bytes: 0,
    };
    for (name, shape) in tensors {
        let size = shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
        if !current.tensors.is_empty() && current.bytes + size > max {
            shards.push(std::mem::replace(
                &mut current,
                ShardPlan {
                    tensors: vec![],
                    bytes: 0,
                },
            ));
        }
        current.tensors.push((name.clone(), shape.clone()));
        current.bytes += size;
    }
    if !current.tensors.is_empty() {
        shards.push(current);
    }
    shards
}

/// Where the base weights come from.
enum Base {
    /// Safetensors files (a folder or hub snapshot), read block by block.
    Safetensors {
        reader: WeightFiles,
        config_path: PathBuf,
    },
    /// A GGUF file: each tensor is dequantized whole (and llama.cpp's q/k row order undone).
    Gguf(GgufFile),
}

impl Base {
    /// The embeddings' stored dtype when it is f32/bf16/f16; f32 for quantized GGUF tensors.
    fn default_dtype(&self) -> Result<DType> {
        Ok(match self {
            Base::Safetensors { reader, .. } => {
                parse_st_dtype(&reader.entry("model.embed_tokens.weight")?.dtype)?.0
            }
            Base::Gguf(file) => match file.ggml_dtype("model.embed_tokens.weight") {
                Some(GgmlDType::F16) => DType::F16,
                Some(GgmlDType::BF16) => DType::BF16,
                _ => DType::F32,
            },
        })
    }

    /// Every tensor to write with its shape: the config's tensors in checkpoint order, then
    /// any other tensor of the safetensors files by name.
    fn tensors(&self, config: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let mut out = config.expected_tensors();
        if let Base::Safetensors { reader, .. } = self {
            let rest: Vec<String> = (reader.names().into_iter())
                .filter(|n| !out.iter().any(|(m, _)| m == n))
                .collect();
            for name in &rest {
                let entry = reader.entry(name)?;
                parse_st_dtype(&entry.dtype).with_context(|| {
                    format!("{}: tensor `{name}`", reader.path_of(entry).display())
                })?;
                out.push((name.clone(), entry.shape.clone()));
            }
            for (name, _) in &config.expected_tensors() {
                let entry = reader.entry(name)?;
                parse_st_dtype(&entry.dtype).with_context(|| {
                    format!("{}: tensor `{name}`", reader.path_of(entry).display())
                })?;
            }
        }
        Ok(out)
    }
}

/// The Hugging Face config.json of a model described by GGUF metadata.
fn hf_config(c: &ModelConfig, dtype: DType) -> Result<Value> {
    let rope_scaling = match c.rope_scaling {
        RopeScaling::None => Value::Null,
        RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
        RopeScaling::Factors(_) => bail!(
            "the GGUF's per-frequency RoPE factors (`rope_freqs.weight`) match no Llama 3 \
             rope_scaling that config.json could express"
        ),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
    };
    let (class, model_type) = match c.architecture {
        Architecture::Mistral => ("MistralForCausalLM", "mistral"),
        Architecture::Llama => ("LlamaForCausalLM", "llama"),
    };
    let eos = match c.eos_token_ids.as_slice() {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    };
    Ok(json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": rope_scaling,
        "sliding_window": c.sliding_window,
        "tie_word_embeddings": c.tie_word_embeddings,
        "max_position_embeddings": c.max_position_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": eos,
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": dtype_name(dtype)?,
    }))
}

/// tokenizer.json and tokenizer_config.json (special tokens, chat template) from a GGUF's
/// tokenizer metadata, where the data module can build the tokenizer.
fn gguf_tokenizer(path: &Path, dir: &Path) -> Result<Vec<String>> {
    let tok = crate::data::load_chat_tokenizer(path)?;
    tok.tokenizer
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("writing tokenizer.json")?;
    let mut config = serde_json::Map::new();
    for (key, token) in [
        ("bos_token", &tok.bos),
        ("eos_token", &tok.eos),
        ("pad_token", &tok.pad),
    ] {
        if let Some(t) = token {
            config.insert(key.into(), json!(t.text));
        }
    }
    if let Some(t) = &tok.template {
        config.insert("chat_template".into(), json!(t.source()));
    }
    write_json(&dir.join("tokenizer_config.json"), &Value::Object(config))?;
    Ok(vec![
        "tokenizer.json".to_string(),
        "tokenizer_config.json".to_string(),
    ])
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("{}: cannot write", path.display()))
}

fn dtype_name(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        other => bail!("cannot write {other:?} weights"),
    })
}

/// `(layer, projection)` when `name` is a projection weight.
fn projection_of(name: &str) -> Option<(usize, Projection)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, _) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    Projection::ALL
        .into_iter()
        .find_map(|p| (format!("{}.weight", p.module_path(layer)) == name).then_some((layer, p)))
}

/// Writes one shard: the header from the plan, then each tensor's bytes as they are made.
/// Returns how many tensors had an adapter folded in.
fn write_shard(
    path: &Path,
    shard: &ShardPlan,
    base: &Base,
    adapters: &[Adapter],
    dtype: DType,
    block_bytes: usize,
) -> Result<usize> {
    let st_dtype = st_dtype_name(dtype)?;
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for (name, shape) in &shard.tensors {
        let size = shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
        header.insert(
            name.clone(),
            json!({"dtype": st_dtype, "shape": shape, "data_offsets": [offset, offset + size]}),
        );
        offset += size;
    }
    let mut header = serde_json::to_string(&Value::Object(header))?.into_bytes();
    // safetensors pads the header with spaces to a multiple of 8 bytes.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let file = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let write_err = || format!("{}: cannot write", path.display());
    w.write_all(&(header.len() as u64).to_le_bytes())
        .with_context(write_err)?;
    w.write_all(&header).with_context(write_err)?;
    let mut merged = 0;
    for (name, shape) in &shard.tensors {
        let pairs: Vec<(f64, Tensor, Tensor)> = match projection_of(name) {
            Some((layer, p)) => adapters
                .iter()
                .filter_map(|a| a.pair(layer, p).map(|pair| (a.scale(), pair)))
                .map(|(scale, pair)| -> Result<_> {
                    Ok((
                        scale,
                        pair.b.as_tensor().to_device(&Device::Cpu)?,
                        pair.a.as_tensor().to_device(&Device::Cpu)?,
                    ))
                })
                .collect::<Result<_>>()?,
            None => vec![],
        };
        merged += usize::from(!pairs.is_empty());
        // Row blocks of about block_bytes (in f32), so no whole tensor is held (except a GGUF
        // tensor, dequantized whole).
        let numel: usize = shape.iter().product();
        let rows = shape.first().copied().unwrap_or(1).max(1);
        let cols = numel / rows;
        let block = (block_bytes / (4 * cols.max(1))).clamp(1, rows);
        let whole: Option<Vec<f32>> = match base {
            Base::Gguf(file) => Some(
                file.load_dense(name, shape, DType::F32, &Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            ),
            Base::Safetensors { .. } => None,
        };
        let mut r0 = 0;
        while r0 < rows {
            let n = block.min(rows - r0);
            let mut values = match (&whole, base) {
                (Some(all), _) => all[r0 * cols..(r0 + n) * cols].to_vec(),
                (None, Base::Safetensors { reader, .. }) => {
                    let entry = reader.entry(name)?;
                    let (stored, size) = parse_st_dtype(&entry.dtype)?;
                    let bytes =
                        reader.read_range(name, (r0 * cols * size) as u64, n * cols * size)?;
                    if pairs.is_empty() && stored == dtype {
                        w.write_all(&bytes).with_context(write_err)?;
                        r0 += n;
                        continue;
                    }
                    decode_f32(&bytes, &entry.dtype).with_context(|| format!("tensor `{name}`"))?
                }
                (None, Base::Gguf(_)) => unreachable!("GGUF tensors are read whole"),
            };
            if !pairs.is_empty() {
                let mut weight = Tensor::from_vec(values, (n, cols), &Device::Cpu)?;
                for (scale, b, a) in &pairs {
                    let delta = b.narrow(0, r0, n)?.matmul(a)?;
                    weight = (weight + (delta * *scale)?)?;
                }
                values = weight.flatten_all()?.to_vec1::<f32>()?;
                if values.iter().any(|v| !v.is_finite()) {
                    bail!("merging the adapter into `{name}` gives NaN or infinite values");
                }
            }
            w.write_all(&encode(&values, dtype)?)
                .with_context(write_err)?;
            r0 += n;
        }
    }
    w.flush().with_context(write_err)?;
    Ok(merged)
}

fn encode(values: &[f32], dtype: DType) -> Result<Vec<u8>> {
    Ok(match dtype {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        DType::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        other => bail!("cannot write {other:?} weights"),
    })
}

fn st_dtype_name(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "F32",
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        other => bail!("cannot write {other:?} weights (use f32, bf16 or f16)"),
    })
}

/// Little-endian values of a safetensors dtype, widened to f32.
fn decode_f32(bytes: &[u8], dtype: &str) -> Result<Vec<f32>> {
    Ok(match dtype {
        "F32" => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "BF16" => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "F16" => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "F64" => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => bail!("dtype {other} is not supported"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_transformers() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("0.5 KB").unwrap(), 500);
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn projection_names() {
        assert_eq!(
            projection_of("model.layers.3.mlp.down_proj.weight"),
            Some((3, Projection::Down))
        );
        assert_eq!(
            projection_of("model.layers.0.self_attn.q_proj.weight"),
            Some((0, Projection::Q))
        );
        assert_eq!(projection_of("model.layers.0.input_layernorm.weight"), None);
        assert_eq!(projection_of("lm_head.weight"), None);
    }
}
