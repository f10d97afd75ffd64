//! Per-token log-probabilities of the next token, the quantity SFT and DPO losses are built on.

use candle_core::{DType, Result, Tensor, D};
use std::sync::Arc;

pub use crate::ops::log_sum_exp;
use crate::ops::{attach_gradient, work_dtype};

/// `log p(ids[:, t+1] | ids[:, ..=t])` for every position: logits `[b, t, v]`, ids `[b, t]`
/// → `[b, t-1]` in f32.
///
/// One fused op: the forward keeps no `[b, t, v]` intermediates in the graph, and the
/// backward builds the logits gradient `g·(onehot − softmax)` once.
pub fn next_token_logprobs(logits: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (_, t, _) = logits.dims3()?;
    let logits = logits.narrow(1, 0, t - 1)?;
    let targets = ids
        .narrow(1, 1, t - 1)?
        .to_dtype(DType::U32)?
        .unsqueeze(D::Minus1)?
        .contiguous()?;
    let work = work_dtype(logits.dtype());
    let x = logits.detach().to_dtype(work)?.contiguous()?;
    let lse = log_sum_exp(&x)?;
    let picked = x.gather(&targets, D::Minus1)?.squeeze(D::Minus1)?;
    let out = (picked - &lse)?;
    let dtype = logits.dtype();
    attach_gradient(
        &logits,
        out,
        Arc::new(move |logits, _, grad| {
            let x = logits.to_dtype(work)?;
            let probs = x.broadcast_sub(&lse.unsqueeze(D::Minus1)?)?.exp()?;
            let g = grad.unsqueeze(D::Minus1)?;
            let d = probs.broadcast_mul(&g.neg()?)?;
            d.scatter_add(&targets, &g.contiguous()?, D::Minus1)?
                .to_dtype(dtype)
        }),
    )
}

/// Mean negative log-likelihood over the positions where `mask` (`[b, t-1]`, 0/1) is set.
pub fn masked_mean_nll(token_logps: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?;
    let total = (token_logps * &mask)?.sum_all()?;
    let count = mask.sum_all()?;
    total.neg()?.broadcast_div(&count)
}
