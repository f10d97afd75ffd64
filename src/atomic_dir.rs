//! Replacing a folder by a complete new one so that a kill at any moment leaves the old or the
//! new folder under the final name, never neither: the new folder is written beside the target
//! under a temporary name, then swapped in.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Makes the complete folder `new` (a sibling of `target`) be `target`, and removes the old
/// `target` if there was one.
pub fn replace_dir(new: &Path, target: &Path) -> Result<()> {
    if !target.exists() {
        return std::fs::rename(new, target).with_context(|| {
            format!(
                "{}: cannot rename {} to it",
                target.display(),
                new.display()
            )
        });
    }
    if exchange(new, target)? {
        // `new` now holds the old folder.
        crate::fault::point("replace-dir-after-swap");
        return std::fs::remove_dir_all(new)
            .with_context(|| format!("{}: cannot remove the replaced folder", new.display()));
    }
    // No atomic exchange here: move the old folder aside, then the new one in. A kill between
    // the two leaves the old one at `.NAME.old`, which [`recover`] puts back.
    let old = old_name(target)?;
    if old.exists() {
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("{}: cannot remove", old.display()))?;
    }
    std::fs::rename(target, &old)
        .with_context(|| format!("{}: cannot move the old folder away", target.display()))?;
    crate::fault::point("replace-dir-between-renames");
    std::fs::rename(new, target).with_context(|| {
        format!(
            "{}: cannot rename {} to it",
            target.display(),
            new.display()
        )
    })?;
    std::fs::remove_dir_all(&old).with_context(|| format!("{}: cannot remove", old.display()))
}

/// Puts back a folder a kill left only under its `.NAME.old` name (the fallback path of
/// [`replace_dir`]); returns whether it did.
pub fn recover(target: &Path) -> Result<bool> {
    let old = old_name(target)?;
    if target.exists() || !old.is_dir() {
        return Ok(false);
    }
    std::fs::rename(&old, target).with_context(|| {
        format!(
            "{}: cannot restore it from {}",
            target.display(),
            old.display()
        )
    })?;
    Ok(true)
}

fn old_name(target: &Path) -> Result<PathBuf> {
    let name = target
        .file_name()
        .with_context(|| format!("{}: the path has no folder name", target.display()))?;
    Ok(target.with_file_name(format!(".{}.old", name.to_string_lossy())))
}

/// Swaps two paths atomically where the system can (Linux `renameat2(RENAME_EXCHANGE)`); false
/// where it cannot.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn exchange(a: &Path, b: &Path) -> Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes()).context("path holds a NUL byte")?;
    let cb = CString::new(b.as_os_str().as_bytes()).context("path holds a NUL byte")?;
    // SAFETY: two valid NUL-terminated paths; the call reads them and touches nothing else.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        // The filesystem or kernel does not support the exchange.
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP) => Ok(false),
        _ => Err(err).with_context(|| format!("{}: cannot swap in {}", b.display(), a.display())),
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn exchange(_a: &Path, _b: &Path) -> Result<bool> {
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_folder_replaces_the_old_and_nothing_is_left_beside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (new, target) = (tmp.path().join(".out.tmp"), tmp.path().join("out"));
        for (dir, text) in [(&new, "new"), (&target, "old")] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("f"), text).unwrap();
        }
        replace_dir(&new, &target).unwrap();
        assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), "new");
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_folder_left_only_under_its_old_name_is_recovered() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("out");
        std::fs::create_dir_all(tmp.path().join(".out.old")).unwrap();
        assert!(recover(&target).unwrap());
        assert!(target.is_dir());
        assert!(!recover(&target).unwrap());
    }
}
