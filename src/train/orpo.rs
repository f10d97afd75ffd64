//! ORPO (the `[orpo]` stage) with ORPOTrainer's definitions: no reference model and no SFT stage
//! needed. With a = the mean log-prob of a completion's tokens,
//!
//!   log_odds = (a_c − a_r) − (log(1 − e^{a_c}) − log(1 − e^{a_r}))
//!   loss     = NLL of the chosen sequences − β · mean(logσ(log_odds))
//!
//! where the NLL is the mean over every token of the batch's `prompt + chosen` sequences (prompt
//! included, as ORPOTrainer computes it), and β is the paper's λ. Metrics as ORPOTrainer names
//! them: `rewards/*` = β·a, `logps/*` = a, `nll_loss`, `log_odds_ratio` = mean(logσ(log_odds)),
//! `log_odds_chosen` = mean(log_odds).

use anyhow::Result;
use candle_core::Tensor;
use serde_json::{json, Value};

use super::dpo::log_sigmoid;
use super::preference::PairForward;
use super::trainer::{AdapterStack, MetricSums, MicroLoss, Objective};
use crate::data::DpoDataset;
use crate::model::{Adapter, Model, Pass};
use crate::ops::host;

/// `log(1 − eˣ)` for x < 0, as `log(−expm1(x))` through tanh (candle has no expm1): close
/// to 0, where `1 − eˣ` would cancel, it keeps its precision.
fn log1mexp(x: &Tensor) -> candle_core::Result<Tensor> {
    // expm1(x) = 2t / (1 − t), t = tanh(x/2)
    let t = (x * 0.5)?.tanh()?;
    let num = (&t * -2.0)?.log()?;
    let den = (1.0 - &t)?.log()?;
    num - den
}

/// The per-batch quantities of ORPO.
pub struct OrpoTerms {
    /// The batch loss (a scalar, tracked).
    pub loss: Tensor,
    pub nll: Tensor,
    /// Per pair `[n]`: log odds, and mean completion log-probs.
    pub log_odds: Tensor,
    pub chosen_logps: Tensor,
    pub rejected_logps: Tensor,
}

/// ORPO on sums and counts `[n]` of the completions and of the chosen prompts.
pub fn orpo_terms(
    beta: f64,
    sums: (&Tensor, &Tensor),
    counts: (&Tensor, &Tensor),
    prompt: (&Tensor, &Tensor),
) -> Result<OrpoTerms> {
    let a_c = (sums.0 / counts.0.clamp(1f32, f32::MAX)?)?;
    let a_r = (sums.1 / counts.1.clamp(1f32, f32::MAX)?)?;
    let log_odds = ((&a_c - &a_r)? - (log1mexp(&a_c)? - log1mexp(&a_r)?)?)?;
    let ratio = log_sigmoid(&log_odds)?;
    let tokens = (counts.0.sum_all()? + prompt.1.sum_all()?)?.clamp(1f32, f32::MAX)?;
    let nll = (sums.0.sum_all()? + prompt.0.sum_all()?)?
        .neg()?
        .div(&tokens)?;
    let loss = (&nll - (ratio.mean_all()? * beta)?)?;
    Ok(OrpoTerms {
        loss,
        nll,
        log_odds,
        chosen_logps: a_c,
        rejected_logps: a_r,
    })
}

/// Adds ORPOTrainer's metrics of a batch (one sample per pair; `nll_loss` per batch).
fn add_metrics(metrics: &mut MetricSums, t: &OrpoTerms, beta: f64, prefix: &str) -> Result<()> {
    // One read: the batch NLL and loss repeated per pair to share it.
    let n = t.log_odds.dims();
    let [lo, c, r, nll, loss]: [Vec<f32>; 5] = host::rows(&[
        &t.log_odds.detach(),
        &t.chosen_logps.detach(),
        &t.rejected_logps.detach(),
        &t.nll.detach().broadcast_as(n)?.contiguous()?,
        &t.loss.detach().broadcast_as(n)?.contiguous()?,
    ])?
    .try_into()
    .expect("five rows");
    let n = lo.len() as f64;
    let sum = |x: &[f32]| x.iter().map(|&a| a as f64).sum::<f64>();
    let log_sig = |x: f64| -(-x).max(0.0) - (-x.abs()).exp().ln_1p();
    let acc = c.iter().zip(&r).filter(|(c, r)| c > r).count() as f64;
    let margins: f64 = c.iter().zip(&r).map(|(c, r)| beta * (c - r) as f64).sum();
    metrics.add(&format!("{prefix}rewards/chosen"), beta * sum(&c), n);
    metrics.add(&format!("{prefix}rewards/rejected"), beta * sum(&r), n);
    metrics.add(&format!("{prefix}rewards/accuracies"), acc, n);
    metrics.add(&format!("{prefix}rewards/margins"), margins, n);
    metrics.add(&format!("{prefix}logps/chosen"), sum(&c), n);
    metrics.add(&format!("{prefix}logps/rejected"), sum(&r), n);
    metrics.add(&format!("{prefix}log_odds_chosen"), sum(&lo), n);
    let ratio: f64 = lo.iter().map(|&x| log_sig(x as f64)).sum();
    metrics.add(&format!("{prefix}log_odds_ratio"), ratio, n);
    metrics.add(&format!("{prefix}nll_loss"), nll[0] as f64, 1.0);
    if !prefix.is_empty() {
        metrics.add(&format!("{prefix}loss"), loss[0] as f64, 1.0);
    }
    Ok(())
}

