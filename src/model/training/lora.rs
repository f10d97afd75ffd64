//! LoRA adapters in PEFT's math: `y = W x + scale · B(A(dropout(x)))`.
//!
//! An adapter lives beside the frozen model, not inside it: a forward pass is given the
//! adapters to apply, so "adapter disabled" (the DPO reference) is the same weights with an
//! empty list, and several adapters can be stacked.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::model::config::ModelConfig;
use crate::model::projection::{PerProjection, Projection};

/// The LoRA hyper-parameters, with PEFT's names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    #[serde(default = "default_r")]
    pub r: usize,
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default = "default_targets")]
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub use_rslora: bool,
}

fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_targets() -> Vec<String> {
    Projection::names().map(str::to_string).collect()
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: default_r(),
            lora_alpha: default_alpha(),
            lora_dropout: 0.0,
            target_modules: default_targets(),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// `lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            bail!("lora.r must be at least 1");
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            bail!(
                "lora.lora_dropout must be in [0, 1), got {}",
                self.lora_dropout
            );
        }
        if self.target_modules.is_empty() {
            bail!("lora.target_modules is empty");
        }
        for t in &self.target_modules {
            if Projection::from_name(t).is_none() {
                bail!(
                    "lora.target_modules: unknown module `{t}` (valid: {})",
                    Projection::names().collect::<Vec<_>>().join(", ")
                );
            }
        }
        Ok(())
    }

    /// Every targeted projection, in layer order.
    pub fn targets(&self) -> Vec<Projection> {
        Projection::ALL
            .into_iter()
            .filter(|p| self.target_modules.iter().any(|t| t == p.name()))
            .collect()
    }

    /// Trainable parameters of this LoRA on a model: `r · (in + out)` per targeted projection.
    pub fn trainable_parameters(&self, model: &ModelConfig) -> usize {
        let per_layer: usize = self
            .targets()
            .into_iter()
            .map(|p| {
                let (out, inp) = model.projection_shape(p);
                self.r * (out + inp)
            })
            .sum();
        per_layer * model.num_hidden_layers
    }
}

/// The two factors of one adapted projection, always f32: `a: [r, in]`, `b: [out, r]`.
#[derive(Clone)]
pub struct LoraPair {
    pub a: Var,
    pub b: Var,
}

/// One LoRA adapter over the whole model.
pub struct Adapter {
    pub config: LoraConfig,
    /// A frozen adapter takes part in forward passes but records no graph (a stacked SFT
    /// adapter under DPO, or the reference).
    pub frozen: bool,
    /// `layers[layer][projection]`: the factors of each adapted projection.
    pub layers: Vec<PerProjection<Option<LoraPair>>>,
}

impl Adapter {
    /// A fresh adapter initialised like PEFT: A Kaiming-uniform (bound `1/sqrt(in)`), B zeros.
    pub fn init(
        model: &ModelConfig,
        config: LoraConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let targets = config.targets();
        let mut layers = Vec::with_capacity(model.num_hidden_layers);
        for _ in 0..model.num_hidden_layers {
            let mut slots: PerProjection<Option<LoraPair>> = Default::default();
            for &p in &targets {
                let (out, inp) = model.projection_shape(p);
                // kaiming_uniform_(a=sqrt(5)) gives bound = gain·sqrt(3/fan_in) = 1/sqrt(fan_in).
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..config.r * inp)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (config.r, inp), device)?)?;
                let b = Var::zeros((out, config.r), DType::F32, device)?;
                slots[p] = Some(LoraPair { a, b });
            }
            layers.push(slots);
        }
        Ok(Self {
            config,
            frozen: false,
            layers,
        })
    }

    pub fn scale(&self) -> f64 {
        self.config.scale()
    }

    pub fn pair(&self, layer: usize, projection: Projection) -> Option<&LoraPair> {
        self.layers.get(layer).and_then(|l| l[projection].as_ref())
    }

    /// Every trainable tensor, A then B, layer by layer, projection by projection.
    pub fn vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// `(module path, "lora_A" | "lora_B", var)` in a fixed order, e.g. `model.layers.0.self_attn.q_proj`.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (p, pair) in layer.iter() {
                if let Some(pair) = pair {
                    let module = p.module_path(i);
                    out.push((format!("{module}.lora_A"), pair.a.clone()));
                    out.push((format!("{module}.lora_B"), pair.b.clone()));
                }
            }
        }
        out
    }

    pub fn num_parameters(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }
}

pub use crate::ops::{add_dropped, apply_dropout, dropout_mask, Dropout};
