//! The on-disk cache (`$LORA_DPO_CACHE`, else `$XDG_CACHE_HOME/lora-dpo`, else
//! `~/.cache/lora-dpo`) and the content hashes of large files kept in it: a weight file is read
//! whole once, then its hash is reused while its path, size and modification time are unchanged.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// The cache folder.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LORA_DPO_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("lora-dpo")
}

#[derive(Serialize, Deserialize, PartialEq, Clone)]
struct Stamp {
    size: u64,
    mtime_ns: u128,
    xxh3_128: String,
}

const MEMO_FILE: &str = "file-hashes.json";

/// The XXH3-128 hash of the whole content of `path`, as hex.
pub fn file_hash(path: &Path) -> Result<String> {
    let resolved = path
        .canonicalize()
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let meta =
        std::fs::metadata(&resolved).with_context(|| format!("{}: cannot read", path.display()))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = resolved.to_string_lossy().to_string();
    let memo_path = dir().join(MEMO_FILE);
    let mut memo = read_memo(&memo_path);
    if let Some(stamp) = memo.get(&key) {
        if stamp.size == meta.len() && stamp.mtime_ns == mtime_ns && mtime_ns != 0 {
            return Ok(stamp.xxh3_128.clone());
        }
    }
    if meta.len() >= 1 << 30 {
        eprintln!(
            "hashing {} ({:.1} GB) once, for the run fingerprint; later runs reuse the hash",
            path.display(),
            meta.len() as f64 / 1e9
        );
    }
    let hash = hash_content(&resolved)?;
    memo.insert(
        key,
        Stamp {
            size: meta.len(),
            mtime_ns,
            xxh3_128: hash.clone(),
        },
    );
    // The memo only saves time: a failure to write it is not the run's failure.
    let _ = write_memo(&memo_path, &memo);
    Ok(hash)
}

fn hash_content(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:032x}", hasher.digest128()))
}

fn read_memo(path: &Path) -> BTreeMap<String, Stamp> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

fn write_memo(path: &Path, memo: &BTreeMap<String, Stamp>) -> Result<()> {
    let parent = path.parent().context("cache path has no folder")?;
    std::fs::create_dir_all(parent)?;
    // Threads of one process may write it at once: each through its own temporary name.
    static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = parent.join(format!(".{MEMO_FILE}.{}.{n}.tmp", std::process::id()));
    std::fs::write(&tmp, serde_json::to_string_pretty(memo)? + "\n")?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
