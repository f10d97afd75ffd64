//! Per-token log-probabilities of the next token, the quantity SFT and DPO losses are built on.

use candle_core::{DType, Result, Tensor, D};

/// `log p(ids[:, t+1] | ids[:, ..=t])` for every position: logits `[b, t, v]`, ids `[b, t]`
/// → `[b, t-1]` in f32.
pub fn next_token_logprobs(logits: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (_, t, _) = logits.dims3()?;
    let logits = logits.narrow(1, 0, t - 1)?.to_dtype(DType::F32)?;
    let targets = ids
        .narrow(1, 1, t - 1)?
        .to_dtype(DType::U32)?
        .unsqueeze(D::Minus1)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    logp.gather(&targets.contiguous()?, D::Minus1)?
        .squeeze(D::Minus1)
}

/// Mean negative log-likelihood over the positions where `mask` (`[b, t-1]`, 0/1) is set.
pub fn masked_mean_nll(token_logps: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?;
    let total = (token_logps * &mask)?.sum_all()?;
    let count = mask.sum_all()?;
    total.neg()?.broadcast_div(&count)
}
