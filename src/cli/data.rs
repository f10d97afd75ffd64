//! `lora-dpo data`: read, template, tokenize, mask and truncate a dataset, and show what training would see.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use lora_dpo::data::{self, report, DataConfig, Stage, TruncationMode};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model: a Hugging Face model folder (tokenizer.json, tokenizer_config.json) or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset: a .jsonl, .json or .parquet file, or a folder of them.
    #[arg(long)]
    pub data: PathBuf,
    /// Training stage the data is for: sft or dpo (default: dpo when the rows have chosen/rejected, else sft).
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

pub fn run(args: Args) -> anyhow::Result<()> {
    let raw = data::read_dataset(&args.data, args.split.as_deref())?;
    let stage = args
        .stage
        .unwrap_or_else(|| data::detect_stage(&raw, &DataConfig::default()));
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
    let tok = data::load_chat_tokenizer(&args.model)?;
    let (stats, shown) = match stage {
        Stage::Sft => {
            let ds = data::prepare_sft(raw, &tok, &cfg)?;
            let i = args.example.min(ds.examples.len() - 1);
            let shown = vec![(
                format!("example {i} ({})", ds.locs[i]),
                ds.examples[i].clone(),
            )];
            (ds.stats, shown)
        }
        Stage::Dpo => {
            let ds = data::prepare_dpo(raw, &tok, &cfg)?;
            let i = args.example.min(ds.examples.len() - 1);
            let ex = &ds.examples[i];
            let shown = vec![
                (
                    format!("example {i} ({}), chosen", ds.locs[i]),
                    ex.chosen.clone(),
                ),
                (
                    format!("example {i} ({}), rejected", ds.locs[i]),
                    ex.rejected.clone(),
                ),
            ];
            (ds.stats, shown)
        }
    };
    let mut out = String::new();
    out.push_str(&report::summary(&stats, &cfg));
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
