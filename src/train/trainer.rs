//! The training loop shared by SFT and DPO: batching order, gradient accumulation, clipping,
//! AdamW, the schedule, logging, held-out evaluation, checkpoints, resume, Ctrl-C and NaN guards.

use anyhow::{bail, Result};
use candle_core::{Tensor, Var};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::checkpoint;
use super::fingerprint::RunFingerprint;
use super::metrics::{peak_rss_mib, MemoryGauge, MetricsLog};
use super::optim::{clip_grad_norm, AdamW, AdamWConfig};
use super::schedule::{lr_factor, warmup_steps, Schedule};
use crate::config::StageConfig;
use crate::data::SamplingStrategy;
use crate::model::{Adapter, LayerTape, Model};

/// The adapters of a run: frozen ones (a stacked SFT adapter) under the trained one.
pub struct AdapterStack<'a> {
    pub frozen: Vec<&'a Adapter>,
    pub trainable: &'a Adapter,
    /// The trained adapter as it started, when it started from a trained one (`init_adapter`):
    /// the reference applies it in the trained adapter's place, as TRL's DPOTrainer and
    /// KTOTrainer copy a PeftModel's pretrained adapter to a frozen "ref" adapter.
    pub initial: Option<&'a Adapter>,
}

impl<'a> AdapterStack<'a> {
    /// What the policy applies: the frozen adapters, then the trained one.
    pub fn policy(&self) -> Vec<&'a Adapter> {
        let mut v = self.frozen.clone();
        v.push(self.trainable);
        v
    }

    /// The reference: the same base with the trained adapter disabled, or set back to where it
    /// started ([`AdapterStack::initial`]).
    pub fn reference(&self) -> Vec<&'a Adapter> {
        let mut v = self.frozen.clone();
        v.extend(self.initial);
        v
    }
}

/// Sums and weights of metrics over a logging window; `means()` gives weighted averages.
#[derive(Debug, Default, Clone)]
pub struct MetricSums(BTreeMap<String, (f64, f64)>);

impl MetricSums {
    pub fn add(&mut self, name: &str, sum: f64, weight: f64) {
        let e = self.0.entry(name.to_string()).or_insert((0.0, 0.0));
        e.0 += sum;
        e.1 += weight;
    }

    pub fn means(&self) -> Vec<(String, f64)> {
        self.0
            .iter()
            .map(|(k, (s, w))| (k.clone(), if *w > 0.0 { s / w } else { 0.0 }))
            .collect()
    }

    pub fn mean(&self, name: &str) -> Option<f64> {
        self.0
            .get(name)
            .filter(|(_, w)| *w > 0.0)
            .map(|(s, w)| s / w)
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// What a training stage computes; the loop does the rest.
pub trait Objective {
    /// `sft` or `dpo`.
    fn stage(&self) -> &'static str;
    fn num_rows(&self) -> usize;
    /// Row lengths, for grouping by length.
    fn lengths(&self) -> Vec<usize>;
    /// The batching order when the config names none. KTO's is `Sequential`: TRL's
    /// `KTOConfig.train_sampling_strategy` default, since each row's KL completion was rotated
    /// within its file-order chunk of the batch size, so a batch's KL sequences are its own
    /// completions paired with other prompts only when batches are those chunks.
    fn default_sampling(&self) -> SamplingStrategy {
        SamplingStrategy::Random
    }
    /// The divisor applied to every micro-batch loss of an optimizer step.
    fn normaliser(&self, micro_batches: &[Vec<usize>]) -> f64;
    /// Loss of the rows (divided by `normaliser`: the losses of a step's micro-batches add up
    /// to the step's loss), ready for backward; adds its metrics, one sample per micro-batch,
    /// and `tokens`, the tokens it ran through the model.
    fn loss<'a>(
        &mut self,
        model: &'a Model,
        adapters: &AdapterStack<'a>,
        rows: &[usize],
        normaliser: f64,
        dropout_seed: u64,
        metrics: &mut MetricSums,
    ) -> Result<MicroLoss<'a>>;
    /// Held-out metrics (`eval_` prefixed), if there is an eval set.
    fn evaluate(
        &mut self,
        model: &Model,
        adapters: &AdapterStack,
    ) -> Result<Option<Vec<(String, f64)>>>;
}

/// A micro-batch's loss, tracked down to the top decoder layer's output, and the tape that
/// carries its gradient through the layers.
pub struct MicroLoss<'a> {
    pub loss: Tensor,
    pub tape: LayerTape<'a>,
}

