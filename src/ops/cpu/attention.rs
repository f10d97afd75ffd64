//! The CPU kernels of [`crate::ops::grouped_attention_forward`] and its backward: one task per (group, batch row, query head), each
//! doing its products on one core with the scale, mask and softmax (or its backward) applied in
//! place between them, so the scores are written once and read once per pass. Inputs may be any
//! strided views (the projections' `[b, t, heads, d]` layout seen as `[b, heads, t, d]`), and the
//! results are written straight into whole-sequence buffers: no per-group copies or concatenation.

use super::simd::RowOps;
use super::{contiguous_slice, gemm_into, gemm_strided, par_fill, slice_of, tensor_of};
use super::{Mat, Real, SharedMut};
use crate::ops::Group;
use candle_core::{Layout, Result, Tensor};
use rayon::prelude::*;

/// The `[len, d]` matrix of positions `start..start + len` of head `head` of batch row `row` in a
/// `[b, heads, t, d]`-shaped (strided) tensor.
fn head_mat<T>(
    base: *const T,
    layout: &Layout,
    row: usize,
    head: usize,
    start: usize,
    len: usize,
) -> Mat<T> {
    let st = layout.stride();
    Mat {
        // SAFETY: the indices lie inside the tensor the layout describes.
        ptr: unsafe { base.add(row * st[0] + head * st[1] + start * st[2]) },
        rows: len,
        cols: layout.dims()[3],
        row_stride: st[2] as isize,
        col_stride: st[3] as isize,
    }
}

/// The bias rows of each group as `[rows, len, len]` contiguous `T`, and how many rows it has
/// (1 or b); `None` for a bias candle must broadcast otherwise.
fn biases<T: Real>(groups: &[Group], b: usize) -> Result<Option<Vec<(Tensor, usize)>>> {
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let rows = match g.bias.dims() {
            [l1, l2] if (*l1, *l2) == (g.len, g.len) => 1,
            [r, 1, l1, l2] if (*l1, *l2) == (g.len, g.len) && (*r == 1 || *r == b) => *r,
            _ => return Ok(None),
        };
        out.push((g.bias.to_dtype(T::DTYPE)?.contiguous()?, rows));
    }
    Ok(Some(out))
}

