//! Preference losses and metrics with TRL 1.16's definitions: every `DPOTrainer` loss type,
//! CPOTrainer's `simpo` and `cpo` (reference-free), and weighted combinations of them
//! (`loss_type = ["sigmoid", "sft"]`, `loss_weights = [1.0, 0.1]`).
//!
//! With logratio_c = logp_c − ref_c, logratio_r = logp_r − ref_r (sums over completion tokens)
//! and Δ = logratio_c − logratio_r, per pair (ε = `label_smoothing`, τ = `discopop_tau`,
//! γ = `simpo_gamma`, n = completion tokens):
//!
//! | type | loss |
//! |---|---|
//! | sigmoid | −logσ(βΔ) |
//! | hinge | relu(1 − βΔ) |
//! | ipo | (logratio_c/n_c − logratio_r/n_r − 1/(2β))² |
//! | sigmoid_norm | −logσ(β(logratio_c/n_c − logratio_r/n_r)) |
//! | robust | (−(1−ε)logσ(βΔ) + ε logσ(−βΔ)) / (1−2ε) |
//! | exo_pair | σ(βΔ)(logσ(βΔ) − log(1−ε)) + σ(−βΔ)(logσ(−βΔ) − log ε) |
//! | nca_pair | −logσ(β logratio_c) − ½logσ(−β logratio_c) − ½logσ(−β logratio_r) |
//! | bco_pair | −logσ(β logratio_c) − logσ(−β logratio_r) |
//! | sppo_hard | (logratio_c − 1/(2β))² + (logratio_r + 1/(2β))² |
//! | aot | smoothed sigmoid of sort(logp_c − logp_r) − sort(ref_c − ref_r), over the batch |
//! | aot_unpaired (aot_pair) | smoothed sigmoid of sort(logratio_c) − sort(logratio_r) |
//! | apo_zero | 1 − σ(β logratio_c) + σ(β logratio_r) |
//! | apo_down | σ(β logratio_c) + 1 − σ(βΔ) |
//! | discopop | −logσ(βΔ)(1 − σ(βΔ/τ)) + exp(−βΔ)σ(βΔ/τ) |
//! | sft | mean NLL of the batch's chosen completion tokens |
//! | simpo | smoothed sigmoid of β(logp_c/n_c − logp_r/n_r) − γ, no reference |
//! | cpo | smoothed sigmoid of β(logp_c − logp_r) + cpo_alpha · sft, no reference |
//!
//! `f_divergence_type` (DPOTrainer's f-DPO) replaces logratio by the score f′-transformed
//! from it in the types built on Δ (sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust,
//! discopop): forward_kl 1 − e^(−logratio), js_divergence log 2 + logσ(logratio),
//! alpha_divergence (e^((α−1)·logratio) − 1)/(α−1); rewards stay β·logratio. `ld_alpha`
//! (LD-DPO) weighs the completion tokens past the shorter completion of a pair by α in every
//! sum, policy and reference (done where the sums are taken, `PairForward`). `use_weighting`
//! (WPO) multiplies each pair's loss by w_c·w_r, w = exp(mean over the completion's tokens of
//! logp − log Σ_v p_v²), never differentiated.
//!
//! "Smoothed sigmoid" of x is −(1−ε)logσ(x) − ε logσ(−x). The batch loss is Σ weight · mean over
//! pairs. Rewards are β·logratio (DPOTrainer); with simpo or cpo they are β·logp, as CPOTrainer
//! logs them, and simpo's `logps/*` are the per-token means it trains on.

use anyhow::{bail, Result};
use candle_core::Tensor;

use crate::choice::Choice;
use crate::config::StageConfig;

/// `[dpo] loss_type`, with TRL's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LossType {
    #[default]
    Sigmoid,
    Hinge,
    Ipo,
    ExoPair,
    NcaPair,
    Robust,
    BcoPair,
    SppoHard,
    Aot,
    AotUnpaired,
    ApoZero,
    ApoDown,
    Discopop,
    Sft,
    SigmoidNorm,
    Simpo,
    Cpo,
    /// KTOTrainer's `loss_type`s, read by `[kto]` only.
    Kto,
    ApoZeroUnpaired,
}

impl Choice for LossType {
    const CHOICES: &'static [(Self, &'static [&'static str])] = &[
        (LossType::Sigmoid, &["sigmoid"]),
        (LossType::Hinge, &["hinge"]),
        (LossType::Ipo, &["ipo"]),
        (LossType::ExoPair, &["exo_pair"]),
        (LossType::NcaPair, &["nca_pair"]),
        (LossType::Robust, &["robust"]),
        (LossType::BcoPair, &["bco_pair"]),
        (LossType::SppoHard, &["sppo_hard"]),
        (LossType::Aot, &["aot"]),
        // TRL < 1.0 called the unpaired variant `aot_pair`.
        (LossType::AotUnpaired, &["aot_unpaired", "aot_pair"]),
        (LossType::ApoZero, &["apo_zero"]),
        (LossType::ApoDown, &["apo_down"]),
        (LossType::Discopop, &["discopop"]),
        (LossType::Sft, &["sft"]),
        (LossType::SigmoidNorm, &["sigmoid_norm"]),
        // CPOConfig's "alphapo" is SimPO without the NLL term, ours already; `alpha` shapes it.
        (LossType::Simpo, &["simpo", "alphapo"]),
        (LossType::Cpo, &["cpo"]),
        (LossType::Kto, &["kto"]),
        (LossType::ApoZeroUnpaired, &["apo_zero_unpaired"]),
    ];
}
crate::choice::choice_impls!(LossType);

