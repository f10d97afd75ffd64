//! The `[kto]` stage as the commands run it: a new adapter on top of `frozen` (the SFT adapter
//! in `train`, `[kto] ref_adapter` alone), the reference being the base with those frozen
//! adapters only, precomputed into DPO's reference cache when `precompute_ref_log_probs` is set.

use anyhow::{Context, Result};

use super::kto::{KtoLoss, KtoObjective};
use super::run::{
    cached_reference, finished_stage, load_splits, new_adapter, stage_config, stage_fingerprint,
    train_and_save, train_options, RunOptions, Session, StageResult,
};
use super::trainer::AdapterStack;
use crate::adapter::load_adapter;
use crate::config::LoadedConfig;
use crate::data::Stage;
use crate::model::Adapter;

/// KTO of a new adapter on top of `frozen`, claiming the output folder's `kto` stage.
pub fn run_kto(
    session: &Session,
    cfg: &LoadedConfig,
    opts: &RunOptions,
    frozen: Option<&Adapter>,
) -> Result<(Adapter, StageResult)> {
    let _lock = super::output_dir::claim(&cfg.run.output.dir, opts, &["kto"])?;
    kto_stage(session, cfg, opts, &frozen.into_iter().collect::<Vec<_>>())
}

pub(super) fn kto_stage(
    session: &Session,
    cfg: &LoadedConfig,
    opts: &RunOptions,
    frozen: &[&Adapter],
) -> Result<(Adapter, StageResult)> {
    let stage = stage_config(cfg, Stage::Kto)?;
    let data_cfg = session.data_config(cfg, Stage::Kto)?;
    // TRL rotates the KL completions within chunks of the training batch size, eval set included.
    let chunk = stage.per_device_train_batch_size;
    let (train, eval) = load_splits(stage, Stage::Kto, |p| {
        let ds = crate::data::load_kto(p, None, &session.tokenizer, &data_cfg, chunk)?;
        eprintln!(
            "{} ({} desirable, {} undesirable)",
            crate::data::report::counts_line(&ds.pairs.stats),
            ds.desirable(),
            ds.len() - ds.desirable()
        );
        Ok(ds)
    })?;
    let loss = KtoLoss {
        beta: stage.beta,
        desirable_weight: stage.desirable_weight,
        undesirable_weight: stage.undesirable_weight,
    };
    let mut ref_loaded;
    let frozen: Vec<&Adapter> = match (frozen.is_empty(), &stage.ref_adapter) {
        (false, _) => frozen.to_vec(),
        (true, Some(spec)) => {
            ref_loaded = load_adapter(spec, &session.model.config, session.model.device())
                .with_context(|| format!("[kto] ref_adapter {spec}"))?;
            ref_loaded.frozen = true;
            vec![&ref_loaded]
        }
        (true, None) => vec![],
    };
    let topts = train_options(
        cfg,
        Stage::Kto,
        opts,
        stage_fingerprint(session, cfg, Stage::Kto, &frozen)?,
    )?;
    if let Some(done) = finished_stage(session, Stage::Kto, opts, &topts)? {
        return Ok(done);
    }
    // Another seed than SFT's and DPO's, so stacked adapters do not start from the same A.
    let adapter = new_adapter(session, cfg, cfg.run.output.seed.wrapping_add(2))?;
    let stack = AdapterStack {
        frozen,
        trainable: &adapter,
    };
    let train_reference = if stage.precompute_ref_log_probs {
        Some(cached_reference(
            session,
            cfg.run.model.quantize,
            &stack,
            &train.pairs,
            stage.per_device_eval_batch_size,
        )?)
    } else {
        None
    };
    let mut objective = KtoObjective {
        train,
        eval,
        loss,
        eval_batch_size: stage.per_device_eval_batch_size,
        train_reference,
        eval_reference: None,
        gradient_checkpointing: stage.gradient_checkpointing,
    };
    let result = train_and_save(
        session,
        &stack,
        &mut objective,
        &topts,
        data_cfg.group_by_length,
    )?;
    Ok((adapter, result))
}
