//! `lora-dpo data binarize`: rated completions to preference pairs (the library's
//! `data::binarize`).

use std::path::{Path, PathBuf};

use anyhow::bail;
use lora_dpo::data::{self, binarize::Rule};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleName {
    /// The Zephyr recipe's: the best by mean rating vs a seeded uniform draw among the lower ones.
    BestVsRandom,
    /// The best vs the worst.
    BestVsWorst,
    /// Every pair whose score gap is above 0 and at least --min-margin.
    AllPairs,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rated completions: a .jsonl, .json or .parquet file, a folder of them, or
    /// hf://datasets/OWNER/NAME (with --split).
    #[arg(long)]
    pub data: String,
    /// Split to read from a folder or hub dataset.
    #[arg(long)]
    pub split: Option<String>,
    /// Hub revision of a hf://datasets/ name (default: main).
    #[arg(long)]
    pub revision: Option<String>,
    /// Where the pairs go (JSON lines; written whole or not at all).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = RuleName::BestVsRandom)]
    pub rule: RuleName,
    /// Smallest score gap of a pair (all-pairs only).
    #[arg(long)]
    pub min_margin: Option<f64>,
    /// Seed of best-vs-random's draw (a prompt's draw depends only on it and the prompt).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Skip malformed rows and count them, instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// Replace --out if it exists.
    #[arg(long)]
    pub overwrite: bool,
    /// Fill every completion's score before the rule chooses: `implicit-reward` is DPO's
    /// β·(log π − log π_ref), with π = --model + --ref-adapter… + --adapter… and π_ref =
    /// --model + --ref-adapter… (a judge-free score, as in iterative DPO).
    #[arg(long, value_enum, requires = "model")]
    pub score_with: Option<ScoreWith>,
    /// Base model of --score-with (HF folder, hub repo id or .gguf file).
    #[arg(long)]
    pub model: Option<String>,
    /// The DPO adapter(s) of the policy, applied after --ref-adapter…
    #[arg(long, requires = "score_with")]
    pub adapter: Vec<String>,
    /// The reference's adapter(s): the SFT adapter DPO was trained against.
    #[arg(long, requires = "score_with")]
    pub ref_adapter: Vec<String>,
    /// β of the implicit reward.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// Pairs of completions per forward pass (--score-with).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value = "f32")]
    pub dtype: lora_dpo::model::Dtype,
    /// Frozen projections of --model: none, dense (dequantize a GGUF), or a GGML type.
    #[arg(long, default_value = "none")]
    pub quantize: lora_dpo::model::Quantize,
    #[arg(long, default_value = "auto")]
    pub device: lora_dpo::config::DeviceSpec,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoreWith {
    /// β·(log π(y|x) − log π_ref(y|x)), summed over the completion's tokens.
    ImplicitReward,
}

fn rule_of(args: &Args) -> anyhow::Result<Rule> {
    if args.min_margin.is_some() && args.rule != RuleName::AllPairs {
        bail!("--min-margin is read by --rule all-pairs only");
    }
    if args.seed.is_some() && args.rule != RuleName::BestVsRandom {
        bail!("--seed is read by --rule best-vs-random only");
    }
    Ok(match args.rule {
        RuleName::BestVsRandom => Rule::BestVsRandom {
            seed: args.seed.unwrap_or(42),
        },
        RuleName::BestVsWorst => Rule::BestVsWorst,
        RuleName::AllPairs => {
            let min_margin = args.min_margin.unwrap_or(0.0);
            if !(min_margin >= 0.0 && min_margin.is_finite()) {
                bail!("--min-margin {min_margin}: must be a number ≥ 0");
            }
            Rule::AllPairs { min_margin }
        }
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rule = rule_of(&args)?;
    let src = data::hub::resolve(&args.data, args.split.as_deref(), args.revision.as_deref())?;
    refuse_input_as_output(&src.path, &args.out)?;
    if args.out.exists() && !args.overwrite {
        bail!(
            "{}: exists (pass --overwrite to replace it)",
            args.out.display()
        );
    }
    let report = match args.score_with {
        None => data::binarize::binarize_file(
            &src.path,
            src.split.as_deref(),
            rule,
            args.skip_bad_rows,
            None,
            &args.out,
        )?,
        Some(ScoreWith::ImplicitReward) => {
            let model_spec = args.model.as_deref().expect("clap requires --model");
            if args.adapter.is_empty() {
                bail!("--score-with implicit-reward needs the DPO --adapter");
            }
            let device = args.device.open()?;
            let options =
                lora_dpo::model::LoadOptions::from_config(args.dtype.into(), args.quantize);
            let model = lora_dpo::model::load_model_with(model_spec, &options, &device)?;
            let source = lora_dpo::source::Source::parse(model_spec)?;
            let tokenizer =
                data::load_chat_tokenizer(&lora_dpo::train::run::tokenizer_path(&source)?)?;
            let load =
                |spec: &String| crate::cli::adapters::load(spec, &model.config, &device, false);
            let reference = args
                .ref_adapter
                .iter()
                .map(load)
                .collect::<Result<Vec<_>, _>>()?;
            let dpo = args
                .adapter
                .iter()
                .map(load)
                .collect::<Result<Vec<_>, _>>()?;
            let scorer = lora_dpo::train::implicit_reward::ImplicitReward {
                model: &model,
                policy: reference.iter().chain(&dpo).collect(),
                reference: reference.iter().collect(),
                tokenizer: &tokenizer,
                data_config: data::DataConfig::default()
                    .with_model_max_length(model.config.max_position_embeddings),
                beta: args.beta,
                batch_size: args.batch_size,
            };
            let mut score = |rated: &mut [data::binarize::Rated]| scorer.score(rated);
            data::binarize::binarize_file(
                &src.path,
                src.split.as_deref(),
                rule,
                args.skip_bad_rows,
                Some(&mut score),
                &args.out,
            )?
        }
    };
    print!("{report}");
    println!("written: {}", args.out.display());
    Ok(())
}

/// The output may not replace the input file, nor land in the input folder (a later read of the
/// folder would take it as data).
fn refuse_input_as_output(input: &Path, out: &Path) -> anyhow::Result<()> {
    let (input, out_abs) = (
        lora_dpo::paths::resolve(input)?,
        lora_dpo::paths::resolve(out)?,
    );
    if out_abs == input || (input.is_dir() && out_abs.starts_with(&input)) {
        bail!("{}: --out is the input or inside its folder", out.display());
    }
    Ok(())
}
