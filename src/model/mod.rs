//! The decoder model: configuration, weight loading, frozen and LoRA linears.

pub mod config;
pub mod decoder;
pub mod lora;
pub mod rotary;
pub mod summary;
pub mod weights;

pub use config::{Architecture, ModelConfig, PROJECTIONS};
pub use decoder::{KvCache, Model, Pass};
pub use lora::{Adapter, LoraConfig, LoraPair};

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

/// Reads the config of a model folder or hub repo.
pub fn load_config(source: &Source) -> Result<ModelConfig> {
    ModelConfig::from_file(&source.require("config.json")?)
}

/// Loads a model from a folder or hub repo id, frozen weights in `dtype`.
pub fn load_model(spec: &str, dtype: DType, device: &Device) -> Result<Model> {
    let source = Source::parse(spec)?;
    let config = load_config(&source)?;
    let weights = weights::WeightFiles::open(&source)?;
    Model::load(config, &weights, dtype, device)
}