impl MicroLoss<'_> {
    /// Backpropagates the loss and adds the trainable gradients to `grads`.
    pub fn backward(self, grads: &mut Gradients) -> Result<()> {
        // The loss's own graph reaches no trainable var (the final norm and the head are frozen):
        // the LoRA factors' gradients all come from the layer tape.
        let store = self.loss.backward()?;
        self.tape.backward(&store, &mut |(a, da, b, db)| {
            grads.add(&a, da)?;
            grads.add(&b, db)
        })
    }
}

/// The trainable vars' gradients, summed over what is added to them (the layers of a backward
/// pass, the micro-batches of a step).
pub struct Gradients {
    vars: Vec<Var>,
    sums: Vec<Option<Tensor>>,
}

impl Gradients {
    pub fn new(vars: Vec<Var>) -> Self {
        let sums = vec![None; vars.len()];
        Self { vars, sums }
    }

    /// Adds `grad` to the gradient of `var` (ignored when `var` is not trainable here).
    pub fn add(&mut self, var: &Var, grad: Tensor) -> Result<()> {
        if let Some(i) = self.vars.iter().position(|v| v.id() == var.id()) {
            self.sums[i] = Some(match self.sums[i].take() {
                None => grad,
                Some(acc) => (acc + grad)?,
            });
        }
        Ok(())
    }

    /// The gradient of `var` so far, if any reached it.
    pub fn get(&self, var: &Var) -> Option<&Tensor> {
        let i = self.vars.iter().position(|v| v.id() == var.id())?;
        self.sums[i].as_ref()
    }

    /// One gradient per var, in the order given to [`Gradients::new`]; zeros where none came.
    pub fn into_tensors(self) -> Result<Vec<Tensor>> {
        self.vars
            .iter()
            .zip(self.sums)
            .map(|(v, g)| Ok(g.map_or_else(|| v.as_tensor().zeros_like(), Ok)?))
            .collect()
    }
}

pub struct TrainOptions {
    pub stage: StageConfig,
    pub seed: u64,
    pub run_dir: PathBuf,
    pub resume: bool,
    /// `base_model_name_or_path` written into saved adapters.
    pub base_model: String,
    pub show_progress: bool,
    /// Set by Ctrl-C: the loop saves a checkpoint and stops.
    pub interrupted: Arc<AtomicBool>,
    /// When set, called with every step's timings after the step (the `bench` command).
    pub timings: Option<StepSink>,
    /// What determines this stage's result, recorded in its checkpoints.
    pub fingerprint: RunFingerprint,
    /// The run's config as TOML, for the TensorBoard text summary.
    pub config_toml: String,
}

/// Receives each step's timings, between steps.
pub type StepSink = Arc<dyn Fn(StepTiming) + Send + Sync>;

/// Where one optimizer step's wall time went, in seconds.
#[derive(Debug, Clone, Default)]
pub struct StepTiming {
    pub total: f64,
    /// Batching and upload (the objectives' `time/data`).
    pub data: f64,
    /// Reference log-probs (DPO; `time/reference`).
    pub reference: f64,
    /// Policy forward and loss.
    pub forward: f64,
    /// Backward and gradient accumulation.
    pub backward: f64,
    /// Clipping and the AdamW update.
    pub optimizer: f64,
    /// Tokens of the policy's sequences (`prompt + chosen` and `prompt + rejected` for DPO).
    pub tokens: f64,
    /// Token positions the policy forward actually computed (padding included, a prompt
    /// shared by chosen and rejected once): the matmul work.
    pub token_passes: f64,
    /// Positions the LM head scored.
    pub head_positions: f64,
    /// Attention scores the policy forward computed per head and layer (query × key pairs,
    /// masked ones included).
    pub attention_scores: f64,
}

