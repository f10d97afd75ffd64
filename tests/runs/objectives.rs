//! `train` chains the stages a config has ([sft] → [dpo] → [orpo]); ORPO and the
//! reference-free DPO objectives log TRL's metrics and never compute a reference.

use crate::common;

use lora_dpo::config::LoadedConfig;
use lora_dpo::train::run::{run_train, RunOptions, Session};

fn config(dir: &std::path::Path, stages: &str) -> LoadedConfig {
    let text = format!(
        r#"
{head}{stages}
[output]
dir = "{out}"
seed = 3
"#,
        head = common::tiny_llama_sections(),
        out = dir.join("out").display(),
    );
    LoadedConfig::from_str(&text, &[]).unwrap()
}

fn stage(name: &str, file: &str, more: &str) -> String {
    format!(
        "[{name}]\ntrain_file = \"{}\"\neval_file = \"{}\"\nlearning_rate = 0.01\nmax_steps = 2\n\
         per_device_train_batch_size = 2\nlogging_steps = 1\nsave_steps = 0\n{more}\n",
        common::fixture_str(file),
        common::fixture_str(file),
    )
}

fn metrics(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn train_chains_sft_then_orpo_and_orpo_alone() {
    for (stages, names) in [
        (
            stage("sft", "train/sft.jsonl", "") + &stage("orpo", "train/prefs.jsonl", ""),
            vec!["sft", "orpo", "combined"],
        ),
        (
            stage("orpo", "train/prefs.jsonl", "beta = 0.2"),
            vec!["orpo"],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &stages);
        let session = Session::open(&cfg).unwrap();
        let results = run_train(&session, &cfg, &RunOptions::default()).unwrap();
        let got: Vec<_> = results.iter().map(|(n, _)| *n).collect();
        assert_eq!(got, names);
        let rows = metrics(&dir.path().join("out/orpo/metrics.jsonl"));
        let step = rows.iter().find(|r| r.get("loss").is_some()).unwrap();
        for key in [
            "nll_loss",
            "log_odds_ratio",
            "log_odds_chosen",
            "rewards/chosen",
            "rewards/margins",
            "logps/rejected",
        ] {
            assert!(step.get(key).is_some(), "{key}: {step}");
        }
        let eval = rows.iter().rev().find(|r| r.get("eval_loss").is_some());
        assert!(eval.unwrap().get("eval_log_odds_ratio").is_some());
    }
}

#[test]
fn simpo_trains_without_a_reference_after_sft() {
    let dir = tempfile::tempdir().unwrap();
    let stages = stage("sft", "train/sft.jsonl", "")
        + &stage(
            "dpo",
            "train/prefs.jsonl",
            "loss_type = [\"simpo\", \"sft\"]\nloss_weights = [1.0, 0.5]\nbeta = 2.0\nsimpo_gamma = 0.3",
        );
    let cfg = config(dir.path(), &stages);
    let session = Session::open(&cfg).unwrap();
    let results = run_train(&session, &cfg, &RunOptions::default()).unwrap();
    assert_eq!(results.len(), 3);
    let rows = metrics(&dir.path().join("out/dpo/metrics.jsonl"));
    let step = rows.iter().find(|r| r.get("loss").is_some()).unwrap();
    assert!(step.get("nll_loss").is_some(), "{step}");
    assert!(step.get("rewards/accuracies").is_some(), "{step}");
    // (That no reference pass runs is checked on the objective itself, in
    // tests/numerics/objectives.rs: metrics.jsonl does not hold the step timings.)
}

#[test]
fn orpo_keys_it_does_not_use_are_named() {
    let dir = tempfile::tempdir().unwrap();
    for key in [
        "loss_type = \"ipo\"",
        "simpo_gamma = 0.5",
        "ref_adapter = \"x\"",
    ] {
        let text = format!(
            "[model]\nname_or_path = \"m\"\n[orpo]\n{key}\n[output]\ndir = \"{}\"\n",
            dir.path().display()
        );
        let err = format!("{:#}", LoadedConfig::from_str(&text, &[]).unwrap_err());
        let name = key.split(' ').next().unwrap();
        assert!(err.contains("[orpo]") && err.contains(name), "{key}: {err}");
    }
}
