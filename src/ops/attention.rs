//! Scaled dot-product attention with grouped-query heads as one op, keeping only the attention
//! probabilities for its written-out backward (one score-sized tensor instead of the five a
//! composite of candle ops records). Generic path: batched products, candle's fused softmax in
//! f32, the backward in tensor ops.

use super::{attach_gradient3, cpu, work_dtype, Kernels};
use candle_core::{DType, Result, Tensor, D};
use std::sync::Arc;

/// Positions `start..start + len` attend among themselves through the additive `bias`
/// (`[b or 1, 1, len, len]` or `[len, len]`).
pub struct Group<'a> {
    pub start: usize,
    pub len: usize,
    pub bias: &'a Tensor,
}

/// `softmax(q·kᵀ/√d + mask)·v` for `q: [b, h, t, d]` and `k, v: [b, kvh, s, d]`, returned as
/// `[b, t, h·d]`. The `h / kvh` query heads that share a kv head are stacked along the
/// sequence axis (no copies of k/v). Scores and softmax are f32; `mask` is an additive
/// `[b, 1, t, s]` f32 bias.
pub fn attention(
    kernels: Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    dtype: DType,
) -> Result<Tensor> {
    let (out, probs) =
        attention_forward(kernels, &q.detach(), &k.detach(), &v.detach(), mask, dtype)?;
    attach_gradient3(
        [q, k, v],
        out,
        Arc::new(move |[q, k, v], grad| {
            let (dq, dk, dv) = attention_backward(kernels, q, k, v, &probs, grad)?;
            Ok([Some(dq), Some(dk), Some(dv)])
        }),
    )
}

/// [`attention`] on untracked tensors: the output and the probabilities its backward needs
/// (`[b, kvh, h/kvh · t, s]`, the query heads of a kv head stacked).
pub fn attention_forward(
    kernels: Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    dtype: DType,
) -> Result<(Tensor, Tensor)> {
    let t = q.dim(2)?;
    let whole = [Group {
        start: 0,
        len: t,
        bias: mask,
    }];
    if k.dim(2)? == t {
        if let Some((out, mut probs)) = cpu_forward(kernels, q, k, v, &whole, dtype)? {
            return Ok((out, probs.remove(0)));
        }
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
    kernels: Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    probs: &Tensor,
    grad: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let t = q.dim(2)?;
    if k.dim(2)? == t {
        let probs1 = std::slice::from_ref(probs);
        if let Some(grads) = cpu_backward(kernels, q, k, v, &[(0, t)], probs1, grad)? {
            return Ok(grads);
        }
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

/// Attention within each of `groups` (consecutive, covering all `t` positions; a group sees
/// only itself) for `q: [b, h, t, d]` and `k, v: [b, kvh, t, d]` (strided views welcome: the
/// CPU kernel reads the projections' `[b, t, heads, d]` layout in place). Returns `[b, t, h·d]`
/// and each group's probabilities.
pub fn grouped_attention_forward(
    kernels: Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    groups: &[Group],
    dtype: DType,
) -> Result<(Tensor, Vec<Tensor>)> {
    check_tiling(groups, q.dim(2)?)?;
    if let Some(done) = cpu_forward(kernels, q, k, v, groups, dtype)? {
        return Ok(done);
    }
    let (mut outs, mut probs) = (Vec::new(), Vec::new());
    for g in groups {
        let part = |t: &Tensor| t.narrow(2, g.start, g.len)?.contiguous();
        let (out, p) = attention_forward(kernels, &part(q)?, &part(k)?, &part(v)?, g.bias, dtype)?;
        outs.push(out);
        probs.push(p);
    }
    Ok((Tensor::cat(&outs, 1)?, probs))
}

/// The gradients of [`grouped_attention_forward`] with respect to `q`, `k` and `v` (shaped like
/// them) for the output gradient `grad: [b, t, h·d]`.
pub fn grouped_attention_backward(
    kernels: Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    groups: &[Group],
    probs: &[Tensor],
    grad: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    check_tiling(groups, q.dim(2)?)?;
    let spans: Vec<_> = groups.iter().map(|g| (g.start, g.len)).collect();
    if let Some(done) = cpu_backward(kernels, q, k, v, &spans, probs, grad)? {
        return Ok(done);
    }
    let (mut dq, mut dk, mut dv) = (Vec::new(), Vec::new(), Vec::new());
    for (g, p) in groups.iter().zip(probs) {
        let part = |t: &Tensor| t.narrow(2, g.start, g.len);
        let (gq, gk, gv) = attention_backward(
            kernels,
            &part(q)?.contiguous()?,
            &part(k)?.contiguous()?,
            &part(v)?.contiguous()?,
            p,
            &grad.narrow(1, g.start, g.len)?,
        )?;
        dq.push(gq);
        dk.push(gk);
        dv.push(gv);
    }
    Ok((
        Tensor::cat(&dq, 2)?,
        Tensor::cat(&dk, 2)?,
        Tensor::cat(&dv, 2)?,
    ))
}

/// The groups must cover `0..t` in order: the CPU kernels write every output position once.
fn check_tiling(groups: &[Group], t: usize) -> Result<()> {
    let mut next = 0;
    for g in groups {
        if g.start != next || g.len == 0 {
            candle_core::bail!(
                "attention groups must tile the sequence: a group starts at {}, expected {next}",
                g.start
            );
        }
        next += g.len;
    }
    if next != t {
        candle_core::bail!("attention groups cover {next} of {t} positions");
    }
    Ok(())
}

fn cpu_forward(
    kernels: Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    groups: &[Group],
    dtype: DType,
) -> Result<Option<(Tensor, Vec<Tensor>)>> {
    match kernels.cpu_dtype(&[q, k, v]) {
        Some(DType::F32) if dtype == DType::F32 => cpu::attention::forward::<f32>(q, k, v, groups),
        Some(DType::F64) if dtype == DType::F64 => cpu::attention::forward::<f64>(q, k, v, groups),
        _ => Ok(None),
    }
}

fn cpu_backward(
    kernels: Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spans: &[(usize, usize)],
    probs: &[Tensor],
    grad: &Tensor,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    let mut all = vec![q, k, v, grad];
    all.extend(probs);
    match kernels.cpu_dtype(&all) {
        Some(DType::F32) => cpu::attention::backward::<f32>(q, k, v, spans, probs, grad),
        Some(DType::F64) => cpu::attention::backward::<f64>(q, k, v, spans, probs, grad),
        _ => Ok(None),
    }
}
