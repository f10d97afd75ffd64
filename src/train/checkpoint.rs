//! Checkpoints: the trained adapter (PEFT folder), the optimizer state and the step, written to
//! a temporary folder and renamed, so an interrupted write never replaces a good checkpoint.
//! The data position and dropout masks are functions of the step and the seed, so the step
//! is all the loop needs to continue bit for bit. Each checkpoint records the run's
//! [`RunFingerprint`], and a finished stage records it beside its adapter, so a resumed run
//! continues only its own work.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

use super::fingerprint::RunFingerprint;
use super::optim::AdamW;
use crate::adapter::peft::{save_adapter, KEY_PREFIX};
use crate::model::Adapter;

const STATE_FILE: &str = "trainer_state.json";

/// A stage's finished state beside its adapter folder.
const STAGE_FILE: &str = "run_state.json";

pub fn save(
    run_dir: &Path,
    step: usize,
    tokens_seen: f64,
    adapter: &Adapter,
    opt: &AdamW,
    base_model: &str,
    fingerprint: &RunFingerprint,
) -> Result<PathBuf> {
    let dir = run_dir.join(format!("checkpoint-{step}"));
    let tmp = run_dir.join(format!(".checkpoint-{step}.tmp"));
    let context = || format!("{}: cannot write", tmp.display());
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(context)?;
    }
    std::fs::create_dir_all(&tmp).with_context(context)?;
    save_adapter(adapter, base_model, &tmp.join("adapter"))?;
    opt.save(&tmp.join("optimizer.safetensors"))?;
    crate::fault::point("checkpoint-before-state");
    let state = serde_json::json!({
        "global_step": step,
        // Hugging Face Trainer's name: the training tokens so far (TRL's `num_tokens`).
        "num_input_tokens_seen": tokens_seen,
        "fingerprint": fingerprint.to_json(),
    });
    std::fs::write(
        tmp.join(STATE_FILE),
        serde_json::to_string_pretty(&state)? + "\n",
    )
    .with_context(context)?;
    crate::fault::point("checkpoint-before-rename");
    crate::atomic_dir::replace_dir(&tmp, &dir)?;
    crate::fault::point("checkpoint-after-rename");
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

/// The training tokens a checkpoint had seen (0 for one written before they were recorded).
pub fn tokens_seen(dir: &Path) -> Result<f64> {
    Ok(read_state(&dir.join(STATE_FILE))?
        .get("num_input_tokens_seen")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0))
}

/// What a checkpoint records of the run that wrote it (None: written before fingerprints were).
pub fn recorded_fingerprint(dir: &Path) -> Result<Option<RunFingerprint>> {
    Ok(read_state(&dir.join(STATE_FILE))?
        .get("fingerprint")
        .and_then(RunFingerprint::from_json))
}

fn read_state(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

/// Removes the oldest checkpoints beyond the `keep` newest (Hugging Face's `save_total_limit`).
pub fn prune(run_dir: &Path, keep: usize) -> Result<()> {
    let mut steps: Vec<(usize, PathBuf)> = std::fs::read_dir(run_dir)
        .with_context(|| format!("{}: cannot read", run_dir.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("checkpoint-")?.parse::<usize>().ok()?;
            Some((step, e.path()))
        })
        .collect();
    steps.sort();
    let excess = steps.len().saturating_sub(keep);
    for (_, dir) in steps.into_iter().take(excess) {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("{}: cannot remove", dir.display()))?;
    }
    Ok(())
}

/// Records that the stage in `run_dir` finished after `steps` with its adapter saved.
pub fn mark_complete(run_dir: &Path, steps: usize, fingerprint: &RunFingerprint) -> Result<()> {
    let path = run_dir.join(STAGE_FILE);
    let tmp = run_dir.join(format!(".{STAGE_FILE}.tmp"));
    let state = serde_json::json!({
        "completed": true,
        "global_step": steps,
        "fingerprint": fingerprint.to_json(),
    });
    std::fs::write(&tmp, serde_json::to_string_pretty(&state)? + "\n")
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    crate::fault::point("stage-before-state");
    std::fs::rename(&tmp, &path).with_context(|| format!("{}: cannot write", path.display()))
}

/// A finished stage's record: its fingerprint and the steps it ran.
pub struct Completed {
    pub fingerprint: Option<RunFingerprint>,
    pub steps: usize,
}

/// What the stage finished in `run_dir` recorded, if it finished.
pub fn completed(run_dir: &Path) -> Result<Option<Completed>> {
    let path = run_dir.join(STAGE_FILE);
    if !path.is_file() || !run_dir.join("adapter").is_dir() {
        return Ok(None);
    }
    let state = read_state(&path)?;
    if state.get("completed").and_then(|v| v.as_bool()) != Some(true) {
        return Ok(None);
    }
    Ok(Some(Completed {
        fingerprint: state.get("fingerprint").and_then(RunFingerprint::from_json),
        steps: state
            .get("global_step")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as usize,
    }))
}
