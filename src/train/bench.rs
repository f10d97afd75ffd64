//! `bench`: N training steps of a configured job, timed. Medians, not means: the first steps
//! (warm-up) and outliers do not move them.

use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

use super::metrics::peak_rss_mib;
use super::run::{run_dpo, run_orpo, run_sft, RunOptions, Session};
use super::trainer::StepTiming;
use crate::config::LoadedConfig;
use crate::data::Stage;

pub struct BenchRequest {
    pub stage: Stage,
    pub steps: usize,
    pub warmup: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs `warmup + steps` steps (no eval, no checkpoints, outputs in a temporary folder) and
/// summarises the last `steps`.
pub fn bench(cfg: &LoadedConfig, req: &BenchRequest) -> Result<Value> {
    if req.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let mut cfg = cfg.clone();
    let tmp = std::env::temp_dir().join(format!("lora-dpo-bench-{}", std::process::id()));
    cfg.run.output.dir = tmp.display().to_string();
    let section = match req.stage {
        Stage::Sft => cfg.run.sft.as_mut(),
        Stage::Dpo => cfg.run.dpo.as_mut(),
        Stage::Kto => cfg.run.kto.as_mut(),
        Stage::Orpo => cfg.run.orpo.as_mut(),
    };
    let Some(s) = section else {
        bail!("the config has no [{}] section", req.stage);
    };
    let checkpointing = s.gradient_checkpointing;
    s.max_steps = (req.warmup + req.steps) as i64;
    s.save_steps = 0;
    s.eval_file = None;
    s.logging_steps = usize::MAX;
    let session = Session::open(&cfg)?;
    let c = &session.model.config;
    let yardstick = Yardstick::new(session.model.device(), c.hidden_size, c.intermediate_size)?;
    // The machine's plain matmul rate is measured before the first step and after every step
    // (warm-up included): each step is compared with the machine's rate around it, on a shared
    // machine whose speed drifts by ±20% from one minute to the next.
    let before_first = yardstick.best_of(5)?;
    let timings = Arc::new(Mutex::new(Vec::<(StepTiming, f64)>::new()));
    let sink = timings.clone();
    let opts = RunOptions {
        show_progress: false,
        timings: Some(Arc::new(move |t| {
            let after = yardstick.best_of(5).unwrap_or(f64::NAN);
            sink.lock().expect("timings lock").push((t, after));
        })),
        ..RunOptions::default()
    };
    let result = match req.stage {
        Stage::Sft => run_sft(&session, &cfg, &opts).map(|_| ()),
        Stage::Dpo => run_dpo(&session, &cfg, &opts, None).map(|_| ()),
        Stage::Kto => super::kto_run::run_kto(&session, &cfg, &opts, None).map(|_| ()),
        Stage::Orpo => run_orpo(&session, &cfg, &opts, None).map(|_| ()),
    };
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    let all = timings.lock().expect("timings lock").clone();
    // The yardstick around step i: the mean of the measurements before and after it.
    let mut previous = before_first;
    let mut around = Vec::with_capacity(all.len());
    for (_, after) in &all {
        around.push(0.5 * (previous + after));
        previous = *after;
    }
    let best = (all.iter().map(|(_, y)| *y)).fold(before_first, f64::max);
    let kept: Vec<(StepTiming, f64)> = (all.into_iter().map(|(t, _)| t))
        .zip(around)
        .skip(req.warmup)
        .collect();
    let col = |f: fn(&StepTiming) -> f64| median(kept.iter().map(|(t, _)| f(t)).collect());
    let sec = col(|t| t.total);
    let tokens_per_sec = median(kept.iter().map(|(t, _)| t.tokens / t.total).collect());
    let work = MatmulWork::of(c, &cfg.run.lora.lora, checkpointing);
    let gflops = |flops: f64, secs: f64| flops / secs.max(1e-9) / 1e9;
    let forward = |t: &StepTiming| gflops(work.forward(t), t.forward);
    let backward = |t: &StepTiming| gflops(work.backward(t), t.backward);
    let fwd_rate = median(kept.iter().map(|(t, _)| forward(t)).collect());
    let bwd_rate = median(kept.iter().map(|(t, _)| backward(t)).collect());
    let fwd_eff = median(kept.iter().map(|(t, y)| forward(t) / y).collect());
    let bwd_eff = median(kept.iter().map(|(t, y)| backward(t) / y).collect());
    Ok(json!({
        "stage": req.stage.as_str(),
        "steps": kept.len(),
        "warmup": req.warmup,
        "device": format!("{:?}", session.model.device()),
        "sec_per_step_median": sec,
        "tokens_per_sec": tokens_per_sec,
        "tokens_per_step_median": col(|t| t.tokens),
        "token_passes_per_step_median": col(|t| t.token_passes),
        "peak_rss_mib": peak_rss_mib(),
        "breakdown_sec_median": {
            "data": col(|t| t.data),
            "reference": col(|t| t.reference),
            "forward": col(|t| t.forward),
            "backward": col(|t| t.backward),
            "optimizer": col(|t| t.optimizer),
        },
        "gradient_checkpointing": checkpointing,
        "matmul_gflops_median": median(kept.iter().map(|(_, y)| *y).collect()),
        "matmul_gflops_peak": best,
        "forward_gflops": fwd_rate,
        "backward_gflops": bwd_rate,
        "forward_matmul_efficiency": fwd_eff,
        "backward_matmul_efficiency": bwd_eff,
        // Against the best plain matmul of the whole run: a slow stretch of the machine counts
        // against the steps.
        "forward_matmul_efficiency_vs_best": fwd_rate / best,
        "backward_matmul_efficiency_vs_best": bwd_rate / best,
    }))
}

/// The matrix products of the policy's training pass, in multiply-adds × 2, from a step's
/// counts. The reference pass is timed apart and not counted.
struct MatmulWork {
    /// Σ out·in over the frozen projections of all layers.
    frozen: f64,
    /// Σ r·(in + out) over the LoRA-targeted projections of all layers.
    lora: f64,
    /// heads · head_dim · layers: one attention score's share of q·kᵀ (and of p·v).
    attention: f64,
    /// vocab · hidden: one scored position's share of the LM head.
    head: f64,
    checkpointing: bool,
}

impl MatmulWork {
    fn of(
        c: &crate::model::ModelConfig,
        lora: &crate::model::LoraConfig,
        checkpointing: bool,
    ) -> Self {
        let layers = c.num_hidden_layers as f64;
        let shapes = || {
            crate::model::Projection::ALL
                .into_iter()
                .map(|p| (p.name(), c.projection_shape(p)))
        };
        let frozen: usize = shapes().map(|(_, (o, i))| o * i).sum();
        let targeted: usize = shapes()
            .filter(|(p, _)| lora.target_modules.iter().any(|t| t == p))
            .map(|(_, (o, i))| lora.r * (o + i))
            .sum();
        Self {
            frozen: frozen as f64 * layers,
            lora: targeted as f64 * layers,
            attention: (c.num_attention_heads * c.head_dim) as f64 * layers,
            head: (c.vocab_size * c.hidden_size) as f64,
            checkpointing,
        }
    }

