//! The `[kto]` stage as the commands run it: a new adapter on top of `frozen` (the SFT adapter
//! in `train`, `[kto] ref_adapter` alone), the reference being the base with those frozen
//! adapters only, precomputed into DPO's reference cache when `precompute_ref_log_probs` is set.

use anyhow::{Context, Result};

use super::kto::{KtoLoss, KtoObjective};
use super::run::{
    cached_reference, load_splits, stage_base, stage_config, train_stage, RunOptions, Session,
    StageResult, StageRows,
};
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
    let loss = KtoLoss::from_stage(stage).context("[kto]")?;
    let mut slot = None;
    let base = stage_base(session, "kto", &stage.ref_adapter, frozen, &mut slot)?;
    train_stage(session, cfg, opts, Stage::Kto, base, &mut |stack| {
        let (train, eval) = load_splits(stage, Stage::Kto, cfg.run.output.seed, |rows| {
            let tok = &session.tokenizer;
            let ds = match rows {
                StageRows::Files(p, split) => {
                    crate::data::load_kto(p, split, tok, &data_cfg, chunk)?
                }
                StageRows::Rows(raw) => crate::data::prepare_kto(raw, tok, &data_cfg, chunk)?,
            };
            eprintln!(
                "{} ({} desirable, {} undesirable)",
                crate::data::report::counts_line(&ds.pairs.stats),
                ds.desirable(),
                ds.len() - ds.desirable()
            );
            Ok(ds)
        })?;
        let train_reference = if stage.precompute_ref_log_probs {
            let batch = stage.per_device_eval_batch_size;
            let quantize = cfg.run.model.quantize;
            Some(cached_reference(
                session,
                quantize,
                stack,
                &train.pairs,
                batch,
                None,
            )?)
        } else {
            None
        };
        let objective = KtoObjective {
            train,
            eval,
            loss,
            eval_batch_size: stage.per_device_eval_batch_size,
            train_reference,
            eval_reference: None,
            gradient_checkpointing: stage.gradient_checkpointing,
        };
        Ok((Box::new(objective), data_cfg.group_by_length))
    })
}