impl LossType {
    /// CPOTrainer's objectives: the policy alone, rewards β·logp.
    pub fn policy_only(self) -> bool {
        matches!(self, LossType::Simpo | LossType::Cpo)
    }

    fn uses_label_smoothing(self) -> bool {
        use LossType::*;
        matches!(self, Robust | ExoPair | Aot | AotUnpaired | Simpo | Cpo)
    }
}

/// `loss_type`: one name or a list of them (TRL's `DPOConfig.loss_type` is a list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LossTypes(pub Vec<LossType>);

impl Default for LossTypes {
    fn default() -> Self {
        LossTypes(vec![LossType::Sigmoid])
    }
}

impl std::fmt::Display for LossTypes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.0.iter().map(|t| t.name()).collect();
        f.write_str(&names.join(","))
    }
}

impl serde::Serialize for LossTypes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // One name is written as before lists existed, so older run fingerprints still agree.
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> serde::Deserialize<'de> for LossTypes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let names = match OneOrMany::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a loss type name or a list of them"))?
        {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        if names.is_empty() {
            return Err(serde::de::Error::custom("the list of loss types is empty"));
        }
        names
            .iter()
            .map(|n| LossType::from_name(n).map_err(serde::de::Error::custom))
            .collect::<Result<Vec<_>, _>>()
            .map(LossTypes)
    }
}

/// `f_divergence_type`, with TRL's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FDivergence {
    #[default]
    ReverseKl,
    ForwardKl,
    JsDivergence,
    AlphaDivergence,
}

impl Choice for FDivergence {
    const CHOICES: &'static [(Self, &'static [&'static str])] = &[
        (FDivergence::ReverseKl, &["reverse_kl"]),
        (FDivergence::ForwardKl, &["forward_kl"]),
        (FDivergence::JsDivergence, &["js_divergence"]),
        (FDivergence::AlphaDivergence, &["alpha_divergence"]),
    ];
}
crate::choice::choice_impls!(FDivergence);

impl LossType {
    /// DPOTrainer's types built on the scores' difference, the ones f-DPO applies to.
    fn takes_f_divergence(self) -> bool {
        use LossType::*;
        matches!(
            self,
            Sigmoid | SigmoidNorm | Hinge | Ipo | ExoPair | Robust | Discopop | Sft
        )
    }
}

/// TRL's defaults of the objective-specific keys.
pub const DEFAULT_DISCOPOP_TAU: f64 = 0.05;
pub const DEFAULT_SIMPO_GAMMA: f64 = 0.5;
pub const DEFAULT_CPO_ALPHA: f64 = 1.0;
pub const DEFAULT_F_ALPHA_DIVERGENCE_COEF: f64 = 0.5;

/// A preference objective: loss types with their weights and hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct DpoLoss {
    pub beta: f64,
    pub losses: Vec<(LossType, f64)>,
    pub label_smoothing: f64,
    pub discopop_tau: f64,
    pub simpo_gamma: f64,
    pub cpo_alpha: f64,
    /// AlphaPO: simpo's and cpo's rewards r = (1 − p^(−α))/α of the (mean) log-prob; 0: the
    /// log-prob itself.
    pub alpha: f64,
    pub f_divergence: FDivergence,
    pub f_alpha_divergence_coef: f64,
    /// LD-DPO's weight of the tokens past a pair's shorter completion (`None`: plain sums).
    pub ld_alpha: Option<f64>,
    /// WPO: each pair's loss weighted by its completions' probability under the policy.
    pub use_weighting: bool,
}

impl DpoLoss {
    /// One loss type, weight 1, TRL's defaults for the rest.
    pub fn single(loss_type: LossType, beta: f64) -> Self {
        Self {
            beta,
            losses: vec![(loss_type, 1.0)],
            label_smoothing: 0.0,
            discopop_tau: DEFAULT_DISCOPOP_TAU,
            simpo_gamma: DEFAULT_SIMPO_GAMMA,
            cpo_alpha: DEFAULT_CPO_ALPHA,
            alpha: 0.0,
            f_divergence: FDivergence::ReverseKl,
            f_alpha_divergence_coef: DEFAULT_F_ALPHA_DIVERGENCE_COEF,
            ld_alpha: None,
            use_weighting: false,
        }
    }

