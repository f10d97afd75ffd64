//! The DPO objective: chosen and rejected in one forward pass, the reference from the same
//! base with the trained adapter disabled (or precomputed), TRL's losses and metrics.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::dpo::{DpoLoss, DpoTerms, PairInputs, PairLogps};
use super::pair_packing::{pack_pairs, pack_pairs_with_chosen_prompts, PackedPairs};
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
    /// WPO's weight of each pair (the policy's, [`PairForward::sequence_weights`] of chosen
    /// times rejected); empty where not known (a reference, a cache entry).
    pub pair_weights: Vec<f32>,
}

impl PairSums {
    pub(crate) fn extend(&mut self, other: PairSums) {
        self.chosen.extend(other.chosen);
        self.rejected.extend(other.rejected);
        self.chosen_tokens.extend(other.chosen_tokens);
        self.rejected_tokens.extend(other.rejected_tokens);
        self.pair_weights.extend(other.pair_weights);
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
            pair_weights: match self.pair_weights.is_empty() {
                true => Vec::new(),
                false => pick(&self.pair_weights)?,
            },
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

    /// Sums `[n]` and completion token counts `[n]` (chosen, rejected) on `device`.
    pub fn tensors(&self, device: &candle_core::Device) -> Result<(PairLogps, Tensor, Tensor)> {
        let t = |v: &Vec<f32>| Tensor::from_slice(v, v.len(), device);
        Ok((
            PairLogps {
                chosen: t(&self.chosen)?,
                rejected: t(&self.rejected)?,
            },
            t(&self.chosen_tokens)?,
            t(&self.rejected_tokens)?,
        ))
    }

    /// Row `i` alone.
    fn row(&self, i: usize) -> PairSums {
        PairSums {
            chosen: vec![self.chosen[i]],
            rejected: vec![self.rejected[i]],
            chosen_tokens: vec![self.chosen_tokens[i]],
            rejected_tokens: vec![self.rejected_tokens[i]],
            pair_weights: self
                .pair_weights
                .get(i)
                .map(|&w| vec![w])
                .unwrap_or_default(),
        }
    }

    /// Mean NLL of the chosen completion tokens of these pairs.
    fn chosen_nll(&self) -> f32 {
        let tokens: f32 = self.chosen_tokens.iter().sum();
        -self.chosen.iter().sum::<f32>() / tokens.max(1.0)
    }
}

/// One forward pass over pairs, packed ([`pack_pairs`]: the prompt runs once for both).
pub struct PairForward {
    /// Per-sequence sums `[2n]` (chosen of each pair, then rejected; tracked when the pass
    /// trains) and completion token counts `[2n]`; `[3n]` with ORPO's chosen prompts last.
    pub sums: Tensor,
    pub counts: Tensor,
    /// Per sequence: the sum of the mean logit over the vocabulary at its scored positions
    /// (`[2n]`, on the device until a metric reads it).
    logit_sums: Tensor,
    /// Per sequence, likewise: the sums of its scored positions' entropies and of their
    /// top-1 hits (the target was the most likely token).
    entropy_sums: Tensor,
    top1_sums: Tensor,
    /// Per sequence, likewise: `Σ (logp − log Σp²)` over its scored positions (WPO).
    aligned_sums: Tensor,
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

    /// [`PairForward::pack`], also scoring the chosen prompts (ORPO).
    pub fn pack_with_chosen_prompts(data: &DpoDataset, rows: &[usize]) -> PackedPairs {
        let examples: Vec<_> = rows.iter().map(|&r| &data.examples[r]).collect();
        pack_pairs_with_chosen_prompts(&examples)
    }

