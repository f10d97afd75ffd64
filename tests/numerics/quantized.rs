//! Quantized frozen projections (`quantize = "q8_0" | "q4k" | ...`), on both paths: the forward
//! against the dequantized-f32 forward, the backward against the dense op, whole models against
//! their dequantized twins, and the block-size error.
//!
//! Tolerances (measured on this machine, stated with margin): products of more than 8 rows
//! dequantize the weight tile by tile and multiply in f32, so they equal `x @ dequantize(W).T` to
//! f32 rounding (1e-5 relative); products of up to 8 rows (generation) run candle's quantized
//! kernels, which also round the *activations* (to Q8_0 / Q8_K blocks): ~0.3% relative for Q8_0
//! and Q4K alike. The input gradient is the dense op's f32 product, to 1e-5 relative.

use crate::common;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor, Var};
use common::{fixture_str, max_abs_diff, rel_l2, tape_gradients, PATHS};
use lora_dpo::model::{load_model, load_model_with, Adapter, LoadOptions, LoraConfig, Pass};
use lora_dpo::ops::{self, Kernels, QuantizedWeight};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// Linear outputs: ‖y_q − y_deq‖ / ‖y_deq‖, dequantizing products (more than 8 rows).
const LINEAR_RTOL: f32 = 1e-5;
/// The same for candle's quantized kernels (up to 8 rows).
const FUSED_RTOL: f32 = 1e-2;
/// dX through the quantized op vs through the dense op on the dequantized weight.
const GRAD_RTOL: f32 = 1e-5;
/// Whole-model logits, quantized vs the dequantized twin: ‖Δ‖ / ‖logits‖. The test's products
/// have 16 rows, so they dequantize: measured 0 (Q8_0 and Q4K), the same f32 products.
const LOGIT_RTOL: f32 = 1e-5;
/// Whole-model LoRA gradients, quantized vs the dequantized twin, worst factor: measured 0.
const MODEL_GRAD_RTOL: f32 = 1e-5;

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn seeded(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn quantized(w: &Tensor, t: GgmlDType) -> Arc<QuantizedWeight> {
    Arc::new(QuantizedWeight::quantize(w, t, &Device::Cpu).unwrap())
}

#[test]
fn quantized_linear_forward_is_close_to_the_dequantized_forward() {
    // 8448 rows of 256: two tiles (8192 + 256 rows).
    let w = seeded(&[8448, 256], 1, 1.0);
    for t in [
        GgmlDType::Q8_0,
        GgmlDType::Q4_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ] {
        let q = quantized(&w, t);
        let deq = q.dequantize(&Device::Cpu).unwrap();
        for (rows, tol) in [(10, LINEAR_RTOL), (3, FUSED_RTOL)] {
            let x = seeded(&[rows, 256], 2, 1.0);
            let reference = ops::matmul_t(&x, &deq).unwrap();
            for k in PATHS {
                let ours = ops::quantized_linear(k, &x, &q).unwrap();
                assert_eq!(ours.dims(), &[rows, 8448]);
                let r = rel_l2(&ours, &reference);
                // How far the quantization itself moves the output, for scale.
                let r_orig = rel_l2(&ours, &ops::matmul_t(&x, &w).unwrap());
                println!(
                    "{t:?} {rows} rows ({k}): rel. error vs dequantized {r:.2e}, vs original \
                     weight {r_orig:.2e}"
                );
                assert!(r < tol, "{t:?} {rows} rows ({k}): relative error {r}");
            }
        }
    }
}

#[test]
fn quantized_linear_keeps_bf16_activations_in_bf16() {
    let w = seeded(&[64, 256], 3, 1.0);
    let x = seeded(&[3, 256], 4, 1.0);
    let q = quantized(&w, GgmlDType::Q8_0);
    for x in [x.clone(), x.repeat((4, 1)).unwrap()] {
        let y = ops::quantized_linear(Kernels::Auto, &x.to_dtype(DType::BF16).unwrap(), &q);
        let y = y.unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        let y32 = ops::quantized_linear(Kernels::Auto, &x, &q).unwrap();
        assert!(rel_l2(&y.to_dtype(DType::F32).unwrap(), &y32) < 1e-2);
    }
}

#[test]
fn gradient_through_a_quantized_linear_equals_the_dequantized_one() {
    let w = seeded(&[96, 256], 5, 1.0);
    let upstream = seeded(&[2, 4, 96], 6, 1.0);
    for (t, k) in [GgmlDType::Q8_0, GgmlDType::Q4K]
        .into_iter()
        .flat_map(|t| PATHS.map(|k| (t, k)))
    {
        let q = quantized(&w, t);
        let deq = q.dequantize(&Device::Cpu).unwrap();
        let grad_of = |quant: bool| {
            let x = Var::from_tensor(&seeded(&[2, 4, 256], 7, 1.0)).unwrap();
            let y = if quant {
                ops::quantized_linear(k, x.as_tensor(), &q).unwrap()
            } else {
                ops::frozen_linear(x.as_tensor(), &deq).unwrap()
            };
            let loss = (y * &upstream).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            grads.get(x.as_tensor()).unwrap().clone()
        };
        let (gq, gd) = (grad_of(true), grad_of(false));
        let r = rel_l2(&gq, &gd);
        assert!(r < GRAD_RTOL, "{t:?} ({k}): dX relative error {r}");
        // And it is the analytic gradient upstream @ W_deq.
        let analytic = upstream
            .reshape((8, 96))
            .unwrap()
            .matmul(&deq)
            .unwrap()
            .reshape((2, 4, 256))
            .unwrap();
        assert!(max_abs_diff(&gq, &analytic) < 1e-5);
    }
}

/// A random Llama whose every projection has input dims that are multiples of 256 (k-quants),
/// written as safetensors into `dir`; returns its input ids.
fn write_model(dir: &std::path::Path, weights: &[(String, Tensor)]) {
    let config = r#"{"architectures":["LlamaForCausalLM"],"vocab_size":48,"hidden_size":256,
        "intermediate_size":512,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"rms_norm_eps":1e-5,"rope_theta":10000.0,
        "max_position_embeddings":32,"tie_word_embeddings":false}"#;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    let map: std::collections::HashMap<String, Tensor> = weights.iter().cloned().collect();
    candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
}

