//! `lora-dpo orpo`: ORPO of a LoRA adapter ([orpo] section); no reference, no SFT stage.

use super::common::{finish, RunArgs};
use lora_dpo::train::run::{run_orpo, Session};

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let (cfg, opts) = args.load()?;
    let session = Session::open(&cfg)?;
    let (_, result) = run_orpo(&session, &cfg, &opts, None)?;
    finish(&[("orpo", &result)]);
    Ok(())
}
