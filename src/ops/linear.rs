//! A linear layer whose weight is frozen: the backward pass computes the input gradient only.

use super::{attach_gradient, cpu, Kernels};
use candle_core::{Result, Tensor, D};
use std::sync::Arc;

/// `x @ weight.T` for `x: [.., in]` and `weight: [out, in]`, with no weight gradient.
pub fn frozen_linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let y = matmul_t(&x.detach(), weight)?;
    let weight = weight.clone();
    attach_gradient(
        x,
        y,
        Arc::new(move |_, _, grad| {
            let (out_features, in_features) = weight.dims2()?;
            let lead = grad.dims()[..grad.rank() - 1].to_vec();
            let flat = grad.reshape(((), out_features))?.contiguous()?;
            let dx = flat.matmul(&weight.to_dtype(grad.dtype())?)?;
            let mut shape = lead;
            shape.push(in_features);
            dx.reshape(shape)
        }),
    )
}

/// `x @ w.T` over any leading dimensions.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out_features, in_features) = w.dims2()?;
    if x.dim(D::Minus1)? != in_features {
        candle_core::bail!(
            "linear: input has {} features, weight expects {in_features}",
            x.dim(D::Minus1)?
        );
    }
    let mut shape = x.dims()[..x.rank() - 1].to_vec();
    shape.push(out_features);
    let flat = x.reshape(((), in_features))?;
    flat.matmul(&w.t()?)?.reshape(shape)
}

/// `Σ scale_i · a_i · b_i` for 2-D `a_i: [m, k_i]` and `b_i: [k_i, n]` (transposed views are
/// fine). The CPU kernel accumulates the products into one output with no intermediate tensors.
pub fn matmul_sum(kernels: Kernels, terms: &[(&Tensor, &Tensor, f64)]) -> Result<Tensor> {
    matmul_sum_on(kernels, terms, rayon::current_num_threads())
}

/// [`matmul_sum`] on the calling thread only (on CPU): for small products that run side by
/// side on the thread pool, where splitting each one would cost more than it gains.
pub fn matmul_sum_serial(kernels: Kernels, terms: &[(&Tensor, &Tensor, f64)]) -> Result<Tensor> {
    matmul_sum_on(kernels, terms, 1)
}

/// [`matmul_sum`] over `threads` threads of the rayon pool (on CPU).
pub fn matmul_sum_on(
    kernels: Kernels,
    terms: &[(&Tensor, &Tensor, f64)],
    threads: usize,
) -> Result<Tensor> {
    let all: Vec<&Tensor> = terms.iter().flat_map(|(a, b, _)| [*a, *b]).collect();
    if kernels.cpu_dtype(&all).is_some() {
        if let Some(out) = cpu::matmul_sum(terms, threads)? {
            return Ok(out);
        }
    }
    let mut sum: Option<Tensor> = None;
    for (a, b, scale) in terms {
        let mut p = a.matmul(b)?;
        if *scale != 1.0 {
            p = (p * *scale)?;
        }
        sum = Some(match sum {
            None => p,
            Some(acc) => (acc + p)?,
        });
    }
    sum.ok_or_else(|| candle_core::Error::Msg("matmul_sum: no terms".into()))
}
