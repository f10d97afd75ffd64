//! `lora-dpo train`: SFT then DPO on one loaded base; the DPO reference is the SFT model.

use super::common::{finish, RunArgs};
use lora_dpo::train::run::{run_train, Session};

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let (cfg, opts) = args.load()?;
    let session = Session::open(&cfg)?;
    let results = run_train(&session, &cfg, &opts)?;
    let named: Vec<_> = ["sft", "dpo", "combined"]
        .into_iter()
        .zip(&results)
        .collect();
    finish(&named);
    Ok(())
}