/// `q: [b, h, t, d]` and `k, v: [b, kvh, t, d]` with `kvh` dividing `h`, and groups inside `t`:
/// the kernels' pointer arithmetic relies on it.
fn check_shapes(q: &Tensor, k: &Tensor, v: &Tensor, spans: &[(usize, usize)]) -> Result<()> {
    let (b, h, t, d) = q.dims4()?;
    let (kb, kvh, kt, kd) = k.dims4()?;
    if (kb, kt, kd) != (b, t, d) || v.dims() != k.dims() || kvh == 0 || h % kvh != 0 {
        candle_core::bail!(
            "attention: q {:?}, k {:?} and v {:?} do not fit together",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if spans.iter().any(|&(start, len)| start + len > t) {
        candle_core::bail!("attention: a group reaches past the {t} positions");
    }
    Ok(())
}

/// Tasks in the order (group, row, head).
fn tasks(groups: usize, b: usize, h: usize) -> Vec<(usize, usize, usize)> {
    (0..groups)
        .flat_map(|g| (0..b).flat_map(move |row| (0..h).map(move |head| (g, row, head))))
        .collect()
}

/// `(out [b, t, h·d], probs of each group [b, kvh, h/kvh · len, len])`, or `None` off the fast
/// path. `q: [b, h, t, d]`, `k, v: [b, kvh, t, d]`, strided views allowed.
pub fn forward<T: RowOps>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    groups: &[Group],
) -> Result<Option<(Tensor, Vec<Tensor>)>> {
    let spans: Vec<_> = groups.iter().map(|g| (g.start, g.len)).collect();
    check_shapes(q, k, v, &spans)?;
    let (b, h, t, d) = q.dims4()?;
    let kvh = k.dim(1)?;
    let n_rep = h / kvh;
    let scale = T::from(1.0 / (d as f64).sqrt()).expect("finite");
    let Some(biases) = biases::<T>(groups, b)? else {
        return Ok(None);
    };
    let (sq, lq) = q.storage_and_layout();
    let (sk, lk) = k.storage_and_layout();
    let (sv, lv) = v.storage_and_layout();
    let (Some(qs), Some(ks), Some(vs)) = (
        slice_of::<T>(&sq, lq),
        slice_of::<T>(&sk, lk),
        slice_of::<T>(&sv, lv),
    ) else {
        return Ok(None);
    };
    let bias_guards: Vec<_> = biases.iter().map(|(t, _)| t.storage_and_layout()).collect();
    let bias_slices = bias_guards
        .iter()
        .map(|(s, l)| contiguous_slice::<T>(s, l))
        .collect::<Option<Vec<_>>>()
        .expect("biases are contiguous CPU tensors of T");
    let mut out: Vec<T> = Vec::with_capacity(b * t * h * d);
    let mut probs: Vec<Vec<T>> = groups
        .iter()
        .map(|g| Vec::with_capacity(b * h * g.len * g.len))
        .collect();
    let out_ptr = SharedMut(out.as_mut_ptr());
    let prob_ptrs: Vec<SharedMut<T>> = probs
        .iter_mut()
        .map(|p| SharedMut(p.as_mut_ptr()))
        .collect();
    tasks(groups.len(), b, h)
        .into_par_iter()
        .for_each(|(g, row, head)| {
            let Group { start, len, .. } = groups[g];
            let (bias, bias_rows) = (bias_slices[g], biases[g].1);
            let qh = head_mat(qs.as_ptr(), lq, row, head, start, len);
            let kh = head_mat(ks.as_ptr(), lk, row, head / n_rep, start, len);
            let vh = head_mat(vs.as_ptr(), lv, row, head / n_rep, start, len);
            // SAFETY: each task writes its own [len, len] block of its group's probabilities and
            // its own d columns of rows start..start+len of the output; the operands live while the
            // storage guards are held.
            unsafe {
                let p = prob_ptrs[g].get().add((row * h + head) * len * len);
                gemm_into(p, qh, kh.t(), false, scale, 1);
                let scores = std::slice::from_raw_parts_mut(p, len * len);
                let bias = &bias[row.min(bias_rows - 1) * len * len..][..len * len];
                for (scores, bias) in scores.chunks_mut(len).zip(bias.chunks(len)) {
                    let max = T::add_max(scores, bias);
                    let sum = T::exp_shifted(scores, max);
                    T::scale(scores, T::one() / sum);
                }
                let pm = Mat::row_major(p, len, len);
                let o = out_ptr.get().add((row * t + start) * h * d + head * d);
                gemm_strided(o, (h * d) as isize, pm, vh, false, T::one(), 1);
            }
        });
    // SAFETY: the groups tile 0..t (checked by the caller), so every element was written.
    unsafe {
        out.set_len(b * t * h * d);
        for (p, g) in probs.iter_mut().zip(groups) {
            p.set_len(b * h * g.len * g.len);
        }
    }
    drop((sq, sk, sv, bias_guards));
    let probs = (probs.into_iter().zip(groups))
        .map(|(p, g)| tensor_of(p, &[b, kvh, n_rep * g.len, g.len]))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some((tensor_of(out, &[b, t, h * d])?, probs)))
}

