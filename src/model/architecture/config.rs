//! The decoder's configuration, read from a Hugging Face `config.json`.
//!
//! Everything config.json can say that changes the math of a Mistral or Llama model is
//! either honoured here or refused with a message naming the field.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

pub use crate::model::architecture::Architecture;
use crate::model::architecture::{Family, LayerTensor, ModelTensor, SlidingWindow};
use crate::model::projection::{PerProjection, Projection};

/// How rotary frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent rescaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// YaRN (Qwen2.5/Qwen3 long context): frequencies blended between interpolated and
    /// extrapolated along a ramp over the dimensions, and cos/sin scaled by `attention_factor`.
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        truncate: bool,
    },
    /// One divisor per frequency (`head_dim / 2` of them), as GGUF files store Llama 3.1-style
    /// scaling (tensor `rope_freqs.weight`): inverse frequency `i` is divided by `factors[i]`.
    Factors(Vec<f64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// The attention window of each layer: a query attends to keys at most `window - 1`
    /// positions back (transformers' rule); `None` = every earlier key.
    pub layer_windows: Vec<Option<usize>>,
    /// Which projections add a bias (frozen, kept by merge).
    pub biased: PerProjection<bool>,
    /// Per-head RMSNorm of q and k before the rotary embedding (Qwen3).
    pub qk_norm: bool,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// `(out_features, in_features)` of a projection.
    pub fn projection_shape(&self, p: Projection) -> (usize, usize) {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        match p {
            Projection::Q => (self.q_dim(), h),
            Projection::K | Projection::V => (self.kv_dim(), h),
            Projection::O => (h, self.q_dim()),
            Projection::Gate | Projection::Up => (i, h),
            Projection::Down => (h, i),
        }
    }

    pub fn family(&self) -> &'static Family {
        self.architecture.family()
    }

    /// The window of the sliding layers, if any layer slides.
    pub fn sliding_window(&self) -> Option<usize> {
        self.layer_windows.iter().flatten().next().copied()
    }

    /// The distinct attention windows the layers use, in order of first use: the masks a
    /// pass builds.
    pub fn windows(&self) -> Vec<Option<usize>> {
        let mut out: Vec<Option<usize>> = Vec::new();
        for w in &self.layer_windows {
            if !out.contains(w) {
                out.push(*w);
            }
        }
        out
    }

    /// The tensors of one decoder layer with their shapes.
    pub fn layer_tensors(&self) -> Vec<(LayerTensor, Vec<usize>)> {
        let h = self.hidden_size;
        let mut out = vec![
            (LayerTensor::InputNorm, vec![h]),
            (LayerTensor::PostAttentionNorm, vec![h]),
        ];
        for p in Projection::ALL {
            let (o, i) = self.projection_shape(p);
            out.push((LayerTensor::Weight(p), vec![o, i]));
            if self.biased[p] {
                out.push((LayerTensor::Bias(p), vec![o]));
            }
        }
        if self.qk_norm {
            out.push((LayerTensor::QNorm, vec![self.head_dim]));
            out.push((LayerTensor::KNorm, vec![self.head_dim]));
        }
        out
    }

    /// Parameters of one decoder layer: projections, their biases and the norms.
    pub fn layer_parameters(&self) -> usize {
        self.layer_tensors()
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum()
    }

    /// Parameters of one layer's projection weights only (what LoRA and quantization act on).
    pub fn layer_projection_parameters(&self) -> usize {
        Projection::ALL
            .into_iter()
            .map(|p| {
                let (o, i) = self.projection_shape(p);
                o * i
            })
            .sum()
    }

    /// Every tensor a Hugging Face checkpoint of this model holds, with its shape.
    /// `lm_head.weight` is listed only when the embeddings are not tied.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        self.expected_model_tensors()
            .into_iter()
            .map(|(t, shape)| (t.hf_name(), shape))
            .collect()
    }

    /// [`ModelConfig::expected_tensors`] as tensors, for any naming.
    pub fn expected_model_tensors(&self) -> Vec<(ModelTensor, Vec<usize>)> {
        let (h, v) = (self.hidden_size, self.vocab_size);
        let mut out = vec![(ModelTensor::Embed, vec![v, h])];
        let layer = self.layer_tensors();
        for i in 0..self.num_hidden_layers {
            for (t, shape) in &layer {
                out.push((ModelTensor::Layer(i, *t), shape.clone()));
            }
        }
        out.push((ModelTensor::FinalNorm, vec![h]));
        if !self.tie_word_embeddings {
            out.push((ModelTensor::LmHead, vec![v, h]));
        }
        out
    }

    /// Every parameter of the model, counting a tied LM head once.
    pub fn total_parameters(&self) -> usize {
        let embed = self.vocab_size * self.hidden_size;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + self.num_hidden_layers * self.layer_parameters() + self.hidden_size + head
    }

    /// Reads and validates `config.json`; errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        Self::from_json(&text).with_context(|| format!("{}", path.display()))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        raw.validate()
    }
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    /// transformers 5 folds `rope_theta` and `rope_scaling` into this one object.
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    max_window_layers: Option<usize>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
}

