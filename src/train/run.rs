//! The stages as the commands run them: `sft`, `dpo`, `kto`, `orpo`, and `train` (every stage
//! the config has, chained on one loaded base), from a [`LoadedConfig`].

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::checkpoint;
use super::dpo::DpoLoss;
use super::fingerprint::RunFingerprint;
use super::orpo::OrpoObjective;
use super::output_dir;
use super::preference::{reference_sums, DpoObjective};
use super::ref_cache::{self, Fingerprint};
use super::sft::SftObjective;
use super::trainer::{self, AdapterStack, Finish, TrainOptions};
use crate::adapter::{combine, load_adapter, save_adapter};
use crate::config::{DataFiles, LoadedConfig, StageConfig};
use crate::data::hub::{self, DataSource};
use crate::data::mixture;
use crate::data::{load_chat_tokenizer, ChatTokenizer, Stage};
use crate::model::{self, Adapter, Model};
use crate::source::Source;

/// How the command was invoked, beyond the config.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Continue the run in the output folder (its checkpoints, or a finished stage's adapter).
    pub resume: bool,
    /// Replace a previous run in the output folder (Trainer's `overwrite_output_dir`).
    pub overwrite: bool,
    pub show_progress: bool,
    pub interrupted: Arc<AtomicBool>,
    /// Called with every step's timings (the `bench` command).
    pub timings: Option<trainer::StepSink>,
}

/// The base model loaded once, with its tokenizer.
pub struct Session {
    pub model: Model,
    pub tokenizer: ChatTokenizer,
    pub source: Source,
    pub model_name: String,
    /// The content hash of the model's files, computed when a run first needs it.
    model_files: std::sync::OnceLock<String>,
}

impl Session {
    pub fn open(cfg: &LoadedConfig) -> Result<Self> {
        let m = &cfg.run.model;
        let device = m.device.open()?;
        let dtype = m.dtype.into();
        let kernels = m.kernels;
        let options = model::LoadOptions::from_config(dtype, m.quantize).with_kernels(kernels);
        let started = std::time::Instant::now();
        let model = model::load_model_with(&m.name_or_path, &options, &device)
            .with_context(|| format!("loading model {}", m.name_or_path))?;
        eprintln!(
            "loaded {} in {:.1} s ({}, {}, kernels {}): RSS {:.0} MiB, peak {:.0} MiB",
            m.name_or_path,
            started.elapsed().as_secs_f64(),
            m.dtype,
            m.quantize,
            kernels.describe(&device, dtype),
            super::metrics::rss_mib(),
            super::metrics::peak_rss_mib(),
        );
        let source = Source::parse(&m.name_or_path)?;
        let tokenizer = load_chat_tokenizer(&tokenizer_path(&source)?)?;
        Ok(Self {
            model,
            tokenizer,
            source,
            model_name: m.name_or_path.clone(),
            model_files: Default::default(),
        })
    }

    /// One content hash of the model's files (weights, config, tokenizer).
    pub fn model_files(&self) -> Result<&str> {
        if let Some(h) = self.model_files.get() {
            return Ok(h);
        }
        let h = super::fingerprint::model_files(&self.source)?;
        Ok(self.model_files.get_or_init(|| h))
    }

    /// The stage's data options, every row held to the model's `max_position_embeddings`.
    pub fn data_config(&self, cfg: &LoadedConfig, stage: Stage) -> Result<crate::data::DataConfig> {
        Ok(cfg
            .data_config(stage)?
            .with_model_max_length(self.model.config.max_position_embeddings))
    }

    /// Identity of the model, for the reference-log-prob cache key: the whole content of its
    /// files, and how it was loaded.
    fn fingerprint(&self) -> Result<Fingerprint> {
        let mut f = Fingerprint::default();
        f.bytes(self.model_name.as_bytes());
        f.bytes(self.model_files()?.as_bytes());
        f.bytes(format!("{:?}", self.model.dtype()).as_bytes());
        // Other kernels or another device round differently, and a resumed or repeated run
        // must see the reference it would have computed.
        f.bytes(format!("{:?}", self.model.kernels()).as_bytes());
        f.bytes(format!("{:?}", self.model.device().location()).as_bytes());
        Ok(f)
    }
}

