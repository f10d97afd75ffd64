//! `metrics.jsonl`: one JSON object per logging step, with TRL's metric names.

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

    /// Drops records after `step` (a resumed run rewrites them).
    pub fn truncate_after(&self, step: usize) -> Result<()> {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return Ok(());
        };
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(Value::as_u64))
                    .is_some_and(|s| s as usize <= step)
            })
            .collect();
        let mut out = kept.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        std::fs::write(&self.path, out)?;
        Ok(())
    }

    pub fn write(&self, step: usize, values: &[(String, f64)]) -> Result<()> {
        let mut obj = Map::new();
        obj.insert("step".into(), Value::from(step));
        for (k, v) in values {
            let value = serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number);
            obj.insert(k.clone(), value);
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("{}: cannot write", self.path.display()))?;
        writeln!(f, "{}", Value::Object(obj))?;
        Ok(())
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