    /// The objective of a `[dpo]` section. Each error names the key at fault: an unknown or
    /// unusable combination of `loss_type`s, `loss_weights` of another length, or a key that
    /// none of the loss types reads.
    pub fn from_stage(s: &StageConfig) -> Result<Self> {
        let types = &s.loss_type.0;
        let weights = match &s.loss_weights {
            Some(w) if w.len() != types.len() => bail!(
                "`loss_weights` has {} weights for {} loss types (`loss_type` = [{}])",
                w.len(),
                types.len(),
                s.loss_type
            ),
            Some(w) => w.clone(),
            None => vec![1.0; types.len()],
        };
        if let Some(w) = weights.iter().find(|w| !w.is_finite()) {
            bail!("`loss_weights`: {w} is not a finite number");
        }
        if let Some(t) = types
            .iter()
            .find(|t| matches!(t, LossType::Kto | LossType::ApoZeroUnpaired))
        {
            bail!("`loss_type` = \"{t}\" is KTOTrainer's: set it under [kto]");
        }
        let mut losses: Vec<(LossType, f64)> = types.iter().copied().zip(weights).collect();
        // rpo_alpha is TRL < 0.29's way of writing an extra "sft" term with that weight.
        if let Some(alpha) = s.rpo_alpha {
            if types.contains(&LossType::Sft) {
                bail!("`rpo_alpha` adds an \"sft\" term, and `loss_type` already has one");
            }
            losses.push((LossType::Sft, alpha));
        }
        let mut seen = Vec::new();
        for t in types {
            if seen.contains(t) {
                bail!("`loss_type` lists \"{t}\" twice");
            }
            seen.push(*t);
        }
        let policy_only: Vec<_> = types.iter().filter(|t| t.policy_only()).collect();
        let with_reference = types
            .iter()
            .any(|t| !t.policy_only() && *t != LossType::Sft);
        if (policy_only.len() > 1) || (!policy_only.is_empty() && with_reference) {
            bail!(
                "`loss_type` = [{}]: simpo and cpo are CPOTrainer's reference-free objectives and \
                 combine only with \"sft\"",
                s.loss_type
            );
        }
        let uses = |pred: fn(LossType) -> bool| types.iter().any(|t| pred(*t));
        let unused = |key: &str, what: &str| -> anyhow::Error {
            anyhow::anyhow!(
                "`{key}` is not used by `loss_type` = [{}] (only by {what})",
                s.loss_type
            )
        };
        if s.label_smoothing != 0.0 && !uses(LossType::uses_label_smoothing) {
            // TRL 1.16 dropped conservative DPO: its sigmoid ignores label_smoothing.
            return Err(unused(
                "label_smoothing",
                "robust, exo_pair, aot, aot_unpaired, simpo and cpo",
            ));
        }
        if s.discopop_tau.is_some() && !uses(|t| t == LossType::Discopop) {
            return Err(unused("discopop_tau", "discopop"));
        }
        if s.simpo_gamma.is_some() && !uses(|t| t == LossType::Simpo) {
            return Err(unused("simpo_gamma", "simpo"));
        }
        if s.cpo_alpha.is_some() && !uses(|t| t == LossType::Cpo) {
            return Err(unused(
                "cpo_alpha",
                "cpo; with simpo, add \"sft\" to loss_type",
            ));
        }
        if s.alpha.is_some() && policy_only.is_empty() {
            return Err(unused("alpha", "simpo and cpo (AlphaPO's reward shape)"));
        }
        let f_divergence = s.f_divergence_type.unwrap_or_default();
        if f_divergence != FDivergence::ReverseKl {
            if let Some(t) = types.iter().find(|t| !t.takes_f_divergence()) {
                bail!(
                    "`f_divergence_type` = \"{f_divergence}\" does not apply to \"{t}\" (only to \
                     sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, discopop and sft)"
                );
            }
        }
        if s.f_alpha_divergence_coef.is_some() && f_divergence != FDivergence::AlphaDivergence {
            bail!(
                "`f_alpha_divergence_coef` is not used by `f_divergence_type` = \"{f_divergence}\" \
                 (only by alpha_divergence)"
            );
        }
        if let Some(a) = s.ld_alpha {
            if !(0.0..=1.0).contains(&a) {
                bail!("`ld_alpha` must be in [0, 1], got {a}");
            }
            if !policy_only.is_empty() {
                return Err(unused("ld_alpha", "DPOTrainer's reference-based types"));
            }
            if uses(|t| t == LossType::Sft) || s.rpo_alpha.is_some() {
                // The sft term's NLL is over plain token log-probs, which the weighted
                // sums no longer give.
                bail!("`ld_alpha` together with an \"sft\" term (or `rpo_alpha`) is not supported");
            }
        }
        let loss = Self {
            beta: s.beta,
            losses,
            label_smoothing: s.label_smoothing,
            discopop_tau: s.discopop_tau.unwrap_or(DEFAULT_DISCOPOP_TAU),
            simpo_gamma: s.simpo_gamma.unwrap_or(DEFAULT_SIMPO_GAMMA),
            cpo_alpha: s.cpo_alpha.unwrap_or(DEFAULT_CPO_ALPHA),
            alpha: s.alpha.unwrap_or(0.0),
            f_divergence,
            f_alpha_divergence_coef: s
                .f_alpha_divergence_coef
                .unwrap_or(DEFAULT_F_ALPHA_DIVERGENCE_COEF),
            ld_alpha: s.ld_alpha,
            use_weighting: s.use_weighting,
        };
        if loss.use_weighting {
            if !policy_only.is_empty() {
                return Err(unused("use_weighting", "DPOTrainer's types"));
            }
            if let Some(t) = types
                .iter()
                .find(|t| matches!(t, LossType::Aot | LossType::AotUnpaired))
            {
                // aot sorts the pairs, which would pair each weight with another pair's loss.
                bail!("`use_weighting` does not apply to \"{t}\" (it sorts the batch's pairs)");
            }
        }
        if uses(|t| t == LossType::ExoPair) && loss.label_smoothing == 0.0 {
            bail!("`label_smoothing` must be positive with exo_pair (its log ε term); TRL suggests 1e-3");
        }
        if !loss.discopop_tau.is_finite() || loss.discopop_tau <= 0.0 {
            bail!("`discopop_tau` must be positive, got {}", loss.discopop_tau);
        }
        for (key, v) in [
            ("simpo_gamma", loss.simpo_gamma),
            ("cpo_alpha", loss.cpo_alpha),
            ("alpha", loss.alpha),
            ("f_alpha_divergence_coef", loss.f_alpha_divergence_coef),
        ] {
            if !v.is_finite() {
                bail!("`{key}`: {v} is not a finite number");
            }
        }
        if s.precompute_ref_log_probs && !loss.needs_reference() {
            bail!(
                "`precompute_ref_log_probs`: `loss_type` = [{}] uses no reference",
                s.loss_type
            );
        }
        Ok(loss)
    }

