//! Export to where models are run: a merged model as a llama.cpp GGUF.
//!
//! The base (Hugging Face folder, hub repo or GGUF) is read tensor by tensor, adapters folded
//! in with merge's math, each tensor converted to llama.cpp's name and layout (q/k rows
//! permuted for `llama`), quantized a block of rows at a time and streamed into the file, so
//! memory holds about one block (q and k of a permuted architecture: one tensor). The file is
//! written under a temporary name beside the output and renamed when complete.

pub mod gguf_writer;
pub mod lora;
pub mod ollama;
pub mod vocab;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};

use crate::adapter::merge::base::Base;
use crate::adapter::merge::blocks::{merged_blocks, Rows};
use crate::model::architecture::{LayerTensor, ModelTensor};
use crate::model::config::RopeScaling;
use crate::model::{Adapter, ModelConfig, Projection};
use crate::source::Source;
use gguf_writer::{GgufWriter, TensorEntry};

/// `--quant`: the type of the 2-D tensors (1-D ones stay F32, as llama.cpp keeps them).
pub const QUANT_NAMES: &[(&str, GgmlDType)] = &[
    ("f32", GgmlDType::F32),
    ("f16", GgmlDType::F16),
    ("bf16", GgmlDType::BF16),
    ("q8_0", GgmlDType::Q8_0),
    ("q6_k", GgmlDType::Q6K),
    ("q5_k", GgmlDType::Q5K),
    ("q4_k", GgmlDType::Q4K),
    ("q5_0", GgmlDType::Q5_0),
    ("q4_0", GgmlDType::Q4_0),
];

pub fn parse_quant(name: &str) -> Result<GgmlDType> {
    let lower = name.to_ascii_lowercase();
    QUANT_NAMES
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|(_, t)| *t)
        .with_context(|| {
            let names: Vec<_> = QUANT_NAMES.iter().map(|(n, _)| *n).collect();
            format!(
                "--quant {name}: unknown type (expected one of {})",
                names.join(", ")
            )
        })
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub quant: GgmlDType,
    /// Replace an existing file at the output path.
    pub overwrite: bool,
    /// Rows are merged and quantized in blocks of about this many bytes (as f32).
    pub block_bytes: usize,
    /// Where the adapters came from: the output may not be one of them.
    pub adapter_sources: Vec<String>,
    /// Write the tokenizer's metadata (llama.cpp needs it; tests of the weights alone may not).
    pub tokenizer: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            quant: GgmlDType::F16,
            overwrite: false,
            block_bytes: 4 << 20,
            adapter_sources: vec![],
            tokenizer: true,
        }
    }
}

/// What `export_gguf` wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub out: PathBuf,
    pub arch: &'static str,
    pub bytes: u64,
    pub tensors: usize,
    /// Projections an adapter was folded into.
    pub merged_tensors: usize,
    /// What the user should know: tensors kept in another type, a window llama.cpp drops, …
    pub notes: Vec<String>,
}

/// Writes `model_spec` with `adapters` folded in (in order) as a GGUF file at `out`.
pub fn export_gguf(
    model_spec: &str,
    adapters: &[Adapter],
    out: &Path,
    options: &ExportOptions,
) -> Result<ExportReport> {
    let source = Source::parse(model_spec)?;
    let (config, base) = Base::open(&source)?;
    let family = config.family();
    let arch = family.gguf_export_arch.with_context(|| {
        format!(
            "{}: llama.cpp has no architecture for {} models",
            model_spec, family.hf_class
        )
    })?;
    if family.gguf_permutes_qk && (config.biased[Projection::Q] || config.biased[Projection::K]) {
        bail!("q/k biases of a `{arch}` model cannot be exported (llama.cpp permutes their rows)");
    }
    check_output(out, model_spec, options)?;
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
    let _lock = crate::lock::lock_output(out)?;
    let mut notes = Vec::new();
    if let Some(w) = config.sliding_window() {
        notes.push(format!(
            "llama.cpp's `{arch}` attends to the whole context: the sliding window of {w} \
             tokens is not kept"
        ));
    }
    let mut metadata = model_metadata(&config, arch, options.quant, model_spec);
    if options.tokenizer {
        let (tokenizer, tokenizer_notes) = tokenizer_metadata(&base, &source)?;
        metadata.extend(tokenizer);
        notes.extend(tokenizer_notes);
    }
    let plan = plan_tensors(&config, options.quant, &mut notes)?;

    let merged_tensors = write_into_place(out, |tmp| {
        let entries: Vec<TensorEntry> = plan.iter().map(|p| p.entry.clone()).collect();
        let mut w = GgufWriter::create(tmp, &metadata, &entries)?;
        let mut merged = 0;
        for t in &plan {
            merged += usize::from(write_tensor(&mut w, t, &base, adapters, options)?);
        }
        w.finish()?;
        Ok(merged)
    })?;
    Ok(ExportReport {
        out: out.to_path_buf(),
        arch,
        bytes: std::fs::metadata(out)?.len(),
        tensors: plan.len(),
        merged_tensors,
        notes,
    })
}

