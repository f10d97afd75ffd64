//! Writing a file so that a kill or an error at any moment leaves the old file or the complete
//! new one under the final name, never a partial one.

use anyhow::{Context, Result};
use std::path::Path;

/// Runs `write` on a temporary file beside `out` and renames it into place: a partial file
/// never takes the output's name, and a failed write leaves none behind.
pub fn write_into_place<T>(out: &Path, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let name = out
        .file_name()
        .with_context(|| format!("{}: no file name", out.display()))?;
    let tmp = out.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let value = match write(&tmp) {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out)
        .with_context(|| format!("{}: cannot rename into place", out.display()))?;
    Ok(value)
}
