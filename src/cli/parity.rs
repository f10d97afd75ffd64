//! `lora-dpo parity`: the reference checks on a device (the GPU kit runs them), as JSON.

use std::path::PathBuf;

use lora_dpo::config::DeviceSpec;
use lora_dpo::model::Dtype;
use lora_dpo::ops::Kernels;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The fixtures folder (tests/fixtures of the source tree).
    #[arg(long, default_value = "tests/fixtures")]
    fixtures: PathBuf,
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
    #[arg(long, default_value = "auto")]
    kernels: Kernels,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let dtype = args.dtype.into();
    let kernels = args.kernels;
    let checks = lora_dpo::parity::run(&args.fixtures, &device, dtype, kernels)?;
    let pass = checks.iter().all(|c| c.pass);
    let out = serde_json::json!({
        "device": format!("{device:?}"),
        "dtype": args.dtype.to_string(),
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