    /// AlphaPO's reward of a policy log-prob l: (1 − e^(−α·l))/α, or l itself when α = 0.
    fn reward_shape(&self, logp: &Tensor) -> Result<Tensor> {
        if self.alpha == 0.0 {
            return Ok(logp.clone());
        }
        let a = self.alpha;
        Ok(((1.0 - (logp * -a)?.exp()?)? / a)?)
    }

    /// Whether reference log-probs are read; when not, no reference pass runs. `sft` alone
    /// still has one, as in TRL: its `rewards/*` are against the reference.
    pub fn needs_reference(&self) -> bool {
        !self.policy_only()
    }

    /// CPOTrainer's objectives (simpo, cpo): rewards are β·logp of the policy.
    pub fn policy_only(&self) -> bool {
        self.losses.iter().any(|(t, _)| t.policy_only())
    }

    /// SimPO trains on, and logs, per-token means of the log-probs.
    pub fn averages_logps(&self) -> bool {
        self.losses.iter().any(|(t, _)| *t == LossType::Simpo)
    }

    /// Whether the batch NLL of the chosen tokens enters the loss (and `nll_loss` is logged).
    pub fn needs_nll(&self) -> bool {
        self.losses
            .iter()
            .any(|(t, _)| matches!(t, LossType::Sft | LossType::Cpo))
    }

    /// The loss types, as TRL writes them (`sigmoid,sft`).
    pub fn describe(&self) -> String {
        let names: Vec<_> = self
            .losses
            .iter()
            .map(|(t, w)| match w {
                w if *w == 1.0 => t.name().to_string(),
                w => format!("{w}·{}", t.name()),
            })
            .collect();
        names.join(" + ")
    }
}

/// Sequence log-probs of a batch of pairs, `[n]` each: summed over completion tokens.
pub struct PairLogps {
    pub chosen: Tensor,
    pub rejected: Tensor,
}

/// What the losses read of a batch of `n` pairs.
pub struct PairInputs<'a> {
    /// Policy sums, tracked when training.
    pub policy: &'a PairLogps,
    /// Reference sums; `None` only for reference-free objectives.
    pub reference: Option<&'a PairLogps>,
    /// Completion token counts `[n]`.
    pub chosen_tokens: &'a Tensor,
    pub rejected_tokens: &'a Tensor,
    /// Mean NLL of the chosen completion tokens of the batch (a scalar); needed by sft and cpo.
    pub chosen_nll: Option<&'a Tensor>,
    /// WPO's per-pair weights `[n]` (never tracked); needed with `use_weighting`.
    pub pair_weights: Option<&'a Tensor>,
}

/// Per-pair losses `[n]` (the weighted sum of the terms; their mean is the batch loss), the
/// rewards and the log-probs TRL logs `[n]`, and the NLL term when there is one.
pub struct DpoTerms {
    pub losses: Tensor,
    pub chosen_rewards: Tensor,
    pub rejected_rewards: Tensor,
    pub chosen_logps: Tensor,
    pub rejected_logps: Tensor,
    pub nll: Option<Tensor>,
}

