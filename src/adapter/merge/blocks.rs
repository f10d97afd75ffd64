//! A base tensor with every adapter folded in, read and merged in blocks of whole rows:
//! what `merge` writes into safetensors shards and `export` quantizes into a GGUF.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::base::Base;
use super::shards::{decode_f32, projection_of};
use crate::model::weights::parse_st_dtype;
use crate::model::{Adapter, WeightSource};

/// A block of rows of the merged tensor.
pub(crate) enum Rows<'a> {
    /// The stored bytes, untouched: no adapter applies and they are already in the wanted dtype.
    Stored(&'a [u8]),
    /// The rows in f32, row-major.
    Values(&'a [f32]),
}

/// Feeds `sink` the rows of tensor `name` (`shape`), `W + scale · B · A` for each adapter in
/// order, in blocks of about `block_bytes` (as f32, at least one row). A safetensors tensor
/// no adapter touches comes as its stored bytes when they are in `keep`. Returns whether an
/// adapter was folded in.
pub(crate) fn merged_blocks(
    base: &Base,
    name: &str,
    shape: &[usize],
    adapters: &[Adapter],
    block_bytes: usize,
    keep: Option<DType>,
    sink: &mut dyn FnMut(Rows<'_>) -> Result<()>,
) -> Result<bool> {
    let pairs: Vec<(f64, Tensor, Tensor)> = match projection_of(name) {
        Some((layer, p)) => adapters
            .iter()
            .filter_map(|a| a.pair(layer, p).map(|pair| (a.scale(), pair)))
            .map(|(scale, pair)| -> Result<_> {
                Ok((
                    scale,
                    pair.b.as_tensor().to_device(&Device::Cpu)?,
                    pair.a.as_tensor().to_device(&Device::Cpu)?,
                ))
            })
            .collect::<Result<_>>()?,
        None => vec![],
    };
    let numel: usize = shape.iter().product();
    let rows = shape.first().copied().unwrap_or(1).max(1);
    let cols = numel / rows;
    let block = (block_bytes / (4 * cols.max(1))).clamp(1, rows);
    // A GGUF tensor is dequantized whole (its blocks do not split at arbitrary rows).
    let whole: Option<Vec<f32>> = match base {
        Base::Gguf(file) => Some(
            file.load_dense(name, shape, DType::F32, &Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        ),
        Base::Safetensors { .. } => None,
    };
    let mut r0 = 0;
    while r0 < rows {
        let n = block.min(rows - r0);
        let mut values = match (&whole, base) {
            (Some(all), _) => all[r0 * cols..(r0 + n) * cols].to_vec(),
            (None, Base::Safetensors { reader, .. }) => {
                let entry = reader.entry(name)?;
                let (stored, size) = parse_st_dtype(&entry.dtype)?;
                let bytes = reader.read_range(name, (r0 * cols * size) as u64, n * cols * size)?;
                if pairs.is_empty() && Some(stored) == keep {
                    sink(Rows::Stored(&bytes))?;
                    r0 += n;
                    continue;
                }
                decode_f32(&bytes, &entry.dtype)
                    .map_err(|e| e.context(format!("tensor `{name}`")))?
            }
            (None, Base::Gguf(_)) => unreachable!("GGUF tensors are read whole"),
        };
        if !pairs.is_empty() {
            let mut weight = Tensor::from_vec(values, (n, cols), &Device::Cpu)?;
            for (scale, b, a) in &pairs {
                let delta = b.narrow(0, r0, n)?.matmul(a)?;
                weight = (weight + (delta * *scale)?)?;
            }
            values = weight.flatten_all()?.to_vec1::<f32>()?;
            if values.iter().any(|v| !v.is_finite()) {
                bail!("merging the adapter into `{name}` gives NaN or infinite values");
            }
        }
        sink(Rows::Values(&values))?;
        r0 += n;
    }
    Ok(!pairs.is_empty())
}