/// The file or folder the tokenizer is read from.
pub fn tokenizer_path(source: &Source) -> Result<PathBuf> {
    Ok(match source {
        Source::Folder(d) => d.clone(),
        Source::File(f) => f.clone(),
        Source::Hub { .. } => {
            let tok = source.require("tokenizer.json")?;
            // Fetch the config too, so the folder holds the chat template.
            let _ = source.find("tokenizer_config.json")?;
            tok.parent()
                .map(Path::to_path_buf)
                .context("tokenizer path has no folder")?
        }
    })
}

pub fn stage_config(cfg: &LoadedConfig, stage: Stage) -> Result<&StageConfig> {
    let s = match stage {
        Stage::Sft => cfg.run.sft.as_ref(),
        Stage::Dpo => cfg.run.dpo.as_ref(),
        Stage::Kto => cfg.run.kto.as_ref(),
        Stage::Orpo => cfg.run.orpo.as_ref(),
    };
    s.with_context(|| format!("the config has no [{stage}] section"))
}

/// What a stage's loader reads: a file, folder or cached hub split as it is (streamed), or rows
/// already read, mixed or carved.
pub(crate) enum StageRows<'a> {
    Files(&'a Path, Option<&'a str>),
    Rows(crate::data::RawDataset),
}

/// The stage's training set (required) and held-out set (optional), each read by `load`. A
/// `train_file` list is mixed by its fractions, and `eval_split_ratio` / `test_split_size`
/// carve the held-out rows from the training rows, both seeded by `seed`.
pub(super) fn load_splits<T>(
    stage: &StageConfig,
    name: Stage,
    seed: u64,
    load: impl Fn(StageRows) -> Result<T>,
) -> Result<(T, Option<T>)> {
    if stage.train_file.is_none() {
        anyhow::bail!("[{name}] train_file is not set");
    }
    let (parts, eval_src) = data_sources(stage).with_context(|| format!("[{name}]"))?;
    let is_mixture = matches!(stage.train_file, Some(DataFiles::Mixture(_)));
    let held_out = stage.eval_split_ratio.is_some() || stage.test_split_size.is_some();
    if !is_mixture && !held_out {
        let (train_src, _) = &parts[0];
        let train = load(StageRows::Files(
            &train_src.path,
            train_src.split.as_deref(),
        ))?;
        let eval = eval_src
            .map(|src| load(StageRows::Files(&src.path, src.split.as_deref())))
            .transpose()?;
        return Ok((train, eval));
    }
    let mixed = mix_parts(stage, name, &parts, seed)?;
    for line in &mixed.report {
        eprintln!("{line}");
    }
    let eval = match (mixed.held_out, eval_src) {
        (Some(rows), _) => Some(load(StageRows::Rows(rows))?),
        (None, Some(src)) => Some(load(StageRows::Files(&src.path, src.split.as_deref()))?),
        (None, None) => None,
    };
    Ok((load(StageRows::Rows(mixed.train))?, eval))
}

/// A stage's training rows read whole: its mixture's parts sampled and concatenated, and the
/// held-out rows carved from them when asked; with one line per step for the user.
pub struct MixedRows {
    pub train: crate::data::RawDataset,
    pub held_out: Option<crate::data::RawDataset>,
    pub report: Vec<String>,
}

/// Reads the stage's `train_file` (one source or a mixture) and carves `eval_split_ratio` /
/// `test_split_size` held-out rows from it, seeded by `seed`.
pub fn mixed_rows(stage: &StageConfig, name: Stage, seed: u64) -> Result<MixedRows> {
    let (parts, _) = data_sources(stage).with_context(|| format!("[{name}]"))?;
    mix_parts(stage, name, &parts, seed)
}

