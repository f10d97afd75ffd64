//! A run interrupted and resumed ends with bit-identical adapter weights to an uninterrupted one
//! (CPU, LoRA dropout on, gradient checkpointing on, both paths); checkpoints, Ctrl-C and the NaN
//! guard.

use crate::common;

use common::{fixture_str, PATHS};
use lora_dpo::config::LoadedConfig;
use lora_dpo::ops::Kernels;
use lora_dpo::train::run::{run_sft, RunOptions, Session};
use lora_dpo::train::trainer::Finish;
use std::path::Path;

fn config(out: &Path, kernels: Kernels) -> LoadedConfig {
    let text = format!(
        r#"
[model]
name_or_path = "{model}"
device = "cpu"
kernels = "{kernels}"
[lora]
r = 4
lora_alpha = 8
lora_dropout = 0.2
[sft]
train_file = "{data}"
learning_rate = 0.01
max_steps = 4
per_device_train_batch_size = 1
gradient_accumulation_steps = 2
lr_scheduler_type = "cosine"
warmup_steps = 1
weight_decay = 0.01
save_steps = 2
logging_steps = 1
gradient_checkpointing = true
[output]
dir = "{out}"
seed = 7
"#,
        model = fixture_str("models/tiny-llama"),
        data = fixture_str("train/sft.jsonl"),
        out = out.display()
    );
    LoadedConfig::from_str(&text, &[]).unwrap()
}

fn options(resume: bool, interrupted: bool) -> RunOptions {
    common::run_options(resume, interrupted)
}

fn adapter_bytes(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("sft/adapter/adapter_model.safetensors")).unwrap()
}

#[test]
fn interrupted_and_resumed_runs_end_bit_identical() {
    for kernels in PATHS {
        interrupted_and_resumed_runs_end_bit_identical_on(kernels);
    }
}

fn interrupted_and_resumed_runs_end_bit_identical_on(kernels: Kernels) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );

    let cfg = config(&a, kernels);
    let session = Session::open(&cfg).unwrap();
    let (_, result) = run_sft(&session, &cfg, &options(false, false)).unwrap();
    assert_eq!(result.finish, Finish::Completed { steps: 4 });
    assert!(a.join("sft/checkpoint-2/optimizer.safetensors").is_file());

    // Ctrl-C before the first step: the loop finishes step 1, saves, and stops.
    let cfg_b = config(&b, kernels);
    let (_, result) = run_sft(&session, &cfg_b, &options(false, true)).unwrap();
    assert!(
        matches!(result.finish, Finish::Interrupted { step: 1, .. }),
        "{:?}",
        result.finish
    );
    let (_, result) = run_sft(&session, &cfg_b, &options(true, false)).unwrap();
    assert_eq!(result.finish, Finish::Completed { steps: 4 });
    assert_eq!(
        adapter_bytes(&a),
        adapter_bytes(&b),
        "resumed after step 1 differs"
    );

    // Resume from a periodic checkpoint of another run.
    let cfg_c = config(&c, kernels);
    std::fs::create_dir_all(c.join("sft")).unwrap();
    copy_dir(&a.join("sft/checkpoint-2"), &c.join("sft/checkpoint-2"));
    let (_, result) = run_sft(&session, &cfg_c, &options(true, false)).unwrap();
    assert_eq!(result.finish, Finish::Completed { steps: 4 });
    assert_eq!(
        adapter_bytes(&a),
        adapter_bytes(&c),
        "resumed after step 2 differs"
    );

    // The check can fail: a different seed gives different weights.
    let d = tmp.path().join("d");
    let mut cfg_d = config(&d, kernels);
    cfg_d.run.output.seed = 8;
    run_sft(&session, &cfg_d, &options(false, false)).unwrap();
    assert_ne!(adapter_bytes(&a), adapter_bytes(&d));

    // metrics.jsonl of the resumed run has each step once.
    let metrics = std::fs::read_to_string(b.join("sft/metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .filter(|s| *s > 0)
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
}

#[test]
fn a_diverging_loss_stops_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), Kernels::Auto);
    let session = Session::open(&cfg).unwrap();
    // A huge learning rate blows the weights up within a few steps.
    let sft = cfg.run.sft.as_mut().unwrap();
    sft.learning_rate = 1e30;
    sft.max_grad_norm = 0.0;
    sft.max_steps = 6;
    sft.save_steps = 1;
    let err = run_sft(&session, &cfg, &options(false, false))
        .err()
        .expect("the run must stop");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("loss is") || msg.contains("gradient norm is"),
        "{msg}"
    );
    assert!(
        tmp.path().join("sft/checkpoint-1").is_dir(),
        "the last good checkpoint is kept"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
