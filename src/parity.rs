//! The reference checks as a command (`lora-dpo parity`), for a machine that has the binary but
//! not the test suite: a GPU. Each check runs on the chosen device, dtype and kernels against the
//! fixtures the Python stack wrote (`tests/fixtures`, from `scripts/make_*fixtures.py`), with the
//! tolerances of the CI tests in f32 and of the bf16 tests in bf16:
//! - logits against transformers, with and without a PEFT adapter (tiny Mistral, tiny Llama);
//! - the NLL's LoRA gradients against PyTorch;
//! - TRL's sigmoid DPO loss, metrics and LoRA gradients (tiny Llama, five pairs).

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

use crate::adapter::load_adapter;
use crate::data::{load_chat_tokenizer, load_dpo, DataConfig};
use crate::model::{load_model_with, Adapter, LoadOptions, Model, Pass};
use crate::ops::Kernels;
use crate::train::dpo::{DpoLoss, LossType};
use crate::train::logprobs::{masked_mean_nll, next_token_logprobs};
use crate::train::preference::DpoObjective;
use crate::train::trainer::{AdapterStack, Gradients, MetricSums, Objective};

/// One comparison: what was measured, against which bound.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    /// `max_abs`, `rel_l2`, `rel` (smaller is better) or `cosine` (larger is better).
    pub measure: &'static str,
    pub value: f64,
    pub tolerance: f64,
    pub pass: bool,
}

impl Check {
    fn new(name: String, measure: &'static str, value: f64, tolerance: f64) -> Self {
        let pass = match measure {
            "cosine" => value >= tolerance,
            _ => value <= tolerance,
        } && value.is_finite();
        Self {
            name,
            measure,
            value,
            tolerance,
            pass,
        }
    }
}

/// The tolerances of one dtype.
struct Tolerances {
    /// Logits: max |Δ| in f32; relative L2 in bf16/f16.
    logits: (&'static str, f64),
    /// LoRA gradients: relative L2 in f32; cosine in bf16/f16.
    grads: (&'static str, f64),
    /// Losses and metrics, relative (sizes below 10 counted as 10, as the tests do).
    scalars: f64,
}

fn tolerances(dtype: DType) -> Tolerances {
    match dtype {
        DType::F32 | DType::F64 => Tolerances {
            logits: ("max_abs", 1e-4),
            grads: ("rel_l2", 1e-3),
            scalars: 1e-4,
        },
        _ => Tolerances {
            // Measured on CPU: 0.9e-2 to 1.7e-2 (small logits of random tiny models).
            logits: ("rel_l2", 3e-2),
            grads: ("cosine", 0.99),
            scalars: 2e-2,
        },
    }
}

/// Where and how the checks run.
struct Setup<'a> {
    fixtures: &'a Path,
    device: &'a Device,
    dtype: DType,
    kernels: Kernels,
    tol: Tolerances,
}

/// Every check on `device` in `dtype` with `kernels`, from the fixtures under `fixtures`.
pub fn run(fixtures: &Path, device: &Device, dtype: DType, kernels: Kernels) -> Result<Vec<Check>> {
    let setup = Setup {
        fixtures,
        device,
        dtype,
        kernels,
        tol: tolerances(dtype),
    };
    let mut checks = Vec::new();
    for name in ["tiny-mistral", "tiny-llama"] {
        model_checks(&setup, name, &mut checks).with_context(|| format!("checks of {name}"))?;
    }
    dpo_checks(&setup, &mut checks).context("DPO checks")?;
    Ok(checks)
}

impl Setup<'_> {
    /// A fixture model and its PEFT adapter.
    fn load(&self, name: &str) -> Result<(Model, Adapter)> {
        let dir = self.fixtures.join("models").join(name);
        let options = LoadOptions::new(self.dtype).with_kernels(self.kernels);
        let model = load_model_with(&dir.display().to_string(), &options, self.device)?;
        let adapter = load_adapter(
            &dir.join("adapter").display().to_string(),
            &model.config,
            self.device,
        )?;
        Ok((model, adapter))
    }
}

fn cpu_f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)
}

