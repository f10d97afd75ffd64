//! The SFT objective: mean NLL over the completion/assistant tokens of an optimizer step's
//! whole accumulated batch (each micro-batch's sum divided by the step's token count).

use anyhow::Result;
use candle_core::Tensor;

use super::batch::DeviceBatch;
use super::trainer::{AdapterStack, MetricSums, MicroLoss, Objective};
use crate::data::{collate, SftDataset};
use crate::model::{Model, Pass};

pub struct SftObjective {
    pub train: SftDataset,
    pub eval: Option<SftDataset>,
    pub eval_batch_size: usize,
    /// Recompute each decoder layer in backward instead of keeping its activations.
    pub gradient_checkpointing: bool,
}

impl Objective for SftObjective {
    fn stage(&self) -> &'static str {
        "sft"
    }

    fn num_rows(&self) -> usize {
        self.train.examples.len()
    }

    fn lengths(&self) -> Vec<usize> {
        self.train.lengths()
    }

    fn normaliser(&self, micro_batches: &[Vec<usize>]) -> f64 {
        let targets: usize = micro_batches
            .iter()
            .flatten()
            .map(|&r| {
                self.train.examples[r]
                    .loss_mask
                    .iter()
                    .skip(1)
                    .filter(|m| **m)
                    .count()
            })
            .sum();
        targets.max(1) as f64
    }

    fn loss<'a>(
        &mut self,
        model: &'a Model,
        adapters: &AdapterStack<'a>,
        rows: &[usize],
        normaliser: f64,
        dropout_seed: u64,
        metrics: &mut MetricSums,
    ) -> Result<MicroLoss<'a>> {
        let seqs: Vec<_> = rows.iter().map(|&r| &self.train.examples[r]).collect();
        let batch =
            DeviceBatch::from_data(&collate(&seqs, self.train.pad_id, None), model.device())?;
        let (hidden, tape) = model.hidden_states_layered(
            model.inputs(&batch.input_ids, Some(&batch.attention_mask))?,
            &adapters.policy(),
            dropout_seed,
            self.gradient_checkpointing,
        )?;
        let (nll_sum, _) = nll_sum(model, &hidden, &batch)?;
        metrics.add("tokens", batch.tokens as f64, 1.0);
        let (rows, seq) = batch.input_ids.dims2()?;
        metrics.add("token_passes", (rows * seq) as f64, 1.0);
        metrics.add("head_positions", (rows * (seq - 1)) as f64, 1.0);
        metrics.add("attention_scores", (rows * seq * seq) as f64, 1.0);
        Ok(MicroLoss {
            loss: (nll_sum / normaliser)?,
            tape,
        })
    }

    fn evaluate(
        &mut self,
        model: &Model,
        adapters: &AdapterStack,
    ) -> Result<Option<Vec<(String, f64)>>> {
        let Some(eval) = &self.eval else {
            return Ok(None);
        };
        let (loss, tokens) = eval_loss(model, &adapters.policy(), eval, self.eval_batch_size)?;
        Ok(Some(vec![
            ("eval_loss".into(), loss),
            ("eval_tokens".into(), tokens as f64),
        ]))
    }
}

/// Sum of the NLL over the batch's target tokens, and their count.
fn nll_sum(model: &Model, hidden: &Tensor, batch: &DeviceBatch) -> Result<(Tensor, f64)> {
    let logps = model.head_logprobs(hidden, &batch.input_ids)?.token_logps;
    let total = (logps * &batch.target_mask)?.sum_all()?.neg()?;
    Ok((total, batch.targets as f64))
}

/// Mean NLL over every target token of `data` (no graph), and the number of those tokens.
pub fn eval_loss(
    model: &Model,
    adapters: &[&crate::model::Adapter],
    data: &SftDataset,
    batch_size: usize,
) -> Result<(f64, usize)> {
    let (mut sum, mut count) = (0f64, 0f64);
    for chunk in (0..data.examples.len())
        .collect::<Vec<_>>()
        .chunks(batch_size.max(1))
    {
        let seqs: Vec<_> = chunk.iter().map(|&r| &data.examples[r]).collect();
        let batch = DeviceBatch::from_data(&collate(&seqs, data.pad_id, None), model.device())?;
        let hidden = model.hidden_states(
            &batch.input_ids,
            Some(&batch.attention_mask),
            Pass::eval(adapters),
        )?;
        let (s, c) = nll_sum(model, &hidden, &batch)?;
        sum += crate::ops::host::scalar(&s)? as f64;
        count += c;
    }
    Ok((sum / count.max(1.0), count as usize))
}
