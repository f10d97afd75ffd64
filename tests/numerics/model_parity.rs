//! The decoder against transformers + PEFT (fixtures from scripts/make_fixtures.py), on both
//! paths (CPU kernels and generic): logits within 1e-4 absolute in f32, with and without the
//! adapter; LoRA gradients within 1e-3 relative (‖g − g_ref‖ / ‖g_ref‖ per tensor) of PyTorch's.

use crate::common;

use candle_core::{DType, Device, Tensor};
use common::{expected, fixture_str, load_on, max_abs_diff, rel_l2, tape_gradients, PATHS};
use lora_dpo::adapter::load_adapter;
use lora_dpo::model::{load_model, Adapter, Model, Pass};
use lora_dpo::ops::Kernels;
use lora_dpo::train::logprobs::{masked_mean_nll, next_token_logprobs};

const LOGIT_ATOL: f32 = 1e-4;
const GRAD_RTOL: f32 = 1e-3;

fn load(name: &str, kernels: Kernels) -> (Model, Adapter) {
    load_as(name, DType::F32, kernels)
}

fn load_as(name: &str, dtype: DType, kernels: Kernels) -> (Model, Adapter) {
    let model = load_on(&fixture_str(&format!("models/{name}")), dtype, kernels);
    let adapter = load_adapter(
        &fixture_str(&format!("models/{name}/adapter")),
        &model.config,
        &Device::Cpu,
    )
    .unwrap();
    (model, adapter)
}

fn inputs(exp: &std::collections::HashMap<String, Tensor>) -> (Tensor, Tensor) {
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = exp["attention_mask"].to_dtype(DType::U32).unwrap();
    (ids, mask)
}

/// Logits at real (unpadded) positions only: row 1 is padded after 7 tokens.
fn real_positions(logits: &Tensor) -> Vec<Tensor> {
    vec![
        logits.get(0).unwrap(),
        logits.get(1).unwrap().narrow(0, 0, 7).unwrap(),
    ]
}

fn check_logits(name: &str) {
    for kernels in PATHS {
        check_logits_on(name, kernels);
    }
}

fn check_logits_on(name: &str, kernels: Kernels) {
    let (model, adapter) = load(name, kernels);
    let exp = expected(name);
    let (ids, mask) = inputs(&exp);
    for (adapters, key) in [(vec![], "logits_base"), (vec![&adapter], "logits_adapter")] {
        let logits = model
            .forward(&ids, Some(&mask), Pass::eval(&adapters))
            .unwrap();
        for (ours, theirs) in real_positions(&logits)
            .iter()
            .zip(real_positions(&exp[key]))
        {
            let d = max_abs_diff(ours, &theirs);
            assert!(d < LOGIT_ATOL, "{name} {key} ({kernels}): max |diff| {d}");
        }
    }
}

/// The fixtures' loss (mean NLL of the real next tokens) and the LoRA gradients, through the
/// layer tape the trainer uses.
fn nll_gradients(
    model: &Model,
    adapter: &Adapter,
    exp: &std::collections::HashMap<String, Tensor>,
) -> (
    Tensor,
    std::collections::HashMap<candle_core::TensorId, Tensor>,
) {
    let (ids, mask) = inputs(exp);
    let target_mask = mask.narrow(1, 1, mask.dim(1).unwrap() - 1).unwrap();
    tape_gradients(model, &ids, Some(&mask), &[adapter], false, |h| {
        let logits = model.logits(h).unwrap();
        let logps = next_token_logprobs(&logits, &ids).unwrap();
        masked_mean_nll(&logps, &target_mask).unwrap()
    })
}

fn check_gradients(name: &str) {
    for kernels in PATHS {
        check_gradients_on(name, kernels);
    }
}

fn check_gradients_on(name: &str, kernels: Kernels) {
    let (model, adapter) = load(name, kernels);
    let exp = expected(name);
    let (loss, grads) = nll_gradients(&model, &adapter, &exp);
    let loss_ref = exp["loss"].to_vec1::<f32>().unwrap()[0];
    let loss_ours = loss.to_scalar::<f32>().unwrap();
    assert!(
        (loss_ours - loss_ref).abs() < 1e-5,
        "{name} ({kernels}) loss {loss_ours} vs {loss_ref}"
    );
    let named = adapter.named_vars();
    assert_eq!(named.len(), 2 * 7 * 2);
    for (module, var) in named {
        let key = format!("grad.base_model.model.{module}.weight");
        let ours = grads
            .get(&var.id())
            .unwrap_or_else(|| panic!("{name} ({kernels}): no gradient for {module}"));
        let theirs = &exp[&key];
        let r = rel_l2(ours, theirs);
        assert!(
            r < GRAD_RTOL,
            "{name} {module} ({kernels}): relative error {r}"
        );
    }
}

#[test]
fn mistral_logits_match_transformers() {
    check_logits("tiny-mistral");
}

#[test]
fn llama_logits_match_transformers() {
    check_logits("tiny-llama");
}

#[test]
fn qwen2_logits_match_transformers() {
    check_logits("tiny-qwen2");
}

#[test]
fn qwen3_logits_match_transformers() {
    check_logits("tiny-qwen3");
}

#[test]
fn ministral_logits_match_transformers() {
    check_logits("tiny-ministral");
}

