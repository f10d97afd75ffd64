//! A frozen projection with its LoRA branches as one differentiable op:
//! `y = W x + Σ scale · B(A(dropout(x)))`.
//!
//! Built from candle ops, the branch would keep five `[tokens, out]` tensors per projection for
//! the backward (frozen output, its copy, B's output, its scaled form, the sum). Here the
//! forward runs untracked and the backward is written out, so only the output and the small
//! `[tokens, r]` A-projection of the trained branch are kept.

use anyhow::Result;
use candle_core::{DType, Tensor, Var};
use std::sync::Arc;

use crate::model::frozen::FrozenWeight;
use crate::model::lora::{add_dropped, apply_dropout, Dropout, LoraPair};
use crate::ops::{attach_gradient3, matmul_sum, matmul_sum_on, matmul_sum_serial, Kernels};
use rayon::prelude::*;

/// One LoRA branch of a projection.
pub struct Branch<'a> {
    pub pair: &'a LoraPair,
    pub scale: f64,
    pub dropout: Option<Dropout>,
    /// Gradients for A and B (the adapter being trained, in a pass that records).
    pub trained: bool,
}

/// What the backward of a projection needs besides its input.
pub struct ProjectionSaved {
    weight: FrozenWeight,
    branches: Vec<BranchSaved>,
}

struct BranchSaved {
    a: Tensor,
    b: Tensor,
    scale: f64,
    /// Drawn again in the backward: the mask is a function of the seed.
    dropout: Option<Dropout>,
    /// The trained factors `(A, B)` and `dropout(x) @ Aᵀ` (`[n, r]` f32).
    trained: Option<(Var, Var, Tensor)>,
}

/// The gradients of A and B of the trained branch: `(A, dA, B, dB)`.
pub type FactorGrads = (Var, Tensor, Var, Tensor);

/// `x: [.., in]` → `[.., out]` in `x`'s dtype. At most one branch may be `trained`.
pub fn lora_projection(
    kernels: Kernels,
    x: &Tensor,
    weight: &FrozenWeight,
    branches: &[Branch],
) -> Result<Tensor> {
    let (y, saved) = lora_forward(kernels, &x.detach(), weight, branches)?;
    let trained = branches.iter().find(|b| b.trained).map(|b| b.pair);
    // Untracked stand-ins keep the op's arity when nothing is trained here.
    let (a_in, b_in) = match trained {
        Some(pair) => (pair.a.as_tensor().clone(), pair.b.as_tensor().clone()),
        None => (
            Tensor::zeros(1, DType::F32, x.device())?,
            Tensor::zeros(1, DType::F32, x.device())?,
        ),
    };
    Ok(attach_gradient3(
        [x, &a_in, &b_in],
        y,
        Arc::new(move |[x, _, _], grad| {
            let (dx, trained) =
                lora_backward(kernels, &saved, x, grad).map_err(candle_core::Error::wrap)?;
            let (da, db) = trained.map_or((None, None), |(_, da, _, db)| (Some(da), Some(db)));
            Ok([Some(dx), da, db])
        }),
    )?)
}

/// The weight when it and the activations are f32 and dense: the case where the frozen product
/// and the LoRA products (f32) accumulate into one output.
fn dense_f32(weight: &FrozenWeight, activations: DType) -> Option<&Tensor> {
    match weight {
        FrozenWeight::Dense(w) if w.dtype() == DType::F32 && activations == DType::F32 => Some(w),
        _ => None,
    }
}

/// [`lora_projection`] on an untracked `x`: the output and what [`lora_backward`] needs.
pub fn lora_forward(
    kernels: Kernels,
    x: &Tensor,
    weight: &FrozenWeight,
    branches: &[Branch],
) -> Result<(Tensor, ProjectionSaved)> {
    let mut done = lora_forward_shared(kernels, x, &[(weight, branches)])?;
    Ok(done.remove(0))
}

