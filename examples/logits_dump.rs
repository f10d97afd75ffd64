//! Writes lora-dpo's logits for given token ids, for comparisons outside CI
//! (scripts/check_llama_cpp.py):
//!
//!     cargo run --release --example logits_dump -- MODEL IDS.json OUT.safetensors [ADAPTER ...]
//!
//! IDS.json is a list of token-id lists; OUT holds `logits_<i>` `[len, vocab]` (f32) for each.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use lora_dpo::model::{load_model_with, LoadOptions, Pass, Quantize};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: logits_dump MODEL IDS.json OUT.safetensors [ADAPTER ...]";
    let (model_spec, ids_path, out) = match args.as_slice() {
        [m, i, o, ..] => (m, i, o),
        _ => anyhow::bail!(usage),
    };
    let device = Device::Cpu;
    let options = LoadOptions::from_config(DType::F32, Quantize::Dense);
    let model = load_model_with(model_spec, &options, &device)?;
    let adapters = (args[3..].iter())
        .map(|a| lora_dpo::adapter::load_adapter(a, &model.config, &device))
        .collect::<Result<Vec<_>>>()?;
    let adapters: Vec<_> = adapters.iter().collect();
    let ids: Vec<Vec<u32>> = serde_json::from_str(
        &std::fs::read_to_string(ids_path).with_context(|| format!("reading {ids_path}"))?,
    )?;
    let mut tensors = std::collections::HashMap::new();
    for (i, row) in ids.iter().enumerate() {
        let x = Tensor::new(row.as_slice(), &device)?.unsqueeze(0)?;
        let logits = model.forward(&x, None, Pass::eval(&adapters))?.get(0)?;
        tensors.insert(format!("logits_{i}"), logits);
    }
    candle_core::safetensors::save(&tensors, out)?;
    Ok(())
}
