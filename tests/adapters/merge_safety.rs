//! `merge` never deletes or alters an input, whatever the spelling of `--out`, and `--overwrite`
//! keeps a complete output (the old or the new) under the final name through a kill at any point.

use crate::common;

use common::fixture;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Inputs laid out apart from each other, so each one's parent is a distinct folder:
/// `models/tiny-llama`, `adapters/lora`, `gguf/tiny-llama-f32.gguf`.
struct Inputs {
    root: tempfile::TempDir,
}

impl Inputs {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        copy_files(
            &fixture("models/tiny-llama"),
            &root.path().join("models/tiny-llama"),
        );
        copy_files(
            &fixture("models/tiny-llama/adapter"),
            &root.path().join("adapters/lora"),
        );
        std::fs::create_dir_all(root.path().join("gguf")).unwrap();
        std::fs::copy(
            fixture("models/tiny-gguf/tiny-llama-f32.gguf"),
            root.path().join("gguf/tiny-llama-f32.gguf"),
        )
        .unwrap();
        Self { root }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }
    fn model(&self) -> PathBuf {
        self.path("models/tiny-llama")
    }
    fn adapter(&self) -> PathBuf {
        self.path("adapters/lora")
    }
    fn gguf(&self) -> PathBuf {
        self.path("gguf/tiny-llama-f32.gguf")
    }
}

/// The top-level files of `from` (not its subfolders) copied into a new folder `to`.
fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Every file under `dir` (recursively) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(path);
            } else {
                let bytes = if kind.is_symlink() {
                    std::fs::read_link(&path)
                        .unwrap()
                        .display()
                        .to_string()
                        .into_bytes()
                } else {
                    std::fs::read(&path).unwrap()
                };
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), bytes);
            }
        }
    }
    out
}

