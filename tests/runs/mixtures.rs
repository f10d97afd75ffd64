//! Dataset mixtures (`train_file` as a list of `{path, fraction, split}`, the handbook's
//! `dataset_mixer`) and a held-out split carved from the training rows
//! (`eval_split_ratio` / `test_split_size`), through `lora-dpo dpo`.

use crate::common::{self, lora_dpo};

/// Writes `n` copies of the fixture pairs, each row tagged with its file and number, so that a
/// run's counts tell which rows it took.
fn pairs(dir: &std::path::Path, name: &str, n: usize) -> String {
    let rows: Vec<String> = std::fs::read_to_string(common::fixture("train/prefs.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let text: String = (0..n)
        .map(|i| format!("{}\n", rows[i % rows.len()]))
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn config(dir: &std::path::Path, data: &str) -> String {
    let text = format!(
        r#"
{head}[dpo]
{data}
learning_rate = 0.01
max_steps = 1
per_device_train_batch_size = 2
logging_steps = 1
save_steps = 0
[output]
dir = "{out}"
seed = 3
"#,
        head = common::tiny_llama_sections(),
        out = dir.join("out").display(),
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn a_mixture_takes_each_parts_fraction_and_carves_the_held_out_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let a = pairs(tmp.path(), "a.jsonl", 10);
    let b = pairs(tmp.path(), "b.jsonl", 4);
    let data = format!(
        "train_file = [{{path = \"{a}\", fraction = 0.5}}, {{path = \"{b}\"}}]\neval_split_ratio = 0.25"
    );
    let cfg = config(tmp.path(), &data);
    let (code, _, stderr) = lora_dpo(&["dpo", "--config", &cfg]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("mixture part 0") && stderr.contains("5 of 10 rows"),
        "{stderr}"
    );
    assert!(
        stderr.contains("mixture part 1") && stderr.contains("4 of 4 rows"),
        "{stderr}"
    );
    assert!(stderr.contains("held out 2 of 9 training rows"), "{stderr}");
    // The held-out rows are evaluated: 2 pairs.
    let metrics = std::fs::read_to_string(tmp.path().join("out/dpo/metrics.jsonl")).unwrap();
    assert!(metrics.contains("eval_rewards/accuracies"), "{metrics}");
    assert!(
        stderr.contains("7 rows read") && stderr.contains("2 rows read"),
        "{stderr}"
    );

    // `data` shows the same mixture and split.
    let model = common::fixture_str("models/tiny-llama");
    let (code, stdout, stderr) = lora_dpo(&["data", "--model", &model, "--config", &cfg]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("5 of 10 rows")
            && stdout.contains("held out 2 of 9")
            && stdout.contains("rows: 7 read")
            && stdout.contains("rows: 2 read"),
        "{stdout}"
    );

    // The same again resumes as the same run; another fraction is other settings.
    let (code, _, stderr) = lora_dpo(&["dpo", "--config", &cfg, "--resume"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = lora_dpo(&[
        "dpo",
        "--config",
        &cfg,
        "--resume",
        "--set",
        &format!("dpo.train_file=[{{path = \"{a}\", fraction = 0.3}}]"),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("train_file"), "{stderr}");
}

#[test]
fn mixture_and_held_out_keys_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let a = pairs(tmp.path(), "a.jsonl", 6);
    for (data, named) in [
        (
            format!("train_file = [{{path = \"{a}\", fraction = 0.0}}]"),
            "train_file[0].fraction",
        ),
        (
            format!("train_file = [{{path = \"{a}\", share = 0.5}}]"),
            "share",
        ),
        (
            format!("train_file = \"{a}\"\neval_split_ratio = 0.2\ntest_split_size = 2"),
            "test_split_size",
        ),
        (
            format!("train_file = \"{a}\"\neval_file = \"{a}\"\ntest_split_size = 2"),
            "eval_file",
        ),
        (
            format!("train_file = \"{a}\"\neval_split_ratio = 1.5"),
            "eval_split_ratio",
        ),
        (
            format!("train_file = \"{a}\"\ntest_split_size = 6"),
            "no training rows",
        ),
    ] {
        let cfg = config(tmp.path(), &data);
        let (code, _, stderr) = lora_dpo(&["dpo", "--config", &cfg]);
        assert_ne!(code, 0, "{data}");
        assert!(stderr.contains(named), "{data}: {stderr}");
    }
}
