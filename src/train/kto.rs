//! The KTO objective with TRL's definitions (`KTOTrainer`, `loss_type = "kto"`).
//!
//! Per row, with r = logp − ref (summed completion log-probs, policy and reference) and the
//! batch's KL estimate z = max(0, mean over the batch of (logp_KL − ref_KL)) on the mismatched
//! `prompt + another row's completion` sequences (no gradient):
//! desirable `w_d · (1 − σ(β(r − z)))`, undesirable `w_u · (1 − σ(β(z − r)))`; the batch loss is
//! the mean over its rows. Rewards are `β·r`.
//!
//! Each row and its KL sequence are one packed pair ([`crate::data::kto`]), so one forward pass
//! scores both, and the reference (the base with the trained adapter disabled, the frozen
//! adapters kept) is DPO's pass or its cache.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

use super::dpo::log_sigmoid;
use super::preference::{PairForward, PairSums};
use super::trainer::{AdapterStack, MetricSums, MicroLoss, Objective};
use crate::data::KtoDataset;
use crate::model::{Adapter, Model, Pass};
use crate::ops::host;

#[derive(Debug, Clone, Copy)]
pub struct KtoLoss {
    pub beta: f64,
    pub desirable_weight: f64,
    pub undesirable_weight: f64,
    /// `loss_type = "apo_zero_unpaired"`: APO-zero on unpaired rows, KTO's loss with the KL
    /// estimate fixed at 0 (TRL computes none and logs `kl` = 0).
    pub apo_zero_unpaired: bool,
}

impl KtoLoss {
    /// The objective of a `[kto]` section: `loss_type` unset, `"kto"` or `"apo_zero_unpaired"`.
    pub fn from_stage(s: &crate::config::StageConfig) -> Result<Self> {
        use super::dpo::LossType;
        let apo_zero_unpaired = match s.loss_type.0.as_slice() {
            // Unset reads as DPO's default.
            [LossType::Sigmoid] | [LossType::Kto] => false,
            [LossType::ApoZeroUnpaired] => true,
            _ => bail!(
                "`loss_type` = [{}]: KTO's are \"kto\" (the default) and \"apo_zero_unpaired\"",
                s.loss_type
            ),
        };
        Ok(Self {
            beta: s.beta,
            desirable_weight: s.desirable_weight,
            undesirable_weight: s.undesirable_weight,
            apo_zero_unpaired,
        })
    }
}

/// Summed log-probs `[n]` of a batch's rows and of their KL sequences.
pub struct KtoLogps {
    pub completion: Tensor,
    pub kl: Tensor,
}

/// The weighted per-row losses `[n]` (tracked), the KL estimate and the rewards `β·r` `[n]`.
pub struct KtoTerms {
    pub losses: Tensor,
    pub kl: f64,
    pub rewards: Tensor,
}

impl KtoLoss {
    pub fn terms(
        &self,
        policy: &KtoLogps,
        reference: &KtoLogps,
        labels: &[bool],
    ) -> Result<KtoTerms> {
        let n = labels.len();
        if policy.completion.dims1()? != n {
            bail!("{} KTO rows but {} labels", policy.completion.dims1()?, n);
        }
        let device = policy.completion.device();
        // TRL detaches the estimate (and takes its mean over every process, one here).
        let kl = match self.apo_zero_unpaired {
            true => 0.0,
            false => {
                let d = (policy.kl.detach() - reference.kl.detach())?.mean_all()?;
                (host::scalar(&d)? as f64).max(0.0)
            }
        };
        let ratio = (&policy.completion - &reference.completion)?;
        // 1 − σ(β·s·(r − z)) = σ(−β·s·(r − z)), s = +1 desirable, −1 undesirable.
        let sign = per_label(labels, 1.0, -1.0, device)?;
        let weight = per_label(
            labels,
            self.desirable_weight as f32,
            self.undesirable_weight as f32,
            device,
        )?;
        let z = ((&ratio - kl)? * -self.beta)?;
        let losses = (log_sigmoid(&(z * sign)?)?.exp()? * weight)?;
        Ok(KtoTerms {
            losses,
            kl,
            rewards: (ratio.detach() * self.beta)?,
        })
    }
}

fn per_label(labels: &[bool], yes: f32, no: f32, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = labels.iter().map(|&l| if l { yes } else { no }).collect();
    Ok(Tensor::from_vec(v, labels.len(), device)?)
}

