//! The GPU check kit's logic, dry-run on the CPU (`scripts/gpu_check.sh --device cpu`): a tiny
//! model of the Mistral family with the fixtures' tokenizer, a short max_length. Every step runs
//! and results.json holds the parity verdicts, the estimate and the bench figures. Needs
//! python3 (standard library only); PyTorch is skipped where it is not installed.

use crate::common;

use common::fixture;

#[test]
fn the_kit_runs_end_to_end_on_the_cpu() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("python3 not found: the kit needs it; skipped");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = std::process::Command::new(root.join("scripts/gpu_check.sh"))
        .args(["--device", "cpu"])
        .arg(out.path())
        .env("GPU_CHECK_BIN", env!("CARGO_BIN_EXE_lora-dpo"))
        .env("GPU_CHECK_TOKENIZER", fixture("models/tiny-llama"))
        .env("GPU_CHECK_MAX_LENGTH", "128")
        .output()
        .unwrap();
    let log = std::fs::read_to_string(out.path().join("log.txt")).unwrap_or_default();
    assert!(status.status.success(), "{log}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap();
    assert_eq!(r["parity"]["f32"], true, "{r}");
    assert_eq!(r["parity"]["bf16"], true, "{r}");
    assert!(r["estimate_gib"].as_f64().unwrap() > 0.0, "{r}");
    assert!(
        r["lora_dpo"]["tokens_per_sec"].as_f64().unwrap() > 0.0,
        "{r}\n{log}"
    );
    let summary = std::fs::read_to_string(out.path().join("summary.txt")).unwrap();
    assert!(summary.contains("parity f32: pass"), "{summary}");
}
