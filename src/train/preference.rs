//! The DPO objective: chosen and rejected in one forward pass, the reference from the same
//! base with the trained adapter disabled (or precomputed), TRL's losses and metrics.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::dpo::{DpoLoss, DpoTerms, PairLogps};
use super::pair_packing::{pack_pairs, PackedPairs};
use super::trainer::{AdapterStack, MetricSums, MicroLoss, Objective};
use crate::data::DpoDataset;
use crate::model::{Adapter, LayerTape, Model, Pass};
use crate::ops::host;

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

    /// The sums of `rows`; an error, not a panic, when precomputed sums lack one of them.
    pub fn select(&self, rows: &[usize]) -> Result<PairSums> {
        let pick = |v: &Vec<f32>| -> Result<Vec<f32>> {
            rows.iter()
                .map(|&r| match v.get(r) {
                    Some(x) => Ok(*x),
                    None => bail!("reference log-probs of {} pairs have no row {r}", v.len()),
                })
                .collect()
        };
        Ok(PairSums {
            chosen: pick(&self.chosen)?,
            rejected: pick(&self.rejected)?,
            chosen_tokens: pick(&self.chosen_tokens)?,
            rejected_tokens: pick(&self.rejected_tokens)?,
        })
    }

    /// As tensors on `device`; means over completion tokens instead of sums when `average`.
    pub fn logps(&self, average: bool, device: &candle_core::Device) -> Result<PairLogps> {
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

/// One forward pass over pairs, packed ([`pack_pairs`]: the prompt runs once for both).
pub struct PairForward {
    /// Per-sequence sums `[2n]` (chosen of each pair, then rejected; tracked when the pass
    /// trains) and completion token counts `[2n]`.
    pub sums: Tensor,
    pub counts: Tensor,
    /// Per sequence: the sum of the mean logit over the vocabulary at its scored positions
    /// (`[2n]`, on the device until a metric reads it).
    logit_sums: Tensor,
    /// Tokens of the `prompt + chosen` and `prompt + rejected` sequences (unshared).
    pub tokens: usize,
    /// Token positions the model actually ran (shared prompts once).
    pub token_passes: usize,
    /// Positions the LM head scored.
    pub head_positions: usize,
    /// Query × key pairs attention computed per head and layer (group by group).
    pub attention_scores: usize,
    pub pairs: usize,
}

impl PairForward {
    /// A pass over `packed` that records no graph (reference, evaluation).
    pub fn run(model: &Model, packed: &PackedPairs, pass: Pass) -> Result<Self> {
        let hidden = model.hidden_states_of(model.packed_inputs(&packed.batch)?, pass)?;
        Self::score(model, &hidden, packed)
    }

    /// A training pass of `adapters` (the last one trained) over `packed`, and the tape of
    /// its backward.
    pub fn run_training<'a>(
        model: &'a Model,
        packed: &PackedPairs,
        adapters: &[&'a Adapter],
        dropout_seed: u64,
        gradient_checkpointing: bool,
    ) -> Result<(Self, LayerTape<'a>)> {
        let (hidden, tape) = model.hidden_states_layered(
            model.packed_inputs(&packed.batch)?,
            adapters,
            dropout_seed,
            gradient_checkpointing,
        )?;
        Ok((Self::score(model, &hidden, packed)?, tape))
    }

    /// The pairs `rows` of `data`, packed for [`PairForward::run`].
    pub fn pack(data: &DpoDataset, rows: &[usize]) -> PackedPairs {
        let examples: Vec<_> = rows.iter().map(|&r| &data.examples[r]).collect();
        pack_pairs(&examples)
    }

    /// The completion log-probs of each sequence from the packed hidden states `[1, N, h]`.
    fn score(model: &Model, hidden: &Tensor, packed: &PackedPairs) -> Result<Self> {
        let device = model.device();
        let m = packed.rows.len();
        if m == 0 {
            bail!("a batch of preference pairs has no completion tokens to score");
        }
        let states = hidden
            .squeeze(0)?
            .index_select(&Tensor::from_slice(&packed.rows, m, device)?, 0)?;
        let targets = Tensor::from_slice(&packed.targets, m, device)?;
        let head = model.position_logprobs(&states, &targets)?;
        // [2n, m]: which sequence each scored token belongs to.
        let seqs = 2 * packed.pairs;
        let mut member = vec![0f32; seqs * m];
        for (k, &s) in packed.sequence.iter().enumerate() {
            member[s * m + k] = 1.0;
        }
        let member = Tensor::from_vec(member, (seqs, m), device)?;
        let per_sequence = |v: &Tensor| -> candle_core::Result<Tensor> {
            member.matmul(&v.unsqueeze(1)?)?.squeeze(1)
        };
        let sums = per_sequence(&head.token_logps)?;
        let counts = member.sum(1)?;
        let logit_sums = per_sequence(&head.mean_logits)?;
        Ok(Self {
            sums,
            counts,
            logit_sums,
            tokens: packed.tokens,
            token_passes: packed.batch.len(),
            head_positions: m,
            attention_scores: packed.batch.groups.iter().map(|&(_, len)| len * len).sum(),
            pairs: packed.pairs,
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

    /// The sums and counts on the host (evaluation, the reference cache).
    pub fn host_sums(&self) -> Result<PairSums> {
        let [s, c]: [Vec<f32>; 2] = host::rows(&[&self.sums.detach(), &self.counts])?
            .try_into()
            .expect("two rows");
        let n = self.pairs;
        Ok(PairSums {
            chosen: s[..n].to_vec(),
            rejected: s[n..].to_vec(),
            chosen_tokens: c[..n].to_vec(),
            rejected_tokens: c[n..].to_vec(),
        })
    }

    /// Mean NLL of the chosen completions' tokens (RPO's term), on the device.
    pub fn chosen_nll(&self) -> Result<Tensor> {
        let n = self.pairs;
        let count = self
            .counts
            .narrow(0, 0, n)?
            .sum_all()?
            .clamp(1f32, f32::MAX)?;
        Ok(self.sums.narrow(0, 0, n)?.sum_all()?.neg()?.div(&count)?)
    }

    /// Per sequence `[2n]`: the sum of its scored positions' mean logits, and their count (one
    /// read; KTO splits them by label rather than by half).
    pub fn logit_sums(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let [sums, counts]: [Vec<f32>; 2] = host::rows(&[&self.logit_sums, &self.counts])?
            .try_into()
            .expect("two rows");
        Ok((sums, counts))
    }

    /// TRL's `logits/chosen` and `logits/rejected` as `(sum, count)` pairs (one read).
    pub fn logit_means(&self) -> Result<((f64, f64), (f64, f64))> {
        let n = self.pairs;
        let [sums, counts]: [Vec<f32>; 2] = host::rows(&[&self.logit_sums, &self.counts])?
            .try_into()
            .expect("two rows");
        let half = |range: std::ops::Range<usize>| -> (f64, f64) {
            (
                sums[range.clone()].iter().map(|&s| s as f64).sum(),
                counts[range].iter().map(|&c| c as f64).sum(),
            )
        };
        Ok((half(0..n), half(n..2 * n)))
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
        let packed = PairForward::pack(data, chunk);
        out.extend(PairForward::run(model, &packed, Pass::eval(reference))?.host_sums()?);
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
    // One read for all five.
    let [losses, cr, rr, cl, rl]: [Vec<f32>; 5] = host::rows(&[
        &terms.losses.detach(),
        &terms.chosen_rewards.detach(),
        &terms.rejected_rewards.detach(),
        &policy.chosen.detach(),
        &policy.rejected.detach(),
    ])?
    .try_into()
    .expect("five rows");
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
        // One packing for the reference and the policy pass.
        let packed = PairForward::pack(&self.train, rows);
        let t0 = std::time::Instant::now();
        let reference = match &self.train_reference {
            Some(r) => r.select(rows)?.logps(average, model.device())?,
            // Computed and kept on the device.
            None => PairForward::run(model, &packed, Pass::eval(&adapters.reference()))?
                .pair_logps(average)?,
        };
        // Timed once done, not once launched (on a GPU); a no-op on CPU.
        model.device().synchronize()?;
        metrics.add("time/reference", t0.elapsed().as_secs_f64(), 1.0);
        let (fwd, tape) = PairForward::run_training(
            model,
            &packed,
            &adapters.policy(),
            dropout_seed,
            self.gradient_checkpointing,
        )?;
        let policy = fwd.pair_logps(average)?;
        let terms = self.loss.terms(&policy, &reference)?;
        let mut loss = terms.losses.mean_all()?;
        if let Some(alpha) = self.loss.rpo_alpha {
            let nll = fwd.chosen_nll()?;
            metrics.add("nll_loss", host::scalar(&nll)? as f64, 1.0);
            loss = (loss + (nll * alpha)?)?;
        }
        add_pair_metrics(metrics, &terms, &policy, "")?;
        let ((cs, cn), (rs, rn)) = fwd.logit_means()?;
        metrics.add("logits/chosen", cs, cn);
        metrics.add("logits/rejected", rs, rn);
        metrics.add("tokens", fwd.tokens as f64, 1.0);
        metrics.add("token_passes", fwd.token_passes as f64, 1.0);
        metrics.add("head_positions", fwd.head_positions as f64, 1.0);
        metrics.add("attention_scores", fwd.attention_scores as f64, 1.0);
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
        let fwd = PairForward::run(model, &PairForward::pack(data, chunk), Pass::eval(adapters))?;
        let own = fwd.host_sums()?;
        // No reference given: the policy is its own reference (a model without adapters).
        let reference = match reference {
            Some(r) => r.select(chunk)?,
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
