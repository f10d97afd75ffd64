//! The output folder's files besides the weights: config.json (copied with its dtype set, or made
//! from GGUF metadata), tokenizer files, and the base's other files copied unchanged.

use anyhow::{bail, Context, Result};
use candle_core::DType;
use serde_json::{json, Value};
use std::path::Path;

use crate::model::config::RopeScaling;
use crate::model::{ModelConfig, Projection};

/// Files copied unchanged from the base folder when present.
pub(super) const COPIED_FILES: [&str; 9] = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
];

/// Copies config.json with `dtype`/`torch_dtype` set to the output dtype.
pub(super) fn write_config(from: &Path, to: &Path, dtype: DType) -> Result<()> {
    let text = std::fs::read_to_string(from)
        .with_context(|| format!("{}: cannot read", from.display()))?;
    let mut json: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", from.display()))?;
    let name = dtype_name(dtype)?;
    let obj = json
        .as_object_mut()
        .with_context(|| format!("{}: not a JSON object", from.display()))?;
    let mut set = false;
    for key in ["dtype", "torch_dtype"] {
        if let Some(v) = obj.get_mut(key) {
            *v = json!(name);
            set = true;
        }
    }
    if !set {
        obj.insert("torch_dtype".into(), json!(name));
    }
    std::fs::write(to, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("{}: cannot write", to.display()))
}

/// The Hugging Face config.json of a model described by GGUF metadata.
pub(super) fn hf_config(c: &ModelConfig, dtype: DType) -> Result<Value> {
    let rope_scaling = match c.rope_scaling {
        RopeScaling::None => Value::Null,
        RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
            truncate,
        } => json!({
            "rope_type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": original_max_position_embeddings,
            "beta_fast": beta_fast,
            "beta_slow": beta_slow,
            "attention_factor": attention_factor,
            "truncate": truncate,
        }),
        RopeScaling::Factors(_) => bail!(
            "the GGUF's per-frequency RoPE factors (`rope_freqs.weight`) match no Llama 3 \
             rope_scaling that config.json could express"
        ),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
    };
    let family = c.family();
    let eos = match c.eos_token_ids.as_slice() {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    };
    let mut config = json!({
        "architectures": [family.hf_class],
        "model_type": family.model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": rope_scaling,
        "sliding_window": c.sliding_window(),
        "tie_word_embeddings": c.tie_word_embeddings,
        "max_position_embeddings": c.max_position_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": eos,
        "torch_dtype": dtype_name(dtype)?,
    });
    let fields = config.as_object_mut().expect("an object");
    let attention = [Projection::Q, Projection::K, Projection::V, Projection::O];
    let mlp = [Projection::Gate, Projection::Up, Projection::Down];
    let biased = |ps: &[Projection]| ps.iter().all(|p| c.biased[*p]);
    if family.reads_attention_bias {
        fields.insert("attention_bias".into(), json!(biased(&attention)));
    }
    if family.reads_mlp_bias {
        fields.insert("mlp_bias".into(), json!(biased(&mlp)));
    }
    if family.sliding.names_layers() {
        let kinds: Vec<_> = (c.layer_windows.iter())
            .map(|w| match w {
                Some(_) => "sliding_attention",
                None => "full_attention",
            })
            .collect();
        let first_sliding = c.layer_windows.iter().position(Option::is_some);
        fields.insert("use_sliding_window".into(), json!(first_sliding.is_some()));
        fields.insert(
            "max_window_layers".into(),
            json!(first_sliding.unwrap_or(c.num_hidden_layers)),
        );
        fields.insert("layer_types".into(), json!(kinds));
    }
    Ok(config)
}

/// tokenizer.json and tokenizer_config.json (special tokens, chat template) from a GGUF's
/// tokenizer metadata, where the data module can build the tokenizer.
pub(super) fn gguf_tokenizer(path: &Path, dir: &Path) -> Result<Vec<String>> {
    let tok = crate::data::load_chat_tokenizer(path)?;
    tok.tokenizer
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("writing tokenizer.json")?;
    let mut config = serde_json::Map::new();
    for (key, token) in [
        ("bos_token", &tok.bos),
        ("eos_token", &tok.eos),
        ("pad_token", &tok.pad),
    ] {
        if let Some(t) = token {
            config.insert(key.into(), json!(t.text));
        }
    }
    if let Some(t) = &tok.template {
        config.insert("chat_template".into(), json!(t.source()));
    }
    write_json(&dir.join("tokenizer_config.json"), &Value::Object(config))?;
    Ok(vec![
        "tokenizer.json".to_string(),
        "tokenizer_config.json".to_string(),
    ])
}

pub(super) fn write_json(path: &Path, value: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("{}: cannot write", path.display()))
}

pub(super) fn dtype_name(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        other => bail!("cannot write {other:?} weights"),
    })
}
