//! DPO losses and metrics with TRL's definitions.
//!
//! With Δ = (logp_c − ref_c) − (logp_r − ref_r), per pair:
//! sigmoid `−(1−ε)·logσ(βΔ) − ε·logσ(−βΔ)` (ε = label smoothing, conservative DPO);
//! robust `((1−ε)·(−logσ(βΔ)) + ε·logσ(−βΔ)) / (1−2ε)`; hinge `relu(1 − βΔ)`;
//! ipo `(Δ − 1/(2β))²` on length-averaged log-probs. The batch loss is the mean over pairs,
//! plus `rpo_alpha ·` the mean NLL of the chosen completion tokens when set.

use anyhow::Result;
use candle_core::Tensor;

/// `[dpo] loss_type`, with TRL's names.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LossType {
    #[default]
    Sigmoid,
    Ipo,
    Hinge,
    Robust,
}

impl crate::choice::Choice for LossType {
    const CHOICES: &'static [(Self, &'static [&'static str])] = &[
        (LossType::Sigmoid, &["sigmoid"]),
        (LossType::Ipo, &["ipo"]),
        (LossType::Hinge, &["hinge"]),
        (LossType::Robust, &["robust"]),
    ];
}
crate::choice::choice_impls!(LossType);

impl LossType {
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
