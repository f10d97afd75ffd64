//! Softmax over the last dimension: fused forward, analytic gradient.

use super::attach_gradient;
use candle_core::{Result, Tensor, D};
use std::sync::Arc;

pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let y = candle_nn::ops::softmax_last_dim(&x.detach().contiguous()?)?;
    attach_gradient(
        x,
        y,
        Arc::new(|_, y, grad| {
            let dot = (grad * y)?.sum_keepdim(D::Minus1)?;
            y * grad.broadcast_sub(&dot)?
        }),
    )
}
