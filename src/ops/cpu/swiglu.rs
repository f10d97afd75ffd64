//! SwiGLU on CPU: forward and backward as single parallel passes of the vectorised row
//! primitives.

use super::simd::RowOps;
use super::{par_fill, par_fill2, tensor_of, with_contiguous, ELEMENTWISE_CHUNK};
use candle_core::{Result, Tensor};

/// `silu(gate) · up`.
pub fn forward<T: RowOps>(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    if gate.dims() != up.dims() {
        candle_core::bail!(
            "swiglu: gate {:?} and up {:?} differ",
            gate.dims(),
            up.dims()
        );
    }
    let out = with_contiguous::<T, _, 2>([gate, up], |[g, u]| {
        par_fill(g.len(), ELEMENTWISE_CHUNK, |i, chunk| {
            let range = i * ELEMENTWISE_CHUNK..i * ELEMENTWISE_CHUNK + chunk.len();
            T::swiglu(chunk, &g[range.clone()], &u[range]);
        })
    });
    out.map(|out| tensor_of(out, gate.dims())).transpose()
}

/// The gradients with respect to `gate` and `up` for the output gradient `grad`.
pub fn backward<T: RowOps>(
    gate: &Tensor,
    up: &Tensor,
    grad: &Tensor,
) -> Result<Option<(Tensor, Tensor)>> {
    let grads = with_contiguous::<T, _, 3>([gate, up, grad], |[g, u, d]| {
        if g.len() != u.len() || g.len() != d.len() {
            candle_core::bail!("swiglu backward: gate, up and grad sizes differ");
        }
        Ok(par_fill2(g.len(), ELEMENTWISE_CHUNK, |i, cg, cu| {
            let range = i * ELEMENTWISE_CHUNK..i * ELEMENTWISE_CHUNK + cg.len();
            T::swiglu_grad(cg, cu, &g[range.clone()], &u[range.clone()], &d[range]);
        }))
    });
    let Some((dgate, dup)) = grads.transpose()? else {
        return Ok(None);
    };
    Ok(Some((
        tensor_of(dgate, gate.dims())?,
        tensor_of(dup, gate.dims())?,
    )))
}
