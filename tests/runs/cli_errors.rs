//! Bad model input gives a one-line error naming the file, field or tensor, a non-zero exit
//! code, and never a panic.

use crate::common;

use std::path::Path;
use std::process::Command;

fn inspect(model: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lora-dpo"))
        .args(["inspect", "--model"])
        .arg(model)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(!stderr.contains("stack backtrace"), "backtrace: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

/// A copy of the tiny Mistral fixture in a temporary folder, to be damaged by the test.
fn model_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(
            common::fixture(&format!("models/tiny-mistral/{f}")),
            dir.path().join(f),
        )
        .unwrap();
    }
    dir
}

fn edit_config(dir: &Path, edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(json.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
}

#[test]
fn a_valid_model_is_described() {
    let dir = model_copy();
    let out = Command::new(env!("CARGO_BIN_EXE_lora-dpo"))
        .args(["inspect", "--r", "4", "--model"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("MistralForCausalLM"), "{text}");
    // r · (in + out) summed over 7 projections and 2 layers: 4 · (80+56+56+80+80+80+80) · 2.
    assert!(text.contains("(4096) with r=4"), "{text}");
}

#[test]
fn missing_folder_is_named() {
    let (code, err) = inspect(Path::new("/nonexistent/model-folder"));
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/model-folder"), "{err}");
}

#[test]
fn missing_config_file_is_named() {
    let dir = model_copy();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let (code, err) = inspect(dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("config.json: file not found"), "{err}");
}

#[test]
fn missing_config_field_is_named() {
    let dir = model_copy();
    edit_config(dir.path(), |c| {
        c.remove("num_attention_heads");
    });
    let (code, err) = inspect(dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("config.json") && err.contains("num_attention_heads"),
        "{err}"
    );
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = model_copy();
    edit_config(dir.path(), |c| {
        c.insert(
            "architectures".into(),
            serde_json::json!(["GPTNeoXForCausalLM"]),
        );
    });
    let (code, err) = inspect(dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("GPTNeoXForCausalLM") && err.contains("not supported"),
        "{err}"
    );
}

#[test]
fn truncated_safetensors_is_named() {
    let dir = model_copy();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let (code, err) = inspect(dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("model.safetensors") && err.contains("truncated or corrupt"),
        "{err}"
    );
}

#[test]
fn garbage_safetensors_is_named() {
    let dir = model_copy();
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"this is not a safetensors file",
    )
    .unwrap();
    let (code, err) = inspect(dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn wrong_tensor_shape_is_named() {
    let dir = model_copy();
    edit_config(dir.path(), |c| {
        c.insert("intermediate_size".into(), serde_json::json!(40));
    });
    let (code, err) = inspect(dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("model.layers.0.mlp.gate_proj.weight") && err.contains("[48, 32]"),
        "{err}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = model_copy();
    edit_config(dir.path(), |c| {
        c.insert("num_hidden_layers".into(), serde_json::json!(3));
    });
    let (code, err) = inspect(dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("model.layers.2.") && err.contains("not found"),
        "{err}"
    );
}
