//! The run configuration: one TOML file with `[model]`, `[lora]`, `[sft]`, `[dpo]`, `[kto]`, `[output]`,
//! keys named as TRL and PEFT name them, `--set section.key=value` overrides, and errors that
//! name the key (with the nearest valid name for a typo).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::model::{Dtype, LoraConfig, Quantize};
use crate::ops::Kernels;
use crate::train::dpo::{FDivergence, LossTypes};
use crate::train::schedule::Schedule;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunConfig {
    pub model: ModelSection,
    #[serde(default)]
    pub lora: LoraSection,
    #[serde(default)]
    pub sft: Option<StageConfig>,
    #[serde(default)]
    pub dpo: Option<StageConfig>,
    /// KTO (unpaired preference); `train` runs it after `[sft]` like `[dpo]`.
    #[serde(default)]
    pub kto: Option<StageConfig>,
    /// ORPO: reference-free, no SFT stage needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orpo: Option<StageConfig>,
    #[serde(default)]
    pub output: OutputSection,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelSection {
    /// A Hugging Face folder, a hub repo id in the local cache, or a GGUF file.
    pub name_or_path: String,
    /// Dtype of the frozen weights: f32, bf16 or f16.
    #[serde(default)]
    pub dtype: Dtype,
    /// Quantization of the frozen linear weights: none, q8_0, q4_0, q4k, ...; `dense`
    /// dequantizes a GGUF's quantized projections.
    #[serde(default)]
    pub quantize: Quantize,
    /// cpu, cuda, or auto (cuda when built with it and a GPU is present).
    #[serde(default)]
    pub device: DeviceSpec,
    /// auto (the fastest ops for the device and dtype) or generic (candle tensor ops everywhere,
    /// as on a GPU).
    #[serde(default)]
    pub kernels: Kernels,
}

/// `[model] device` (also `--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    Cpu,
    Cuda,
    /// CUDA when this build has it and a GPU is present, else the CPU.
    #[default]
    Auto,
}

impl crate::choice::Choice for DeviceSpec {
    const CHOICES: &'static [(Self, &'static [&'static str])] = &[
        (DeviceSpec::Cpu, &["cpu"]),
        (DeviceSpec::Cuda, &["cuda"]),
        (DeviceSpec::Auto, &["auto"]),
    ];
}
crate::choice::choice_impls!(DeviceSpec);