/// [`mixed_rows`] of sources already resolved.
fn mix_parts(stage: &StageConfig, name: Stage, parts: &TrainParts, seed: u64) -> Result<MixedRows> {
    let mut report = Vec::new();
    let mut read = Vec::with_capacity(parts.len());
    for (i, (src, fraction)) in parts.iter().enumerate() {
        let raw = crate::data::read_dataset(&src.path, src.split.as_deref())
            .with_context(|| format!("[{name}] train_file"))?;
        let n = raw.rows.len();
        let kept = mixture::sample(raw, *fraction, seed, i);
        report.push(format!(
            "mixture part {i}: {} (split {}): {} of {n} rows (fraction {fraction})",
            src.path.display(),
            src.split.as_deref().unwrap_or("-"),
            kept.rows.len()
        ));
        read.push(kept);
    }
    let rows = mixture::concat(read);
    let held = match (stage.eval_split_ratio, stage.test_split_size) {
        (Some(r), _) => Some(mixture::HeldOut::Ratio(r)),
        (None, Some(k)) => Some(mixture::HeldOut::Rows(k)),
        (None, None) => None,
    };
    let Some(held) = held else {
        return Ok(MixedRows {
            train: rows,
            held_out: None,
            report,
        });
    };
    let (train, eval) = mixture::carve(rows, held, seed).with_context(|| format!("[{name}]"))?;
    report.push(format!(
        "held out {} of {} training rows as the eval split",
        eval.rows.len(),
        train.rows.len() + eval.rows.len()
    ));
    Ok(MixedRows {
        train,
        held_out: Some(eval),
        report,
    })
}

/// The sources of a stage's training rows, each with the fraction of its rows kept.
pub type TrainParts = Vec<(DataSource, f64)>;

/// Where the stage's train data (each part of a mixture with its fraction) and eval data are
/// read from, hub names resolved.
pub fn data_sources(stage: &StageConfig) -> Result<(TrainParts, Option<DataSource>)> {
    let revision = stage.revision.as_deref();
    let parts = match stage.train_file.as_ref().context("train_file is not set")? {
        DataFiles::One(spec) => {
            vec![(
                hub::resolve(spec, stage.train_split.as_deref(), revision)?,
                1.0,
            )]
        }
        DataFiles::Mixture(parts) => parts
            .iter()
            .map(|p| {
                Ok((
                    hub::resolve(&p.path, p.split.as_deref(), revision)?,
                    p.fraction,
                ))
            })
            .collect::<Result<_>>()?,
    };
    let eval = match stage.eval_file.as_deref() {
        Some(spec) => {
            // A hub dataset's held-out split is `test` unless named (TRL's eval_strategy default).
            let split = stage
                .eval_split
                .as_deref()
                .or(hub::repo_of(spec).map(|_| "test"));
            Some(hub::resolve(spec, split, revision)?)
        }
        None => None,
    };
    Ok((parts, eval))
}

pub(super) fn new_adapter(session: &Session, cfg: &LoadedConfig, seed: u64) -> Result<Adapter> {
    let device = session.model.device();
    match &cfg.run.lora.init_adapter {
        Some(spec) => load_adapter(spec, &session.model.config, device)
            .with_context(|| format!("[lora] init_adapter {spec}")),
        None => Adapter::init(
            &session.model.config,
            cfg.run.lora.lora.clone(),
            seed,
            device,
        ),
    }
}

pub(super) fn train_options(
    cfg: &LoadedConfig,
    stage: Stage,
    opts: &RunOptions,
    fingerprint: RunFingerprint,
) -> Result<TrainOptions> {
    Ok(TrainOptions {
        stage: stage_config(cfg, stage)?.clone(),
        seed: cfg.run.output.seed,
        run_dir: trainer::stage_dir(Path::new(&cfg.run.output.dir), stage.as_str()),
        resume: opts.resume,
        base_model: cfg.run.model.name_or_path.clone(),
        show_progress: opts.show_progress,
        interrupted: opts.interrupted.clone(),
        timings: opts.timings.clone(),
        fingerprint,
        config_toml: toml::to_string(&cfg.table).unwrap_or_default(),
    })
}

