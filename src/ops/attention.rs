//! Scaled dot-product attention with grouped-query heads as one op: candle's fused softmax
//! forward and a written-out backward that keeps only the attention probabilities (one
//! score-sized tensor instead of the five a composite of candle ops records).

use super::{attach_gradient3, attention_cpu, cpu};
use candle_core::{DType, Result, Tensor, D};
use std::sync::Arc;

/// `softmax(q·kᵀ/√d + mask)·v` for `q: [b, h, t, d]` and `k, v: [b, kvh, s, d]`, returned as
/// `[b, t, h·d]`. The `h / kvh` query heads that share a kv head are stacked along the
/// sequence axis (no copies of k/v). Scores and softmax are f32; `mask` is an additive
/// `[b, 1, t, s]` f32 bias.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    dtype: DType,
) -> Result<Tensor> {
    let (out, probs) = attention_forward(&q.detach(), &k.detach(), &v.detach(), mask, dtype)?;
    attach_gradient3(
        [q, k, v],
        out,
        Arc::new(move |[q, k, v], grad| {
            let (dq, dk, dv) = attention_backward(q, k, v, &probs, grad)?;
            Ok([Some(dq), Some(dk), Some(dv)])
        }),
    )
}

/// [`attention`] on untracked tensors: the output and the probabilities its backward needs
/// (`[b, kvh, h/kvh · t, s]`, the query heads of a kv head stacked).
pub fn attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    dtype: DType,
) -> Result<(Tensor, Tensor)> {
    let fast = match cpu::fast_dtype(&[q, k, v]) {
        Some(DType::F32) if dtype == DType::F32 => attention_cpu::forward::<f32>(q, k, v, mask)?,
        Some(DType::F64) if dtype == DType::F64 => attention_cpu::forward::<f64>(q, k, v, mask)?,
        _ => None,
    };
    if let Some(done) = fast {
        return Ok(done);
    }
    let (b, h, t, d) = q.dims4()?;
    let (kvh, keys) = (k.dim(1)?, k.dim(2)?);
    let n_rep = h / kvh;
    let scale = 1.0 / (d as f64).sqrt();
    let work = work_dtype(q.dtype());
    let scores = q
        .reshape((b, kvh, n_rep * t, d))?
        .matmul(&k.t()?)?
        .reshape((b, h, t, keys))?;
    let scores = ((scores.to_dtype(work)? * scale)?.broadcast_add(&mask.to_dtype(work)?))?;
    let probs = candle_nn::ops::softmax_last_dim(&scores.contiguous()?)?
        .to_dtype(dtype)?
        .reshape((b, kvh, n_rep * t, keys))?;
    let out = probs
        .matmul(v)?
        .reshape((b, h, t, d))?
        .transpose(1, 2)?
        .reshape((b, t, h * d))?;
    Ok((out, probs))
}

/// The gradients of [`attention`] with respect to `q`, `k` and `v` for the output gradient
/// `grad: [b, t, h·d]`, from the probabilities [`attention_forward`] returned.
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    probs: &Tensor,
    grad: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let fast = match cpu::fast_dtype(&[q, k, v, probs, grad]) {
        Some(DType::F32) => attention_cpu::backward::<f32>(q, k, v, probs, grad)?,
        Some(DType::F64) => attention_cpu::backward::<f64>(q, k, v, probs, grad)?,
        _ => None,
    };
    if let Some(done) = fast {
        return Ok(done);
    }
    let (b, h, t, d) = q.dims4()?;
    let kvh = k.dim(1)?;
    let n_rep = h / kvh;
    let scale = 1.0 / (d as f64).sqrt();
    let work = work_dtype(q.dtype());
    // grad [b, t, h·d] → per head, grouped like the forward.
    let go = grad
        .reshape((b, t, h, d))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, kvh, n_rep * t, d))?;
    let dv = probs.t()?.matmul(&go)?;
    let dp = go.matmul(&v.t()?)?.to_dtype(work)?;
    let p = probs.to_dtype(work)?;
    // Softmax backward: dS = P ⊙ (dP − Σ dP ⊙ P), then the 1/√d of the scores.
    let dot = (&dp * &p)?.sum_keepdim(D::Minus1)?;
    let ds = ((p * dp.broadcast_sub(&dot)?)? * scale)?.to_dtype(q.dtype())?;
    let dq = ds.matmul(k)?.reshape((b, h, t, d))?;
    let dk = ds.t()?.matmul(&q.reshape((b, kvh, n_rep * t, d))?)?;
    Ok((dq, dk, dv))
}

/// f64 stays f64 (gradient checks); everything else runs the softmax in f32.
fn work_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}
