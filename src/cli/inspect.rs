//! `lora-dpo inspect`: architecture, sizes, parameter counts, LoRA trainable count, and with
//! `--config` a memory estimate for that run.

use std::path::PathBuf;

use lora_dpo::config::{DeviceSpec, LoadedConfig};
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
    /// Override a config key, e.g. --set dpo.max_length=2048 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Estimate for this device instead of the config's; nothing is opened.
    #[arg(long)]
    device: Option<DeviceSpec>,
    #[command(flatten)]
    model_args: super::common::ModelArgs,
}

/// Where the estimate's memory lives: the device named (or the config's), `auto` resolving to
/// a GPU only when this build has CUDA and one is present.
fn target(device: DeviceSpec) -> memory::Target {
    let cpu = memory::Target::Cpu {
        threads: rayon::current_num_threads(),
    };
    match device {
        DeviceSpec::Cpu => cpu,
        DeviceSpec::Cuda => memory::Target::Gpu,
        DeviceSpec::Auto if candle_core::utils::cuda_is_available() => {
            match candle_core::Device::new_cuda(0) {
                Ok(_) => memory::Target::Gpu,
                Err(_) => cpu,
            }
        }
        DeviceSpec::Auto => cpu,
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let overrides = args.model_args.overrides(&args.overrides);
    let cfg = args
        .config
        .as_ref()
        .map(|p| LoadedConfig::load(p, &overrides))
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
        let load_dtype = c.run.model.dtype.into();
        let options = model::LoadOptions::from_config(load_dtype, c.run.model.quantize);
        let target = target(args.device.unwrap_or(c.run.model.device));
        let place = match target {
            memory::Target::Gpu => "GPU memory".to_string(),
            memory::Target::Cpu { threads } => format!("host memory, {threads} threads"),
        };
        println!(
            "\nmemory estimate ({place}; {} weights and activations; one micro-batch at \
             max_length; SFT rows are padded only to the longest, DPO pairs share their prompt: \
             both use less)",
            c.run.model.dtype
        );
        for (stage, section) in [
            (Stage::Sft, &c.run.sft),
            (Stage::Dpo, &c.run.dpo),
            (Stage::Orpo, &c.run.orpo),
        ] {
            let Some(s) = section else { continue };
            let seq = c.data_config(stage)?.max_length.unwrap_or(1024);
            // DPO runs chosen and rejected of every pair in one pass (counted unshared).
            let rows = s.per_device_train_batch_size * if stage == Stage::Sft { 1 } else { 2 };
            let q = options.quantize;
            let e = memory::estimate(&config, &lora, load_dtype, q, rows, seq, target);
            let b = memory::human_bytes;
            println!(
                "  [{stage}] {rows} x {seq} tokens: frozen weights {}, LoRA + grads + AdamW {}, \
                 activations {}, LM head {}, temporaries {}, runtime {} -> total {} ({} with \
                 gradient checkpointing)",
                b(e.frozen_weights),
                b(e.lora_state),
                b(e.activations),
                b(e.logits),
                b(e.transient),
                b(e.runtime),
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
