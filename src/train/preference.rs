//! The DPO objective: chosen and rejected in one forward pass, the reference from the same
//! base with the trained adapter disabled (or precomputed), TRL's losses and metrics.

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::batch::DeviceBatch;
use super::dpo::{masked_logit_mean, DpoLoss, DpoTerms, PairLogps};
use super::logprobs::sequence_logps;
use super::trainer::{AdapterStack, MetricSums, MicroLoss, Objective};
use crate::data::{collate_dpo, DpoDataset};
use crate::model::{Adapter, LayerTape, Model, Pass};

/// Summed completion log-probs and completion token counts of pairs, on the host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairSums {
    pub chosen: Vec<f32>,
    pub rejected: Vec<f32>,
    pub chosen_tokens: Vec<f32>,
    pub rejected_tokens: Vec<f32>,
}

impl PairSums {
    fn extend(&mut self, other: PairSums) {
        self.chosen.extend(other.chosen);
        self.rejected.extend(other.rejected);
        self.chosen_tokens.extend(other.chosen_tokens);
        self.rejected_tokens.extend(other.rejected_tokens);
    }

    fn select(&self, rows: &[usize]) -> PairSums {
        let pick = |v: &Vec<f32>| rows.iter().map(|&r| v[r]).collect();
        PairSums {
            chosen: pick(&self.chosen),
            rejected: pick(&self.rejected),
            chosen_tokens: pick(&self.chosen_tokens),
            rejected_tokens: pick(&self.rejected_tokens),
        }
    }

    /// As tensors on `device`; means over completion tokens instead of sums when `average`.
    fn logps(&self, average: bool, device: &candle_core::Device) -> Result<PairLogps> {
        let t = |v: &Vec<f32>, n: &Vec<f32>| -> Result<Tensor> {
            let vals: Vec<f32> = if average {
                v.iter().zip(n).map(|(a, b)| a / b.max(1.0)).collect()
            } else {
                v.clone()
            };
            Ok(Tensor::from_vec(vals, v.len(), device)?)
        };
        Ok(PairLogps {
            chosen: t(&self.chosen, &self.chosen_tokens)?,
            rejected: t(&self.rejected, &self.rejected_tokens)?,
        })
    }
}

/// One forward pass over `prompt+chosen` then `prompt+rejected` rows.
pub struct PairForward {
    /// Per-sequence sums `[2n]` (tracked when the pass trains) and completion token counts `[2n]`.
    pub sums: Tensor,
    pub counts: Tensor,
    pub token_logps: Tensor,
    /// Mean logit over the vocabulary at each position `[2n, t-1]`, for TRL's `logits/*`.
    pub mean_logits: Tensor,
    pub batch: DeviceBatch,
    pub pairs: usize,
}

impl PairForward {
    /// A pass that records no graph (reference, evaluation).
    pub fn run(model: &Model, data: &DpoDataset, rows: &[usize], pass: Pass) -> Result<Self> {
        let batch = Self::batch(model, data, rows)?;
        let hidden = model.hidden_states(&batch.input_ids, Some(&batch.attention_mask), pass)?;
        Self::from_hidden(model, &hidden, batch, rows.len())
    }

    /// A training pass of `adapters` (the last one trained), and the tape of its backward.
    pub fn run_training<'a>(
        model: &'a Model,
        data: &DpoDataset,
        rows: &[usize],
        adapters: &[&'a Adapter],
        dropout_seed: u64,
        gradient_checkpointing: bool,
    ) -> Result<(Self, LayerTape<'a>)> {
        let batch = Self::batch(model, data, rows)?;
        let (hidden, tape) = model.hidden_states_layered(
            &batch.input_ids,
            Some(&batch.attention_mask),
            adapters,
            dropout_seed,
            gradient_checkpointing,
        )?;
        Ok((Self::from_hidden(model, &hidden, batch, rows.len())?, tape))
    }

    fn batch(model: &Model, data: &DpoDataset, rows: &[usize]) -> Result<DeviceBatch> {
        let examples: Vec<_> = rows.iter().map(|&r| &data.examples[r]).collect();
        DeviceBatch::from_data(&collate_dpo(&examples, data.pad_id, None), model.device())
    }

