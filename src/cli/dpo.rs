//! `lora-dpo dpo`: DPO of a LoRA adapter; the reference is the base (with `[dpo] ref_adapter`
//! if set) without the trained adapter.

use super::common::{finish, RunArgs};
use lora_dpo::train::run::{run_dpo, Session};

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let (cfg, opts) = args.load()?;
    let session = Session::open(&cfg)?;
    let (_, result) = run_dpo(&session, &cfg, &opts, None)?;
    finish(&[("dpo", &result)]);
    Ok(())
}