/// The measure `kind` of `ours` against `theirs` (both moved to the host in f32).
fn measure(kind: &str, ours: &Tensor, theirs: &Tensor) -> Result<f64> {
    let (a, b) = (cpu_f32(ours)?, cpu_f32(theirs)?);
    let sum = |t: Tensor| -> Result<f64> { Ok(t.sum_all()?.to_scalar::<f32>()? as f64) };
    Ok(match kind {
        "max_abs" => (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()? as f64,
        "rel_l2" => (sum((&a - &b)?.sqr()?)? / sum(b.sqr()?)?).sqrt(),
        _ => sum((&a * &b)?)? / (sum(a.sqr()?)? * sum(b.sqr()?)?).sqrt(),
    })
}

/// The worst of `values` for the measure `kind` (the smallest cosine, the largest error).
fn worst_of(kind: &str, values: impl Iterator<Item = Result<f64>>) -> Result<f64> {
    let mut worst: Option<f64> = None;
    for v in values {
        let v = v?;
        worst = Some(match (worst, kind) {
            (None, _) => v,
            (Some(w), "cosine") => w.min(v),
            (Some(w), _) => w.max(v),
        });
    }
    worst.context("nothing to compare")
}

fn model_checks(setup: &Setup, name: &str, checks: &mut Vec<Check>) -> Result<()> {
    let (fixtures, device, tol) = (setup.fixtures, setup.device, &setup.tol);
    let (model, adapter) = setup.load(name)?;
    let exp = candle_core::safetensors::load(
        fixtures.join(format!("models/{name}/expected.safetensors")),
        device,
    )?;
    let ids = exp["input_ids"].to_dtype(DType::U32)?;
    let mask = exp["attention_mask"].to_dtype(DType::U32)?;
    // Row 1 is padded after 7 tokens: compare real positions only.
    let real = |t: &Tensor| -> Result<Tensor> {
        Ok(Tensor::cat(&[t.get(0)?, t.get(1)?.narrow(0, 0, 7)?], 0)?)
    };
    for (adapters, key) in [(vec![], "logits_base"), (vec![&adapter], "logits_adapter")] {
        let logits = model.forward(&ids, Some(&mask), Pass::eval(&adapters))?;
        let value = measure(tol.logits.0, &real(&logits)?, &real(&exp[key])?)?;
        checks.push(Check::new(
            format!("{name} {key} vs transformers"),
            tol.logits.0,
            value,
            tol.logits.1,
        ));
    }
    let targets = mask.narrow(1, 1, mask.dim(1)? - 1)?;
    let grads = nll_gradients(&model, &adapter, &ids, &mask, &targets)?;
    let worst = worst_of(
        tol.grads.0,
        adapter.named_vars().into_iter().map(|(module, var)| {
            let theirs = &exp[&format!("grad.base_model.model.{module}.weight")];
            measure(tol.grads.0, &grads[&var.id()], theirs)
        }),
    )?;
    checks.push(Check::new(
        format!("{name} LoRA gradients vs PyTorch (worst factor)"),
        tol.grads.0,
        worst,
        tol.grads.1,
    ));
    Ok(())
}

/// The gradients of the mean NLL of the real next tokens for every LoRA factor, through the
/// layer tape the trainer uses.
fn nll_gradients(
    model: &Model,
    adapter: &Adapter,
    ids: &Tensor,
    mask: &Tensor,
    targets: &Tensor,
) -> Result<HashMap<candle_core::TensorId, Tensor>> {
    let inputs = model.inputs(ids, Some(mask))?;
    let (hidden, tape) = model.hidden_states_layered(inputs, &[adapter], 0, false)?;
    let logps = next_token_logprobs(&model.logits(&hidden)?, ids)?;
    let loss = masked_mean_nll(&logps, targets)?;
    let store = loss.backward()?;
    let mut grads = HashMap::new();
    tape.backward(&store, &mut |(a, da, b, db)| {
        grads.insert(a.id(), da);
        grads.insert(b.id(), db);
        Ok(())
    })?;
    Ok(grads)
}

fn dpo_checks(setup: &Setup, checks: &mut Vec<Check>) -> Result<()> {
    let (fixtures, device, tol) = (setup.fixtures, setup.device, &setup.tol);
    let (model, adapter) = setup.load("tiny-llama")?;
    let tok = load_chat_tokenizer(&fixtures.join("models/tiny-llama"))?;
    let data = load_dpo(
        &fixtures.join("train/prefs.jsonl"),
        None,
        &tok,
        &DataConfig::default(),
    )?;
    let exp =
        candle_core::safetensors::load(fixtures.join("train/expected_dpo.safetensors"), device)?;
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        fixtures.join("train/expected_dpo.json"),
    )?)?;
    let case = &cases["sigmoid"];
    let rows: Vec<usize> = (0..data.examples.len()).collect();
    let mut objective = DpoObjective {
        train: data,
        eval: None,
        loss: DpoLoss::single(
            LossType::Sigmoid,
            case["config"]["beta"].as_f64().unwrap_or(0.1),
        ),
        eval_batch_size: 8,
        train_reference: None,
        eval_reference: None,
        gradient_checkpointing: false,
    };
    let stack = AdapterStack {
        frozen: vec![],
        trainable: &adapter,
        initial: None,
    };
    let mut metrics = MetricSums::default();
    let micro = objective.loss(&model, &stack, &rows, 1.0, 0, &mut metrics)?;
    let loss = crate::ops::host::scalar(&micro.loss)? as f64;
    let expected = case["metrics"].as_object().context("fixture metrics")?;
    // As the CI tests: relative, with sizes below 10 compared as if 10 (metrics near 0).
    let rel = |ours: f64, theirs: f64| (ours - theirs).abs() / theirs.abs().max(10.0);
    let mut worst: f64 = rel(loss, expected["loss"].as_f64().unwrap_or(f64::NAN));
    for (k, v) in expected {
        if k != "loss" {
            let ours = metrics.mean(k).unwrap_or(f64::NAN);
            worst = worst.max(rel(ours, v.as_f64().unwrap_or(f64::NAN)));
        }
    }
    checks.push(Check::new(
        "DPO sigmoid loss and metrics vs TRL (worst)".into(),
        "rel",
        worst,
        tol.scalars,
    ));
    let mut grads = Gradients::new(adapter.vars());
    micro.backward(&mut grads)?;
    let worst = worst_of(
        tol.grads.0,
        adapter.named_vars().into_iter().map(|(module, var)| {
            let key = format!("sigmoid.grad.base_model.model.{module}.weight");
            let ours = grads.get(&var).context("a factor without gradient")?;
            measure(tol.grads.0, ours, &exp[&key])
        }),
    )?;
    checks.push(Check::new(
        "DPO LoRA gradients vs TRL (worst factor)".into(),
        tol.grads.0,
        worst,
        tol.grads.1,
    ));
    Ok(())
}
