//! `lora-dpo inspect`: architecture, sizes, parameter counts and LoRA trainable count.

use lora_dpo::model::{self, summary, LoraConfig};
use lora_dpo::source::Source;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hugging Face model folder, GGUF file, or hub repo id (owner/name, from the local cache).
    #[arg(long)]
    model: String,
    /// LoRA rank to count trainable parameters for.
    #[arg(long, default_value_t = 16)]
    r: usize,
    /// Comma-separated LoRA target modules.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    target_modules: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let source = Source::parse(&args.model)?;
    let (config, dtype) = model::describe_weights(&source)?;
    let lora = LoraConfig {
        r: args.r,
        target_modules: args.target_modules,
        ..LoraConfig::default()
    };
    lora.validate()?;
    print!("{}", summary::describe(&config, &dtype, &lora));
    Ok(())
}