/// Counts the objectives add for the timings, not for the metrics log.
const STEP_COUNTS: [&str; 4] = [
    "tokens",
    "token_passes",
    "head_positions",
    "attention_scores",
];

/// How a run ended.
#[derive(Debug, PartialEq)]
pub enum Finish {
    Completed { steps: usize },
    Interrupted { step: usize, checkpoint: PathBuf },
}

/// The micro-batches of global micro-step `m`: epochs follow each other, each with its own
/// shuffle seeded by `seed + epoch`, so any step's data is known without replaying the run.
struct BatchOrder {
    epoch_batches: usize,
    lengths: Vec<usize>,
    batch_size: usize,
    sampling: SamplingStrategy,
    seed: u64,
    cache: Option<(usize, Vec<Vec<usize>>)>,
}

impl BatchOrder {
    /// The micro-batches of optimizer step `step`.
    fn step(&mut self, step: usize, micro: usize) -> Vec<Vec<usize>> {
        (0..micro).map(|j| self.rows(step * micro + j)).collect()
    }

    fn rows(&mut self, micro: usize) -> Vec<usize> {
        let epoch = micro / self.epoch_batches;
        if self.cache.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let order = crate::data::batch_order(
                &self.lengths,
                self.batch_size,
                self.sampling != SamplingStrategy::Sequential,
                self.sampling == SamplingStrategy::GroupByLength,
                self.seed.wrapping_add(epoch as u64),
            );
            self.cache = Some((epoch, order));
        }
        let (_, order) = self.cache.as_ref().expect("filled above");
        order[micro % self.epoch_batches].clone()
    }
}

/// How many steps a stage runs and how its learning rate moves.
struct Plan {
    epoch_batches: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    micro: usize,
    steps_per_epoch: usize,
    total_steps: usize,
    warmup: usize,
    schedule: Schedule,
}

impl Plan {
    fn of(s: &StageConfig, rows: usize) -> Result<Self> {
        let epoch_batches = rows.div_ceil(s.per_device_train_batch_size);
        let micro = s.gradient_accumulation_steps;
        let steps_per_epoch = (epoch_batches / micro).max(1);
        let total_steps = if s.max_steps > 0 {
            s.max_steps as usize
        } else {
            (s.num_train_epochs * steps_per_epoch as f64).ceil() as usize
        };
        Ok(Self {
            epoch_batches,
            micro,
            steps_per_epoch,
            total_steps,
            warmup: warmup_steps(s.warmup_steps, s.warmup_ratio, total_steps),
            schedule: s.lr_scheduler_type,
        })
    }
}

/// What one optimizer step did.
struct StepOutcome {
    loss: f64,
    grad_norm: f64,
    lr: f64,
    metrics: MetricSums,
}

/// Metrics summed over a logging window, the tokens it ran, and those of the whole run.
struct Window {
    sums: MetricSums,
    start: Instant,
    tokens: f64,
    /// Training tokens since step 0, across resumes (TRL's `num_tokens`).
    tokens_seen: f64,
}

impl Window {
    fn new(tokens_seen: f64) -> Self {
        Self {
            sums: MetricSums::default(),
            start: Instant::now(),
            tokens: 0.0,
            tokens_seen,
        }
    }

    fn add(&mut self, step: &StepOutcome, micro: usize) {
        let tokens = step.metrics.mean("tokens").unwrap_or(0.0) * micro as f64;
        self.tokens += tokens;
        self.tokens_seen += tokens;
        for (k, v) in step.metrics.means() {
            if !STEP_COUNTS.contains(&k.as_str()) && !k.starts_with("time/") {
                self.sums.add(&k, v, 1.0);
            }
        }
        self.sums.add("loss", step.loss, 1.0);
        self.sums.add("grad_norm", step.grad_norm, 1.0);
        self.sums.add("learning_rate", step.lr, 1.0);
    }

