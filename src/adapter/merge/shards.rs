//! Shards planned from the shapes alone, then written block by block with the adapters folded in.

use anyhow::{bail, Context, Result};
use candle_core::DType;
use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::model::{Adapter, Projection};

use super::base::Base;
use super::blocks::{merged_blocks, Rows};

/// One output shard: its tensors in order with their shapes, and its data size.
pub(super) struct ShardPlan {
    pub(super) tensors: Vec<(String, Vec<usize>)>,
    pub(super) bytes: u64,
}

/// Tensors in order, packed greedily into shards of at most `max` bytes.
pub(super) fn plan_shards(
    tensors: &[(String, Vec<usize>)],
    dtype: DType,
    max: u64,
) -> Vec<ShardPlan> {
    let mut shards: Vec<ShardPlan> = Vec::new();
    let mut current = ShardPlan {
        tensors: vec![],
        bytes: 0,
    };
    for (name, shape) in tensors {
        let size = shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
        if !current.tensors.is_empty() && current.bytes + size > max {
            shards.push(std::mem::replace(
                &mut current,
                ShardPlan {
                    tensors: vec![],
                    bytes: 0,
                },
            ));
        }
        current.tensors.push((name.clone(), shape.clone()));
        current.bytes += size;
    }
    if !current.tensors.is_empty() {
        shards.push(current);
    }
    shards
}

/// `(layer, projection)` when `name` is a projection weight.
pub(crate) fn projection_of(name: &str) -> Option<(usize, Projection)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, _) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    Projection::ALL
        .into_iter()
        .find_map(|p| (format!("{}.weight", p.module_path(layer)) == name).then_some((layer, p)))
}

/// Writes one shard: the header from the plan, then each tensor's bytes as they are made.
/// Returns how many tensors had an adapter folded in.
pub(super) fn write_shard(
    path: &Path,
    shard: &ShardPlan,
    base: &Base,
    adapters: &[Adapter],
    dtype: DType,
    block_bytes: usize,
) -> Result<usize> {
    let st_dtype = st_dtype_name(dtype)?;
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for (name, shape) in &shard.tensors {
        let size = shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
        header.insert(
            name.clone(),
            json!({"dtype": st_dtype, "shape": shape, "data_offsets": [offset, offset + size]}),
        );
        offset += size;
    }
    let mut header = serde_json::to_string(&Value::Object(header))?.into_bytes();
    // safetensors pads the header with spaces to a multiple of 8 bytes.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let file = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let write_err = || format!("{}: cannot write", path.display());
    w.write_all(&(header.len() as u64).to_le_bytes())
        .with_context(write_err)?;
    w.write_all(&header).with_context(write_err)?;
    let mut merged = 0;
    for (name, shape) in &shard.tensors {
        let folded = merged_blocks(
            base,
            name,
            shape,
            adapters,
            block_bytes,
            Some(dtype),
            &mut |rows| {
                let bytes = match rows {
                    Rows::Stored(bytes) => std::borrow::Cow::Borrowed(bytes),
                    Rows::Values(values) => std::borrow::Cow::Owned(encode(values, dtype)?),
                };
                w.write_all(&bytes).with_context(write_err)
            },
        )?;
        merged += usize::from(folded);
    }
    w.flush().with_context(write_err)?;
    Ok(merged)
}

pub(super) fn encode(values: &[f32], dtype: DType) -> Result<Vec<u8>> {
    Ok(match dtype {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        DType::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        other => bail!("cannot write {other:?} weights"),
    })
}

pub(super) fn st_dtype_name(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "F32",
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        other => bail!("cannot write {other:?} weights (use f32, bf16 or f16)"),
    })
}

/// Little-endian values of a safetensors dtype, widened to f32.
pub(crate) fn decode_f32(bytes: &[u8], dtype: &str) -> Result<Vec<f32>> {
    Ok(match dtype {
        "F32" => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "BF16" => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "F16" => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "F64" => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => bail!("dtype {other} is not supported"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Projection;

    #[test]
    fn projection_names() {
        assert_eq!(
            projection_of("model.layers.3.mlp.down_proj.weight"),
            Some((3, Projection::Down))
        );
        assert_eq!(
            projection_of("model.layers.0.self_attn.q_proj.weight"),
            Some((0, Projection::Q))
        );
        assert_eq!(projection_of("model.layers.0.input_layernorm.weight"), None);
        assert_eq!(projection_of("lm_head.weight"), None);
    }
}