/// The fingerprint of a stage about to be trained on top of `frozen` adapters.
pub(super) fn stage_fingerprint(
    session: &Session,
    cfg: &LoadedConfig,
    stage: Stage,
    frozen: &[&Adapter],
) -> Result<RunFingerprint> {
    let mut reference = Fingerprint::default();
    for a in frozen {
        reference.adapter(a)?;
    }
    let reference = if frozen.is_empty() {
        String::new()
    } else {
        reference.hex()
    };
    RunFingerprint::of_stage(cfg, stage, session.model_files()?, &reference)
}

/// With `--resume`, the adapter of a stage that already finished with these settings.
pub(super) fn finished_stage(
    session: &Session,
    stage: Stage,
    opts: &RunOptions,
    topts: &TrainOptions,
) -> Result<Option<(Adapter, StageResult)>> {
    if !opts.resume {
        return Ok(None);
    }
    let Some(steps) = output_dir::finished(&topts.run_dir, &topts.fingerprint)? else {
        return Ok(None);
    };
    let adapter_dir = topts.run_dir.join("adapter");
    let spec = adapter_dir.display().to_string();
    let adapter = load_adapter(&spec, &session.model.config, session.model.device())
        .with_context(|| format!("{spec}: the finished stage's adapter"))?;
    eprintln!(
        "--resume: {stage} already finished with these settings ({}); using its adapter",
        topts.run_dir.display()
    );
    Ok(Some((
        adapter,
        StageResult {
            adapter_dir,
            finish: Finish::Completed { steps },
        },
    )))
}

/// What a stage leaves behind.
pub struct StageResult {
    pub adapter_dir: PathBuf,
    pub finish: Finish,
}

/// Runs the loop and saves the trained adapter to `<run dir>/adapter`.
pub(super) fn train_and_save(
    session: &Session,
    stack: &AdapterStack,
    objective: &mut dyn trainer::Objective,
    topts: &TrainOptions,
    group_by_length: bool,
) -> Result<StageResult> {
    let finish = trainer::train(&session.model, stack, objective, topts, group_by_length)?;
    let adapter_dir = topts.run_dir.join("adapter");
    save_adapter(stack.trainable, &topts.base_model, &adapter_dir)?;
    if let Finish::Completed { steps } = finish {
        checkpoint::mark_complete(&topts.run_dir, steps, &topts.fingerprint)?;
    }
    Ok(StageResult {
        adapter_dir,
        finish,
    })
}

/// SFT of a fresh (or `init_adapter`) adapter on the bare base.
pub fn run_sft(
    session: &Session,
    cfg: &LoadedConfig,
    opts: &RunOptions,
) -> Result<(Adapter, StageResult)> {
    let _lock = output_dir::claim(&cfg.run.output.dir, opts, &["sft"])?;
    sft_stage(session, cfg, opts)
}

/// Builds a stage's objective for its adapter stack (loading its data), with the stage's
/// `group_by_length`.
pub(super) type MakeObjective<'a> =
    dyn FnMut(&AdapterStack) -> Result<(Box<dyn trainer::Objective>, bool)> + 'a;

/// A stage on a new adapter over `frozen`: its options and fingerprint; the saved result when
/// the stage already finished; else the adapter (seeded per stage, so chained adapters do not
/// start from the same A) trained on the objective `make` builds for the stack, and saved.
/// `make` runs only when there is training to do (it loads the data).
pub(super) fn train_stage(
    session: &Session,
    cfg: &LoadedConfig,
    opts: &RunOptions,
    stage: Stage,
    frozen: Vec<&Adapter>,
    make: &mut MakeObjective,
) -> Result<(Adapter, StageResult)> {
    let fingerprint = stage_fingerprint(session, cfg, stage, &frozen)?;
    let topts = train_options(cfg, stage, opts, fingerprint)?;
    if let Some(done) = finished_stage(session, stage, opts, &topts)? {
        return Ok(done);
    }
    let seed = cfg.run.output.seed.wrapping_add(stage_seed(stage));
    let adapter = new_adapter(session, cfg, seed)?;
    let initial = match (&cfg.run.lora.init_adapter, stage) {
        (Some(_), Stage::Dpo | Stage::Kto) => Some(new_adapter(session, cfg, seed)?),
        _ => None,
    };
    let stack = AdapterStack {
        frozen,
        trainable: &adapter,
        initial: initial.as_ref(),
    };
    let (mut objective, group_by_length) = make(&stack)?;
    let result = train_and_save(session, &stack, objective.as_mut(), &topts, group_by_length)?;
    Ok((adapter, result))
}

