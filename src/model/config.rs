//! The decoder's configuration, read from a Hugging Face `config.json`.
//!
//! Everything config.json can say that changes the math of a Mistral or Llama model is
//! either honoured here or refused with a message naming the field.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

use super::projection::Projection;

/// Which Hugging Face class the weights were written by; both share one decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Mistral,
    Llama,
}

impl Architecture {
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Llama => "LlamaForCausalLM",
        }
    }
}

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
    /// A query attends to keys at most `sliding_window - 1` positions back (transformers' rule).
    pub sliding_window: Option<usize>,
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

    /// Parameters of one decoder layer: seven projections and two norms.
    pub fn layer_parameters(&self) -> usize {
        let projections: usize = Projection::ALL
            .into_iter()
            .map(|p| {
                let (o, i) = self.projection_shape(p);
                o * i
            })
            .sum();
        projections + 2 * self.hidden_size
    }

    /// Every tensor a Hugging Face checkpoint of this model holds, with its shape.
    /// `lm_head.weight` is listed only when the embeddings are not tied.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, v) = (self.hidden_size, self.vocab_size);
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for i in 0..self.num_hidden_layers {
            for p in Projection::ALL {
                let (o, inp) = self.projection_shape(p);
                out.push((format!("{}.weight", p.module_path(i)), vec![o, inp]));
            }
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                out.push((format!("model.layers.{i}.{norm}.weight"), vec![h]));
            }
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, h]));
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
        let from_name = |name: &str| match name {
            "MistralForCausalLM" | "mistral" => Some(Architecture::Mistral),
            "LlamaForCausalLM" | "llama" => Some(Architecture::Llama),
            _ => None,
        };
        if let Some(archs) = &self.architectures {
            match archs.first() {
                Some(a) => {
                    return from_name(a).with_context(|| {
                        format!(
                            "field `architectures`: {a} is not supported \
                             (supported: MistralForCausalLM, LlamaForCausalLM)"
                        )
                    })
                }
                None => bail!("field `architectures` is empty"),
            }
        }
        match &self.model_type {
            Some(t) => from_name(t).with_context(|| {
                format!("field `model_type`: {t} is not supported (supported: mistral, llama)")
            }),
            None => bail!("missing field `architectures` (and no `model_type`)"),
        }
    }

    fn validate(self) -> Result<ModelConfig> {
        let architecture = self.architecture()?;
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                bail!("field `hidden_act`: {act} is not supported (only silu)");
            }
        }
        if self.attention_bias == Some(true) {
            bail!("field `attention_bias`: biased attention projections are not supported");
        }
        if self.mlp_bias == Some(true) {
            bail!("field `mlp_bias`: biased MLP projections are not supported");
        }
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
        let head_dim = match self.head_dim {
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
        let sliding_window = match (architecture, self.use_sliding_window) {
            // Llama has no sliding window whatever the file says.
            (Architecture::Llama, _) => None,
            (Architecture::Mistral, Some(false)) => None,
            (Architecture::Mistral, _) => self.sliding_window,
        };
        if sliding_window == Some(0) {
            bail!("field `sliding_window` must be positive or null");
        }
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
            sliding_window,
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
            other => bail!(
                "field `{field}`: rope type {other} is not supported (supported: default, linear, llama3)"
            ),
        };
        Ok((rope_theta, scaling))
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
        assert_eq!(c.sliding_window, Some(5));
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
        assert_eq!(c.sliding_window, None);
    }
}
