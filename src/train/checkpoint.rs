//! Checkpoints: the trained adapter (PEFT folder), the optimizer state and the step, written to
//! a temporary folder and renamed, so an interrupted write never replaces a good checkpoint.
//! The data position and dropout masks are functions of the step and the seed, so the step
//! is all the loop needs to continue bit for bit.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

use super::optim::AdamW;
use crate::adapter::peft::{save_adapter, KEY_PREFIX};
use crate::model::Adapter;

const STATE_FILE: &str = "trainer_state.json";

pub fn save(
    run_dir: &Path,
    step: usize,
    adapter: &Adapter,
    opt: &AdamW,
    base_model: &str,
) -> Result<PathBuf> {
    let dir = run_dir.join(format!("checkpoint-{step}"));
    let tmp = run_dir.join(format!(".checkpoint-{step}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    save_adapter(adapter, base_model, &tmp.join("adapter"))?;
    opt.save(&tmp.join("optimizer.safetensors"))?;
    let state = serde_json::json!({ "global_step": step });
    std::fs::write(
        tmp.join(STATE_FILE),
        serde_json::to_string_pretty(&state)? + "\n",
    )?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("{}: cannot write", dir.display()))?;
    Ok(dir)
}

/// The checkpoint with the highest step in `run_dir`, if any.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Ok(None);
    };
    let mut best: Option<(usize, PathBuf)> = None;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(step) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if e.path().join(STATE_FILE).is_file() && best.as_ref().is_none_or(|(b, _)| step > *b) {
            best = Some((step, e.path()));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Loads a checkpoint into the trained adapter and the optimizer; returns its step.
pub fn restore(dir: &Path, adapter: &Adapter, opt: &mut AdamW) -> Result<usize> {
    let weights = dir.join("adapter").join("adapter_model.safetensors");
    let device = adapter
        .vars()
        .first()
        .map(|v| v.device().clone())
        .unwrap_or(Device::Cpu);
    let tensors = candle_core::safetensors::load(&weights, &device)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("{}: cannot read checkpoint", weights.display()))?;
    for (name, var) in adapter.named_vars() {
        let key = format!("{KEY_PREFIX}{name}.weight");
        let t = tensors.get(&key).with_context(|| {
            format!(
                "{}: no tensor {key}; was it saved by another run?",
                weights.display()
            )
        })?;
        if t.dims() != var.dims() {
            bail!(
                "{}: {key} has shape {:?}, the adapter {:?}",
                weights.display(),
                t.dims(),
                var.dims()
            );
        }
        var.set(t)?;
    }
    opt.load(&dir.join("optimizer.safetensors"))?;
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(STATE_FILE))
            .with_context(|| format!("{}", dir.display()))?,
    )?;
    let step = state
        .get("global_step")
        .and_then(|v| v.as_u64())
        .with_context(|| format!("{}/{STATE_FILE}: no global_step", dir.display()))?;
    Ok(step as usize)
}
