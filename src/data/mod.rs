//! Datasets, chat templates, tokenization, loss masks and batches.
//!
//! The flow: [`reader`] reads rows from JSONL / JSON / Parquet files, [`schema`] detects the TRL layout and checks
//! each row, [`tokenize`] renders the chat template and tokenizes with TRL's definitions, [`truncate`] applies the
//! length limits, [`batch`] pads rows into batches. [`pipeline`] runs the whole flow and [`report`] describes the
//! result (the `lora-dpo data` command).
//!
//! Training code:
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use lora_dpo::data::{self, DataConfig, Stage};
//! let tok = data::load_chat_tokenizer("models/SmolLM2-135M-Instruct".as_ref())?; // folder or .gguf
//! let cfg = DataConfig::from_toml_file("configs/dpo.toml".as_ref(), Stage::Dpo)?; // or DataConfig::default()
//! let ds = data::load_dpo("data/dpo/train.jsonl".as_ref(), None, &tok, &cfg)?; // bad rows: Err
//! for idx in data::batch_order(&ds.lengths(), 4, true, cfg.group_by_length, 42) {
//!     let pairs: Vec<_> = idx.iter().map(|&i| &ds.examples[i]).collect();
//!     // rows 0..n: prompt + chosen, rows n..2n: prompt + rejected; loss_mask = completion tokens
//!     let batch = data::collate_dpo(&pairs, ds.pad_id, None);
//!     let _ = (batch.input_ids, batch.attention_mask, batch.loss_mask, batch.batch_size, batch.seq_len);
//! }
//! let sft = data::load_sft("data/sft/train.jsonl".as_ref(), None, &tok, &DataConfig::default())?;
//! let seqs: Vec<_> = sft.examples.iter().take(4).collect();
//! let batch = data::collate(&seqs, sft.pad_id, None); // loss_mask = assistant turns
//! # let _ = batch; Ok(()) }
//! ```
//! `loss_mask[t] = 1` means token `t` is a target: the logits at position `t - 1` predict it. Padding is on the
//! right, with the pad token (else EOS), and is never in the loss mask.

pub mod batch;
pub mod binarize;
pub mod config;
pub mod gguf_spm;
pub mod hub;
pub mod kto;
pub mod mixture;
pub mod pipeline;
pub mod reader;
pub mod report;
pub mod schema;
pub mod template;
pub mod tokenize;
pub mod tokenizer;
pub mod truncate;
pub mod unpair;

pub use batch::{batch_order, collate, collate_dpo, Batch, SamplingStrategy};
pub use config::{Columns, DataConfig, LengthLimit, TruncationMode};
pub use kto::{load_kto, prepare_kto, KtoDataset};
pub use pipeline::{
    detect_stage, load_dpo, load_sft, prepare_dpo, prepare_sft, stage_of, DpoDataset, SftDataset,
    Stats,
};
pub use reader::{first_readable_row, read_dataset, BadRow, Pos, RawDataset, RowLoc};
pub use schema::{DpoRow, Message, Schema, SftRow, Turns};
pub use template::ChatTemplate;
pub use tokenize::{DpoTokens, Sequence};
pub use tokenizer::{load_chat_tokenizer, ChatTokenizer, SpecialToken};
pub use truncate::DpoExample;

/// The training stage a dataset is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Supervised fine-tuning.
    #[default]
    Sft,
    /// Direct Preference Optimization.
    Dpo,
    /// Kahneman-Tversky Optimization, on unpaired (labelled) completions.
    Kto,
    /// Odds Ratio Preference Optimization (preference pairs, as DPO).
    Orpo,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Sft => "sft",
            Stage::Dpo => "dpo",
            Stage::Kto => "kto",
            Stage::Orpo => "orpo",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Stage {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "sft" => Ok(Stage::Sft),
            "dpo" => Ok(Stage::Dpo),
            "kto" => Ok(Stage::Kto),
            "orpo" => Ok(Stage::Orpo),
            other => anyhow::bail!("unknown stage `{other}`: expected sft, dpo, kto or orpo"),
        }
    }
}
