//! SwiGLU's gate, `silu(gate) · up`, as one op: it keeps its two inputs only (candle's
//! composite also keeps `silu(gate)` and the product for its backward).

use super::attach_gradient3;
use super::cpu::{self, ELEMENTWISE_CHUNK};
use super::simd::RowOps;
use candle_core::{DType, Result, Tensor};
use std::sync::Arc;

/// `silu(gate) · up`, element-wise; `gate` and `up` of the same shape.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let out = swiglu_forward(&gate.detach(), &up.detach())?;
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

/// [`swiglu`] on untracked tensors.
pub fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let fast = match cpu::fast_dtype(&[gate, up]) {
        Some(DType::F32) => cpu_forward::<f32>(gate, up)?,
        Some(DType::F64) => cpu_forward::<f64>(gate, up)?,
        _ => None,
    };
    match fast {
        Some(out) => Ok(out),
        None => gate.silu()? * up,
    }
}

/// The gradients of [`swiglu`] with respect to `gate` and `up` for the output gradient `grad`.
pub fn swiglu_backward(gate: &Tensor, up: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
    let fast = match cpu::fast_dtype(&[gate, up, grad]) {
        Some(DType::F32) => cpu_backward::<f32>(gate, up, grad)?,
        Some(DType::F64) => cpu_backward::<f64>(gate, up, grad)?,
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

fn cpu_forward<T: RowOps>(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    if gate.dims() != up.dims() {
        candle_core::bail!(
            "swiglu: gate {:?} and up {:?} differ",
            gate.dims(),
            up.dims()
        );
    }
    let out = cpu::with_contiguous::<T, _, 2>([gate, up], |[g, u]| {
        cpu::par_fill(g.len(), ELEMENTWISE_CHUNK, |i, chunk| {
            let range = i * ELEMENTWISE_CHUNK..i * ELEMENTWISE_CHUNK + chunk.len();
            T::swiglu(chunk, &g[range.clone()], &u[range]);
        })
    });
    out.map(|out| cpu::tensor_of(out, gate.dims())).transpose()
}

fn cpu_backward<T: RowOps>(
    gate: &Tensor,
    up: &Tensor,
    grad: &Tensor,
) -> Result<Option<(Tensor, Tensor)>> {
    let grads = cpu::with_contiguous::<T, _, 3>([gate, up, grad], |[g, u, d]| {
        if g.len() != u.len() || g.len() != d.len() {
            candle_core::bail!("swiglu backward: gate, up and grad sizes differ");
        }
        Ok(cpu::par_fill2(g.len(), ELEMENTWISE_CHUNK, |i, cg, cu| {
            let range = i * ELEMENTWISE_CHUNK..i * ELEMENTWISE_CHUNK + cg.len();
            T::swiglu_grad(cg, cu, &g[range.clone()], &u[range.clone()], &d[range]);
        }))
    });
    let Some((dgate, dup)) = grads.transpose()? else {
        return Ok(None);
    };
    Ok(Some((
        cpu::tensor_of(dgate, gate.dims())?,
        cpu::tensor_of(dup, gate.dims())?,
    )))
}
