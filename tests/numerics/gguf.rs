//! GGUF bases against the Hugging Face folder they were converted from
//! (fixtures from scripts/make_gguf_fixtures.py, converted like llama.cpp does: q/k rows
//! permuted for `llama`, not for `qwen2`/`qwen3`): the config, the logits, and the portability of
//! adapters between the two.

use crate::common;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use common::{expected, fixture, fixture_str, max_abs_diff, rel_l2, tape_gradients};
use lora_dpo::model::gguf::GgufFile;
use lora_dpo::model::{
    load_config, load_model, load_model_with, Adapter, LoadOptions, LoraConfig, Model, Pass,
};
use lora_dpo::source::Source;
use rand::{Rng, SeedableRng};

/// f32 GGUF vs HF folder: the same numbers in a different order.
const F32_ATOL: f32 = 1e-4;
/// Q8_0 GGUF vs transformers' dequantized load of the same file (candle's quantized matmul also
/// rounds the activations to Q8_0 blocks), and vs the unquantized HF model, with and without a
/// large random adapter. The logits here are at most ~1.7 in magnitude; measured: 2.0e-2
/// (vs dequantized), 3.5e-2 (vs HF), 8.4e-2 (vs HF, with the adapter).
const Q8_VS_DEQUANT_ATOL: f32 = 4e-2;
const Q8_VS_HF_ATOL: f32 = 1.2e-1;

fn gguf(name: &str) -> String {
    fixture_str(&format!("models/tiny-gguf/{name}"))
}