impl RawConfig {
    fn architecture(&self) -> Result<Architecture> {
        if let Some(archs) = &self.architectures {
            let Some(a) = archs.first() else {
                bail!("field `architectures` is empty");
            };
            return Architecture::from_hf_name(a).with_context(|| {
                format!(
                    "field `architectures`: {a} is not supported (supported: {})",
                    Architecture::hf_classes()
                )
            });
        }
        match &self.model_type {
            Some(t) => Architecture::from_hf_name(t).with_context(|| {
                format!(
                    "field `model_type`: {t} is not supported (supported: {})",
                    crate::model::architecture::FAMILIES
                        .map(|f| f.model_type)
                        .join(", ")
                )
            }),
            None => bail!("missing field `architectures` (and no `model_type`)"),
        }
    }

    /// Which projections carry biases: the family's own, and those `attention_bias` /
    /// `mlp_bias` switch on where the family reads them.
    fn biased(&self, family: &Family) -> Result<PerProjection<bool>> {
        let attention = [Projection::Q, Projection::K, Projection::V, Projection::O];
        let mlp = [Projection::Gate, Projection::Up, Projection::Down];
        let mut biased = PerProjection::from_fn(|p| family.biased.contains(&p));
        for (key, value, reads, projections) in [
            (
                "attention_bias",
                self.attention_bias,
                family.reads_attention_bias,
                &attention[..],
            ),
            ("mlp_bias", self.mlp_bias, family.reads_mlp_bias, &mlp[..]),
        ] {
            if value != Some(true) {
                continue;
            }
            if !reads {
                bail!(
                    "field `{key}`: {} does not read it, so its meaning here is unknown",
                    family.hf_class
                );
            }
            for p in projections {
                biased[*p] = true;
            }
        }
        Ok(biased)
    }

    /// Each layer's attention window, as the family's transformers class decides it.
    fn layer_windows(&self, family: &Family) -> Result<Vec<Option<usize>>> {
        let n = self.num_hidden_layers;
        if self.sliding_window == Some(0) {
            bail!("field `sliding_window` must be positive or null");
        }
        let every = |w: Option<usize>| Ok(vec![w; n]);
        match family.sliding {
            SlidingWindow::Never => every(None),
            SlidingWindow::EveryLayer if self.use_sliding_window == Some(false) => every(None),
            SlidingWindow::EveryLayer => every(self.sliding_window),
            SlidingWindow::LayerTypes => match self.sliding_window {
                Some(w) => self
                    .named_layer_windows(w)
                    .unwrap_or_else(|| every(Some(w))),
                None => every(None),
            },
            SlidingWindow::OptIn => {
                let window = match (self.use_sliding_window, self.sliding_window) {
                    (Some(true), Some(w)) => w,
                    _ => return every(None),
                };
                if let Some(windows) = self.named_layer_windows(window) {
                    return windows;
                }
                // transformers' rule: the layers from `max_window_layers` on slide.
                let from = self.max_window_layers.unwrap_or(28);
                Ok((0..n).map(|i| (i >= from).then_some(window)).collect())
            }
        }
    }

