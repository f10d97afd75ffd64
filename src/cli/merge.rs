//! `lora-dpo merge`: fold adapters into the base and write a Hugging Face folder.

use anyhow::Context;
use candle_core::Device;
use lora_dpo::adapter::{self, merge::parse_size, MergeOptions};
use lora_dpo::model::{self, Dtype};
use lora_dpo::source::Source;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Base model: Hugging Face folder, hub repo id (owner/name, from the local cache) or a
    /// .gguf file (dequantized).
    #[arg(long)]
    model: String,
    /// PEFT LoRA adapter folder or hub repo id; repeat to fold several, in order.
    #[arg(long)]
    adapter: Vec<String>,
    /// Output folder (written through a temporary folder beside it).
    #[arg(long)]
    out: PathBuf,
    /// Output dtype (default: the base's stored dtype).
    #[arg(long)]
    dtype: Option<Dtype>,
    /// Largest shard, e.g. 5GB, 500MB, 2GiB or a number of bytes.
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
    /// Replace the output folder if it exists and is not empty.
    #[arg(long)]
    overwrite: bool,
    /// Load an adapter whose file lacks tensors its config targets, leaving those modules
    /// untrained (a warning lists them); by default such an adapter is refused.
    #[arg(long)]
    allow_missing: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let options = MergeOptions {
        dtype: args.dtype.map(Into::into),
        max_shard_size: parse_size(&args.max_shard_size).context("--max-shard-size")?,
        overwrite: args.overwrite,
        adapter_sources: args.adapter.clone(),
        ..MergeOptions::default()
    };
    let mut adapters = Vec::with_capacity(args.adapter.len());
    if !args.adapter.is_empty() {
        let config = model::load_config(&Source::parse(&args.model)?)?;
        for spec in &args.adapter {
            adapters.push(crate::cli::adapters::load(
                spec,
                &config,
                &Device::Cpu,
                args.allow_missing,
            )?);
        }
    }
    let report = adapter::merge(&args.model, &adapters, &args.out, &options)?;
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    println!(
        "wrote {} ({:?}, {} shard(s), {:.1} MB of weights, {} projection(s) merged from {} adapter(s))",
        report.out_dir.display(),
        report.dtype,
        report.shards.len(),
        report.total_size as f64 / 1e6,
        report.merged_tensors,
        adapters.len()
    );
    Ok(())
}
