//! RMSNorm on CPU: forward, forward fused with the residual add, and the backward fused with
//! the skip connection's gradient, each one parallel pass over rows.

use super::{par_fill, par_fill2, tensor_of, with_contiguous, Real, ELEMENTWISE_CHUNK};
use candle_core::{Result, Tensor, D};

/// The row layout of the norms: elements per row, and elements per parallel chunk (whole rows).
fn row_chunks(x: &Tensor, weight: &Tensor) -> Result<(usize, usize)> {
    let hidden = x.dim(D::Minus1)?;
    if weight.elem_count() != hidden {
        candle_core::bail!(
            "rms_norm: weight has {} elements for rows of {hidden}",
            weight.elem_count()
        );
    }
    Ok((hidden, (ELEMENTWISE_CHUNK / hidden).max(1) * hidden))
}

/// `out = w · v / sqrt(mean(v²) + eps)` for the values `v` of one row.
fn norm_row<T: Real>(
    values: impl Iterator<Item = T> + Clone,
    w: &[T],
    eps: f64,
    out: &mut [std::mem::MaybeUninit<T>],
) {
    let sq = values.clone().fold(T::zero(), |acc, v| acc + v * v);
    let mean = sq * (T::one() / T::from(w.len()).expect("hidden fits"));
    let rs = T::one() / (mean + T::from(eps).expect("finite eps")).sqrt();
    for ((o, v), &w) in out.iter_mut().zip(values).zip(w) {
        o.write(v * rs * w);
    }
}

/// `w · x / sqrt(mean(x²) + eps)` over the last dimension.
pub fn forward<T: Real>(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let (hidden, chunk) = row_chunks(x, weight)?;
    let normed = with_contiguous::<T, _, 2>([x, weight], |[xs, w]| {
        par_fill::<T>(xs.len(), chunk, |c, out| {
            let rows = xs[c * chunk..].chunks(hidden);
            for (out, x) in out.chunks_mut(hidden).zip(rows) {
                norm_row(x.iter().copied(), w, eps, out);
            }
        })
    });
    normed.map(|v| tensor_of(v, x.dims())).transpose()
}

/// `(x + delta, rms_norm(x + delta))` in one pass.
pub fn add_forward<T: Real>(
    x: &Tensor,
    delta: &Tensor,
    weight: &Tensor,
    eps: f64,
) -> Result<Option<(Tensor, Tensor)>> {
    if delta.dims() != x.dims() {
        candle_core::bail!(
            "rms_norm: x {:?} and residual {:?} differ",
            x.dims(),
            delta.dims()
        );
    }
    let (hidden, chunk) = row_chunks(x, weight)?;
    let both = with_contiguous::<T, _, 3>([x, delta, weight], |[xs, ds, w]| {
        par_fill2::<T>(xs.len(), chunk, |c, sums, out| {
            let rows = xs[c * chunk..]
                .chunks(hidden)
                .zip(ds[c * chunk..].chunks(hidden));
            for ((sum, out), (x, d)) in sums
                .chunks_mut(hidden)
                .zip(out.chunks_mut(hidden))
                .zip(rows)
            {
                let values = x.iter().zip(d).map(|(&a, &b)| a + b);
                for (s, v) in sum.iter_mut().zip(values.clone()) {
                    s.write(v);
                }
                norm_row(values, w, eps, out);
            }
        })
    });
    let Some((sum, normed)) = both else {
        return Ok(None);
    };
    Ok(Some((
        tensor_of(sum, x.dims())?,
        tensor_of(normed, x.dims())?,
    )))
}

/// The input gradient of the norm at `x` for the output gradient `grad`, plus `residual`.
pub fn backward_add<T: Real>(
    x: &Tensor,
    weight: &Tensor,
    eps: f64,
    grad: &Tensor,
    residual: &Tensor,
) -> Result<Option<Tensor>> {
    let hidden = x.dim(D::Minus1)?;
    let n = x.elem_count();
    if grad.elem_count() != n || residual.elem_count() != n || weight.elem_count() != hidden {
        candle_core::bail!("rms_norm backward: x, grad, residual and weight sizes differ");
    }
    let eps = T::from(eps).expect("finite eps");
    let inv_h = T::one() / T::from(hidden).expect("hidden fits");
    let rows_per_chunk = (ELEMENTWISE_CHUNK / hidden).max(1);
    let out = with_contiguous::<T, _, 4>([x, weight, grad, residual], |[xs, w, g, res]| {
        par_fill::<T>(n, rows_per_chunk * hidden, |c, chunk| {
            let start = c * rows_per_chunk * hidden;
            for (r, out) in chunk.chunks_mut(hidden).enumerate() {
                let at = start + r * hidden;
                let (x, g, res) = (
                    &xs[at..at + hidden],
                    &g[at..at + hidden],
                    &res[at..at + hidden],
                );
                let (mut sq, mut proj) = (T::zero(), T::zero());
                for i in 0..hidden {
                    sq += x[i] * x[i];
                    proj += g[i] * w[i] * x[i];
                }
                let rs = T::one() / (sq * inv_h + eps).sqrt();
                let coef = proj * inv_h * rs * rs * rs;
                for i in 0..hidden {
                    out[i].write(rs * g[i] * w[i] - x[i] * coef + res[i]);
                }
            }
        })
    });
    out.map(|out| tensor_of(out, x.dims())).transpose()
}
