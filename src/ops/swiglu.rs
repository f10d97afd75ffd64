//! SwiGLU's gate, `silu(gate) · up`, as one op: it keeps its two inputs only (candle's
//! composite also keeps `silu(gate)` and the product for its backward). Generic path: candle's
//! silu and products, the backward in the activations' dtype.

use super::attach_gradient3;
use super::{cpu, Kernels};
use candle_core::{DType, Result, Tensor};
use std::sync::Arc;

/// `silu(gate) · up`, element-wise; `gate` and `up` of the same shape.
pub fn swiglu(kernels: Kernels, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let out = swiglu_forward(kernels, &gate.detach(), &up.detach())?;
    // The op's third input is unused: a scalar stand-in.
    let unused = Tensor::zeros((), gate.dtype(), gate.device())?;
    attach_gradient3(
        [gate, up, &unused],
        out,
        Arc::new(move |[gate, up, _], grad| {
            let (dgate, dup) = swiglu_backward(kernels, gate, up, grad)?;
            Ok([Some(dgate), Some(dup), None])
        }),
    )
}

/// [`swiglu`] on untracked tensors.
pub fn swiglu_forward(kernels: Kernels, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let fast = match kernels.cpu_dtype(&[gate, up]) {
        Some(DType::F32) => cpu::swiglu::forward::<f32>(gate, up)?,
        Some(DType::F64) => cpu::swiglu::forward::<f64>(gate, up)?,
        _ => None,
    };
    match fast {
        Some(out) => Ok(out),
        None => gate.silu()? * up,
    }
}

/// The gradients of [`swiglu`] with respect to `gate` and `up` for the output gradient `grad`.
pub fn swiglu_backward(
    kernels: Kernels,
    gate: &Tensor,
    up: &Tensor,
    grad: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let fast = match kernels.cpu_dtype(&[gate, up, grad]) {
        Some(DType::F32) => cpu::swiglu::backward::<f32>(gate, up, grad)?,
        Some(DType::F64) => cpu::swiglu::backward::<f64>(gate, up, grad)?,
        _ => None,
    };
    if let Some(grads) = fast {
        return Ok(grads);
    }
    // silu(g) = g·σ(g); silu'(g) = σ(g)·(1 + g·(1 − σ(g))).
    let sig = candle_nn::ops::sigmoid(gate)?;
    let silu = (gate * &sig)?;
    let dsilu = (&sig * ((gate * (1.0 - &sig)?)? + 1.0)?)?;
    let dgate = ((grad * up)? * dsilu)?;
    let dup = (grad * silu)?;
    Ok((dgate, dup))
}