fn random_weights() -> Vec<(String, Tensor)> {
    let (h, i, kv, v) = (256, 512, 128, 48);
    let mut out = vec![
        (
            "model.embed_tokens.weight".to_string(),
            seeded(&[v, h], 10, 1.0),
        ),
        (
            "model.norm.weight".to_string(),
            (seeded(&[h], 11, 0.2) + 1.0).unwrap(),
        ),
        ("lm_head.weight".to_string(), seeded(&[v, h], 12, 0.1)),
    ];
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        let s = 100 * (l as u64 + 1);
        // Scales keep the activations O(1), as trained models do.
        for (name, shape, seed) in [
            ("self_attn.q_proj", [h, h], 1),
            ("self_attn.k_proj", [kv, h], 2),
            ("self_attn.v_proj", [kv, h], 3),
            ("self_attn.o_proj", [h, h], 4),
            ("mlp.gate_proj", [i, h], 5),
            ("mlp.up_proj", [i, h], 6),
            ("mlp.down_proj", [h, i], 7),
        ] {
            let scale = 1.7 / (shape[1] as f32).sqrt();
            out.push((
                format!("{p}.{name}.weight"),
                seeded(&shape, s + seed, scale),
            ));
        }
        for (name, seed) in [("input_layernorm", 8), ("post_attention_layernorm", 9)] {
            out.push((
                format!("{p}.{name}.weight"),
                (seeded(&[h], s + seed, 0.2) + 1.0).unwrap(),
            ));
        }
    }
    out
}

/// The same weights with every projection replaced by its quantized-then-dequantized self.
fn dequantized_twin(weights: &[(String, Tensor)], t: GgmlDType) -> Vec<(String, Tensor)> {
    weights
        .iter()
        .map(|(n, w)| {
            if n.contains("_proj") {
                let deq = QTensor::quantize(w, t)
                    .unwrap()
                    .dequantize(&Device::Cpu)
                    .unwrap();
                (n.clone(), deq)
            } else {
                (n.clone(), w.clone())
            }
        })
        .collect()
}

fn seeded_adapter(model: &lora_dpo::model::Model, seed: u64) -> Adapter {
    let adapter = Adapter::init(
        &model.config,
        LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            ..LoraConfig::default()
        },
        seed,
        &Device::Cpu,
    )
    .unwrap();
    for (k, (name, var)) in adapter.named_vars().into_iter().enumerate() {
        if name.ends_with("lora_B") {
            // Non-zero B, so the adapter does something.
            let b = seeded(var.dims(), seed + k as u64, 0.3);
            var.set(&b).unwrap();
        }
    }
    adapter
}