/// Adds TRL's KTO metrics of one batch: `kl`, `rewards/{chosen,rejected,margins}`,
/// `logps/{chosen,rejected}` (chosen = desirable rows), `count/{chosen,rejected}`, and `loss`
/// when `prefix` is set (evaluation, weighted by rows as Trainer's eval loss is). TRL averages
/// each over the rows of its label in the batch, and only logs it when the batch has such rows.
pub fn add_kto_metrics(
    metrics: &mut MetricSums,
    terms: &KtoTerms,
    policy_logps: &Tensor,
    labels: &[bool],
    prefix: &str,
) -> Result<()> {
    let [losses, rewards, logps]: [Vec<f32>; 3] = host::rows(&[
        &terms.losses.detach(),
        &terms.rewards,
        &policy_logps.detach(),
    ])?
    .try_into()
    .expect("three rows");
    let split = |v: &[f32], want: bool| -> (f64, f64) {
        let (mut s, mut n) = (0f64, 0f64);
        for (x, &l) in v.iter().zip(labels) {
            if l == want {
                s += *x as f64;
                n += 1.0;
            }
        }
        (s, n)
    };
    let key = |k: &str| format!("{prefix}{k}");
    metrics.add(&key("kl"), terms.kl, 1.0);
    let (cr, nc) = split(&rewards, true);
    let (rr, nr) = split(&rewards, false);
    // Batch means, each one sample: TRL logs the mean of its batches' means.
    if nc > 0.0 {
        metrics.add(&key("rewards/chosen"), cr / nc, 1.0);
        metrics.add(&key("logps/chosen"), split(&logps, true).0 / nc, 1.0);
    }
    if nr > 0.0 {
        metrics.add(&key("rewards/rejected"), rr / nr, 1.0);
        metrics.add(&key("logps/rejected"), split(&logps, false).0 / nr, 1.0);
    }
    if nc > 0.0 && nr > 0.0 {
        metrics.add(&key("rewards/margins"), cr / nc - rr / nr, 1.0);
    }
    metrics.add(&key("count/chosen"), nc, 1.0);
    metrics.add(&key("count/rejected"), nr, 1.0);
    if !prefix.is_empty() {
        let n = losses.len() as f64;
        metrics.add(&key("loss"), losses.iter().map(|&x| x as f64).sum(), n);
    }
    Ok(())
}

/// TRL's `logits/chosen` / `logits/rejected`: the mean logit over the completion tokens of the
/// desirable / undesirable rows (their own sequences, not the KL ones).
fn add_logit_metrics(
    metrics: &mut MetricSums,
    fwd: &PairForward,
    labels: &[bool],
    prefix: &str,
) -> Result<()> {
    let (sums, counts) = fwd.logit_sums()?;
    for (want, name) in [(true, "logits/chosen"), (false, "logits/rejected")] {
        let (mut s, mut n) = (0f64, 0f64);
        for (i, &l) in labels.iter().enumerate() {
            if l == want {
                s += sums[i] as f64;
                n += counts[i] as f64;
            }
        }
        if n > 0.0 {
            metrics.add(&format!("{prefix}{name}"), s / n, 1.0);
        }
    }
    Ok(())
}

fn logps_of(sums: &PairSums, device: &Device) -> Result<KtoLogps> {
    let p = sums.logps(false, device)?;
    Ok(KtoLogps {
        completion: p.chosen,
        kl: p.rejected,
    })
}

pub struct KtoObjective {
    pub train: KtoDataset,
    pub eval: Option<KtoDataset>,
    pub loss: KtoLoss,
    pub eval_batch_size: usize,
    /// Precomputed reference sums of the training rows and their KL sequences.
    pub train_reference: Option<PairSums>,
    /// Reference sums of the eval rows, computed once on first use.
    pub eval_reference: Option<PairSums>,
    pub gradient_checkpointing: bool,
}

