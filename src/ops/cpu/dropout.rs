//! Dropout on CPU: the mask drawn element by element inside the pass that applies it, so it is
//! never stored.

use super::{par_fill, tensor_of, with_contiguous, ELEMENTWISE_CHUNK};
use crate::ops::dropout::MaskKey;
use candle_core::{Result, Tensor};

/// `x ⊙ mask` for a contiguous f32 `x`.
pub fn apply(x: &Tensor, key: MaskKey) -> Result<Option<Tensor>> {
    let out = with_contiguous::<f32, _, 1>([x], |[xs]| {
        par_fill::<f32>(xs.len(), ELEMENTWISE_CHUNK, |c, chunk| {
            let start = c * ELEMENTWISE_CHUNK;
            for (i, o) in chunk.iter_mut().enumerate() {
                o.write(xs[start + i] * key.value((start + i) as u64));
            }
        })
    });
    out.map(|out| tensor_of(out, x.dims())).transpose()
}

/// `acc + x ⊙ mask` for contiguous f32 tensors of one shape.
pub fn add(acc: &Tensor, x: &Tensor, key: MaskKey) -> Result<Option<Tensor>> {
    let out = with_contiguous::<f32, _, 2>([acc, x], |[a, xs]| {
        par_fill::<f32>(xs.len(), ELEMENTWISE_CHUNK, |c, chunk| {
            let start = c * ELEMENTWISE_CHUNK;
            for (i, o) in chunk.iter_mut().enumerate() {
                let at = start + i;
                o.write(a[at] + xs[at] * key.value(at as u64));
            }
        })
    });
    out.map(|out| tensor_of(out, x.dims())).transpose()
}
