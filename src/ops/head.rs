//! The LM head fused with the next-token log-probability, computed over chunks of positions so
//! that no `[batch, seq, vocab]` tensor ever exists: only `[chunk, vocab]` at a time. When the
//! hidden states are tracked, the forward also keeps each position's gradient of its log-prob
//! with respect to its hidden state (`[positions, hidden]`), so the backward is a scaling.

use super::linear::{frozen_matmul, frozen_matmul_t};
use super::{attach_gradient, cpu, work_dtype, Kernels};
use candle_core::{DType, Result, Tensor, D};
use std::sync::Arc;

/// Positions per chunk: with a 49k-token vocabulary a chunk's f32 logits take ~100 MB.
pub const DEFAULT_CHUNK_POSITIONS: usize = 512;

/// What the head gives for every position `t < seq-1` of every row.
pub struct HeadLogprobs {
    /// `log p(ids[:, t+1] | ..=t)`, `[b, seq-1]` f32 (`[m]` for [`position_logprobs`]),
    /// tracked when the hidden states are.
    pub token_logps: Tensor,
    /// The mean logit over the vocabulary at each position, same shape, f32 (TRL's
    /// `logits/chosen` metric averages it); never tracked.
    pub mean_logits: Tensor,
    /// Per position, same shape, f32, never tracked: the entropy of the next-token
    /// distribution (TRL's `entropy`), 1 where the target is its top token and 0 elsewhere
    /// (`mean_token_accuracy`), and `log Σ p²` (WPO's `use_weighting`).
    pub entropy: Tensor,
    pub is_top1: Tensor,
    pub log_sum_sq_probs: Tensor,
}

/// `hidden: [b, seq, h]` (after the final norm), `lm_head: [vocab, h]` (frozen), `ids: [b, seq]`.
pub fn head_logprobs(
    kernels: Kernels,
    hidden: &Tensor,
    lm_head: &Tensor,
    ids: &Tensor,
    chunk_positions: usize,
) -> Result<HeadLogprobs> {
    let (b, t, h) = hidden.dims3()?;
    let states = hidden.narrow(1, 0, t - 1)?.reshape((b * (t - 1), h))?;
    let targets = ids.narrow(1, 1, t - 1)?.flatten_all()?;
    let out = position_logprobs(kernels, &states, lm_head, &targets, chunk_positions)?;
    Ok(HeadLogprobs {
        token_logps: out.token_logps.reshape((b, t - 1))?,
        mean_logits: out.mean_logits.reshape((b, t - 1))?,
        entropy: out.entropy.reshape((b, t - 1))?,
        is_top1: out.is_top1.reshape((b, t - 1))?,
        log_sum_sq_probs: out.log_sum_sq_probs.reshape((b, t - 1))?,
    })
}

