//! Products with frozen weights: the linear layer whose backward computes the input gradient
//! only, and the tiled products that keep a bf16 weight from being widened whole on CPU.
//!
//! candle's CPU matmul has no bf16 kernel: it widens both operands' whole storages to f32 for
//! every product, so the LM head of a 7B model (400 MB in bf16) became an 800 MB temporary at
//! each use. On CPU a bf16 weight is therefore multiplied a row tile at a time, each tile
//! converted to f32 (the rule is [`product_dtype`]); other dtypes and devices multiply directly.

use super::{attach_gradient, cpu, Kernels};
use candle_core::{DType, Device, Result, Tensor, D};
use std::sync::Arc;

/// Bytes of one weight tile in f32 (as the quantized tiles).
const TILE_F32_BYTES: usize = 8 << 20;

/// The dtype products of `dtype` operands run in on `device`: f32 for bf16 on CPU (candle would
/// widen the whole operands), the dtype itself otherwise.
pub fn product_dtype(device: &Device, dtype: DType) -> DType {
    match dtype {
        DType::BF16 if device.is_cpu() => DType::F32,
        other => other,
    }
}

/// `x @ weight.T` for `x: [.., in]` and `weight: [out, in]`, with no weight gradient; in `x`'s
/// dtype.
pub fn frozen_linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let y = frozen_matmul_t(&x.detach(), weight)?.to_dtype(x.dtype())?;
    let weight = weight.clone();
    attach_gradient(
        x,
        y,
        Arc::new(move |_, _, grad| frozen_matmul(grad, &weight)?.to_dtype(grad.dtype())),
    )
}

/// Row tiles `(first row, rows)` of a weight with `out` rows of `in` features.
fn row_tiles(out_features: usize, in_features: usize) -> impl Iterator<Item = (usize, usize)> {
    let rows = (TILE_F32_BYTES / (4 * in_features.max(1))).max(16);
    (0..out_features)
        .step_by(rows)
        .map(move |r0| (r0, rows.min(out_features - r0)))
}

/// `x @ w.T` over any leading dimensions for a frozen `w: [out, in]`, in
/// [`product_dtype`] of `w`'s dtype (tile by tile where that differs from `w`'s dtype).
pub fn frozen_matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let pd = product_dtype(w.device(), w.dtype());
    if pd == w.dtype() {
        return matmul_t(&x.to_dtype(pd)?, w);
    }
    let (out_features, in_features) = w.dims2()?;
    check_features(x, in_features)?;
    let mut shape = x.dims()[..x.rank() - 1].to_vec();
    shape.push(out_features);
    let flat = x.reshape(((), in_features))?.to_dtype(pd)?;
    let parts = row_tiles(out_features, in_features)
        .map(|(r0, rows)| flat.matmul(&w.narrow(0, r0, rows)?.to_dtype(pd)?.t()?))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 1)?.reshape(shape)
}

/// `g @ w` for `g: [.., out]` and a frozen `w: [out, in]` (the input gradient of `x @ w.T`), in
/// [`product_dtype`] of `w`'s dtype, tile by tile where that differs from `w`'s dtype.
pub fn frozen_matmul(g: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out_features, in_features) = w.dims2()?;
    let mut shape = g.dims()[..g.rank() - 1].to_vec();
    shape.push(in_features);
    let pd = product_dtype(w.device(), w.dtype());
    let flat = g.reshape(((), out_features))?.to_dtype(pd)?.contiguous()?;
    if pd == w.dtype() {
        return flat.matmul(w)?.reshape(shape);
    }
    let mut sum: Option<Tensor> = None;
    for (r0, rows) in row_tiles(out_features, in_features) {
        let part = flat
            .narrow(1, r0, rows)?
            .matmul(&w.narrow(0, r0, rows)?.to_dtype(pd)?)?;
        sum = Some(match sum {
            None => part,
            Some(acc) => (acc + part)?,
        });
    }
    sum.ok_or_else(|| candle_core::Error::Msg("a product with an empty weight".into()))?
        .reshape(shape)
}

fn check_features(x: &Tensor, in_features: usize) -> Result<()> {
    if x.dim(D::Minus1)? != in_features {
        candle_core::bail!(
            "linear: input has {} features, weight expects {in_features}",
            x.dim(D::Minus1)?
        );
    }
    Ok(())
}

/// `x @ w.T` over any leading dimensions.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out_features, in_features) = w.dims2()?;
    check_features(x, in_features)?;
    let mut shape = x.dims()[..x.rank() - 1].to_vec();
    shape.push(out_features);
    let flat = x.reshape(((), in_features))?;
    if let Some(y) = cpu::gemv::matmul_t(&flat, w)? {
        return y.reshape(shape);
    }
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
        // A few rows times a frozen weight (generation): one pass over the weight, then the
        // small remaining terms (LoRA's) added.
        if let [(x, wt, scale), rest @ ..] = terms {
            if *scale == 1.0 && threads > 1 {
                if let Some(y) = cpu::gemv::matmul_t(x, &wt.t()?)? {
                    return match rest {
                        [] => Ok(y),
                        _ => y + matmul_sum_on(kernels, rest, threads)?,
                    };
                }
            }
        }
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