    /// The windows `layer_types` gives each layer, if the file has that list.
    fn named_layer_windows(&self, window: usize) -> Option<Result<Vec<Option<usize>>>> {
        let types = self.layer_types.as_ref()?;
        if types.len() != self.num_hidden_layers {
            let n = self.num_hidden_layers;
            return Some(Err(anyhow::anyhow!(
                "field `layer_types` has {} entries for {n} layers",
                types.len()
            )));
        }
        let kind = |t: &String| match t.as_str() {
            "full_attention" => Ok(None),
            "sliding_attention" => Ok(Some(window)),
            other => bail!(
                "field `layer_types`: `{other}` is not supported \
                 (full_attention, sliding_attention)"
            ),
        };
        Some(types.iter().map(kind).collect())
    }

    fn validate(self) -> Result<ModelConfig> {
        let architecture = self.architecture()?;
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                bail!("field `hidden_act`: {act} is not supported (only silu)");
            }
        }
        let family = architecture.family();
        let biased = self.biased(family)?;
        let positive = |name: &str, v: usize| -> Result<()> {
            if v == 0 {
                bail!("field `{name}` must be positive");
            }
            Ok(())
        };
        positive("vocab_size", self.vocab_size)?;
        positive("hidden_size", self.hidden_size)?;
        positive("intermediate_size", self.intermediate_size)?;
        positive("num_hidden_layers", self.num_hidden_layers)?;
        positive("num_attention_heads", self.num_attention_heads)?;
        let num_key_value_heads = self.num_key_value_heads.unwrap_or(self.num_attention_heads);
        positive("num_key_value_heads", num_key_value_heads)?;
        if !self.num_attention_heads.is_multiple_of(num_key_value_heads) {
            bail!(
                "field `num_key_value_heads`: {num_key_value_heads} does not divide \
                 num_attention_heads {}",
                self.num_attention_heads
            );
        }
        let head_dim = match self.head_dim.or(family.default_head_dim) {
            Some(d) => d,
            None => {
                if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
                    bail!(
                        "field `hidden_size`: {} is not a multiple of num_attention_heads {} \
                         and no `head_dim` is given",
                        self.hidden_size,
                        self.num_attention_heads
                    );
                }
                self.hidden_size / self.num_attention_heads
            }
        };
        if !head_dim.is_multiple_of(2) {
            bail!("field `head_dim`: {head_dim} must be even for rotary embeddings");
        }
        let (rope_theta, rope_scaling) = self.rope()?;
        let layer_windows = self.layer_windows(family)?;
        Ok(ModelConfig {
            architecture,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            layer_windows,
            biased,
            qk_norm: family.qk_norm,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            max_position_embeddings: self.max_position_embeddings.unwrap_or(4096),
            bos_token_id: token_ids("bos_token_id", &self.bos_token_id)?
                .first()
                .copied(),
            eos_token_ids: token_ids("eos_token_id", &self.eos_token_id)?,
        })
    }

    fn rope(&self) -> Result<(f64, RopeScaling)> {
        // transformers 5 writes `rope_parameters` = {rope_theta, rope_type, ...};
        // older files have `rope_theta` and an optional `rope_scaling` object.
        let params = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        let field = if self.rope_parameters.is_some() {
            "rope_parameters"
        } else {
            "rope_scaling"
        };
        let theta_in_params = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(|v| v.as_f64());
        let rope_theta = self.rope_theta.or(theta_in_params).unwrap_or(10000.0);
        let Some(params) = params.filter(|p| !p.is_null()) else {
            return Ok((rope_theta, RopeScaling::None));
        };
        let kind = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let number = |key: &str| -> Result<f64> {
            params
                .get(key)
                .and_then(|v| v.as_f64())
                .with_context(|| format!("field `{field}.{key}` is missing or not a number"))
        };
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: number("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                original_max_position_embeddings: number("original_max_position_embeddings")?
                    as usize,
            },
            "yarn" => self.yarn(params, field)?,
            other => bail!(
                "field `{field}`: rope type {other} is not supported (supported: default, \
                 linear, llama3, yarn)"
            ),
        };
        Ok((rope_theta, scaling))
    }
}

