//! The CPU kernels of [`super::attention`]: one task per (batch row, query head), each doing its
//! products on one core with the scale, mask and softmax (or its backward) applied in place
//! between them, so the scores are written once and read once per pass.

use super::cpu::{self, gemm_into, gemm_strided, Mat, Real, SharedMut};
use super::simd::RowOps;
use candle_core::{Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// The `[t, d]` matrix of head `head` of batch row `row` in a `[b, heads, t, d]` tensor.
fn head_mat<T>(base: *const T, layout: &Layout, row: usize, head: usize) -> Mat<T> {
    let dims = layout.dims();
    let st = layout.stride();
    Mat {
        // SAFETY: row < b and head < heads index inside the tensor.
        ptr: unsafe { base.add(row * st[0] + head * st[1]) },
        rows: dims[2],
        cols: dims[3],
        row_stride: st[2] as isize,
        col_stride: st[3] as isize,
    }
}

fn slice<'a, T: Real>(storage: &'a Storage, layout: &Layout) -> Option<&'a [T]> {
    cpu::slice_of::<T>(storage, layout)
}

/// `(out [b, t, h·d], probs [b, kvh, h/kvh · t, s])`, or `None` off the fast path.
pub fn forward<T: RowOps>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
) -> Result<Option<(Tensor, Tensor)>> {
    let (b, h, t, d) = q.dims4()?;
    let (kvh, s) = (k.dim(1)?, k.dim(2)?);
    let n_rep = h / kvh;
    let scale = T::from(1.0 / (d as f64).sqrt()).expect("finite");
    // A bias per batch row [b, 1, t, s], or one for all [1, 1, t, s] / [t, s]; other
    // broadcasts take candle's path.
    let mask_rows = match mask.dims() {
        [t2, s2] if (*t2, *s2) == (t, s) => 1,
        [r, 1, t2, s2] if (*t2, *s2) == (t, s) && (*r == 1 || *r == b) => *r,
        _ => return Ok(None),
    };
    let mask = mask.to_dtype(T::DTYPE)?.contiguous()?;
    let (sq, lq) = q.storage_and_layout();
    let (sk, lk) = k.storage_and_layout();
    let (sv, lv) = v.storage_and_layout();
    let (sm, lm) = mask.storage_and_layout();
    let (Some(qs), Some(ks), Some(vs), Some(ms)) = (
        slice::<T>(&sq, lq),
        slice::<T>(&sk, lk),
        slice::<T>(&sv, lv),
        slice::<T>(&sm, lm),
    ) else {
        return Ok(None);
    };
    let mut out: Vec<T> = Vec::with_capacity(b * t * h * d);
    let out_ptr = SharedMut(out.as_mut_ptr());
    let probs = cpu::par_fill::<T>(b * h * t * s, t * s, |task, chunk| {
        let (row, head) = (task / h, task % h);
        let p = chunk.as_mut_ptr() as *mut T;
        let qh = head_mat(qs.as_ptr(), lq, row, head);
        let kh = head_mat(ks.as_ptr(), lk, row, head / n_rep);
        let vh = head_mat(vs.as_ptr(), lv, row, head / n_rep);
        // SAFETY: `p` is this task's [t, s] chunk; the output block of (row, head) is written by
        // this task only; the operands live while the storage guards are held.
        unsafe {
            gemm_into(p, qh, kh.t(), false, scale, 1);
            let probs = std::slice::from_raw_parts_mut(p, t * s);
            let bias = &ms[row.min(mask_rows - 1) * t * s..][..t * s];
            for (scores, bias) in probs.chunks_mut(s).zip(bias.chunks(s)) {
                softmax_in_place(scores, bias);
            }
            let pm = Mat {
                ptr: p as *const T,
                rows: t,
                cols: s,
                row_stride: s as isize,
                col_stride: 1,
            };
            let o = out_ptr.get().add(row * t * h * d + head * d);
            gemm_strided(o, (h * d) as isize, pm, vh, false, T::one(), 1);
        }
    });
    // SAFETY: every (row, head) task wrote its d columns of all t rows.
    unsafe { out.set_len(b * t * h * d) };
    drop((sq, sk, sv, sm));
    Ok(Some((
        cpu::tensor_of(out, &[b, t, h * d])?,
        cpu::tensor_of(probs, &[b, kvh, n_rep * t, s])?,
    )))
}

/// `scores + bias`, then softmax, in place.
fn softmax_in_place<T: RowOps>(scores: &mut [T], bias: &[T]) {
    let max = T::add_max(scores, bias);
    let sum = T::exp_shifted(scores, max);
    T::scale(scores, T::one() / sum);
}

