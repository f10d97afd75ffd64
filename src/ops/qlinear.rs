//! A linear layer over a frozen weight in GGML blocks, with an input gradient only.
//!
//! candle's `QMatMul` records no backward, so a LoRA below a quantized projection would silently
//! get no gradient; and on x86 CPUs its kernels cache a repacked copy of every Q4K/Q6K/Q8_0
//! weight they touch, 1.33× the weight, which doubled a 7B run's memory. Here the weight is held
//! as row tiles ([`QuantizedWeight`]): a product dequantizes one tile at a time into the
//! activations' dtype and multiplies it (QLoRA's dequantize-then-matmul, on any device), so a
//! pass holds a few dequantized tiles, never the whole weight and never a repacked copy. Only
//! products of a few rows (generation) use candle's quantized kernels, which are faster there.

use super::{attach_gradient, cpu, Kernels};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Result, Tensor, D};
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::Arc;

/// Bytes of one tile dequantized to f32: large enough for an efficient product, small enough
/// that a tile per thread costs little.
const TILE_F32_BYTES: usize = 8 << 20;

/// Products of at most this many rows run candle's quantized kernels instead of dequantizing.
const FUSED_MAX_ROWS: usize = 8;

/// A frozen `[out, in]` weight in GGML blocks, stored as consecutive row tiles.
pub struct QuantizedWeight {
    /// `(first row, tile)`; tiles cover the rows in order.
    tiles: Vec<(usize, QTensor)>,
    out_features: usize,
    in_features: usize,
    dtype: GgmlDType,
}

impl std::fmt::Debug for QuantizedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Quantized([{}, {}], {:?}, {} tiles)",
            self.out_features,
            self.in_features,
            self.dtype,
            self.tiles.len()
        )
    }
}

/// Rows per tile for rows of `in_features`.
fn tile_rows(out_features: usize, in_features: usize) -> usize {
    let rows = (TILE_F32_BYTES / (4 * in_features.max(1))).max(16) / 16 * 16;
    rows.min(out_features).max(1)
}

impl QuantizedWeight {
    /// Quantizes the rows of `weight` (`[out, in]`, any dtype and device) to `dtype`, tiles in
    /// parallel on the CPU, then places them on `device`. The last dimension must be a multiple
    /// of the type's block size.
    pub fn quantize(weight: &Tensor, dtype: GgmlDType, device: &Device) -> Result<Self> {
        let (out_features, in_features) = weight.dims2()?;
        let weight = weight
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let rows = tile_rows(out_features, in_features);
        let starts: Vec<usize> = (0..out_features).step_by(rows).collect();
        // The tiles read the weight's own buffer (no copy of the whole weight).
        let tiles = cpu::with_contiguous::<f32, _, 1>([&weight], |[values]| {
            starts
                .par_iter()
                .map(|&r0| {
                    let n = rows.min(out_features - r0);
                    let slice = &values[r0 * in_features..(r0 + n) * in_features];
                    let tile = Tensor::from_slice(slice, (n, in_features), &Device::Cpu)?;
                    Ok((r0, QTensor::quantize(&tile, dtype)?))
                })
                .collect::<Result<Vec<_>>>()
        })
        .ok_or_else(|| candle_core::Error::Msg("quantize: weight not on the CPU".into()))??;
        drop(weight);
        Self::placed(tiles, out_features, in_features, dtype, device)
    }

    /// The rows of an already quantized `[out, in]` CPU tensor (a GGUF's), split into tiles on
    /// `device` without dequantizing.
    pub fn from_qtensor(q: &QTensor, device: &Device) -> Result<Self> {
        let (out_features, in_features) = q.shape().dims2()?;
        let dtype = q.dtype();
        let row_bytes = in_features / dtype.block_size() * dtype.type_size();
        let data = q.data()?;
        if data.len() != out_features * row_bytes {
            candle_core::bail!(
                "quantized tensor of {} bytes for {out_features} rows of {row_bytes}",
                data.len()
            );
        }
        let rows = tile_rows(out_features, in_features);
        let tiles = (0..out_features)
            .step_by(rows)
            .map(|r0| {
                let n = rows.min(out_features - r0);
                let bytes = &data[r0 * row_bytes..(r0 + n) * row_bytes];
                let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, dtype)?;
                Ok((r0, QTensor::new(storage, (n, in_features))?))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::placed(tiles, out_features, in_features, dtype, device)
    }

    fn placed(
        tiles: Vec<(usize, QTensor)>,
        out_features: usize,
        in_features: usize,
        dtype: GgmlDType,
        device: &Device,
    ) -> Result<Self> {
        let tiles = if device.is_cpu() {
            tiles
        } else {
            // Uploaded one after the other, from this thread.
            tiles
                .into_iter()
                .map(|(r0, t)| {
                    let storage = QStorage::from_data(t.data()?, device, dtype)?;
                    Ok((r0, QTensor::new(storage, t.shape().clone())?))
                })
                .collect::<Result<Vec<_>>>()?
        };
        Ok(Self {
            tiles,
            out_features,
            in_features,
            dtype,
        })
    }

    /// `(out_features, in_features)`.
    pub fn dims2(&self) -> (usize, usize) {
        (self.out_features, self.in_features)
    }

    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// Bytes the blocks occupy on their device.
    pub fn storage_bytes(&self) -> usize {
        self.tiles
            .iter()
            .map(|(_, t)| t.storage_size_in_bytes())
            .sum()
    }

    /// The whole weight dequantized, `[out, in]` f32 on `device`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let parts = (self.tiles.iter())
            .map(|(_, t)| t.dequantize(device))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }

