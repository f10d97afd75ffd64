//! PEFT adapters in and out: an adapter written here loads in PEFT with the same logits
//! (fixture from scripts/make_io_fixtures.py), and adapters this tool cannot represent are
//! refused with a message naming the field.
//!
//! `tests/fixtures/models/<name>/rust-adapter/` is written by `save_adapter`; the first test
//! checks that it is byte for byte what `save_adapter` writes today, so the PEFT reference
//! numbers cannot silently go stale. To regenerate it (then rerun the Python script):
//! `LORA_DPO_UPDATE_FIXTURES=1 cargo test --test adapter_io`.

use crate::common;

use candle_core::{DType, Device, Tensor};
use common::{expected, fixture, fixture_str, load_on, max_abs_diff, PATHS};
use lora_dpo::adapter::{load_adapter, save_adapter};
use lora_dpo::model::{load_model, Adapter, LoraConfig, Model, Pass};
use rand::{Rng, SeedableRng};

const LOGIT_ATOL: f32 = 1e-4;
use common::MODELS;

fn model(name: &str) -> Model {
    load_model(
        &fixture_str(&format!("models/{name}")),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

/// A seeded adapter with non-zero B; the Mistral one targets a subset of the projections,
/// the Llama one all of them with rsLoRA.
fn seeded_adapter(name: &str, model: &Model) -> Adapter {
    let config = if name == "tiny-mistral" {
        LoraConfig {
            r: 3,
            lora_alpha: 6.0,
            lora_dropout: 0.05,
            target_modules: ["q_proj", "v_proj", "o_proj", "down_proj"]
                .map(String::from)
                .to_vec(),
            use_rslora: false,
        }
    } else {
        LoraConfig {
            r: 2,
            lora_alpha: 4.0,
            use_rslora: true,
            ..LoraConfig::default()
        }
    };
    let adapter = Adapter::init(&model.config, config, 11, &Device::Cpu).unwrap();
    // Every factor from this test's own generator, so the fixture does not depend on how
    // Adapter::init draws A.
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    for (_, var) in adapter.named_vars() {
        let n = var.elem_count();
        let values: Vec<f32> = (0..n).map(|_| rng.random_range(-0.5f32..0.5)).collect();
        var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    adapter
}

/// Reference numbers of scripts/make_io_fixtures.py.
fn expected_io(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture(&format!("models/{name}/expected-io.safetensors")),
        &Device::Cpu,
    )
    .expect("fixture expected-io.safetensors (scripts/make_io_fixtures.py)")
}

fn rust_adapter_dir(name: &str) -> std::path::PathBuf {
    fixture(&format!("models/{name}/rust-adapter"))
}

#[test]
fn rust_written_adapter_fixture_is_what_save_adapter_writes() {
    for name in MODELS {
        let model = model(name);
        let adapter = seeded_adapter(name, &model);
        if std::env::var("LORA_DPO_UPDATE_FIXTURES").as_deref() == Ok("1") {
            save_adapter(&adapter, name, &rust_adapter_dir(name)).unwrap();
        }
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("a");
        save_adapter(&adapter, name, &out).unwrap();
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            let now = std::fs::read(out.join(file)).unwrap();
            let committed = std::fs::read(rust_adapter_dir(name).join(file)).unwrap();
            assert!(
                now == committed,
                "{name}/rust-adapter/{file} differs from what save_adapter writes now; \
                 regenerate (see the top of this file)"
            );
        }
    }
}

#[test]
fn our_adapter_gives_peft_logits() {
    for (name, kernels) in MODELS.iter().flat_map(|&n| PATHS.map(|k| (n, k))) {
        let model = load_on(&fixture_str(&format!("models/{name}")), DType::F32, kernels);
        let adapter = load_adapter(
            &rust_adapter_dir(name).display().to_string(),
            &model.config,
            &Device::Cpu,
        )
        .unwrap();
        let exp = expected(name);
        let io = expected_io(name);
        let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
        let mask = exp["attention_mask"].to_dtype(DType::U32).unwrap();
        let logits = model
            .forward(&ids, Some(&mask), Pass::eval(&[&adapter]))
            .unwrap();
        let theirs = &io["peft_logits_rust_adapter"];
        // Row 1 is padded after 7 tokens.
        for (row, len) in [(0, 10), (1, 7)] {
            let a = logits.get(row).unwrap().narrow(0, 0, len).unwrap();
            let b = theirs.get(row).unwrap().narrow(0, 0, len).unwrap();
            let d = max_abs_diff(&a, &b);
            assert!(d < LOGIT_ATOL, "{name} ({kernels}): max |diff| {d}");
        }
        // and the adapter round-trips: config and factors survive load(save(x)).
        let original = seeded_adapter(name, &model);
        assert_eq!(adapter.config, original.config, "{name}");
        for ((m1, v1), (m2, v2)) in adapter.named_vars().iter().zip(original.named_vars()) {
            assert_eq!(m1, &m2);
            assert_eq!(max_abs_diff(v1.as_tensor(), v2.as_tensor()), 0.0, "{m1}");
        }
    }
}

/// A copy of the PEFT-made tiny-mistral adapter with `edit` applied to its config.
fn edited_adapter(edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>)) -> String {
    let src = fixture("models/tiny-mistral/adapter");
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    edit(json.as_object_mut().unwrap());
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::to_string(&json).unwrap(),
    )
    .unwrap();
    dir.display().to_string()
}