impl DeviceSpec {
    pub fn open(self) -> Result<candle_core::Device> {
        use candle_core::Device;
        Ok(match self {
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Cuda => Device::new_cuda(0).context("[model] device = \"cuda\"")?,
            DeviceSpec::Auto => Device::cuda_if_available(0)?,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct LoraSection {
    #[serde(flatten)]
    pub lora: LoraConfig,
    /// A PEFT adapter to start training from instead of a fresh one.
    #[serde(default)]
    pub init_adapter: Option<String>,
}

/// Training options of one stage (`[sft]` or `[dpo]`); the data options of the same section
/// are read by [`crate::data::DataConfig`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StageConfig {
    /// A file, a folder, or a hub dataset `hf://datasets/OWNER/NAME`; or a mixture, a list of
    /// `{path, fraction, split}` (the alignment-handbook's `dataset_mixer`).
    pub train_file: Option<DataFiles>,
    pub eval_file: Option<String>,
    /// The split of `train_file` to read (a folder's or hub dataset's; default `train`).
    pub train_split: Option<String>,
    /// The split of `eval_file` (default `test` for a hub dataset).
    pub eval_split: Option<String>,
    /// The hub revision (branch, tag or commit) of hub datasets; default `main`.
    pub revision: Option<String>,
    /// Without `eval_file`: hold out this share of the training rows (seeded by `[output] seed`).
    pub eval_split_ratio: Option<f64>,
    /// Without `eval_file`: hold out this many training rows.
    pub test_split_size: Option<usize>,
    pub learning_rate: f64,
    pub num_train_epochs: f64,
    /// Positive: stop after this many optimizer steps (overrides `num_train_epochs`).
    pub max_steps: i64,
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub lr_scheduler_type: Schedule,
    pub warmup_ratio: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub max_grad_norm: f64,
    pub logging_steps: usize,
    /// Evaluate on `eval_file` every this many steps (and at the end); 0 = only at the end.
    pub eval_steps: usize,
    /// Checkpoint every this many steps; 0 = never.
    pub save_steps: usize,
    /// Keep only the newest this many checkpoints (Hugging Face's key); unset = keep all.
    pub save_total_limit: Option<usize>,
    pub gradient_checkpointing: bool,
    /// DPO temperature.
    pub beta: f64,
    /// A TRL loss type or a list of them (see [`crate::train::dpo`]).
    pub loss_type: LossTypes,
    /// One weight per `loss_type` (TRL's default: all 1.0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_weights: Option<Vec<f64>>,
    pub label_smoothing: f64,
    /// Weight of the NLL of the chosen completions added to the DPO loss (RPO): the same as
    /// appending "sft" to `loss_type` with this weight.
    pub rpo_alpha: Option<f64>,
    /// discopop's temperature (TRL's default 0.05).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discopop_tau: Option<f64>,
    /// simpo's target margin (CPOTrainer's default 0.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simpo_gamma: Option<f64>,
    /// cpo's weight of the chosen NLL (CPOTrainer's default 1.0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpo_alpha: Option<f64>,
    /// AlphaPO's reward shape for simpo and cpo (CPOConfig's `alpha`; 0: log-probs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// The f-divergence whose f′ turns log ratios into scores (TRL's default reverse_kl, DPO).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f_divergence_type: Option<FDivergence>,
    /// α of `f_divergence_type = "alpha_divergence"` (TRL's default 0.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f_alpha_divergence_coef: Option<f64>,
    /// LD-DPO: completion tokens past the shorter completion of a pair count this much.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ld_alpha: Option<f64>,
    /// WPO: weigh each pair's loss by its completions' probability under the policy.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub use_weighting: bool,
    /// The order rows are batched in (transformers' `train_sampling_strategy`); unset: the
    /// stage's default, `random` (KTO: `sequential`), or `group_by_length = true`'s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_sampling_strategy: Option<crate::data::SamplingStrategy>,
    pub precompute_ref_log_probs: bool,
    /// DPO alone: a frozen adapter under the trained one; the reference is base + this adapter.
    pub ref_adapter: Option<String>,
    /// KTO: weight of the losses of desirable (`label = true`) rows.
    pub desirable_weight: f64,
    /// KTO: weight of the losses of undesirable rows.
    pub undesirable_weight: f64,
    /// Where metrics go besides metrics.jsonl (TRL's key): `"tensorboard"`, `"all"` or `"none"`.
    pub report_to: ReportTo,
}

/// `report_to`: a name or a list of names, as in TRL. Only TensorBoard is written; the
/// integrations that need a service (wandb, mlflow, …) are refused by name.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ReportTo {
    pub tensorboard: bool,
}

impl<'de> Deserialize<'de> for ReportTo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let names = match OneOrMany::deserialize(d).map_err(|_| {
            serde::de::Error::custom("`report_to`: expected a name or a list of names")
        })? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        let mut out = Self::default();
        for name in &names {
            match name.as_str() {
                "tensorboard" | "all" => out.tensorboard = true,
                "none" => {}
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "`report_to`: `{other}` is not supported; lora-dpo writes \
                         metrics.jsonl always and \"tensorboard\" on request"
                    )))
                }
            }
        }
        Ok(out)
    }
}

/// `train_file`: one source, or several mixed by fractions of their rows.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum DataFiles {
    One(String),
    Mixture(Vec<MixturePart>),
}