impl DpoLoss {
    pub fn terms(&self, x: &PairInputs) -> Result<DpoTerms> {
        let beta = self.beta;
        let eps = self.label_smoothing;
        let n = x.policy.chosen.dim(0)?;
        let nc = x.chosen_tokens.clamp(1f32, f32::MAX)?;
        let nr = x.rejected_tokens.clamp(1f32, f32::MAX)?;
        let need_ref = self.needs_reference();
        let reference = match (x.reference, need_ref) {
            (_, false) => None,
            (Some(r), true) => Some(r),
            (None, true) => bail!("loss_type {} needs reference log-probs", self.describe()),
        };
        let ratios = match reference {
            Some(r) => Some((
                (&x.policy.chosen - &r.chosen)?,
                (&x.policy.rejected - &r.rejected)?,
            )),
            _ => None,
        };
        let scores = match &ratios {
            Some((c, r)) => Some((self.score(c)?, self.score(r)?)),
            None => None,
        };
        let smoothed = |z: &Tensor| -> Result<Tensor> {
            let pos = (log_sigmoid(z)? * -(1.0 - eps))?;
            Ok((pos - (log_sigmoid(&z.neg()?)? * eps)?)?)
        };
        let nll = match x.chosen_nll {
            Some(v) => Some(v.clone()),
            None if self.needs_nll() => bail!("loss_type {} needs the chosen NLL", self.describe()),
            None => None,
        };
        let mut total: Option<Tensor> = None;
        for &(kind, weight) in &self.losses {
            let per_pair = match kind {
                LossType::Simpo => {
                    let z = (self.reward_shape(&(&x.policy.chosen / &nc)?)?
                        - self.reward_shape(&(&x.policy.rejected / &nr)?)?)?;
                    smoothed(&((z * beta)? - self.simpo_gamma)?)?
                }
                LossType::Cpo => {
                    let z = (self.reward_shape(&x.policy.chosen)?
                        - self.reward_shape(&x.policy.rejected)?)?;
                    let nll = nll.as_ref().expect("checked above");
                    (smoothed(&(z * beta)?)? + (nll * self.cpo_alpha)?.broadcast_as(n)?)?
                }
                LossType::Sft => nll.as_ref().expect("checked above").broadcast_as(n)?,
                _ => {
                    let (cl, rl) = scores.as_ref().expect("reference-based");
                    let r = reference.expect("reference-based");
                    self.reference_term(kind, cl, rl, x.policy, r, &nc, &nr)?
                }
            };
            let weighted = (per_pair * weight)?;
            total = Some(match total {
                None => weighted,
                Some(t) => (t + weighted)?,
            });
        }
        let mut losses = total.expect("at least one loss type");
        if self.use_weighting {
            // Each term's per-pair loss times the pair's weight, as DPOTrainer weighs them.
            let Some(w) = x.pair_weights else {
                bail!("use_weighting needs the pairs' WPO weights");
            };
            losses = (losses * w.detach())?;
        }
        let (chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) = if self.policy_only()
        {
            let (c, r) = if self.averages_logps() {
                (
                    (&x.policy.chosen / &nc)?.detach(),
                    (&x.policy.rejected / &nr)?.detach(),
                )
            } else {
                (x.policy.chosen.detach(), x.policy.rejected.detach())
            };
            (
                (self.reward_shape(&c)? * beta)?,
                (self.reward_shape(&r)? * beta)?,
                c,
                r,
            )
        } else {
            let (cl, rl) = ratios.as_ref().expect("reference-based");
            let (cl, rl) = (cl.detach(), rl.detach());
            (
                (cl * beta)?,
                (rl * beta)?,
                x.policy.chosen.detach(),
                x.policy.rejected.detach(),
            )
        };
        Ok(DpoTerms {
            losses,
            chosen_rewards,
            rejected_rewards,
            chosen_logps,
            rejected_logps,
            nll: nll.map(|t| t.detach()),
        })
    }

    /// f′ of the f-divergence applied to log ratios (the identity for reverse KL).
    fn score(&self, logratio: &Tensor) -> Result<Tensor> {
        Ok(match self.f_divergence {
            FDivergence::ReverseKl => logratio.clone(),
            FDivergence::ForwardKl => (1.0 - logratio.neg()?.exp()?)?,
            FDivergence::JsDivergence => (log_sigmoid(logratio)? + std::f64::consts::LN_2)?,
            FDivergence::AlphaDivergence => {
                let a = self.f_alpha_divergence_coef;
                if (a - 1.0).abs() < 1e-6 {
                    // The limit α → 1 is log t: reverse KL.
                    return Ok(logratio.clone());
                }
                // Clamped as TRL does in f32, so exp stays finite.
                let t = (logratio * (a - 1.0))?.clamp(f32::MIN, 80f32)?;
                ((t.exp()? - 1.0)? * (1.0 / (a - 1.0)))?
            }
        })
    }

