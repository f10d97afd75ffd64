//! `lora-dpo data`: read, template, tokenize, mask and truncate a dataset, and show what training would see.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use lora_dpo::data::{self, report, DataConfig, Stage, TruncationMode};
use lora_dpo::model::load_config;
use lora_dpo::source::Source;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<DataCommand>,
    #[command(flatten)]
    pub show: ShowArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Rated completions (UltraFeedback's raw schema, or prompt + completions[] with scores) to
    /// preference pairs in ultrafeedback_binarized's schema.
    Binarize(super::binarize::Args),
}

/// Without a subcommand: how a dataset is read, templated, tokenized, masked and truncated.
#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// Model: a Hugging Face model folder (tokenizer.json, tokenizer_config.json) or a .gguf file.
    #[arg(long, required = true)]
    pub model: Option<PathBuf>,
    /// Dataset: a .jsonl, .json or .parquet file, a folder of them, or a hub dataset
    /// `hf://datasets/OWNER/NAME` (with --split; fetched into the HF cache). Without it, the
    /// --config stage's train_file (a mixture too) and its held-out split.
    #[arg(long, required_unless_present = "config")]
    pub data: Option<String>,
    /// Hub revision (branch, tag or commit) of a hf://datasets/ name (default: main).
    #[arg(long)]
    pub revision: Option<String>,
    /// Training stage the data is for: sft, dpo, kto or orpo (default: dpo when the rows have chosen/rejected, else sft).
    #[arg(long)]
    pub stage: Option<Stage>,
    /// TOML config; data options are read from its [sft] or [dpo] table.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Split to read from a folder (default: train when the folder has several).
    #[arg(long)]
    pub split: Option<String>,
    /// Skip malformed rows and report how many, instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// Longest sequence in tokens (overrides the config).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// keep_start, keep_end or off (overrides the config).
    #[arg(long)]
    pub truncation_mode: Option<TruncationMode>,
    /// Which kept example to show (0-based).
    #[arg(long, default_value_t = 0)]
    pub example: usize,
}

/// The model's `max_position_embeddings`, from the folder's config.json or the GGUF's metadata; `None` for a
/// folder that holds only a tokenizer.
fn model_max_length(model: &Path) -> anyhow::Result<Option<usize>> {
    let folder = if model.file_name().and_then(|n| n.to_str()) == Some("tokenizer.json") {
        model.parent().unwrap_or(Path::new("."))
    } else {
        model
    };
    if folder.is_dir() && !folder.join("config.json").exists() {
        return Ok(None);
    }
    let source = Source::parse(&folder.to_string_lossy())?;
    let config = load_config(&source).with_context(|| {
        format!(
            "{}: cannot read the model config for its max_position_embeddings",
            folder.display()
        )
    })?;
    Ok(Some(config.max_position_embeddings))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(DataCommand::Binarize(a)) => super::binarize::run(a),
        None => show(args.show),
    }
}

