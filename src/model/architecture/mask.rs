//! Every attention mask, built from one visibility rule: a query at position `q` sees a key at
//! position `k` when `k <= q` and, with a sliding window `w`, `q - k < w` (transformers' rule).
//! Masks are additive biases: 0 where the key is seen, [`HIDDEN`] where it is not.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

/// The bias of a key a query may not see.
pub const HIDDEN: f32 = f32::MIN;

/// Whether a query at position `q` sees a key at position `k`.
pub fn visible(q: usize, k: usize, window: Option<usize>) -> bool {
    k <= q && window.is_none_or(|w| q - k < w)
}

/// A `[queries, keys]` bias (reshaped to `shape`) from `sees(query, key)`.
fn from_rule(
    queries: usize,
    keys: usize,
    shape: &[usize],
    device: &Device,
    sees: impl Fn(usize, usize) -> bool,
) -> Result<Tensor> {
    let mut bias = vec![0f32; queries * keys];
    for i in 0..queries {
        for j in 0..keys {
            if !sees(i, j) {
                bias[i * keys + j] = HIDDEN;
            }
        }
    }
    Ok(Tensor::from_vec(bias, shape, device)?)
}

/// `[batch, 1, seq, seq]` for a right-padded batch: causal, within the window, and blind to
/// padded keys. The causal part is built on the host from the shape alone; the padding comes
/// from `attention_mask` (1 = real token) on the device, with no read back.
pub fn padded_batch(
    window: Option<usize>,
    attention_mask: Option<&Tensor>,
    batch: usize,
    seq: usize,
    device: &Device,
) -> Result<Tensor> {
    let causal = from_rule(seq, seq, &[1, 1, seq, seq], device, |i, j| {
        visible(i, j, window)
    })?;
    let Some(mask) = attention_mask else {
        return Ok(causal.broadcast_as((batch, 1, seq, seq))?.contiguous()?);
    };
    let padded = mask
        .to_dtype(DType::F32)?
        .affine(-1.0, 1.0)?
        .affine(HIDDEN as f64, 0.0)?
        .reshape((batch, 1, 1, seq))?;
    Ok(causal.broadcast_minimum(&padded)?.contiguous()?)
}

/// `[seq, keys]` for `seq` new queries at positions `offset..offset+seq` over the cached and new
/// keys at positions `start..offset+seq` (generation with a KV cache).
pub fn cached(
    window: Option<usize>,
    offset: usize,
    start: usize,
    seq: usize,
    device: &Device,
) -> Result<Tensor> {
    let keys = offset + seq - start;
    from_rule(seq, keys, &[seq, keys], device, |i, j| {
        visible(offset + i, start + j, window)
    })
}

/// `[1, 1, len, len]` for a packed group of slots, each with its position and its line (0: the
/// shared trunk, seen by every line; n > 0: a branch, seen only by itself).
pub fn packed_group(
    window: Option<usize>,
    slots: &[(usize, usize)],
    device: &Device,
) -> Result<Tensor> {
    let len = slots.len();
    from_rule(len, len, &[1, 1, len, len], device, |i, j| {
        let ((q_pos, q_line), (k_pos, k_line)) = (slots[i], slots[j]);
        (k_line == 0 || k_line == q_line) && visible(q_pos, k_pos, window)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(t: &Tensor) -> Vec<Vec<bool>> {
        let rows: Vec<Vec<f32>> = t.to_vec2().unwrap();
        rows.iter()
            .map(|r| r.iter().map(|&b| b == 0.0).collect())
            .collect()
    }

    #[test]
    fn the_cached_mask_is_the_bottom_rows_of_the_full_one() {
        for window in [None, Some(2)] {
            let full = padded_batch(window, None, 1, 5, &Device::Cpu).unwrap();
            let full = seen(&full.reshape((5, 5)).unwrap());
            // Queries 3 and 4 over keys 1..5 (key 0 evicted from the cache).
            let tail = seen(&cached(window, 3, 1, 2, &Device::Cpu).unwrap());
            for (i, row) in tail.iter().enumerate() {
                assert_eq!(row.as_slice(), &full[3 + i][1..], "window {window:?}");
            }
        }
    }

    #[test]
    fn a_branch_sees_the_trunk_and_itself_only() {
        // Trunk at positions 0, 1; branch 1 at 2; branch 2 at 2.
        let slots = [(0, 0), (1, 0), (2, 1), (2, 2)];
        let m = packed_group(None, &slots, &Device::Cpu).unwrap();
        let m = seen(&m.reshape((4, 4)).unwrap());
        assert_eq!(m[2], vec![true, true, true, false]);
        assert_eq!(m[3], vec![true, true, false, true]);
        assert_eq!(m[0], vec![true, false, false, false]);
    }
}