// By hand rather than untagged, so that a bad part's error names its field.
impl<'de> Deserialize<'de> for DataFiles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Files;
        impl<'de> serde::de::Visitor<'de> for Files {
            type Value = DataFiles;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a path, or a list of {path, fraction, split} tables")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<DataFiles, E> {
                Ok(DataFiles::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<DataFiles, A::Error> {
                let mut parts = Vec::new();
                while let Some(p) = seq.next_element::<MixturePart>()? {
                    parts.push(p);
                }
                Ok(DataFiles::Mixture(parts))
            }
        }
        d.deserialize_any(Files)
    }
}

/// One dataset of a mixture: its path (or hub name), the share of its rows kept, its split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MixturePart {
    pub path: String,
    #[serde(default = "whole")]
    pub fraction: f64,
    pub split: Option<String>,
}

fn whole() -> f64 {
    1.0
}

impl DataFiles {
    /// The single source, when `train_file` is not a mixture.
    pub fn single(&self) -> Option<&str> {
        match self {
            DataFiles::One(s) => Some(s),
            DataFiles::Mixture(_) => None,
        }
    }
}

impl Default for StageConfig {
    fn default() -> Self {
        Self {
            train_file: None,
            eval_file: None,
            train_split: None,
            eval_split: None,
            revision: None,
            eval_split_ratio: None,
            test_split_size: None,
            learning_rate: 2e-5,
            num_train_epochs: 1.0,
            max_steps: -1,
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 8,
            gradient_accumulation_steps: 1,
            lr_scheduler_type: Schedule::Linear,
            warmup_ratio: 0.0,
            warmup_steps: 0,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            logging_steps: 10,
            eval_steps: 0,
            save_steps: 500,
            save_total_limit: None,
            gradient_checkpointing: false,
            beta: 0.1,
            loss_type: LossTypes::default(),
            loss_weights: None,
            label_smoothing: 0.0,
            rpo_alpha: None,
            discopop_tau: None,
            simpo_gamma: None,
            cpo_alpha: None,
            alpha: None,
            f_divergence_type: None,
            f_alpha_divergence_coef: None,
            ld_alpha: None,
            use_weighting: false,
            train_sampling_strategy: None,
            precompute_ref_log_probs: false,
            ref_adapter: None,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
            report_to: ReportTo::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct OutputSection {
    /// Run folder: adapters, checkpoints and metrics.jsonl land here.
    pub dir: String,
    pub seed: u64,
}

impl Default for OutputSection {
    fn default() -> Self {
        Self {
            dir: "adapters/run".into(),
            seed: 42,
        }
    }
}

const MODEL_KEYS: &[&str] = &["name_or_path", "dtype", "quantize", "device", "kernels"];
const LORA_KEYS: &[&str] = &[
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "use_rslora",
    "init_adapter",
];
const OUTPUT_KEYS: &[&str] = &["dir", "seed"];
const STAGE_KEYS: &[&str] = &[
    "train_file",
    "eval_file",
    "train_split",
    "eval_split",
    "revision",
    "eval_split_ratio",
    "test_split_size",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "train_sampling_strategy",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "logging_steps",
    "eval_steps",
    "save_steps",
    "save_total_limit",
    "gradient_checkpointing",
    "beta",
    "loss_type",
    "loss_weights",
    "label_smoothing",
    "rpo_alpha",
    "discopop_tau",
    "simpo_gamma",
    "cpo_alpha",
    "alpha",
    "f_divergence_type",
    "f_alpha_divergence_coef",
    "ld_alpha",
    "use_weighting",
    "precompute_ref_log_probs",
    "ref_adapter",
    "desirable_weight",
    "undesirable_weight",
    "report_to",
    // read by the data pipeline
    "max_length",
    "max_prompt_length",
    "max_completion_length",
    "truncation_mode",
    "dataset_text_field",
    "columns",
    "skip_bad_rows",
    "completion_only_loss",
    "assistant_only_loss",
    "group_by_length",
];
const SECTIONS: &[&str] = &["model", "lora", "sft", "dpo", "kto", "orpo", "output"];

/// A loaded configuration: the typed settings, the raw table (for the data options) and where
/// it came from (relative paths in it are relative to the current directory, as in TRL).
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub run: RunConfig,
    pub table: toml::Table,
    pub path: Option<PathBuf>,
}

impl LoadedConfig {
    /// Reads `path`, applies `overrides` (`section.key=value`), checks every key and value.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read config file", path.display()))?;
        let mut cfg = Self::build(&text, overrides, Some(path))?;
        cfg.path = Some(path.to_path_buf());
        Ok(cfg)
    }

    pub fn from_str(text: &str, overrides: &[String]) -> Result<Self> {
        Self::build(text, overrides, None)
    }

    /// Errors in the text name `file`; errors of an override name the `--set` argument instead.
    fn build(text: &str, overrides: &[String], file: Option<&Path>) -> Result<Self> {
        let in_file = |e: anyhow::Error| match file {
            Some(p) => e.context(p.display().to_string()),
            None => e,
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| in_file(anyhow::anyhow!("{e}")))?;
        check_keys(&table).map_err(in_file)?;
        check_finite(&table).map_err(in_file)?;
        // Each override is checked alone, so its error names it rather than a line of the file.
        for o in overrides {
            apply_override(&mut table, o).with_context(|| format!("--set {o}"))?;
        }
        if !table.contains_key("model") {
            return Err(in_file(anyhow::anyhow!(
                "missing section [model] (with name_or_path)"
            )));
        }
        let run = typed(text, &table).map_err(in_file)?;
        if let Err(e) = check_run(&table, &run) {
            return Err(match blamed_override(text, overrides) {
                Some(o) => e.context(format!("--set {o}")),
                None => in_file(e),
            });
        }
        Ok(Self {
            run,
            table,
            path: None,
        })
    }
}

impl LoadedConfig {
    /// The data options of a stage's section (`[sft]` or `[dpo]`).
    pub fn data_config(&self, stage: crate::data::Stage) -> Result<crate::data::DataConfig> {
        let section = self
            .table
            .get(stage.as_str())
            .cloned()
            .unwrap_or(toml::Value::Table(Default::default()));
        let cfg: crate::data::DataConfig = section
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("[{stage}] {}", e.message().trim()))?;
        cfg.validate().with_context(|| format!("[{stage}]"))?;
        Ok(cfg)
    }
}