/// A tensor to write: where it comes from and how it is stored.
struct PlannedTensor {
    entry: TensorEntry,
    source: Planned,
}

enum Planned {
    /// A base tensor (transformers' name), with `heads` when its rows are permuted.
    Base {
        hf_name: String,
        heads: Option<usize>,
    },
    /// Llama 3's rope scaling as llama.cpp stores it: one divisor per frequency.
    RopeFreqs(Vec<f32>),
}

fn plan_tensors(
    config: &ModelConfig,
    quant: GgmlDType,
    notes: &mut Vec<String>,
) -> Result<Vec<PlannedTensor>> {
    let family = config.family();
    let mut out = Vec::new();
    if let Some(divisors) = rope_divisors(config) {
        out.push(PlannedTensor {
            entry: TensorEntry {
                name: "rope_freqs.weight".into(),
                shape: vec![divisors.len()],
                dtype: GgmlDType::F32,
            },
            source: Planned::RopeFreqs(divisors),
        });
    }
    let mut fallback = 0;
    for (tensor, shape) in config.expected_model_tensors() {
        let dtype = match shape.len() {
            1 => GgmlDType::F32,
            _ if shape[1].is_multiple_of(quant.block_size()) => quant,
            _ => {
                fallback += 1;
                GgmlDType::F16
            }
        };
        let heads = match tensor {
            ModelTensor::Layer(_, LayerTensor::Weight(Projection::Q))
                if family.gguf_permutes_qk =>
            {
                Some(config.num_attention_heads)
            }
            ModelTensor::Layer(_, LayerTensor::Weight(Projection::K))
                if family.gguf_permutes_qk =>
            {
                Some(config.num_key_value_heads)
            }
            _ => None,
        };
        out.push(PlannedTensor {
            entry: TensorEntry {
                name: tensor.gguf_name(),
                shape,
                dtype,
            },
            source: Planned::Base {
                hf_name: tensor.hf_name(),
                heads,
            },
        });
    }
    if fallback > 0 {
        notes.push(format!(
            "{fallback} tensor(s) have rows not a multiple of {quant:?}'s block of {}: written as F16",
            quant.block_size()
        ));
    }
    Ok(out)
}

/// Writes one tensor's bytes; whether an adapter was folded into it.
fn write_tensor(
    w: &mut GgufWriter,
    t: &PlannedTensor,
    base: &Base,
    adapters: &[Adapter],
    options: &ExportOptions,
) -> Result<bool> {
    let (shape, dtype) = (&t.entry.shape, t.entry.dtype);
    let cols = shape.get(1).copied().unwrap_or(shape[0]);
    let rows = shape.iter().product::<usize>() / cols;
    match &t.source {
        Planned::RopeFreqs(values) => {
            w.write(&encode(values, (1, values.len()), dtype)?)?;
            Ok(false)
        }
        Planned::Base {
            hf_name,
            heads: None,
        } => merged_blocks(
            base,
            hf_name,
            shape,
            adapters,
            options.block_bytes,
            None,
            &mut |block| {
                let Rows::Values(values) = block else {
                    unreachable!("no stored bytes are kept for a GGUF")
                };
                let n = values.len() / cols;
                w.write(&encode(values, (n, cols), dtype)?)
            },
        )
        .with_context(|| format!("tensor `{hf_name}`")),
        Planned::Base {
            hf_name,
            heads: Some(heads),
        } => {
            let mut whole = Vec::with_capacity(rows * cols);
            let merged = merged_blocks(
                base,
                hf_name,
                shape,
                adapters,
                options.block_bytes,
                None,
                &mut |block| {
                    if let Rows::Values(values) = block {
                        whole.extend_from_slice(values);
                    }
                    Ok(())
                },
            )?;
            let permuted = permute_rows(whole, rows, cols, *heads)?;
            w.write(&encode(&permuted, (rows, cols), dtype)?)?;
            Ok(merged)
        }
    }
}