/// What each stage adds to the run's seed for its adapter's initialisation (SFT's and DPO's as
/// before the other stages existed, so their runs resume bit for bit).
fn stage_seed(stage: Stage) -> u64 {
    match stage {
        Stage::Sft => 0,
        Stage::Dpo => 1,
        Stage::Kto => 2,
        Stage::Orpo => 3,
    }
}

/// The adapters a preference stage's reference (and its trained adapter) stand on: the frozen
/// earlier stages' adapters, or, when it runs alone, the section's `ref_adapter` loaded into
/// `slot`.
pub(super) fn stage_base<'a>(
    session: &Session,
    section: &str,
    ref_adapter: &Option<String>,
    frozen: &[&'a Adapter],
    slot: &'a mut Option<Adapter>,
) -> Result<Vec<&'a Adapter>> {
    if !frozen.is_empty() {
        return Ok(frozen.to_vec());
    }
    let Some(spec) = ref_adapter else {
        return Ok(vec![]);
    };
    let mut loaded = load_adapter(spec, &session.model.config, session.model.device())
        .with_context(|| format!("[{section}] ref_adapter {spec}"))?;
    loaded.frozen = true;
    Ok(vec![&*slot.insert(loaded)])
}

pub(super) fn sft_stage(
    session: &Session,
    cfg: &LoadedConfig,
    opts: &RunOptions,
) -> Result<(Adapter, StageResult)> {
    let stage = stage_config(cfg, Stage::Sft)?;
    let data_cfg = session.data_config(cfg, Stage::Sft)?;
    train_stage(session, cfg, opts, Stage::Sft, vec![], &mut |_| {
        let (train, eval) = load_splits(stage, Stage::Sft, cfg.run.output.seed, |rows| {
            let tok = &session.tokenizer;
            let ds = match rows {
                StageRows::Files(p, split) => crate::data::load_sft(p, split, tok, &data_cfg)?,
                StageRows::Rows(raw) => crate::data::prepare_sft(raw, tok, &data_cfg)?,
            };
            eprintln!("{}", crate::data::report::counts_line(&ds.stats));
            Ok(ds)
        })?;
        let objective = SftObjective {
            train,
            eval,
            eval_batch_size: stage.per_device_eval_batch_size,
            gradient_checkpointing: stage.gradient_checkpointing,
        };
        Ok((Box::new(objective), data_cfg.group_by_length))
    })
}

/// DPO of a new adapter on top of `frozen` (the SFT adapter in `train`, `ref_adapter` alone).
pub fn run_dpo(
    session: &Session,
    cfg: &LoadedConfig,
    opts: &RunOptions,
    frozen: Option<&Adapter>,
) -> Result<(Adapter, StageResult)> {
    let _lock = output_dir::claim(&cfg.run.output.dir, opts, &["dpo"])?;
    dpo_stage(session, cfg, opts, &frozen.into_iter().collect::<Vec<_>>())
}

/// ORPO of a new adapter on top of `frozen` (none: ORPO needs no SFT stage).
pub fn run_orpo(
    session: &Session,
    cfg: &LoadedConfig,
    opts: &RunOptions,
    frozen: Option<&Adapter>,
) -> Result<(Adapter, StageResult)> {
    let _lock = output_dir::claim(&cfg.run.output.dir, opts, &["orpo"])?;
    orpo_stage(session, cfg, opts, &frozen.into_iter().collect::<Vec<_>>())
}

