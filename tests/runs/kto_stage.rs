//! The `[kto]` stage from the built binary on the tiny Llama: `train` chains `[sft]` → `[kto]`
//! (the reference being base + the frozen SFT adapter, precomputed into the reference cache and
//! reused by an identical run), TRL's metric names in metrics.jsonl, `eval --loss-type kto`, and
//! a config with two preference stages refused.

use crate::common;

use common::fixture_str;
use std::path::Path;

fn config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
{head}[sft]
train_file = "{sft}"
learning_rate = 0.01
max_steps = 2
per_device_train_batch_size = 2
logging_steps = 1
save_steps = 0
[kto]
train_file = "{kto}"
eval_file = "{kto}"
learning_rate = 0.01
max_steps = 3
per_device_train_batch_size = 3
per_device_eval_batch_size = 3
logging_steps = 1
save_steps = 0
precompute_ref_log_probs = true
desirable_weight = 1.0
undesirable_weight = 1.33
{extra}
[output]
dir = "{out}"
"#,
        head = common::tiny_llama_sections(),
        sft = fixture_str("train/sft.jsonl"),
        kto = fixture_str("train/kto.jsonl"),
        out = dir.join("out").display(),
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let cache = dir.join("cache");
    common::lora_dpo_with_env(args, &[("LORA_DPO_CACHE", &cache)])
}

#[test]
fn train_chains_sft_then_kto_with_trl_metric_names_and_a_cached_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "");
    let cfg = cfg.to_str().unwrap();
    let (code, _, err) = run(tmp.path(), &["train", "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("reference log-probs: computing"), "{err}");
    let out = tmp.path().join("out");
    for adapter in ["sft/adapter", "kto/adapter", "combined"] {
        assert!(
            out.join(adapter).join("adapter_config.json").exists(),
            "{adapter}"
        );
    }
    let metrics = std::fs::read_to_string(out.join("kto/metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let train = records.iter().find(|r| r.get("loss").is_some()).unwrap();
    for k in [
        "kl",
        "rewards/chosen",
        "logps/chosen",
        "count/chosen",
        "count/rejected",
        "logits/chosen",
    ] {
        assert!(train.get(k).is_some(), "no {k} in {train}");
    }
    let eval = records
        .iter()
        .rev()
        .find(|r| r.get("eval_loss").is_some())
        .unwrap();
    for k in [
        "eval_kl",
        "eval_rewards/chosen",
        "eval_rewards/rejected",
        "eval_rewards/margins",
        "eval_logps/chosen",
        "eval_logps/rejected",
    ] {
        assert!(eval.get(k).is_some(), "no {k} in {eval}");
    }
    // The same run again: the same SFT adapter, so the same reference, read from the cache.
    let (code, _, err) = run(tmp.path(), &["train", "--config", cfg, "--overwrite"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("reference log-probs: reusing the cached ones"),
        "{err}"
    );
}

#[test]
fn eval_loss_type_kto_gives_metrics_and_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_str("models/tiny-llama");
    let adapter = format!("{model}/adapter");
    let data = fixture_str("train/kto.jsonl");
    let (code, out, err) = run(
        tmp.path(),
        &[
            "eval",
            "--model",
            &model,
            "--adapter",
            &adapter,
            "--data",
            &data,
            "--loss-type",
            "kto",
            "--per-row",
            "--batch-size",
            "3",
            "--device",
            "cpu",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rows"], 6);
    assert_eq!(v["per_row"].as_array().unwrap().len(), 6);
    for k in ["loss", "kl", "rewards/margins", "logps/rejected"] {
        assert!(v[k].is_number(), "no {k} in {v}");
    }
    // Paired data under --loss-type kto is unpaired, as KTOTrainer does: 5 pairs, 10 rows.
    let pairs = fixture_str("train/prefs.jsonl");
    let (code, out, err) = run(
        tmp.path(),
        &[
            "eval",
            "--model",
            &model,
            "--data",
            &pairs,
            "--loss-type",
            "kto",
            "--per-row",
            "--device",
            "cpu",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["per_row"].as_array().unwrap().len(), 10, "{v}");
}

/// `train` chains every stage the config has: [sft] → [dpo] → [kto], each on the frozen
/// adapters before it.
#[test]
fn train_chains_dpo_then_kto() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        &format!(
            "[dpo]\ntrain_file = \"{}\"\n",
            fixture_str("train/prefs.jsonl")
        ),
    );
    let (code, _, err) = run(tmp.path(), &["train", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for stage in ["sft", "dpo", "kto", "combined"] {
        let file = tmp
            .path()
            .join(format!("out/{stage}/adapter_model.safetensors"));
        let nested = tmp
            .path()
            .join(format!("out/{stage}/adapter/adapter_model.safetensors"));
        assert!(
            file.is_file() || nested.is_file(),
            "no {stage} adapter: {err}"
        );
    }
}

/// KTO reads rows in file order (TRL's `train_sampling_strategy = "sequential"`), so each
/// step's batch is one chunk of the file, the chunk its KL completions were rotated in; with
/// shuffled rows the KL pairs and the label balance of a batch were other chunks' (the bug that
/// kept KTO's held-out accuracy at 0.80–0.85 where KTOTrainer reaches 0.975);
/// `train_sampling_strategy = "random"` opts out, as in TRL.
#[test]
fn kto_batches_are_the_files_chunks_every_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(common::fixture("train/kto.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Desirable rows first, then undesirable: chunks of 3 are all one label.
    let (good, bad): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r["label"] == true);
    let grouped: String = good.iter().chain(&bad).map(|r| format!("{r}\n")).collect();
    let data = tmp.path().join("grouped.jsonl");
    std::fs::write(&data, grouped).unwrap();
    let counts = |tag: &str, sampling: &str| -> Vec<f64> {
        let text = format!(
            r#"
{head}[kto]
train_file = "{data}"
learning_rate = 0.01
max_steps = 4
per_device_train_batch_size = 3
logging_steps = 1
save_steps = 0
{sampling}
[output]
dir = "{out}"
seed = 11
"#,
            head = common::tiny_llama_sections(),
            data = data.display(),
            out = tmp.path().join(tag).display(),
        );
        let cfg = tmp.path().join(format!("{tag}.toml"));
        std::fs::write(&cfg, text).unwrap();
        let (code, _, stderr) = run(tmp.path(), &["kto", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
        std::fs::read_to_string(tmp.path().join(tag).join("kto/metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter_map(|m| m["count/chosen"].as_f64())
            .collect()
    };
    let sequential = [3.0, 0.0, 3.0, 0.0];
    assert_eq!(counts("default", ""), sequential, "desirable rows per step");
    // TRL's opt-out: a shuffle mixes the labels of a batch.
    let shuffled = counts("random", "train_sampling_strategy = \"random\"");
    assert_eq!(shuffled.len(), 4);
    assert_ne!(
        shuffled, sequential,
        "train_sampling_strategy = \"random\" kept file order"
    );
}
