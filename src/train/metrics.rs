//! `metrics.jsonl`: one JSON object per logging step, with TRL's metric names. Each record is
//! one line written by one `write` call on a file opened for appending, so a kill or a full
//! disk can cut only the last line; a resumed run keeps the complete records up to its
//! checkpoint and drops the rest, so no step appears twice.

use anyhow::{Context, Result};
use serde_json::{Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// Appends to `dir/metrics.jsonl` (a resumed run continues the same file).
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        Ok(Self {
            path: dir.join("metrics.jsonl"),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the complete records of steps up to `step` (a resumed run rewrites the rest).
    pub fn truncate_after(&self, step: usize) -> Result<()> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(e).with_context(|| format!("{}: cannot read", self.path.display()))
            }
        };
        // A line without its newline was cut by a kill or a full disk, whatever it parses as.
        let complete = match text.rfind('\n') {
            Some(end) => &text[..=end],
            None => "",
        };
        let kept: String = complete
            .lines()
            .filter(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(Value::as_u64))
                    .is_some_and(|s| s as usize <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        self.replace_with(&kept)
    }

    /// Empties the file: a run starting at step 0.
    pub fn start_anew(&self) -> Result<()> {
        if self.path.exists() {
            self.replace_with("")?;
        }
        Ok(())
    }

    fn replace_with(&self, text: &str) -> Result<()> {
        let tmp = self.path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("{}: cannot write", self.path.display()))
    }

    pub fn write(&self, step: usize, values: &[(String, f64)]) -> Result<()> {
        let mut obj = Map::new();
        obj.insert("step".into(), Value::from(step));
        for (k, v) in values {
            let value = serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number);
            obj.insert(k.clone(), value);
        }
        let line = format!("{}\n", Value::Object(obj));
        let context = || format!("{}: cannot write", self.path.display());
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(context)?;
        if crate::fault::fires("metrics-half-line") {
            // What a kill in the middle of a write leaves: half a record, no newline.
            f.write_all(&line.as_bytes()[..line.len() / 2])
                .with_context(context)?;
            crate::fault::stop("metrics-half-line");
        }
        f.write_all(line.as_bytes()).with_context(context)?;
        f.flush().with_context(context)
    }
}

/// Peak resident memory of this process in MiB (Linux; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// The process's resident memory now, in MiB (0 where /proc is not available).
pub fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

fn status_mib(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