    /// The tiles with their first rows.
    pub(crate) fn tiles(&self) -> &[(usize, QTensor)] {
        &self.tiles
    }
}

/// `x @ W.T` for `x: [.., in]`, in `x`'s dtype, with an input gradient only.
pub fn quantized_linear(
    kernels: Kernels,
    x: &Tensor,
    weight: &Arc<QuantizedWeight>,
) -> Result<Tensor> {
    let y = quantized_forward(kernels, &x.detach(), weight)?;
    let weight = weight.clone();
    attach_gradient(
        x,
        y,
        Arc::new(move |_, _, grad| quantized_input_grad(kernels, &weight, grad)),
    )
}

/// [`quantized_linear`] of an untracked `x`.
pub fn quantized_forward(kernels: Kernels, x: &Tensor, weight: &QuantizedWeight) -> Result<Tensor> {
    let (out_features, in_features) = weight.dims2();
    if x.dim(D::Minus1)? != in_features {
        candle_core::bail!(
            "quantized linear: input has {} features, weight expects {in_features}",
            x.dim(D::Minus1)?
        );
    }
    let mut shape = x.dims()[..x.rank() - 1].to_vec();
    let n: usize = shape.iter().product();
    shape.push(out_features);
    let flat = x.reshape((n, in_features))?.contiguous()?;
    if n <= FUSED_MAX_ROWS {
        let parts = (weight.tiles.iter())
            .map(|(_, t)| flat.apply_op1_no_bwd(t)?.to_dtype(x.dtype()))
            .collect::<Result<Vec<_>>>()?;
        return Tensor::cat(&parts, 1)?.reshape(shape);
    }
    let pd = super::product_dtype(x.device(), x.dtype());
    let flat = flat.to_dtype(pd)?;
    // bf16 activations on CPU multiply in f32 too: the kernel takes them widened.
    if kernels.cpu_dtype(&[&flat]) == Some(DType::F32) {
        if let Some(y) = cpu::qlinear::forward(&flat, weight)? {
            return y.to_dtype(x.dtype())?.reshape(shape);
        }
    }
    let parts = (weight.tiles.iter())
        .map(|(_, t)| {
            let w = t.dequantize(x.device())?.to_dtype(pd)?;
            flat.matmul(&w.t()?)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 1)?.to_dtype(x.dtype())?.reshape(shape)
}

/// `grad @ W` for `grad: [.., out]`: the input gradient of [`quantized_linear`], in `grad`'s
/// dtype (the tiles' products summed in f32).
pub fn quantized_input_grad(
    kernels: Kernels,
    weight: &QuantizedWeight,
    grad: &Tensor,
) -> Result<Tensor> {
    let (out_features, in_features) = weight.dims2();
    if grad.dim(D::Minus1)? != out_features {
        candle_core::bail!(
            "quantized linear backward: gradient has {} features, weight has {out_features} rows",
            grad.dim(D::Minus1)?
        );
    }
    let mut shape = grad.dims()[..grad.rank() - 1].to_vec();
    let n: usize = shape.iter().product();
    shape.push(in_features);
    let flat = grad.reshape((n, out_features))?.contiguous()?;
    let pd = super::product_dtype(grad.device(), grad.dtype());
    let flat = flat.to_dtype(pd)?;
    if kernels.cpu_dtype(&[&flat]) == Some(DType::F32) {
        if let Some(dx) = cpu::qlinear::input_grad(&flat, weight)? {
            return dx.to_dtype(grad.dtype())?.reshape(shape);
        }
    }
    let mut dx: Option<Tensor> = None;
    for (r0, t) in &weight.tiles {
        let rows = t.shape().dims2()?.0;
        let w = t.dequantize(grad.device())?.to_dtype(pd)?;
        let part = flat
            .narrow(1, *r0, rows)?
            .matmul(&w)?
            .to_dtype(DType::F32)?;
        dx = Some(match dx {
            None => part,
            Some(acc) => (acc + part)?,
        });
    }
    let dx = dx.ok_or_else(|| candle_core::Error::Msg("quantized weight without tiles".into()))?;
    dx.to_dtype(grad.dtype())?.reshape(shape)
}
