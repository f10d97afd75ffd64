//! DPO losses and metrics with TRL's definitions.
//!
//! With Δ = (logp_c − ref_c) − (logp_r − ref_r), per pair:
//! sigmoid `−(1−ε)·logσ(βΔ) − ε·logσ(−βΔ)` (ε = label smoothing, conservative DPO);
//! robust `((1−ε)·(−logσ(βΔ)) + ε·logσ(−βΔ)) / (1−2ε)`; hinge `relu(1 − βΔ)`;
//! ipo `(Δ − 1/(2β))²` on length-averaged log-probs. The batch loss is the mean over pairs,
//! plus `rpo_alpha ·` the mean NLL of the chosen completion tokens when set.

use anyhow::{bail, Result};
use candle_core::{Tensor, D};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossType {
    Sigmoid,
    Ipo,
    Hinge,
    Robust,
}

impl LossType {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "sigmoid" => LossType::Sigmoid,
            "ipo" => LossType::Ipo,
            "hinge" => LossType::Hinge,
            "robust" => LossType::Robust,
            other => bail!("unknown DPO loss `{other}` (valid: sigmoid, ipo, hinge, robust)"),
        })
    }

    /// IPO compares log-probs averaged over the completion's tokens; the others use sums.
    pub fn averages_logps(self) -> bool {
        self == LossType::Ipo
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DpoLoss {
    pub beta: f64,
    pub loss_type: LossType,
    pub label_smoothing: f64,
    pub rpo_alpha: Option<f64>,
}

/// Sequence log-probs of a batch of pairs: `[n]` each (sums, or means for IPO).
pub struct PairLogps {
    pub chosen: Tensor,
    pub rejected: Tensor,
}

/// The per-pair losses `[n]` and the rewards `β·(logp − ref)` of chosen and rejected `[n]`.
pub struct DpoTerms {
    pub losses: Tensor,
    pub chosen_rewards: Tensor,
    pub rejected_rewards: Tensor,
}

impl DpoLoss {
    pub fn terms(&self, policy: &PairLogps, reference: &PairLogps) -> Result<DpoTerms> {
        let beta = self.beta;
        let eps = self.label_smoothing;
        let chosen_ratio = (&policy.chosen - &reference.chosen)?;
        let rejected_ratio = (&policy.rejected - &reference.rejected)?;
        let delta = (&chosen_ratio - &rejected_ratio)?;
        let scaled = (&delta * beta)?;
        let losses = match self.loss_type {
            LossType::Sigmoid => {
                let pos = (log_sigmoid(&scaled)? * -(1.0 - eps))?;
                let neg = (log_sigmoid(&scaled.neg()?)? * eps)?;
                (pos - neg)?
            }
            LossType::Robust => {
                let pos = (log_sigmoid(&scaled)? * -(1.0 - eps))?;
                let neg = (log_sigmoid(&scaled.neg()?)? * eps)?;
                ((pos + neg)? / (1.0 - 2.0 * eps))?
            }
            LossType::Hinge => (1.0 - scaled)?.relu()?,
            LossType::Ipo => (delta - 1.0 / (2.0 * beta))?.sqr()?,
        };
        Ok(DpoTerms {
            losses,
            chosen_rewards: (chosen_ratio.detach() * beta)?,
            rejected_rewards: (rejected_ratio.detach() * beta)?,
        })
    }
}

/// `log σ(x) = −softplus(−x)`, stable for large |x|.
pub fn log_sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    // −(max(−x, 0) + log(1 + exp(−|x|)))
    let relu = x.neg()?.relu()?;
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    (relu + tail)?.neg()
}

/// Sums of the metrics TRL logs, accumulated over pairs; `means()` divides by the count.
#[derive(Debug, Clone, Default)]
pub struct DpoMetrics {
    pub pairs: usize,
    pub loss_sum: f64,
    pub chosen_rewards: f64,
    pub rejected_rewards: f64,
    pub accuracies: f64,
    pub margins: f64,
    pub chosen_logps: f64,
    pub rejected_logps: f64,
    /// Sums of mean logits over completion tokens, and their counts.
    pub chosen_logits: f64,
    pub chosen_logit_tokens: f64,
    pub rejected_logits: f64,
    pub rejected_logit_tokens: f64,
    pub nll_loss: Option<f64>,
}

