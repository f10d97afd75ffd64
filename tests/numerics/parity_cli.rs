//! `lora-dpo parity`, the reference checks the GPU kit runs on a device, dry-run on the CPU in
//! f32 and bf16 on both paths: every check passes with the tolerances it states, and a missing
//! fixtures folder is a clear error.

use crate::common;

use common::fixture;

fn parity(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lora-dpo"))
        .arg("parity")
        .args(args)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), json, stderr)
}

#[test]
fn every_check_passes_on_the_cpu() {
    let fixtures = fixture("").display().to_string();
    for (dtype, kernels) in [("f32", "auto"), ("f32", "generic"), ("bf16", "auto")] {
        let (code, r, err) = parity(&[
            "--fixtures",
            &fixtures,
            "--device",
            "cpu",
            "--dtype",
            dtype,
            "--kernels",
            kernels,
        ]);
        assert_eq!(code, 0, "{dtype} {kernels}: {err}");
        let checks = r["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 8, "{r}");
        for c in checks {
            assert_eq!(c["pass"], true, "{dtype} {kernels}: {c}");
            assert!(c["tolerance"].as_f64().unwrap() > 0.0);
        }
    }
}

#[test]
fn a_missing_fixtures_folder_is_named() {
    let (code, _, err) = parity(&["--fixtures", "/nonexistent/fixtures", "--device", "cpu"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/fixtures"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
