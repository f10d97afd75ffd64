//! `merge`: adapters folded into the base, written as a Hugging Face folder. Checked against
//! PEFT's `merge_and_unload` (fixture from scripts/make_io_fixtures.py) and against our own
//! base+adapter forward.

use crate::common;
use common::lora_dpo;

use candle_core::{DType, Device, Tensor};
use common::{expected, fixture, fixture_str, max_abs_diff};
use lora_dpo::adapter::{load_adapter, merge, MergeOptions};
use lora_dpo::model::{load_config, load_model, Adapter, ModelConfig, Pass};
use lora_dpo::source::Source;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::MODELS;

fn expected_io(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture(&format!("models/{name}/expected-io.safetensors")),
        &Device::Cpu,
    )
    .expect("fixture expected-io.safetensors (scripts/make_io_fixtures.py)")
}

fn config(name: &str) -> ModelConfig {
    load_config(&Source::parse(&fixture_str(&format!("models/{name}"))).unwrap()).unwrap()
}

fn adapter(name: &str, which: &str) -> Adapter {
    load_adapter(
        &fixture_str(&format!("models/{name}/{which}")),
        &config(name),
        &Device::Cpu,
    )
    .unwrap()
}

/// Every tensor of a written folder, by name.
fn tensors_of(dir: &Path) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "safetensors") {
            out.extend(candle_core::safetensors::load(&p, &Device::Cpu).unwrap());
        }
    }
    out
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn options(dtype: DType, max_shard_size: u64) -> MergeOptions {
    MergeOptions {
        dtype: Some(dtype),
        max_shard_size,
        ..MergeOptions::default()
    }
}

/// Our merged tensors (f32) against PEFT's, within 1e-5 of the tensor's largest magnitude.
fn compare_with_peft(name: &str, ours: &HashMap<String, Tensor>, prefix: &str) {
    let io = expected_io(name);
    let expected_names = config(name).expected_tensors();
    assert_eq!(ours.len(), expected_names.len(), "{name}: tensor count");
    for (tensor, _) in expected_names {
        let theirs = &io[&format!("{prefix}.{tensor}")];
        let mine = ours[&tensor].to_dtype(DType::F32).unwrap();
        let rel = max_abs_diff(&mine, theirs) / max_abs(theirs);
        assert!(rel < 1e-5, "{name} {tensor}: relative difference {rel}");
    }
}

#[test]
fn merged_weights_match_peft_merge_and_unload() {
    for name in MODELS {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("merged");
        let a = adapter(name, "adapter");
        let report = merge(
            &fixture_str(&format!("models/{name}")),
            &[a],
            &out,
            &options(DType::F32, 40_000),
        )
        .unwrap();
        assert_eq!(report.merged_tensors, 14, "{name}");
        compare_with_peft(name, &tensors_of(&out), "merged");
    }
}

#[test]
fn two_adapters_merge_in_order() {
    for name in MODELS {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("merged");
        let adapters = [adapter(name, "adapter"), adapter(name, "rust-adapter")];
        // Blocks of 3 rows: every tensor is merged and written piecewise.
        let opts = MergeOptions {
            block_bytes: 3 * 48 * 4,
            ..MergeOptions::default()
        };
        merge(
            &fixture_str(&format!("models/{name}")),
            &adapters,
            &out,
            &opts,
        )
        .unwrap();
        compare_with_peft(name, &tensors_of(&out), "merged2");
    }
}