impl DpoMetrics {
    /// Adds a batch: per-pair losses and rewards, policy log-probs.
    pub fn add(&mut self, terms: &DpoTerms, policy: &PairLogps) -> Result<()> {
        let v = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(candle_core::DType::F32)?.to_vec1()?) };
        let (losses, cr, rr) = (v(&terms.losses)?, v(&terms.chosen_rewards)?, v(&terms.rejected_rewards)?);
        let (cl, rl) = (v(&policy.chosen)?, v(&policy.rejected)?);
        for i in 0..losses.len() {
            self.pairs += 1;
            self.loss_sum += losses[i] as f64;
            self.chosen_rewards += cr[i] as f64;
            self.rejected_rewards += rr[i] as f64;
            self.accuracies += f64::from(u8::from(cr[i] > rr[i]));
            self.margins += (cr[i] - rr[i]) as f64;
            self.chosen_logps += cl[i] as f64;
            self.rejected_logps += rl[i] as f64;
        }
        Ok(())
    }

    /// Adds the mean-logit sums of a batch's chosen and rejected completion tokens.
    pub fn add_logits(&mut self, chosen: (f64, f64), rejected: (f64, f64)) {
        self.chosen_logits += chosen.0;
        self.chosen_logit_tokens += chosen.1;
        self.rejected_logits += rejected.0;
        self.rejected_logit_tokens += rejected.1;
    }

    pub fn merge(&mut self, other: &DpoMetrics) {
        self.pairs += other.pairs;
        self.loss_sum += other.loss_sum;
        self.chosen_rewards += other.chosen_rewards;
        self.rejected_rewards += other.rejected_rewards;
        self.accuracies += other.accuracies;
        self.margins += other.margins;
        self.chosen_logps += other.chosen_logps;
        self.rejected_logps += other.rejected_logps;
        self.add_logits(
            (other.chosen_logits, other.chosen_logit_tokens),
            (other.rejected_logits, other.rejected_logit_tokens),
        );
        if let Some(n) = other.nll_loss {
            *self.nll_loss.get_or_insert(0.0) += n;
        }
    }

    /// TRL's names and means: `rewards/chosen`, `rewards/accuracies`, `logps/chosen`, ...
    pub fn means(&self, prefix: &str) -> Vec<(String, f64)> {
        let n = self.pairs.max(1) as f64;
        let mut out = vec![
            (format!("{prefix}rewards/chosen"), self.chosen_rewards / n),
            (format!("{prefix}rewards/rejected"), self.rejected_rewards / n),
            (format!("{prefix}rewards/accuracies"), self.accuracies / n),
            (format!("{prefix}rewards/margins"), self.margins / n),
            (format!("{prefix}logps/chosen"), self.chosen_logps / n),
            (format!("{prefix}logps/rejected"), self.rejected_logps / n),
        ];
        if self.chosen_logit_tokens > 0.0 {
            out.push((format!("{prefix}logits/chosen"), self.chosen_logits / self.chosen_logit_tokens));
            out.push((
                format!("{prefix}logits/rejected"),
                self.rejected_logits / self.rejected_logit_tokens.max(1.0),
            ));
        }
        out
    }
}

/// Mean over the masked positions of the mean logit over the vocabulary: `(sum, count)`.
pub fn masked_logit_mean(logits: &Tensor, target_mask: &Tensor) -> Result<(f64, f64)> {
    let (_, t, _) = logits.dims3()?;
    let per_position = logits.narrow(1, 0, t - 1)?.detach().mean(D::Minus1)?;
    let mask = target_mask.to_dtype(candle_core::DType::F32)?;
    let sum = (per_position.to_dtype(candle_core::DType::F32)? * &mask)?.sum_all()?.to_scalar::<f32>()?;
    let count = mask.sum_all()?.to_scalar::<f32>()?;
    Ok((sum as f64, count as f64))
}
