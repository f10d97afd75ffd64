//! Mixed precision as PyTorch autocast + PEFT do it (`dtype = "bf16"`): frozen weights and
//! activations in bf16, LoRA factors, their gradients and AdamW in f32, softmaxes, log-probs and
//! losses in f32. Against the same run in f32, on the fixture models:
//! - per-row summed log-probs (eval, policy and reference) within 1e-2 relative (measured 3.7e-3);
//! - the LoRA gradients of the NLL: cosine ≥ 0.99 with the f32 ones, per factor (measured ≥ 0.9992);
//! - learning: a DPO run on the training pairs passes the threshold the f32 run passes
//!   (held-in reward accuracy 1.0, loss below 0.6 from ln 2 = 0.693).
//!
//! bf16 keeps 8 bits of mantissa (~0.4% per rounding); the tolerances leave room for rounding
//! accumulated over the layers.

use crate::common;

use candle_core::{DType, Device, Tensor};
use common::{eval_fixture_pairs, expected, fixture, fixture_str, load_on, tape_gradients};
use lora_dpo::adapter::load_adapter;
use lora_dpo::config::LoadedConfig;
use lora_dpo::data::load_chat_tokenizer;
use lora_dpo::ops::Kernels;
use lora_dpo::train::logprobs::{masked_mean_nll, next_token_logprobs};
use lora_dpo::train::run::{run_dpo, RunOptions, Session};

const LOGP_RTOL: f64 = 1e-2;
const GRAD_COSINE: f32 = 0.99;

fn per_row(dtype: DType) -> Vec<serde_json::Value> {
    let dir = fixture_str("models/tiny-llama");
    let model = load_on(&dir, dtype, Kernels::Auto);
    let adapter = load_adapter(&format!("{dir}/adapter"), &model.config, &Device::Cpu).unwrap();
    let tok = load_chat_tokenizer(&fixture("models/tiny-llama")).unwrap();
    eval_fixture_pairs(&model, &adapter, &tok)["per_row"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn bf16_log_prob_sums_are_within_tolerance_of_f32() {
    let (full, half) = (per_row(DType::F32), per_row(DType::BF16));
    let mut worst = 0f64;
    for (i, (a, b)) in full.iter().zip(&half).enumerate() {
        for key in [
            "chosen_logps",
            "rejected_logps",
            "ref_chosen_logps",
            "ref_rejected_logps",
        ] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            let rel = (x - y).abs() / x.abs().max(1e-6);
            worst = worst.max(rel);
            assert!(rel < LOGP_RTOL, "row {i} {key}: f32 {x} vs bf16 {y}");
        }
    }
    println!("bf16 per-row log-prob sums: worst relative error {worst:.2e}");
}

fn cosine(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (
        a.to_dtype(DType::F32).unwrap().flatten_all().unwrap(),
        b.to_dtype(DType::F32).unwrap().flatten_all().unwrap(),
    );
    let dot = |x: &Tensor, y: &Tensor| {
        (x * y)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    dot(&a, &b) / (dot(&a, &a).sqrt() * dot(&b, &b).sqrt())
}

#[test]
fn bf16_lora_gradients_point_where_the_f32_ones_do() {
    for name in ["tiny-mistral", "tiny-llama"] {
        let exp = expected(name);
        let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
        let mask = exp["attention_mask"].to_dtype(DType::U32).unwrap();
        let targets = mask.narrow(1, 1, mask.dim(1).unwrap() - 1).unwrap();
        let dir = fixture_str(&format!("models/{name}"));
        let grads = |dtype: DType| {
            let model = load_on(&dir, dtype, Kernels::Auto);
            let adapter =
                load_adapter(&format!("{dir}/adapter"), &model.config, &Device::Cpu).unwrap();
            let (_, g) = tape_gradients(&model, &ids, Some(&mask), &[&adapter], false, |h| {
                let logps = next_token_logprobs(&model.logits(h).unwrap(), &ids).unwrap();
                masked_mean_nll(&logps, &targets).unwrap()
            });
            adapter
                .named_vars()
                .into_iter()
                .map(|(m, v)| (m, g[&v.id()].clone()))
                .collect::<Vec<_>>()
        };
        let (full, half) = (grads(DType::F32), grads(DType::BF16));
        let mut worst = 1f32;
        for ((module, a), (_, b)) in full.iter().zip(&half) {
            let c = cosine(a, b);
            worst = worst.min(c);
            assert!(c >= GRAD_COSINE, "{name} {module}: cosine {c}");
        }
        println!("{name}: worst per-factor cosine of bf16 vs f32 LoRA gradients {worst:.4}");
    }
}

/// A DPO run on the 5 fixture pairs; the held-in (reward accuracy, loss) after it.
fn learns(dtype: &str) -> (f64, f64) {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[model]
name_or_path = "{model}"
device = "cpu"
dtype = "{dtype}"
[lora]
r = 8
lora_alpha = 16
[dpo]
train_file = "{data}"
eval_file = "{data}"
learning_rate = 1e-2
max_steps = 20
per_device_train_batch_size = 5
lr_scheduler_type = "constant"
logging_steps = 5
save_steps = 0
[output]
dir = "{out}"
"#,
        model = fixture_str("models/tiny-llama"),
        data = fixture_str("train/prefs.jsonl"),
        out = tmp.path().display()
    );
    let cfg = LoadedConfig::from_str(&text, &[]).unwrap();
    let session = Session::open(&cfg).unwrap();
    let opts = RunOptions {
        show_progress: false,
        ..RunOptions::default()
    };
    run_dpo(&session, &cfg, &opts, None).unwrap();
    let metrics = std::fs::read_to_string(tmp.path().join("dpo/metrics.jsonl")).unwrap();
    let last = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|v| v.get("eval_loss").is_some())
        .expect("an evaluation at the end");
    (
        last["eval_rewards/accuracies"].as_f64().unwrap(),
        last["eval_loss"].as_f64().unwrap(),
    )
}

#[test]
fn a_bf16_dpo_run_learns_as_the_f32_run_does() {
    for dtype in ["f32", "bf16"] {
        let (accuracy, loss) = learns(dtype);
        println!("{dtype}: held-in reward accuracy {accuracy}, loss {loss:.4}");
        assert!(
            accuracy >= 1.0 && loss < 0.6,
            "{dtype}: accuracy {accuracy}, loss {loss}"
        );
    }
}
