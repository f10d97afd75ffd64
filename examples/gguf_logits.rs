//! Loads a model (GGUF file, HF folder or hub id), runs one forward pass and compares its logits
//! with a reference written by PyTorch (a safetensors file holding `input_ids` [1, T] and
//! `logits` [1, T, V]), e.g. transformers' dequantized load of the same GGUF.
//!
//!     cargo run --release --example gguf_logits -- models/SmolLM2-135M-Instruct.Q4_1.gguf ref.safetensors [QUANTIZE]
//!
//! QUANTIZE is the config's `quantize` value (`none`, `dense`, `q8_0`, ...; default `none`).

use anyhow::{Context, Result};
use candle_core::{DType, Device, D};
use lora_dpo::model::{load_model_with, LoadOptions, Pass};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model_spec = args
        .first()
        .context("usage: gguf_logits MODEL REFERENCE.safetensors")?;
    let reference = args
        .get(1)
        .context("usage: gguf_logits MODEL REFERENCE.safetensors")?;
    let device = Device::Cpu;
    let t0 = std::time::Instant::now();
    let quantize = args.get(2).map(String::as_str).unwrap_or("none").parse()?;
    let options = LoadOptions::from_config(DType::F32, quantize);
    let model = load_model_with(model_spec, &options, &device)?;
    println!("loaded in {:.2?}", t0.elapsed());
    let kinds: Vec<String> = lora_dpo::model::Projection::ALL
        .into_iter()
        .filter_map(|p| model.projection_weight(0, p).map(|w| w.kind()))
        .collect();
    println!("layer 0 projections: {}", kinds.join(", "));
    let reference = candle_core::safetensors::load(reference, &device)?;
    let ids = reference["input_ids"].to_dtype(DType::U32)?;
    let expected = reference["logits"].to_dtype(DType::F32)?;
    let logits = model.forward(&ids, None, Pass::eval(&[]))?; // warm-up (repacking)
    let t0 = std::time::Instant::now();
    let logits2 = model.forward(&ids, None, Pass::eval(&[]))?;
    println!("forward of {:?} in {:.2?}", ids.dims(), t0.elapsed());
    assert_eq!(
        (&logits - &logits2)?.abs()?.max_all()?.to_scalar::<f32>()?,
        0.0
    );
    let diff = (&logits - &expected)?.abs()?;
    let max_diff = diff.max_all()?.to_scalar::<f32>()?;
    let mean_diff = diff.mean_all()?.to_scalar::<f32>()?;
    let scale = expected.abs()?.max_all()?.to_scalar::<f32>()?;
    println!("max |logit diff| {max_diff:.4} (mean {mean_diff:.4}; max |logit| {scale:.2})");
    let ours = logits.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?;
    let theirs = expected
        .argmax(D::Minus1)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    println!("argmax per position: ours {ours:?}, reference {theirs:?}");
    Ok(())
}
