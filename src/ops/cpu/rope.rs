//! Rotary embedding on CPU in the projections' `[batch, seq, heads, head_dim]` layout: one
//! parallel pass over the `batch·seq` rows (candle's kernel splits by batch row only, one
//! thread for a packed batch).

use super::{par_fill, tensor_of, with_contiguous, Real, ELEMENTWISE_CHUNK};
use candle_core::{Result, Tensor};

/// `x` rotated by the angles of `cos`/`sin` (`[≥ seq, head_dim / 2]`), or by their opposite
/// with `inverse`; `None` when the tables are not that shared pair.
pub fn rotate<T: Real>(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    inverse: bool,
) -> Result<Option<Tensor>> {
    let (_, seq, heads, d) = x.dims4()?;
    let half = d / 2;
    if cos.rank() != 2 || cos.dims() != sin.dims() || cos.dim(1)? != half || cos.dim(0)? < seq {
        return Ok(None);
    }
    if 2 * half != d {
        candle_core::bail!("rope: head_dim {d} is odd");
    }
    let row = heads * d;
    let rows_per_chunk = (ELEMENTWISE_CHUNK / row).max(1);
    let out = with_contiguous::<T, _, 3>([x, cos, sin], |[xs, cos, sin]| {
        par_fill::<T>(xs.len(), rows_per_chunk * row, |c, chunk| {
            let first = c * rows_per_chunk;
            for (r, out) in chunk.chunks_mut(row).enumerate() {
                let at = (first + r) * row;
                let pos = (first + r) % seq;
                let (c, s) = (
                    &cos[pos * half..(pos + 1) * half],
                    &sin[pos * half..(pos + 1) * half],
                );
                for (o, x) in out.chunks_mut(d).zip(xs[at..at + row].chunks(d)) {
                    rotate_head(o, x, c, s, inverse);
                }
            }
        })
    });
    out.map(|out| tensor_of(out, x.dims())).transpose()
}

/// `out = x·cos + rotate_half(x)·sin` for one head (`sin` negated for the inverse rotation).
#[inline]
fn rotate_head<T: Real>(
    out: &mut [std::mem::MaybeUninit<T>],
    x: &[T],
    cos: &[T],
    sin: &[T],
    inverse: bool,
) {
    let half = cos.len();
    let (x1, x2) = x.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    let sign = if inverse { -T::one() } else { T::one() };
    for i in 0..half {
        let s = sign * sin[i];
        o1[i].write(x1[i] * cos[i] - x2[i] * s);
        o2[i].write(x2[i] * cos[i] + x1[i] * s);
    }
}