    /// One DPOTrainer term per pair, from the scores `cl`, `rl` (the log ratios under reverse
    /// KL) and the sums.
    #[allow(clippy::too_many_arguments)]
    fn reference_term(
        &self,
        kind: LossType,
        cl: &Tensor,
        rl: &Tensor,
        policy: &PairLogps,
        reference: &PairLogps,
        nc: &Tensor,
        nr: &Tensor,
    ) -> Result<Tensor> {
        let beta = self.beta;
        let eps = self.label_smoothing;
        let delta = (cl - rl)?;
        let bd = (&delta * beta)?;
        let smoothed = |z: &Tensor| -> Result<Tensor> {
            let pos = (log_sigmoid(z)? * -(1.0 - eps))?;
            Ok((pos - (log_sigmoid(&z.neg()?)? * eps)?)?)
        };
        let sig = sigmoid;
        Ok(match kind {
            LossType::Sigmoid => log_sigmoid(&bd)?.neg()?,
            LossType::Hinge => (1.0 - &bd)?.relu()?,
            LossType::Ipo => {
                let d = ((cl / nc)? - (rl / nr)?)?;
                (d - 1.0 / (2.0 * beta))?.sqr()?
            }
            LossType::SigmoidNorm => {
                let d = ((cl / nc)? - (rl / nr)?)?;
                log_sigmoid(&(d * beta)?)?.neg()?
            }
            LossType::Robust => {
                let clean = (log_sigmoid(&bd)? * -(1.0 - eps))?;
                let flipped = (log_sigmoid(&bd.neg()?)? * -eps)?;
                ((clean - flipped)? / (1.0 - 2.0 * eps))?
            }
            LossType::ExoPair => {
                let (lq_w, lq_l) = (log_sigmoid(&bd)?, log_sigmoid(&bd.neg()?)?);
                let w = (sig(&bd)? * (lq_w - (1.0 - eps).ln())?)?;
                let l = (sig(&bd.neg()?)? * (lq_l - eps.ln())?)?;
                (w + l)?
            }
            LossType::NcaPair => {
                let c = (cl * beta)?;
                let r = (rl * beta)?;
                let a = log_sigmoid(&c)?.neg()?;
                let b = (log_sigmoid(&c.neg()?)? * 0.5)?;
                let d = (log_sigmoid(&r.neg()?)? * 0.5)?;
                ((a - b)? - d)?
            }
            LossType::BcoPair => {
                let c = log_sigmoid(&(cl * beta)?)?;
                let r = log_sigmoid(&(rl * -beta)?)?;
                (c + r)?.neg()?
            }
            LossType::SppoHard => {
                let w = (cl - 0.5 / beta)?.sqr()?;
                let l = (rl + 0.5 / beta)?.sqr()?;
                (w + l)?
            }
            LossType::Aot => {
                let pi = (&policy.chosen - &policy.rejected)?;
                let rf = (&reference.chosen - &reference.rejected)?;
                smoothed(&((sorted(&pi)? - sorted(&rf)?)? * beta)?)?
            }
            LossType::AotUnpaired => smoothed(&((sorted(cl)? - sorted(rl)?)? * beta)?)?,
            LossType::ApoZero => {
                let c = (1.0 - sig(&(cl * beta)?)?)?;
                (c + sig(&(rl * beta)?)?)?
            }
            LossType::ApoDown => {
                let c = sig(&(cl * beta)?)?;
                (c + (1.0 - sig(&bd)?)?)?
            }
            LossType::Discopop => {
                let m = sig(&(&bd / self.discopop_tau)?)?;
                let logistic = log_sigmoid(&bd)?.neg()?;
                let exp = bd.neg()?.exp()?;
                ((logistic * (1.0 - &m)?)? + (exp * m)?)?
            }
            LossType::Sft
            | LossType::Simpo
            | LossType::Cpo
            | LossType::Kto
            | LossType::ApoZeroUnpaired => unreachable!("not a DPO reference term"),
        })
    }
}

/// `x` sorted ascending along its one dimension; the order is read on the host and the
/// gradient flows back through the gather.
fn sorted(x: &Tensor) -> Result<Tensor> {
    // Only aot's terms sort: one more read per step for them alone.
    let v = crate::ops::host::values(&x.detach())?;
    let mut order: Vec<u32> = (0..v.len() as u32).collect();
    order.sort_by(|&a, &b| v[a as usize].total_cmp(&v[b as usize]));
    let idx = Tensor::from_vec(order, v.len(), x.device())?;
    Ok(x.index_select(&idx, 0)?)
}

/// σ(x) = exp(logσ(x)), stable for large |x|.
fn sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    log_sigmoid(x)?.exp()
}

