//! Where model and adapter files come from: a local folder, a single file, or a repo id
//! resolved in the local Hugging Face hub cache.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// A resolved location: a local folder (or file), or a repo in the hub cache.
#[derive(Debug, Clone)]
pub enum Source {
    /// A folder on disk holding the files.
    Folder(PathBuf),
    /// A single file (a GGUF model).
    File(PathBuf),
    /// A hub repo id; files are looked up in the local cache, downloaded only when allowed.
    Hub { repo_id: String, revision: String },
}

impl Source {
    /// Interprets `spec`: an existing path wins; otherwise `owner/name[@revision]` is a hub repo id.
    pub fn parse(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(Source::Folder(path.to_path_buf()));
        }
        if path.is_file() {
            return Ok(Source::File(path.to_path_buf()));
        }
        let (repo_id, revision) = match spec.split_once('@') {
            Some((id, rev)) => (id, rev),
            None => (spec, "main"),
        };
        let looks_like_repo = repo_id.split('/').count() == 2
            && !repo_id.starts_with('.')
            && !repo_id.starts_with('/')
            && repo_id.split('/').all(|p| !p.is_empty());
        if !looks_like_repo {
            bail!(
                "`{spec}`: no such file or folder (and not a hub repo id of the form owner/name)"
            );
        }
        Ok(Source::Hub {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
        })
    }

    /// A short human-readable name, used in messages and in adapter configs.
    pub fn display_name(&self) -> String {
        match self {
            Source::Folder(p) | Source::File(p) => p.display().to_string(),
            Source::Hub { repo_id, .. } => repo_id.clone(),
        }
    }

    /// Path of `name` inside the source, or `None` when it does not exist there.
    pub fn find(&self, name: &str) -> Result<Option<PathBuf>> {
        match self {
            Source::Folder(dir) => {
                let p = dir.join(name);
                Ok(p.is_file().then_some(p))
            }
            Source::File(_) => Ok(None),
            Source::Hub { repo_id, revision } => hub_file(repo_id, revision, name),
        }
    }

    /// Path of `name`, or an error naming the file and where it was looked for.
    pub fn require(&self, name: &str) -> Result<PathBuf> {
        self.find(name)?.with_context(|| match self {
            Source::Folder(dir) => format!("{}: file not found", dir.join(name).display()),
            Source::File(p) => format!("{}: expected a folder holding {name}", p.display()),
            Source::Hub { repo_id, .. } => format!(
                "{name} of hub repo {repo_id} is not in the local Hugging Face cache \
                 and could not be downloaded"
            ),
        })
    }
}

pub(crate) fn hub_offline() -> bool {
    matches!(
        std::env::var("HF_HUB_OFFLINE").as_deref(),
        Ok("1") | Ok("true") | Ok("TRUE") | Ok("yes")
    )
}

pub(crate) fn hub_cache() -> hf_hub::Cache {
    // hf-hub reads HF_HOME; HF_HUB_CACHE is the more specific setting users also know.
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => hf_hub::Cache::new(PathBuf::from(dir)),
        None => hf_hub::Cache::from_env(),
    }
}

/// A cached file is served without network; an uncached one is downloaded unless offline.
fn hub_file(repo_id: &str, revision: &str, name: &str) -> Result<Option<PathBuf>> {
    let repo =
        hf_hub::Repo::with_revision(repo_id.into(), hf_hub::RepoType::Model, revision.into());
    if let Some(p) = hub_cache().repo(repo.clone()).get(name) {
        return Ok(Some(p));
    }
    if hub_offline() {
        return Ok(None);
    }
    let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(hub_cache()).with_progress(false);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    let api = builder
        .build()
        .context("setting up the Hugging Face hub client")?;
    match api.repo(repo).get(name) {
        Ok(p) => Ok(Some(p)),
        Err(_) => Ok(None),
    }
}
