//! `lora-dpo report`: one self-contained HTML page for a run folder — per stage, inline SVG
//! plots of the metrics.jsonl curves (train and eval on one axis), the final eval table, the
//! checkpoints, and warnings about patterns worth a look; then the run's config.

mod html;
pub mod plot;
pub mod warnings;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The stages a run folder may hold, in the order `train` runs them.
pub const STAGES: &[&str] = &["sft", "dpo", "kto", "orpo"];

/// One line of metrics.jsonl; a `null` value (a NaN or infinity when written) is `None`.
#[derive(Debug, Clone)]
pub struct Record {
    pub step: usize,
    pub values: BTreeMap<String, Option<f64>>,
}

impl Record {
    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied().flatten()
    }

    /// A training-window record (an evaluation holds only `eval_` keys).
    pub fn is_train(&self) -> bool {
        self.values.keys().any(|k| !k.starts_with("eval_"))
    }
}

/// A stage's folder: its metrics, checkpoints and whether its final adapter is there.
#[derive(Debug, Clone)]
pub struct StageRun {
    pub name: String,
    pub dir: PathBuf,
    pub records: Vec<Record>,
    pub checkpoints: Vec<String>,
    pub has_adapter: bool,
}

/// A run folder as the report sees it.
pub struct Run {
    pub dir: PathBuf,
    pub stages: Vec<StageRun>,
    pub config: Option<String>,
}

impl Run {
    /// Reads `dir`: a run folder (`<dir>/<stage>/metrics.jsonl`) or one stage's folder.
    pub fn read(dir: &Path) -> Result<Self> {
        let mut stages = Vec::new();
        if dir.join("metrics.jsonl").is_file() {
            let name = dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("stage")
                .to_string();
            stages.push(read_stage(&name, dir)?);
        } else {
            for name in STAGES {
                let sdir = dir.join(name);
                if sdir.join("metrics.jsonl").is_file() {
                    stages.push(read_stage(name, &sdir)?);
                }
            }
        }
        if stages.is_empty() {
            bail!(
                "{}: no metrics.jsonl here nor in a stage folder ({}): not a run folder",
                dir.display(),
                STAGES.join(", ")
            );
        }
        let config = ["config.toml", "../config.toml"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
            .map(|p| std::fs::read_to_string(&p).with_context(|| format!("{}", p.display())))
            .transpose()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            stages,
            config,
        })
    }
}

/// Writes the report of `run_dir` to `out` (default `<run_dir>/report.html`) through a
/// temporary file; returns its path.
pub fn write(run_dir: &Path, out: Option<&Path>) -> Result<PathBuf> {
    let run = Run::read(run_dir)?;
    let out = out.map_or_else(|| run_dir.join("report.html"), Path::to_path_buf);
    let page = html::page(&run);
    let tmp = out.with_extension("html.tmp");
    std::fs::write(&tmp, page).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("{}: cannot write", out.display()))?;
    Ok(out)
}

fn read_stage(name: &str, dir: &Path) -> Result<StageRun> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else {
            // The last line may be cut by a kill; anything else is a damaged file.
            if i + 1 == text.lines().count() {
                continue;
            }
            bail!("{}:{}: not a JSON object", path.display(), i + 1);
        };
        let step = obj
            .get("step")
            .and_then(Value::as_u64)
            .with_context(|| format!("{}:{}: no `step`", path.display(), i + 1))?;
        let values = obj
            .iter()
            .filter(|(k, _)| *k != "step")
            .filter(|(_, v)| v.is_number() || v.is_null())
            .map(|(k, v)| (k.clone(), v.as_f64()))
            .collect();
        records.push(Record {
            step: step as usize,
            values,
        });
    }
    let mut checkpoints: Vec<(usize, String)> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name.strip_prefix("checkpoint-")?.parse().ok()?;
            Some((n, name))
        })
        .collect();
    checkpoints.sort();
    Ok(StageRun {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        records,
        checkpoints: checkpoints.into_iter().map(|(_, n)| n).collect(),
        has_adapter: dir.join("adapter").join("adapter_config.json").is_file(),
    })
}

/// The plots of a stage: title and the metric keys on it (each with its `eval_` twin).
pub const PLOTS: &[(&str, &[&str])] = &[
    ("loss", &["loss"]),
    ("rewards", &["rewards/chosen", "rewards/rejected"]),
    ("margins", &["rewards/margins"]),
    ("accuracies", &["rewards/accuracies"]),
    ("log-probs", &["logps/chosen", "logps/rejected"]),
    ("learning rate", &["learning_rate"]),
    ("grad norm", &["grad_norm"]),
];

/// Keys never plotted on their own.
const NOT_PLOTTED: &[&str] = &["epoch"];

/// Every plot of a stage as (title, series): the fixed ones first, then one per other metric.
pub fn stage_plots(stage: &StageRun) -> Vec<(String, Vec<plot::Series>)> {
    let series_of = |key: &str| -> plot::Series {
        let points = stage
            .records
            .iter()
            .filter(|r| r.values.contains_key(key))
            .map(|r| (r.step as f64, r.values[key].unwrap_or(f64::NAN)))
            .collect();
        plot::Series {
            name: crate::train::tensorboard::tag_of(key),
            points,
        }
    };
    let mut keys: Vec<String> = Vec::new();
    for r in &stage.records {
        for k in r.values.keys() {
            let base = k.strip_prefix("eval_").unwrap_or(k);
            if !keys.iter().any(|x| x == base) {
                keys.push(base.to_string());
            }
        }
    }
    let mut plots = Vec::new();
    let mut add = |title: &str, metric_keys: &[&str]| {
        let mut series = Vec::new();
        for k in metric_keys {
            for key in [k.to_string(), format!("eval_{k}")] {
                let s = series_of(&key);
                if !s.points.is_empty() {
                    series.push(s);
                }
            }
        }
        if !series.is_empty() {
            plots.push((title.to_string(), series));
        }
    };
    for (title, metric_keys) in PLOTS {
        add(title, metric_keys);
    }
    let fixed = |k: &str| PLOTS.iter().any(|(_, keys)| keys.contains(&k));
    for k in keys
        .iter()
        .filter(|k| !fixed(k) && !NOT_PLOTTED.contains(&k.as_str()))
    {
        add(k, &[k.as_str()]);
    }
    plots
}
