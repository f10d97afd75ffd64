//! The command line: one thin file per subcommand, each parsing its arguments and calling the library.

use clap::{Parser, Subcommand};

mod adapters;
mod bench;
mod binarize;
mod common;
mod data;
mod dpo;
mod eval;
mod export;
mod generate;
mod inspect;
mod kto;
mod merge;
mod orpo;
mod parity;
mod report;
mod sft;
mod signals;
mod train;

#[derive(Parser, Debug)]
#[command(
    name = "lora-dpo",
    version,
    about = "LoRA SFT + DPO for Mistral/Llama models on one GPU"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show a model's architecture, sizes and the LoRA trainable-parameter count.
    Inspect(inspect::Args),
    /// Show how a dataset is read, templated, tokenized, masked and truncated.
    Data(data::Args),
    /// Supervised fine-tuning of a LoRA adapter ([sft] section).
    Sft(common::RunArgs),
    /// DPO of a LoRA adapter ([dpo] section).
    Dpo(common::RunArgs),
    /// KTO of a LoRA adapter on unpaired labelled rows ([kto] section).
    Kto(common::RunArgs),
    /// ORPO of a LoRA adapter ([orpo] section; no reference, no SFT stage needed).
    Orpo(common::RunArgs),
    /// Every stage of the config ([sft] → [dpo] or [kto] → [orpo]) on one loaded base; writes each
    /// adapter and their combination.
    Train(common::RunArgs),
    /// Metrics of a model (+ adapter) on preference or SFT data, as JSON.
    Eval(eval::Args),
    /// Time N training steps: median s/step, tokens/s, peak memory, breakdown.
    Bench(bench::Args),
    /// Fold LoRA adapters into the base and write a Hugging Face folder (or convert a base).
    Merge(merge::Args),
    /// Write a merged model as a llama.cpp GGUF (f16, bf16, q8_0, k-quants).
    Export(export::Args),
    /// Generate a completion (chat template applied unless --raw), streaming tokens.
    Generate(generate::Args),
    /// One HTML page of a run's curves, evaluation, checkpoints and warnings (offline, inline SVG).
    Report(report::Args),
    /// The reference checks (transformers, PEFT, TRL fixtures) on a device, as JSON.
    Parity(parity::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Data(args) => data::run(args),
        Command::Sft(args) => sft::run(args),
        Command::Dpo(args) => dpo::run(args),
        Command::Kto(args) => kto::run(args),
        Command::Orpo(args) => orpo::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Export(args) => export::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Parity(args) => parity::run(args),
        Command::Report(args) => report::run(args),
    }
}
