//! Arguments shared by the training commands.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use lora_dpo::config::LoadedConfig;
use lora_dpo::model::Dtype;
use lora_dpo::ops::Kernels;
use lora_dpo::train::run::RunOptions;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// TOML run configuration.
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config key, e.g. --set dpo.beta=0.05 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Continue the run in the output folder: from its latest checkpoint, skipping stages that
    /// already finished; refused if the checkpoint was written with other settings.
    #[arg(long)]
    pub resume: bool,
    /// Replace an earlier run in the output folder instead of refusing to write there.
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bar (logs and metrics.jsonl are still written).
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `--dtype` and `--kernels`: shorthands for `--set model.dtype=…` and `--set model.kernels=…`.
#[derive(clap::Args, Debug, Default)]
pub struct ModelArgs {
    /// Frozen weights and activations (overrides [model] dtype).
    #[arg(long)]
    pub dtype: Option<Dtype>,
    /// Ops: auto (the fastest for the device and dtype) or generic (overrides [model] kernels).
    #[arg(long)]
    pub kernels: Option<Kernels>,
}

impl ModelArgs {
    /// `overrides` followed by the `model.*` overrides these flags stand for.
    pub fn overrides(&self, overrides: &[String]) -> Vec<String> {
        let mut all = overrides.to_vec();
        all.extend(self.dtype.map(|v| format!("model.dtype=\"{v}\"")));
        all.extend(self.kernels.map(|v| format!("model.kernels=\"{v}\"")));
        all
    }
}

impl RunArgs {
    pub fn load(&self) -> anyhow::Result<(LoadedConfig, RunOptions)> {
        let cfg = LoadedConfig::load(&self.config, &self.model.overrides(&self.overrides))?;
        let interrupted = Arc::new(AtomicBool::new(false));
        super::signals::watch(interrupted.clone());
        let opts = RunOptions {
            resume: self.resume,
            overwrite: self.overwrite,
            show_progress: !self.no_progress,
            interrupted,
            timings: None,
        };
        Ok((cfg, opts))
    }
}

/// Prints where each stage's outputs went; a run stopped by a signal exits here with
/// 128 + the signal's number, so a scheduler or a script sees that it did not complete.
pub fn finish(results: &[(&str, &lora_dpo::train::run::StageResult)]) {
    use lora_dpo::train::trainer::Finish;
    let mut interrupted = false;
    for (stage, result) in results {
        match &result.finish {
            Finish::Completed { .. } => {
                eprintln!("{stage}: adapter saved to {}", result.adapter_dir.display())
            }
            Finish::Interrupted { step, checkpoint } => {
                interrupted = true;
                eprintln!(
                    "{stage}: stopped at step {step}; checkpoint {} (continue with the same command and --resume)",
                    checkpoint.display()
                )
            }
        }
    }
    if interrupted {
        std::process::exit(super::signals::exit_code());
    }
}
