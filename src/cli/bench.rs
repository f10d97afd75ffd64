//! `lora-dpo bench`: median seconds per step, tokens/s, peak memory and where the time goes.

use std::path::PathBuf;

use lora_dpo::config::LoadedConfig;
use lora_dpo::data::Stage;
use lora_dpo::train::bench::{bench, BenchRequest};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long)]
    config: PathBuf,
    /// Override a config key (repeatable), e.g. --set dpo.per_device_train_batch_size=4.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// sft, dpo or orpo.
    #[arg(long, default_value = "dpo")]
    stage: Stage,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: super::common::ModelArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = LoadedConfig::load(&args.config, &args.model.overrides(&args.overrides))?;
    let request = BenchRequest {
        stage: args.stage,
        steps: args.steps,
        warmup: args.warmup,
    };
    let out = bench(&cfg, &request)?;
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!(
        "{} on {}: {:.3} s/step (median of {}), {:.1} tokens/s, peak RSS {:.0} MiB",
        out["stage"].as_str().unwrap_or(""),
        out["device"].as_str().unwrap_or(""),
        out["sec_per_step_median"].as_f64().unwrap_or(f64::NAN),
        out["steps"],
        out["tokens_per_sec"].as_f64().unwrap_or(f64::NAN),
        out["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
    );
    if let Some(b) = out["breakdown_sec_median"].as_object() {
        let parts: Vec<String> = b
            .iter()
            .map(|(k, v)| format!("{k} {:.3}", v.as_f64().unwrap_or(f64::NAN)))
            .collect();
        println!("  median seconds: {}", parts.join(", "));
    }
    let f = |k: &str| out[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "  matmul rate: forward {:.1} GFLOP/s ({:.0}%), backward {:.1} GFLOP/s ({:.0}%) of a plain \
         f32 matmul measured around each step (median {:.1} GFLOP/s); against the run's best \
         ({:.1} GFLOP/s): forward {:.0}%, backward {:.0}%",
        f("forward_gflops"),
        100.0 * f("forward_matmul_efficiency"),
        f("backward_gflops"),
        100.0 * f("backward_matmul_efficiency"),
        f("matmul_gflops_median"),
        f("matmul_gflops_peak"),
        100.0 * f("forward_matmul_efficiency_vs_best"),
        100.0 * f("backward_matmul_efficiency_vs_best"),
    );
    Ok(())
}
