//! What determines a stage's result, recorded with each of its checkpoints and with its final
//! adapter, so that `--resume` continues only its own run: the model's files (content hashes:
//! weights, config, tokenizer), the data file's content, every training, data and LoRA setting,
//! the seed, and the reference adapters' weights. Bookkeeping keys that do not change the
//! weights (logging, evaluation, checkpoint frequency, the output folder) are left out.

use anyhow::Result;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::LoadedConfig;
use crate::data::Stage;
use crate::source::Source;

/// Stage keys that change what is logged or saved, not what is trained.
const BOOKKEEPING: &[&str] = &[
    "logging_steps",
    "eval_steps",
    "save_steps",
    "save_total_limit",
    "eval_file",
    "per_device_eval_batch_size",
    "report_to",
];

/// Keys and the values they had, flattened (`sft.learning_rate`, `model.files`, …).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunFingerprint(BTreeMap<String, String>);

impl RunFingerprint {
    /// The fingerprint of `stage` of `cfg`; `model_files` from [`model_files`], `reference` the
    /// frozen adapters' identity (empty when there are none).
    pub fn of_stage(
        cfg: &LoadedConfig,
        stage: Stage,
        model_files: &str,
        reference: &str,
    ) -> Result<Self> {
        let mut keys = BTreeMap::new();
        keys.insert("model.files".into(), model_files.to_string());
        let m = &cfg.run.model;
        for (k, v) in [
            ("dtype", m.dtype.to_string()),
            ("quantize", m.quantize.to_string()),
            ("kernels", m.kernels.to_string()),
            ("device", m.device.to_string()),
        ] {
            keys.insert(format!("model.{k}"), v);
        }
        flatten("lora", &serde_json::to_value(&cfg.run.lora)?, &mut keys);
        keys.insert("output.seed".into(), cfg.run.output.seed.to_string());
        let name = stage.as_str();
        // The stage's section as written (data keys included), over the defaults of the
        // training keys, so a default spelled out and a default left out agree.
        let mut section = match stage {
            Stage::Sft => cfg.run.sft.as_ref(),
            Stage::Dpo => cfg.run.dpo.as_ref(),
            Stage::Kto => cfg.run.kto.as_ref(),
            Stage::Orpo => cfg.run.orpo.as_ref(),
        }
        .map(serde_json::to_value)
        .transpose()?
        .unwrap_or(Value::Null);
        if let (Value::Object(obj), Some(toml::Value::Table(raw))) =
            (&mut section, cfg.table.get(name))
        {
            for (k, v) in raw {
                if !obj.contains_key(k) {
                    obj.insert(k.clone(), serde_json::to_value(v)?);
                }
            }
        }
        if let Value::Object(obj) = &mut section {
            for k in BOOKKEEPING {
                obj.remove(*k);
            }
            // The content of the files read (a hub name resolved to its cached split); for a
            // mixture, each part's content and fraction.
            let revision = obj
                .get("revision")
                .and_then(Value::as_str)
                .map(str::to_string);
            let hash_of = |spec: &str, split: Option<&str>| -> Result<String> {
                let src = crate::data::hub::resolve(spec, split, revision.as_deref())?;
                data_hash(&src.path, src.split.as_deref())
            };
            match obj.remove("train_file") {
                Some(Value::String(spec)) => {
                    let split = obj.get("train_split").and_then(Value::as_str);
                    obj.insert("train_file".into(), Value::String(hash_of(&spec, split)?));
                }
                Some(Value::Array(parts)) => {
                    let mut hashed = Vec::with_capacity(parts.len());
                    for p in &parts {
                        let spec = p.get("path").and_then(Value::as_str).unwrap_or_default();
                        let split = p.get("split").and_then(Value::as_str);
                        let fraction = p.get("fraction").and_then(Value::as_f64).unwrap_or(1.0);
                        hashed.push(format!("{}×{fraction}", hash_of(spec, split)?));
                    }
                    obj.insert("train_file".into(), Value::String(hashed.join(" + ")));
                }
                _ => {}
            }
        }
        flatten(name, &section, &mut keys);
        keys.insert(format!("{name}.reference"), reference.to_string());
        Ok(Self(keys))
    }

    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    }

    pub fn from_json(value: &Value) -> Option<Self> {
        let obj = value.as_object()?;
        let mut keys = BTreeMap::new();
        for (k, v) in obj {
            keys.insert(k.clone(), canonical(k, v.as_str()?));
        }
        Some(Self(keys))
    }

    /// The keys whose values differ, each as `key: recorded → now`.
    pub fn differences(&self, recorded: &Self) -> Vec<String> {
        let missing = "(not set)".to_string();
        let keys: std::collections::BTreeSet<&String> =
            self.0.keys().chain(recorded.0.keys()).collect();
        let mut out = Vec::new();
        for key in keys {
            let now = self.0.get(key).unwrap_or(&missing);
            let then = recorded.0.get(key).unwrap_or(&missing);
            if now != then {
                out.push(format!("{key}: {then} → {now}"));
            }
        }
        out
    }
}

