//! A training step brings back from the device only its metrics. Two checks:
//! - counted: SFT and DPO steps on the generic path (the one GPUs run, here on CPU, LoRA dropout
//!   on, reference recomputed every step) read back exactly their metric values through
//!   `ops::host`: per micro-batch the loss (and for DPO the per-pair figures and logit means,
//!   one read each), per step the gradient norm; the same for simpo + sft and for ORPO;
//! - forbidden: the modules a step runs through read nothing back except through `ops::host`
//!   (their test modules aside).
//!
//! One test per binary: the counter is the process's.

mod common;

use common::fixture_str;
use lora_dpo::config::LoadedConfig;
use lora_dpo::ops::host;
use lora_dpo::train::run::{run_dpo, run_orpo, run_sft, RunOptions, Session};
use std::path::Path;

const STEPS: usize = 3;

fn config(out: &Path) -> LoadedConfig {
    LoadedConfig::from_str(&cfg_text(out), &[]).unwrap()
}

fn cfg_text(out: &Path) -> String {
    format!(
        r#"
[model]
name_or_path = "{model}"
device = "cpu"
kernels = "generic"
[lora]
r = 4
lora_dropout = 0.1
[sft]
train_file = "{sft}"
max_steps = {STEPS}
per_device_train_batch_size = 2
logging_steps = 1
save_steps = 0
[dpo]
train_file = "{dpo}"
max_steps = {STEPS}
per_device_train_batch_size = 2
logging_steps = 1
save_steps = 0
[orpo]
train_file = "{dpo}"
max_steps = {STEPS}
per_device_train_batch_size = 2
logging_steps = 1
save_steps = 0
[output]
dir = "{out}"
"#,
        model = fixture_str("models/tiny-llama"),
        sft = fixture_str("train/sft.jsonl"),
        dpo = fixture_str("train/prefs.jsonl"),
        out = out.display()
    )
}

fn options() -> RunOptions {
    RunOptions {
        show_progress: false,
        ..RunOptions::default()
    }
}

/// The non-test part of a source file.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[test]
fn a_step_reads_back_only_its_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let session = Session::open(&cfg).unwrap();

    let before = host::reads();
    run_sft(&session, &cfg, &options()).unwrap();
    let sft = host::reads() - before;
    // Per step: the loss and the gradient norm.
    assert_eq!(sft, 2 * STEPS, "SFT: {sft} reads in {STEPS} steps");

    let before = host::reads();
    run_dpo(&session, &cfg, &options(), None).unwrap();
    let dpo = host::reads() - before;
    // Per step: the per-pair metrics, the logit means, the loss, the gradient norm.
    assert_eq!(dpo, 4 * STEPS, "DPO: {dpo} reads in {STEPS} steps");

    // The reference-free objectives and the NLL terms share the same reads.
    let simpo = LoadedConfig::from_str(
        &format!("{}\n", cfg_text(tmp.path())),
        &[
            "dpo.loss_type=[\"simpo\", \"sft\"]".into(),
            "output.dir=\"".to_string() + &tmp.path().join("simpo").display().to_string() + "\"",
        ],
    )
    .unwrap();
    let before = host::reads();
    run_dpo(&session, &simpo, &options(), None).unwrap();
    let reads = host::reads() - before;
    assert_eq!(
        reads,
        4 * STEPS,
        "simpo + sft: {reads} reads in {STEPS} steps"
    );
    let before = host::reads();
    run_orpo(&session, &cfg, &options(), None).unwrap();
    let orpo = host::reads() - before;
    assert_eq!(orpo, 4 * STEPS, "ORPO: {orpo} reads in {STEPS} steps");

    // Nothing else in the step's modules reads back.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: Vec<_> = ["model", "ops", "ops/cpu", "train"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    files.sort();
    // Not on the step path: weight loading, the reference cache, and the counted reads.
    let outside = ["gguf.rs", "ref_cache.rs", "host.rs"];
    for path in files {
        let name = path.file_name().unwrap().to_str().unwrap();
        if outside.contains(&name) {
            continue;
        }
        let code = code_of(&path);
        for call in [".to_vec1", ".to_vec2", ".to_vec3", ".to_scalar"] {
            assert!(
                !code.contains(call),
                "{}: `{call}` outside ops::host",
                path.display()
            );
        }
    }
}
