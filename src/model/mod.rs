//! The decoder model: configuration, weight loading, frozen and LoRA linears.

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
pub use frozen::{FrozenWeight, LoadOptions, Quantize, WeightSource};
pub use lora::{Adapter, LoraConfig, LoraPair};
pub use packed::PackedBatch;
pub use projection::{PerProjection, Projection};

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use crate::source::Source;

/// `[model] dtype` (also `--dtype`): the frozen weights' and activations' dtype, as named in
/// configs and flags; [`DType`] is candle's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl crate::choice::Choice for Dtype {
    const CHOICES: &'static [(Self, &'static [&'static str])] = &[
        (Dtype::F32, &["f32", "float32"]),
        (Dtype::Bf16, &["bf16", "bfloat16"]),
        (Dtype::F16, &["f16", "float16"]),
    ];
}
crate::choice::choice_impls!(Dtype);

impl From<Dtype> for DType {
    fn from(d: Dtype) -> DType {
        match d {
            Dtype::F32 => DType::F32,
            Dtype::Bf16 => DType::BF16,
            Dtype::F16 => DType::F16,
        }
    }
}

/// Parses a user-facing dtype name.
pub fn parse_dtype(name: &str) -> Result<DType> {
    let dtype: Dtype = name.parse().context("dtype")?;
    Ok(dtype.into())
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
