//! A human-readable summary of a model and of the LoRA that would train on it.

use std::fmt::Write;

use super::config::{ModelConfig, RopeScaling};
use super::lora::LoraConfig;

/// Formats a parameter count as `7.24B`, `41.9M`, `12.3K`.
pub fn human_count(n: usize) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}K", n / 1e3)
    } else {
        format!("{n}")
    }
}

/// The `inspect` report: architecture, sizes, parameter counts and LoRA trainable count.
pub fn describe(cfg: &ModelConfig, stored_dtype: &str, lora: &LoraConfig) -> String {
    let mut s = String::new();
    let rope = match &cfg.rope_scaling {
        RopeScaling::None => format!("theta {}", cfg.rope_theta),
        RopeScaling::Linear { factor } => {
            format!("theta {}, linear scaling x{factor}", cfg.rope_theta)
        }
        RopeScaling::Yarn { factor, .. } => {
            format!("theta {}, yarn scaling x{factor}", cfg.rope_theta)
        }
        RopeScaling::Llama3 { factor, .. } => {
            format!("theta {}, llama3 scaling x{factor}", cfg.rope_theta)
        }
        RopeScaling::Factors(f) => {
            let max = f.iter().cloned().fold(1.0, f64::max);
            format!(
                "theta {}, per-frequency factors up to x{max}",
                cfg.rope_theta
            )
        }
    };
    let sliding = cfg.layer_windows.iter().filter(|w| w.is_some()).count();
    let window = match cfg.sliding_window() {
        None => "none".to_string(),
        Some(w) if sliding == cfg.num_hidden_layers => format!("{w} tokens"),
        Some(w) => format!(
            "{w} tokens in {sliding} of {} layers",
            cfg.num_hidden_layers
        ),
    };
    let biased: Vec<_> = (cfg.biased.iter())
        .filter(|(_, b)| **b)
        .map(|(p, _)| p.name())
        .collect();
    let biases = match biased.is_empty() {
        true => "none".to_string(),
        false => biased.join(", "),
    };
    let lines = [
        ("architecture", cfg.architecture.hf_class().to_string()),
        ("layers", cfg.num_hidden_layers.to_string()),
        ("hidden size", cfg.hidden_size.to_string()),
        ("intermediate size", cfg.intermediate_size.to_string()),
        (
            "attention heads",
            format!(
                "{} query, {} key/value (head_dim {})",
                cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
            ),
        ),
        ("vocabulary", cfg.vocab_size.to_string()),
        ("rope", rope),
        ("sliding window", window),
        ("tied embeddings", cfg.tie_word_embeddings.to_string()),
        ("biases", biases),
        ("q/k norm", cfg.qk_norm.to_string()),
        ("stored dtype", stored_dtype.to_string()),
        (
            "parameters",
            format!(
                "{} ({})",
                human_count(cfg.total_parameters()),
                cfg.total_parameters()
            ),
        ),
        ("  per layer", cfg.layer_parameters().to_string()),
        (
            "  embeddings",
            (cfg.vocab_size * cfg.hidden_size).to_string(),
        ),
    ];
    for (k, v) in lines {
        let _ = writeln!(s, "{k:<18} {v}");
    }
    let trainable = lora.trainable_parameters(cfg);
    let _ = writeln!(
        s,
        "{:<18} {} ({}) with r={} on {} — {:.3}% of the base",
        "LoRA trainable",
        human_count(trainable),
        trainable,
        lora.r,
        lora.target_modules.join(","),
        100.0 * trainable as f64 / cfg.total_parameters() as f64
    );
    s
}