impl RunConfig {
    /// The training sections present, by name.
    pub fn stages(&self) -> impl Iterator<Item = (&'static str, &StageConfig)> {
        [
            ("sft", &self.sft),
            ("dpo", &self.dpo),
            ("kto", &self.kto),
            ("orpo", &self.orpo),
        ]
        .into_iter()
        .filter_map(|(name, stage)| stage.as_ref().map(|s| (name, s)))
    }

    pub fn validate(&self) -> Result<()> {
        self.lora.lora.validate().context("[lora]")?;
        for (name, stage) in self.stages() {
            stage.validate().with_context(|| format!("[{name}]"))?;
        }
        if let Some(dpo) = &self.dpo {
            crate::train::dpo::DpoLoss::from_stage(dpo).context("[dpo]")?;
        }
        if let Some(kto) = &self.kto {
            crate::train::kto::KtoLoss::from_stage(kto).context("[kto]")?;
        }
        if let Some(orpo) = &self.orpo {
            crate::train::orpo::check_keys(orpo).context("[orpo]")?;
        }
        Ok(())
    }
}

/// Every check a typed config must pass: its own, and those that read the table too.
fn check_run(table: &toml::Table, run: &RunConfig) -> Result<()> {
    run.validate()?;
    check_sampling(table, run)
}

/// `train_sampling_strategy` against `group_by_length`, which the data options read.
fn check_sampling(table: &toml::Table, run: &RunConfig) -> Result<()> {
    for (name, stage) in run.stages() {
        let group_by_length = table
            .get(name)
            .and_then(|t| t.get("group_by_length"))
            .and_then(toml::Value::as_bool)
            .unwrap_or(false);
        crate::data::SamplingStrategy::resolve(
            stage.train_sampling_strategy,
            group_by_length,
            crate::data::SamplingStrategy::Random,
        )
        .with_context(|| format!("[{name}]"))?;
    }
    Ok(())
}