    fn from_hidden(
        model: &Model,
        hidden: &Tensor,
        batch: DeviceBatch,
        pairs: usize,
    ) -> Result<Self> {
        let head = model.head_logprobs(hidden, &batch.input_ids)?;
        let (sums, counts) = sequence_logps(&head.token_logps, &batch.target_mask)?;
        Ok(Self {
            sums,
            counts,
            token_logps: head.token_logps,
            mean_logits: head.mean_logits,
            batch,
            pairs,
        })
    }

    /// Chosen and rejected log-probs (sums, or means for IPO), still tracked.
    pub fn pair_logps(&self, average: bool) -> Result<PairLogps> {
        let v = if average {
            (&self.sums / &self.counts.clamp(1f32, f32::MAX)?)?
        } else {
            self.sums.clone()
        };
        Ok(PairLogps {
            chosen: v.narrow(0, 0, self.pairs)?,
            rejected: v.narrow(0, self.pairs, self.pairs)?,
        })
    }

    pub fn host_sums(&self) -> Result<PairSums> {
        let s: Vec<f32> = self.sums.detach().to_dtype(DType::F32)?.to_vec1()?;
        let c: Vec<f32> = self.counts.to_dtype(DType::F32)?.to_vec1()?;
        let n = self.pairs;
        Ok(PairSums {
            chosen: s[..n].to_vec(),
            rejected: s[n..].to_vec(),
            chosen_tokens: c[..n].to_vec(),
            rejected_tokens: c[n..].to_vec(),
        })
    }

    /// Mean NLL of the chosen completions' tokens (RPO's term).
    pub fn chosen_nll(&self) -> Result<Tensor> {
        let n = self.pairs;
        let logps = self.token_logps.narrow(0, 0, n)?;
        let mask = self.batch.target_mask.narrow(0, 0, n)?;
        Ok(((logps * &mask)?.sum_all()?.neg()?
            / mask.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64)?)
    }

    /// TRL's `logits/chosen` and `logits/rejected` as `(sum, count)` pairs.
    pub fn logit_means(&self) -> Result<((f64, f64), (f64, f64))> {
        let n = self.pairs;
        let half = |start| -> Result<(f64, f64)> {
            masked_logit_mean(
                &self.mean_logits.narrow(0, start, n)?,
                &self.batch.target_mask.narrow(0, start, n)?,
            )
        };
        Ok((half(0)?, half(n)?))
    }
}

/// Reference log-probs of every pair of `data`, without a graph.
pub fn reference_sums(
    model: &Model,
    reference: &[&Adapter],
    data: &DpoDataset,
    batch_size: usize,
) -> Result<PairSums> {
    let mut out = PairSums::default();
    let rows: Vec<usize> = (0..data.examples.len()).collect();
    for chunk in rows.chunks(batch_size.max(1)) {
        out.extend(PairForward::run(model, data, chunk, Pass::eval(reference))?.host_sums()?);
    }
    Ok(out)
}

pub struct DpoObjective {
    pub train: DpoDataset,
    pub eval: Option<DpoDataset>,
    pub loss: DpoLoss,
    pub eval_batch_size: usize,
    /// Precomputed reference sums of the training pairs (`precompute_ref_log_probs`).
    pub train_reference: Option<PairSums>,
    /// Reference sums of the eval pairs, computed once on first use.
    pub eval_reference: Option<PairSums>,
    /// Recompute each decoder layer in backward instead of keeping its activations.
    pub gradient_checkpointing: bool,
}

/// Adds TRL's per-pair metrics of a batch.
pub fn add_pair_metrics(
    metrics: &mut MetricSums,
    terms: &DpoTerms,
    policy: &PairLogps,
    prefix: &str,
) -> Result<()> {
    let v = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.detach().to_dtype(DType::F32)?.to_vec1()?) };
    let (losses, cr, rr) = (
        v(&terms.losses)?,
        v(&terms.chosen_rewards)?,
        v(&terms.rejected_rewards)?,
    );
    let (cl, rl) = (v(&policy.chosen)?, v(&policy.rejected)?);
    let n = losses.len() as f64;
    let sum = |x: &[f32]| x.iter().map(|&a| a as f64).sum::<f64>();
    let acc = cr.iter().zip(&rr).filter(|(c, r)| c > r).count() as f64;
    let margin: f64 = cr.iter().zip(&rr).map(|(c, r)| (c - r) as f64).sum();
    metrics.add(&format!("{prefix}rewards/chosen"), sum(&cr), n);
    metrics.add(&format!("{prefix}rewards/rejected"), sum(&rr), n);
    metrics.add(&format!("{prefix}rewards/accuracies"), acc, n);
    metrics.add(&format!("{prefix}rewards/margins"), margin, n);
    metrics.add(&format!("{prefix}logps/chosen"), sum(&cl), n);
    metrics.add(&format!("{prefix}logps/rejected"), sum(&rl), n);
    if prefix.is_empty() {
        return Ok(());
    }
    metrics.add(&format!("{prefix}loss"), sum(&losses), n);
    Ok(())
}

