//! One owner per output folder. A writer (a training run, `merge`) holds an exclusive OS lock on
//! a file beside its output folder for as long as it writes there; the lock dies with the
//! process however it ends (no stale pid file to clean up). The file records the holder's pid
//! for the error a second writer gets. It sits beside the folder, not inside it, so it stays
//! valid when `merge --overwrite` swaps the folder for a new one.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Held while a process writes into `folder`; released on drop or exit.
#[derive(Debug)]
pub struct OutputLock {
    _file: File,
    path: PathBuf,
}

impl OutputLock {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Locks `folder` (which need not exist yet) for this process, or fails at once naming the folder
/// and the holder's pid.
pub fn lock_output(folder: &Path) -> Result<OutputLock> {
    let path = lock_path(folder)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("{}: cannot create the lock file", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("another lora-dpo process (pid {holder})")
            };
            bail!(
                "{}: {who} is writing to this folder (lock {}); wait for it to end or choose another output folder",
                folder.display(),
                path.display()
            );
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("{}: cannot lock", path.display()))
        }
    }
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(OutputLock { _file: file, path })
}

/// `<parent>/.<name>.lock` of the folder's resolved path (symlinks, `..`, `.` resolved, see
/// [`crate::paths::resolve`]), so every spelling of a folder gives the same lock. The parent is
/// created if needed.
fn lock_path(folder: &Path) -> Result<PathBuf> {
    let resolved = crate::paths::resolve(folder)?;
    let (Some(parent), Some(name)) = (resolved.parent(), resolved.file_name()) else {
        bail!("{}: cannot lock the root", folder.display());
    };
    std::fs::create_dir_all(parent)
        .with_context(|| format!("{}: cannot create", parent.display()))?;
    Ok(parent.join(format!(".{}.lock", name.to_string_lossy())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_any_spelling_of_the_folder_is_refused_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        let first = lock_output(&out).unwrap();
        for spelling in [
            out.clone(),
            tmp.path().join("run/"),
            tmp.path().join("x/../run"),
            out.join("."),
        ] {
            let err = lock_output(&spelling).unwrap_err().to_string();
            assert!(
                err.contains(&format!("pid {}", std::process::id())),
                "{spelling:?}: {err}"
            );
        }
        drop(first);
        lock_output(&out).unwrap();
    }
}
