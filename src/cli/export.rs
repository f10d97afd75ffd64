//! `lora-dpo export`: a base with adapters folded in, as a llama.cpp GGUF file.

use candle_core::Device;
use lora_dpo::export::{export_gguf, parse_quant, ExportOptions};
use lora_dpo::model;
use lora_dpo::source::Source;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Base model: Hugging Face folder, hub repo id (from the local cache) or a .gguf file.
    #[arg(long)]
    model: String,
    /// PEFT LoRA adapter folder or hub repo id; repeat to fold several, in order.
    #[arg(long)]
    adapter: Vec<String>,
    /// What to write: `gguf` (the merged model for llama.cpp, Ollama, LM Studio) or `gguf-lora`
    /// (the one --adapter alone, for `llama-cli --lora` and Ollama's ADAPTER; --quant f32 or f16).
    #[arg(long, default_value = "gguf")]
    format: String,
    /// The 2-D tensors' type: f32, f16, bf16, q8_0, q6_k, q5_k, q4_k, q5_0, q4_0 (norms stay f32).
    #[arg(long, default_value = "f16")]
    quant: String,
    /// The .gguf file to write (through a temporary file beside it).
    #[arg(long)]
    out: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Also write an Ollama Modelfile beside the GGUF (FROM, TEMPLATE, stop parameters).
    #[arg(long)]
    ollama: bool,
    /// Load an adapter whose file lacks tensors its config targets (a warning lists them).
    #[arg(long)]
    allow_missing: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !matches!(args.format.as_str(), "gguf" | "gguf-lora") {
        anyhow::bail!(
            "--format {}: unknown format (expected gguf or gguf-lora)",
            args.format
        );
    }
    let options = ExportOptions {
        quant: parse_quant(&args.quant)?,
        overwrite: args.overwrite,
        adapter_sources: args.adapter.clone(),
        ..ExportOptions::default()
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
    if args.format == "gguf-lora" {
        let [adapter] = adapters.as_slice() else {
            anyhow::bail!("--format gguf-lora writes one adapter: give exactly one --adapter");
        };
        let config = model::load_config(&Source::parse(&args.model)?)?;
        let written = lora_dpo::export::lora::export_lora_gguf(
            adapter,
            &config,
            &args.out,
            options.quant,
            args.overwrite,
        )?;
        println!(
            "wrote {} (LoRA, {written} projection(s)); run it: llama-cli -m BASE.gguf --lora {}",
            args.out.display(),
            args.out.display()
        );
        return Ok(());
    }
    let report = export_gguf(&args.model, &adapters, &args.out, &options)?;
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    println!(
        "wrote {} ({}, {}, {} tensors, {:.1} MB, {} projection(s) merged from {} adapter(s))",
        report.out.display(),
        report.arch,
        args.quant,
        report.tensors,
        report.bytes as f64 / 1e6,
        report.merged_tensors,
        adapters.len()
    );
    println!("run it: llama-cli -m {} -cnv", report.out.display());
    if args.ollama {
        let modelfile = write_modelfile(&args.model, &report.out)?;
        println!(
            "wrote {}; run it: ollama create NAME -f {} && ollama run NAME",
            modelfile.display(),
            modelfile.display()
        );
    }
    Ok(())
}

/// The Modelfile beside `gguf`, with the chat template and EOS of the model's tokenizer.
fn write_modelfile(model: &str, gguf: &std::path::Path) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let tokenizer = lora_dpo::data::load_chat_tokenizer(gguf).with_context(|| {
        format!(
            "{}: reading its tokenizer for the Modelfile",
            gguf.display()
        )
    })?;
    let name = gguf
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let text = lora_dpo::export::ollama::modelfile(
        &name,
        tokenizer.template.as_ref().map(|t| t.source()),
        tokenizer.eos.as_ref().map(|t| t.text.as_str()),
        model,
    );
    let path = gguf.with_file_name("Modelfile");
    let tmp = gguf.with_file_name(".Modelfile.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(path)
}