/// The terms of a pass packed with the chosen prompts.
fn terms_of(fwd: &PairForward, beta: f64) -> Result<OrpoTerms> {
    let policy = fwd.pair_logps()?;
    let (nc, nr) = fwd.token_counts()?;
    let (ps, pc) = fwd.chosen_prompt_sums()?;
    orpo_terms(
        beta,
        (&policy.chosen, &policy.rejected),
        (&nc, &nr),
        (&ps, &pc),
    )
}

pub struct OrpoObjective {
    pub train: DpoDataset,
    pub eval: Option<DpoDataset>,
    /// λ of the paper, ORPOConfig's `beta`.
    pub beta: f64,
    pub eval_batch_size: usize,
    pub gradient_checkpointing: bool,
}

impl Objective for OrpoObjective {
    fn stage(&self) -> &'static str {
        "orpo"
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
        let packed = PairForward::pack_with_chosen_prompts(&self.train, rows);
        let (fwd, tape) = PairForward::run_training(
            model,
            &packed,
            &adapters.policy(),
            dropout_seed,
            self.gradient_checkpointing,
        )?;
        let terms = terms_of(&fwd, self.beta)?;
        add_metrics(metrics, &terms, self.beta, "")?;
        let ((cs, cn), (rs, rn)) = fwd.logit_means()?;
        metrics.add("logits/chosen", cs, cn);
        metrics.add("logits/rejected", rs, rn);
        metrics.add("tokens", fwd.tokens as f64, 1.0);
        metrics.add("token_passes", fwd.token_passes as f64, 1.0);
        metrics.add("head_positions", fwd.head_positions as f64, 1.0);
        metrics.add("attention_scores", fwd.attention_scores as f64, 1.0);
        Ok(MicroLoss {
            loss: (terms.loss / normaliser)?,
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
        let (metrics, _) = evaluate_orpo(
            model,
            &adapters.policy(),
            eval,
            self.beta,
            self.eval_batch_size,
            "eval_",
        )?;
        Ok(Some(metrics.means()))
    }
}

/// ORPOTrainer's metrics of the policy `adapters` on `data`, and per row (each a batch of its
/// own): summed log-probs, token counts, the chosen sequence's NLL and the loss.
pub fn evaluate_orpo(
    model: &Model,
    adapters: &[&Adapter],
    data: &DpoDataset,
    beta: f64,
    batch_size: usize,
    prefix: &str,
) -> Result<(MetricSums, Vec<Value>)> {
    let mut metrics = MetricSums::default();
    let mut per_row = Vec::new();
    let rows: Vec<usize> = (0..data.examples.len()).collect();
    for chunk in rows.chunks(batch_size.max(1)) {
        let packed = PairForward::pack_with_chosen_prompts(data, chunk);
        let fwd = PairForward::run(model, &packed, Pass::eval(adapters))?;
        let terms = terms_of(&fwd, beta)?;
        add_metrics(&mut metrics, &terms, beta, prefix)?;
        let ((cs, cn), (rs, rn)) = fwd.logit_means()?;
        metrics.add(&format!("{prefix}logits/chosen"), cs, cn);
        metrics.add(&format!("{prefix}logits/rejected"), rs, rn);
        let [sums, counts]: [Vec<f32>; 2] = host::rows(&[&fwd.sums.detach(), &fwd.counts])?
            .try_into()
            .expect("two rows");
        let log_odds = host::rows(&[&terms.log_odds.detach()])?.remove(0);
        let n = chunk.len();
        for (i, &lo) in log_odds.iter().enumerate().take(n) {
            let (c, r, p) = (i, n + i, 2 * n + i);
            let nll = -(sums[c] + sums[p]) as f64 / (counts[c] + counts[p]).max(1.0) as f64;
            let lo = lo as f64;
            let log_sig = -(-lo).max(0.0) - (-lo.abs()).exp().ln_1p();
            per_row.push(json!({
                "chosen_logps": sums[c],
                "rejected_logps": sums[r],
                "chosen_tokens": counts[c],
                "rejected_tokens": counts[r],
                "nll_loss": nll,
                "log_odds_chosen": lo,
                "loss": nll - beta * log_sig,
            }));
        }
    }
    Ok((metrics, per_row))
}

/// The `[orpo]` keys ORPO does not read (it has `beta` alone): each named when set.
pub fn check_keys(s: &crate::config::StageConfig) -> Result<()> {
    let d = crate::config::StageConfig::default();
    let set = [
        ("loss_type", s.loss_type != d.loss_type),
        ("loss_weights", s.loss_weights.is_some()),
        ("label_smoothing", s.label_smoothing != 0.0),
        ("rpo_alpha", s.rpo_alpha.is_some()),
        ("discopop_tau", s.discopop_tau.is_some()),
        ("simpo_gamma", s.simpo_gamma.is_some()),
        ("cpo_alpha", s.cpo_alpha.is_some()),
        ("f_divergence_type", s.f_divergence_type.is_some()),
        (
            "f_alpha_divergence_coef",
            s.f_alpha_divergence_coef.is_some(),
        ),
        ("ld_alpha", s.ld_alpha.is_some()),
        ("use_weighting", s.use_weighting),
        ("precompute_ref_log_probs", s.precompute_ref_log_probs),
        ("ref_adapter", s.ref_adapter.is_some()),
    ];
    if let Some((key, _)) = set.iter().find(|(_, given)| *given) {
        anyhow::bail!("`{key}` is not used by ORPO (it has no reference; its weight is `beta`)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn vec_of(v: &Value) -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    }

    /// ORPOTrainer.odds_ratio_loss and its `nll − losses.mean()` on fixed log-probs
    /// (scripts/make_objective_fixtures.py), within 1e-5 relative.
    #[test]
    fn loss_and_metrics_match_orpo_trainer() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/train/objectives.json"
        );
        let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let inp = &fx["inputs"];
        let t = |v: Vec<f32>| Tensor::from_vec(v.clone(), v.len(), &Device::Cpu).unwrap();
        let (c, r) = (vec_of(&inp["chosen_logps"]), vec_of(&inp["rejected_logps"]));
        let (nc, nr) = (
            vec_of(&inp["chosen_tokens"]),
            vec_of(&inp["rejected_tokens"]),
        );
        // Prompt tokens whose sum gives the fixture's NLL over prompt + chosen.
        let nll = inp["orpo_nll"].as_f64().unwrap() as f32;
        let prompt_counts = vec![2f32; c.len()];
        let tokens: f32 = nc.iter().sum::<f32>() + prompt_counts.iter().sum::<f32>();
        let mut prompt_sums = vec![0f32; c.len()];
        prompt_sums[0] = -nll * tokens - c.iter().sum::<f32>();
        let mut checked = 0;
        for (name, case) in fx["cases"].as_object().unwrap() {
            if case["config"].get("orpo").is_none() {
                continue;
            }
            let beta = case["config"]["beta"].as_f64().unwrap();
            let terms = orpo_terms(
                beta,
                (&t(c.clone()), &t(r.clone())),
                (&t(nc.clone()), &t(nr.clone())),
                (&t(prompt_sums.clone()), &t(prompt_counts.clone())),
            )
            .unwrap();
            let mut metrics = MetricSums::default();
            add_metrics(&mut metrics, &terms, beta, "").unwrap();
            metrics.add("loss", terms.loss.to_scalar::<f32>().unwrap() as f64, 1.0);
            for (key, theirs) in case["metrics"].as_object().unwrap() {
                let theirs = theirs.as_f64().unwrap();
                let ours = metrics.mean(key).unwrap_or_else(|| panic!("{name}: {key}"));
                let tol = 1e-5 * theirs.abs().max(1.0);
                assert!(
                    (ours - theirs).abs() < tol,
                    "{name} {key}: ours {ours} vs TRL {theirs}"
                );
            }
            checked += 1;
        }
        assert_eq!(checked, 2);
    }

    #[test]
    fn log1mexp_keeps_precision_near_zero() {
        let x = Tensor::new(&[-1e-4f32, -0.5, -20.0], &Device::Cpu).unwrap();
        let ours: Vec<f32> = log1mexp(&x).unwrap().to_vec1().unwrap();
        for (o, x) in ours.iter().zip([-1e-4f64, -0.5, -20.0]) {
            let want = (-x.exp_m1()).ln();
            assert!(
                ((*o as f64) - want).abs() < 1e-5 * want.abs().max(1.0),
                "{x}: {o} vs {want}"
            );
        }
    }
}
