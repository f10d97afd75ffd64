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
pub use frozen::{parse_quantization, FrozenWeight, LoadOptions, WeightSource};
pub use lora::{Adapter, LoraConfig, LoraPair};
pub use packed::PackedBatch;
pub use projection::{PerProjection, Projection};

use anyhow::{bail, Result};
use candle_core::DType;

pub use loading::{describe_weights, load_config, load_model, load_model_with};

/// Parses a user-facing dtype name.
pub fn parse_dtype(name: &str) -> Result<DType> {
    Ok(match name {
        "f32" | "float32" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" => DType::F16,
        other => bail!("dtype `{other}` is not supported (use f32, bf16 or f16)"),
    })
}
