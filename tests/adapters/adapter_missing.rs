//! An adapter whose file lacks tensors its `adapter_config.json` targets is refused, listing the
//! missing keys, unless `--allow-missing` (or `MissingTensors::Allow`) loads it with those
//! modules untrained.

use crate::common;

use candle_core::{DType, Device, Tensor};
use common::{fixture, fixture_str};
use lora_dpo::adapter::{load_adapter, load_adapter_with, save_adapter, MissingTensors};
use lora_dpo::model::{load_config, ModelConfig};
use lora_dpo::source::Source;
use std::path::{Path, PathBuf};

const PREFIX: &str = "base_model.model.model.layers";

fn config() -> ModelConfig {
    load_config(&Source::parse(&fixture_str("models/tiny-llama")).unwrap()).unwrap()
}

/// A copy of tiny-llama's PEFT-written adapter (all seven projections of both layers) in `dir`,
/// without the tensors `drop` selects.
fn damaged_adapter(dir: &Path, drop: impl Fn(&str) -> bool) -> PathBuf {
    let src = fixture("models/tiny-llama/adapter");
    std::fs::copy(
        src.join("adapter_config.json"),
        dir.join("adapter_config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = file
        .tensors()
        .into_iter()
        .filter(|(n, _)| !drop(n))
        .collect();
    assert!(kept.len() < file.len(), "the test removed something");
    safetensors::serialize_to_file(kept, None, &dir.join("adapter_model.safetensors")).unwrap();
    dir.to_path_buf()
}

fn key(layer: usize, module: &str, factor: &str) -> String {
    format!("{PREFIX}.{layer}.{module}.{factor}.weight")
}

fn without_layer1_v_proj(name: &str) -> bool {
    name.contains("layers.1.self_attn.v_proj.")
}

fn load_error(dir: &Path) -> String {
    match load_adapter(dir.to_str().unwrap(), &config(), &Device::Cpu) {
        Ok(_) => panic!("{}: the damaged adapter loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn a_module_without_its_tensors_is_refused_naming_its_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = damaged_adapter(tmp.path(), without_layer1_v_proj);
    let err = load_error(&dir);
    for factor in ["lora_A", "lora_B"] {
        assert!(
            err.contains(&key(1, "self_attn.v_proj", factor)),
            "{factor}: {err}"
        );
    }
    assert!(err.contains("2 tensor(s)"), "{err}");
    assert!(
        err.contains("adapter_model.safetensors"),
        "names the file: {err}"
    );
    assert!(err.contains("--allow-missing"), "says the way out: {err}");
}

#[test]
fn a_module_short_of_one_factor_is_refused_naming_that_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = damaged_adapter(tmp.path(), |n| n == key(0, "mlp.up_proj", "lora_B"));
    let err = load_error(&dir);
    assert!(err.contains(&key(0, "mlp.up_proj", "lora_B")), "{err}");
    assert!(!err.contains(&key(0, "mlp.up_proj", "lora_A")), "{err}");
    assert!(err.contains("1 tensor(s)"), "{err}");
}

#[test]
fn a_long_list_of_missing_keys_is_cut_to_ten_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = damaged_adapter(tmp.path(), |n| n.contains("layers.1."));
    let err = load_error(&dir);
    // Seven projections of layer 1, two factors each: 14 keys, 10 listed.
    assert!(
        err.contains("14 tensor(s)") && err.contains("and 4 more"),
        "{err}"
    );
    assert_eq!(err.matches(&format!("{PREFIX}.1.")).count(), 10, "{err}");
}

#[test]
fn allowed_missing_modules_load_as_untrained_and_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = damaged_adapter(tmp.path(), without_layer1_v_proj);
    let loaded = load_adapter_with(
        dir.to_str().unwrap(),
        &config(),
        &Device::Cpu,
        MissingTensors::Allow,
    )
    .unwrap();
    assert_eq!(
        loaded.missing,
        vec![
            key(1, "self_attn.v_proj", "lora_A"),
            key(1, "self_attn.v_proj", "lora_B")
        ]
    );
    // v_proj is projection 2.
    assert!(loaded
        .adapter
        .pair(1, lora_dpo::model::Projection::V)
        .is_none());
    assert!(loaded
        .adapter
        .pair(0, lora_dpo::model::Projection::V)
        .is_some());
    assert!(loaded
        .adapter
        .pair(1, lora_dpo::model::Projection::Q)
        .is_some());
}

#[test]
fn an_adapter_saved_after_an_allowed_load_reloads_strictly_to_the_same_modules() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = damaged_adapter(tmp.path(), without_layer1_v_proj);
    let loaded = load_adapter_with(
        dir.to_str().unwrap(),
        &config(),
        &Device::Cpu,
        MissingTensors::Allow,
    )
    .unwrap();
    let saved = tmp.path().join("saved");
    save_adapter(&loaded.adapter, "tiny-llama", &saved).unwrap();
    let again = load_adapter(saved.to_str().unwrap(), &config(), &Device::Cpu).unwrap();
    let names = |a: &lora_dpo::model::Adapter| -> Vec<String> {
        a.named_vars().into_iter().map(|(n, _)| n).collect()
    };
    assert_eq!(names(&again), names(&loaded.adapter));
    assert!(again.pair(1, lora_dpo::model::Projection::V).is_none());
}

