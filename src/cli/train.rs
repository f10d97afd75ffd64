//! `lora-dpo train`: SFT then DPO (or KTO) on one loaded base; the reference is the SFT model.

use super::common::{finish, RunArgs};
use lora_dpo::train::run::{preference_stage, run_train, Session};

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let (cfg, opts) = args.load()?;
    let session = Session::open(&cfg)?;
    let preference = preference_stage(&cfg)?;
    let results = run_train(&session, &cfg, &opts)?;
    let named: Vec<_> = ["sft", preference.as_str(), "combined"]
        .into_iter()
        .zip(&results)
        .collect();
    finish(&named);
    Ok(())
}
