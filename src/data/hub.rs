//! Datasets named on the Hugging Face hub: `hf://datasets/OWNER/NAME` with a split and a
//! revision, as TRL users write `load_dataset("OWNER/NAME", split=...)`. The split's data files
//! (the repo's own parquet/JSON files, or else its `refs/convert/parquet` branch) are fetched
//! into the standard HF cache (`HF_HUB_CACHE`, else `HF_HOME/hub`); with `HF_HUB_OFFLINE=1`
//! only the cache is used, and a split that is not there is a clear error.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

use super::reader::{list_files, split_matches};

const PREFIX: &str = "hf://datasets/";
/// The branch the hub's dataset viewer writes every split to as parquet.
const CONVERTED: &str = "refs/convert/parquet";

/// Where a stage's data comes from: a path, or a hub dataset resolved to its cached files.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSource {
    /// The file or folder to read.
    pub path: PathBuf,
    /// The split to select in a folder (`None`: the reader's default).
    pub split: Option<String>,
}

/// The `OWNER/NAME` of a `hf://datasets/OWNER/NAME` spec (`None` for a local path).
pub fn repo_of(spec: &str) -> Option<&str> {
    spec.strip_prefix(PREFIX)
}

/// Resolves a `train_file`/`eval_file` value: a hub name to its cached snapshot folder (the
/// split's files downloaded first unless offline), a path as it is.
pub fn resolve(spec: &str, split: Option<&str>, revision: Option<&str>) -> Result<DataSource> {
    let Some(repo_id) = repo_of(spec) else {
        return Ok(DataSource {
            path: PathBuf::from(spec),
            split: split.map(str::to_string),
        });
    };
    if repo_id.split('/').count() != 2 || repo_id.split('/').any(str::is_empty) {
        bail!("{spec}: a hub dataset is named hf://datasets/OWNER/NAME");
    }
    let split = split.unwrap_or("train");
    let revision = revision.unwrap_or("main");
    let cache = crate::source::hub_cache();
    for rev in [revision, CONVERTED] {
        if let Some(dir) = cached_split(cache.path(), repo_id, rev, split) {
            return Ok(found(dir, split));
        }
    }
    if crate::source::hub_offline() {
        bail!(
            "{spec}: split `{split}` (revision {revision}) is not in the Hugging Face cache at {} \
             and HF_HUB_OFFLINE is set; run once with network access, or point HF_HUB_CACHE at a \
             cache that holds it",
            cache.path().display()
        );
    }
    let dir = download_split(repo_id, revision, split).with_context(|| spec.to_string())?;
    Ok(found(dir, split))
}

fn found(dir: PathBuf, split: &str) -> DataSource {
    DataSource {
        path: dir,
        split: Some(split.to_string()),
    }
}

/// The cache's snapshot folder of `repo_id` at `revision` when it holds files of `split`.
pub fn cached_split(cache: &Path, repo_id: &str, revision: &str, split: &str) -> Option<PathBuf> {
    let repo = cache.join(format!("datasets--{}", repo_id.replace('/', "--")));
    let commit = std::fs::read_to_string(repo.join("refs").join(revision))
        .ok()
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|| revision.to_string());
    let dir = repo.join("snapshots").join(commit);
    list_files(&dir, Some(split)).ok().map(|_| dir)
}

/// Downloads the split's data files (the repo's own, else the converted parquet branch's) and
/// returns the snapshot folder holding them.
fn download_split(repo_id: &str, revision: &str, split: &str) -> Result<PathBuf> {
    let mut builder = hf_hub::api::sync::ApiBuilder::from_env().with_progress(true);
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        builder = builder.with_cache_dir(PathBuf::from(dir));
    }
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    let api = builder
        .build()
        .context("setting up the Hugging Face hub client")?;
    for rev in [revision, CONVERTED] {
        let repo =
            hf_hub::Repo::with_revision(repo_id.into(), hf_hub::RepoType::Dataset, rev.into());
        let repo = api.repo(repo);
        let info = repo
            .info()
            .with_context(|| format!("listing the files of {repo_id} at {rev}"))?;
        let names: Vec<String> = info
            .siblings
            .iter()
            .map(|s| s.rfilename.clone())
            .filter(|n| split_matches(Path::new(n), split))
            .collect();
        if names.is_empty() {
            continue;
        }
        let mut snapshot = None;
        for name in &names {
            let local = repo
                .get(name)
                .with_context(|| format!("downloading {name} of {repo_id} at {rev}"))?;
            // <snapshot>/<name>: the folder the name is relative to.
            let depth = Path::new(name).components().count();
            snapshot = local.ancestors().nth(depth).map(Path::to_path_buf);
        }
        return snapshot.context("the hub listed files it did not download");
    }
    bail!("the hub repo {repo_id} has no data files for split `{split}` at {revision} nor in {CONVERTED}")
}