impl RawConfig {
    /// transformers' `_compute_yarn_parameters`: `factor` defaults to max / original positions,
    /// `attention_factor` to `0.1 ln(factor) + 1` (or the `mscale` / `mscale_all_dim` ratio),
    /// the betas to 32 and 1.
    fn yarn(&self, params: &serde_json::Value, field: &str) -> Result<RopeScaling> {
        let get = |key: &str| params.get(key).filter(|v| !v.is_null());
        let number = |key: &str| -> Result<Option<f64>> {
            get(key)
                .map(|v| {
                    v.as_f64()
                        .with_context(|| format!("field `{field}.{key}` is not a number"))
                })
                .transpose()
        };
        let original = number("original_max_position_embeddings")?.with_context(|| {
            format!("field `{field}.original_max_position_embeddings` is missing")
        })?;
        let max_positions = self.max_position_embeddings.unwrap_or(4096) as f64;
        let factor = number("factor")?.unwrap_or(max_positions / original);
        let mscale = |scale: f64, m: f64| {
            if scale <= 1.0 {
                1.0
            } else {
                0.1 * m * scale.ln() + 1.0
            }
        };
        let attention_factor = match (number("attention_factor")?, number("mscale")?) {
            (Some(a), _) => a,
            (None, Some(m)) => match number("mscale_all_dim")?.filter(|d| *d != 0.0) {
                Some(all) if m != 0.0 => mscale(factor, m) / mscale(factor, all),
                _ => mscale(factor, 1.0),
            },
            (None, None) => mscale(factor, 1.0),
        };
        Ok(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: original as usize,
            beta_fast: number("beta_fast")?.filter(|b| *b != 0.0).unwrap_or(32.0),
            beta_slow: number("beta_slow")?.filter(|b| *b != 0.0).unwrap_or(1.0),
            attention_factor,
            truncate: get("truncate").and_then(|v| v.as_bool()).unwrap_or(true),
        })
    }
}