    /// Sums and counts of the chosen prompts `[n]` (packed with them), still tracked.
    pub fn chosen_prompt_sums(&self) -> Result<(Tensor, Tensor)> {
        let n = self.pairs;
        if self.sums.dim(0)? < 3 * n {
            bail!("the pass did not score the chosen prompts");
        }
        Ok((
            self.sums.narrow(0, 2 * n, n)?,
            self.counts.narrow(0, 2 * n, n)?,
        ))
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
        let seqs = 2 * packed.pairs + packed.extra_sequences;
        let mut member = vec![0f32; seqs * m];
        for (k, &s) in packed.sequence.iter().enumerate() {
            member[s * m + k] = 1.0;
        }
        let member = Tensor::from_vec(member, (seqs, m), device)?;
        let per_sequence = |member: &Tensor, v: &Tensor| -> candle_core::Result<Tensor> {
            member.matmul(&v.unsqueeze(1)?)?.squeeze(1)
        };
        let sums = match packed.tail_weight {
            None => per_sequence(&member, &head.token_logps)?,
            Some(_) => {
                let w = Tensor::from_vec(packed.token_weights(), (1, m), device)?;
                per_sequence(&member.broadcast_mul(&w)?, &head.token_logps)?
            }
        };
        let counts = member.sum(1)?;
        let logit_sums = per_sequence(&member, &head.mean_logits)?;
        let entropy_sums = per_sequence(&member, &head.entropy)?;
        let top1_sums = per_sequence(&member, &head.is_top1)?;
        let aligned = (head.token_logps.detach() - &head.log_sum_sq_probs)?;
        let aligned_sums = per_sequence(&member, &aligned)?;
        Ok(Self {
            sums,
            counts,
            logit_sums,
            entropy_sums,
            top1_sums,
            aligned_sums,
            tokens: packed.tokens,
            token_passes: packed.batch.len(),
            head_positions: m,
            attention_scores: packed.batch.groups.iter().map(|&(_, len)| len * len).sum(),
            pairs: packed.pairs,
        })
    }

    /// Chosen and rejected log-probs (sums over completion tokens), still tracked.
    pub fn pair_logps(&self) -> Result<PairLogps> {
        Ok(PairLogps {
            chosen: self.sums.narrow(0, 0, self.pairs)?,
            rejected: self.sums.narrow(0, self.pairs, self.pairs)?,
        })
    }

    /// Completion token counts of chosen and rejected `[n]`.
    pub fn token_counts(&self) -> Result<(Tensor, Tensor)> {
        Ok((
            self.counts.narrow(0, 0, self.pairs)?,
            self.counts.narrow(0, self.pairs, self.pairs)?,
        ))
    }

    /// WPO's weight of each sequence `[2n + extra]`, never tracked: `exp` of the mean over
    /// its tokens of `logp − log Σp²` (the probability of the token relative to how peaked
    /// the distribution is).
    pub fn sequence_weights(&self) -> Result<Tensor> {
        Ok((&self.aligned_sums / self.counts.clamp(1f32, f32::MAX)?)?.exp()?)
    }

    /// WPO's weight of each pair `[n]`: the chosen sequence's times the rejected one's.
    pub fn pair_weights(&self) -> Result<Tensor> {
        let (n, w) = (self.pairs, self.sequence_weights()?);
        Ok((w.narrow(0, 0, n)? * w.narrow(0, n, n)?)?)
    }

