//! A frozen projection with its LoRA branches as one differentiable op:
//! `y = W x + Σ scale · B(A(dropout(x)))`.
//!
//! Built from candle ops, the branch would keep five `[tokens, out]` tensors per projection for
//! the backward (frozen output, its copy, B's output, its scaled form, the sum). Here the
//! forward runs untracked and the backward is written out, so only the output and the small
//! `[tokens, r]` A-projection of the trained branch are kept.

use anyhow::Result;
use candle_core::{DType, Tensor};
use std::sync::Arc;

use super::frozen::FrozenWeight;
use super::lora::{dropout_mask, Dropout, LoraPair};
use crate::ops::{attach_gradient3, matmul_t};

/// One LoRA branch of a projection.
pub struct Branch<'a> {
    pub pair: &'a LoraPair,
    pub scale: f64,
    pub dropout: Option<Dropout>,
    /// Gradients for A and B (the adapter being trained, in a pass that records).
    pub trained: bool,
}

/// What the backward needs of a branch.
struct Saved {
    a: Tensor,
    b: Tensor,
    scale: f64,
    mask: Option<Tensor>,
    /// `dropout(x) @ Aᵀ`, `[n, r]` f32 (trained branch only).
    xa: Option<Tensor>,
}

/// `x: [.., in]` → `[.., out]` in `x`'s dtype. At most one branch may be `trained`.
pub fn lora_projection(x: &Tensor, weight: &FrozenWeight, branches: &[Branch]) -> Result<Tensor> {
    let (out_features, in_features) = weight.dims2()?;
    let dtype = x.dtype();
    let lead = x.dims()[..x.rank() - 1].to_vec();
    let n: usize = lead.iter().product();
    let flat = x.detach().reshape((n, in_features))?;
    let mut y = weight.forward(&flat)?;
    let mut saved = Vec::with_capacity(branches.len());
    let mut trained = None;
    for branch in branches {
        let mut h = flat.to_dtype(DType::F32)?;
        let mask = match branch.dropout.filter(|d| d.p > 0.0) {
            Some(d) => Some(dropout_mask(&[n, in_features], d, x.device())?),
            None => None,
        };
        if let Some(m) = &mask {
            h = (h * m)?;
        }
        let (a, b) = (
            branch.pair.a.as_tensor().detach(),
            branch.pair.b.as_tensor().detach(),
        );
        let xa = matmul_t(&h, &a)?;
        let delta = (matmul_t(&xa, &b)? * branch.scale)?.to_dtype(dtype)?;
        y = (y + delta)?;
        if branch.trained {
            trained = Some(branch.pair);
        }
        saved.push(Saved {
            a,
            b,
            scale: branch.scale,
            mask,
            xa: branch.trained.then_some(xa),
        });
    }
    let mut shape = lead.clone();
    shape.push(out_features);
    let y = y.reshape(shape)?;
    // Untracked stand-ins keep the op's arity when nothing is trained here.
    let (a_in, b_in) = match trained {
        Some(pair) => (pair.a.as_tensor().clone(), pair.b.as_tensor().clone()),
        None => (
            Tensor::zeros(1, DType::F32, x.device())?,
            Tensor::zeros(1, DType::F32, x.device())?,
        ),
    };
    let weight = weight.clone();
    let y = attach_gradient3(
        [x, &a_in, &b_in],
        y,
        Arc::new(move |[x, _, _], grad| {
            let g = grad.reshape((n, out_features))?;
            let g32 = g.to_dtype(DType::F32)?;
            let mut dx = weight.input_grad(&g)?.to_dtype(DType::F32)?;
            let (mut da, mut db) = (None, None);
            for s in &saved {
                // [n, r]: the gradient reaching A's output.
                let gb = (g32.matmul(&s.b)? * s.scale)?;
                let mut dh = gb.matmul(&s.a)?;
                if let Some(m) = &s.mask {
                    dh = (dh * m)?;
                }
                dx = (dx + dh)?;
                if let Some(xa) = &s.xa {
                    let mut h = x.reshape((n, in_features))?.to_dtype(DType::F32)?;
                    if let Some(m) = &s.mask {
                        h = (h * m)?;
                    }
                    da = Some(gb.t()?.matmul(&h)?);
                    db = Some((g32.t()?.matmul(xa)? * s.scale)?);
                }
            }
            let dx = dx.to_dtype(x.dtype())?.reshape(x.dims())?;
            Ok([Some(dx), da, db])
        }),
    )?;
    Ok(y)
}
