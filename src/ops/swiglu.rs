//! SwiGLU's gate, `silu(gate) · up`, as one op: it keeps its two inputs only (candle's
//! composite also keeps `silu(gate)` and the product for its backward).

use super::attach_gradient3;
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// `silu(gate) · up`, element-wise; `gate` and `up` of the same shape.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let out = (gate.detach().silu()? * up.detach())?;
    // The op's third input is unused: a scalar stand-in.
    let unused = Tensor::zeros((), gate.dtype(), gate.device())?;
    attach_gradient3(
        [gate, up, &unused],
        out,
        Arc::new(|[gate, up, _], grad| {
            let (dgate, dup) = swiglu_backward(gate, up, grad)?;
            Ok([Some(dgate), Some(dup), None])
        }),
    )
}

/// The gradients of [`swiglu`] with respect to `gate` and `up` for the output gradient `grad`.
pub fn swiglu_backward(gate: &Tensor, up: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
    // silu(g) = g·σ(g); silu'(g) = σ(g)·(1 + g·(1 − σ(g))).
    let sig = candle_nn::ops::sigmoid(gate)?;
    let silu = (gate * &sig)?;
    let dsilu = (&sig * ((gate * (1.0 - &sig)?)? + 1.0)?)?;
    let dgate = ((grad * up)? * dsilu)?;
    let dup = (grad * silu)?;
    Ok((dgate, dup))
}