/// [`lora_forward`] of several projections of the same input `x` (q, k and v; gate and up):
/// the branches' small A-products run side by side, then each projection's accumulated product.
pub fn lora_forward_shared(
    kernels: Kernels,
    x: &Tensor,
    projections: &[(&FrozenWeight, &[Branch])],
) -> Result<Vec<(Tensor, ProjectionSaved)>> {
    let dtype = x.dtype();
    let in_features = x.dim(candle_core::D::Minus1)?;
    let lead = x.dims()[..x.rank() - 1].to_vec();
    let n: usize = lead.iter().product();
    let flat = x.reshape((n, in_features))?;
    let jobs: Vec<&Branch> = projections.iter().flat_map(|(_, b)| b.iter()).collect();
    // dropout(x) @ Aᵀ of every branch, [n, r] f32.
    let undropped = jobs.iter().all(|b| b.dropout.is_none_or(|d| d.p <= 0.0));
    let flat32 = flat.to_dtype(DType::F32)?;
    let stack = undropped && jobs.len() > 1 && kernels.cpu_dtype(&[&flat32]).is_some();
    let mut xas = if stack {
        // One input for all: one product with the branches' A stacked, then a strided view per
        // branch (the CPU products take any strides).
        let stacked: Vec<Tensor> = jobs.iter().map(|b| b.pair.a.as_tensor().detach()).collect();
        let stacked = Tensor::cat(&stacked, 0)?;
        let all = matmul_sum(kernels, &[(&flat32, &stacked.t()?, 1.0)])?;
        let mut at = 0;
        jobs.iter()
            .map(|b| {
                let r = b.pair.a.as_tensor().dim(0)?;
                at += r;
                Ok(all.narrow(1, at - r, r)?)
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        side_by_side(&jobs, |branch, threads| {
            let h = match branch.dropout.filter(|d| d.p > 0.0) {
                Some(d) => apply_dropout(kernels, &flat32, d)?,
                None => flat32.clone(),
            };
            // Detached: a product with the Var itself would record a graph holding `h`.
            let a = branch.pair.a.as_tensor().detach().t()?;
            Ok(matmul_sum_on(kernels, &[(&h, &a, 1.0)], threads)?)
        })?
    }
    .into_iter();
    let mut out = Vec::with_capacity(projections.len());
    for (weight, branches) in projections {
        let (out_features, _) = weight.dims2()?;
        let mut saved = Vec::with_capacity(branches.len());
        // (xa, Bᵀ, scale) of each branch: the products added to the frozen one.
        let mut deltas = Vec::with_capacity(branches.len());
        for (branch, xa) in branches.iter().zip(xas.by_ref()) {
            let (a, b) = (
                branch.pair.a.as_tensor().detach(),
                branch.pair.b.as_tensor().detach(),
            );
            deltas.push((xa.clone(), b.t()?, branch.scale));
            saved.push(BranchSaved {
                a,
                b,
                scale: branch.scale,
                dropout: branch.dropout.filter(|d| d.p > 0.0),
                trained: branch
                    .trained
                    .then(|| (branch.pair.a.clone(), branch.pair.b.clone(), xa)),
            });
        }
        let y = match dense_f32(weight, dtype) {
            // One product accumulating every branch: no [n, out] temporaries.
            Some(w) => {
                let wt = w.t()?;
                let mut terms = vec![(&flat, &wt, 1.0)];
                terms.extend(deltas.iter().map(|(xa, bt, s)| (xa, bt, *s)));
                matmul_sum(kernels, &terms)?
            }
            None => {
                let mut y = weight.forward(kernels, &flat)?;
                for (xa, bt, s) in &deltas {
                    y = (y + matmul_sum(kernels, &[(xa, bt, *s)])?.to_dtype(dtype)?)?;
                }
                y
            }
        };
        let mut shape = lead.clone();
        shape.push(out_features);
        let saved = ProjectionSaved {
            weight: (*weight).clone(),
            branches: saved,
        };
        out.push((y.reshape(shape)?, saved));
    }
    Ok(out)
}

/// `product(job, threads)` of every job: side by side on one thread each when they share the
/// threads evenly, else one after the other over all threads (3 jobs on 2 threads side by side
/// would leave one thread idle for a third of the time).
fn side_by_side<J: Sync, R: Send>(
    jobs: &[J],
    product: impl Fn(&J, usize) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let threads = rayon::current_num_threads();
    if !jobs.len().is_multiple_of(threads) {
        jobs.iter().map(|j| product(j, threads)).collect()
    } else {
        jobs.par_iter().map(|j| product(j, 1)).collect()
    }
}

/// The input gradient of a projection at input `x` for the output gradient `grad`, and the
/// gradients of its trained factors.
pub fn lora_backward(
    kernels: Kernels,
    saved: &ProjectionSaved,
    x: &Tensor,
    grad: &Tensor,
) -> Result<(Tensor, Option<FactorGrads>)> {
    let mut factors = None;
    let dx = lora_backward_shared(kernels, x, &[(saved, grad)], &mut |f| {
        factors = Some(f);
        Ok(())
    })?;
    Ok((dx, factors))
}

/// The summed input gradient of several projections of the same input `x` (q, k and v; gate
/// and up), each with its output gradient, as one product on CPU; the trained factors'
/// gradients go to `factors`.
pub fn lora_backward_shared(
    kernels: Kernels,
    x: &Tensor,
    parts: &[(&ProjectionSaved, &Tensor)],
    factors: &mut dyn FnMut(FactorGrads) -> Result<()>,
) -> Result<Tensor> {
    let in_features = x.dim(candle_core::D::Minus1)?;
    let n = x.elem_count() / in_features;
    // Per part: its output gradient [n, out] (as given and in f32).
    let mut outputs = Vec::with_capacity(parts.len());
    for (saved, grad) in parts {
        let (out_features, _) = saved.weight.dims2()?;
        let g = grad.reshape((n, out_features))?;
        let g32 = g.to_dtype(DType::F32)?;
        outputs.push((*saved, g, g32));
    }
    // Per branch, the gradient reaching A's output [n, r]: small products, run side by side.
    let jobs: Vec<(usize, &BranchSaved)> = (outputs.iter().enumerate())
        .flat_map(|(i, (saved, _, _))| saved.branches.iter().map(move |s| (i, s)))
        .collect();
    let mut gbs = side_by_side(&jobs, |(i, s), threads| {
        Ok(matmul_sum_on(
            kernels,
            &[(&outputs[*i].2, &s.b, s.scale)],
            threads,
        )?)
    })?
    .into_iter();
    let prepared: Vec<_> = outputs
        .into_iter()
        .map(|(saved, g, g32)| {
            let gbs: Vec<Tensor> = gbs.by_ref().take(saved.branches.len()).collect();
            (saved, g, g32, gbs)
        })
        .collect();
    let dense: Option<Vec<&Tensor>> = prepared
        .iter()
        .map(|(saved, g, _, _)| dense_f32(&saved.weight, g.dtype()))
        .collect();
    // Branches without dropout accumulate into the frozen products; masked ones are added after.
    let branches = || {
        prepared
            .iter()
            .flat_map(|(saved, _, _, gbs)| saved.branches.iter().zip(gbs))
    };
    let mut dx = match dense {
        Some(weights) => {
            let mut terms: Vec<(&Tensor, &Tensor, f64)> = (prepared.iter().zip(&weights))
                .map(|((_, _, g32, _), w)| (g32, *w, 1.0))
                .collect();
            terms.extend(
                branches()
                    .filter(|(s, _)| s.dropout.is_none())
                    .map(|(s, gb)| (gb, &s.a, 1.0)),
            );
            matmul_sum(kernels, &terms)?
        }
        None => {
            let mut dx: Option<Tensor> = None;
            for (saved, g, _, _) in &prepared {
                let part = saved.weight.input_grad(kernels, g)?.to_dtype(DType::F32)?;
                dx = Some(match dx {
                    None => part,
                    Some(acc) => (acc + part)?,
                });
            }
            let mut dx = dx.ok_or_else(|| anyhow::anyhow!("a backward over no projection"))?;
            for (s, gb) in branches().filter(|(s, _)| s.dropout.is_none()) {
                dx = (dx + matmul_sum(kernels, &[(gb, &s.a, 1.0)])?)?;
            }
            dx
        }
    };
    for (s, gb) in branches() {
        if let Some(d) = s.dropout {
            let through = matmul_sum(kernels, &[(gb, &s.a, 1.0)])?;
            dx = add_dropped(kernels, &dx, &through, d)?;
        }
    }
    // dA and dB of the trained branches: small products, run side by side.
    let flat = x.reshape((n, in_features))?.to_dtype(DType::F32)?;
    let trained: Vec<_> = (prepared.iter())
        .flat_map(|(saved, _, g32, gbs)| {
            (saved.branches.iter().zip(gbs)).filter_map(move |(s, gb)| {
                let (a, b, xa) = s.trained.as_ref()?;
                Some((s, a, b, xa, g32, gb))
            })
        })
        .collect();
    let grads = trained
        .par_iter()
        .map(|(s, a, b, xa, g32, gb)| -> Result<FactorGrads> {
            let h = match s.dropout {
                Some(d) => apply_dropout(kernels, &flat, d)?,
                None => flat.clone(),
            };
            let (da, db) = rayon::join(
                || matmul_sum_serial(kernels, &[(&gb.t()?, &h, 1.0)]),
                || matmul_sum_serial(kernels, &[(&g32.t()?, xa, s.scale)]),
            );
            Ok(((*a).clone(), da?, (*b).clone(), db?))
        })
        .collect::<Result<Vec<_>>>()?;
    for g in grads {
        factors(g)?;
    }
    Ok(dx.to_dtype(x.dtype())?.reshape(x.dims())?)
}
