//! Scores completions by the DPO implicit reward `β·(log π(y|x) − log π_ref(y|x))`, the
//! judge-free score of iterative DPO in the DICE style: the policy is the base with the
//! reference adapters and then the DPO adapter(s), the reference the base with the reference
//! adapters alone (an SFT adapter, as DPO trained against it). Log-probs are summed over the
//! completion's tokens, as DPOTrainer's `rewards/chosen` are.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};

use super::preference::reference_sums;
use crate::data::binarize::{prompt_messages, Rated};
use crate::data::reader::{Pos, RawRow, RowLoc};
use crate::data::{prepare_dpo, ChatTokenizer, DataConfig, RawDataset};
use crate::model::{Adapter, Model};

pub struct ImplicitReward<'a> {
    pub model: &'a Model,
    /// Reference adapters then the DPO adapters, in the order they apply.
    pub policy: Vec<&'a Adapter>,
    pub reference: Vec<&'a Adapter>,
    pub tokenizer: &'a ChatTokenizer,
    pub data_config: DataConfig,
    pub beta: f64,
    pub batch_size: usize,
}

impl ImplicitReward<'_> {
    /// Sets every completion's score to its implicit reward.
    pub fn score(&self, rated: &mut [Rated]) -> Result<()> {
        // Each completion is the chosen side of a pair whose rejected side is a one-token
        // stand-in: pairs must differ, and two sampled completions may be equal. The prompt is
        // computed once per pair, the stand-in costs a token.
        let mut rows = Vec::new();
        let mut slots = Vec::new();
        for (p, r) in rated.iter().enumerate() {
            let prompt = Value::Array(prompt_messages(&r.prompt));
            for (k, c) in r.completions.iter().enumerate() {
                let text = c.messages.last().and_then(|m| m["content"].as_str());
                let stand_in = if text == Some(".") { ".." } else { "." };
                let mut row = Map::new();
                row.insert("prompt".into(), prompt.clone());
                row.insert("chosen".into(), Value::Array(c.messages.clone()));
                row.insert(
                    "rejected".into(),
                    json!([{"role": "assistant", "content": stand_in}]),
                );
                rows.push(RawRow {
                    loc: RowLoc {
                        file: Arc::new(PathBuf::from(format!("prompt {}", r.prompt_id))),
                        pos: Pos::Row(k),
                    },
                    value: Ok(row),
                });
                slots.push((p, k));
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let raw = RawDataset {
            files: vec![],
            rows,
        };
        let data = prepare_dpo(raw, self.tokenizer, &self.data_config)?;
        if data.examples.len() != slots.len() {
            bail!(
                "{} of {} completions could not be scored (too long for max_length, or empty)",
                slots.len() - data.examples.len(),
                slots.len()
            );
        }
        let policy = reference_sums(self.model, &self.policy, &data, self.batch_size, None)?;
        let reference = reference_sums(self.model, &self.reference, &data, self.batch_size, None)?;
        for (j, &(p, k)) in slots.iter().enumerate() {
            let reward = self.beta * (policy.chosen[j] as f64 - reference.chosen[j] as f64);
            rated[p].completions[k].score = Some(reward);
        }
        Ok(())
    }
}