fn orpo_stage(
    session: &Session,
    cfg: &LoadedConfig,
    opts: &RunOptions,
    frozen: &[&Adapter],
) -> Result<(Adapter, StageResult)> {
    let stage = stage_config(cfg, Stage::Orpo)?;
    let data_cfg = session.data_config(cfg, Stage::Orpo)?;
    train_stage(
        session,
        cfg,
        opts,
        Stage::Orpo,
        frozen.to_vec(),
        &mut |_| {
            let (train, eval) =
                load_pairs(session, stage, Stage::Orpo, cfg.run.output.seed, &data_cfg)?;
            let objective = OrpoObjective {
                train,
                eval,
                beta: stage.beta,
                eval_batch_size: stage.per_device_eval_batch_size,
                gradient_checkpointing: stage.gradient_checkpointing,
            };
            Ok((Box::new(objective), data_cfg.group_by_length))
        },
    )
}

fn dpo_stage(
    session: &Session,
    cfg: &LoadedConfig,
    opts: &RunOptions,
    frozen: &[&Adapter],
) -> Result<(Adapter, StageResult)> {
    let stage = stage_config(cfg, Stage::Dpo)?;
    let data_cfg = session.data_config(cfg, Stage::Dpo)?;
    let loss = DpoLoss::from_stage(stage).context("[dpo]")?;
    let mut slot = None;
    let base = stage_base(session, "dpo", &stage.ref_adapter, frozen, &mut slot)?;
    train_stage(session, cfg, opts, Stage::Dpo, base, &mut |stack| {
        let (train, eval) = load_pairs(session, stage, Stage::Dpo, cfg.run.output.seed, &data_cfg)?;
        // A reference-free objective never computes (or caches) reference log-probs.
        let train_reference = if stage.precompute_ref_log_probs && loss.needs_reference() {
            let batch = stage.per_device_eval_batch_size;
            let quantize = cfg.run.model.quantize;
            Some(cached_reference(
                session,
                quantize,
                stack,
                &train,
                batch,
                loss.ld_alpha,
            )?)
        } else {
            None
        };
        let objective = DpoObjective {
            train,
            eval,
            loss: loss.clone(),
            eval_batch_size: stage.per_device_eval_batch_size,
            train_reference,
            eval_reference: None,
            gradient_checkpointing: stage.gradient_checkpointing,
        };
        Ok((Box::new(objective), data_cfg.group_by_length))
    })
}

/// The training and eval pairs of a pairwise stage's section.
fn load_pairs(
    session: &Session,
    stage: &crate::config::StageConfig,
    which: Stage,
    seed: u64,
    data_cfg: &crate::data::DataConfig,
) -> Result<(crate::data::DpoDataset, Option<crate::data::DpoDataset>)> {
    load_splits(stage, which, seed, |rows| {
        let tok = &session.tokenizer;
        let ds = match rows {
            StageRows::Files(p, split) => crate::data::load_dpo(p, split, tok, data_cfg)?,
            StageRows::Rows(raw) => crate::data::prepare_dpo(raw, tok, data_cfg)?,
        };
        eprintln!("{}", crate::data::report::counts_line(&ds.stats));
        Ok(ds)
    })
}