    fn tokens_per_sec(&self) -> f64 {
        self.tokens / self.start.elapsed().as_secs_f64()
    }

    /// Writes the window's means as the record of step `done`, and starts a new window.
    fn flush(&mut self, log: &MetricsLog, done: usize, epoch: f64) -> Result<()> {
        let mut values = self.sums.means();
        values.push(("epoch".into(), epoch));
        values.push(("tokens_per_sec".into(), self.tokens_per_sec()));
        values.push(("num_tokens".into(), self.tokens_seen));
        values.push(("peak_rss_mib".into(), peak_rss_mib()));
        log.write(done, &values)?;
        *self = Self::new(self.tokens_seen);
        Ok(())
    }
}

/// Runs the loop; the trained adapter's vars are updated in place.
pub fn train(
    model: &Model,
    adapters: &AdapterStack,
    objective: &mut dyn Objective,
    opts: &TrainOptions,
    group_by_length: bool,
) -> Result<Finish> {
    let s = &opts.stage;
    let sampling = SamplingStrategy::resolve(
        s.train_sampling_strategy,
        group_by_length,
        objective.default_sampling(),
    )?;
    let rows = objective.num_rows();
    if rows == 0 {
        bail!("the {} training set has no rows", objective.stage());
    }
    let plan = Plan::of(s, rows)?;
    let vars = adapters.trainable.vars();
    let mut opt = new_optimizer(s, &vars)?;
    let mut log = MetricsLog::open(&opts.run_dir)?;
    if s.report_to.tensorboard {
        log = log.with_tensorboard();
    }
    let (start, tokens_seen) =
        resume_point(opts, adapters.trainable, &mut opt, &log, plan.total_steps)?;
    if start == 0 {
        log.config_text(0, &opts.config_toml)?;
    }
    let mut order = BatchOrder {
        epoch_batches: plan.epoch_batches,
        lengths: objective.lengths(),
        batch_size: s.per_device_train_batch_size,
        sampling,
        seed: opts.seed,
        cache: None,
    };
    if start == 0 {
        // Held-out metrics before any update: the baseline the run is judged against.
        evaluate(model, adapters, objective, &log, 0, 0.0, None)?;
    }
    let bar = progress_bar(
        plan.total_steps,
        start,
        objective.stage(),
        opts.show_progress,
    );
    let mut window = Window::new(tokens_seen);
    let mut memory = MemoryGauge::new(model.device().is_cuda());
    for step in start..plan.total_steps {
        let micro_batches = order.step(step, plan.micro);
        let optimizer = (vars.as_slice(), &mut opt);
        let outcome = optimizer_step(
            model,
            adapters,
            objective,
            opts,
            &plan,
            &micro_batches,
            optimizer,
            step,
        )?;
        window.add(&outcome, plan.micro);
        if opts.show_progress {
            update_bar(&bar, &window.sums, window.tokens_per_sec(), &memory.text());
        }
        bar.set_position(step as u64 + 1);
        let after = AfterStep {
            done: step + 1,
            plan: &plan,
            log: &log,
            bar: &bar,
        };
        if let Some(finish) = after.run(model, adapters, objective, opts, &opt, &mut window)? {
            return Ok(finish);
        }
    }
    bar.finish();
    Ok(Finish::Completed {
        steps: plan.total_steps,
    })
}

fn new_optimizer(s: &StageConfig, vars: &[Var]) -> Result<AdamW> {
    AdamW::new(
        vars.to_vec(),
        AdamWConfig {
            beta1: s.adam_beta1,
            beta2: s.adam_beta2,
            eps: s.adam_epsilon,
            weight_decay: s.weight_decay,
        },
    )
}