#[test]
fn a_complete_adapter_loads_without_missing_keys() {
    let loaded = load_adapter_with(
        &fixture_str("models/tiny-llama/adapter"),
        &config(),
        &Device::Cpu,
        MissingTensors::Refuse,
    )
    .unwrap();
    assert!(loaded.missing.is_empty(), "{:?}", loaded.missing);
    assert_eq!(loaded.adapter.named_vars().len(), 2 * 7 * 2);
}

#[test]
fn layers_to_transform_limits_what_must_be_present() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = damaged_adapter(tmp.path(), |n| n.contains("layers.1."));
    let path = dir.join("adapter_config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["layers_to_transform"] = serde_json::json!([0]);
    std::fs::write(&path, json.to_string()).unwrap();
    let adapter = load_adapter(dir.to_str().unwrap(), &config(), &Device::Cpu).unwrap();
    assert!(
        adapter.pair(0, lora_dpo::model::Projection::Q).is_some()
            && adapter.pair(1, lora_dpo::model::Projection::Q).is_none()
    );
}

/// Exit code and stderr of the built binary.
fn cli(args: &[&str]) -> (i32, String) {
    let (code, _, stderr) = common::lora_dpo(args);
    (code, stderr)
}

fn merge_args<'a>(adapter: &'a str, out: &'a str, model: &'a str) -> Vec<&'a str> {
    vec![
        "merge",
        "--model",
        model,
        "--adapter",
        adapter,
        "--out",
        out,
        "--dtype",
        "f32",
    ]
}

fn weights(dir: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn cli_merge_refuses_a_damaged_adapter_and_with_allow_missing_merges_it_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter_dir = tmp.path().join("adapter");
    std::fs::create_dir_all(&adapter_dir).unwrap();
    let adapter = damaged_adapter(&adapter_dir, without_layer1_v_proj);
    let model = fixture_str("models/tiny-llama");
    let out = tmp.path().join("merged");
    let (adapter, out_s) = (adapter.to_str().unwrap(), out.to_str().unwrap());

    let (code, err) = cli(&merge_args(adapter, out_s, &model));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains(&key(1, "self_attn.v_proj", "lora_A")), "{err}");
    assert!(!out.exists(), "nothing written");

    let mut args = merge_args(adapter, out_s, &model);
    args.push("--allow-missing");
    let (code, err) = cli(&args);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning") && err.contains(&key(1, "self_attn.v_proj", "lora_B")),
        "{err}"
    );
    // The missing module adds nothing (exactly: the base's f32 bytes are copied); a present
    // one changes its weight.
    let (base, merged) = (weights(&fixture("models/tiny-llama")), weights(&out));
    let diff = |name: &str| {
        let (a, b) = (&base[name], &merged[name]);
        common::max_abs_diff(&a.to_dtype(DType::F32).unwrap(), b)
    };
    assert_eq!(diff("model.layers.1.self_attn.v_proj.weight"), 0.0);
    assert!(diff("model.layers.0.self_attn.v_proj.weight") > 0.0);
}

#[test]
fn cli_merge_of_a_complete_adapter_warns_of_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let (adapter, model) = (
        fixture_str("models/tiny-llama/adapter"),
        fixture_str("models/tiny-llama"),
    );
    let mut args = merge_args(&adapter, out.to_str().unwrap(), &model);
    args.push("--allow-missing");
    let (code, err) = cli(&args);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn cli_generate_takes_allow_missing_too() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = damaged_adapter(tmp.path(), without_layer1_v_proj);
    let model = fixture_str("models/tiny-llama");
    let base = [
        "generate",
        "--model",
        &model,
        "--adapter",
        adapter.to_str().unwrap(),
        "--prompt",
        "hi",
        "--raw",
        "--max-new-tokens",
        "2",
        "--device",
        "cpu",
    ];
    let (code, err) = cli(&base);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains(&key(1, "self_attn.v_proj", "lora_A")), "{err}");
    let mut allowed = base.to_vec();
    allowed.push("--allow-missing");
    let (code, err) = cli(&allowed);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning"), "{err}");
}
