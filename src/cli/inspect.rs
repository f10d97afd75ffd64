//! `lora-dpo inspect`: architecture, sizes, parameter counts, LoRA trainable count, and with
//! `--config` a memory estimate for that run.

use anyhow::Context;
use std::path::PathBuf;

use lora_dpo::config::LoadedConfig;
use lora_dpo::data::Stage;
use lora_dpo::model::{self, memory, summary, LoraConfig};
use lora_dpo::source::Source;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hugging Face model folder, GGUF file, or hub repo id (default: the config's model).
    #[arg(long)]
    model: Option<String>,
    /// Run config: LoRA, dtype, quantization and batch shapes for the memory estimate.
    #[arg(long)]
    config: Option<PathBuf>,
    /// LoRA rank to count trainable parameters for (without --config).
    #[arg(long, default_value_t = 16)]
    r: usize,
    /// Comma-separated LoRA target modules (without --config).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    target_modules: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = args
        .config
        .as_ref()
        .map(|p| LoadedConfig::load(p, &[]))
        .transpose()?;
    let spec = match (&args.model, &cfg) {
        (Some(m), _) => m.clone(),
        (None, Some(c)) => c.run.model.name_or_path.clone(),
        (None, None) => anyhow::bail!("give --model, or --config with [model] name_or_path"),
    };
    let source = Source::parse(&spec)?;
    let (config, dtype) = model::describe_weights(&source)?;
    let lora = match &cfg {
        Some(c) => c.run.lora.lora.clone(),
        None => LoraConfig {
            r: args.r,
            target_modules: args.target_modules,
            ..LoraConfig::default()
        },
    };
    lora.validate()?;
    print!("{}", summary::describe(&config, &dtype, &lora));
    if let Some(c) = &cfg {
        let load_dtype = model::parse_dtype(&c.run.model.dtype)?;
        let options = model::LoadOptions::from_config(load_dtype, &c.run.model.quantize)
            .context("[model] quantize")?;
        println!(
            "\nmemory estimate (one micro-batch at max_length; SFT rows are padded only to the \
             longest, DPO pairs share their prompt: both use less)"
        );
        for (stage, section) in [(Stage::Sft, &c.run.sft), (Stage::Dpo, &c.run.dpo)] {
            let Some(s) = section else { continue };
            let seq = c.data_config(stage)?.max_length.unwrap_or(1024);
            // DPO runs chosen and rejected of every pair in one pass (counted unshared).
            let rows = s.per_device_train_batch_size * if stage == Stage::Dpo { 2 } else { 1 };
            let e = memory::estimate(&config, &lora, load_dtype, options.quantize, rows, seq);
            let b = memory::human_bytes;
            println!(
                "  [{stage}] {rows} x {seq} tokens: frozen weights {}, LoRA + grads + AdamW {}, \
                 activations {}, logits {} -> total {} ({} with gradient checkpointing)",
                b(e.frozen_weights),
                b(e.lora_state),
                b(e.activations),
                b(e.logits),
                b(e.total()),
                b(e.total_checkpointed())
            );
        }
        if source_is_quantized_gguf(&dtype, options.dequantize_gguf) {
            println!(
                "  (frozen weights counted in {}; a GGUF keeps its stored types: {dtype})",
                c.run.model.dtype
            );
        }
    }
    Ok(())
}

fn source_is_quantized_gguf(dtype: &str, dequantized: bool) -> bool {
    dtype.starts_with("GGUF") && !dequantized
}
