//! RMSNorm with a frozen weight: fused forward, analytic input gradient.

use super::attach_gradient;
use super::cpu::{self, Real};
use candle_core::{DType, Result, Tensor, D};
use std::sync::Arc;

/// `weight * x / sqrt(mean(x²) + eps)` over the last dimension, as Llama/Mistral compute it.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let detached = x.detach().contiguous()?;
    let fast = match cpu::fast_dtype(&[&detached, weight]) {
        Some(DType::F32) => cpu_forward::<f32>(&detached, weight, eps)?,
        Some(DType::F64) => cpu_forward::<f64>(&detached, weight, eps)?,
        _ => None,
    };
    let y = match fast {
        Some(y) => y,
        // candle's fused kernel has no f64 path.
        None if x.dtype() == DType::F64 => {
            candle_nn::ops::rms_norm_slow(&detached, weight, eps as f32)?
        }
        None => candle_nn::ops::rms_norm(&detached, weight, eps as f32)?,
    };
    let weight = weight.clone();
    attach_gradient(
        x,
        y,
        Arc::new(move |x, _, grad| rms_norm_backward(x, &weight, eps, grad)),
    )
}

/// `x + delta` of the residual stream, in one parallel pass on CPU (candle's element-wise ops
/// split a packed batch over few threads).
pub fn residual_add(x: &Tensor, delta: &Tensor) -> Result<Tensor> {
    match cpu::add(x, delta)? {
        Some(sum) => Ok(sum),
        None => x + delta,
    }
}

/// `(s, rms_norm(s))` for the residual sum `s = x + delta` of untracked tensors, in one pass on
/// CPU.
pub fn add_rms_norm(
    x: &Tensor,
    delta: &Tensor,
    weight: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let fast = match cpu::fast_dtype(&[x, delta, weight]) {
        Some(DType::F32) => cpu_add_forward::<f32>(x, delta, weight, eps)?,
        Some(DType::F64) => cpu_add_forward::<f64>(x, delta, weight, eps)?,
        _ => None,
    };
    match fast {
        Some(both) => Ok(both),
        None => {
            let sum = (x + delta)?;
            let normed = rms_norm(&sum, weight, eps)?;
            Ok((sum, normed))
        }
    }
}

/// The row layout of the CPU norms: elements per row, and rows per parallel chunk.
fn row_chunks(x: &Tensor, weight: &Tensor) -> Result<(usize, usize)> {
    let hidden = x.dim(D::Minus1)?;
    if weight.elem_count() != hidden {
        candle_core::bail!(
            "rms_norm: weight has {} elements for rows of {hidden}",
            weight.elem_count()
        );
    }
    Ok((hidden, (cpu::ELEMENTWISE_CHUNK / hidden).max(1) * hidden))
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

/// [`rms_norm`] as one parallel pass over rows.
fn cpu_forward<T: Real>(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let (hidden, chunk) = row_chunks(x, weight)?;
    let normed = cpu::with_contiguous::<T, _, 2>([x, weight], |[xs, w]| {
        cpu::par_fill::<T>(xs.len(), chunk, |c, out| {
            let rows = xs[c * chunk..].chunks(hidden);
            for (out, x) in out.chunks_mut(hidden).zip(rows) {
                norm_row(x.iter().copied(), w, eps, out);
            }
        })
    });
    normed.map(|v| cpu::tensor_of(v, x.dims())).transpose()
}

/// [`add_rms_norm`] as one parallel pass over rows.
fn cpu_add_forward<T: Real>(
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
    let both = cpu::with_contiguous::<T, _, 3>([x, delta, weight], |[xs, ds, w]| {
        cpu::par_fill2::<T>(xs.len(), chunk, |c, sums, out| {
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
        cpu::tensor_of(sum, x.dims())?,
        cpu::tensor_of(normed, x.dims())?,
    )))
}

/// The input gradient of [`rms_norm`] at `x` for the output gradient `grad`, plus `residual`
/// (the gradient reaching `x` by the skip connection).
pub fn rms_norm_backward_add(
    x: &Tensor,
    weight: &Tensor,
    eps: f64,
    grad: &Tensor,
    residual: &Tensor,
) -> Result<Tensor> {
    let fast = match cpu::fast_dtype(&[x, weight, grad, residual]) {
        Some(DType::F32) => cpu_backward::<f32>(x, weight, eps, grad, residual)?,
        Some(DType::F64) => cpu_backward::<f64>(x, weight, eps, grad, residual)?,
        _ => None,
    };
    match fast {
        Some(dx) => Ok(dx),
        None => rms_norm_backward(x, weight, eps, grad)? + residual,
    }
}

/// One parallel pass over rows of `x`, `grad` and `residual`.
fn cpu_backward<T: Real>(
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
    let rows_per_chunk = (cpu::ELEMENTWISE_CHUNK / hidden).max(1);
    let out = cpu::with_contiguous::<T, _, 4>([x, weight, grad, residual], |[xs, w, g, res]| {
        cpu::par_fill::<T>(n, rows_per_chunk * hidden, |c, chunk| {
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
    let Some(out) = out else {
        return Ok(None);
    };
    Ok(Some(cpu::tensor_of(out, x.dims())?))
}

/// The input gradient of [`rms_norm`] at `x` for the output gradient `grad`.
pub fn rms_norm_backward(x: &Tensor, weight: &Tensor, eps: f64, grad: &Tensor) -> Result<Tensor> {
    // dx = r·(g·w) − x·r³·mean(g·w·x), with r = (mean(x²) + eps)^(-1/2), in f32.
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let gw = grad
        .to_dtype(DType::F32)?
        .broadcast_mul(&weight.to_dtype(DType::F32)?)?;
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let proj = (&gw * &x)?.mean_keepdim(D::Minus1)?;
    let dx = (gw.broadcast_mul(&r)? - x.broadcast_mul(&(proj * r.powf(3.0)?)?)?)?;
    dx.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        d.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn cpu_norm_and_fused_residual_match_candles_composite() {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            let r = |s: (usize, usize, usize)| {
                let t = Tensor::randn(0f32, 1.0, s, &dev).unwrap();
                t.to_dtype(dtype).unwrap()
            };
            let (x, delta) = (r((2, 7, 24)), r((2, 7, 24)));
            let w = r((1, 1, 24)).flatten_all().unwrap();
            let want = candle_nn::ops::rms_norm_slow(&x, &w, 1e-5).unwrap();
            // Tolerance, relative to the largest output: a few roundings in the dtype (f64: also
            // candle's composite takes eps as an f32).
            let scale = max_diff(&want, &want.zeros_like().unwrap());
            let tol = scale * if dtype == DType::F32 { 1e-6 } else { 1e-10 };
            assert!(max_diff(&rms_norm(&x, &w, 1e-5).unwrap(), &want) < tol);
            let (sum, normed) = add_rms_norm(&x, &delta, &w, 1e-5).unwrap();
            let want_sum = (&x + &delta).unwrap();
            assert_eq!(max_diff(&sum, &want_sum), 0.0);
            let want = candle_nn::ops::rms_norm_slow(&want_sum, &w, 1e-5).unwrap();
            assert!(max_diff(&normed, &want) < tol, "{dtype:?}");
        }
    }
}
