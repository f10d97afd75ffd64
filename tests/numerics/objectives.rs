//! `eval`'s per-row values of every objective on the tiny Llama fixture and its adapter against
//! TRL 1.16's trainers run on the same token ids (scripts/make_objective_fixtures.py):
//! DPOTrainer (its fused LM head) for the DPO loss types, CPOTrainer for simpo and cpo,
//! ORPOTrainer for orpo (its NLL over prompt + chosen, log odds). Each row is a batch of its own on both sides; the loss, and the
//! log-probs TRL logs, agree within 1e-4 relative.

use crate::common;

use candle_core::DType;
use common::{fixture, fixture_str, load_on};
use lora_dpo::adapter::load_adapter;
use lora_dpo::config::LoadedConfig;
use lora_dpo::data::{load_chat_tokenizer, read_dataset, DataConfig};
use lora_dpo::ops::Kernels;
use lora_dpo::train::dpo::DpoLoss;
use lora_dpo::train::evaluate::{evaluate, EvalLoss, EvalRequest};

fn close(name: &str, ours: f64, theirs: f64) {
    let tol = 1e-4 * theirs.abs().max(1e-2);
    assert!(
        (ours - theirs).abs() <= tol,
        "{name}: ours {ours} vs TRL {theirs}"
    );
}

fn loss_of(keys: &serde_json::Value) -> DpoLoss {
    let mut text = String::from("[model]\nname_or_path = \"m\"\n[dpo]\n");
    for (k, v) in keys.as_object().unwrap() {
        text.push_str(&format!("{k} = {v}\n"));
    }
    let cfg = LoadedConfig::from_str(&text, &[]).unwrap();
    DpoLoss::from_stage(cfg.run.dpo.as_ref().unwrap()).unwrap()
}

#[test]
fn eval_per_row_matches_trl_trainers() {
    let dir = fixture_str("models/tiny-llama");
    let model = load_on(&dir, DType::F32, Kernels::Auto);
    let adapter = load_adapter(&format!("{dir}/adapter"), &model.config, model.device()).unwrap();
    let tok = load_chat_tokenizer(&fixture("models/tiny-llama")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("train/objectives_per_row.json")).unwrap(),
    )
    .unwrap();
    let (mut checked, mut token_metrics) = (0, 0);
    for (name, case) in cases.as_object().unwrap() {
        let orpo = case["config"]["loss_type"] == "orpo";
        let (objective, averages, with_reference) = if orpo {
            let beta = case["config"]["beta"].as_f64().unwrap();
            (EvalLoss::Orpo { beta }, true, false)
        } else {
            let loss = loss_of(&case["config"]);
            let (a, r) = (loss.averages_logps(), loss.needs_reference());
            (loss.into(), a, r)
        };
        let request = EvalRequest {
            model: &model,
            adapter: Some(&adapter),
            tokenizer: &tok,
            data_config: &DataConfig::default(),
            loss: objective,
            // Batches of two: the per-row values must not depend on the batching.
            batch_size: 2,
            per_row: true,
        };
        let data = read_dataset(&fixture("train/prefs.jsonl"), None).unwrap();
        let out = evaluate(&request, data).unwrap();
        let ours = out["per_row"].as_array().unwrap();
        let theirs = case["per_row"].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{name}");
        for (i, (o, t)) in ours.iter().zip(theirs).enumerate() {
            let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
            close(&format!("{name} row {i} loss"), f(o, "loss"), f(t, "loss"));
            let (mut c, mut r) = (f(o, "chosen_logps"), f(o, "rejected_logps"));
            if averages {
                c /= f(o, "chosen_tokens");
                r /= f(o, "rejected_tokens");
            }
            close(
                &format!("{name} row {i} logps/chosen"),
                c,
                f(t, "logps/chosen"),
            );
            close(
                &format!("{name} row {i} logps/rejected"),
                r,
                f(t, "logps/rejected"),
            );
            // Reference-free objectives run no reference pass.
            assert_eq!(o.get("ref_chosen_logps").is_some(), with_reference);
            if orpo {
                close(
                    &format!("{name} row {i} nll_loss"),
                    f(o, "nll_loss"),
                    f(t, "nll_loss"),
                );
                let lo = f(t, "log_odds_chosen");
                close(
                    &format!("{name} row {i} log_odds_chosen"),
                    f(o, "log_odds_chosen"),
                    lo,
                );
            }
        }
        // DPOTrainer's per-token metrics, token-weighted over the rows as ours are.
        if theirs[0].get("entropy").is_some() {
            let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
            let (mut ent, mut logits_c, mut acc, mut all, mut chosen) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for (o, t) in ours.iter().zip(theirs) {
                let (nc, nr) = (f(o, "chosen_tokens"), f(o, "rejected_tokens"));
                ent += f(t, "entropy") * (nc + nr);
                logits_c += f(t, "logits/chosen") * nc;
                acc += f(t, "mean_token_accuracy") * nc;
                all += nc + nr;
                chosen += nc;
            }
            close(&format!("{name} entropy"), f(&out, "entropy"), ent / all);
            close(
                &format!("{name} logits/chosen"),
                f(&out, "logits/chosen"),
                logits_c / chosen,
            );
            let ours_acc = f(&out, "mean_token_accuracy");
            assert!(
                (ours_acc - acc / chosen).abs() < 1e-6,
                "{name} mean_token_accuracy"
            );
            token_metrics += 1;
        }
        checked += 1;
    }
    assert!(checked >= 32, "{checked} objectives");
    assert!(
        token_metrics >= 25,
        "{token_metrics} with per-token metrics"
    );
}