/// `(dq [b, h, t, d], dk [b, kvh, s, d], dv [b, kvh, s, d])`, or `None` off the fast path.
pub fn backward<T: RowOps>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    probs: &Tensor,
    grad: &Tensor,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    let (b, h, t, d) = q.dims4()?;
    let (kvh, s) = (k.dim(1)?, k.dim(2)?);
    let n_rep = h / kvh;
    let scale = T::from(1.0 / (d as f64).sqrt()).expect("finite");
    let grad = grad.contiguous()?;
    let probs = probs.contiguous()?;
    let (sq, lq) = q.storage_and_layout();
    let (sk, lk) = k.storage_and_layout();
    let (sv, lv) = v.storage_and_layout();
    let (sp, lp) = probs.storage_and_layout();
    let (sg, lg) = grad.storage_and_layout();
    let (Some(qs), Some(ks), Some(vs), Some(ps), Some(gs)) = (
        slice::<T>(&sq, lq),
        slice::<T>(&sk, lk),
        slice::<T>(&sv, lv),
        slice::<T>(&sp, lp),
        slice::<T>(&sg, lg),
    ) else {
        return Ok(None);
    };
    let tasks = b * h;
    let mut dq: Vec<T> = Vec::with_capacity(tasks * t * d);
    // Per query head; the heads sharing a kv head are summed after.
    let mut dk_parts: Vec<T> = Vec::with_capacity(tasks * s * d);
    let mut dv_parts: Vec<T> = Vec::with_capacity(tasks * s * d);
    let (dq_ptr, dk_ptr, dv_ptr) = (
        SharedMut(dq.as_mut_ptr()),
        SharedMut(dk_parts.as_mut_ptr()),
        SharedMut(dv_parts.as_mut_ptr()),
    );
    (0..tasks).into_par_iter().for_each(|task| {
        let (row, head) = (task / h, task % h);
        let qh = head_mat(qs.as_ptr(), lq, row, head);
        let kh = head_mat(ks.as_ptr(), lk, row, head / n_rep);
        let vh = head_mat(vs.as_ptr(), lv, row, head / n_rep);
        let p = &ps[task * t * s..][..t * s];
        let pm = Mat {
            ptr: p.as_ptr(),
            rows: t,
            cols: s,
            row_stride: s as isize,
            col_stride: 1,
        };
        let go = Mat {
            // SAFETY: inside grad [b, t, h·d].
            ptr: unsafe { gs.as_ptr().add(row * t * h * d + head * d) },
            rows: t,
            cols: d,
            row_stride: (h * d) as isize,
            col_stride: 1,
        };
        let mut ds: Vec<T> = Vec::with_capacity(t * s);
        // SAFETY: each task writes its own blocks of dq, dk_parts, dv_parts and its scratch.
        unsafe {
            gemm_into(ds.as_mut_ptr(), go, vh.t(), false, T::one(), 1);
            ds.set_len(t * s);
            // Softmax backward: dS = P ⊙ (dP − Σ dP ⊙ P), times the 1/√d of the scores.
            for (dp, p) in ds.chunks_mut(s).zip(p.chunks(s)) {
                T::softmax_grad(dp, p, scale);
            }
            let dsm = Mat {
                ptr: ds.as_ptr(),
                ..pm
            };
            gemm_into(dq_ptr.get().add(task * t * d), dsm, kh, false, T::one(), 1);
            gemm_into(
                dk_ptr.get().add(task * s * d),
                dsm.t(),
                qh,
                false,
                T::one(),
                1,
            );
            gemm_into(
                dv_ptr.get().add(task * s * d),
                pm.t(),
                go,
                false,
                T::one(),
                1,
            );
        }
    });
    // SAFETY: every task wrote its blocks in full.
    unsafe {
        dq.set_len(tasks * t * d);
        dk_parts.set_len(tasks * s * d);
        dv_parts.set_len(tasks * s * d);
    }
    drop((sq, sk, sv, sp, sg));
    let sum_heads = |parts: Vec<T>| -> Result<Tensor> {
        let block = s * d;
        let mut out = Vec::with_capacity(b * kvh * block);
        for group in parts.chunks(n_rep * block) {
            let mut acc = group[..block].to_vec();
            for part in group.chunks(block).skip(1) {
                for (a, x) in acc.iter_mut().zip(part) {
                    *a += *x;
                }
            }
            out.extend(acc);
        }
        cpu::tensor_of(out, &[b, kvh, s, d])
    };
    Ok(Some((
        cpu::tensor_of(dq, &[b, h, t, d])?,
        sum_heads(dk_parts)?,
        sum_heads(dv_parts)?,
    )))
}