    /// The decoder layers' forward: the frozen projections and LoRA's A and B at every computed
    /// position, q·kᵀ and p·v at every score.
    fn layers_forward(&self, t: &StepTiming) -> f64 {
        2.0 * (self.frozen + self.lora) * t.token_passes + 4.0 * self.attention * t.attention_scores
    }

    /// The forward: the layers, and the LM head's logits and Jacobian (`probs·W`) at every
    /// scored position.
    fn forward(&self, t: &StepTiming) -> f64 {
        self.layers_forward(t) + 4.0 * self.head * t.head_positions
    }

    /// The backward: each projection's input gradient, LoRA's four products (B's input
    /// gradient, A's input gradient, dA, dB), attention's four (dv, dp, dq, dk); plus a forward
    /// of the layers when they are recomputed.
    fn backward(&self, t: &StepTiming) -> f64 {
        let own = 2.0 * self.frozen * t.token_passes
            + 4.0 * self.lora * t.token_passes
            + 8.0 * self.attention * t.attention_scores;
        let recompute = if self.checkpointing {
            self.layers_forward(t)
        } else {
            0.0
        };
        own + recompute
    }
}

/// This machine's f32 matmul rate on a projection-shaped product (2048 tokens × hidden ×
/// intermediate): the yardstick of the forward/backward rates. The operands are made once.
struct Yardstick {
    a: candle_core::Tensor,
    b: candle_core::Tensor,
    device: candle_core::Device,
}

impl Yardstick {
    const ROWS: usize = 2048;

    fn new(device: &candle_core::Device, hidden: usize, inter: usize) -> Result<Self> {
        use candle_core::{DType, Tensor};
        Ok(Self {
            a: Tensor::ones((Self::ROWS, hidden), DType::F32, device)?,
            b: Tensor::ones((hidden, inter), DType::F32, device)?,
            device: device.clone(),
        })
    }

    /// GFLOP/s, the best of `tries` (a shared machine only ever slows it down).
    fn best_of(&self, tries: usize) -> Result<f64> {
        let (hidden, inter) = self.b.dims2()?;
        let flops = 2.0 * (Self::ROWS * hidden * inter) as f64;
        let mut best = 0f64;
        for _ in 0..tries {
            let t0 = std::time::Instant::now();
            // The same gemm as the training products (no zero-filled output on CPU).
            let c = crate::ops::matmul_sum(crate::ops::Kernels::Auto, &[(&self.a, &self.b, 1.0)])?;
            self.device.synchronize()?;
            drop(c);
            best = best.max(flops / t0.elapsed().as_secs_f64() / 1e9);
        }
        Ok(best)
    }
}
