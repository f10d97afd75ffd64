//! Weights in: Hugging Face folders and hub repos (safetensors, sharded), GGUF files, and the
//! frozen (dense or quantized) projections they become.

pub mod frozen;
pub mod gguf;
pub mod weights;

use anyhow::Result;
use candle_core::{DType, Device};

use super::{LoadOptions, Model, ModelConfig, WeightSource};
use crate::source::Source;

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