fn show(args: ShowArgs) -> anyhow::Result<()> {
    // clap requires --model, and --data or --config, when no subcommand is given.
    let Some(model) = args.model.clone() else {
        anyhow::bail!("`lora-dpo data` needs --model");
    };
    let Some(data_arg) = args.data.clone() else {
        return show_config_data(&args, &model);
    };
    let src = data::hub::resolve(&data_arg, args.split.as_deref(), args.revision.as_deref())?;
    if data::hub::repo_of(&data_arg).is_some() {
        let files = data::reader::list_files(&src.path, src.split.as_deref())?;
        println!(
            "{} split {}: {} file(s) in {}",
            data_arg,
            src.split.as_deref().unwrap_or("train"),
            files.len(),
            src.path.display()
        );
        for f in &files {
            println!("  {}", f.strip_prefix(&src.path).unwrap_or(f).display());
        }
    }
    let data_path = src.path.as_path();
    let stage = match args.stage {
        Some(s) => s,
        None => {
            let first = data::first_readable_row(data_path, src.split.as_deref())?;
            data::stage_of(first.as_ref(), &DataConfig::default())
        }
    };
    let mut cfg = match &args.config {
        Some(path) => DataConfig::from_toml_file(path, stage)?,
        None => DataConfig::default(),
    };
    if args.skip_bad_rows {
        cfg.skip_bad_rows = true;
    }
    if let Some(m) = args.max_length {
        cfg.max_length = Some(m);
    }
    if let Some(t) = args.truncation_mode {
        cfg.truncation_mode = t;
    }
    cfg.validate()?;
    let tok = data::load_chat_tokenizer(&model)?;
    cfg.model_max_length = model_max_length(&model)?;
    let split = src.split.as_deref();
    let (stats, shown) = match stage {
        Stage::Sft => {
            let ds = data::load_sft(data_path, split, &tok, &cfg)?;
            let i = args.example.min(ds.examples.len() - 1);
            let shown = vec![(
                format!("example {i} ({})", ds.locs[i]),
                ds.examples[i].clone(),
            )];
            (ds.stats, shown)
        }
        Stage::Dpo | Stage::Orpo => {
            let ds = data::load_dpo(data_path, split, &tok, &cfg)?;
            let i = args.example.min(ds.examples.len() - 1);
            let ex = &ds.examples[i];
            let shown = vec![
                (format!("example {i} ({}), chosen", ds.locs[i]), ex.chosen()),
                (
                    format!("example {i} ({}), rejected", ds.locs[i]),
                    ex.rejected(),
                ),
            ];
            (ds.stats, shown)
        }
        Stage::Kto => {
            // The KL pairs shown are those of TRL's default batch size, 8.
            let ds = data::load_kto(data_path, split, &tok, &cfg, 8)?;
            let i = args.example.min(ds.len() - 1);
            let ex = &ds.pairs.examples[i];
            let shown = vec![
                (
                    format!(
                        "example {i} ({}), label = {}",
                        ds.pairs.locs[i], ds.labels[i]
                    ),
                    ex.chosen(),
                ),
                (
                    format!(
                        "example {i} ({}), KL pair (another row's completion)",
                        ds.pairs.locs[i]
                    ),
                    ex.rejected(),
                ),
            ];
            (ds.pairs.stats, shown)
        }
    };
    let mut out = String::new();
    out.push_str(&report::summary(&stats, &cfg));
    if cfg.model_max_length.is_none() {
        out.push_str("model limit: unknown (no config.json next to the tokenizer)\n");
    }
    let _ = writeln!(
        out,
        "pad id: {}{}",
        tok.pad_id(),
        match (&tok.bos, &tok.eos) {
            (b, Some(e)) => format!(
                ", eos {:?} ({}), bos {}",
                e.text,
                e.id,
                b.as_ref()
                    .map(|b| format!("{:?} ({})", b.text, b.id))
                    .unwrap_or_else(|| "none".into())
            ),
            _ => String::from(", no eos token"),
        }
    );
    for (title, seq) in shown {
        out.push('\n');
        let _ = writeln!(
            out,
            "── {title}: {} tokens, {} trained (between {} and {}) ──",
            seq.len(),
            seq.n_trained(),
            report::TRAINED_OPEN,
            report::TRAINED_CLOSE
        );
        let _ = writeln!(out, "{}", report::show_sequence(&tok, &seq)?);
        out.push_str(&report::token_table(&tok, &seq, 48)?);
    }
    // A closed pipe (`lora-dpo data … | head`) is not an error.
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Without --data: the config stage's training rows as training reads them (a mixture's parts
/// sampled, the held-out rows carved), with the counts of each split.
fn show_config_data(args: &ShowArgs, model: &Path) -> anyhow::Result<()> {
    let path = args
        .config
        .as_ref()
        .expect("clap requires --config without --data");
    let cfg = lora_dpo::config::LoadedConfig::load(path, &[])?;
    let stage = match args.stage {
        Some(s) => s,
        None => [Stage::Sft, Stage::Dpo, Stage::Kto, Stage::Orpo]
            .into_iter()
            .find(|s| {
                lora_dpo::train::run::stage_config(&cfg, *s).is_ok_and(|c| c.train_file.is_some())
            })
            .with_context(|| format!("{}: no stage with a train_file", path.display()))?,
    };
    let section = lora_dpo::train::run::stage_config(&cfg, stage)?;
    let mixed = lora_dpo::train::run::mixed_rows(section, stage, cfg.run.output.seed)?;
    for line in &mixed.report {
        println!("{line}");
    }
    let data_cfg = DataConfig::from_toml_file(path, stage)?;
    let tok = data::load_chat_tokenizer(model)?;
    let splits = [("train", Some(mixed.train)), ("held out", mixed.held_out)];
    for (name, raw) in splits {
        let Some(raw) = raw else { continue };
        let stats = match stage {
            Stage::Sft => data::prepare_sft(raw, &tok, &data_cfg)?.stats,
            Stage::Dpo | Stage::Orpo => data::prepare_dpo(raw, &tok, &data_cfg)?.stats,
            Stage::Kto => data::prepare_kto(raw, &tok, &data_cfg, 8)?.pairs.stats,
        };
        println!("== {name}");
        print!("{}", report::summary(&stats, &data_cfg));
    }
    Ok(())
}