/// A recorded value as it is written now. Records from before these settings were typed hold them
/// as the config spelled them (`bfloat16`, `Q4_K`), and such a run must still resume.
fn canonical(key: &str, value: &str) -> String {
    use crate::choice::Choice;
    fn name<T: Choice>(value: &str) -> Option<&'static str> {
        T::from_name(value).ok().map(T::name)
    }
    let named = match key {
        "model.dtype" => name::<crate::model::Dtype>(value),
        "model.quantize" => name::<crate::model::Quantize>(value),
        "model.kernels" => name::<crate::ops::Kernels>(value),
        "model.device" => name::<crate::config::DeviceSpec>(value),
        _ => None,
    };
    named.unwrap_or(value).to_string()
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(obj) => {
            for (k, v) in obj {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        Value::Null => {}
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// The content of a data file or folder of files.
fn data_hash(path: &Path, split: Option<&str>) -> Result<String> {
    let files: Vec<PathBuf> = if path.is_dir() && split.is_some() {
        crate::data::reader::list_files(path, split)?
    } else if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut parts = Vec::new();
    for f in &files {
        parts.push(format!("xxh3:{}", crate::cache::file_hash(f)?));
    }
    Ok(parts.join(","))
}

/// One content hash over the model's files: the GGUF file, or config.json, the weight files and
/// the tokenizer files of a folder.
pub fn model_files(source: &Source) -> Result<String> {
    let mut files: Vec<PathBuf> = Vec::new();
    match source {
        Source::File(p) => files.push(p.clone()),
        _ => {
            files.push(source.require("config.json")?);
            files.extend(
                crate::model::weights::WeightFiles::open(source)?
                    .paths()
                    .map(Path::to_path_buf),
            );
            for name in ["tokenizer.json", "tokenizer_config.json"] {
                files.extend(source.find(name)?);
            }
        }
    }
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for f in &files {
        hasher.update(crate::cache::file_hash(f)?.as_bytes());
    }
    Ok(format!("xxh3:{:032x}", hasher.digest128()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_changed_key_once() {
        let a = RunFingerprint(BTreeMap::from([
            ("sft.learning_rate".to_string(), "0.01".to_string()),
            ("output.seed".to_string(), "7".to_string()),
        ]));
        let mut b = a.clone();
        assert!(a.differences(&b).is_empty());
        b.0.insert("sft.learning_rate".into(), "0.02".into());
        b.0.insert("sft.beta".into(), "0.1".into());
        assert_eq!(
            b.differences(&a),
            vec![
                "sft.beta: (not set) → 0.1".to_string(),
                "sft.learning_rate: 0.01 → 0.02".to_string()
            ]
        );
    }

    #[test]
    fn a_record_with_the_model_settings_as_spelled_matches_their_names() {
        let cfg = LoadedConfig::from_str(
            "[model]\nname_or_path = \"m\"\ndtype = \"bfloat16\"\nquantize = \"Q4_K\"\nkernels = \" Generic\"\n[sft]\n",
            &[],
        )
        .unwrap();
        let now = RunFingerprint::of_stage(&cfg, Stage::Sft, "files", "").unwrap();
        assert_eq!(now.0["model.dtype"], "bf16");
        assert_eq!(now.0["model.quantize"], "q4k");
        assert_eq!(now.0["model.kernels"], "generic");
        let mut before = now.to_json();
        before["model.dtype"] = "bfloat16".into();
        before["model.quantize"] = "Q4_K".into();
        before["model.kernels"] = " Generic".into();
        let recorded = RunFingerprint::from_json(&before).unwrap();
        assert!(
            now.differences(&recorded).is_empty(),
            "{:?}",
            now.differences(&recorded)
        );
        before["model.dtype"] = "f16".into();
        let recorded = RunFingerprint::from_json(&before).unwrap();
        assert_eq!(now.differences(&recorded), vec!["model.dtype: f16 → bf16"]);
    }
}
