//! Loading the adapters a subcommand's `--adapter` names, with its `--allow-missing` choice.

use anyhow::{Context, Result};
use candle_core::Device;
use lora_dpo::adapter::{load_adapter_with, peft::describe_keys, MissingTensors};
use lora_dpo::model::{Adapter, ModelConfig};

/// The adapter at `spec`; with `allow_missing`, one lacking tensors its config targets loads
/// with those modules untrained, and stderr says which.
pub fn load(
    spec: &str,
    model: &ModelConfig,
    device: &Device,
    allow_missing: bool,
) -> Result<Adapter> {
    let on_missing = if allow_missing {
        MissingTensors::Allow
    } else {
        MissingTensors::Refuse
    };
    let loaded = load_adapter_with(spec, model, device, on_missing)
        .with_context(|| format!("loading adapter {spec}"))?;
    if !loaded.missing.is_empty() {
        eprintln!(
            "warning: adapter {spec} lacks {} its config targets; --allow-missing: those \
             modules are left untrained (no change to the base)",
            describe_keys(&loaded.missing)
        );
    }
    Ok(loaded.adapter)
}