    /// The sums, counts and WPO weights on the host (evaluation, the reference cache).
    pub fn host_sums(&self) -> Result<PairSums> {
        let rows = host::rows(&[&self.sums.detach(), &self.counts, &self.sequence_weights()?])?;
        let [s, c, w]: [Vec<f32>; 3] = rows.try_into().expect("three rows");
        let n = self.pairs;
        Ok(PairSums {
            chosen: s[..n].to_vec(),
            rejected: s[n..2 * n].to_vec(),
            chosen_tokens: c[..n].to_vec(),
            rejected_tokens: c[n..2 * n].to_vec(),
            pair_weights: (0..n).map(|i| w[i] * w[n + i]).collect(),
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

    /// DPOTrainer's per-token metrics of the pass, in one read.
    pub fn token_stats(&self) -> Result<TokenStats> {
        let n = self.pairs;
        let rows = host::rows(&[
            &self.logit_sums,
            &self.counts,
            &self.entropy_sums,
            &self.top1_sums,
        ])?;
        let [logits, counts, entropy, top1]: [Vec<f32>; 4] = rows.try_into().expect("four rows");
        let total = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>();
        let (chosen, both) = (0..n, 0..2 * n);
        Ok(TokenStats {
            logits_chosen: (
                total(&logits[chosen.clone()]),
                total(&counts[chosen.clone()]),
            ),
            logits_rejected: (total(&logits[n..2 * n]), total(&counts[n..2 * n])),
            entropy: (total(&entropy[both.clone()]), total(&counts[both])),
            top1_chosen: (total(&top1[chosen.clone()]), total(&counts[chosen])),
        })
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

/// `(sum, count)` over the completion tokens of a pass, for DPOTrainer's per-token metrics.
pub struct TokenStats {
    pub logits_chosen: (f64, f64),
    pub logits_rejected: (f64, f64),
    /// Over chosen and rejected tokens.
    pub entropy: (f64, f64),
    /// Top-1 hits over the chosen tokens.
    pub top1_chosen: (f64, f64),
}

impl TokenStats {
    /// `logits/chosen`, `logits/rejected`, `entropy` and `mean_token_accuracy`, each a
    /// token-weighted mean as DPOTrainer logs it.
    pub fn add_to(&self, metrics: &mut MetricSums, prefix: &str) {
        for (key, (sum, count)) in [
            ("logits/chosen", self.logits_chosen),
            ("logits/rejected", self.logits_rejected),
            ("entropy", self.entropy),
            ("mean_token_accuracy", self.top1_chosen),
        ] {
            metrics.add(&format!("{prefix}{key}"), sum, count);
        }
    }
}

/// Reference log-probs of every pair of `data`, without a graph; `tail_weight` is LD-DPO's
/// `ld_alpha` (see [`PackedPairs::token_weights`]).
pub fn reference_sums(
    model: &Model,
    reference: &[&Adapter],
    data: &DpoDataset,
    batch_size: usize,
    tail_weight: Option<f64>,
) -> Result<PairSums> {
    let mut out = PairSums::default();
    let rows: Vec<usize> = (0..data.examples.len()).collect();
    for chunk in rows.chunks(batch_size.max(1)) {
        let packed = PairForward::pack(data, chunk).with_tail_weight(tail_weight);
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
pub fn add_pair_metrics(metrics: &mut MetricSums, terms: &DpoTerms, prefix: &str) -> Result<()> {
    // One read for all of them (the batch NLL repeated per pair to share it).
    let nll = match &terms.nll {
        Some(v) => Some(v.broadcast_as(terms.losses.dims())?.contiguous()?),
        None => None,
    };
    let mut wanted = vec![
        &terms.losses,
        &terms.chosen_rewards,
        &terms.rejected_rewards,
        &terms.chosen_logps,
        &terms.rejected_logps,
    ];
    wanted.extend(nll.as_ref());
    let detached: Vec<Tensor> = wanted.iter().map(|t| t.detach()).collect();
    let mut read = host::rows(&detached.iter().collect::<Vec<_>>())?;
    let nll = (read.len() == 6).then(|| read.pop().expect("six rows")[0]);
    let [losses, cr, rr, cl, rl]: [Vec<f32>; 5] = read.try_into().expect("five rows");
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
    if let Some(nll) = nll {
        // A batch-level value, as TRL logs it: one sample per batch.
        metrics.add(&format!("{prefix}nll_loss"), nll as f64, 1.0);
    }
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
        // One packing for the reference and the policy pass.
        let packed = PairForward::pack(&self.train, rows).with_tail_weight(self.loss.ld_alpha);
        // Reference-free objectives run no reference pass at all (and log no time for one).
        let reference = if self.loss.needs_reference() {
            let t0 = std::time::Instant::now();
            let reference = match &self.train_reference {
                Some(r) => r.select(rows)?.tensors(model.device())?.0,
                // Computed and kept on the device.
                None => PairForward::run(model, &packed, Pass::eval(&adapters.reference()))?
                    .pair_logps()?,
            };
            // Timed once done, not once launched (on a GPU); a no-op on CPU.
            model.device().synchronize()?;
            metrics.add("time/reference", t0.elapsed().as_secs_f64(), 1.0);
            Some(reference)
        } else {
            None
        };
        let (fwd, tape) = PairForward::run_training(
            model,
            &packed,
            &adapters.policy(),
            dropout_seed,
            self.gradient_checkpointing,
        )?;
        let policy = fwd.pair_logps()?;
        let (chosen_tokens, rejected_tokens) = fwd.token_counts()?;
        let nll = match self.loss.needs_nll() {
            true => Some(fwd.chosen_nll()?),
            false => None,
        };
        let weights = match self.loss.use_weighting {
            true => Some(fwd.pair_weights()?),
            false => None,
        };
        let terms = self.loss.terms(&PairInputs {
            policy: &policy,
            reference: reference.as_ref(),
            chosen_tokens: &chosen_tokens,
            rejected_tokens: &rejected_tokens,
            chosen_nll: nll.as_ref(),
            pair_weights: weights.as_ref(),
        })?;
        let loss = terms.losses.mean_all()?;
        add_pair_metrics(metrics, &terms, "")?;
        fwd.token_stats()?.add_to(metrics, "");
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
        if self.eval_reference.is_none() && self.loss.needs_reference() {
            self.eval_reference = Some(reference_sums(
                model,
                &adapters.reference(),
                eval,
                self.eval_batch_size,
                self.loss.ld_alpha,
            )?);
        }
        let (metrics, _) = evaluate_pairs(
            model,
            &adapters.policy(),
            eval,
            self.eval_reference.as_ref(),
            &self.loss,
            self.eval_batch_size,
            "eval_",
        )?;
        Ok(Some(metrics.means()))
    }
}

/// TRL's metrics of the policy `adapters` on `data` against precomputed reference sums (or
/// against itself, when the objective needs a reference and none is given), and the policy's
/// own sums.
pub fn evaluate_pairs(
    model: &Model,
    adapters: &[&Adapter],
    data: &DpoDataset,
    reference: Option<&PairSums>,
    loss: &DpoLoss,
    batch_size: usize,
    prefix: &str,
) -> Result<(MetricSums, PairSums)> {
    let mut metrics = MetricSums::default();
    let mut sums = PairSums::default();
    let rows: Vec<usize> = (0..data.examples.len()).collect();
    for chunk in rows.chunks(batch_size.max(1)) {
        let packed = PairForward::pack(data, chunk).with_tail_weight(loss.ld_alpha);
        let fwd = PairForward::run(model, &packed, Pass::eval(adapters))?;
        let own = fwd.host_sums()?;
        let reference = match (reference, loss.needs_reference()) {
            (_, false) => None,
            (Some(r), true) => Some(r.select(chunk)?),
            // No reference given: the policy is its own reference (a model without adapters).
            (None, true) => Some(own.clone()),
        };
        let terms = sums_terms(loss, &own, reference.as_ref(), model.device())?;
        sums.extend(own);
        add_pair_metrics(&mut metrics, &terms, prefix)?;
        fwd.token_stats()?.add_to(&mut metrics, prefix);
    }
    Ok((metrics, sums))
}

/// The terms of `loss` on pairs known by their sums (no graph).
fn sums_terms(
    loss: &DpoLoss,
    policy: &PairSums,
    reference: Option<&PairSums>,
    device: &candle_core::Device,
) -> Result<DpoTerms> {
    let (pol, nc, nr) = policy.tensors(device)?;
    let reference = reference.map(|r| r.tensors(device)).transpose()?;
    let nll = Tensor::new(policy.chosen_nll(), device)?;
    let weights = match loss.use_weighting {
        true => Some(Tensor::from_slice(
            &policy.pair_weights,
            policy.pair_weights.len(),
            device,
        )?),
        false => None,
    };
    loss.terms(&PairInputs {
        policy: &pol,
        reference: reference.as_ref().map(|r| &r.0),
        chosen_tokens: &nc,
        rejected_tokens: &nr,
        chosen_nll: loss.needs_nll().then_some(&nll),
        pair_weights: weights.as_ref(),
    })
}

/// Each row's loss as a batch of that row alone (TRL's trainer on one pair): the batch-level
/// terms (sft's NLL, aot's sorting) become the row's own.
pub fn per_row_losses(
    loss: &DpoLoss,
    policy: &PairSums,
    reference: Option<&PairSums>,
) -> Result<Vec<f64>> {
    let device = candle_core::Device::Cpu;
    (0..policy.chosen.len())
        .map(|i| {
            let r = reference
                .filter(|_| loss.needs_reference())
                .map(|r| r.row(i));
            let terms = sums_terms(loss, &policy.row(i), r.as_ref(), &device)?;
            Ok(host::scalar(&terms.losses.squeeze(0)?)? as f64)
        })
        .collect()
}
