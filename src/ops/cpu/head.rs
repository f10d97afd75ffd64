//! The CPU kernel of one chunk of [`crate::ops::position_logprobs`]: the logits by one product, then
//! one parallel sweep per row for the log-sum-exp, the picked log-prob, the mean logit and (when
//! a gradient is needed) the probabilities in place, and `W[target] − probs·W` accumulated into
//! the copied target rows.

use super::simd::RowOps;
use super::{contiguous_slice, gemm_into, slice_of, tensor_of, Mat, SharedMut, ELEMENTWISE_CHUNK};
use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// What the head gives for one chunk of positions.
pub struct Chunk {
    /// `log p(target)` per position, `[len]` in the states' dtype.
    pub logps: Tensor,
    /// The mean logit per position, `[len]` in the states' dtype.
    pub means: Tensor,
    /// Per position, same dtype: the entropy of the next-token distribution, whether the
    /// target is its top token (1/0), and `log Σ p²` (WPO's weights).
    pub entropy: Tensor,
    pub top1: Tensor,
    pub log_sum_sq: Tensor,
    /// `d logp / d h` per position, `[len, h]`, when asked for.
    pub jacobian: Option<Tensor>,
}

/// `states: [len, h]`, `lm_head: [vocab, h]` (contiguous), `targets` of each position. `None`
/// off the fast path.
pub fn chunk<T: RowOps>(
    states: &Tensor,
    lm_head: &Tensor,
    targets: &[u32],
    jacobian: bool,
) -> Result<Option<Chunk>> {
    let (len, hidden) = states.dims2()?;
    let (vocab, head_hidden) = lm_head.dims2()?;
    if head_hidden != hidden || targets.len() != len {
        candle_core::bail!(
            "LM head: {len} states of {hidden} for a head of {head_hidden} and {} targets",
            targets.len()
        );
    }
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("LM head: target token {bad} is outside the vocabulary of {vocab}");
    }
    let (ss, ls) = states.storage_and_layout();
    let (sw, lw) = lm_head.storage_and_layout();
    let (Some(s), Some(w)) = (slice_of::<T>(&ss, ls), contiguous_slice::<T>(&sw, lw)) else {
        return Ok(None);
    };
    let Some(states_mat) = Mat::of_layout(s.as_ptr(), ls) else {
        return Ok(None);
    };
    let w_mat = Mat::row_major(w.as_ptr(), vocab, hidden);
    let threads = rayon::current_num_threads();
    let mut logits: Vec<T> = Vec::with_capacity(len * vocab);
    // SAFETY: `logits` has room for len·vocab elements, all written by the product.
    unsafe {
        gemm_into(
            logits.as_mut_ptr(),
            states_mat,
            w_mat.t(),
            false,
            T::one(),
            threads,
        );
        logits.set_len(len * vocab);
    }
    let inv_vocab = T::one() / T::from(vocab).expect("vocab fits");
    let stats: Vec<[T; 5]> = logits
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .map(|(row, &target)| {
            let picked = row[target as usize];
            let (max, total) = T::max_sum(row);
            // The row is scratch: it becomes the probabilities the Jacobian needs.
            let m = T::exp_shifted_moments(row, max);
            if jacobian {
                T::scale(row, T::one() / m.sum);
            }
            let log_sum = m.sum.ln();
            let top1 = if picked >= max { T::one() } else { T::zero() };
            [
                picked - max - log_sum,
                total * inv_vocab,
                log_sum - m.weighted_shift / m.sum,
                top1,
                m.sum_sq.ln() - log_sum - log_sum,
            ]
        })
        .collect();
    let jacobian = if jacobian {
        // d logp / d h = W[target] − softmax(logits)·W.
        let mut rows: Vec<T> = Vec::with_capacity(len * hidden);
        for &t in targets {
            rows.extend_from_slice(&w[t as usize * hidden..][..hidden]);
        }
        let probs = Mat::row_major(logits.as_ptr(), len, vocab);
        subtract_split_over_vocab(&mut rows, probs, w_mat, threads);
        Some(tensor_of(rows, &[len, hidden])?)
    } else {
        None
    };
    drop((ss, sw));
    let column = |k: usize| tensor_of(stats.iter().map(|s| s[k]).collect(), &[len]);
    Ok(Some(Chunk {
        logps: column(0)?,
        means: column(1)?,
        entropy: column(2)?,
        top1: column(3)?,
        log_sum_sq: column(4)?,
        jacobian,
    }))
}

/// `rows -= probs·w` (`probs: [len, vocab]`, `w: [vocab, hidden]`) with the vocabulary split
/// between the threads, each summing its share into its own buffer: a split by rows or columns
/// would have every thread pack all of one ~100 MB operand, and gemm's own split packs `probs`
/// on one thread.
fn subtract_split_over_vocab<T: RowOps>(rows: &mut [T], probs: Mat<T>, w: Mat<T>, threads: usize) {
    let (len, vocab, hidden) = (probs.rows, probs.cols, w.cols);
    let per = vocab.div_ceil(threads.max(1));
    let shares: Vec<(usize, usize)> = (0..vocab)
        .step_by(per.max(1))
        .map(|start| (start, per.min(vocab - start)))
        .collect();
    let dst = SharedMut(rows.as_mut_ptr());
    let partials: Vec<Vec<T>> = shares
        .par_iter()
        .enumerate()
        .map(|(i, &(start, n))| {
            let p = probs.t().row_block(start, n).t();
            let w = w.row_block(start, n);
            // SAFETY: `rows` (the first share's destination) holds len·hidden initialised
            // elements and only this task writes it; the other shares write their own buffers.
            unsafe {
                if i == 0 {
                    gemm_into(dst.get(), p, w, true, -T::one(), 1);
                    Vec::new()
                } else {
                    let mut part: Vec<T> = Vec::with_capacity(len * hidden);
                    gemm_into(part.as_mut_ptr(), p, w, false, T::one(), 1);
                    part.set_len(len * hidden);
                    part
                }
            }
        })
        .collect();
    for part in partials.iter().skip(1) {
        rows.par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(part.par_chunks(ELEMENTWISE_CHUNK))
            .for_each(|(r, p)| r.iter_mut().zip(p).for_each(|(r, &p)| *r -= p));
    }
}
