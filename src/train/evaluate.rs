//! `eval`: TRL's metrics of a model (+ adapter) on a dataset, as one JSON object.
//! Preference data: the reference is the same base without the adapter. SFT data: mean NLL.

use anyhow::Result;
use serde_json::{json, Map, Value};

use super::dpo::DpoLoss;
use super::orpo::evaluate_orpo;
use super::preference::{evaluate_pairs, per_row_losses, reference_sums, PairSums};
use super::sft::eval_loss;
use crate::data::{prepare_dpo, prepare_sft, ChatTokenizer, DataConfig, RawDataset};
use crate::model::{Adapter, Model};

/// Whether the rows look like preference pairs: the first readable row has chosen and rejected.
pub fn is_preference_data(raw: &RawDataset, cfg: &DataConfig) -> bool {
    raw.rows
        .iter()
        .find_map(|r| r.value.as_ref().ok())
        .is_some_and(|row| {
            row.contains_key(cfg.columns.chosen()) && row.contains_key(cfg.columns.rejected())
        })
}

/// The objective `eval` computes on preference pairs.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalLoss {
    /// DPOTrainer's and CPOTrainer's objectives.
    Pairs(DpoLoss),
    /// ORPOTrainer's, with its `beta` (λ).
    Orpo { beta: f64 },
}

impl From<DpoLoss> for EvalLoss {
    fn from(loss: DpoLoss) -> Self {
        EvalLoss::Pairs(loss)
    }
}

pub struct EvalRequest<'a> {
    pub model: &'a Model,
    pub adapter: Option<&'a Adapter>,
    pub tokenizer: &'a ChatTokenizer,
    pub data_config: &'a DataConfig,
    pub loss: EvalLoss,
    pub batch_size: usize,
    pub per_row: bool,
}

pub fn evaluate(req: &EvalRequest, raw: RawDataset) -> Result<Value> {
    let policy: Vec<&Adapter> = req.adapter.into_iter().collect();
    if !is_preference_data(&raw, req.data_config) {
        let data = prepare_sft(raw, req.tokenizer, req.data_config)?;
        let (loss, tokens) = eval_loss(req.model, &policy, &data, req.batch_size)?;
        return Ok(json!({ "loss": loss, "tokens": tokens, "rows": data.examples.len() }));
    }
    let data = prepare_dpo(raw, req.tokenizer, req.data_config)?;
    let loss = match &req.loss {
        EvalLoss::Pairs(loss) => loss,
        EvalLoss::Orpo { beta } => {
            let (metrics, rows) =
                evaluate_orpo(req.model, &policy, &data, *beta, req.batch_size, "eval_")?;
            let mut out = Map::new();
            for (k, v) in metrics.means() {
                out.insert(k.trim_start_matches("eval_").to_string(), json!(v));
            }
            out.insert("rows".into(), json!(data.examples.len()));
            out.insert("loss_type".into(), json!("orpo"));
            if req.per_row {
                out.insert("per_row".into(), Value::Array(rows));
            }
            return Ok(Value::Object(out));
        }
    };
    // Without an adapter the policy is the reference: one pass gives both. A reference-free
    // objective runs none.
    let reference = match policy.is_empty() || !loss.needs_reference() {
        true => None,
        false => Some(reference_sums(
            req.model,
            &[],
            &data,
            req.batch_size,
            loss.ld_alpha,
        )?),
    };
    let (metrics, policy_sums) = evaluate_pairs(
        req.model,
        &policy,
        &data,
        reference.as_ref(),
        loss,
        req.batch_size,
        "eval_",
    )?;
    let mut out = Map::new();
    for (k, v) in metrics.means() {
        out.insert(k.trim_start_matches("eval_").to_string(), json!(v));
    }
    out.insert("rows".into(), json!(data.examples.len()));
    out.insert("loss_type".into(), json!(loss.describe()));
    if req.per_row {
        let with_reference = loss.needs_reference();
        let reference = match &reference {
            Some(r) => Some(r),
            None if with_reference => Some(&policy_sums),
            None => None,
        };
        let losses = per_row_losses(loss, &policy_sums, reference)?;
        out.insert("per_row".into(), per_row(&policy_sums, reference, &losses));
    }
    Ok(Value::Object(out))
}

/// Per row: summed log-probs (policy, and reference when the objective has one), completion
/// token counts, and the loss of the row as a batch of its own.
fn per_row(policy: &PairSums, reference: Option<&PairSums>, losses: &[f64]) -> Value {
    let rows: Vec<Value> = (0..policy.chosen.len())
        .map(|i| {
            let mut row = json!({
                "chosen_logps": policy.chosen[i],
                "rejected_logps": policy.rejected[i],
                "chosen_tokens": policy.chosen_tokens[i],
                "rejected_tokens": policy.rejected_tokens[i],
                "loss": losses[i],
            });
            if let Some(r) = reference {
                row["ref_chosen_logps"] = json!(r.chosen[i]);
                row["ref_rejected_logps"] = json!(r.rejected[i]);
            }
            row
        })
        .collect();
    Value::Array(rows)
}
