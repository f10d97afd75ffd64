//! RMSNorm with a frozen weight: fused forward, analytic input gradient.

use super::attach_gradient;
use super::cpu::{self, Real};
use candle_core::{DType, Result, Tensor, D};
use std::sync::Arc;

/// `weight * x / sqrt(mean(x²) + eps)` over the last dimension, as Llama/Mistral compute it.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let detached = x.detach().contiguous()?;
    let y = match x.dtype() {
        // The fused kernel has no f64 path; f64 is used by gradient checks.
        DType::F64 => candle_nn::ops::rms_norm_slow(&detached, weight, eps as f32)?,
        _ => candle_nn::ops::rms_norm(&detached, weight, eps as f32)?,
    };
    let weight = weight.clone();
    attach_gradient(
        x,
        y,
        Arc::new(move |x, _, grad| rms_norm_backward(x, &weight, eps, grad)),
    )
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
