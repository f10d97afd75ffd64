//! The decoder model: configuration, weight loading, frozen and LoRA linears.

pub mod architecture;
pub mod config;
pub mod decoder;
pub mod frozen;
pub mod gguf;
pub mod lora;
pub mod lora_linear;
pub mod mask;
pub mod memory;
pub mod packed;
pub mod projection;
pub mod rotary;
pub mod summary;
pub mod weights;

pub use config::{Architecture, ModelConfig};
pub use decoder::{Attend, Inputs, KvCache, LayerTape, Model, Pass};
pub use frozen::{parse_quantization, FrozenWeight, LoadOptions, WeightSource};
pub use lora::{Adapter, LoraConfig, LoraPair};
pub use packed::PackedBatch;
pub use projection::{PerProjection, Projection};

use anyhow::{bail, Result};
use candle_core::{DType, Device};

use crate::source::Source;

/// Parses a user-facing dtype name.
pub fn parse_dtype(name: &str) -> Result<DType> {
    Ok(match name {
        "f32" | "float32" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" => DType::F16,
        other => bail!("dtype `{other}` is not supported (use f32, bf16 or f16)"),
    })
}

/// Reads the config of a model folder or hub repo, or of a GGUF file's metadata.
pub fn load_config(source: &Source) -> Result<ModelConfig> {
    if let Some(path) = gguf_path(source) {
        return gguf::GgufFile::open(path)?.config();
    }
    ModelConfig::from_file(&source.require("config.json")?)
}

/// Loads a model from a folder, a GGUF file or a hub repo id, frozen weights in `dtype`.
pub fn load_model(spec: &str, dtype: DType, device: &Device) -> Result<Model> {
    load_model_with(spec, &LoadOptions::new(dtype), device)
}

/// [`load_model`] with the projections quantized as `options` say. A GGUF file keeps its
/// quantized tensors in their stored types.
pub fn load_model_with(spec: &str, options: &LoadOptions, device: &Device) -> Result<Model> {
    let source = Source::parse(spec)?;
    if let Some(path) = gguf_path(&source) {
        let file = gguf::GgufFile::open(path)?;
        let config = file.config()?;
        return Model::load_with(config, &file, options, device);
    }
    let config = load_config(&source)?;
    let weights = weights::WeightFiles::open(&source)?;
    Model::load_with(config, &weights, options, device)
}

/// The config of a model and how its weights are stored (`F32`, `BF16`, `GGUF Q4_1 x211, ...`),
/// reading headers only.
pub fn describe_weights(source: &Source) -> Result<(ModelConfig, String)> {
    if let Some(path) = gguf_path(source) {
        let file = gguf::GgufFile::open(path)?;
        let config = file.config()?;
        file.check_against(&config)?;
        return Ok((config, file.dtype_summary()));
    }
    let config = load_config(source)?;
    let weights = weights::WeightFiles::open(source)?;
    weights.check_against(&config)?;
    let dtype = weights.stored_dtype("model.embed_tokens.weight")?;
    Ok((config, dtype))
}

fn gguf_path(source: &Source) -> Option<&std::path::Path> {
    match source {
        Source::File(p) if gguf::is_gguf(p) => Some(p.as_path()),
        _ => None,
    }
}
