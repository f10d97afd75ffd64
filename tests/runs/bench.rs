//! `bench --json` runs the configured job and reports the documented keys.

use crate::common;

use common::fixture_str;

#[test]
fn bench_reports_medians_memory_and_breakdown() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bench.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\nname_or_path = \"{}\"\ndevice = \"cpu\"\n[lora]\nr = 2\n\
             [dpo]\ntrain_file = \"{}\"\nper_device_train_batch_size = 2\n[output]\ndir = \"{}\"\n",
            fixture_str("models/tiny-llama"),
            fixture_str("train/prefs.jsonl"),
            dir.path().join("out").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lora-dpo"))
        .args([
            "bench", "--stage", "dpo", "--steps", "3", "--warmup", "1", "--json", "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["steps"], 3);
    for key in ["sec_per_step_median", "tokens_per_sec", "peak_rss_mib"] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key}: {v}");
    }
    for part in ["data", "reference", "forward", "backward", "optimizer"] {
        assert!(
            v["breakdown_sec_median"][part].as_f64().unwrap() >= 0.0,
            "{part}: {v}"
        );
    }
}
