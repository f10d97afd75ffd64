//! Keeping an output folder apart from the inputs it is made from: an output that is, holds or
//! sits inside an input would be replaced (with `--overwrite`), emptied or polluted by the very
//! write that reads it. Paths are compared after resolving symlinks, `..`, `.` and relative
//! spellings, so no spelling of an input slips through.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

use crate::paths::resolve;
use crate::source::Source;

/// One thing an output must stay apart from.
#[derive(Debug, Clone)]
pub struct Input {
    /// What it is, for messages: "the model folder", "adapter 2", ...
    pub role: String,
    /// As the user spelled it.
    pub given: String,
    /// Resolved.
    pub path: PathBuf,
}

impl Input {
    /// The files behind `spec` (a folder, a file, or a hub repo id resolved in the local cache,
    /// where the whole cached repo counts); `None` for a hub repo with nothing cached, which no
    /// output can touch. `probe` is a file the source holds, used to find a hub snapshot.
    pub fn of(role: &str, spec: &str, probe: &str) -> Result<Option<Self>> {
        let path = match Source::parse(spec)? {
            Source::Folder(p) | Source::File(p) => p,
            hub @ Source::Hub { .. } => match hub.find(probe)? {
                Some(file) => hub_repo_folder(&file),
                None => return Ok(None),
            },
        };
        Ok(Some(Self {
            role: role.to_string(),
            given: spec.to_string(),
            path: resolve(&path)?,
        }))
    }
}

/// `<cache>/models--owner--name` for a file of a hub snapshot
/// (`<cache>/models--owner--name/snapshots/<revision>/<file>`; the snapshot's files link into
/// the repo's `blobs`), else the file's folder.
fn hub_repo_folder(file: &Path) -> PathBuf {
    let snapshot = file.parent().unwrap_or(file);
    match snapshot.parent() {
        Some(snapshots) if snapshots.file_name().is_some_and(|n| n == "snapshots") => {
            snapshots.parent().unwrap_or(snapshots).to_path_buf()
        }
        _ => snapshot.to_path_buf(),
    }
}

/// Refuses an `out` that is, holds or sits inside any of `inputs`, naming both.
pub fn check_apart(out: &Path, inputs: &[Input]) -> Result<()> {
    let resolved = resolve(out)?;
    for input in inputs {
        let why = if resolved == input.path {
            "is"
        } else if input.path.starts_with(&resolved) {
            "holds"
        } else if resolved.starts_with(&input.path) {
            "is inside"
        } else {
            continue;
        };
        bail!(
            "--out {} ({}) {why} {} {} ({}): writing there could replace or alter an input; \
             choose an output folder apart from every input",
            out.display(),
            resolved.display(),
            input.role,
            input.given,
            input.path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_beside_the_input_is_allowed_and_around_or_inside_it_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        std::fs::create_dir_all(&model).unwrap();
        let inputs = [Input {
            role: "the model folder".into(),
            given: "model".into(),
            path: resolve(&model).unwrap(),
        }];
        check_apart(&tmp.path().join("merged"), &inputs).unwrap();
        check_apart(&tmp.path().join("model-merged"), &inputs).unwrap();
        for (out, why) in [
            (model.clone(), " is "),
            (tmp.path().to_path_buf(), " holds "),
            (model.join("sub"), " is inside "),
        ] {
            let err = check_apart(&out, &inputs).unwrap_err().to_string();
            assert!(
                err.contains(why) && err.contains("the model folder"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_hub_file_counts_as_its_whole_cached_repo() {
        let file = Path::new("/c/models--o--n/snapshots/abc/config.json");
        assert_eq!(hub_repo_folder(file), Path::new("/c/models--o--n"));
        assert_eq!(
            hub_repo_folder(Path::new("/x/y/config.json")),
            Path::new("/x/y")
        );
    }
}
