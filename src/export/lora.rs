//! A LoRA adapter as a llama.cpp LoRA GGUF (`llama-cli --lora`, Ollama's `ADAPTER`).
//!
//! llama.cpp adds `scale · B · A` with `scale = adapter.lora.alpha / r`; the alpha written is
//! `r ·` our scale, so rsLoRA's `alpha / sqrt(r)` comes out the same. Each targeted projection
//! gets `blk.N.<tensor>.weight.lora_a` (`[r, in]`) and `.lora_b` (`[out, r]`); for a permuted
//! architecture B's rows of q and k are permuted as the base's are (W = B·A, so permuting W's
//! rows is permuting B's).

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use std::path::Path;

use super::gguf_writer::{GgufWriter, TensorEntry};
use super::{encode, permute_rows, write_into_place};
use crate::model::architecture::{LayerTensor, ModelTensor};
use crate::model::{Adapter, ModelConfig, Projection};

/// Writes `adapter` (trained on a `config` model) to `out`; the number of projections written.
pub fn export_lora_gguf(
    adapter: &Adapter,
    config: &ModelConfig,
    out: &Path,
    dtype: GgmlDType,
    overwrite: bool,
) -> Result<usize> {
    if !matches!(dtype, GgmlDType::F32 | GgmlDType::F16) {
        bail!("a LoRA GGUF is written in f32 or f16, not {dtype:?}");
    }
    let family = config.family();
    let arch = family.gguf_export_arch.with_context(|| {
        format!(
            "llama.cpp has no architecture for {} models",
            family.hf_class
        )
    })?;
    if out.exists() && !overwrite {
        bail!("{}: exists (pass --overwrite to replace it)", out.display());
    }
    let r = adapter.config.r;
    let metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        ("general.type".to_string(), Value::String("adapter".into())),
        ("adapter.type".to_string(), Value::String("lora".into())),
        (
            "adapter.lora.alpha".to_string(),
            Value::F32((adapter.scale() * r as f64) as f32),
        ),
    ];
    let mut pairs = Vec::new();
    let mut entries = Vec::new();
    for (layer, per) in adapter.layers.iter().enumerate() {
        for (p, pair) in per.iter() {
            let Some(pair) = pair else { continue };
            let name = ModelTensor::Layer(layer, LayerTensor::Weight(p)).gguf_name();
            let (a, b) = (pair.a.as_tensor(), pair.b.as_tensor());
            for (suffix, t) in [("lora_a", a), ("lora_b", b)] {
                entries.push(TensorEntry {
                    name: format!("{name}.{suffix}"),
                    shape: t.dims().to_vec(),
                    dtype,
                });
            }
            pairs.push((p, a.clone(), b.clone()));
        }
    }
    if pairs.is_empty() {
        bail!("the adapter has no LoRA factors");
    }
    let _lock = crate::lock::lock_output(out)?;
    write_into_place(out, |tmp| {
        let mut w = GgufWriter::create(tmp, &metadata, &entries)?;
        for (p, a, b) in &pairs {
            let a = a.to_device(&Device::Cpu)?;
            let b = b.to_device(&Device::Cpu)?;
            let (r_a, cols) = a.dims2()?;
            let (rows, r_b) = b.dims2()?;
            w.write(&encode(
                &a.flatten_all()?.to_vec1::<f32>()?,
                (r_a, cols),
                dtype,
            )?)?;
            let mut b_values = b.flatten_all()?.to_vec1::<f32>()?;
            let heads = match p {
                Projection::Q if family.gguf_permutes_qk => Some(config.num_attention_heads),
                Projection::K if family.gguf_permutes_qk => Some(config.num_key_value_heads),
                _ => None,
            };
            if let Some(h) = heads {
                b_values = permute_rows(b_values, rows, r_b, h)?;
            }
            w.write(&encode(&b_values, (rows, r_b), dtype)?)?;
        }
        w.finish()
    })?;
    Ok(pairs.len())
}
