//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use lora_dpo::model::{load_model_with, LoadOptions, Model};
use lora_dpo::ops::Kernels;
use std::collections::HashMap;
use std::path::PathBuf;

/// Both implementations of the ops: the numerics tests run on each.
pub const PATHS: [Kernels; 2] = [Kernels::Auto, Kernels::Generic];

/// The tiny random model of each family (scripts/make_fixtures.py): Mistral (GQA, head_dim ≠
/// hidden/heads, sliding window 4), Llama (tied embeddings, Llama-3 rope scaling), Qwen2 (q/k/v
/// biases, tied embeddings, sliding window on layer 1 only), Qwen3 (per-head q/k norms),
/// Ministral (sliding window on layer 0 only).
pub const MODELS: [&str; 5] = [
    "tiny-mistral",
    "tiny-llama",
    "tiny-qwen2",
    "tiny-qwen3",
    "tiny-ministral",
];

/// A model whose passes run `kernels`.
pub fn load_on(spec: &str, dtype: DType, kernels: Kernels) -> Model {
    load_model_with(
        spec,
        &LoadOptions::new(dtype).with_kernels(kernels),
        &Device::Cpu,
    )
    .unwrap()
}

pub fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

pub fn fixture_str(path: &str) -> String {
    fixture(path).display().to_string()
}

/// The reference tensors a fixture script wrote.
pub fn expected(model: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture(&format!("models/{model}/expected.safetensors")),
        &Device::Cpu,
    )
    .expect("fixture expected.safetensors")
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Deterministic N(0, 1) data in f64 (candle's CPU generator cannot be seeded).
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| rand_distr::StandardNormal.sample(&mut rng))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let diff = (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt();
    let norm = b
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt();
    diff / norm
}

/// A training pass over `ids` with `adapters` (the unfrozen one trained), the loss `loss_of`
/// computes from the final hidden states, and the gradient of every trained LoRA factor,
/// through the layer tape the trainer uses.
pub fn tape_gradients(
    model: &lora_dpo::model::Model,
    ids: &Tensor,
    mask: Option<&Tensor>,
    adapters: &[&lora_dpo::model::Adapter],
    checkpointing: bool,
    loss_of: impl FnOnce(&Tensor) -> Tensor,
) -> (Tensor, HashMap<candle_core::TensorId, Tensor>) {
    let inputs = model.inputs(ids, mask).unwrap();
    let (hidden, tape) = model
        .hidden_states_layered(inputs, adapters, 0, checkpointing)
        .unwrap();
    let loss = loss_of(&hidden);
    let store = loss.backward().unwrap();
    let mut grads = HashMap::new();
    tape.backward(&store, &mut |(a, da, b, db)| {
        grads.insert(a.id(), da);
        grads.insert(b.id(), db);
        Ok(())
    })
    .unwrap();
    (loss, grads)
}

/// `eval` of the fixture pairs (tests/fixtures/train/prefs.jsonl) with TRL's sigmoid loss at beta
/// 0.1 and per-row log-probs, in batches of 2.
pub fn eval_fixture_pairs(
    model: &Model,
    adapter: &lora_dpo::model::Adapter,
    tokenizer: &lora_dpo::data::ChatTokenizer,
) -> serde_json::Value {
    use lora_dpo::train::dpo::{DpoLoss, LossType};
    use lora_dpo::train::evaluate::{evaluate, EvalRequest};
    let request = EvalRequest {
        model,
        adapter: Some(adapter),
        tokenizer,
        data_config: &lora_dpo::data::DataConfig::default(),
        loss: DpoLoss::single(LossType::Sigmoid, 0.1).into(),
        batch_size: 2,
        per_row: true,
    };
    let data = lora_dpo::data::read_dataset(&fixture("train/prefs.jsonl"), None).unwrap();
    evaluate(&request, data).unwrap()
}

/// Runs the built binary with `args`: its exit code, stdout and stderr; never a panic.
pub fn lora_dpo(args: &[&str]) -> (i32, String, String) {
    lora_dpo_with_env(args, &[])
}

/// [`lora_dpo`] with these environment variables set.
pub fn lora_dpo_with_env(args: &[&str], env: &[(&str, &std::path::Path)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lora-dpo"));
    cmd.args(args).env_remove("LORA_DPO_FAULT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        stderr,
    )
}

/// Options of a library run as the tests start it: no bar; `interrupted` as if Ctrl-C came
/// before the first step.
pub fn run_options(resume: bool, interrupted: bool) -> lora_dpo::train::run::RunOptions {
    lora_dpo::train::run::RunOptions {
        resume,
        show_progress: false,
        interrupted: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(interrupted)),
        ..Default::default()
    }
}

/// The `[model]` and `[lora]` sections of a run config on the tiny Llama (CPU, LoRA r 4, α 8),
/// which the run tests' configs start with.
pub fn tiny_llama_sections() -> String {
    format!(
        "[model]\nname_or_path = \"{}\"\ndevice = \"cpu\"\n[lora]\nr = 4\nlora_alpha = 8\n",
        fixture_str("models/tiny-llama")
    )
}