#[test]
fn quantized_models_match_their_dequantized_twins() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = random_weights();
    let orig = tmp.path().join("orig");
    write_model(&orig, &weights);
    let ids = Tensor::new(
        &[[1u32, 7, 22, 3, 40, 5, 9, 17], [2, 30, 11, 47, 0, 8, 6, 12]],
        &Device::Cpu,
    )
    .unwrap();
    let dense = load_model(orig.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    for (t, rtol) in [(GgmlDType::Q8_0, LOGIT_RTOL), (GgmlDType::Q4K, LOGIT_RTOL)] {
        let twin_dir = tmp.path().join(format!("{t:?}"));
        write_model(&twin_dir, &dequantized_twin(&weights, t));
        let twin = load_model(twin_dir.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
        let model = load_model_with(
            orig.to_str().unwrap(),
            &LoadOptions::quantized(DType::F32, Some(t)),
            &Device::Cpu,
        )
        .unwrap();
        for l in 0..2 {
            for p in lora_dpo::model::Projection::ALL {
                let w = model.projection_weight(l, p).unwrap();
                assert_eq!(w.ggml_dtype(), Some(t), "layer {l} projection {p}");
            }
        }
        let adapter = seeded_adapter(&model, 3);
        for adapters in [vec![], vec![&adapter]] {
            let ours = model.forward(&ids, None, Pass::eval(&adapters)).unwrap();
            let reference = twin.forward(&ids, None, Pass::eval(&adapters)).unwrap();
            let d = max_abs_diff(&ours, &reference);
            let r = rel_l2(&ours, &reference);
            let unquantized = dense.forward(&ids, None, Pass::eval(&adapters)).unwrap();
            let r_orig = rel_l2(&ours, &unquantized);
            let scale = max_abs(&reference);
            println!(
                "{t:?} adapters={}: vs dequantized twin max |diff| {d:.2e} (max |logit| \
                 {scale:.2}), rel. L2 {r:.2e}; vs unquantized rel. L2 {r_orig:.2e}",
                adapters.len()
            );
            assert!(r < rtol, "{t:?}: relative L2 logit error {r}");
        }
        // LoRA gradients through the quantized base: every factor, close to the twin's.
        let grads_of = |m: &lora_dpo::model::Model| {
            tape_gradients(m, &ids, None, &[&adapter], false, |h| {
                let logits = m.logits(h).unwrap();
                let logp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1).unwrap();
                logp.mean_all().unwrap().neg().unwrap()
            })
            .1
        };
        let gq = grads_of(&model);
        let gd = grads_of(&twin);
        let mut worst = 0f32;
        for (name, var) in adapter.named_vars() {
            let a = &gq[&var.id()];
            let b = &gd[&var.id()];
            let r = rel_l2(a, b);
            worst = worst.max(r);
            assert!(
                r < MODEL_GRAD_RTOL,
                "{t:?} {name}: gradient relative error {r}"
            );
        }
        println!("{t:?}: worst LoRA gradient rel. L2 vs dequantized twin {worst:.2e}");
    }
}

#[test]
fn block_size_mismatch_is_a_clear_error() {
    // tiny-llama's down_proj has 40 inputs: no GGML block fits.
    let err = load_model_with(
        &fixture_str("models/tiny-llama"),
        &LoadOptions::quantized(DType::F32, Some(GgmlDType::Q8_0)),
        &Device::Cpu,
    )
    .err()
    .expect("q8_0 on a 40-wide weight must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("model.layers.0.mlp.down_proj.weight")
            && msg.contains("q8_0")
            && msg.contains("32"),
        "{msg}"
    );
    // tiny-gguf's HF folder: every input dim is 32 or 64 — fine for q8_0, not for the k-quants.
    let ok = load_model_with(
        &fixture_str("models/tiny-gguf"),
        &LoadOptions::quantized(DType::F32, Some(GgmlDType::Q8_0)),
        &Device::Cpu,
    );
    assert!(ok.is_ok(), "{:#}", ok.err().unwrap());
    let err = load_model_with(
        &fixture_str("models/tiny-gguf"),
        &LoadOptions::quantized(DType::F32, Some(GgmlDType::Q4K)),
        &Device::Cpu,
    )
    .err()
    .expect("q4k on a 32-wide weight must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("q_proj") && msg.contains("q4k") && msg.contains("256"),
        "{msg}"
    );
}

#[test]
fn models_with_quantized_weights_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<lora_dpo::model::Model>();
    check::<lora_dpo::model::FrozenWeight>();
}
