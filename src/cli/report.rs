//! `lora-dpo report RUN_DIR`: the run's curves, evaluation, checkpoints and warnings as one
//! self-contained HTML page.

use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run folder (`[output] dir`: stage folders with metrics.jsonl) or one stage's folder.
    pub run_dir: PathBuf,
    /// Where to write the page (default: RUN_DIR/report.html).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let page = lora_dpo::report::write(&args.run_dir, args.out.as_deref())?;
    println!("{}", page.display());
    Ok(())
}