impl Objective for KtoObjective {
    fn stage(&self) -> &'static str {
        "kto"
    }

    fn num_rows(&self) -> usize {
        self.train.len()
    }

    fn lengths(&self) -> Vec<usize> {
        self.train.lengths()
    }

    fn default_sampling(&self) -> crate::data::SamplingStrategy {
        crate::data::SamplingStrategy::Sequential
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
        let labels: Vec<bool> = rows.iter().map(|&r| self.train.labels[r]).collect();
        let packed = PairForward::pack(&self.train.pairs, rows);
        let t0 = std::time::Instant::now();
        let reference = match &self.train_reference {
            Some(r) => logps_of(&r.select(rows)?, model.device())?,
            None => {
                let p = PairForward::run(model, &packed, Pass::eval(&adapters.reference()))?
                    .pair_logps()?;
                KtoLogps {
                    completion: p.chosen,
                    kl: p.rejected,
                }
            }
        };
        model.device().synchronize()?;
        metrics.add("time/reference", t0.elapsed().as_secs_f64(), 1.0);
        let (fwd, tape) = PairForward::run_training(
            model,
            &packed,
            &adapters.policy(),
            dropout_seed,
            self.gradient_checkpointing,
        )?;
        let p = fwd.pair_logps()?;
        // TRL scores the KL sequences without a graph.
        let policy = KtoLogps {
            completion: p.chosen,
            kl: p.rejected.detach(),
        };
        let terms = self.loss.terms(&policy, &reference, &labels)?;
        let loss = terms.losses.mean_all()?;
        add_kto_metrics(metrics, &terms, &policy.completion, &labels, "")?;
        add_logit_metrics(metrics, &fwd, &labels, "")?;
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
            self.eval_reference = Some(super::preference::reference_sums(
                model,
                &adapters.reference(),
                &eval.pairs,
                self.eval_batch_size,
                None,
            )?);
        }
        let (metrics, _) = evaluate_kto(
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

/// TRL's KTO metrics of the policy `adapters` on `data`, batch by batch, against precomputed
/// reference sums (or against itself), and the policy's own sums (row, then KL sequence).
pub fn evaluate_kto(
    model: &Model,
    adapters: &[&Adapter],
    data: &KtoDataset,
    reference: Option<&PairSums>,
    loss: &KtoLoss,
    batch_size: usize,
    prefix: &str,
) -> Result<(MetricSums, PairSums)> {
    let mut metrics = MetricSums::default();
    let mut sums = PairSums::default();
    let rows: Vec<usize> = (0..data.len()).collect();
    for chunk in rows.chunks(batch_size.max(1)) {
        let fwd = PairForward::run(
            model,
            &PairForward::pack(&data.pairs, chunk),
            Pass::eval(adapters),
        )?;
        let own = fwd.host_sums()?;
        let reference = match reference {
            Some(r) => r.select(chunk)?,
            None => own.clone(),
        };
        let labels: Vec<bool> = chunk.iter().map(|&r| data.labels[r]).collect();
        let policy = logps_of(&own, model.device())?;
        let terms = loss.terms(&policy, &logps_of(&reference, model.device())?, &labels)?;
        add_kto_metrics(&mut metrics, &terms, &policy.completion, &labels, prefix)?;
        add_logit_metrics(&mut metrics, &fwd, &labels, prefix)?;
        sums.extend(own);
    }
    Ok((metrics, sums))
}

/// `eval --loss-type kto`: TRL's KTO metrics of the request's model (+ adapter) on unpaired
/// rows, the reference being the same base without the adapter; the KL pairs rotate within
/// chunks of the eval batch size. With `per_row`, each row's label and summed log-probs.
pub fn evaluate_kto_request(
    req: &super::evaluate::EvalRequest,
    raw: crate::data::RawDataset,
    loss: KtoLoss,
) -> Result<serde_json::Value> {
    use serde_json::{json, Map, Value};
    let policy: Vec<&Adapter> = req.adapter.into_iter().collect();
    let data = crate::data::prepare_kto(raw, req.tokenizer, req.data_config, req.batch_size)?;
    // Without an adapter the policy is the reference: one pass gives both.
    let reference = match policy.is_empty() {
        true => None,
        false => Some(super::preference::reference_sums(
            req.model,
            &[],
            &data.pairs,
            req.batch_size,
            None,
        )?),
    };
    let (metrics, own) = evaluate_kto(
        req.model,
        &policy,
        &data,
        reference.as_ref(),
        &loss,
        req.batch_size,
        "eval_",
    )?;
    let mut out = Map::new();
    for (k, v) in metrics.means() {
        out.insert(k.trim_start_matches("eval_").to_string(), json!(v));
    }
    out.insert("rows".into(), json!(data.len()));
    if req.per_row {
        let r = reference.as_ref().unwrap_or(&own);
        let rows: Vec<Value> = (0..data.len())
            .map(|i| {
                json!({
                    "label": data.labels[i],
                    "logps": own.chosen[i],
                    "ref_logps": r.chosen[i],
                    "kl_logps": own.rejected[i],
                    "ref_kl_logps": r.rejected[i],
                })
            })
            .collect();
        out.insert("per_row".into(), Value::Array(rows));
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn case_tensors(case: &Value, key: &str) -> Tensor {
        let v: Vec<f32> = case[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let n = v.len();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap()
    }

    /// The loss and metrics against `KTOTrainer._compute_loss` itself on the same log-probs
    /// (scripts/make_kto_fixtures.py): 1e-5 relative (f32 here, f64 there).
    #[test]
    fn loss_and_metrics_match_trl_kto_trainer() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/train/expected_kto_loss.json"
        );
        let cases: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(cases.len(), 6);
        for case in &cases {
            let name = case["name"].as_str().unwrap();
            let loss = KtoLoss {
                beta: case["beta"].as_f64().unwrap(),
                desirable_weight: case["desirable_weight"].as_f64().unwrap(),
                undesirable_weight: case["undesirable_weight"].as_f64().unwrap(),
                apo_zero_unpaired: case["loss_type"] == "apo_zero_unpaired",
            };
            let labels: Vec<bool> = case["label"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_bool().unwrap())
                .collect();
            let policy = KtoLogps {
                completion: case_tensors(case, "logps"),
                kl: case_tensors(case, "kl_logps"),
            };
            let reference = KtoLogps {
                completion: case_tensors(case, "ref_logps"),
                kl: case_tensors(case, "ref_kl_logps"),
            };
            let terms = loss.terms(&policy, &reference, &labels).unwrap();
            let mut metrics = MetricSums::default();
            add_kto_metrics(&mut metrics, &terms, &policy.completion, &labels, "eval_").unwrap();
            let close = |what: &str, ours: f64, theirs: f64| {
                assert!(
                    (ours - theirs).abs() <= 1e-5 * theirs.abs().max(1e-3),
                    "{name} {what}: ours {ours} vs TRL {theirs}"
                );
            };
            close(
                "loss",
                metrics.mean("eval_loss").unwrap(),
                case["loss"].as_f64().unwrap(),
            );
            let expected = case["metrics"].as_object().unwrap();
            for (k, v) in expected {
                let ours = metrics
                    .mean(&format!("eval_{k}"))
                    .unwrap_or_else(|| panic!("{name}: no {k}"));
                close(k, ours, v.as_f64().unwrap());
            }
            // TRL logs no rewards of a label the batch lacks, nor a margin then.
            for k in [
                "rewards/chosen",
                "rewards/rejected",
                "rewards/margins",
                "logps/chosen",
            ] {
                assert_eq!(
                    metrics.mean(&format!("eval_{k}")).is_some(),
                    expected.contains_key(k),
                    "{name}: {k}"
                );
            }
        }
    }

    /// The policy's gradient flows through its own sequences only: the KL estimate is a constant.
    #[test]
    fn kto_sections_take_kto_trainers_loss_types_only() {
        let load = |keys: &str| {
            let text = format!("[model]\nname_or_path = \"m\"\n[kto]\n{keys}\n");
            crate::config::LoadedConfig::from_str(&text, &[])
                .and_then(|c| KtoLoss::from_stage(c.run.kto.as_ref().unwrap()))
        };
        assert!(!load("").unwrap().apo_zero_unpaired);
        assert!(!load("loss_type = \"kto\"").unwrap().apo_zero_unpaired);
        assert!(
            load("loss_type = \"apo_zero_unpaired\"")
                .unwrap()
                .apo_zero_unpaired
        );
        for keys in ["loss_type = \"simpo\"", "loss_type = [\"kto\", \"sft\"]"] {
            let err = format!("{:#}", load(keys).unwrap_err());
            assert!(
                err.contains("[kto]") && err.contains("loss_type"),
                "{keys}: {err}"
            );
        }
    }

    #[test]
    fn kl_estimate_carries_no_gradient() {
        let var = candle_core::Var::from_vec(vec![-3f32, -4.0], 2, &Device::Cpu).unwrap();
        let kl_var = candle_core::Var::from_vec(vec![-5f32, -6.0], 2, &Device::Cpu).unwrap();
        let zeros = Tensor::from_vec(vec![-3.5f32, -4.5], 2, &Device::Cpu).unwrap();
        let loss = KtoLoss {
            beta: 0.1,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
            apo_zero_unpaired: false,
        };
        let terms = loss
            .terms(
                &KtoLogps {
                    completion: var.as_tensor().clone(),
                    kl: kl_var.as_tensor().clone(),
                },
                &KtoLogps {
                    completion: zeros.clone(),
                    kl: zeros,
                },
                &[true, false],
            )
            .unwrap();
        let grads = terms.losses.mean_all().unwrap().backward().unwrap();
        assert!(grads.get(var.as_tensor()).is_some());
        assert!(grads.get(kl_var.as_tensor()).is_none());
    }
}
