//! Four optimizer steps of a stage against TRL's own trainers (scripts/make_trajectory_fixtures.py):
//! one-step gradients are checked in tests/numerics; this checks what they feed over steps
//! (AdamW, clipping, the schedule, the order of batches into a second epoch, and, for DPO, a
//! reference that is the starting adapter, as TRL makes it for a PeftModel).

use crate::common;

use candle_core::Device;
use lora_dpo::config::LoadedConfig;
use lora_dpo::train::run::{run_dpo, Session};
use serde_json::Value;

/// Relative tolerance of each logged value over the four steps (measured 2.7e-5) and of the
/// final adapter's relative L2 distance from TRL's (measured 2.9e-6).
const TOLERANCE: f64 = 1e-3;

fn config(dir: &std::path::Path, settings: &Value, keys: &Value) -> LoadedConfig {
    let mut text = format!(
        "{head}init_adapter = \"{adapter}\"\nlora_dropout = 0.0\nuse_rslora = true\n\
         [dpo]\ntrain_file = \"{data}\"\nmax_length = 128\nwarmup_steps = 0\nlogging_steps = 1\n\
         save_steps = 0\nreport_to = \"none\"\n",
        head = common::tiny_llama_sections(),
        adapter = common::fixture_str("models/tiny-llama/adapter"),
        data = common::fixture_str("train/prefs.jsonl"),
    );
    for (k, v) in settings
        .as_object()
        .unwrap()
        .iter()
        .chain(keys.as_object().unwrap())
    {
        text.push_str(&format!("{k} = {v}\n"));
    }
    text.push_str(&format!(
        "[output]\ndir = \"{}\"\nseed = 0\n",
        dir.display()
    ));
    LoadedConfig::from_str(&text, &[]).unwrap()
}

#[test]
fn four_steps_follow_trls_cpo_and_dpo_trainers() {
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("train/expected_trajectories.json")).unwrap(),
    )
    .unwrap();
    let weights = candle_core::safetensors::load(
        common::fixture("train/expected_trajectories.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let (mut worst_logged, mut worst_weight) = (0f64, 0f64);
    for case in expected["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &expected["settings"], &case["keys"]);
        let session = Session::open(&cfg).unwrap();
        run_dpo(&session, &cfg, &common::run_options(false, false), None).unwrap();

        let logged: Vec<Value> = std::fs::read_to_string(dir.path().join("dpo/metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r.get("loss").is_some())
            .collect();
        let steps = case["steps"].as_array().unwrap();
        assert_eq!(logged.len(), steps.len(), "{name}: logged steps");
        for (ours, trl) in logged.iter().zip(steps) {
            assert_eq!(ours["step"], trl["step"], "{name}");
            for key in [
                "loss",
                "grad_norm",
                "rewards/margins",
                "logps/chosen",
                "logps/rejected",
            ] {
                let (a, b) = (ours[key].as_f64().unwrap(), trl[key].as_f64().unwrap());
                let rel = (a - b).abs() / b.abs().max(1e-3);
                worst_logged = worst_logged.max(rel);
                assert!(
                    rel < TOLERANCE,
                    "{name} step {}: {key} {a} vs TRL {b} (relative {rel:.1e})",
                    trl["step"]
                );
            }
        }

        let trained = candle_core::safetensors::load(
            dir.path().join("dpo/adapter/adapter_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let mut ours: Vec<String> = trained.keys().map(|k| format!("{name}.{k}")).collect();
        let mut trls: Vec<String> = weights
            .keys()
            .filter(|k| k.starts_with(&format!("{name}.")))
            .cloned()
            .collect();
        ours.sort();
        trls.sort();
        assert_eq!(ours, trls, "{name}: adapter tensors");
        for (key, ours) in &trained {
            let r = common::rel_l2(ours, &weights[&format!("{name}.{key}")]);
            worst_weight = worst_weight.max(r as f64);
            assert!((r as f64) < TOLERANCE, "{name} {key}: relative L2 {r:.1e}");
        }
    }
    eprintln!("worst relative difference: logged {worst_logged:.1e}, adapter {worst_weight:.1e}");
}
