//! `metrics.jsonl`: one JSON object per logging step, with TRL's metric names. Each record is
//! one line written by one `write` call on a file opened for appending, so a kill or a full
//! disk can cut only the last line; a resumed run keeps the complete records up to its
//! checkpoint and drops the rest, so no step appears twice.

use anyhow::{Context, Result};
use serde_json::{Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::tensorboard::{self, EventWriter};

pub struct MetricsLog {
    path: PathBuf,
    /// `<dir>/runs` when the stage reports to TensorBoard; its event file is opened on the first
    /// record, after a resumed run has cut the earlier files back.
    tensorboard: Option<PathBuf>,
    events: Mutex<Option<EventWriter>>,
}

impl MetricsLog {
    /// Appends to `dir/metrics.jsonl` (a resumed run continues the same file).
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        Ok(Self {
            path: dir.join("metrics.jsonl"),
            tensorboard: None,
            events: Mutex::new(None),
        })
    }

    /// Also writes every record to TensorBoard event files in `<dir>/runs`.
    pub fn with_tensorboard(mut self) -> Self {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        self.tensorboard = Some(tensorboard::runs_dir(dir));
        self
    }

    /// The run's config as a TensorBoard text summary (nothing without TensorBoard).
    pub fn config_text(&self, step: usize, text: &str) -> Result<()> {
        self.with_events(|w| w.text(step, "config", text))
    }

    fn with_events(&self, f: impl FnOnce(&mut EventWriter) -> Result<()>) -> Result<()> {
        let Some(dir) = &self.tensorboard else {
            return Ok(());
        };
        let mut events = self.events.lock().expect("the metrics log is not shared");
        if events.is_none() {
            *events = Some(EventWriter::create(dir)?);
        }
        f(events.as_mut().expect("just opened"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the complete records of steps up to `step` (a resumed run rewrites the rest).
    pub fn truncate_after(&self, step: usize) -> Result<()> {
        if let Some(dir) = &self.tensorboard {
            tensorboard::truncate_after(dir, step)?;
        }
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
        if let Some(dir) = &self.tensorboard {
            tensorboard::start_anew(dir)?;
        }
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
        f.flush().with_context(context)?;
        self.with_events(|w| w.scalars(step, values))
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

/// Memory in use for the progress bar: the process's RSS, and on CUDA the device memory
/// `nvidia-smi` reports for this process (sampled at most every few seconds: it is a
/// subprocess, and the figure moves slowly).
pub struct MemoryGauge {
    cuda: bool,
    device: Option<(std::time::Instant, Option<f64>)>,
}

/// How often the device figure is asked for again.
const DEVICE_SAMPLE_SECS: u64 = 5;

impl MemoryGauge {
    pub fn new(cuda: bool) -> Self {
        Self { cuda, device: None }
    }

    pub fn text(&mut self) -> String {
        let rss = format!("rss {:.0} MiB", rss_mib());
        if !self.cuda {
            return rss;
        }
        let stale = self
            .device
            .is_none_or(|(at, _)| at.elapsed().as_secs() >= DEVICE_SAMPLE_SECS);
        if stale {
            self.device = Some((std::time::Instant::now(), device_mib_of_this_process()));
        }
        match self.device.and_then(|(_, mib)| mib) {
            Some(mib) => format!("gpu {mib:.0} MiB  {rss}"),
            None => rss,
        }
    }
}

/// This process's device memory in MiB, from `nvidia-smi` (None when it is not there).
fn device_mib_of_this_process() -> Option<f64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    parse_compute_apps(&String::from_utf8_lossy(&out.stdout), std::process::id())
}

/// The MiB of `pid` in `nvidia-smi --query-compute-apps=pid,used_memory` CSV output.
pub fn parse_compute_apps(csv: &str, pid: u32) -> Option<f64> {
    csv.lines()
        .filter_map(|l| {
            let (p, mib) = l.split_once(',')?;
            (p.trim().parse::<u32>().ok()? == pid).then(|| mib.trim().parse::<f64>().ok())?
        })
        .reduce(|a, b| a + b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn compute_apps_of_this_pid_are_summed() {
        let csv = "1234, 5000\n42, 812\n42, 100\n";
        assert_eq!(super::parse_compute_apps(csv, 42), Some(912.0));
        assert_eq!(super::parse_compute_apps(csv, 7), None);
        assert_eq!(super::parse_compute_apps("", 42), None);
    }
}
