//! KTO on the tiny Llama (tests/fixtures/models/tiny-llama + adapter) against TRL 1.16's
//! `KTOTrainer` (scripts/make_kto_fixtures.py): its tokens and KL pairs exactly, and
//! `eval --loss-type kto`'s per-row log-probs (policy and reference, each row's own and KL
//! sequence) and metrics within 1e-4 relative, on both op paths.

use crate::common;

use candle_core::{DType, Device};
use common::{fixture, fixture_str, load_on, PATHS};
use lora_dpo::adapter::load_adapter;
use lora_dpo::data::{load_chat_tokenizer, load_kto, read_dataset, DataConfig};
use lora_dpo::ops::Kernels;
use lora_dpo::train::dpo::DpoLoss;
use lora_dpo::train::evaluate::EvalRequest;
use lora_dpo::train::kto::{evaluate_kto_request, KtoLoss};
use serde_json::Value;

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("train/expected_kto_eval.json")).unwrap())
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn kto_tokens_and_kl_pairs_are_trls() {
    let exp = expected();
    let tok = load_chat_tokenizer(&fixture("models/tiny-llama")).unwrap();
    let batch = exp["config"]["batch_size"].as_u64().unwrap() as usize;
    let ds = load_kto(
        &fixture("train/kto.jsonl"),
        None,
        &tok,
        &DataConfig::default(),
        batch,
    )
    .unwrap();
    let rows = exp["per_row"].as_array().unwrap();
    assert_eq!(ds.len(), rows.len());
    for (i, row) in rows.iter().enumerate() {
        let parts = &ds.pairs.examples[i].parts;
        assert_eq!(parts.prompt_ids, ids(&row["prompt_ids"]), "row {i} prompt");
        assert_eq!(
            parts.chosen_ids,
            ids(&row["completion_ids"]),
            "row {i} completion"
        );
        assert_eq!(
            parts.rejected_ids,
            ids(&row["kl_completion_ids"]),
            "row {i} KL completion"
        );
        assert_eq!(
            ds.labels[i],
            row["label"].as_bool().unwrap(),
            "row {i} label"
        );
    }
}

/// tiny-llama on `kernels`, its PEFT adapter and its tokenizer.
fn tiny_llama(
    kernels: Kernels,
) -> (
    lora_dpo::model::Model,
    lora_dpo::model::Adapter,
    lora_dpo::data::ChatTokenizer,
) {
    let dir = fixture_str("models/tiny-llama");
    let model = load_on(&dir, DType::F32, kernels);
    let adapter = load_adapter(&format!("{dir}/adapter"), &model.config, &Device::Cpu).unwrap();
    let tok = load_chat_tokenizer(&fixture("models/tiny-llama")).unwrap();
    (model, adapter, tok)
}

fn eval_on(kernels: Kernels) -> Value {
    let (model, adapter, tok) = tiny_llama(kernels);
    let exp = expected();
    let cfg = &exp["config"];
    let loss = KtoLoss {
        beta: cfg["beta"].as_f64().unwrap(),
        desirable_weight: cfg["desirable_weight"].as_f64().unwrap(),
        undesirable_weight: cfg["undesirable_weight"].as_f64().unwrap(),
        apo_zero_unpaired: false,
    };
    let request = EvalRequest {
        model: &model,
        adapter: Some(&adapter),
        tokenizer: &tok,
        data_config: &DataConfig::default(),
        // KTO's own loss goes alongside; the pair loss is not read.
        loss: DpoLoss::from_stage(&Default::default()).unwrap().into(),
        batch_size: cfg["batch_size"].as_u64().unwrap() as usize,
        per_row: true,
    };
    let raw = read_dataset(&fixture("train/kto.jsonl"), None).unwrap();
    evaluate_kto_request(&request, raw, loss).unwrap()
}

fn close(what: &str, ours: f64, theirs: f64) {
    assert!(
        (ours - theirs).abs() <= 1e-4 * theirs.abs(),
        "{what}: ours {ours} vs KTOTrainer {theirs} (rel {:.2e})",
        (ours - theirs).abs() / theirs.abs()
    );
}

