//! `lora-dpo generate`: stream a completion from a model, optionally with adapters.

use anyhow::Context;
use lora_dpo::config::DeviceSpec;
use lora_dpo::data::{load_chat_tokenizer, Message};
use lora_dpo::generate::{end_of_turn_ids, generate, GenerateOptions, TextStream};
use lora_dpo::model::{self, Dtype, Quantize};
use lora_dpo::ops::Kernels;
use lora_dpo::source::Source;
use std::io::Write;
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hugging Face model folder, hub repo id (owner/name, from the local cache) or .gguf file.
    #[arg(long)]
    model: String,
    /// PEFT LoRA adapter folder or hub repo id; repeat to stack several.
    #[arg(long)]
    adapter: Vec<String>,
    /// Load an adapter whose file lacks tensors its config targets, leaving those modules
    /// untrained (a warning lists them); by default such an adapter is refused.
    #[arg(long)]
    allow_missing: bool,
    /// The user message (or, with --raw, the text to continue).
    #[arg(long)]
    prompt: String,
    /// System message, for the chat template.
    #[arg(long)]
    system: Option<String>,
    /// Use the prompt as plain text, without the chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Weights dtype.
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
    /// Frozen projections: none, dense (dequantize a GGUF), or a GGML type (q8_0, q4k, ...).
    #[arg(long, default_value = "none")]
    quantize: Quantize,
    /// Ops: auto (the fastest for the device and dtype) or generic.
    #[arg(long, default_value = "auto")]
    kernels: Kernels,
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dtype = args.dtype.into();
    let device = args.device.open()?;
    let source = Source::parse(&args.model)?;
    let tokenizer = match &source {
        // A GGUF file carries its tokenizer in its metadata.
        Source::File(path) => load_chat_tokenizer(path)?,
        _ => {
            // The tokenizer files sit together (a folder, or a hub snapshot once fetched).
            let tokenizer_json = source.require("tokenizer.json")?;
            for optional in ["tokenizer_config.json", "chat_template.jinja"] {
                source.find(optional)?;
            }
            load_chat_tokenizer(tokenizer_json.parent().unwrap_or(Path::new(".")))?
        }
    };
    let options = model::LoadOptions::from_config(dtype, args.quantize).with_kernels(args.kernels);
    let model = model::load_model_with(&args.model, &options, &device)?;
    let adapters = args
        .adapter
        .iter()
        .map(|spec| crate::cli::adapters::load(spec, &model.config, &device, args.allow_missing))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let adapter_refs: Vec<_> = adapters.iter().collect();

    let mut stop_ids = model.config.eos_token_ids.clone();
    stop_ids.extend(generation_config_eos(&source)?);
    stop_ids.extend(tokenizer.eos.as_ref().map(|t| t.id));
    if let Some(template) = &tokenizer.template {
        stop_ids.extend(end_of_turn_ids(template.source(), &tokenizer.tokenizer));
    }
    let prompt_ids = if args.raw {
        if args.system.is_some() {
            anyhow::bail!("--system needs the chat template; drop --raw or --system");
        }
        tokenizer.encode(&args.prompt, true)?
    } else {
        if tokenizer.template.is_none() {
            anyhow::bail!(
                "{}: no chat_template in tokenizer_config.json and no chat_template.jinja \
                 (use --raw for plain text)",
                source.display_name()
            );
        }
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::new("system", system));
        }
        messages.push(Message::new("user", &args.prompt));
        // The template writes BOS itself, as transformers' apply_chat_template does.
        tokenizer.encode(&tokenizer.render(&messages, true)?, false)?
    };
    stop_ids.sort_unstable();
    stop_ids.dedup();
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop_ids,
    };
    let mut stream = TextStream::new(&tokenizer.tokenizer);
    let mut stdout = std::io::stdout();
    let generated = generate(&model, &adapter_refs, &prompt_ids, &options, |id| {
        if let Some(piece) = stream.push(id)? {
            stdout.write_all(piece.as_bytes())?;
            stdout.flush()?;
        }
        Ok(())
    })?;
    println!();
    let stopped = generated
        .last()
        .is_some_and(|t| options.stop_ids.contains(t));
    if !stopped && generated.len() < options.max_new_tokens {
        eprintln!(
            "(stopped at the model's context length, max_position_embeddings = {})",
            model.config.max_position_embeddings
        );
    }
    Ok(())
}

/// `eos_token_id` of generation_config.json (a number or a list), when present.
fn generation_config_eos(source: &Source) -> anyhow::Result<Vec<u32>> {
    let Some(path) = source.find("generation_config.json")? else {
        return Ok(vec![]);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    Ok(match json.get("eos_token_id") {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|v| v as u32)
            .collect(),
        Some(v) => v.as_u64().map(|v| v as u32).into_iter().collect(),
        None => vec![],
    })
}