/// The most epochs a run may ask for: far beyond any real run, and small enough that epochs times
/// the steps of an epoch stays an exact step count.
pub const MAX_EPOCHS: f64 = 1e6;

impl StageConfig {
    fn validate_data_files(&self) -> Result<()> {
        if let Some(DataFiles::Mixture(parts)) = &self.train_file {
            if parts.is_empty() {
                bail!("`train_file`: an empty list; give a path or a list of {{path, fraction}}");
            }
            if self.train_split.is_some() {
                bail!("`train_split` with a `train_file` list: give each part its own `split`");
            }
            for (i, p) in parts.iter().enumerate() {
                if !(p.fraction > 0.0 && p.fraction <= 1.0) {
                    bail!(
                        "`train_file[{i}].fraction` ({}): must be in (0, 1]",
                        float_text(p.fraction)
                    );
                }
            }
        }
        let held_out = [
            self.eval_split_ratio.map(|_| "eval_split_ratio"),
            self.test_split_size.map(|_| "test_split_size"),
        ];
        let held_out: Vec<&str> = held_out.into_iter().flatten().collect();
        if held_out.len() == 2 {
            bail!("`eval_split_ratio` and `test_split_size` both set; give one");
        }
        if let (Some(key), Some(_)) = (held_out.first(), &self.eval_file) {
            bail!(
                "`{key}` carves a held-out split from train_file, but `eval_file` is set; give one"
            );
        }
        if let Some(r) = self.eval_split_ratio {
            if !(r > 0.0 && r < 1.0) {
                bail!("`eval_split_ratio` ({}): must be in (0, 1)", float_text(r));
            }
        }
        if self.test_split_size == Some(0) {
            bail!("`test_split_size`: must be at least 1");
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        let floats = [
            ("learning_rate", self.learning_rate),
            ("num_train_epochs", self.num_train_epochs),
            ("warmup_ratio", self.warmup_ratio),
            ("weight_decay", self.weight_decay),
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
            ("adam_epsilon", self.adam_epsilon),
            ("max_grad_norm", self.max_grad_norm),
            ("beta", self.beta),
            ("label_smoothing", self.label_smoothing),
            ("rpo_alpha", self.rpo_alpha.unwrap_or(0.0)),
            ("desirable_weight", self.desirable_weight),
            ("undesirable_weight", self.undesirable_weight),
        ];
        for (key, v) in floats {
            if !v.is_finite() {
                bail!("`{key}`: {} is not a finite number", float_text(v));
            }
        }
        let positive = |key: &str, v: f64| -> Result<()> {
            if v.is_nan() || v <= 0.0 {
                bail!("`{key}` must be positive, got {v}");
            }
            Ok(())
        };
        self.validate_data_files()?;
        // torch.optim.AdamW's own checks.
        let at_least_zero = |key: &str, v: f64| -> Result<()> {
            if v < 0.0 {
                bail!("`{key}` must be at least 0, got {v}");
            }
            Ok(())
        };
        at_least_zero("weight_decay", self.weight_decay)?;
        at_least_zero("adam_epsilon", self.adam_epsilon)?;
        for (key, v) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                bail!("`{key}` must be in [0, 1), got {v}");
            }
        }
        if self.max_grad_norm < 0.0 {
            bail!(
                "`max_grad_norm` must be at least 0 (0: no clipping), got {}",
                self.max_grad_norm
            );
        }
        positive("learning_rate", self.learning_rate)?;
        positive(
            "per_device_train_batch_size",
            self.per_device_train_batch_size as f64,
        )?;
        positive(
            "per_device_eval_batch_size",
            self.per_device_eval_batch_size as f64,
        )?;
        positive(
            "gradient_accumulation_steps",
            self.gradient_accumulation_steps as f64,
        )?;
        positive("beta", self.beta)?;
        at_least_zero("desirable_weight", self.desirable_weight)?;
        at_least_zero("undesirable_weight", self.undesirable_weight)?;
        if self.max_steps <= 0 {
            positive("num_train_epochs", self.num_train_epochs)?;
            if self.num_train_epochs > MAX_EPOCHS {
                bail!(
                    "`num_train_epochs` = {:e} would overflow the step count; at most {MAX_EPOCHS} (or set `max_steps`)",
                    self.num_train_epochs
                );
            }
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            bail!(
                "`warmup_ratio` must be in [0, 1], got {}",
                self.warmup_ratio
            );
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            bail!(
                "`label_smoothing` must be in [0, 0.5), got {}",
                self.label_smoothing
            );
        }
        Ok(())
    }
}