fn merge_cli(cwd: &Path, args: &[&str], fault: Option<&str>) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lora-dpo"));
    cmd.arg("merge").args(args).current_dir(cwd);
    cmd.env_remove("LORA_DPO_FAULT");
    if let Some(point) = fault {
        cmd.env("LORA_DPO_FAULT", point);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs a merge of `model` (+ `adapter`) into `out` with `--overwrite` (the spelling that would
/// replace whatever `out` resolves to) and checks it is refused naming `input`, with nothing
/// under the test's folder changed.
fn assert_refused(inputs: &Inputs, model: &Path, adapter: Option<&Path>, out: &str, input: &Path) {
    let before = snapshot(inputs.root.path());
    let mut args = vec!["--model", s(model), "--out", out, "--overwrite"];
    if let Some(a) = adapter {
        args.extend(["--adapter", s(a)]);
    }
    let (code, stderr) = merge_cli(inputs.root.path(), &args, None);
    assert_ne!(code, 0, "--out {out} was accepted: {stderr}");
    let resolved = input.canonicalize().unwrap();
    assert!(
        stderr.contains(s(&resolved)),
        "--out {out}: the error names the input {}: {stderr}",
        resolved.display()
    );
    assert!(
        snapshot(inputs.root.path()) == before,
        "--out {out}: files under the test folder changed"
    );
}

#[test]
fn an_out_that_is_the_model_folder_in_any_spelling_is_refused() {
    let inputs = Inputs::new();
    std::os::unix::fs::symlink(inputs.model(), inputs.path("link")).unwrap();
    let model = inputs.model();
    for out in [
        format!("{}/", s(&model)),
        s(&inputs.path("adapters/../models/tiny-llama")).to_string(),
        s(&inputs.path("link")).to_string(),
        "models/tiny-llama".to_string(),
        "./models/./tiny-llama/".to_string(),
    ] {
        assert_refused(&inputs, &model, Some(&inputs.adapter()), &out, &model);
    }
}

#[test]
fn an_out_holding_or_inside_the_model_folder_is_refused() {
    let inputs = Inputs::new();
    let model = inputs.model();
    for out in [
        inputs.path("models"),
        inputs.root.path().to_path_buf(),
        model.join("merged"),
        model.join("new/deeper/../merged"),
    ] {
        assert_refused(&inputs, &model, None, s(&out), &model);
    }
}

#[test]
fn an_out_that_is_holds_or_sits_in_an_adapter_folder_is_refused() {
    let inputs = Inputs::new();
    let adapter = inputs.adapter();
    for out in [adapter.clone(), inputs.path("adapters"), adapter.join("m")] {
        assert_refused(&inputs, &inputs.model(), Some(&adapter), s(&out), &adapter);
    }
}

#[test]
fn an_out_holding_the_gguf_input_is_refused() {
    let inputs = Inputs::new();
    let gguf = inputs.gguf();
    for out in [inputs.path("gguf"), inputs.path("gguf/")] {
        assert_refused(&inputs, &gguf, None, s(&out), &gguf);
    }
}

#[test]
fn an_out_beside_the_inputs_is_written() {
    let inputs = Inputs::new();
    let out = inputs.path("models/tiny-llama-merged");
    let (code, stderr) = merge_cli(
        inputs.root.path(),
        &[
            "--model",
            s(&inputs.model()),
            "--adapter",
            s(&inputs.adapter()),
            "--out",
            s(&out),
        ],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    assert_complete(&out);
}

/// config.json is there and model.safetensors parses.
fn assert_complete(out: &Path) {
    assert!(out.join("config.json").is_file(), "{}", out.display());
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    safetensors::SafeTensors::deserialize(&bytes).expect("a complete safetensors file");
}

/// Names in `dir` starting with `.` other than the output lock files, which stay by design.
fn hidden_leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.') && !n.ends_with(".lock"))
        .collect()
}

/// A folder with an old output (a plain conversion, marked by an extra file) at `work/out`,
/// and the bytes the new merge (with the adapter) writes, from a clean run elsewhere.
struct Overwrite {
    inputs: Inputs,
    old_weights: Vec<u8>,
    new_weights: Vec<u8>,
}

impl Overwrite {
    fn new() -> Self {
        let inputs = Inputs::new();
        std::fs::create_dir_all(inputs.path("work")).unwrap();
        let (code, err) = merge_cli(
            inputs.root.path(),
            &["--model", s(&inputs.model()), "--out", "work/out"],
            None,
        );
        assert_eq!(code, 0, "{err}");
        std::fs::write(inputs.path("work/out/OLD"), "the old output").unwrap();
        let old_weights = std::fs::read(inputs.path("work/out/model.safetensors")).unwrap();
        let mut this = Self {
            inputs,
            old_weights,
            new_weights: vec![],
        };
        let (code, err) = this.overwrite("reference", None);
        assert_eq!(code, 0, "{err}");
        this.new_weights = std::fs::read(this.inputs.path("reference/model.safetensors")).unwrap();
        assert_ne!(
            this.old_weights, this.new_weights,
            "the adapter changes weights"
        );
        this
    }

    fn overwrite(&self, out: &str, fault: Option<&str>) -> (i32, String) {
        let (model, adapter) = (self.inputs.model(), self.inputs.adapter());
        let args = [
            "--model",
            s(&model),
            "--adapter",
            s(&adapter),
            "--out",
            out,
            "--overwrite",
        ];
        merge_cli(self.inputs.root.path(), &args, fault)
    }

    fn out(&self) -> PathBuf {
        self.inputs.path("work/out")
    }

    /// Whether `work/out` holds the complete old output (else it must be the complete new one).
    fn holds_old(&self) -> bool {
        let out = self.out();
        assert_complete(&out);
        let weights = std::fs::read(out.join("model.safetensors")).unwrap();
        if out.join("OLD").exists() {
            assert!(weights == self.old_weights, "the old output is intact");
            true
        } else {
            assert!(weights == self.new_weights, "the new output is complete");
            false
        }
    }
}

#[test]
fn overwrite_replaces_a_good_output_with_the_new_one_and_leaves_nothing_hidden() {
    let o = Overwrite::new();
    let (code, err) = o.overwrite("work/out", None);
    assert_eq!(code, 0, "{err}");
    assert!(!o.holds_old());
    assert_eq!(
        hidden_leftovers(&o.inputs.path("work")),
        Vec::<String>::new()
    );
}

#[test]
fn a_kill_at_any_point_of_an_overwrite_leaves_a_complete_output_and_the_next_merge_succeeds() {
    // (fault point, whether the old output is what a kill there leaves)
    for (point, old) in [
        ("merge-before-swap", true),
        ("replace-dir-after-swap", false),
        ("merge-after-swap", false),
    ] {
        let o = Overwrite::new();
        let (code, err) = o.overwrite("work/out", Some(point));
        assert_eq!(code, 99, "{point}: the fault stopped the merge: {err}");
        assert_eq!(o.holds_old(), old, "{point}");
        let (code, err) = o.overwrite("work/out", None);
        assert_eq!(code, 0, "{point}: the next merge: {err}");
        assert!(!o.holds_old(), "{point}");
        assert_eq!(
            hidden_leftovers(&o.inputs.path("work")),
            Vec::<String>::new(),
            "{point}"
        );
    }
}

#[test]
fn an_output_left_only_under_its_old_name_is_put_back_before_the_merge() {
    // What a kill between the two renames of the no-exchange fallback leaves.
    let o = Overwrite::new();
    std::fs::rename(o.out(), o.inputs.path("work/.out.old")).unwrap();
    // Without --overwrite the restored output is kept and the merge refused.
    let (code, err) = merge_cli(
        o.inputs.root.path(),
        &["--model", s(&o.inputs.model()), "--out", "work/out"],
        None,
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("put back the previous output"), "{err}");
    assert!(err.contains("not empty"), "{err}");
    assert!(o.holds_old());
    assert_eq!(
        hidden_leftovers(&o.inputs.path("work")),
        Vec::<String>::new()
    );
}

#[test]
fn a_second_writer_of_the_same_out_is_refused_at_once_naming_the_folder_and_pid() {
    let inputs = Inputs::new();
    let out = inputs.path("work/out");
    let _held = lora_dpo::lock::lock_output(&out).unwrap();
    let (code, err) = merge_cli(
        inputs.root.path(),
        &["--model", s(&inputs.model()), "--out", s(&out)],
        None,
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains(s(&out)), "names the folder: {err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "names the holder: {err}"
    );
    assert!(!out.exists(), "nothing written");
}

#[test]
fn an_out_inside_a_hub_input_s_cached_repo_is_refused() {
    // The hub cache layout: refs/main names a snapshot folder holding the files.
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--tiny--llama");
    copy_files(
        &fixture("models/tiny-llama"),
        &repo.join("snapshots/0123abcd"),
    );
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    let before = snapshot(cache.path());
    for out in [repo.join("merged"), repo.join("snapshots/0123abcd")] {
        let out = Command::new(env!("CARGO_BIN_EXE_lora-dpo"))
            .args(["merge", "--model", "tiny/llama", "--overwrite", "--out"])
            .arg(&out)
            .env("HF_HUB_CACHE", cache.path())
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("LORA_DPO_FAULT")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{stderr}");
        let resolved = repo.canonicalize().unwrap();
        assert!(stderr.contains(s(&resolved)), "{stderr}");
    }
    assert!(snapshot(cache.path()) == before, "the cache is unchanged");
}
