//! `lora-dpo train`: SFT then DPO on one loaded base; the DPO reference is the SFT model.

use super::common::{report, RunArgs};
use lora_dpo::train::run::{run_train, Session};

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let (cfg, opts) = args.load()?;
    let session = Session::open(&cfg)?;
    let results = run_train(&session, &cfg, &opts)?;
    for (stage, result) in ["sft", "dpo", "combined"].iter().zip(&results) {
        report(stage, result);
    }
    Ok(())
}
