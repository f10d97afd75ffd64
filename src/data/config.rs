//! Data options, with TRL's key names so they can sit in the `[sft]` / `[dpo]` sections of the TOML config.

use serde::Deserialize;

/// Which end of a too-long sequence survives truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TruncationMode {
    /// Keep the first `max_length` tokens (TRL's default).
    #[default]
    KeepStart,
    /// Keep the last `max_length` tokens.
    KeepEnd,
    /// Never truncate: a row longer than `max_length` is a bad row (an error, or skipped with `skip_bad_rows`).
    Off,
}

impl std::fmt::Display for TruncationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TruncationMode::KeepStart => "keep_start",
            TruncationMode::KeepEnd => "keep_end",
            TruncationMode::Off => "off",
        })
    }
}

impl std::str::FromStr for TruncationMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "keep_start" => Ok(Self::KeepStart),
            "keep_end" => Ok(Self::KeepEnd),
            "off" | "none" => Ok(Self::Off),
            other => anyhow::bail!(
                "unknown truncation_mode `{other}`: expected keep_start, keep_end or off"
            ),
        }
    }
}

/// Column names, for datasets whose columns are not named the TRL way. `None` means TRL's name.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Columns {
    /// Conversation column (default `messages`; `conversations` with `from`/`value` keys is also recognised).
    pub messages: Option<String>,
    /// Prompt column (default `prompt`).
    pub prompt: Option<String>,
    /// Completion column for SFT prompt-completion rows (default `completion`).
    pub completion: Option<String>,
    /// Preferred completion for DPO (default `chosen`).
    pub chosen: Option<String>,
    /// Dispreferred completion for DPO (default `rejected`).
    pub rejected: Option<String>,
    /// KTO: whether the completion is desirable (default `label`, a boolean).
    pub label: Option<String>,
}

impl Columns {
    pub fn messages(&self) -> &str {
        self.messages.as_deref().unwrap_or("messages")
    }
    pub fn prompt(&self) -> &str {
        self.prompt.as_deref().unwrap_or("prompt")
    }
    pub fn completion(&self) -> &str {
        self.completion.as_deref().unwrap_or("completion")
    }
    pub fn chosen(&self) -> &str {
        self.chosen.as_deref().unwrap_or("chosen")
    }
    pub fn rejected(&self) -> &str {
        self.rejected.as_deref().unwrap_or("rejected")
    }
    pub fn label(&self) -> &str {
        self.label.as_deref().unwrap_or("label")
    }
}

/// Options of the data pipeline. Unknown keys are ignored so that this can be read from a section shared with
/// training options (`learning_rate`, `beta`, …).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct DataConfig {
    /// Longest sequence (prompt + completion) in tokens; `None` means no limit. TRL default: 1024.
    pub max_length: Option<usize>,
    /// DPO: the prompt keeps at most its last `max_prompt_length` tokens (older TRL versions). `None`: no limit.
    pub max_prompt_length: Option<usize>,
    /// DPO: each completion keeps at most its first `max_completion_length` tokens. `None`: no limit.
    pub max_completion_length: Option<usize>,
    /// What to do with sequences longer than `max_length`.
    pub truncation_mode: TruncationMode,
    /// SFT `text` column name (TRL's `dataset_text_field`).
    pub dataset_text_field: String,
    /// Column names other than TRL's.
    pub columns: Columns,
    /// Skip malformed rows (and report how many) instead of stopping at the first one.
    pub skip_bad_rows: bool,
    /// SFT prompt-completion rows: loss on the completion only (TRL's `completion_only_loss`, default on).
    pub completion_only_loss: Option<bool>,
    /// SFT conversations: loss on assistant turns only. TRL's default is `false`; ours is `true`, the usual choice
    /// for chat fine-tuning. Set it to `false` to train on all tokens.
    pub assistant_only_loss: bool,
    /// Batch rows of similar length together to reduce padding.
    pub group_by_length: bool,
    /// The model's `max_position_embeddings`: no row may be longer, whatever `max_length` says. Set from the
    /// model by the commands, never from the TOML.
    #[serde(skip)]
    pub model_max_length: Option<usize>,
}

/// The length limit a row is held to, and where it comes from (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthLimit {
    pub tokens: usize,
    /// The model's `max_position_embeddings` is the tighter limit (or the only one).
    pub from_model: bool,
}

impl std::fmt::Display for LengthLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.from_model {
            write!(f, "the model's max_position_embeddings {}", self.tokens)
        } else {
            write!(f, "max_length {}", self.tokens)
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            max_length: Some(1024),
            max_prompt_length: None,
            max_completion_length: None,
            truncation_mode: TruncationMode::KeepStart,
            dataset_text_field: "text".to_string(),
            columns: Columns::default(),
            skip_bad_rows: false,
            completion_only_loss: None,
            assistant_only_loss: true,
            group_by_length: false,
            model_max_length: None,
        }
    }
}

impl DataConfig {
    /// Reads the data options from a TOML file: the `[sft]` or `[dpo]` table for `stage`, else the top level.
    pub fn from_toml_file(
        path: &std::path::Path,
        stage: crate::data::Stage,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml_str(&text, stage)
            .with_context(|| format!("in config file {}", path.display()))
    }

    /// Parses the data options from TOML text (see [`DataConfig::from_toml_file`]).
    pub fn from_toml_str(text: &str, stage: crate::data::Stage) -> anyhow::Result<Self> {
        let table: toml::Table = toml::from_str(text)?;
        let key = stage.as_str();
        let section = match table.get(key) {
            Some(toml::Value::Table(t)) => t.clone(),
            Some(_) => anyhow::bail!("`{key}` must be a table"),
            None => table,
        };
        let cfg: DataConfig = toml::Value::Table(section)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.message()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// These options with the model's position limit (`max_position_embeddings`) applied to every row.
    pub fn with_model_max_length(mut self, max_position_embeddings: usize) -> Self {
        self.model_max_length = Some(max_position_embeddings);
        self
    }

    /// The tighter of `max_length` and the model's limit; `None` when neither is set.
    pub fn length_limit(&self) -> Option<LengthLimit> {
        match (self.max_length, self.model_max_length) {
            (Some(l), Some(m)) if m < l => Some(LengthLimit {
                tokens: m,
                from_model: true,
            }),
            (Some(l), _) => Some(LengthLimit {
                tokens: l,
                from_model: false,
            }),
            (None, Some(m)) => Some(LengthLimit {
                tokens: m,
                from_model: true,
            }),
            (None, None) => None,
        }
    }

    /// Checks option combinations.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_length == Some(0) {
            anyhow::bail!("max_length must be at least 1");
        }
        if let (Some(p), Some(m)) = (self.max_prompt_length, self.max_length) {
            if p >= m {
                anyhow::bail!("max_prompt_length ({p}) must be smaller than max_length ({m})");
            }
        }
        if self.max_completion_length == Some(0) {
            anyhow::bail!("max_completion_length must be at least 1");
        }
        Ok(())
    }
}
