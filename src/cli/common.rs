//! Arguments shared by the training commands.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lora_dpo::config::LoadedConfig;
use lora_dpo::train::run::RunOptions;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// TOML run configuration.
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config key, e.g. --set dpo.beta=0.05 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Continue from the latest checkpoint in the run folder.
    #[arg(long)]
    pub resume: bool,
    /// No progress bar (logs and metrics.jsonl are still written).
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `--dtype` and `--kernels`: shorthands for `--set model.dtype=…` and `--set model.kernels=…`.
#[derive(clap::Args, Debug, Default)]
pub struct ModelArgs {
    /// Frozen weights and activations: f32, bf16 or f16 (overrides [model] dtype).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Ops: auto (the fastest for the device and dtype) or generic (overrides [model] kernels).
    #[arg(long)]
    pub kernels: Option<String>,
}

impl ModelArgs {
    /// `overrides` followed by the `model.*` overrides these flags stand for.
    pub fn overrides(&self, overrides: &[String]) -> Vec<String> {
        let mut all = overrides.to_vec();
        let quoted = |key: &str, v: &String| format!("model.{key}=\"{}\"", v.replace('"', ""));
        all.extend(self.dtype.iter().map(|v| quoted("dtype", v)));
        all.extend(self.kernels.iter().map(|v| quoted("kernels", v)));
        all
    }
}

impl RunArgs {
    pub fn load(&self) -> anyhow::Result<(LoadedConfig, RunOptions)> {
        let cfg = LoadedConfig::load(&self.config, &self.model.overrides(&self.overrides))?;
        let interrupted = Arc::new(AtomicBool::new(false));
        let flag = interrupted.clone();
        // First Ctrl-C: finish the step, save a checkpoint, exit cleanly. Second: exit now.
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit now)"
            );
        });
        let opts = RunOptions {
            resume: self.resume,
            show_progress: !self.no_progress,
            interrupted,
            timings: None,
        };
        Ok((cfg, opts))
    }
}

/// Prints where a stage's outputs went.
pub fn report(stage: &str, result: &lora_dpo::train::run::StageResult) {
    match &result.finish {
        lora_dpo::train::trainer::Finish::Completed { .. } => {
            eprintln!("{stage}: adapter saved to {}", result.adapter_dir.display())
        }
        lora_dpo::train::trainer::Finish::Interrupted { step, checkpoint } => eprintln!(
            "{stage}: interrupted at step {step}; checkpoint {} (continue with --resume)",
            checkpoint.display()
        ),
    }
}
