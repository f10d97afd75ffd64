//! SFT and DPO losses, TRL metrics and LoRA gradients on a tiny Llama (tied embeddings)
//! against scripts/make_train_fixtures.py (transformers + PEFT, TRL's definitions), from the
//! JSONL rows through our tokenization, on both paths (CPU kernels and generic). Tolerances:
//! token ids exact; losses and metrics 1e-4 relative (absolute below 1e-3 in size); gradients
//! 1e-3 relative in L2 per tensor; the two paths' per-row log-probs 1e-4 relative.

use crate::common;

use candle_core::{DType, Device, Tensor};
use common::{eval_fixture_pairs, fixture, fixture_str, load_on, rel_l2, PATHS};
use lora_dpo::adapter::load_adapter;
use lora_dpo::data::{collate, collate_dpo, load_chat_tokenizer, load_dpo, load_sft, DataConfig};
use lora_dpo::model::{Adapter, Model};
use lora_dpo::ops::Kernels;
use lora_dpo::train::dpo::DpoLoss;
use lora_dpo::train::preference::DpoObjective;
use lora_dpo::train::sft::SftObjective;
use lora_dpo::train::trainer::{AdapterStack, Gradients, MetricSums, Objective};
use std::collections::HashMap;

fn setup(
    kernels: Kernels,
) -> (
    Model,
    Adapter,
    lora_dpo::data::ChatTokenizer,
    HashMap<String, Tensor>,
) {
    let dir = fixture_str("models/tiny-llama");
    let model = load_on(&dir, DType::F32, kernels);
    let adapter = load_adapter(&format!("{dir}/adapter"), &model.config, &Device::Cpu).unwrap();
    let tok = load_chat_tokenizer(&fixture("models/tiny-llama")).unwrap();
    let mut exp =
        candle_core::safetensors::load(fixture("train/expected_dpo.safetensors"), &Device::Cpu)
            .unwrap();
    exp.extend(
        candle_core::safetensors::load(fixture("train/expected_sft.safetensors"), &Device::Cpu)
            .unwrap(),
    );
    (model, adapter, tok, exp)
}

fn close(name: &str, ours: f64, theirs: f64) {
    let tol = 1e-4 * theirs.abs().max(10.0);
    assert!(
        (ours - theirs).abs() < tol,
        "{name}: ours {ours} vs reference {theirs}"
    );
}

/// Our padded batch equals the reference's ids and loss mask on the real tokens.
fn check_batch(batch: &lora_dpo::data::Batch, ids: &Tensor, loss_mask: &Tensor) {
    let ids: Vec<Vec<i64>> = ids.to_vec2().unwrap();
    let lm: Vec<Vec<i64>> = loss_mask.to_vec2().unwrap();
    assert_eq!(batch.batch_size, ids.len());
    for (r, row) in ids.iter().enumerate() {
        let ours = batch.row_ids(r);
        let theirs: Vec<u32> = row[..ours.len()].iter().map(|&x| x as u32).collect();
        assert_eq!(ours, theirs, "row {r} token ids");
        let our_mask: Vec<i64> = batch.loss_mask[r * batch.seq_len..r * batch.seq_len + ours.len()]
            .iter()
            .map(|&m| m as i64)
            .collect();
        assert_eq!(our_mask, lm[r][..ours.len()].to_vec(), "row {r} loss mask");
    }
}

fn check_grads(prefix: &str, adapter: &Adapter, grads: &Gradients, exp: &HashMap<String, Tensor>) {
    for (module, var) in adapter.named_vars() {
        let key = format!("{prefix}.grad.base_model.model.{module}.weight");
        let r = rel_l2(grads.get(&var).unwrap(), &exp[&key]);
        assert!(r < 1e-3, "{key}: relative error {r}");
    }
}

/// The objective of a fixture case's `[dpo]` keys, read as a config file would be.
fn dpo_loss_of(keys: &serde_json::Value) -> DpoLoss {
    let mut text = String::from("[model]\nname_or_path = \"m\"\n[dpo]\n");
    for (k, v) in keys.as_object().unwrap() {
        text.push_str(&format!("{k} = {v}\n"));
    }
    let cfg = lora_dpo::config::LoadedConfig::from_str(&text, &[]).unwrap();
    DpoLoss::from_stage(cfg.run.dpo.as_ref().unwrap()).unwrap()
}

/// Both ways of running the backward: keeping every layer's activations, and recomputing
/// each layer (gradient checkpointing). They must give the same gradients.
const CHECKPOINTING: [bool; 2] = [false, true];

#[test]
fn dpo_losses_metrics_and_gradients_match_trl_definitions() {
    for kernels in PATHS {
        dpo_losses_match_on(kernels);
    }
}