/// Held-out metrics at step `done`, logged and printed (above the bar when there is one), with
/// the training tokens seen so far as TRL logs them beside (`eval_num_tokens`).
fn evaluate(
    model: &Model,
    adapters: &AdapterStack,
    objective: &mut dyn Objective,
    log: &MetricsLog,
    done: usize,
    tokens_seen: f64,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<()> {
    if let Some(mut values) = objective.evaluate(model, adapters)? {
        values.push(("eval_num_tokens".into(), tokens_seen));
        let line = format!("{} step {done}: {}", objective.stage(), brief(&values));
        match bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
        log.write(done, &values)?;
    }
    Ok(())
}

/// What follows an optimizer step: the metrics window flushed, the evaluation and the
/// checkpoint when due, and the stop when a signal asked for one.
struct AfterStep<'a> {
    done: usize,
    plan: &'a Plan,
    log: &'a MetricsLog,
    bar: &'a indicatif::ProgressBar,
}

impl AfterStep<'_> {
    fn run(
        &self,
        model: &Model,
        adapters: &AdapterStack,
        objective: &mut dyn Objective,
        opts: &TrainOptions,
        opt: &AdamW,
        window: &mut Window,
    ) -> Result<Option<Finish>> {
        let (s, done) = (&opts.stage, self.done);
        let last = done == self.plan.total_steps;
        if done % s.logging_steps.max(1) == 0 || last {
            let epoch = done as f64 / self.plan.steps_per_epoch as f64;
            window.flush(self.log, done, epoch)?;
        }
        if (s.eval_steps > 0 && done % s.eval_steps == 0) || last {
            let seen = window.tokens_seen;
            evaluate(
                model,
                adapters,
                objective,
                self.log,
                done,
                seen,
                Some(self.bar),
            )?;
        }
        let interrupted = opts.interrupted.load(Ordering::SeqCst);
        let due = s.save_steps > 0 && done % s.save_steps == 0;
        let stop_here = interrupted && !last;
        if !(due || stop_here) {
            return Ok(None);
        }
        let saving = Instant::now();
        let dir = save_checkpoint(opts, adapters.trainable, opt, done, window.tokens_seen)?;
        if !interrupted {
            return Ok(None);
        }
        self.bar.abandon();
        eprintln!(
            "checkpoint {} saved in {:.1} s",
            dir.display(),
            saving.elapsed().as_secs_f64()
        );
        Ok(Some(Finish::Interrupted {
            step: done,
            checkpoint: dir,
        }))
    }
}

/// The step to start from: a checkpoint's with `--resume` (checked against this run's
/// fingerprint; the metrics cut back to it), else 0 with the metrics started anew.
fn resume_point(
    opts: &TrainOptions,
    trained: &Adapter,
    opt: &mut AdamW,
    log: &MetricsLog,
    total_steps: usize,
) -> Result<(usize, f64)> {
    let latest = if opts.resume {
        checkpoint::latest(&opts.run_dir)?
    } else {
        None
    };
    let Some(ckpt) = latest else {
        if opts.resume {
            eprintln!(
                "--resume: no checkpoint in {}, starting afresh",
                opts.run_dir.display()
            );
        }
        // Nothing to continue: the metrics of an earlier attempt would repeat steps.
        log.start_anew()?;
        return Ok((0, 0.0));
    };
    check_recorded(&ckpt, &opts.fingerprint)?;
    let start = checkpoint::restore(&ckpt, trained, opt)?;
    let tokens_seen = checkpoint::tokens_seen(&ckpt)?;
    log.truncate_after(start)?;
    eprintln!(
        "resuming from {} (step {start} of {total_steps})",
        ckpt.display()
    );
    Ok((start, tokens_seen))
}

