//! `lora-dpo train`: every stage of the config ([sft] → [dpo] or [kto] → [orpo]) on one loaded
//! base; a preference stage's reference is the base with the earlier stages' adapters.

use super::common::{finish, RunArgs};
use lora_dpo::train::run::{run_train, Session};

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let (cfg, opts) = args.load()?;
    let session = Session::open(&cfg)?;
    let results = run_train(&session, &cfg, &opts)?;
    let run_dir = std::path::Path::new(&cfg.run.output.dir);
    match lora_dpo::report::write(run_dir, None) {
        Ok(page) => eprintln!("report: {}", page.display()),
        // The adapters are saved; a report that cannot be written does not undo the run.
        Err(e) => eprintln!("warning: no report written: {e:#}"),
    }
    let named: Vec<_> = results.iter().map(|(n, r)| (*n, r)).collect();
    finish(&named);
    Ok(())
}