/// `log σ(x) = −softplus(−x)`, stable for large |x|, with its derivative `σ(−x)` attached.
///
/// The composite's own autograd is wrong at exactly 0, where every pair sits while the
/// trained adapter's B is still zero: candle differentiates `relu` and `abs` there as 1, which
/// gives 1.5 instead of 0.5 (3× the first steps' gradients).
pub fn log_sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    // −(max(−x, 0) + log(1 + exp(−|x|)))
    let plain = x.detach();
    let relu = plain.neg()?.relu()?;
    let tail = (plain.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let y = (relu + tail)?.neg()?;
    crate::ops::attach_gradient(
        x,
        y,
        std::sync::Arc::new(|x, _, grad| grad * candle_nn::ops::sigmoid(&x.neg()?)?),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadedConfig;
    use candle_core::Device;

    /// The derivative is σ(−x) everywhere, 0.5 at exactly 0 (where the composite's autograd
    /// gave 1.5), against central differences in f64.
    #[test]
    fn log_sigmoid_has_its_derivative_at_zero_and_elsewhere() {
        let xs = [0.0f64, 1e-3, -2.0, 3.5, -40.0, 40.0];
        let x = candle_core::Var::new(&xs[..], &Device::Cpu).unwrap();
        let y = log_sigmoid(x.as_tensor()).unwrap().sum_all().unwrap();
        let grads = y.backward().unwrap();
        let g: Vec<f64> = grads.get(x.as_tensor()).unwrap().to_vec1().unwrap();
        let f = |v: f64| -(((-v).max(0.0)) + (1.0 + (-v.abs()).exp()).ln());
        for (i, &v) in xs.iter().enumerate() {
            let h = 1e-6;
            let numeric = (f(v + h) - f(v - h)) / (2.0 * h);
            assert!(
                (g[i] - numeric).abs() < 1e-6,
                "x = {v}: {} vs {numeric}",
                g[i]
            );
        }
        assert!((g[0] - 0.5).abs() < 1e-12);
    }

    fn fixture() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/train/objectives.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// The `[dpo]` section of a fixture case's keys, read through the config as a file would be.
    fn loss_of(config: &serde_json::Value) -> Result<DpoLoss> {
        let mut text = String::from("[model]\nname_or_path = \"m\"\n[dpo]\n");
        for (k, v) in config.as_object().unwrap() {
            text.push_str(&format!("{k} = {v}\n"));
        }
        let cfg = LoadedConfig::from_str(&text, &[])?;
        DpoLoss::from_stage(cfg.run.dpo.as_ref().unwrap())
    }

    fn vec_of(v: &serde_json::Value) -> Tensor {
        let x: Vec<f32> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        Tensor::from_vec(x.clone(), x.len(), &Device::Cpu).unwrap()
    }

    fn mean(t: &Tensor) -> f64 {
        t.mean_all().unwrap().to_scalar::<f32>().unwrap() as f64
    }

    /// Every objective against TRL 1.16's own loss code (scripts/make_objective_fixtures.py) on
    /// fixed log-probs: the loss and each metric within 1e-5 relative (absolute below 1).
    #[test]
    fn losses_and_metrics_match_trl() {
        let fx = fixture();
        let inp = &fx["inputs"];
        let policy = PairLogps {
            chosen: vec_of(&inp["chosen_logps"]),
            rejected: vec_of(&inp["rejected_logps"]),
        };
        let reference = PairLogps {
            chosen: vec_of(&inp["ref_chosen_logps"]),
            rejected: vec_of(&inp["ref_rejected_logps"]),
        };
        let (nc, nr) = (
            vec_of(&inp["chosen_tokens"]),
            vec_of(&inp["rejected_tokens"]),
        );
        let nll = Tensor::new(inp["chosen_nll"].as_f64().unwrap() as f32, &Device::Cpu).unwrap();
        let mut checked = 0;
        for (name, case) in fx["cases"].as_object().unwrap() {
            if case["config"].get("orpo").is_some() {
                continue;
            }
            let loss = loss_of(&case["config"]).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            let terms = loss
                .terms(&PairInputs {
                    policy: &policy,
                    reference: loss.needs_reference().then_some(&reference),
                    chosen_tokens: &nc,
                    rejected_tokens: &nr,
                    chosen_nll: loss.needs_nll().then_some(&nll),
                    pair_weights: None,
                })
                .unwrap();
            let acc = {
                let c: Vec<f32> = terms.chosen_rewards.to_vec1().unwrap();
                let r: Vec<f32> = terms.rejected_rewards.to_vec1().unwrap();
                c.iter().zip(&r).filter(|(c, r)| c > r).count() as f64 / c.len() as f64
            };
            let ours = [
                ("loss", mean(&terms.losses)),
                ("rewards/chosen", mean(&terms.chosen_rewards)),
                ("rewards/rejected", mean(&terms.rejected_rewards)),
                ("rewards/accuracies", acc),
                (
                    "rewards/margins",
                    mean(&(&terms.chosen_rewards - &terms.rejected_rewards).unwrap()),
                ),
                ("logps/chosen", mean(&terms.chosen_logps)),
                ("logps/rejected", mean(&terms.rejected_logps)),
            ];
            let expected = case["metrics"].as_object().unwrap();
            for (key, value) in ours {
                let theirs = expected[key].as_f64().unwrap();
                let tol = 1e-5 * theirs.abs().max(1.0);
                assert!(
                    (value - theirs).abs() < tol,
                    "{name} {key}: ours {value} vs TRL {theirs}"
                );
            }
            if let Some(theirs) = expected.get("nll_loss") {
                let ours = terms.nll.as_ref().unwrap().to_scalar::<f32>().unwrap() as f64;
                assert!(
                    (ours - theirs.as_f64().unwrap()).abs() < 1e-5,
                    "{name} nll_loss"
                );
            }
            checked += 1;
        }
        assert!(checked >= 30, "{checked} cases");
    }

    fn err_of(keys: &str) -> String {
        let text = format!("[model]\nname_or_path = \"m\"\n[dpo]\n{keys}\n");
        format!("{:#}", LoadedConfig::from_str(&text, &[]).unwrap_err())
    }

    #[test]
    fn bad_objectives_name_the_key() {
        for (keys, key) in [
            ("loss_type = \"dpo\"", "loss_type"),
            ("loss_type = [\"sigmoid\", \"nope\"]", "loss_type"),
            ("loss_type = []", "loss_type"),
            (
                "loss_type = [\"sigmoid\", \"sft\"]\nloss_weights = [1.0]",
                "loss_weights",
            ),
            ("loss_weights = [1.0, 2.0]", "loss_weights"),
            ("simpo_gamma = 0.3", "simpo_gamma"),
            ("loss_type = \"cpo\"\nsimpo_gamma = 0.3", "simpo_gamma"),
            ("cpo_alpha = 0.3", "cpo_alpha"),
            ("alpha = 0.25", "alpha"),
            ("loss_type = \"alphapo\"\nalpha = inf", "alpha"),
            ("loss_type = \"simpo\"\ncpo_alpha = 0.3", "cpo_alpha"),
            ("discopop_tau = 0.1", "discopop_tau"),
            ("label_smoothing = 0.1", "label_smoothing"),
            ("loss_type = \"exo_pair\"", "label_smoothing"),
            ("loss_type = [\"simpo\", \"sigmoid\"]", "loss_type"),
            ("loss_type = [\"sigmoid\", \"sigmoid\"]", "loss_type"),
            (
                "loss_type = [\"sigmoid\", \"sft\"]\nrpo_alpha = 1.0",
                "rpo_alpha",
            ),
            (
                "loss_type = \"simpo\"\nprecompute_ref_log_probs = true",
                "precompute_ref_log_probs",
            ),
            (
                "loss_type = \"discopop\"\ndiscopop_tau = 0.0",
                "discopop_tau",
            ),
            ("f_divergence_type = \"kl\"", "f_divergence_type"),
            (
                "loss_type = \"nca_pair\"\nf_divergence_type = \"forward_kl\"",
                "f_divergence_type",
            ),
            ("f_alpha_divergence_coef = 0.3", "f_alpha_divergence_coef"),
            (
                "f_divergence_type = \"js_divergence\"\nf_alpha_divergence_coef = 0.3",
                "f_alpha_divergence_coef",
            ),
            ("ld_alpha = 1.5", "ld_alpha"),
            ("loss_type = \"simpo\"\nld_alpha = 0.5", "ld_alpha"),
            ("rpo_alpha = 0.1\nld_alpha = 0.5", "ld_alpha"),
            ("loss_type = \"aot\"\nuse_weighting = true", "use_weighting"),
            ("loss_type = \"apo_zero_unpaired\"", "loss_type"),
            (
                "loss_type = \"simpo\"\nuse_weighting = true",
                "use_weighting",
            ),
        ] {
            let err = err_of(keys);
            assert!(
                err.contains(&format!("`{key}`")) || err.contains(key),
                "{keys}: {err}"
            );
            assert!(err.contains("[dpo]"), "{keys}: {err}");
        }
    }

    #[test]
    fn rpo_alpha_is_an_sft_term_and_aot_pair_the_unpaired_aot() {
        let text = |keys: &str| format!("[model]\nname_or_path = \"m\"\n[dpo]\n{keys}\n");
        let of = |keys: &str| {
            let cfg = LoadedConfig::from_str(&text(keys), &[]).unwrap();
            DpoLoss::from_stage(cfg.run.dpo.as_ref().unwrap()).unwrap()
        };
        let rpo = of("rpo_alpha = 0.1");
        let listed = of("loss_type = [\"sigmoid\", \"sft\"]\nloss_weights = [1.0, 0.1]");
        assert_eq!(rpo, listed);
        assert_eq!(
            of("loss_type = \"aot_pair\"").losses,
            [(LossType::AotUnpaired, 1.0)]
        );
        assert!(!of("loss_type = \"simpo\"").needs_reference());
        assert!(!of("loss_type = [\"cpo\"]").needs_reference());
        assert!(of("loss_type = [\"sigmoid\", \"sft\"]").needs_reference());
        // One name is written back as one name (run fingerprints of older runs still agree).
        let cfg = LoadedConfig::from_str(&text("loss_type = [\"ipo\"]"), &[]).unwrap();
        let v = serde_json::to_value(cfg.run.dpo.unwrap()).unwrap();
        assert_eq!(v["loss_type"], "ipo");
        assert!(v.get("simpo_gamma").is_none());
    }
}