/// `section.key=value`: the value is read as TOML (`0.05`, `true`, `"text"`, `[1, 2]`), or as a
/// plain string when it is not valid TOML. The key must be known and the value of its type.
fn apply_override(table: &mut toml::Table, spec: &str) -> Result<()> {
    let (path, raw) = spec.split_once('=').context("expected section.key=value")?;
    let (section, key) = path
        .trim()
        .split_once('.')
        .context("expected section.key=value, e.g. dpo.beta=0.05")?;
    let (section, key) = (section.trim(), key.trim());
    let known = known_keys(section)?;
    if !known.contains(&key) {
        bail!("[{section}] unknown key `{key}`{}", suggestion(key, known));
    }
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        // A number TOML cannot hold (1e400) is not meant as text.
        Err(_) if raw.trim().parse::<f64>().is_ok_and(|x| !x.is_finite()) => {
            bail!("[{section}] {key}: {} is not a finite number", raw.trim())
        }
        Err(_) => toml::Value::String(raw.to_string()),
    };
    check_finite_value(&format!("[{section}] {key}"), &value)?;
    check_type(section, key, &value)?;
    let entry = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(Default::default()));
    let Some(section_table) = entry.as_table_mut() else {
        bail!("`{section}` is not a section");
    };
    section_table.insert(key.to_string(), value);
    Ok(())
}

/// Whether `value` fits `section.key`, on its own (the rest of the config is not needed).
fn check_type(section: &str, key: &str, value: &toml::Value) -> Result<()> {
    check_run_type(section, key, value)?;
    if matches!(section, "sft" | "dpo" | "kto" | "orpo") {
        let fields: toml::Table = [(key.to_string(), value.clone())].into_iter().collect();
        toml::Value::Table(fields)
            .try_into::<crate::data::DataConfig>()
            .map_err(|e| anyhow::anyhow!("[{section}] {key}: {}", e.message().trim()))?;
    }
    Ok(())
}

/// [`check_type`] for the typed settings ([`RunConfig`]) alone.
fn check_run_type(section: &str, key: &str, value: &toml::Value) -> Result<()> {
    let fields: toml::Table = [(key.to_string(), value.clone())].into_iter().collect();
    let mut model: toml::Table = [("name_or_path".to_string(), "m".into())]
        .into_iter()
        .collect();
    let mut alone = toml::Table::new();
    if section == "model" {
        model.extend(fields);
    } else {
        alone.insert(section.into(), toml::Value::Table(fields));
    }
    alone.insert("model".into(), toml::Value::Table(model));
    toml::Value::Table(alone)
        .try_into::<RunConfig>()
        .map_err(|e| anyhow::anyhow!("[{section}] {key}: {}", e.message().trim()))?;
    Ok(())
}