/// The log-prob of `targets[i]` (`[m]` u32) after the hidden state `states[i]` (`[m, h]`), and
/// the mean logit there: `[m]` each.
pub fn position_logprobs(
    kernels: Kernels,
    states: &Tensor,
    lm_head: &Tensor,
    targets: &Tensor,
    chunk_positions: usize,
) -> Result<HeadLogprobs> {
    let n = states.dim(0)?;
    let chunk = chunk_positions.max(1);
    let detached = states.detach();
    let targets = targets.to_dtype(DType::U32)?.reshape((n, 1))?;
    let work = work_dtype(states.dtype());
    let tracked = states.track_op();
    let (mut logps, mut means, mut jacobians) = (Vec::new(), Vec::new(), Vec::new());
    let (mut entropy, mut top1, mut log_sum_sq) = (Vec::new(), Vec::new(), Vec::new());
    // f32 or f64 on CPU.
    let fast = kernels.cpu_dtype(&[states, lm_head]);
    // The kernels need the ids on the host: a CPU tensor's own elements.
    let target_ids = match fast {
        Some(_) => cpu::u32_values(&targets.contiguous()?).unwrap_or_default(),
        None => Vec::new(),
    };
    let fast = fast.filter(|_| target_ids.len() == n);
    for start in (0..n).step_by(chunk) {
        let len = chunk.min(n - start);
        if let Some(dtype) = fast {
            let rows = detached.narrow(0, start, len)?;
            let ids = &target_ids[start..start + len];
            let done = match dtype {
                DType::F32 => cpu::head::chunk::<f32>(&rows, lm_head, ids, tracked)?,
                _ => cpu::head::chunk::<f64>(&rows, lm_head, ids, tracked)?,
            };
            if let Some(done) = done {
                logps.push(done.logps);
                means.push(done.means.to_dtype(DType::F32)?);
                entropy.push(done.entropy.to_dtype(DType::F32)?);
                top1.push(done.top1.to_dtype(DType::F32)?);
                log_sum_sq.push(done.log_sum_sq.to_dtype(DType::F32)?);
                jacobians.extend(done.jacobian);
                continue;
            }
        }
        let chunk_targets = targets.narrow(0, start, len)?;
        let rows = detached.narrow(0, start, len)?.contiguous()?;
        let logits = frozen_matmul_t(&rows, lm_head)?.to_dtype(work)?;
        let max = logits.max_keepdim(D::Minus1)?;
        let exp = logits.broadcast_sub(&max)?.exp()?;
        let sum = exp.sum_keepdim(D::Minus1)?;
        let lse = (sum.log()? + &max)?.squeeze(D::Minus1)?;
        let picked = logits
            .gather(&chunk_targets, D::Minus1)?
            .squeeze(D::Minus1)?;
        let is_top1 = picked.ge(&max.squeeze(D::Minus1)?)?;
        logps.push((&picked - &lse)?);
        means.push(logits.mean(D::Minus1)?.to_dtype(DType::F32)?);
        // H = lse − Σ p·x; log Σ p² = log Σ e² − 2 log Σ e (e = exp(x − max)).
        let probs_x = (exp.broadcast_mul(&logits)?.sum_keepdim(D::Minus1)? / &sum)?;
        entropy.push((&lse - probs_x.squeeze(D::Minus1)?)?.to_dtype(DType::F32)?);
        top1.push(is_top1.to_dtype(DType::F32)?);
        let sq = exp.sqr()?.sum_keepdim(D::Minus1)?.log()?;
        let lss = (sq - (sum.log()? * 2.0)?)?.squeeze(D::Minus1)?;
        log_sum_sq.push(lss.to_dtype(DType::F32)?);
        if tracked {
            // d logp / d h = W[target] − softmax(logits)·W: one [chunk, h] row per position,
            // so the backward needs neither the logits nor a second pass over the vocabulary.
            let probs = exp.broadcast_div(&sum)?;
            let pd = super::product_dtype(lm_head.device(), lm_head.dtype());
            let expected = frozen_matmul(&probs.to_dtype(pd)?, lm_head)?.to_dtype(work)?;
            let target_rows = lm_head.index_select(&chunk_targets.squeeze(1)?, 0)?;
            jacobians.push((target_rows.to_dtype(work)? - expected)?);
        }
    }
    let token_logps = Tensor::cat(&logps, 0)?;
    let mean_logits = Tensor::cat(&means, 0)?;
    let entropy = Tensor::cat(&entropy, 0)?;
    let is_top1 = Tensor::cat(&top1, 0)?;
    let log_sum_sq_probs = Tensor::cat(&log_sum_sq, 0)?;
    if !tracked {
        return Ok(HeadLogprobs {
            token_logps,
            mean_logits,
            entropy,
            is_top1,
            log_sum_sq_probs,
        });
    }
    let jacobian = Tensor::cat(&jacobians, 0)?;
    let token_logps = attach_gradient(
        states,
        token_logps,
        Arc::new(move |states, _, grad| {
            let g = grad.reshape((n, 1))?.to_dtype(work)?;
            jacobian.broadcast_mul(&g)?.to_dtype(states.dtype())
        }),
    )?;
    Ok(HeadLogprobs {
        token_logps,
        mean_logits,
        entropy,
        is_top1,
        log_sum_sq_probs,
    })
}

/// `log Σ exp(x)` over the last dimension, stable.
pub fn log_sum_exp(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let sum = x.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
    (sum.log()? + max)?.squeeze(D::Minus1)
}
