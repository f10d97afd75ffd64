//! The CPU kernel of one chunk of [`super::position_logprobs`]: the logits by one product, then
//! one parallel sweep per row for the log-sum-exp, the picked log-prob, the mean logit and (when
//! a gradient is needed) the probabilities in place, and `W[target] − probs·W` accumulated into
//! the copied target rows.

use super::cpu::{self, gemm_into, Mat};
use super::simd::RowOps;
use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// What the head gives for one chunk of positions.
pub struct Chunk {
    /// `log p(target)` per position, `[len]` in the states' dtype.
    pub logps: Tensor,
    /// The mean logit per position, `[len]` in the states' dtype.
    pub means: Tensor,
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
    let vocab = lm_head.dim(0)?;
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("LM head: target token {bad} is outside the vocabulary of {vocab}");
    }
    let (ss, ls) = states.storage_and_layout();
    let (sw, lw) = lm_head.storage_and_layout();
    let (Some(s), Some(w)) = (
        cpu::slice_of::<T>(&ss, ls),
        cpu::contiguous_slice::<T>(&sw, lw),
    ) else {
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
    let stats: Vec<(T, T)> = logits
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .map(|(row, &target)| {
            let picked = row[target as usize];
            let (max, total) = T::max_sum(row);
            // The row is scratch: it becomes the probabilities the Jacobian needs.
            let sum = T::exp_shifted(row, max);
            if jacobian {
                T::scale(row, T::one() / sum);
            }
            (picked - max - sum.ln(), total * inv_vocab)
        })
        .collect();
    let jacobian = if jacobian {
        // d logp / d h = W[target] − softmax(logits)·W.
        let mut rows: Vec<T> = Vec::with_capacity(len * hidden);
        for &t in targets {
            rows.extend_from_slice(&w[t as usize * hidden..][..hidden]);
        }
        let probs = Mat::row_major(logits.as_ptr(), len, vocab);
        let minus_one = -T::one();
        // SAFETY: `rows` holds len·hidden initialised elements; the operands are alive.
        unsafe { gemm_into(rows.as_mut_ptr(), probs, w_mat, true, minus_one, threads) };
        Some(cpu::tensor_of(rows, &[len, hidden])?)
    } else {
        None
    };
    drop((ss, sw));
    let (logps, means): (Vec<T>, Vec<T>) = stats.into_iter().unzip();
    Ok(Some(Chunk {
        logps: cpu::tensor_of(logps, &[len])?,
        means: cpu::tensor_of(means, &[len])?,
        jacobian,
    }))
}