/// llama.cpp's `permute(w, n_head)`: each head's rows reordered from transformers' halves
/// layout to interleaved pairs (`reshape(n_head, 2, d/2, in).swapaxes(1, 2)`).
pub(crate) fn permute_rows(
    values: Vec<f32>,
    rows: usize,
    cols: usize,
    heads: usize,
) -> Result<Vec<f32>> {
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        bail!("{rows} rows do not split into {heads} heads of pairs");
    }
    let w = Tensor::from_vec(values, (heads, 2, rows / heads / 2, cols), &Device::Cpu)?;
    Ok(w.transpose(1, 2)?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// `values` (`shape` rows × columns) in `dtype`'s bytes.
pub(crate) fn encode(values: &[f32], shape: (usize, usize), dtype: GgmlDType) -> Result<Vec<u8>> {
    if dtype == GgmlDType::F32 {
        return Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    let t = Tensor::from_slice(values, shape, &Device::Cpu)?;
    let q = QTensor::quantize(&t, dtype)?;
    Ok(q.data()?.into_owned())
}

/// The divisors llama.cpp's `rope_freqs` holds for Llama 3 scaling (base / scaled frequency).
fn rope_divisors(config: &ModelConfig) -> Option<Vec<f32>> {
    match config.rope_scaling {
        RopeScaling::Llama3 { .. } | RopeScaling::Factors(_) => {}
        _ => return None,
    }
    let scaled = crate::model::rotary::inverse_frequencies(config);
    let plain = crate::model::rotary::inverse_frequencies(&ModelConfig {
        rope_scaling: RopeScaling::None,
        ..config.clone()
    });
    Some(
        plain
            .iter()
            .zip(&scaled)
            .map(|(p, s)| (p / s) as f32)
            .collect(),
    )
}

/// ggml's `general.file_type` of a file whose 2-D tensors are all `quant`.
fn file_type(quant: GgmlDType) -> u32 {
    match quant {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 7,
        GgmlDType::Q5_0 => 8,
        GgmlDType::Q5_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 14,
        GgmlDType::Q5K => 16,
        GgmlDType::Q6K => 18,
        GgmlDType::BF16 => 32,
        GgmlDType::Q8_1 | GgmlDType::Q8K => 7,
    }
}

fn model_metadata(
    c: &ModelConfig,
    arch: &str,
    quant: GgmlDType,
    model_spec: &str,
) -> vocab::Metadata {
    let key = |k: &str| format!("{arch}.{k}");
    let u32v = |v: usize| Value::U32(v as u32);
    let name = Path::new(model_spec.trim_end_matches('/'))
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    let mut md = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        ("general.name".to_string(), Value::String(name)),
        (
            "general.file_type".to_string(),
            Value::U32(file_type(quant)),
        ),
        ("general.quantization_version".to_string(), Value::U32(2)),
        (key("context_length"), u32v(c.max_position_embeddings)),
        (key("embedding_length"), u32v(c.hidden_size)),
        (key("feed_forward_length"), u32v(c.intermediate_size)),
        (key("block_count"), u32v(c.num_hidden_layers)),
        (key("attention.head_count"), u32v(c.num_attention_heads)),
        (key("attention.head_count_kv"), u32v(c.num_key_value_heads)),
        (key("attention.key_length"), u32v(c.head_dim)),
        (key("attention.value_length"), u32v(c.head_dim)),
        (key("rope.dimension_count"), u32v(c.head_dim)),
        (key("rope.freq_base"), Value::F32(c.rope_theta as f32)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps as f32),
        ),
        (key("vocab_size"), u32v(c.vocab_size)),
    ];
    match c.rope_scaling {
        RopeScaling::Linear { factor } => {
            md.push((key("rope.scaling.type"), Value::String("linear".into())));
            md.push((key("rope.scaling.factor"), Value::F32(factor as f32)));
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            attention_factor,
            ..
        } => {
            md.push((key("rope.scaling.type"), Value::String("yarn".into())));
            md.push((key("rope.scaling.factor"), Value::F32(factor as f32)));
            md.push((
                key("rope.scaling.original_context_length"),
                u32v(original_max_position_embeddings),
            ));
            md.push((
                key("rope.scaling.attn_factor"),
                Value::F32(attention_factor as f32),
            ));
        }
        _ => {}
    }
    md
}

/// The tokenizer's metadata: a GGUF base's own, or made from the folder's tokenizer files.
fn tokenizer_metadata(base: &Base, source: &Source) -> Result<(vocab::Metadata, Vec<String>)> {
    match base {
        Base::Gguf(file) => Ok((vocab::from_gguf(file.metadata()), vec![])),
        Base::Safetensors { .. } => {
            let tokenizer = source.require("tokenizer.json")?;
            let config = source.find("tokenizer_config.json")?;
            let template = source.find("chat_template.jinja")?;
            vocab::from_hf(&tokenizer, config.as_deref(), template.as_deref())
        }
    }
}

/// Refuses an output that is an input or exists (without `overwrite`).
fn check_output(out: &Path, model_spec: &str, options: &ExportOptions) -> Result<()> {
    let resolved = crate::paths::resolve(out)?;
    for input in
        std::iter::once(model_spec).chain(options.adapter_sources.iter().map(String::as_str))
    {
        let input = Path::new(input);
        if input.exists() && crate::paths::resolve(input)? == resolved {
            bail!("{}: the output is an input", out.display());
        }
    }
    if out.is_dir() {
        bail!(
            "{}: is a folder; give the .gguf file to write",
            out.display()
        );
    }
    if out.exists() && !options.overwrite {
        bail!("{}: exists (pass --overwrite to replace it)", out.display());
    }
    Ok(())
}

/// [`crate::atomic_file::write_into_place`], with the fault point the export tests stop at.
pub(crate) fn write_into_place<T>(out: &Path, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    crate::atomic_file::write_into_place(out, |tmp| {
        let value = write(tmp)?;
        crate::fault::point("export-before-rename");
        Ok(value)
    })
}