fn token_ids(field: &str, value: &Option<serde_json::Value>) -> Result<Vec<u32>> {
    let as_id = |v: &serde_json::Value| {
        v.as_u64()
            .map(|x| x as u32)
            .with_context(|| format!("field `{field}`: {v} is not a token id"))
    };
    match value {
        None | Some(serde_json::Value::Null) => Ok(vec![]),
        Some(serde_json::Value::Array(items)) => items.iter().map(as_id).collect(),
        Some(v) => Ok(vec![as_id(v)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{"architectures":["MistralForCausalLM"],"vocab_size":32,"hidden_size":16,
        "intermediate_size":24,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
        "head_dim":6,"sliding_window":5,"rope_theta":500.0,"eos_token_id":[2,3]}"#;

    #[test]
    fn reads_the_fields_that_change_the_math() {
        let c = ModelConfig::from_json(BASE).unwrap();
        assert_eq!(c.architecture, Architecture::Mistral);
        assert_eq!((c.head_dim, c.q_dim(), c.kv_dim()), (6, 24, 12));
        assert_eq!(c.layer_windows, vec![Some(5), Some(5)]);
        assert_eq!(c.rope_theta, 500.0);
        assert_eq!(c.eos_token_ids, vec![2, 3]);
        assert_eq!(c.projection_shape(Projection::O), (16, 24));
    }

    #[test]
    fn missing_field_is_named() {
        let err = ModelConfig::from_json(&BASE.replace(r#""hidden_size":16,"#, "")).unwrap_err();
        assert!(format!("{err:#}").contains("hidden_size"), "{err:#}");
    }

    #[test]
    fn unsupported_architecture_is_named() {
        let err = ModelConfig::from_json(&BASE.replace("MistralForCausalLM", "GPT2LMHeadModel"))
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("GPT2LMHeadModel") && msg.contains("architectures"),
            "{msg}"
        );
    }

    #[test]
    fn llama3_rope_parameters_of_transformers_5() {
        let json = BASE.replace("MistralForCausalLM", "LlamaForCausalLM").replace(
            r#""rope_theta":500.0"#,
            r#""rope_parameters":{"rope_theta":5e5,"rope_type":"llama3","factor":8.0,
               "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}"#,
        );
        let c = ModelConfig::from_json(&json).unwrap();
        assert_eq!(c.rope_theta, 5e5);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        assert_eq!(c.sliding_window(), None);
    }

    fn qwen(class: &str, extra: &str) -> Result<ModelConfig> {
        let json = BASE
            .replace("MistralForCausalLM", class)
            .replace(r#""sliding_window":5,"#, extra);
        ModelConfig::from_json(&json)
    }

    #[test]
    fn qwen2_has_qkv_biases_and_opts_into_its_window_per_layer() {
        let c = qwen("Qwen2ForCausalLM", r#""sliding_window":5,"#).unwrap();
        let biased: Vec<_> = c
            .biased
            .iter()
            .filter(|(_, b)| **b)
            .map(|(p, _)| p)
            .collect();
        assert_eq!(biased, [Projection::Q, Projection::K, Projection::V]);
        assert_eq!(
            c.layer_windows,
            vec![None, None],
            "off without use_sliding_window"
        );
        let on = r#""sliding_window":5,"use_sliding_window":true,"max_window_layers":1,"#;
        let c = qwen("Qwen2ForCausalLM", on).unwrap();
        assert_eq!(c.layer_windows, vec![None, Some(5)]);
        assert_eq!(c.windows(), vec![None, Some(5)]);
        let types = r#""sliding_window":5,"use_sliding_window":true,
            "layer_types":["sliding_attention","full_attention"],"#;
        let c = qwen("Qwen2ForCausalLM", types).unwrap();
        assert_eq!(c.layer_windows, vec![Some(5), None]);
        let bad = r#""sliding_window":5,"use_sliding_window":true,"layer_types":["chunked"],"#;
        let err = format!("{:#}", qwen("Qwen2ForCausalLM", bad).unwrap_err());
        assert!(err.contains("layer_types"), "{err}");
        let names: Vec<_> = c.expected_tensors().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"model.layers.1.self_attn.k_proj.bias".to_string()));
        assert!(!names.iter().any(|n| n.contains("o_proj.bias")));
    }

    #[test]
    fn qwen3_norms_q_and_k_and_defaults_head_dim_to_128() {
        let c = qwen("Qwen3ForCausalLM", "").unwrap();
        assert!(c.qk_norm && c.biased.values().all(|b| !b));
        assert_eq!(c.head_dim, 6, "an explicit head_dim wins");
        let no_head_dim = BASE
            .replace("MistralForCausalLM", "Qwen3ForCausalLM")
            .replace(r#""head_dim":6,"#, "");
        let c = ModelConfig::from_json(&no_head_dim).unwrap();
        assert_eq!(c.head_dim, 128);
        let names: Vec<_> = c.expected_tensors().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"model.layers.0.self_attn.q_norm.weight".to_string()));
        let c = qwen("Qwen3ForCausalLM", r#""attention_bias":true,"#).unwrap();
        assert!(c.biased.values().take(4).all(|b| *b));
    }

    #[test]
    fn a_bias_key_a_family_does_not_read_is_refused() {
        let err = qwen("MistralForCausalLM", r#""attention_bias":true,"#).unwrap_err();
        assert!(format!("{err:#}").contains("attention_bias"), "{err:#}");
    }

    #[test]
    fn ministral_slides_the_layers_layer_types_names_or_all() {
        let c = qwen("MinistralForCausalLM", r#""sliding_window":5,"#).unwrap();
        assert_eq!(c.layer_windows, vec![Some(5), Some(5)]);
        let types = r#""sliding_window":5,"layer_types":["sliding_attention","full_attention"],"#;
        let c = qwen("MinistralForCausalLM", types).unwrap();
        assert_eq!(c.layer_windows, vec![Some(5), None]);
    }
}
