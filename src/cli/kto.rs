//! `lora-dpo kto`: KTO of a LoRA adapter on unpaired (labelled) rows; the reference is the base
//! (with `[kto] ref_adapter` if set) without the trained adapter.

use super::common::{finish, RunArgs};
use lora_dpo::train::kto_run::run_kto;
use lora_dpo::train::run::Session;

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let (cfg, opts) = args.load()?;
    let session = Session::open(&cfg)?;
    let (_, result) = run_kto(&session, &cfg, &opts, None)?;
    finish(&[("kto", &result)]);
    Ok(())
}