fn ids() -> Tensor {
    expected("tiny-gguf")["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
}

fn logits(model: &Model, adapters: &[&Adapter]) -> Tensor {
    model.forward(&ids(), None, Pass::eval(adapters)).unwrap()
}

/// A seeded adapter on every projection with non-zero B.
fn seeded_adapter(model: &Model) -> Adapter {
    let adapter = Adapter::init(
        &model.config,
        LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            ..LoraConfig::default()
        },
        17,
        &Device::Cpu,
    )
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    for (name, var) in adapter.named_vars() {
        if name.ends_with("lora_B") {
            let v: Vec<f32> = (0..var.elem_count())
                .map(|_| rng.random::<f32>() - 0.5)
                .collect();
            var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    adapter
}

#[test]
fn config_from_gguf_metadata_equals_config_json() {
    let hf = load_config(&Source::parse(&fixture_str("models/tiny-gguf")).unwrap()).unwrap();
    for file in ["model-f32.gguf", "model-q8_0.gguf"] {
        let from_gguf = load_config(&Source::parse(&gguf(file)).unwrap()).unwrap();
        assert_eq!(from_gguf, hf, "{file}");
    }
}

#[test]
fn f32_gguf_gives_the_hf_logits() {
    let exp = expected("tiny-gguf");
    let model = load_model(&gguf("model-f32.gguf"), DType::F32, &Device::Cpu).unwrap();
    let ours = logits(&model, &[]);
    let d = max_abs_diff(&ours, &exp["logits"]);
    assert!(d < F32_ATOL, "vs transformers (HF folder): {d}");
    let hf = load_model(&fixture_str("models/tiny-gguf"), DType::F32, &Device::Cpu).unwrap();
    let d = max_abs_diff(&ours, &logits(&hf, &[]));
    assert!(d < F32_ATOL, "vs our HF load: {d}");
}

#[test]
fn q8_0_gguf_stays_quantized_and_is_close() {
    let exp = expected("tiny-gguf");
    let model = load_model(&gguf("model-q8_0.gguf"), DType::F32, &Device::Cpu).unwrap();
    for l in 0..model.config.num_hidden_layers {
        for p in lora_dpo::model::Projection::ALL {
            let w = model.projection_weight(l, p).unwrap();
            assert_eq!(w.ggml_dtype(), Some(GgmlDType::Q8_0), "layer {l} proj {p}");
        }
    }
    let ours = logits(&model, &[]);
    let d_deq = max_abs_diff(&ours, &exp["logits_q8_0_gguf"]);
    let d_hf = max_abs_diff(&ours, &exp["logits"]);
    println!("q8_0 GGUF: max |diff| vs dequantized {d_deq:.2e}, vs HF f32 {d_hf:.2e}");
    assert!(
        d_deq < Q8_VS_DEQUANT_ATOL,
        "vs transformers' dequantized load: {d_deq}"
    );
    assert!(d_hf < Q8_VS_HF_ATOL, "vs the HF model: {d_hf}");
}

#[test]
fn adapters_are_portable_between_gguf_and_hf() {
    let hf = load_model(&fixture_str("models/tiny-gguf"), DType::F32, &Device::Cpu).unwrap();
    let f32_gguf = load_model(&gguf("model-f32.gguf"), DType::F32, &Device::Cpu).unwrap();
    let q8_gguf = load_model(&gguf("model-q8_0.gguf"), DType::F32, &Device::Cpu).unwrap();
    // Made on the GGUF model, applied to the HF folder.
    let adapter = seeded_adapter(&f32_gguf);
    let on_gguf = logits(&f32_gguf, &[&adapter]);
    let on_hf = logits(&hf, &[&adapter]);
    // The adapter must change the logits, or the test proves nothing.
    assert!(max_abs_diff(&on_hf, &logits(&hf, &[])) > 0.1);
    let d = max_abs_diff(&on_gguf, &on_hf);
    assert!(d < F32_ATOL, "f32 GGUF + adapter vs HF + adapter: {d}");
    // Through the quantized GGUF: the adapter's effect is the same up to quantization noise.
    let on_q8 = logits(&q8_gguf, &[&adapter]);
    let d = max_abs_diff(&on_q8, &on_hf);
    let r = rel_l2(&on_q8, &on_hf);
    let scale = on_hf
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    println!("q8_0 GGUF + adapter vs HF + adapter: max |diff| {d:.2e}, rel. L2 {r:.2e}, max |logit| {scale:.2}");
    let base_r = rel_l2(&logits(&q8_gguf, &[]), &logits(&hf, &[]));
    println!("q8_0 GGUF vs HF, no adapter: rel. L2 {base_r:.2e}");
    assert!(
        d < Q8_VS_HF_ATOL,
        "q8_0 GGUF + adapter vs HF + adapter: {d}"
    );
}

#[test]
fn quantize_option_applies_to_dense_gguf_tensors() {
    let model = load_model_with(
        &gguf("model-f32.gguf"),
        &LoadOptions::quantized(DType::F32, Some(GgmlDType::Q8_0)),
        &Device::Cpu,
    )
    .unwrap();
    let w = model
        .projection_weight(0, lora_dpo::model::Projection::Q)
        .unwrap();
    assert_eq!(w.ggml_dtype(), Some(GgmlDType::Q8_0));
    // Without it, F32 tensors stay dense.
    let model = load_model(&gguf("model-f32.gguf"), DType::F32, &Device::Cpu).unwrap();
    assert!(!model
        .projection_weight(0, lora_dpo::model::Projection::Q)
        .unwrap()
        .is_quantized());
}

#[test]
fn inspect_reports_gguf_types() {
    let file = GgufFile::open(&fixture("models/tiny-gguf/model-q8_0.gguf")).unwrap();
    assert_eq!(file.dtype_summary(), "GGUF Q8_0 x16, F32 x5");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lora-dpo"))
        .args(["inspect", "--model", &gguf("model-q8_0.gguf"), "--r", "4"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("LlamaForCausalLM") && stdout.contains("GGUF Q8_0 x16, F32 x5"),
        "{stdout}"
    );
}

#[test]
fn gguf_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("broken.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let err = load_model(bad.to_str().unwrap(), DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("broken.gguf"), "{msg}");
}

/// tests/fixtures/models/tiny-llama (tied embeddings, Llama 3.1 RoPE scaling stored as
/// llama.cpp's `rope_freqs` tensor) as an F32 GGUF, against transformers + PEFT's logits of the
/// HF folder, with the PEFT adapter trained there applied to the GGUF base.
#[test]
fn tied_llama3_gguf_matches_transformers_with_a_peft_adapter() {
    let model = load_model(&gguf("tiny-llama-f32.gguf"), DType::F32, &Device::Cpu).unwrap();
    let hf_config =
        load_config(&Source::parse(&fixture_str("models/tiny-llama")).unwrap()).unwrap();
    assert!(model.config.tie_word_embeddings);
    // The rope_freqs divisors are recognised as the Llama 3 scaling they came from, so the whole
    // config equals config.json's.
    assert_eq!(model.config, hf_config);
    let exp = expected("tiny-llama");
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = exp["attention_mask"].to_dtype(DType::U32).unwrap();
    let adapter = lora_dpo::adapter::load_adapter(
        &fixture_str("models/tiny-llama/adapter"),
        &model.config,
        &Device::Cpu,
    )
    .unwrap();
    for (adapters, key) in [(vec![], "logits_base"), (vec![&adapter], "logits_adapter")] {
        let ours = model
            .forward(&ids, Some(&mask), Pass::eval(&adapters))
            .unwrap();
        // Row 1 is padded after 7 tokens.
        for (row, len) in [(0, 10), (1, 7)] {
            let a = ours.get(row).unwrap().narrow(0, 0, len).unwrap();
            let b = exp[key].get(row).unwrap().narrow(0, 0, len).unwrap();
            let d = max_abs_diff(&a, &b);
            assert!(d < F32_ATOL, "{key} row {row}: {d}");
        }
    }
}

/// The Qwen fixtures as llama.cpp's `qwen2` and `qwen3` GGUFs (tensor names from gguf-py's map,
/// rows not permuted): the config equals config.json's but for the sliding window llama.cpp
/// does not have, and the logits equal transformers' (Qwen2 with its window off), with PEFT's
/// adapter too where the reference has it. f32: 1e-4 absolute.
#[test]
fn qwen2_and_qwen3_ggufs_match_transformers() {
    for (name, reference) in [
        (
            "tiny-qwen2",
            "models/tiny-gguf/expected-qwen2-gguf.safetensors",
        ),
        ("tiny-qwen3", "models/tiny-qwen3/expected.safetensors"),
    ] {
        let model =
            load_model(&gguf(&format!("{name}-f32.gguf")), DType::F32, &Device::Cpu).unwrap();
        let mut hf_config =
            load_config(&Source::parse(&fixture_str(&format!("models/{name}"))).unwrap()).unwrap();
        hf_config.layer_windows = vec![None; hf_config.num_hidden_layers];
        assert_eq!(model.config, hf_config, "{name}");
        let exp = expected(name);
        let reference = candle_core::safetensors::load(fixture(reference), &Device::Cpu).unwrap();
        let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
        let mask = exp["attention_mask"].to_dtype(DType::U32).unwrap();
        let adapter = lora_dpo::adapter::load_adapter(
            &fixture_str(&format!("models/{name}/adapter")),
            &model.config,
            &Device::Cpu,
        )
        .unwrap();
        for (adapters, key) in [(vec![], "logits_base"), (vec![&adapter], "logits_adapter")] {
            let Some(want) = reference.get(key) else {
                continue;
            };
            let ours = model
                .forward(&ids, Some(&mask), Pass::eval(&adapters))
                .unwrap();
            for (row, len) in [(0, 10), (1, 7)] {
                let a = ours.get(row).unwrap().narrow(0, 0, len).unwrap();
                let b = want.get(row).unwrap().narrow(0, 0, len).unwrap();
                let d = max_abs_diff(&a, &b);
                assert!(d < F32_ATOL, "{name} {key} row {row}: {d}");
            }
        }
    }
}

/// The demo base (scripts/fetch_demo_model.sh): SmolLM2-135M-Instruct, Q4_1 GGUF. Not run by
/// default (98 MB, not committed): `cargo test --test gguf -- --ignored`.
#[test]
#[ignore = "needs models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch_demo_model.sh)"]
fn demo_model_smollm2_q4_1() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let model = load_model(path.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config.num_hidden_layers, 30);
    assert!(model.config.tie_word_embeddings);
    assert_eq!(
        model
            .projection_weight(0, lora_dpo::model::Projection::Q)
            .unwrap()
            .ggml_dtype(),
        Some(GgmlDType::Q4_1)
    );
    // "The capital of France is" in SmolLM2's tokenizer; the next token is " Paris" (7042),
    // as transformers (dequantized load of the same file) also predicts.
    let ids = Tensor::new(&[[504u32, 3575, 282, 4649, 314]], &Device::Cpu).unwrap();
    let adapter = seeded_adapter(&model);
    let adapters = [&adapter];
    let base = model.forward(&ids, None, Pass::eval(&[])).unwrap();
    let next = base
        .get(0)
        .unwrap()
        .get(4)
        .unwrap()
        .argmax(0)
        .unwrap()
        .to_scalar::<u32>()
        .unwrap();
    assert_eq!(next, 7042);
    // Every LoRA factor gets a finite, non-zero gradient through the Q4_1 projections.
    let t0 = std::time::Instant::now();
    let (_, grads) = tape_gradients(&model, &ids, None, &adapters, false, |h| {
        let logits = model.logits(h).unwrap();
        let logp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1).unwrap();
        logp.mean_all().unwrap()
    });
    println!("forward + backward: {:.2?}", t0.elapsed());
    for (name, var) in adapter.named_vars() {
        let g = &grads[&var.id()];
        let n = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(n.is_finite() && n > 0.0, "{name}: gradient norm² {n}");
    }
}
