//! Rotary position embeddings (the rotate-half layout of Hugging Face Llama/Mistral).

use super::attach_gradient;
use candle_core::{Result, Tensor};
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
pub fn rope_thd(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    candle_nn::rotary_emb::rope_thd(&x.contiguous()?, cos, sin)
}

/// The input gradient of [`rope_thd`] for the output gradient `grad`.
pub fn rope_thd_backward(grad: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    candle_nn::rotary_emb::rope_thd(&grad.contiguous()?, cos, &sin.neg()?)
}