/// One optimizer step over `micro_batches`: losses and gradients accumulated, clipped, applied.
#[allow(clippy::too_many_arguments)]
fn optimizer_step(
    model: &Model,
    adapters: &AdapterStack,
    objective: &mut dyn Objective,
    opts: &TrainOptions,
    plan: &Plan,
    micro_batches: &[Vec<usize>],
    (vars, opt): (&[Var], &mut AdamW),
    step: usize,
) -> Result<StepOutcome> {
    let s = &opts.stage;
    let normaliser = objective.normaliser(micro_batches);
    let mut grads = Gradients::new(vars.to_vec());
    let mut metrics = MetricSums::default();
    let mut loss = 0.0;
    let step_start = Instant::now();
    let (mut t_loss, mut t_backward) = (0.0, 0.0);
    for (j, rows) in micro_batches.iter().enumerate() {
        let seed = opts.seed ^ ((step as u64) << 20) ^ j as u64;
        let t0 = Instant::now();
        let micro = objective.loss(model, adapters, rows, normaliser, seed, &mut metrics)?;
        let value = crate::ops::host::scalar(&micro.loss)?;
        t_loss += t0.elapsed().as_secs_f64();
        if !value.is_finite() {
            bail!(
                "the {} loss is {value} at step {} (micro-batch {j}); stopping. \
                 The last good checkpoint, if any, is in {} — lower the learning rate and --resume",
                objective.stage(),
                step + 1,
                opts.run_dir.display()
            );
        }
        loss += value as f64;
        let t0 = Instant::now();
        micro.backward(&mut grads)?;
        if opts.timings.is_some() {
            // A GPU runs ahead of the host: wait, so the phase is timed, not its launch.
            model.device().synchronize()?;
        }
        t_backward += t0.elapsed().as_secs_f64();
    }
    let t_optimizer = Instant::now();
    let mut grads = grads.into_tensors()?;
    let grad_norm = clip_grad_norm(&mut grads, s.max_grad_norm)?;
    if !grad_norm.is_finite() {
        bail!(
            "the gradient norm is {grad_norm} at step {}; stopping",
            step + 1
        );
    }
    let lr = s.learning_rate * lr_factor(plan.schedule, step, plan.warmup, plan.total_steps);
    opt.step(&grads, lr)?;
    if let Some(sink) = &opts.timings {
        model.device().synchronize()?;
        let sum = |k: &str| metrics.mean(k).unwrap_or(0.0) * plan.micro as f64;
        let (data, reference) = (sum("time/data"), sum("time/reference"));
        sink(StepTiming {
            total: step_start.elapsed().as_secs_f64(),
            data,
            reference,
            forward: t_loss - data - reference,
            backward: t_backward,
            optimizer: t_optimizer.elapsed().as_secs_f64(),
            tokens: sum("tokens"),
            token_passes: sum("token_passes"),
            head_positions: sum("head_positions"),
            attention_scores: sum("attention_scores"),
        });
    }
    Ok(StepOutcome {
        loss,
        grad_norm,
        lr,
        metrics,
    })
}

/// Saves `checkpoint-<done>` and drops the oldest beyond `save_total_limit`.
fn save_checkpoint(
    opts: &TrainOptions,
    trained: &Adapter,
    opt: &AdamW,
    done: usize,
    tokens_seen: f64,
) -> Result<PathBuf> {
    let dir = checkpoint::save(
        &opts.run_dir,
        done,
        tokens_seen,
        trained,
        opt,
        &opts.base_model,
        &opts.fingerprint,
    )?;
    if let Some(keep) = opts.stage.save_total_limit {
        checkpoint::prune(&opts.run_dir, keep.max(1))?;
    }
    Ok(dir)
}

/// Refuses a checkpoint written by a run with other settings, naming what differs.
fn check_recorded(ckpt: &Path, now: &RunFingerprint) -> Result<()> {
    let Some(recorded) = checkpoint::recorded_fingerprint(ckpt)? else {
        bail!(
            "{}: this checkpoint records no fingerprint of its run (written by an older \
             lora-dpo), so it cannot be checked against this config; pass --overwrite to start \
             again",
            ckpt.display()
        );
    };
    let diff = now.differences(&recorded);
    if !diff.is_empty() {
        bail!(
            "{}: written by a run with other settings, so --resume would mix two runs:\n  {}\n\
             restore those settings to resume, or pass --overwrite to start again",
            ckpt.display(),
            diff.join("\n  ")
        );
    }
    Ok(())
}

