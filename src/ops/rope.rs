//! Rotary position embeddings (the rotate-half layout of Hugging Face Llama/Mistral). Generic
//! path: candle's fused rotation (CUDA and CPU kernels for every float dtype); the backward is
//! the rotation by the opposite angle.

use super::attach_gradient;
use super::{cpu, Kernels};
use candle_core::{DType, Result, Tensor};
use std::sync::Arc;

/// Rotates `x: [batch, heads, seq, head_dim]` by the angles whose `cos`/`sin` are `[seq, head_dim/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let y = candle_nn::rotary_emb::rope(&x.detach().contiguous()?, cos, sin)?;
    let (cos, sin) = (cos.clone(), sin.clone());
    attach_gradient(
        x,
        y,
        Arc::new(move |_, _, grad| rope_backward(grad, &cos, &sin)),
    )
}

/// The input gradient of [`rope`] for the output gradient `grad`.
pub fn rope_backward(grad: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    // A rotation's transpose is the rotation by the opposite angle.
    candle_nn::rotary_emb::rope(&grad.contiguous()?, cos, &sin.neg()?)
}

/// [`rope`] for the projections' layout `x: [batch, seq, heads, head_dim]`, on an untracked
/// tensor.
pub fn rope_thd(kernels: Kernels, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    rotate_thd(kernels, x, cos, sin, false)
}

/// The input gradient of [`rope_thd`] for the output gradient `grad`.
pub fn rope_thd_backward(
    kernels: Kernels,
    grad: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Tensor> {
    rotate_thd(kernels, grad, cos, sin, true)
}

fn rotate_thd(
    kernels: Kernels,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    inverse: bool,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let fast = match kernels.cpu_dtype(&[&x, cos, sin]) {
        Some(DType::F32) => cpu::rope::rotate::<f32>(&x, cos, sin, inverse)?,
        Some(DType::F64) => cpu::rope::rotate::<f64>(&x, cos, sin, inverse)?,
        _ => None,
    };
    match fast {
        Some(y) => Ok(y),
        None if inverse => candle_nn::rotary_emb::rope_thd(&x, cos, &sin.neg()?),
        None => candle_nn::rotary_emb::rope_thd(&x, cos, sin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn inputs(dtype: DType) -> (Tensor, Tensor, Tensor) {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 3, 8), &dev).unwrap();
        let angles = Tensor::randn(0f32, 2.0, (7, 4), &dev).unwrap();
        // Tables computed in the test's dtype, so that cos² + sin² = 1 to its precision.
        let angles = angles.to_dtype(dtype).unwrap();
        (
            x.to_dtype(dtype).unwrap(),
            angles.cos().unwrap(),
            angles.sin().unwrap(),
        )
    }

    #[test]
    fn cpu_rotation_matches_candles_kernel() {
        for dtype in [DType::F32, DType::F64] {
            let (x, cos, sin) = inputs(dtype);
            let (c5, s5) = (cos.narrow(0, 0, 5).unwrap(), sin.narrow(0, 0, 5).unwrap());
            // candle's op has no f64 CPU path: compare in f32.
            let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want = candle_nn::rotary_emb::rope_thd(&f32(&x), &f32(&c5), &f32(&s5)).unwrap();
            let got = f32(&rope_thd(Kernels::Auto, &x, &cos, &sin).unwrap());
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            // Tolerance: f32 rounding of a two-term sum of unit-size values.
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-6, "{dtype:?}: {diff}");
        }
    }

    #[test]
    fn backward_is_the_inverse_rotation() {
        let (x, cos, sin) = inputs(DType::F64);
        let back = rope_thd_backward(
            Kernels::Auto,
            &rope_thd(Kernels::Auto, &x, &cos, &sin).unwrap(),
            &cos,
            &sin,
        )
        .unwrap();
        let diff = (back - &x).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12, "{diff}");
    }
}
