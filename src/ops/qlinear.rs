//! A linear layer over a quantized (GGML) frozen weight: candle's quantized matmul forward,
//! and a backward that reaches the input through the dequantized weight.
//!
//! `QMatMul::forward` records no backward at all, so a LoRA below a quantized projection would
//! silently get no gradient. Here the forward runs `<QTensor as CustomOp1>` (the same kernels
//! `QMatMul` uses, CPU and CUDA) on a detached input, and [`attach_gradient`] gives it the input
//! gradient `grad @ dequantize(W)`. The weight is dequantized on the fly, in the backward only,
//! and never receives a gradient.

use super::attach_gradient;
use candle_core::quantized::QTensor;
use candle_core::{Result, Tensor, D};
use std::sync::Arc;

/// `x @ W.T` for `x: [.., in]` and a quantized `W: [out, in]`, with an input gradient only.
///
/// The output has `x`'s dtype. The quantized kernels take f32, f16 or bf16 input.
pub fn quantized_linear(x: &Tensor, weight: &Arc<QTensor>) -> Result<Tensor> {
    let (out_features, in_features) = weight.shape().dims2()?;
    if x.dim(D::Minus1)? != in_features {
        candle_core::bail!(
            "quantized linear: input has {} features, weight expects {in_features}",
            x.dim(D::Minus1)?
        );
    }
    let dtype = x.dtype();
    let mut shape = x.dims()[..x.rank() - 1].to_vec();
    shape.push(out_features);
    // The kernels want a contiguous input of rank >= 2.
    let flat = x.detach().reshape(((), in_features))?.contiguous()?;
    let y = flat
        .apply_op1_no_bwd(weight.as_ref())?
        .to_dtype(dtype)?
        .reshape(shape)?;
    let weight = weight.clone();
    attach_gradient(
        x,
        y,
        Arc::new(move |_, _, grad| {
            let lead = grad.dims()[..grad.rank() - 1].to_vec();
            let flat = grad.reshape(((), out_features))?.contiguous()?;
            let w = weight.dequantize(grad.device())?.to_dtype(grad.dtype())?;
            let dx = flat.matmul(&w)?;
            let mut shape = lead;
            shape.push(in_features);
            dx.reshape(shape)
        }),
    )
}