#[test]
fn merged_folder_gives_base_plus_adapter_logits() {
    for name in MODELS {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("merged");
        let exp = expected(name);
        let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
        let mask = exp["attention_mask"].to_dtype(DType::U32).unwrap();
        let base = load_model(
            &fixture_str(&format!("models/{name}")),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let a = adapter(name, "adapter");
        let reference = base.forward(&ids, Some(&mask), Pass::eval(&[&a])).unwrap();
        merge(
            &fixture_str(&format!("models/{name}")),
            &[a],
            &out,
            &options(DType::F32, 30_000),
        )
        .unwrap();
        let merged = load_model(&out.display().to_string(), DType::F32, &Device::Cpu).unwrap();
        let logits = merged.forward(&ids, Some(&mask), Pass::eval(&[])).unwrap();
        for (row, len) in [(0, 10), (1, 7)] {
            let x = logits.get(row).unwrap().narrow(0, 0, len).unwrap();
            let y = reference.get(row).unwrap().narrow(0, 0, len).unwrap();
            let rel = max_abs_diff(&x, &y) / max_abs(&y);
            assert!(rel < 1e-4, "{name}: relative logit difference {rel}");
        }
    }
}

#[test]
fn folder_layout_shards_index_and_copied_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let report = merge(
        &fixture_str("models/tiny-mistral"),
        &[adapter("tiny-mistral", "adapter")],
        &out,
        &options(DType::BF16, 20_000),
    )
    .unwrap();
    let n = report.shards.len();
    assert!(n > 2, "{n} shards");
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), config("tiny-mistral").expected_tensors().len());
    let mut total = 0u64;
    for (k, (file, bytes)) in report.shards.iter().enumerate() {
        assert_eq!(file, &format!("model-{:05}-of-{n:05}.safetensors", k + 1));
        // The vocabulary-sized tensors (96·32·2 = 6144 bytes) fit, so every shard does too.
        assert!(*bytes <= 20_000, "{file}: {bytes} bytes");
        let on_disk = std::fs::metadata(out.join(file)).unwrap().len();
        assert!(on_disk > *bytes, "{file}");
        total += bytes;
        let st = candle_core::safetensors::load(out.join(file), &Device::Cpu).unwrap();
        for (name, t) in &st {
            assert_eq!(t.dtype(), DType::BF16, "{name}");
            assert_eq!(map[name], serde_json::json!(file), "{name}");
        }
    }
    assert_eq!(index["metadata"]["total_size"], serde_json::json!(total));
    assert_eq!(total, report.total_size);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    assert!(out.join("generation_config.json").is_file());
    // transformers-style metadata, and nothing left behind.
    let bytes = std::fs::read(out.join(&report.shards[0].0)).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(header_len % 8, 0);
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert_eq!(header["__metadata__"]["format"], "pt");
    // The output lock's file stays beside the folder by design (src/lock.rs).
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".merged.lock")
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("merged")]);
    // bf16 weights still give nearly the f32 model's logits.
    let model = load_model(&out.display().to_string(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config.num_hidden_layers, 2);
}

#[test]
fn conversion_without_adapter_copies_weights_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("converted");
    let report = merge(
        &fixture_str("models/tiny-llama-sharded"),
        &[],
        &out,
        &MergeOptions::default(),
    )
    .unwrap();
    assert_eq!(report.merged_tensors, 0);
    assert_eq!(report.shards.len(), 1);
    assert!(out.join("model.safetensors").is_file());
    assert!(!out.join("model.safetensors.index.json").exists());
    let ours = tensors_of(&out);
    let base = candle_core::safetensors::load(
        fixture("models/tiny-llama/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    // Tied embeddings: no lm_head is written.
    assert!(!ours.contains_key("lm_head.weight"));
    for (name, t) in &base {
        assert_eq!(max_abs_diff(&ours[name], t), 0.0, "{name}");
    }
}

#[test]
fn refuses_to_clobber_a_non_empty_folder() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("keep.txt"), "precious").unwrap();
    let err = merge(
        &fixture_str("models/tiny-mistral"),
        &[],
        tmp.path(),
        &MergeOptions::default(),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("not empty") && msg.contains("--overwrite"),
        "{msg}"
    );
    assert!(tmp.path().join("keep.txt").is_file());
    let opts = MergeOptions {
        overwrite: true,
        ..MergeOptions::default()
    };
    merge(&fixture_str("models/tiny-mistral"), &[], tmp.path(), &opts).unwrap();
    assert!(!tmp.path().join("keep.txt").exists());
    assert!(tmp.path().join("model.safetensors").is_file());
}