#[test]
fn mistral_lora_gradients_match_pytorch() {
    check_gradients("tiny-mistral");
}

#[test]
fn llama_lora_gradients_match_pytorch() {
    check_gradients("tiny-llama");
}

#[test]
fn qwen2_lora_gradients_match_pytorch() {
    check_gradients("tiny-qwen2");
}

#[test]
fn qwen3_lora_gradients_match_pytorch() {
    check_gradients("tiny-qwen3");
}

#[test]
fn ministral_lora_gradients_match_pytorch() {
    check_gradients("tiny-ministral");
}

#[test]
fn sharded_weights_give_the_same_logits() {
    for name in common::MODELS {
        let exp = expected(name);
        let (ids, mask) = inputs(&exp);
        let model = load_model(
            &fixture_str(&format!("models/{name}-sharded")),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let logits = model.forward(&ids, Some(&mask), Pass::eval(&[])).unwrap();
        for (ours, theirs) in real_positions(&logits)
            .iter()
            .zip(real_positions(&exp["logits_base"]))
        {
            assert!(max_abs_diff(ours, &theirs) < LOGIT_ATOL, "{name}-sharded");
        }
    }
}

#[test]
fn every_lora_factor_gets_a_finite_nonzero_gradient() {
    let (model, adapter) = load("tiny-mistral", Kernels::Auto);
    let exp = expected("tiny-mistral");
    let (ids, mask) = inputs(&exp);
    let (_, grads) = tape_gradients(&model, &ids, Some(&mask), &[&adapter], false, |h| {
        model.logits(h).unwrap().sum_all().unwrap()
    });
    for (module, var) in adapter.named_vars() {
        let g = &grads[&var.id()];
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm.is_finite() && norm > 0.0,
            "{module}: gradient norm² {norm}"
        );
    }
}

/// Mixed precision as autocast does it: bf16 weights and activations through the projections,
/// f32 for the LoRA factors, norms' statistics, softmaxes, log-probs and the loss. Against
/// PyTorch's f32 run: the loss within 1%, all LoRA gradients together within 5% relative L2 and
/// each factor within 10% (bf16 keeps 8 bits of mantissa, ~0.4% per rounding, accumulated over
/// the layers; the factors with the smallest gradients drift most).
#[test]
fn bf16_training_is_within_its_tolerance_of_f32() {
    for name in common::MODELS {
        let (model, adapter) = load_as(name, DType::BF16, Kernels::Auto);
        let exp = expected(name);
        let (loss, grads) = nll_gradients(&model, &adapter, &exp);
        let loss_ref = exp["loss"].to_vec1::<f32>().unwrap()[0];
        let loss_ours = loss
            .to_dtype(DType::F32)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let rel = ((loss_ours - loss_ref) / loss_ref).abs();
        assert!(
            rel < 1e-2,
            "{name}: bf16 loss {loss_ours} vs f32 {loss_ref}"
        );
        let (mut worst, mut diff2, mut ref2) = (0f32, 0f32, 0f32);
        for (module, var) in adapter.named_vars() {
            let theirs = &exp[&format!("grad.base_model.model.{module}.weight")];
            let ours = grads[&var.id()].to_dtype(DType::F32).unwrap();
            let r = rel_l2(&ours, theirs);
            worst = worst.max(r);
            assert!(r < 0.1, "{name} {module}: bf16 gradient relative error {r}");
            let sq = |t: Tensor| {
                t.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            diff2 += sq((&ours - theirs).unwrap());
            ref2 += sq(theirs.clone());
        }
        let overall = (diff2 / ref2).sqrt();
        assert!(
            overall < 5e-2,
            "{name}: bf16 gradients relative L2 {overall}"
        );
        println!(
            "{name}: bf16 loss rel. error {rel:.2e}, all LoRA gradients rel. L2 {overall:.2e}, \
             worst factor {worst:.2e}"
        );
    }
}

/// The quantity DPO compares, for every family: each row's summed next-token log-probs over its
/// real tokens, through the chunked LM head the preference objectives use, with the adapter,
/// against PEFT's within 1e-4 relative.
#[test]
fn per_row_logps_match_peft_for_every_family() {
    for (name, kernels) in common::MODELS.iter().flat_map(|&n| PATHS.map(|k| (n, k))) {
        let (model, adapter) = load(name, kernels);
        let exp = expected(name);
        let (ids, mask) = inputs(&exp);
        let hidden = model
            .hidden_states(&ids, Some(&mask), Pass::eval(&[&adapter]))
            .unwrap();
        let ours = model.head_logprobs(&hidden, &ids).unwrap().token_logps;
        let target_mask = mask.narrow(1, 1, ids.dim(1).unwrap() - 1).unwrap();
        let row_sums = |t: &Tensor| -> Vec<f32> {
            let masked = (t * target_mask.to_dtype(DType::F32).unwrap()).unwrap();
            masked.sum(1).unwrap().to_vec1().unwrap()
        };
        for (row, (a, b)) in row_sums(&ours)
            .into_iter()
            .zip(row_sums(&exp["token_logps_adapter"]))
            .enumerate()
        {
            let rel = (a - b).abs() / b.abs();
            assert!(rel < 1e-4, "{name} row {row} ({kernels}): {a} vs PEFT {b}");
        }
    }
}