pub(super) fn cached_reference(
    session: &Session,
    quantize: crate::model::Quantize,
    stack: &AdapterStack,
    data: &crate::data::DpoDataset,
    batch_size: usize,
    tail_weight: Option<f64>,
) -> Result<super::preference::PairSums> {
    let mut key = session.fingerprint()?;
    key.bytes(quantize.to_string().as_bytes());
    // Keys without LD-DPO's weight stay those of earlier runs.
    if let Some(alpha) = tail_weight {
        key.bytes(b"ld_alpha").u64(alpha.to_bits());
    }
    for a in stack.reference() {
        key.adapter(a)?;
    }
    // The tokenized pairs, hashed once: for the key and for the entry's own record of its rows.
    let rows = ref_cache::Rows::of(data);
    key.u64(rows.count as u64).bytes(rows.hash.as_bytes());
    let key = key.hex();
    let dir = ref_cache::cache_dir();
    match ref_cache::load(&dir, &key, &rows) {
        ref_cache::Lookup::Reused(sums) => {
            eprintln!("reference log-probs: reusing the cached ones (key {key})");
            return Ok(sums);
        }
        ref_cache::Lookup::Missing => eprintln!(
            "reference log-probs: computing them for {} pairs (key {key})",
            data.examples.len()
        ),
        ref_cache::Lookup::Rejected(why) => eprintln!(
            "reference log-probs: {}: corrupt ({why}); recomputing",
            ref_cache::entry_path(&dir, &key).display()
        ),
    }
    let sums = reference_sums(
        &session.model,
        &stack.reference(),
        data,
        batch_size,
        tail_weight,
    )?;
    // The cache only saves time: a run that cannot write it still trains.
    match ref_cache::store(&dir, &key, &rows, &sums) {
        Ok(path) => eprintln!("reference log-probs: cached in {}", path.display()),
        Err(e) => eprintln!("reference log-probs: not cached: {e:#}"),
    }
    Ok(sums)
}

/// The stages the config has, in order (`[sft]` → `[dpo]` → `[kto]` → `[orpo]`), each on top
/// of the frozen adapters of those before it (a preference stage's reference is base + those
/// adapters), then one combined adapter when more than one stage ran. Stops after a stage that
/// was interrupted. Each result is named by its folder.
pub fn run_train(
    session: &Session,
    cfg: &LoadedConfig,
    opts: &RunOptions,
) -> Result<Vec<(&'static str, StageResult)>> {
    let mut stages: Vec<&'static str> = Vec::new();
    let sections = [
        ("sft", cfg.run.sft.is_some()),
        ("dpo", cfg.run.dpo.is_some()),
        ("kto", cfg.run.kto.is_some()),
        ("orpo", cfg.run.orpo.is_some()),
    ];
    stages.extend(sections.iter().filter(|(_, on)| *on).map(|(n, _)| *n));
    if stages.is_empty() {
        anyhow::bail!("the config has no stage to train ([sft], [dpo], [kto] or [orpo])");
    }
    let mut claimed = stages.clone();
    claimed.push("combined");
    let _lock = output_dir::claim(&cfg.run.output.dir, opts, &claimed)?;
    save_config(cfg)?;
    let mut trained: Vec<Adapter> = Vec::new();
    let mut results = Vec::new();
    for name in &stages {
        let frozen: Vec<&Adapter> = trained.iter().collect();
        let (mut adapter, result) = match *name {
            "sft" => sft_stage(session, cfg, opts)?,
            "dpo" => dpo_stage(session, cfg, opts, &frozen)?,
            "kto" => super::kto_run::kto_stage(session, cfg, opts, &frozen)?,
            _ => orpo_stage(session, cfg, opts, &frozen)?,
        };
        let interrupted = matches!(result.finish, Finish::Interrupted { .. });
        results.push((*name, result));
        if interrupted {
            return Ok(results);
        }
        adapter.frozen = true;
        trained.push(adapter);
    }
    if trained.len() > 1 {
        let all: Vec<&Adapter> = trained.iter().collect();
        let combined = combine(&all, &session.model.config)?;
        let dir = Path::new(&cfg.run.output.dir).join("combined");
        save_adapter(&combined, &cfg.run.model.name_or_path, &dir)?;
        results.push((
            "combined",
            StageResult {
                adapter_dir: dir,
                finish: Finish::Completed { steps: 0 },
            },
        ));
    }
    Ok(results)
}

/// The run's config as it was applied (overrides included) in `<output dir>/config.toml`, for
/// the report and for running it again.
fn save_config(cfg: &LoadedConfig) -> Result<()> {
    let dir = Path::new(&cfg.run.output.dir);
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let path = dir.join("config.toml");
    let tmp = dir.join("config.toml.tmp");
    let text = toml::to_string(&cfg.table).context("the config cannot be written as TOML")?;
    std::fs::write(&tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("{}: cannot write", path.display()))
}
