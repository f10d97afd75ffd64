//! `lora-dpo eval`: one JSON object of metrics on stdout.

use std::path::PathBuf;

use lora_dpo::config::{DeviceSpec, LoadedConfig};
use lora_dpo::data::{load_chat_tokenizer, read_dataset, DataConfig, RawDataset, Stage};
use lora_dpo::model::{Dtype, Quantize};
use lora_dpo::ops::Kernels;
use lora_dpo::train::dpo::DpoLoss;
use lora_dpo::train::evaluate::{evaluate, is_preference_data, EvalRequest};
use lora_dpo::train::kto::{evaluate_kto_request, KtoLoss};
use lora_dpo::train::run::tokenizer_path;
use lora_dpo::{model, source::Source};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hugging Face folder, hub repo id, or GGUF file.
    #[arg(long)]
    model: String,
    /// PEFT adapter folder (or hub repo id); the reference is the model without it.
    #[arg(long)]
    adapter: Option<String>,
    /// Load an adapter whose file lacks tensors its config targets, leaving those modules
    /// untrained (a warning lists them); by default such an adapter is refused.
    #[arg(long)]
    allow_missing: bool,
    /// Dataset file or folder (preference pairs or SFT rows).
    #[arg(long)]
    data: PathBuf,
    /// DPO beta (default: the config's [dpo] beta, else 0.1; with kto, [kto] beta).
    #[arg(long)]
    beta: Option<f64>,
    /// `kto`: unpaired rows (prompt, completion, label) with TRL's KTO loss and metrics (the
    /// config's [kto] options); a DPO loss type (sigmoid, ipo, ...) replaces [dpo] loss_type.
    #[arg(long)]
    loss_type: Option<String>,
    /// Add per-row summed log-probs of chosen/rejected, policy and reference.
    #[arg(long)]
    per_row: bool,
    /// Run config whose [dpo]/[sft] data options (max_length, ...) and loss apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Frozen-weight dtype.
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
    /// Frozen projections: none, dense (dequantize a GGUF), or a GGML type (q8_0, q4k, ...).
    #[arg(long, default_value = "none")]
    quantize: Quantize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Ops: auto (the fastest for the device and dtype) or generic.
    #[arg(long, default_value = "auto")]
    kernels: Kernels,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = args
        .config
        .as_ref()
        .map(|p| LoadedConfig::load(p, &[]))
        .transpose()?;
    let raw = read_dataset(&args.data, None)?;
    if args.loss_type.as_deref() == Some("kto") {
        return run_kto(&args, cfg.as_ref(), raw);
    }
    // Column names may be renamed under [dpo.columns]: probe with the config's.
    let probe = match &cfg {
        Some(c) => c.data_config(Stage::Dpo)?,
        None => DataConfig::default(),
    };
    let stage = if is_preference_data(&raw, &probe) {
        Stage::Dpo
    } else {
        Stage::Sft
    };
    let data_config = match &cfg {
        Some(c) => c.data_config(stage)?,
        None => DataConfig::default(),
    };
    let dpo = cfg
        .as_ref()
        .and_then(|c| c.run.dpo.clone())
        .unwrap_or_default();
    let loss_type = match &args.loss_type {
        Some(t) => t.parse()?,
        None => dpo.loss_type,
    };
    let loss = DpoLoss {
        beta: args.beta.unwrap_or(dpo.beta),
        loss_type,
        label_smoothing: dpo.label_smoothing,
        rpo_alpha: None,
    };
    let device = args.device.open()?;
    let options = model::LoadOptions::from_config(args.dtype.into(), args.quantize)
        .with_kernels(args.kernels);
    let model = model::load_model_with(&args.model, &options, &device)?;
    let tokenizer = load_chat_tokenizer(&tokenizer_path(&Source::parse(&args.model)?)?)?;
    let adapter = args
        .adapter
        .as_ref()
        .map(|a| crate::cli::adapters::load(a, &model.config, &device, args.allow_missing))
        .transpose()?;
    // No row may pass the model's position limit, as in training.
    let data_config = data_config.with_model_max_length(model.config.max_position_embeddings);
    let request = EvalRequest {
        model: &model,
        adapter: adapter.as_ref(),
        tokenizer: &tokenizer,
        data_config: &data_config,
        loss,
        batch_size: args.batch_size,
        per_row: args.per_row,
    };
    let out = evaluate(&request, raw)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// `--loss-type kto`.
fn run_kto(args: &Args, cfg: Option<&LoadedConfig>, raw: RawDataset) -> anyhow::Result<()> {
    let data_config = match cfg {
        Some(c) => c.data_config(Stage::Kto)?,
        None => DataConfig::default(),
    };
    let kto = cfg.and_then(|c| c.run.kto.clone()).unwrap_or_default();
    let loss = KtoLoss {
        beta: args.beta.unwrap_or(kto.beta),
        desirable_weight: kto.desirable_weight,
        undesirable_weight: kto.undesirable_weight,
    };
    let device = args.device.open()?;
    let options = model::LoadOptions::from_config(args.dtype.into(), args.quantize)
        .with_kernels(args.kernels);
    let model = model::load_model_with(&args.model, &options, &device)?;
    let tokenizer = load_chat_tokenizer(&tokenizer_path(&Source::parse(&args.model)?)?)?;
    let adapter = args
        .adapter
        .as_ref()
        .map(|a| crate::cli::adapters::load(a, &model.config, &device, args.allow_missing))
        .transpose()?;
    let data_config = data_config.with_model_max_length(model.config.max_position_embeddings);
    let request = EvalRequest {
        model: &model,
        adapter: adapter.as_ref(),
        tokenizer: &tokenizer,
        data_config: &data_config,
        loss: DpoLoss {
            beta: loss.beta,
            loss_type: Default::default(),
            label_smoothing: 0.0,
            rpo_alpha: None,
        },
        batch_size: args.batch_size,
        per_row: args.per_row,
    };
    let out = evaluate_kto_request(&request, raw, loss)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