fn refusal(edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>)) -> String {
    let model = model("tiny-mistral");
    let dir = edited_adapter(edit);
    let err = match load_adapter(&dir, &model.config, &Device::Cpu) {
        Ok(_) => panic!("adapter should be refused"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("adapter_config.json"), "names the file: {err}");
    let _ = std::fs::remove_dir_all(&dir);
    err
}

#[test]
fn dora_is_refused() {
    let err = refusal(|c| {
        c.insert("use_dora".into(), true.into());
    });
    assert!(err.contains("use_dora") && err.contains("DoRA"), "{err}");
}

#[test]
fn modules_to_save_is_refused() {
    let err = refusal(|c| {
        c.insert("modules_to_save".into(), serde_json::json!(["lm_head"]));
    });
    assert!(err.contains("modules_to_save"), "{err}");
}

#[test]
fn biases_are_refused() {
    let err = refusal(|c| {
        c.insert("bias".into(), "lora_only".into());
    });
    assert!(err.contains("`bias`") && err.contains("lora_only"), "{err}");
    let err = refusal(|c| {
        c.insert("lora_bias".into(), true.into());
    });
    assert!(err.contains("lora_bias"), "{err}");
}

#[test]
fn other_peft_types_are_refused() {
    for kind in ["IA3", "PREFIX_TUNING", "LOHA"] {
        let err = refusal(|c| {
            c.insert("peft_type".into(), kind.into());
        });
        assert!(
            err.contains("peft_type") && err.contains(kind) && err.contains("LORA"),
            "{err}"
        );
    }
}

#[test]
fn per_module_ranks_are_refused() {
    let err = refusal(|c| {
        c.insert("rank_pattern".into(), serde_json::json!({"q_proj": 8}));
    });
    assert!(err.contains("rank_pattern"), "{err}");
}

#[test]
fn other_unrepresentable_options_are_refused() {
    for (key, value) in [
        ("layer_replication", serde_json::json!([[0, 2], [1, 2]])),
        ("alora_invocation_tokens", serde_json::json!([5, 6])),
        (
            "target_parameters",
            serde_json::json!(["mlp.experts.gate_up_proj"]),
        ),
        ("trainable_token_indices", serde_json::json!([3, 4])),
        ("use_qalora", serde_json::json!(true)),
    ] {
        let err = refusal(|c| {
            c.insert(key.into(), value.clone());
        });
        assert!(err.contains(key), "{err}");
    }
    // PEFT writes these as null / false / empty: still accepted.
    let model = model("tiny-mistral");
    let dir = edited_adapter(|c| {
        c.insert("layer_replication".into(), serde_json::Value::Null);
        c.insert("trainable_token_indices".into(), serde_json::Value::Null);
        c.insert("use_qalora".into(), false.into());
    });
    load_adapter(&dir, &model.config, &Device::Cpu).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn extra_tensors_are_refused() {
    let model = model("tiny-mistral");
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("models/tiny-mistral/adapter");
    std::fs::copy(
        src.join("adapter_config.json"),
        dir.path().join("adapter_config.json"),
    )
    .unwrap();
    let mut tensors =
        candle_core::safetensors::load(src.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    tensors.insert(
        "base_model.model.lm_head.weight".into(),
        Tensor::zeros((96, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, dir.path().join("adapter_model.safetensors")).unwrap();
    let err = match load_adapter(
        &dir.path().display().to_string(),
        &model.config,
        &Device::Cpu,
    ) {
        Ok(_) => panic!("should be refused"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("lm_head") && err.contains("adapter_model.safetensors"),
        "{err}"
    );
}

#[test]
fn missing_adapter_files_are_named() {
    let model = model("tiny-mistral");
    let dir = tempfile::tempdir().unwrap();
    let err = match load_adapter(
        &dir.path().display().to_string(),
        &model.config,
        &Device::Cpu,
    ) {
        Ok(_) => panic!("should fail"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("adapter_config.json"), "{err}");
}