/// simpo and cpo train without a reference pass (no `time/reference`, which every
/// reference-based step records) and match CPOTrainer's loss on the whole batch.
#[test]
fn reference_free_objectives_run_no_reference_pass() {
    use lora_dpo::train::preference::DpoObjective;
    use lora_dpo::train::trainer::{AdapterStack, MetricSums, Objective};
    let dir = fixture_str("models/tiny-llama");
    let model = load_on(&dir, DType::F32, Kernels::Auto);
    let adapter = load_adapter(&format!("{dir}/adapter"), &model.config, model.device()).unwrap();
    let tok = load_chat_tokenizer(&fixture("models/tiny-llama")).unwrap();
    let data = lora_dpo::data::load_dpo(
        &fixture("train/prefs.jsonl"),
        None,
        &tok,
        &DataConfig::default(),
    )
    .unwrap();
    for (keys, with_reference) in [
        (r#"{"loss_type": "simpo", "beta": 2.0}"#, false),
        (r#"{"loss_type": ["cpo"], "beta": 0.1}"#, false),
        (r#"{"loss_type": ["simpo", "sft"], "beta": 2.0}"#, false),
        (r#"{"loss_type": "sigmoid", "beta": 0.1}"#, true),
    ] {
        let loss = loss_of(&serde_json::from_str(keys).unwrap());
        let mut objective = DpoObjective {
            train: data.clone(),
            eval: Some(data.clone()),
            loss,
            eval_batch_size: 2,
            train_reference: None,
            eval_reference: None,
            gradient_checkpointing: false,
        };
        let stack = AdapterStack {
            frozen: vec![],
            trainable: &adapter,
            initial: None,
        };
        let mut metrics = MetricSums::default();
        let rows: Vec<usize> = (0..data.examples.len()).collect();
        objective
            .loss(&model, &stack, &rows, 1.0, 0, &mut metrics)
            .unwrap();
        assert_eq!(
            metrics.mean("time/reference").is_some(),
            with_reference,
            "{keys}"
        );
        let eval = objective.evaluate(&model, &stack).unwrap().unwrap();
        assert!(eval.iter().any(|(k, _)| k == "eval_rewards/accuracies"));
        assert_eq!(objective.eval_reference.is_some(), with_reference, "{keys}");
    }
}
