//! Runs that lose nothing and overwrite nothing, checked on the built binary with the tiny Llama
//! fixture: every stopping signal gives a checkpoint, its exit code and a resume; a second run on a
//! locked folder is refused; a finished folder is not overwritten silently; `--resume` refuses a
//! checkpoint of other settings; kills at each write of a checkpoint, the metrics and the final
//! adapter leave complete files, and the resumed run ends bit-identical to an uninterrupted one.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    /// A folder with a config for `max_steps` SFT steps (checkpoints every `save_steps`).
    fn new(max_steps: usize, save_steps: usize) -> Self {
        Self::with_dpo(max_steps, save_steps, "")
    }

    /// The same, with more sections after `[sft]` (`[dpo]`, for `train`).
    fn with_dpo(max_steps: usize, save_steps: usize, more: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("sft.jsonl");
        std::fs::copy(common::fixture("train/sft.jsonl"), &data).unwrap();
        let config = format!(
            r#"
[model]
name_or_path = "{model}"
device = "cpu"
[lora]
r = 4
lora_alpha = 8
lora_dropout = 0.1
[sft]
train_file = "{data}"
learning_rate = 0.01
max_steps = {max_steps}
per_device_train_batch_size = 1
lr_scheduler_type = "cosine"
save_steps = {save_steps}
logging_steps = 1
{more}
[output]
dir = "{out}"
seed = 3
"#,
            model = common::fixture_str("models/tiny-llama"),
            data = data.display(),
            out = dir.path().join("out").display(),
        );
        std::fs::write(dir.path().join("run.toml"), config).unwrap();
        Self { dir }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn command(&self, extra: &[&str]) -> Command {
        self.stage_command("sft", extra)
    }

    fn stage_command(&self, stage: &str, extra: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lora-dpo"));
        c.arg(stage)
            .arg("--config")
            .arg(self.dir.path().join("run.toml"))
            .arg("--no-progress")
            .args(extra)
            .env("LORA_DPO_CACHE", self.dir.path().join("cache"))
            .env_remove("LORA_DPO_FAULT");
        c
    }

    fn run(&self, extra: &[&str]) -> (i32, String) {
        finished(self.command(extra).output().unwrap())
    }

    fn run_with_fault(&self, fault: &str, extra: &[&str]) -> (i32, String) {
        finished(
            self.command(extra)
                .env("LORA_DPO_FAULT", fault)
                .output()
                .unwrap(),
        )
    }

    fn spawn(&self, extra: &[&str]) -> Child {
        self.command(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn adapter(&self) -> Vec<u8> {
        std::fs::read(self.out().join("sft/adapter/adapter_model.safetensors")).unwrap()
    }

    fn metrics_steps(&self) -> Vec<u64> {
        let text = std::fs::read_to_string(self.out().join("sft/metrics.jsonl")).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "cut line: {text}");
        text.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
                    ["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    /// `(step, num_tokens)` of each training record (TRL's running token count).
    fn num_tokens(&self) -> Vec<(u64, f64)> {
        let text = std::fs::read_to_string(self.out().join("sft/metrics.jsonl")).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter_map(|v| Some((v["step"].as_u64()?, v.get("num_tokens")?.as_f64()?)))
            .collect()
    }

    /// Blocks until the run has logged at least one step.
    fn wait_for_a_step(&self, child: &mut Child) {
        let path = self.out().join("sft/metrics.jsonl");
        let start = Instant::now();
        while !std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() >= 1) {
            assert!(child.try_wait().unwrap().is_none(), "the run ended early");
            assert!(start.elapsed() < Duration::from_secs(60), "no step logged");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn finished(out: Output) -> (i32, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn wait(child: Child) -> (i32, String) {
    finished(child.wait_with_output().unwrap())
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill -{sig} failed");
}

/// Every complete checkpoint folder has its three parts; no temporary folder is left under a
/// final name.
fn assert_checkpoints_complete(run_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("checkpoint-") {
            for part in [
                "trainer_state.json",
                "optimizer.safetensors",
                "adapter/adapter_model.safetensors",
                "adapter/adapter_config.json",
            ] {
                assert!(e.path().join(part).is_file(), "{name} lacks {part}");
            }
        }
    }
}

const STEPS: usize = 6;

#[test]
fn each_stopping_signal_checkpoints_exits_with_its_code_and_resumes() {
    for (sig, code) in [(15, 143), (1, 129), (2, 130)] {
        let run = Run::new(100_000, 0);
        let mut child = run.spawn(&[]);
        run.wait_for_a_step(&mut child);
        signal(&child, sig);
        let (status, err) = wait(child);
        assert_eq!(status, code, "signal {sig}: {err}");
        assert!(err.contains("--resume"), "signal {sig}: {err}");
        let ckpt = std::fs::read_dir(run.out().join("sft"))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
            .unwrap_or_else(|| panic!("signal {sig}: no checkpoint: {err}"));
        assert_checkpoints_complete(&run.out().join("sft"));
        let at: u64 = ckpt.file_name().to_string_lossy()["checkpoint-".len()..]
            .parse()
            .unwrap();
        assert!(at < 100_000, "signal {sig}: the run was not stopped early");
        // The resumed run picks up there (and is stopped again).
        let mut child = run.spawn(&["--resume"]);
        run.wait_for_a_step(&mut child);
        std::thread::sleep(Duration::from_millis(200));
        signal(&child, 15);
        let (status, err) = wait(child);
        assert_eq!(status, 143, "{err}");
        assert!(err.contains(&format!("step {at} of 100000")), "{err}");
        let steps = run.metrics_steps();
        let mut sorted = steps.clone();
        sorted.dedup();
        assert_eq!(steps, sorted, "a step repeats: {steps:?}");
    }
}

#[test]
fn a_second_signal_quits_at_once() {
    let run = Run::new(100_000, 0);
    let mut child = run.spawn(&[]);
    run.wait_for_a_step(&mut child);
    // Microseconds apart, well within a step: whichever is handled second ends the run at once,
    // with its own code, before the step ends and a checkpoint is saved.
    signal(&child, 15);
    signal(&child, 2);
    let (status, err) = wait(child);
    assert!(status == 130 || status == 143, "{status}: {err}");
    assert!(err.contains("quitting now"), "{err}");
    assert!(!err.contains("saved in"), "{err}");
}

#[test]
fn a_second_run_on_a_locked_folder_is_refused_naming_the_holder() {
    let run = Run::new(100_000, 0);
    let mut first = run.spawn(&[]);
    run.wait_for_a_step(&mut first);
    let (status, err) = run.run(&["--resume"]);
    assert_eq!(status, 1, "{err}");
    assert!(err.contains(&format!("pid {}", first.id())), "{err}");
    assert!(err.contains(&run.out().display().to_string()), "{err}");
    signal(&first, 15);
    assert_eq!(wait(first).0, 143);
}

#[test]
fn a_finished_folder_is_not_overwritten_without_being_asked() {
    let run = Run::new(STEPS, 0);
    assert_eq!(run.run(&[]).0, 0);
    let trained = run.adapter();
    let (status, err) = run.run(&[]);
    assert_eq!(status, 1, "{err}");
    assert!(
        err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(run.adapter(), trained);
    // --resume finds the stage finished with the same settings and keeps it.
    let (status, err) = run.run(&["--resume"]);
    assert_eq!(status, 0, "{err}");
    assert!(err.contains("already finished"), "{err}");
    assert_eq!(run.adapter(), trained);
    // --resume with other settings refuses the finished stage too.
    let (status, err) = run.run(&["--resume", "--set", "sft.learning_rate=0.02"]);
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("sft.learning_rate: 0.01 → 0.02"), "{err}");
    // --overwrite starts again (same settings: same weights).
    let (status, err) = run.run(&["--overwrite", "--set", "sft.learning_rate=0.02"]);
    assert_eq!(status, 0, "{err}");
    assert_ne!(run.adapter(), trained);
    assert_eq!(run.metrics_steps(), (1..=STEPS as u64).collect::<Vec<_>>());
}

/// `num_tokens` counts from step 0 across a resume: the checkpoint records it
/// (`num_input_tokens_seen`), so an interrupted run logs what an uninterrupted one does.
#[test]
fn num_tokens_runs_on_across_a_resume() {
    let straight = Run::new(STEPS, 2);
    let (status, err) = straight.run(&[]);
    assert_eq!(status, 0, "{err}");
    let want = straight.num_tokens();
    assert_eq!(want.len(), STEPS, "{want:?}");
    assert!(want.windows(2).all(|w| w[1].1 > w[0].1), "{want:?}");
    let run = Run::new(STEPS, 2);
    let (status, err) = run.run_with_fault("checkpoint-after-rename", &[]);
    assert_eq!(status, 99, "{err}");
    let (status, err) = run.run(&["--resume"]);
    assert_eq!(status, 0, "{err}");
    assert_eq!(run.num_tokens(), want);
}

#[test]
fn resume_refuses_a_checkpoint_of_other_settings_listing_them() {
    let run = Run::new(STEPS, 2);
    let (status, err) = run.run_with_fault("checkpoint-after-rename", &[]);
    assert_eq!(status, 99, "{err}");
    let (status, err) = run.run(&["--resume", "--set", "sft.learning_rate=0.02"]);
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("checkpoint-2"), "{err}");
    assert!(err.contains("sft.learning_rate: 0.01 → 0.02"), "{err}");
    // The data file is part of the fingerprint by content, not by name.
    let data = run.dir.path().join("sft.jsonl");
    let text = std::fs::read_to_string(&data).unwrap();
    let first_row = text.lines().next().unwrap();
    std::fs::write(&data, format!("{text}{first_row}\n")).unwrap();
    let (status, err) = run.run(&["--resume"]);
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("sft.train_file"), "{err}");
    std::fs::write(&data, text).unwrap();
    let (status, err) = run.run(&["--resume"]);
    assert_eq!(status, 0, "{err}");
}

#[test]
fn a_kill_at_any_write_leaves_complete_files_and_resume_ends_bit_identical() {
    let reference = Run::new(STEPS, 2);
    let (status, err) = reference.run(&[]);
    assert_eq!(status, 0, "{err}");
    let expected = reference.adapter();
    // Each fault point, at its first and a later hit.
    for fault in [
        "checkpoint-before-state",
        "checkpoint-before-rename",
        "checkpoint-before-rename:2",
        "checkpoint-after-rename",
        "checkpoint-after-rename:3",
        "metrics-half-line",
        "metrics-half-line:4",
        // The adapter inside checkpoint-4, then the final one (after checkpoint-6's).
        "adapter-before-rename:2",
        "adapter-before-rename:4",
        "stage-before-state",
    ] {
        let run = Run::new(STEPS, 2);
        let (status, err) = run.run_with_fault(fault, &[]);
        assert_eq!(status, 99, "{fault}: {err}");
        assert_checkpoints_complete(&run.out().join("sft"));
        let (status, err) = run.run(&["--resume"]);
        assert_eq!(status, 0, "{fault}: {err}");
        assert_eq!(run.adapter(), expected, "{fault}: resumed weights differ");
        assert_eq!(
            run.metrics_steps(),
            (1..=STEPS as u64).collect::<Vec<_>>(),
            "{fault}"
        );
    }
}

#[test]
fn a_resumed_train_reuses_the_finished_sft_stage_and_ends_bit_identical() {
    let dpo = format!(
        r#"
[dpo]
train_file = "{}"
learning_rate = 0.01
max_steps = 4
per_device_train_batch_size = 2
save_steps = 2
logging_steps = 1
"#,
        common::fixture_str("train/prefs.jsonl")
    );
    let combined =
        |run: &Run| std::fs::read(run.out().join("combined/adapter_model.safetensors")).unwrap();
    let reference = Run::with_dpo(STEPS, 2, &dpo);
    let out = reference.stage_command("train", &[]).output().unwrap();
    assert_eq!(finished(out).0, 0);

    let run = Run::with_dpo(STEPS, 2, &dpo);
    // SFT's 3 checkpoints, then DPO's first: stopped inside the DPO stage.
    let out = run
        .stage_command("train", &[])
        .env("LORA_DPO_FAULT", "checkpoint-after-rename:4")
        .output()
        .unwrap();
    assert_eq!(finished(out).0, 99);
    assert!(run.out().join("dpo/checkpoint-2").is_dir());
    let (status, err) = finished(run.stage_command("train", &["--resume"]).output().unwrap());
    assert_eq!(status, 0, "{err}");
    assert!(err.contains("sft already finished"), "{err}");
    assert!(err.contains("resuming from"), "{err}");
    assert_eq!(combined(&run), combined(&reference));
}

#[test]
fn save_total_limit_keeps_the_newest_checkpoints() {
    let run = Run::new(STEPS, 1);
    let (status, err) = run.run(&["--set", "sft.save_total_limit=2"]);
    assert_eq!(status, 0, "{err}");
    let mut kept: Vec<String> = std::fs::read_dir(run.out().join("sft"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    kept.sort();
    assert_eq!(kept, ["checkpoint-5", "checkpoint-6"]);
}