/// The typed settings. A value of the wrong type, or a name none of its setting's, is reported
/// with its key, and with its line when the file holds it.
fn typed(text: &str, table: &toml::Table) -> Result<RunConfig> {
    let merged_err = match toml::Value::Table(table.clone()).try_into::<RunConfig>() {
        Ok(run) => return Ok(run),
        Err(e) => e,
    };
    // toml names the line but not the key; each value checked alone names the key.
    let mut culprits = Vec::new();
    for (section, value) in table {
        for (key, v) in value.as_table().into_iter().flatten() {
            if let Err(e) = check_run_type(section, key, v) {
                culprits.push(e.to_string());
            }
        }
    }
    match toml::from_str::<RunConfig>(text) {
        Err(in_file) => {
            let message = in_file.message().trim();
            let line = in_file
                .span()
                .and_then(|s| text.get(..s.start))
                .map(|before| before.matches('\n').count() + 1);
            match (culprits.iter().find(|c| c.ends_with(message)), line) {
                (Some(c), Some(line)) => bail!("line {line}: {c}"),
                (Some(c), None) => bail!("{c}"),
                (None, _) => bail!("{in_file}"),
            }
        }
        Ok(_) => match culprits.first() {
            Some(c) => bail!("{c}"),
            None => bail!("{}", merged_err.to_string().replace('\n', " ")),
        },
    }
}

/// The first override that turns a valid file into an invalid config, if that is what happened.
fn blamed_override<'a>(text: &str, overrides: &'a [String]) -> Option<&'a String> {
    let valid = |t: &toml::Table| {
        toml::Value::Table(t.clone())
            .try_into::<RunConfig>()
            .is_ok_and(|r| check_run(t, &r).is_ok())
    };
    let mut table: toml::Table = text.parse().ok()?;
    if !valid(&table) {
        return None;
    }
    for o in overrides {
        apply_override(&mut table, o).ok()?;
        if !valid(&table) {
            return Some(o);
        }
    }
    None
}

fn known_keys(section: &str) -> Result<&'static [&'static str]> {
    Ok(match section {
        "model" => MODEL_KEYS,
        "lora" => LORA_KEYS,
        "sft" | "dpo" | "kto" | "orpo" => STAGE_KEYS,
        "output" => OUTPUT_KEYS,
        other => bail!("unknown section [{other}]{}", suggestion(other, SECTIONS)),
    })
}

fn check_keys(table: &toml::Table) -> Result<()> {
    for (section, value) in table {
        let known = known_keys(section)?;
        let Some(t) = value.as_table() else {
            bail!("`{section}` must be a section ([{section}])");
        };
        for key in t.keys() {
            if !known.contains(&key.as_str()) {
                bail!("[{section}] unknown key `{key}`{}", suggestion(key, known));
            }
        }
    }
    Ok(())
}

/// TOML allows `inf` and `nan`; no setting means either.
fn check_finite(table: &toml::Table) -> Result<()> {
    for (section, value) in table {
        if let Some(t) = value.as_table() {
            for (key, v) in t {
                check_finite_value(&format!("[{section}] {key}"), v)?;
            }
        }
    }
    Ok(())
}

fn check_finite_value(name: &str, value: &toml::Value) -> Result<()> {
    match value {
        toml::Value::Float(x) if !x.is_finite() => {
            bail!("{name}: {} is not a finite number", float_text(*x))
        }
        toml::Value::Array(items) => items.iter().try_for_each(|v| check_finite_value(name, v)),
        toml::Value::Table(t) => t
            .iter()
            .try_for_each(|(k, v)| check_finite_value(&format!("{name}.{k}"), v)),
        _ => Ok(()),
    }
}

/// A non-finite number as TOML writes it.
fn float_text(x: f64) -> &'static str {
    match x {
        x if x.is_nan() => "nan",
        x if x > 0.0 => "inf",
        _ => "-inf",
    }
}

