//! Datasets, chat templates, tokenization, loss masks and batches.
//!
//! The flow: [`reader`] reads rows from JSONL / JSON / Parquet files, [`schema`] detects the TRL layout and checks
//! each row, [`tokenize`] renders the chat template and tokenizes with TRL's definitions, [`truncate`] applies the
//! length limits, [`batch`] pads rows into batches. [`pipeline`] runs the whole flow and [`report`] describes the
//! result (the `lora-dpo data` command).
//!
//! Training code calls [`load_chat_tokenizer`], then [`load_sft`] or [`load_dpo`], then [`batch_order`] and
//! [`collate`] / [`collate_dpo`].

pub mod batch;
pub mod config;
pub mod pipeline;
pub mod reader;
pub mod report;
pub mod schema;
pub mod template;
pub mod tokenize;
pub mod tokenizer;
pub mod truncate;

pub use batch::{batch_order, collate, collate_dpo, Batch};
pub use config::{Columns, DataConfig, TruncationMode};
pub use pipeline::{load_dpo, load_sft, prepare_dpo, prepare_sft, DpoDataset, SftDataset, Stats};
pub use reader::{read_dataset, BadRow, Pos, RowLoc};
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
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Sft => "sft",
            Stage::Dpo => "dpo",
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
            other => anyhow::bail!("unknown stage `{other}`: expected sft or dpo"),
        }
    }
}