#[test]
fn eval_kto_matches_trl_kto_trainer_per_row_and_in_its_metrics() {
    let exp = expected();
    for kernels in PATHS {
        let out = eval_on(kernels);
        let rows = out["per_row"].as_array().unwrap();
        let theirs = exp["per_row"].as_array().unwrap();
        assert_eq!(rows.len(), theirs.len());
        for (i, (a, b)) in rows.iter().zip(theirs).enumerate() {
            assert_eq!(a["label"], b["label"]);
            for key in ["logps", "ref_logps", "kl_logps", "ref_kl_logps"] {
                close(
                    &format!("{kernels} row {i} {key}"),
                    a[key].as_f64().unwrap(),
                    b[key].as_f64().unwrap(),
                );
            }
        }
        for key in [
            "loss",
            "kl",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "logps/chosen",
            "logps/rejected",
            "logits/chosen",
            "logits/rejected",
        ] {
            close(
                &format!("{kernels} {key}"),
                out[key]
                    .as_f64()
                    .unwrap_or_else(|| panic!("no {key} in {out}")),
                exp["metrics"][key].as_f64().unwrap(),
            );
        }
    }
}

#[test]
fn kto_plain_text_tokens_and_kl_pairs_are_trls() {
    let exp: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("train/expected_kto_text_tokens.json")).unwrap(),
    )
    .unwrap();
    let tok = load_chat_tokenizer(&fixture("models/tiny-llama")).unwrap();
    let batch = exp["batch_size"].as_u64().unwrap() as usize;
    let ds = load_kto(
        &fixture("train/kto_text.jsonl"),
        None,
        &tok,
        &DataConfig::default(),
        batch,
    )
    .unwrap();
    let rows = exp["rows"].as_array().unwrap();
    assert_eq!(ds.len(), rows.len());
    assert!(!ds.pairs.stats.conversational);
    for (i, row) in rows.iter().enumerate() {
        let parts = &ds.pairs.examples[i].parts;
        assert_eq!(parts.prompt_ids, ids(&row["prompt_ids"]), "row {i} prompt");
        // EOS appended where missing, not doubled where the text already ends with it.
        assert_eq!(
            parts.chosen_ids,
            ids(&row["completion_ids"]),
            "row {i} completion"
        );
        assert_eq!(
            parts.rejected_ids,
            ids(&row["kl_completion_ids"]),
            "row {i} KL completion"
        );
        assert_eq!(
            ds.labels[i],
            row["label"].as_bool().unwrap(),
            "row {i} label"
        );
    }
}

/// One KTO step's LoRA gradients against TRL's KTOTrainer (scripts/make_kto_grad_fixture.py:
/// `compute_loss` on the first batch of three rows, backward): the loss within 1e-5 relative,
/// every factor's gradient within 1e-3 relative L2, on both op paths, with and without
/// gradient checkpointing.
#[test]
fn one_kto_step_has_trls_gradients() {
    use lora_dpo::train::kto::KtoObjective;
    use lora_dpo::train::trainer::{AdapterStack, Gradients, MetricSums, Objective};
    let exp = candle_core::safetensors::load(
        fixture("train/expected_kto_grads.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let loss_ref = exp["loss"].to_vec1::<f32>().unwrap()[0];
    for kernels in PATHS {
        for checkpointing in [false, true] {
            let (model, adapter, tok) = tiny_llama(kernels);
            let train = load_kto(
                &fixture("train/kto.jsonl"),
                None,
                &tok,
                &DataConfig::default(),
                3,
            )
            .unwrap();
            let mut objective = KtoObjective {
                train,
                eval: None,
                loss: KtoLoss {
                    beta: 0.1,
                    desirable_weight: 1.0,
                    undesirable_weight: 1.0,
                    apo_zero_unpaired: false,
                },
                eval_batch_size: 3,
                train_reference: None,
                eval_reference: None,
                gradient_checkpointing: checkpointing,
            };
            let stack = AdapterStack {
                frozen: vec![],
                trainable: &adapter,
                initial: None,
            };
            let mut metrics = MetricSums::default();
            let micro = objective
                .loss(&model, &stack, &[0, 1, 2], 1.0, 0, &mut metrics)
                .unwrap();
            let ours = micro.loss.to_scalar::<f32>().unwrap();
            let what = format!("({kernels}, checkpointing {checkpointing})");
            assert!(
                ((ours - loss_ref) / loss_ref).abs() < 1e-5,
                "loss {ours} vs TRL {loss_ref} {what}"
            );
            let mut grads = Gradients::new(adapter.vars());
            micro.backward(&mut grads).unwrap();
            for (module, var) in adapter.named_vars() {
                let key = format!("grad.base_model.model.{module}.weight");
                let r = common::rel_l2(grads.get(&var).unwrap(), &exp[&key]);
                assert!(r < 1e-3, "{key}: relative error {r} {what}");
            }
        }
    }
}
