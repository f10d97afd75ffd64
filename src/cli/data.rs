//! `lora-dpo data`: placeholder until the data pipeline lands.

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("the `data` command is not implemented yet")
}