fn brief(values: &[(String, f64)]) -> String {
    values
        .iter()
        .map(|(k, v)| format!("{k}={v:.4}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn progress_bar(total: usize, start: usize, stage: &str, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} steps  {msg}  eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(stage.to_string());
    bar.set_position(start as u64);
    bar
}

fn update_bar(
    bar: &indicatif::ProgressBar,
    window: &MetricSums,
    tokens_per_sec: f64,
    memory: &str,
) {
    let mut msg = format!("loss {:.4}", window.mean("loss").unwrap_or(f64::NAN));
    if let Some(acc) = window.mean("rewards/accuracies") {
        msg.push_str(&format!("  acc {acc:.2}"));
    }
    // KTO has no pairs to be accurate on: its margin and KL estimate instead.
    if let Some(kl) = window.mean("kl") {
        if let Some(m) = window.mean("rewards/margins") {
            msg.push_str(&format!("  margin {m:.3}"));
        }
        msg.push_str(&format!("  kl {kl:.3}"));
    }
    // ORPO's and the NLL-weighted objectives' two parts, under TRL's names.
    for (key, short) in [("nll_loss", "nll"), ("log_odds_ratio", "log_odds_ratio")] {
        if let Some(v) = window.mean(key) {
            msg.push_str(&format!("  {short} {v:.4}"));
        }
    }
    msg.push_str(&format!("  {tokens_per_sec:.0} tok/s  {memory}"));
    bar.set_message(msg);
}

/// The run folder of a stage.
pub fn stage_dir(output_dir: &Path, stage: &str) -> PathBuf {
    output_dir.join(stage)
}

#[cfg(test)]
mod tests {
    use super::BatchOrder;
    use crate::data::SamplingStrategy;

    fn order(sampling: SamplingStrategy) -> BatchOrder {
        BatchOrder {
            epoch_batches: 3,
            lengths: vec![5, 1, 9, 2, 7, 3, 8, 4, 6, 10, 11, 12],
            batch_size: 4,
            sampling,
            seed: 42,
            cache: None,
        }
    }

    /// KTO's order (TRL's `train_sampling_strategy = "sequential"`): step k is file rows
    /// `[k·b, (k+1)·b)`, every epoch the same, `group_by_length` and the seed ignored.
    #[test]
    fn sequential_order_is_file_order_every_epoch() {
        let mut o = order(SamplingStrategy::Sequential);
        let chunks: Vec<Vec<usize>> = (0..12)
            .collect::<Vec<_>>()
            .chunks(4)
            .map(<[usize]>::to_vec)
            .collect();
        for epoch in 0..2 {
            for (k, want) in chunks.iter().enumerate() {
                assert_eq!(o.step(epoch * 3 + k, 1), vec![want.clone()]);
            }
        }
        // The shuffled order (SFT, DPO) is not file order with this seed.
        let mut s = order(SamplingStrategy::Random);
        assert_ne!(
            (0..3).map(|k| s.step(k, 1)).collect::<Vec<_>>(),
            (0..3).map(|k| vec![chunks[k].clone()]).collect::<Vec<_>>()
        );
    }

    /// `group_by_length`: one mega-batch here, so batches run longest to shortest.
    #[test]
    fn group_by_length_batches_rows_of_similar_length() {
        let mut o = order(SamplingStrategy::GroupByLength);
        let lengths = o.lengths.clone();
        let batch_lengths: Vec<Vec<usize>> = (0..3)
            .map(|k| o.step(k, 1)[0].iter().map(|&i| lengths[i]).collect())
            .collect();
        assert_eq!(
            batch_lengths,
            vec![vec![12, 11, 10, 9], vec![8, 7, 6, 5], vec![4, 3, 2, 1]]
        );
    }
}
