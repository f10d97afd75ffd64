//! The output folder of a run: one process owns it while it writes, an earlier run found there
//! is continued or replaced only when asked, and a stage that already finished with the same
//! fingerprint is recognised.

use anyhow::{bail, Context, Result};
use std::path::Path;

use super::checkpoint;
use super::fingerprint::RunFingerprint;
use super::run::RunOptions;
use crate::lock::{lock_output, OutputLock};

/// Takes the output folder for this process and checks that the stages about to run may write
/// there: a folder holding an earlier run is refused unless it is resumed or overwritten
/// (`--overwrite` removes the stages' earlier outputs first).
pub fn claim(out: &str, opts: &RunOptions, stages: &[&str]) -> Result<OutputLock> {
    if opts.resume && opts.overwrite {
        bail!("--resume and --overwrite: choose one (continue the run, or start it again)");
    }
    let out = Path::new(out);
    let lock = lock_output(out)?;
    for stage in stages {
        let dir = out.join(stage);
        crate::atomic_dir::recover(&dir)?;
        let holds_a_run = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
        if !holds_a_run || opts.resume {
            continue;
        }
        if opts.overwrite {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("{}: cannot remove the earlier run", dir.display()))?;
            eprintln!("--overwrite: removed the earlier run in {}", dir.display());
        } else {
            bail!(
                "{}: holds an earlier run; pass --resume to continue it, or --overwrite to \
                 replace it (or set [output] dir to another folder)",
                dir.display()
            );
        }
    }
    Ok(lock)
}

/// The step count of the stage finished in `run_dir` with `fingerprint`; None if it did not
/// finish; an error listing the differences if it finished with other settings.
pub fn finished(run_dir: &Path, fingerprint: &RunFingerprint) -> Result<Option<usize>> {
    let Some(checkpoint::Completed {
        fingerprint: Some(recorded),
        steps,
    }) = checkpoint::completed(run_dir)?
    else {
        return Ok(None);
    };
    let diff = fingerprint.differences(&recorded);
    if !diff.is_empty() {
        bail!(
            "{}: finished by a run with other settings:\n  {}\nrestore those settings to resume, \
             or pass --overwrite to train it again",
            run_dir.display(),
            diff.join("\n  ")
        );
    }
    Ok(Some(steps))
}