/// `(dq, dk, dv)` shaped `[b, heads, t, d]` (views of `[b, t, heads, d]` storage, the
/// projections' layout), or `None` off the fast path. `grad: [b, t, h·d]`; `spans` are the
/// groups' `(start, len)`.
pub fn backward<T: RowOps>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spans: &[(usize, usize)],
    probs: &[Tensor],
    grad: &Tensor,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    check_shapes(q, k, v, spans)?;
    let (b, h, t, d) = q.dims4()?;
    if grad.dims() != [b, t, h * d] {
        candle_core::bail!(
            "attention backward: gradient {:?} for q {:?}",
            grad.dims(),
            q.dims()
        );
    }
    let kvh = k.dim(1)?;
    for (p, &(_, len)) in probs.iter().zip(spans) {
        if p.dims() != [b, kvh, h / kvh * len, len] {
            candle_core::bail!(
                "attention backward: probabilities {:?} for a group of {len}",
                p.dims()
            );
        }
    }
    if probs.len() != spans.len() {
        candle_core::bail!(
            "attention backward: {} probabilities for {} groups",
            probs.len(),
            spans.len()
        );
    }
    let kvh = k.dim(1)?;
    let n_rep = h / kvh;
    let scale = T::from(1.0 / (d as f64).sqrt()).expect("finite");
    let grad = grad.contiguous()?;
    let probs = probs
        .iter()
        .map(|p| p.contiguous())
        .collect::<Result<Vec<_>>>()?;
    let (sq, lq) = q.storage_and_layout();
    let (sk, lk) = k.storage_and_layout();
    let (sv, lv) = v.storage_and_layout();
    let (sg, lg) = grad.storage_and_layout();
    let (Some(qs), Some(ks), Some(vs), Some(gs)) = (
        slice_of::<T>(&sq, lq),
        slice_of::<T>(&sk, lk),
        slice_of::<T>(&sv, lv),
        slice_of::<T>(&sg, lg),
    ) else {
        return Ok(None);
    };
    let prob_guards: Vec<_> = probs.iter().map(|p| p.storage_and_layout()).collect();
    let Some(prob_slices) = prob_guards
        .iter()
        .map(|(s, l)| contiguous_slice::<T>(s, l))
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    // dq in [b, t, h, d]; dk and dv per query head in [b, t, h, d], summed over the heads that
    // share a kv head after.
    let n = b * t * h * d;
    let (mut dq, mut dk_parts, mut dv_parts): (Vec<T>, Vec<T>, Vec<T>) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let ptrs = (
        SharedMut(dq.as_mut_ptr()),
        SharedMut(dk_parts.as_mut_ptr()),
        SharedMut(dv_parts.as_mut_ptr()),
    );
    let row_stride = (h * d) as isize;
    tasks(spans.len(), b, h)
        .into_par_iter()
        .for_each(|(g, row, head)| {
            let (start, len) = spans[g];
            let qh = head_mat(qs.as_ptr(), lq, row, head, start, len);
            let kh = head_mat(ks.as_ptr(), lk, row, head / n_rep, start, len);
            let vh = head_mat(vs.as_ptr(), lv, row, head / n_rep, start, len);
            let p = &prob_slices[g][(row * h + head) * len * len..][..len * len];
            let pm = Mat::row_major(p.as_ptr(), len, len);
            // This task's block in the [b, t, h, d] buffers (and in grad, laid out the same).
            let at = (row * t + start) * h * d + head * d;
            let go = Mat {
                // SAFETY: inside grad [b, t, h·d].
                ptr: unsafe { gs.as_ptr().add(at) },
                rows: len,
                cols: d,
                row_stride,
                col_stride: 1,
            };
            let mut ds: Vec<T> = Vec::with_capacity(len * len);
            let (dq_ptr, dk_ptr, dv_ptr) = ptrs;
            // SAFETY: each task writes its own blocks of dq, dk_parts, dv_parts and its scratch.
            unsafe {
                gemm_into(ds.as_mut_ptr(), go, vh.t(), false, T::one(), 1);
                ds.set_len(len * len);
                // Softmax backward: dS = P ⊙ (dP − Σ dP ⊙ P), times the 1/√d of the scores.
                for (dp, p) in ds.chunks_mut(len).zip(p.chunks(len)) {
                    T::softmax_grad(dp, p, scale);
                }
                let dsm = Mat::row_major(ds.as_ptr(), len, len);
                gemm_strided(
                    dq_ptr.get().add(at),
                    row_stride,
                    dsm,
                    kh,
                    false,
                    T::one(),
                    1,
                );
                gemm_strided(
                    dk_ptr.get().add(at),
                    row_stride,
                    dsm.t(),
                    qh,
                    false,
                    T::one(),
                    1,
                );
                gemm_strided(
                    dv_ptr.get().add(at),
                    row_stride,
                    pm.t(),
                    go,
                    false,
                    T::one(),
                    1,
                );
            }
        });
    // SAFETY: the groups tile 0..t, so every task block together covers the buffers.
    unsafe {
        dq.set_len(n);
        dk_parts.set_len(n);
        dv_parts.set_len(n);
    }
    drop((sq, sk, sv, sg, prob_guards));
    // [b, t, h, d] → [b, t, kvh, d]: the query heads of a kv head are adjacent.
    let sum_heads = |parts: Vec<T>| -> Result<Tensor> {
        let summed = par_fill::<T>(b * t * kvh * d, kvh * d, |pos, chunk| {
            let src = &parts[pos * h * d..][..h * d];
            for (kv, out) in chunk.chunks_mut(d).enumerate() {
                for (i, o) in out.iter_mut().enumerate() {
                    let mut acc = T::zero();
                    for r in 0..n_rep {
                        acc += src[(kv * n_rep + r) * d + i];
                    }
                    o.write(acc);
                }
            }
        });
        tensor_of(summed, &[b, t, kvh, d])?.transpose(1, 2)
    };
    Ok(Some((
        tensor_of(dq, &[b, t, h, d])?.transpose(1, 2)?,
        sum_heads(dk_parts)?,
        sum_heads(dv_parts)?,
    )))
}