impl Objective for DpoObjective {
    fn stage(&self) -> &'static str {
        "dpo"
    }

    fn num_rows(&self) -> usize {
        self.train.examples.len()
    }

    fn lengths(&self) -> Vec<usize> {
        self.train.lengths()
    }

    fn normaliser(&self, micro_batches: &[Vec<usize>]) -> f64 {
        micro_batches.len() as f64
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
        let average = self.loss.loss_type.averages_logps();
        let t0 = std::time::Instant::now();
        let reference = match &self.train_reference {
            Some(r) => r.select(rows).logps(average, model.device())?,
            None => {
                let r =
                    PairForward::run(model, &self.train, rows, Pass::eval(&adapters.reference()))?;
                r.host_sums()?.logps(average, model.device())?
            }
        };
        metrics.add("time/reference", t0.elapsed().as_secs_f64(), 1.0);
        let (fwd, tape) = PairForward::run_training(
            model,
            &self.train,
            rows,
            &adapters.policy(),
            dropout_seed,
            self.gradient_checkpointing,
        )?;
        let policy = fwd.pair_logps(average)?;
        let terms = self.loss.terms(&policy, &reference)?;
        let mut loss = terms.losses.mean_all()?;
        if let Some(alpha) = self.loss.rpo_alpha {
            let nll = fwd.chosen_nll()?;
            metrics.add("nll_loss", nll.to_scalar::<f32>()? as f64, 1.0);
            loss = (loss + (nll * alpha)?)?;
        }
        add_pair_metrics(metrics, &terms, &policy, "")?;
        let ((cs, cn), (rs, rn)) = fwd.logit_means()?;
        metrics.add("logits/chosen", cs, cn);
        metrics.add("logits/rejected", rs, rn);
        metrics.add("tokens", fwd.batch.tokens as f64, 1.0);
        Ok(MicroLoss {
            loss: (loss / normaliser)?,
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
        if self.eval_reference.is_none() {
            self.eval_reference = Some(reference_sums(
                model,
                &adapters.reference(),
                eval,
                self.eval_batch_size,
            )?);
        }
        let reference = self.eval_reference.as_ref().expect("set above");
        let (metrics, _) = evaluate_pairs(
            model,
            &adapters.policy(),
            eval,
            Some(reference),
            &self.loss,
            self.eval_batch_size,
            "eval_",
        )?;
        Ok(Some(metrics.means()))
    }
}

/// TRL's metrics of the policy `adapters` on `data` against precomputed reference sums (or
/// against itself), and the policy's own sums.
pub fn evaluate_pairs(
    model: &Model,
    adapters: &[&Adapter],
    data: &DpoDataset,
    reference: Option<&PairSums>,
    loss: &DpoLoss,
    batch_size: usize,
    prefix: &str,
) -> Result<(MetricSums, PairSums)> {
    let average = loss.loss_type.averages_logps();
    let mut metrics = MetricSums::default();
    let mut sums = PairSums::default();
    let rows: Vec<usize> = (0..data.examples.len()).collect();
    for chunk in rows.chunks(batch_size.max(1)) {
        let fwd = PairForward::run(model, data, chunk, Pass::eval(adapters))?;
        let own = fwd.host_sums()?;
        // No reference given: the policy is its own reference (a model without adapters).
        let reference = match reference {
            Some(r) => r.select(chunk),
            None => own.clone(),
        };
        sums.extend(own);
        let policy = fwd.pair_logps(average)?;
        let terms = loss.terms(&policy, &reference.logps(average, model.device())?)?;
        add_pair_metrics(&mut metrics, &terms, &policy, prefix)?;
        let ((cs, cn), (rs, rn)) = fwd.logit_means()?;
        metrics.add(&format!("{prefix}logits/chosen"), cs, cn);
        metrics.add(&format!("{prefix}logits/rejected"), rs, rn);
    }
    Ok((metrics, sums))
}
