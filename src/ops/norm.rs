//! RMSNorm with a frozen weight: the plain norm, the norm fused with the residual add before
//! it, and the input gradient fused with the skip connection's. Generic path: candle's fused
//! forward (the composite in f64, which it lacks) and a tensor-op backward in f32.

use super::attach_gradient;
use super::{cpu, Kernels};
use candle_core::{DType, Result, Tensor, D};
use std::sync::Arc;

/// `weight * x / sqrt(mean(x²) + eps)` over the last dimension, as Llama/Mistral compute it.
pub fn rms_norm(kernels: Kernels, x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let detached = x.detach().contiguous()?;
    let y = rms_norm_forward(kernels, &detached, weight, eps)?;
    let weight = weight.clone();
    attach_gradient(
        x,
        y,
        Arc::new(move |x, _, grad| rms_norm_backward(x, &weight, eps, grad)),
    )
}

/// [`rms_norm`] of an untracked `x`.
fn rms_norm_forward(kernels: Kernels, x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let fast = match kernels.cpu_dtype(&[x, weight]) {
        Some(DType::F32) => cpu::norm::forward::<f32>(x, weight, eps)?,
        Some(DType::F64) => cpu::norm::forward::<f64>(x, weight, eps)?,
        _ => None,
    };
    match fast {
        Some(y) => Ok(y),
        // candle's fused kernel has no f64 path.
        None if x.dtype() == DType::F64 => candle_nn::ops::rms_norm_slow(x, weight, eps as f32),
        None if x.dtype() == DType::F32 => candle_nn::ops::rms_norm(x, weight, eps as f32),
        // bf16/f16 as transformers does it: normalised in f32, rounded, then scaled.
        None => {
            let ones = Tensor::ones(weight.elem_count(), DType::F32, x.device())?;
            let normed = candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?, &ones, eps as f32)?;
            normed.to_dtype(x.dtype())?.broadcast_mul(weight)
        }
    }
}

/// `x + delta` of the residual stream (one parallel pass on CPU: candle's element-wise ops
/// split a packed batch over few threads).
pub fn residual_add(kernels: Kernels, x: &Tensor, delta: &Tensor) -> Result<Tensor> {
    if kernels.cpu_dtype(&[x, delta]).is_some() {
        if let Some(sum) = cpu::add(x, delta)? {
            return Ok(sum);
        }
    }
    x + delta
}

/// `(s, rms_norm(s))` for the residual sum `s = x + delta` of untracked tensors.
pub fn add_rms_norm(
    kernels: Kernels,
    x: &Tensor,
    delta: &Tensor,
    weight: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let fast = match kernels.cpu_dtype(&[x, delta, weight]) {
        Some(DType::F32) => cpu::norm::add_forward::<f32>(x, delta, weight, eps)?,
        Some(DType::F64) => cpu::norm::add_forward::<f64>(x, delta, weight, eps)?,
        _ => None,
    };
    match fast {
        Some(both) => Ok(both),
        None => {
            let sum = (x + delta)?.contiguous()?;
            let normed = rms_norm_forward(kernels, &sum, weight, eps)?;
            Ok((sum, normed))
        }
    }
}

/// The input gradient of [`rms_norm`] at `x` for the output gradient `grad`, plus `residual`
/// (the gradient reaching `x` by the skip connection).
pub fn rms_norm_backward_add(
    kernels: Kernels,
    x: &Tensor,
    weight: &Tensor,
    eps: f64,
    grad: &Tensor,
    residual: &Tensor,
) -> Result<Tensor> {
    let fast = match kernels.cpu_dtype(&[x, weight, grad, residual]) {
        Some(DType::F32) => cpu::norm::backward_add::<f32>(x, weight, eps, grad, residual)?,
        Some(DType::F64) => cpu::norm::backward_add::<f64>(x, weight, eps, grad, residual)?,
        _ => None,
    };
    match fast {
        Some(dx) => Ok(dx),
        None => rms_norm_backward(x, weight, eps, grad)? + residual,
    }
}

/// The input gradient of [`rms_norm`] at `x` for the output gradient `grad` (tensor ops, f32 or
/// f64 inside, the result in `x`'s dtype).
pub fn rms_norm_backward(x: &Tensor, weight: &Tensor, eps: f64, grad: &Tensor) -> Result<Tensor> {
    // dx = r·(g·w) − x·r³·mean(g·w·x), with r = (mean(x²) + eps)^(-1/2).
    let dtype = x.dtype();
    let work = super::work_dtype(dtype);
    let x = x.to_dtype(work)?;
    let gw = grad
        .to_dtype(work)?
        .broadcast_mul(&weight.to_dtype(work)?)?;
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let proj = (&gw * &x)?.mean_keepdim(D::Minus1)?;
    let dx = (gw.broadcast_mul(&r)? - x.broadcast_mul(&(proj * r.powf(3.0)?)?)?)?;
    dx.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    const AUTO: Kernels = Kernels::Auto;

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
            assert!(max_diff(&rms_norm(AUTO, &x, &w, 1e-5).unwrap(), &want) < tol);
            let (sum, normed) = add_rms_norm(AUTO, &x, &delta, &w, 1e-5).unwrap();
            let want_sum = (&x + &delta).unwrap();
            assert_eq!(max_diff(&sum, &want_sum), 0.0);
            let want = candle_nn::ops::rms_norm_slow(&want_sum, &w, 1e-5).unwrap();
            assert!(max_diff(&normed, &want) < tol, "{dtype:?}");
        }
    }
}