fn dpo_losses_match_on(kernels: Kernels) {
    let (model, adapter, tok, exp) = setup(kernels);
    let data = load_dpo(
        &fixture("train/prefs.jsonl"),
        None,
        &tok,
        &DataConfig::default(),
    )
    .unwrap();
    let all: Vec<usize> = (0..data.examples.len()).collect();
    let examples: Vec<_> = data.examples.iter().collect();
    check_batch(
        &collate_dpo(&examples, data.pad_id, None),
        &exp["dpo.input_ids"],
        &exp["dpo.loss_mask"],
    );
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("train/expected_dpo.json")).unwrap())
            .unwrap();
    for (name, case) in cases.as_object().unwrap() {
        let c = &case["config"];
        let loss = dpo_loss_of(c);
        for gradient_checkpointing in CHECKPOINTING {
            let name = &format!("{name} ({kernels}, checkpointing {gradient_checkpointing})");
            let mut objective = DpoObjective {
                train: data.clone(),
                eval: None,
                loss: loss.clone(),
                eval_batch_size: 8,
                train_reference: None,
                eval_reference: None,
                gradient_checkpointing,
            };
            let stack = AdapterStack {
                frozen: vec![],
                trainable: &adapter,
                initial: None,
            };
            let mut metrics = MetricSums::default();
            let micro = objective
                .loss(&model, &stack, &all, 1.0, 0, &mut metrics)
                .unwrap();
            let expected = case["metrics"].as_object().unwrap();
            close(
                &format!("{name} loss"),
                micro.loss.to_scalar::<f32>().unwrap() as f64,
                expected["loss"].as_f64().unwrap(),
            );
            for (k, v) in expected {
                if k == "loss" {
                    continue;
                }
                let ours = metrics
                    .mean(k)
                    .unwrap_or_else(|| panic!("{name}: metric {k} missing"));
                close(&format!("{name} {k}"), ours, v.as_f64().unwrap());
            }
            let mut grads = Gradients::new(adapter.vars());
            micro.backward(&mut grads).unwrap();
            let prefix = name.split(' ').next().unwrap();
            check_grads(prefix, &adapter, &grads, &exp);
        }
    }
}

#[test]
fn sft_loss_and_gradients_match() {
    for kernels in PATHS {
        sft_loss_and_gradients_match_on(kernels);
    }
}

fn sft_loss_and_gradients_match_on(kernels: Kernels) {
    let (model, adapter, tok, exp) = setup(kernels);
    let data = load_sft(
        &fixture("train/sft.jsonl"),
        None,
        &tok,
        &DataConfig::default(),
    )
    .unwrap();
    let seqs: Vec<_> = data.examples.iter().collect();
    check_batch(
        &collate(&seqs, data.pad_id, None),
        &exp["sft.input_ids"],
        &exp["sft.loss_mask"],
    );
    for gradient_checkpointing in CHECKPOINTING {
        let mut objective = SftObjective {
            train: data.clone(),
            eval: None,
            eval_batch_size: 8,
            gradient_checkpointing,
        };
        // Two micro-batches of one step: each is divided by the step's token count, so their
        // sum is the mean over the whole accumulated batch.
        let micro = vec![vec![0, 1], vec![2]];
        let norm = objective.normaliser(&micro);
        let stack = AdapterStack {
            frozen: vec![],
            trainable: &adapter,
            initial: None,
        };
        let mut metrics = MetricSums::default();
        let mut grads = Gradients::new(adapter.vars());
        let mut total = 0.0;
        for rows in &micro {
            let m = objective
                .loss(&model, &stack, rows, norm, 0, &mut metrics)
                .unwrap();
            total += m.loss.to_scalar::<f32>().unwrap() as f64;
            m.backward(&mut grads).unwrap();
        }
        close(
            "sft loss",
            total,
            exp["sft.loss"].to_vec1::<f32>().unwrap()[0] as f64,
        );
        check_grads("sft", &adapter, &grads, &exp);
    }
}

#[test]
fn eval_per_row_logps_match_transformers_and_peft() {
    let per_path: Vec<Vec<serde_json::Value>> = PATHS.iter().map(|&k| eval_per_row_on(k)).collect();
    // The generic path against the CPU kernels, row by row.
    for (fused, generic) in per_path[0].iter().zip(&per_path[1]) {
        for key in ["chosen_logps", "rejected_logps"] {
            let (a, b) = (fused[key].as_f64().unwrap(), generic[key].as_f64().unwrap());
            let rel = (a - b).abs() / a.abs().max(1e-6);
            assert!(rel < 1e-4, "{key}: fused {a} vs generic {b}");
        }
    }
}

/// The per-row results of `eval`, after checking them against the fixtures.
fn eval_per_row_on(kernels: Kernels) -> Vec<serde_json::Value> {
    let (model, adapter, tok, exp) = setup(kernels);
    let out = eval_fixture_pairs(&model, &adapter, &tok);
    let rows = out["per_row"].as_array().unwrap();
    for key in [
        "chosen_logps",
        "rejected_logps",
        "ref_chosen_logps",
        "ref_rejected_logps",
    ] {
        let theirs: Vec<f32> = exp[&format!("per_row.{key}")].to_vec1().unwrap();
        assert_eq!(rows.len(), theirs.len());
        for (i, row) in rows.iter().enumerate() {
            close(
                &format!("row {i} {key} ({kernels})"),
                row[key].as_f64().unwrap(),
                theirs[i] as f64,
            );
        }
    }
    // The top-level metrics are the TRL ones, with the adapterless model as reference.
    let sig = &serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(fixture("train/expected_dpo.json")).unwrap(),
    )
    .unwrap()["sigmoid"]["metrics"];
    for k in [
        "loss",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
    ] {
        close(k, out[k].as_f64().unwrap(), sig[k].as_f64().unwrap());
    }
    rows.clone()
}
