//! The quantized linear on CPU for f32 activations: tiles dequantized in parallel, a thread's
//! worth at a time, each multiplied straight into its columns of the output (forward) or
//! accumulated into the input gradient (backward).

use super::{gemm_into, gemm_strided, slice_of, tensor_of, Mat};
use crate::ops::qlinear::QuantizedWeight;
use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

/// The dequantized f32 tiles of `weight`, `threads` at a time, handed to `use_tile(first row,
/// tile [rows, in])` in order.
fn for_each_tile(
    weight: &QuantizedWeight,
    mut use_tile: impl FnMut(usize, &Tensor) -> Result<()>,
) -> Result<()> {
    let threads = rayon::current_num_threads().max(1);
    for batch in weight.tiles().chunks(threads) {
        let dense = batch
            .par_iter()
            .map(|(r0, t)| Ok((*r0, t.dequantize(&Device::Cpu)?)))
            .collect::<Result<Vec<_>>>()?;
        for (r0, w) in &dense {
            use_tile(*r0, w)?;
        }
    }
    Ok(())
}

/// `x @ Wᵀ` for a contiguous `x: [n, in]` f32 CPU tensor; `None` off the fast path.
pub fn forward(x: &Tensor, weight: &QuantizedWeight) -> Result<Option<Tensor>> {
    let (out_features, in_features) = weight.dims2();
    let (n, k) = x.dims2()?;
    if k != in_features {
        candle_core::bail!("quantized linear: input has {k} features, weight {in_features}");
    }
    let (sx, lx) = x.storage_and_layout();
    let Some(xs) = slice_of::<f32>(&sx, lx) else {
        return Ok(None);
    };
    let a = Mat::row_major(xs.as_ptr(), n, in_features);
    let threads = rayon::current_num_threads();
    let mut out: Vec<f32> = Vec::with_capacity(n * out_features);
    for_each_tile(weight, |r0, w| {
        let rows = w.dims2()?.0;
        let (sw, lw) = w.storage_and_layout();
        let ws = slice_of::<f32>(&sw, lw).expect("a dequantized CPU f32 tile");
        let b = Mat::row_major(ws.as_ptr(), rows, in_features).t();
        // SAFETY: the tile writes columns r0..r0 + rows of each of the n rows of `out` (row
        // stride out_features); the tiles cover every column once; the operands are held.
        unsafe {
            let dst = out.as_mut_ptr().add(r0);
            gemm_strided(dst, out_features as isize, a, b, false, 1.0, threads);
        }
        Ok(())
    })?;
    // SAFETY: every element was written by its tile's product.
    unsafe { out.set_len(n * out_features) };
    drop(sx);
    Ok(Some(tensor_of(out, &[n, out_features])?))
}

/// `grad @ W` for a contiguous `grad: [n, out]` f32 CPU tensor; `None` off the fast path.
pub fn input_grad(grad: &Tensor, weight: &QuantizedWeight) -> Result<Option<Tensor>> {
    let (out_features, in_features) = weight.dims2();
    let (n, m) = grad.dims2()?;
    if m != out_features {
        candle_core::bail!(
            "quantized linear backward: gradient has {m} features, weight {out_features} rows"
        );
    }
    let (sg, lg) = grad.storage_and_layout();
    let Some(gs) = slice_of::<f32>(&sg, lg) else {
        return Ok(None);
    };
    let threads = rayon::current_num_threads();
    let mut dx: Vec<f32> = Vec::with_capacity(n * in_features);
    let mut first = true;
    for_each_tile(weight, |r0, w| {
        let rows = w.dims2()?.0;
        let (sw, lw) = w.storage_and_layout();
        let ws = slice_of::<f32>(&sw, lw).expect("a dequantized CPU f32 tile");
        // The tile's columns of grad: [n, rows] with row stride out_features.
        let a = Mat {
            ptr: gs[r0..].as_ptr(),
            rows: n,
            cols: rows,
            row_stride: out_features as isize,
            col_stride: 1,
        };
        let b = Mat::row_major(ws.as_ptr(), rows, in_features);
        // SAFETY: dx has room for n·in elements; the first tile writes all of them, the others
        // accumulate; the operands are held.
        unsafe { gemm_into(dx.as_mut_ptr(), a, b, !first, 1.0, threads) };
        first = false;
        Ok(())
    })?;
    if first {
        candle_core::bail!("quantized weight without tiles");
    }
    // SAFETY: written in full by the first tile's product.
    unsafe { dx.set_len(n * in_features) };
    drop(sg);
    Ok(Some(tensor_of(dx, &[n, in_features])?))
}
