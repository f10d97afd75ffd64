//! `lora-dpo generate`: stream a completion from a model, optionally with adapters; or answer
//! a file of prompts in batches (`--data`, the library's `generate::answers`).

use anyhow::Context;
use lora_dpo::config::DeviceSpec;
use lora_dpo::data::{load_chat_tokenizer, Message};
use lora_dpo::generate::answers::{self, Answerer, Format, Prompt};
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
    #[arg(long, required_unless_present = "data", conflicts_with = "data")]
    prompt: Option<String>,
    /// A file of prompts to answer in batches: `prompt`/`messages` rows, MT-Bench's
    /// question.jsonl (`turns`), or AlpacaEval's `instruction` rows.
    #[arg(long, requires = "out")]
    data: Option<std::path::PathBuf>,
    /// Where --data's answers go: FastChat model-answer JSONL (MT-Bench input), AlpacaEval's
    /// model_outputs.json (instruction input), else `prompt` + `completions[]` JSONL.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Sequences generated together (--data).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Answers per prompt (--data), each sampled with its own seed.
    #[arg(long, default_value_t = 1)]
    num_return_sequences: usize,
    /// Name written as model_id / generator (default: the last adapter's or the model's name).
    #[arg(long)]
    model_id: Option<String>,
    /// Replace --out if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Generate --max-new-tokens every time, through EOS and end-of-turn tokens (vLLM's
    /// ignore_eos): for benchmarks.
    #[arg(long)]
    ignore_eos: bool,
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
    /// Sample among the k most likely tokens only (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
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
    if args.raw && args.system.is_some() {
        anyhow::bail!("--system needs the chat template; drop --raw or --system");
    }
    if !args.raw && tokenizer.template.is_none() {
        anyhow::bail!(
            "{}: no chat_template in tokenizer_config.json and no chat_template.jinja \
             (use --raw for plain text)",
            source.display_name()
        );
    }
    stop_ids.sort_unstable();
    stop_ids.dedup();
    if args.ignore_eos {
        stop_ids.clear();
    }
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        stop_ids,
    };
    let Some(prompt) = &args.prompt else {
        let model_id = args
            .model_id
            .clone()
            .unwrap_or_else(|| model_id_of(args.adapter.last().unwrap_or(&args.model)));
        let run = DataRun {
            args: &args,
            model: &model,
            adapters: &adapter_refs,
            tokenizer: &tokenizer,
            options: &options,
        };
        return run.answer(&model_id);
    };
    let mut no_progress = |_: usize, _: usize| {};
    let answerer = Answerer {
        model: &model,
        adapters: &adapter_refs,
        tokenizer: &tokenizer,
        options: &options,
        batch_size: 1,
        system: args.system.as_deref(),
        on_progress: &mut no_progress,
    };
    let prompt_ids = answerer.prompt_ids(&if args.raw {
        Prompt::Raw(prompt.clone())
    } else {
        Prompt::Chat(vec![Message::new("user", prompt)])
    })?;
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

/// What `--data` answers with.
struct DataRun<'a> {
    args: &'a Args,
    model: &'a model::Model,
    adapters: &'a [&'a lora_dpo::model::Adapter],
    tokenizer: &'a lora_dpo::data::ChatTokenizer,
    options: &'a GenerateOptions,
}

impl DataRun<'_> {
    /// Every prompt answered in batches, with a progress bar, into `--out`.
    fn answer(&self, model_id: &str) -> anyhow::Result<()> {
        let args = self.args;
        let (data, out) = (
            args.data.as_ref().expect("clap"),
            args.out.as_ref().expect("clap"),
        );
        if args.num_return_sequences == 0 || args.batch_size == 0 {
            anyhow::bail!("--num-return-sequences and --batch-size must be at least 1");
        }
        if out.exists() && !args.overwrite {
            anyhow::bail!("{}: exists (pass --overwrite to replace it)", out.display());
        }
        let (format, items) = answers::read_items(data, args.raw)?;
        let turns: usize = items.iter().map(|i| i.turns.len()).sum();
        let answers_total = turns * args.num_return_sequences;
        let bar = indicatif::ProgressBar::new(answers_total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} answers · {msg} · {elapsed_precise} (ETA {eta})",
            )
            .expect("template"),
        );
        let start = std::time::Instant::now();
        let tokens = std::cell::Cell::new(0usize);
        let mut progress = |done: usize, new_tokens: usize| {
            tokens.set(tokens.get() + new_tokens);
            bar.inc(done as u64);
            let rate = tokens.get() as f64 / start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{} tokens · {rate:.1} tok/s", tokens.get()));
        };
        let mut answerer = Answerer {
            model: self.model,
            adapters: self.adapters,
            tokenizer: self.tokenizer,
            options: self.options,
            batch_size: args.batch_size,
            system: args.system.as_deref(),
            on_progress: &mut progress,
        };
        let text = answers::answer_file(
            &mut answerer,
            format,
            &items,
            args.num_return_sequences,
            model_id,
        )?;
        bar.finish_and_clear();
        lora_dpo::atomic_file::write_into_place(out, |tmp| {
            std::fs::write(tmp, &text).with_context(|| format!("{}: cannot write", tmp.display()))
        })?;
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{answers_total} answers ({}) to {} rows, {} tokens in {secs:.1} s ({:.1} tok/s): {}",
            match format {
                Format::MtBench => "MT-Bench",
                Format::AlpacaEval => "AlpacaEval",
                Format::Prompts => "prompts",
            },
            items.len(),
            tokens.get(),
            tokens.get() as f64 / secs.max(1e-9),
            out.display()
        );
        Ok(())
    }
}

/// The default `model_id`: a trained stage's adapter (`adapters/demo/dpo/adapter`) is named by
/// its run and stage (`demo-dpo`), anything else by its last path component.
fn model_id_of(spec: &str) -> String {
    let parts: Vec<&str> = spec.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [.., run, stage, "adapter"] => format!("{run}-{stage}"),
        [.., last] => last.to_string(),
        [] => "model".to_string(),
    }
}
