//! `lora-dpo eval`: one JSON object of metrics on stdout.

use std::path::PathBuf;

use anyhow::Context;
use lora_dpo::config::{DeviceSpec, LoadedConfig};
use lora_dpo::data::{load_chat_tokenizer, read_dataset, DataConfig, RawDataset, Stage};
use lora_dpo::model::{Dtype, Quantize};
use lora_dpo::ops::Kernels;
use lora_dpo::train::dpo::{DpoLoss, FDivergence, LossType, LossTypes};
use lora_dpo::train::evaluate::{evaluate, is_preference_data, EvalLoss, EvalRequest};
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
    /// The objective: a TRL loss type, or several separated by commas (default: the config's
    /// [dpo] loss_type, else sigmoid). The config's other [dpo] loss keys apply unless given.
    /// `orpo` evaluates ORPOTrainer's objective (with --beta) instead; `kto` KTOTrainer's on
    /// unpaired rows (prompt, completion, label), with the config's [kto] options.
    #[arg(long, value_delimiter = ',')]
    loss_type: Vec<String>,
    /// One weight per loss type, separated by commas (TRL's loss_weights; default all 1.0).
    #[arg(long, value_delimiter = ',')]
    loss_weights: Vec<f64>,
    #[arg(long)]
    label_smoothing: Option<f64>,
    #[arg(long)]
    simpo_gamma: Option<f64>,
    #[arg(long)]
    cpo_alpha: Option<f64>,
    /// AlphaPO's reward shape for simpo and cpo (CPOConfig's `alpha`).
    #[arg(long)]
    alpha: Option<f64>,
    #[arg(long)]
    discopop_tau: Option<f64>,
    /// f-DPO: reverse_kl (DPO), forward_kl, js_divergence or alpha_divergence.
    #[arg(long)]
    f_divergence_type: Option<FDivergence>,
    #[arg(long)]
    f_alpha_divergence_coef: Option<f64>,
    /// LD-DPO: weight of the tokens past a pair's shorter completion, in [0, 1].
    #[arg(long)]
    ld_alpha: Option<f64>,
    /// WPO: weigh each pair's loss by its completions' probability under the policy.
    #[arg(long)]
    use_weighting: bool,
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
    if args.loss_type == ["kto"] {
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
    let mut dpo = cfg
        .as_ref()
        .and_then(|c| c.run.dpo.clone())
        .unwrap_or_default();
    let orpo = args.loss_type == ["orpo"];
    if !args.loss_type.is_empty() && !orpo {
        // Another objective: the config's keys of its own do not carry over.
        let types = args
            .loss_type
            .iter()
            .map(|t| t.parse::<LossType>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("--loss-type: {e}, or orpo, or kto"))?;
        dpo.loss_type = LossTypes(types);
        dpo.loss_weights = None;
        dpo.rpo_alpha = None;
        dpo.label_smoothing = 0.0;
        dpo.simpo_gamma = None;
        dpo.cpo_alpha = None;
        dpo.alpha = None;
        dpo.discopop_tau = None;
        dpo.f_divergence_type = None;
        dpo.f_alpha_divergence_coef = None;
        dpo.ld_alpha = None;
        dpo.use_weighting = false;
    }
    if !args.loss_weights.is_empty() {
        dpo.loss_weights = Some(args.loss_weights.clone());
    }
    dpo.beta = args.beta.unwrap_or(dpo.beta);
    dpo.label_smoothing = args.label_smoothing.unwrap_or(dpo.label_smoothing);
    dpo.simpo_gamma = args.simpo_gamma.or(dpo.simpo_gamma);
    dpo.cpo_alpha = args.cpo_alpha.or(dpo.cpo_alpha);
    dpo.alpha = args.alpha.or(dpo.alpha);
    dpo.discopop_tau = args.discopop_tau.or(dpo.discopop_tau);
    dpo.f_divergence_type = args.f_divergence_type.or(dpo.f_divergence_type);
    dpo.f_alpha_divergence_coef = args.f_alpha_divergence_coef.or(dpo.f_alpha_divergence_coef);
    dpo.ld_alpha = args.ld_alpha.or(dpo.ld_alpha);
    dpo.use_weighting |= args.use_weighting;
    // Evaluation reads no reference cache.
    dpo.precompute_ref_log_probs = false;
    let loss: EvalLoss = if orpo {
        let beta = args
            .beta
            .or_else(|| {
                cfg.as_ref()
                    .and_then(|c| c.run.orpo.as_ref())
                    .map(|o| o.beta)
            })
            .unwrap_or(0.1);
        EvalLoss::Orpo { beta }
    } else {
        DpoLoss::from_stage(&dpo).context("eval")?.into()
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
    let mut loss = KtoLoss::from_stage(&kto).context("[kto]")?;
    if let Some(beta) = args.beta {
        loss.beta = beta;
    }
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
        // KTO's own loss goes alongside; the pair loss is not read.
        loss: DpoLoss::from_stage(&Default::default())?.into(),
        batch_size: args.batch_size,
        per_row: args.per_row,
    };
    let out = evaluate_kto_request(&request, raw, loss)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
