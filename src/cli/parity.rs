//! `lora-dpo parity`: the reference checks on a device (the GPU kit runs them), as JSON.

use anyhow::Context;
use std::path::PathBuf;

use lora_dpo::model::parse_dtype;
use lora_dpo::ops::Kernels;
use lora_dpo::train::run::select_device;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The fixtures folder (tests/fixtures of the source tree).
    #[arg(long, default_value = "tests/fixtures")]
    fixtures: PathBuf,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// auto or generic.
    #[arg(long, default_value = "auto")]
    kernels: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = select_device(&args.device)?;
    let dtype = parse_dtype(&args.dtype).context("--dtype")?;
    let kernels = Kernels::parse(&args.kernels).context("--kernels")?;
    let checks = lora_dpo::parity::run(&args.fixtures, &device, dtype, kernels)?;
    let pass = checks.iter().all(|c| c.pass);
    let out = serde_json::json!({
        "device": format!("{device:?}"),
        "dtype": args.dtype,
        "kernels": kernels.describe(&device, dtype),
        "pass": pass,
        "checks": checks,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    if !pass {
        let failed: Vec<&str> = (checks.iter().filter(|c| !c.pass))
            .map(|c| c.name.as_str())
            .collect();
        anyhow::bail!("parity checks failed: {}", failed.join("; "));
    }
    Ok(())
}