/// `" (did you mean `x`?)"` for the closest known name, when one is close.
fn suggestion(word: &str, known: &[&str]) -> String {
    let best = known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, k)) if d <= word.len().max(3) / 2 + 1 => format!(" (did you mean `{k}`?)"),
        _ => format!(" (valid: {})", known.join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[model]\nname_or_path = \"m\"\n[dpo]\nbeta = 0.1\n";

    #[test]
    fn typo_names_the_nearest_key() {
        let err = LoadedConfig::from_str(&MIN.replace("beta", "betta"), &[]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("[dpo] unknown key `betta`") && msg.contains("did you mean `beta`"),
            "{msg}"
        );
    }

    #[test]
    fn set_overrides_any_key() {
        let cfg =
            LoadedConfig::from_str(MIN, &["dpo.beta=0.05".into(), "lora.r=4".into()]).unwrap();
        assert_eq!(cfg.run.dpo.unwrap().beta, 0.05);
        assert_eq!(cfg.run.lora.lora.r, 4);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (set, key) in [
            ("dpo.beta=-1", "beta"),
            ("dpo.loss_type=\"foo\"", "loss_type"),
            ("dpo.lr_scheduler_type=\"zigzag\"", "lr_scheduler_type"),
            ("lora.target_modules=[\"qproj\"]", "target_modules"),
            ("model.dtype=\"f8\"", "dtype"),
            ("model.kernels=\"fast\"", "kernels"),
            (
                "dpo.train_sampling_strategy=\"shuffled\"",
                "train_sampling_strategy",
            ),
            (
                "dpo.train_sampling_strategy=\"batch_rebalance\"",
                "train_sampling_strategy",
            ),
        ] {
            let err = LoadedConfig::from_str(MIN, &[set.into()]).unwrap_err();
            assert!(format!("{err:#}").contains(key), "{set}: {err:#}");
        }
    }

    #[test]
    fn a_sampling_strategy_and_group_by_length_must_agree() {
        let with = |strategy: &str| {
            let sets = [
                format!("dpo.train_sampling_strategy=\"{strategy}\""),
                "dpo.group_by_length=true".to_string(),
            ];
            LoadedConfig::from_str(MIN, &sets)
        };
        assert!(with("group_by_length").is_ok());
        let err = format!("{:#}", with("sequential").unwrap_err());
        assert!(
            err.contains("[dpo]") && err.contains("group_by_length"),
            "{err}"
        );
        // Blamed on the override that made the file's valid config contradict itself.
        assert!(err.contains("--set dpo.group_by_length=true"), "{err}");
    }

    /// Every name of every named setting reads back as itself, through `FromStr` and serde.
    fn round_trips<T>()
    where
        T: crate::choice::Choice + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
    {
        for (value, names) in T::CHOICES {
            for name in *names {
                assert_eq!(T::from_name(name).unwrap(), *value, "{name}");
            }
            let written = serde_json::to_value(value).unwrap();
            assert_eq!(written, value.name(), "{value:?}");
            assert_eq!(serde_json::from_value::<T>(written).unwrap(), *value);
        }
    }

    #[test]
    fn names_round_trip() {
        round_trips::<Dtype>();
        round_trips::<Quantize>();
        round_trips::<DeviceSpec>();
        round_trips::<Kernels>();
        round_trips::<crate::train::dpo::LossType>();
        round_trips::<Schedule>();
        round_trips::<crate::data::SamplingStrategy>();
    }

    #[test]
    fn defaults_and_aliases_are_those_of_before() {
        let run = LoadedConfig::from_str(MIN, &[]).unwrap().run;
        let m = &run.model;
        assert_eq!(
            (m.dtype, m.quantize, m.device, m.kernels),
            (Dtype::F32, Quantize::None, DeviceSpec::Auto, Kernels::Auto)
        );
        let dpo = run.dpo.unwrap();
        assert_eq!(dpo.loss_type.0, [crate::train::dpo::LossType::Sigmoid]);
        assert_eq!(dpo.lr_scheduler_type, Schedule::Linear);
        let set = [
            "model.dtype=bfloat16".to_string(),
            "model.quantize=\" Q4_K \"".into(),
            "model.kernels=Generic".into(),
        ];
        let m = LoadedConfig::from_str(MIN, &set).unwrap().run.model;
        assert_eq!(m.dtype, Dtype::Bf16);
        assert_eq!(
            m.quantize,
            Quantize::Ggml(candle_core::quantized::GgmlDType::Q4K)
        );
        assert_eq!(m.kernels, Kernels::Generic);
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = LoadedConfig::from_str(MIN, &["dpo.learning_rate=\"fast\"".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("learning_rate"), "{err:#}");
    }
}
