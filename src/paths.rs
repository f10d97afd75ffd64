//! Paths resolved whether or not they exist yet, so that every spelling of one place (symlinks,
//! `..`, `.`, a trailing `/`, relative or absolute) compares and locks as the same path.

use anyhow::{bail, Context, Result};
use std::path::{Component, Path, PathBuf};

/// `path` made absolute with symlinks, `.` and `..` resolved, whether or not it exists: its
/// longest existing prefix is canonicalized and the rest appended, `..` there taken lexically
/// (what creating the missing folders would end up naming).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path)
        .with_context(|| format!("{}: not a usable path", path.display()))?;
    let components: Vec<Component> = absolute.components().collect();
    for split in (1..=components.len()).rev() {
        let prefix: PathBuf = components[..split].iter().collect();
        let Ok(mut resolved) = prefix.canonicalize() else {
            continue;
        };
        for c in &components[split..] {
            match c {
                Component::ParentDir => {
                    resolved.pop();
                }
                Component::CurDir => {}
                other => resolved.push(other),
            }
        }
        return Ok(resolved);
    }
    bail!("{}: cannot resolve any part of the path", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_folder_resolve_alike() {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        std::fs::create_dir_all(&model).unwrap();
        std::os::unix::fs::symlink(&model, tmp.path().join("link")).unwrap();
        let want = model.canonicalize().unwrap();
        for spelling in [
            tmp.path().join("model/"),
            tmp.path().join("model/./"),
            tmp.path().join("missing/../model"),
            tmp.path().join("link"),
        ] {
            assert_eq!(resolve(&spelling).unwrap(), want, "{spelling:?}");
        }
        assert_eq!(
            resolve(&tmp.path().join("link/new/x/..")).unwrap(),
            want.join("new")
        );
    }
}
