//! `lora-dpo sft`: supervised fine-tuning of a LoRA adapter.

use super::common::{finish, RunArgs};
use lora_dpo::train::run::{run_sft, Session};

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let (cfg, opts) = args.load()?;
    let session = Session::open(&cfg)?;
    let (_, result) = run_sft(&session, &cfg, &opts)?;
    finish(&[("sft", &result)]);
    Ok(())
}