#[test]
fn cli_merges_several_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let (code, stdout, stderr) = lora_dpo(&[
        "merge",
        "--model",
        &fixture_str("models/tiny-mistral-sharded"),
        "--adapter",
        &fixture_str("models/tiny-mistral/adapter"),
        "--adapter",
        &fixture_str("models/tiny-mistral/rust-adapter"),
        "--out",
        out.to_str().unwrap(),
        "--dtype",
        "f32",
        "--max-shard-size",
        "40KB",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("from 2 adapter(s)"), "{stdout}");
    compare_with_peft("tiny-mistral", &tensors_of(&out), "merged2");
}

#[test]
fn cli_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("model.gguf");
    std::fs::write(&gguf, b"GGUF").unwrap();
    let out = tmp.path().join("out");
    let (code, _, err) = lora_dpo(&[
        "merge",
        "--model",
        gguf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("model.gguf") && err.contains("GGUF"), "{err}");
    // A Llama adapter does not fit the Mistral base.
    let (code, _, err) = lora_dpo(&[
        "merge",
        "--model",
        &fixture_str("models/tiny-mistral"),
        "--adapter",
        &fixture_str("models/tiny-llama/adapter"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("tiny-llama/adapter") && err.contains("do not fit"),
        "{err}"
    );
    let (code, _, err) = lora_dpo(&[
        "merge",
        "--model",
        &fixture_str("models/tiny-mistral"),
        "--out",
        out.to_str().unwrap(),
        "--dtype",
        "int8",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("int8"), "{err}");
    let (code, _, err) = lora_dpo(&[
        "merge",
        "--model",
        &fixture_str("models/tiny-mistral"),
        "--out",
        out.to_str().unwrap(),
        "--max-shard-size",
        "5 parsecs",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--max-shard-size"), "{err}");
    assert!(!out.exists());
}

#[test]
fn cli_takes_hub_repo_ids_from_the_local_cache() {
    // The cache layout hf-hub and huggingface_hub share: refs/main names a snapshot folder.
    let cache = tempfile::tempdir().unwrap();
    for (repo, from, files) in [
        (
            "models--tiny--mistral",
            "models/tiny-mistral",
            &["config.json", "model.safetensors", "generation_config.json"][..],
        ),
        (
            "models--tiny--mistral-lora",
            "models/tiny-mistral/adapter",
            &["adapter_config.json", "adapter_model.safetensors"][..],
        ),
    ] {
        let dir = cache.path().join(repo);
        let snapshot = dir.join("snapshots/0123abcd");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(dir.join("refs")).unwrap();
        std::fs::write(dir.join("refs/main"), "0123abcd").unwrap();
        for f in files {
            std::fs::copy(fixture(&format!("{from}/{f}")), snapshot.join(f)).unwrap();
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let status = Command::new(env!("CARGO_BIN_EXE_lora-dpo"))
        .args([
            "merge",
            "--model",
            "tiny/mistral",
            "--adapter",
            "tiny/mistral-lora",
        ])
        .arg("--out")
        .arg(&out)
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(status.status.success(), "{:?}", status);
    assert!(out.join("generation_config.json").is_file());
    compare_with_peft("tiny-mistral", &tensors_of(&out), "merged");
}

/// tiny-gguf (scripts/make_gguf_fixtures.py): the same Llama as a Hugging Face folder and as
/// GGUF files converted like llama.cpp does.
fn gguf_logits(dir: &Path) -> Tensor {
    let exp = candle_core::safetensors::load(
        fixture("models/tiny-gguf/expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let model = load_model(&dir.display().to_string(), DType::F32, &Device::Cpu).unwrap();
    model.forward(&ids, None, Pass::eval(&[])).unwrap()
}

#[test]
fn gguf_bases_convert_to_hugging_face_folders() {
    let exp = candle_core::safetensors::load(
        fixture("models/tiny-gguf/expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // F32 GGUF: exactly the original Hugging Face weights (q/k rows un-permuted).
    let out = tmp.path().join("from-f32");
    let report = merge(
        &fixture_str("models/tiny-gguf/model-f32.gguf"),
        &[],
        &out,
        &MergeOptions::default(),
    )
    .unwrap();
    assert_eq!(report.dtype, DType::F32);
    let hf =
        candle_core::safetensors::load(fixture("models/tiny-gguf/model.safetensors"), &Device::Cpu)
            .unwrap();
    let ours = tensors_of(&out);
    assert_eq!(ours.len(), hf.len());
    for (name, t) in &hf {
        assert_eq!(max_abs_diff(&ours[name], t), 0.0, "{name}");
    }
    let ours_config = load_config(&Source::parse(&out.display().to_string()).unwrap()).unwrap();
    let hf_config = load_config(&Source::parse(&fixture_str("models/tiny-gguf")).unwrap()).unwrap();
    assert_eq!(ours_config, hf_config);
    assert!(out.join("generation_config.json").is_file());
    // Q8_0 GGUF: dequantized, the logits transformers gets from the same file.
    let out = tmp.path().join("from-q8");
    merge(
        &fixture_str("models/tiny-gguf/model-q8_0.gguf"),
        &[],
        &out,
        &options(DType::F32, 20_000),
    )
    .unwrap();
    let d = max_abs_diff(&gguf_logits(&out), &exp["logits_q8_0_gguf"]);
    assert!(d < 1e-4, "q8_0: max |diff| {d}");
}

#[test]
fn adapters_merge_into_a_gguf_base_as_into_its_hugging_face_twin() {
    let config = config_of("models/tiny-gguf");
    let lora = lora_dpo::model::LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        ..Default::default()
    };
    let adapter = Adapter::init(&config, lora, 3, &Device::Cpu).unwrap();
    for (module, var) in adapter.named_vars() {
        if module.ends_with("lora_B") {
            let b = Tensor::randn(0f32, 0.3, var.shape(), &Device::Cpu).unwrap();
            var.set(&b).unwrap();
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("gguf"), tmp.path().join("hf"));
    let adapters = [adapter];
    merge(
        &fixture_str("models/tiny-gguf/model-f32.gguf"),
        &adapters,
        &a,
        &MergeOptions::default(),
    )
    .unwrap();
    merge(
        &fixture_str("models/tiny-gguf"),
        &adapters,
        &b,
        &MergeOptions::default(),
    )
    .unwrap();
    let (ta, tb) = (tensors_of(&a), tensors_of(&b));
    assert_eq!(ta.len(), tb.len());
    for (name, t) in &tb {
        assert!(max_abs_diff(&ta[name], t) < 1e-6, "{name}");
    }
}

fn config_of(path: &str) -> ModelConfig {
    load_config(&Source::parse(&fixture_str(path)).unwrap()).unwrap()
}

/// A Qwen2 and a Qwen3 GGUF base merged into a Hugging Face folder: the config.json written
/// from the GGUF's metadata reads back as the same model (family, biases, q/k norms, windows).
#[test]
fn qwen_gguf_bases_merge_into_folders_that_read_back_the_same() {
    for name in ["tiny-qwen2", "tiny-qwen3"] {
        let gguf = fixture_str(&format!("models/tiny-gguf/{name}-f32.gguf"));
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("merged");
        merge(&gguf, &[], &out, &options(DType::F32, 40_000)).unwrap();
        let from_gguf = config_of(&gguf);
        let written = config_of(out.to_str().unwrap());
        assert_eq!(written, from_gguf, "{name}");
        let model = load_model(out.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(model.config.architecture, from_gguf.architecture);
    }
}
