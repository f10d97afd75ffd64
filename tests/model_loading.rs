//! Loading paths other than an f32 folder: half-precision weights and hub-cache repo ids.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{expected, fixture, fixture_str, max_abs_diff};
use lora_dpo::model::{load_model, Pass};

fn logits(spec: &str, dtype: DType) -> Tensor {
    let exp = expected("tiny-mistral");
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = exp["attention_mask"].to_dtype(DType::U32).unwrap();
    let model = load_model(spec, dtype, &Device::Cpu).unwrap();
    model
        .forward(&ids, Some(&mask), Pass::eval(&[]))
        .unwrap()
        .get(0)
        .unwrap()
}

#[test]
fn half_precision_weights_stay_close_to_f32() {
    let reference = expected("tiny-mistral")["logits_base"].get(0).unwrap();
    // Rounding the weights to 8 (bf16) or 11 (f16) mantissa bits moves these logits (|x| < 4) by
    // at most a few hundredths.
    for (dtype, tol) in [(DType::BF16, 0.1), (DType::F16, 0.02)] {
        let ours = logits(&fixture_str("models/tiny-mistral"), dtype);
        let d = max_abs_diff(&ours, &reference);
        assert!(d < tol, "{dtype:?}: max |diff| {d}");
    }
}

#[test]
fn a_repo_id_resolves_in_the_hub_cache_without_network() {
    // The cache layout hf-hub and huggingface_hub share: refs/main names a snapshot folder.
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--tiny--mistral");
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(
            fixture(&format!("models/tiny-mistral/{f}")),
            snapshot.join(f),
        )
        .unwrap();
    }
    std::env::set_var("HF_HUB_CACHE", cache.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let reference = logits(&fixture_str("models/tiny-mistral"), DType::F32);
    let ours = logits("tiny/mistral", DType::F32);
    assert_eq!(max_abs_diff(&ours, &reference), 0.0);
    let err = load_model("tiny/absent", DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("not in the local Hugging Face cache"),
        "{err:#}"
    );
}
