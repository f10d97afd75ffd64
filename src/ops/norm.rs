//! RMSNorm with a frozen weight: fused forward, analytic input gradient.

use super::attach_gradient;
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
