//! The model, in three parts: `architecture` (the family spec, the config, the one decoder
//! with its masks and rotary tables), `loading` (safetensors/HF folders, GGUF, frozen and
//! quantized weights) and `training` (LoRA adapters and their linears, the layer tape with
//! checkpointing, the memory estimate). `summary` is what `inspect` prints.

pub mod architecture;
pub mod loading;
pub mod summary;
pub mod training;

pub use architecture::{config, decoder, mask, packed, projection, rotary};
pub use loading::{frozen, gguf, weights};
pub use training::{lora, lora_linear, memory};

pub use config::{Architecture, ModelConfig};
pub use decoder::{Attend, Inputs, KvCache, LayerTape, Model, Pass};
pub use frozen::{FrozenWeight, LoadOptions, Quantize, WeightSource};
pub use lora::{Adapter, LoraConfig, LoraPair};
pub use packed::PackedBatch;
pub use projection::{PerProjection, Projection};

use anyhow::{Context, Result};
use candle_core::DType;

pub use loading::{describe_weights, load_config, load_model, load_model_with};

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
