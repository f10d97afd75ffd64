//! An estimate of a training run's memory, from the config alone: frozen weights, LoRA
//! weights + gradients + AdamW state, and the activations this implementation keeps for the
//! backward pass of one micro-batch.
//!
//! The activation count follows what each decoder layer saves for its written-out backward
//! ([`crate::model::decoder`]'s layer module), per token: the layer input, both norms' outputs,
//! the mid-layer residual, q and k after RoPE, v, the attention output, the MLP's gate, up and
//! SwiGLU outputs, the r-wide A projection of each trained LoRA branch, and one score row per
//! head (the attention probabilities). Dropout masks are drawn again in backward, not kept.
//! The backward runs layer by layer ([`crate::model::LayerTape`]), so gradients exist for one
//! layer at a time; with gradient checkpointing only each layer's input is kept and one layer
//! is recomputed at a time. The LM head works on chunks of positions: the chunk's f32 logits
//! (turned into probabilities in place) and one more `[chunk, vocab]` tensor at most.

use candle_core::quantized::GgmlDType;
use candle_core::DType;

use super::config::ModelConfig;
use super::lora::LoraConfig;

/// Bytes, by part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    pub frozen_weights: f64,
    /// LoRA weights, gradients, the accumulation buffer and AdamW's two moments (all f32).
    pub lora_state: f64,
    /// Activations and their gradients for one micro-batch, without gradient checkpointing.
    pub activations: f64,
    /// The same with each decoder layer recomputed in backward (layer inputs kept only).
    pub activations_checkpointed: f64,
    /// Logits and log-prob tensors over the vocabulary.
    pub logits: f64,
}

impl MemoryEstimate {
    pub fn total(&self) -> f64 {
        self.frozen_weights + self.lora_state + self.activations + self.logits
    }

    pub fn total_checkpointed(&self) -> f64 {
        self.frozen_weights + self.lora_state + self.activations_checkpointed + self.logits
    }
}

/// Bytes per element of the frozen projections.
pub fn projection_bytes_per_element(dtype: DType, quantize: Option<GgmlDType>) -> f64 {
    match quantize {
        Some(q) => q.type_size() as f64 / q.block_size() as f64,
        None => dtype.size_in_bytes() as f64,
    }
}

/// Elements one token keeps per decoder layer for the backward pass.
fn layer_elements_per_token(cfg: &ModelConfig, lora: &LoraConfig, seq_len: usize) -> f64 {
    let (h, q, kv, i) = (
        cfg.hidden_size as f64,
        cfg.q_dim() as f64,
        cfg.kv_dim() as f64,
        cfg.intermediate_size as f64,
    );
    // x, h1, x2, h2; attention output and q; k and v; gate, up and SwiGLU; A projections.
    let saved = 4.0 * h + 2.0 * q + 2.0 * kv + 3.0 * i + 7.0 * lora.r as f64;
    saved + cfg.num_attention_heads as f64 * seq_len as f64
}

/// Estimate for micro-batches of `rows` sequences of `seq_len` tokens (DPO: 2 × pairs).
pub fn estimate(
    cfg: &ModelConfig,
    lora: &LoraConfig,
    dtype: DType,
    quantize: Option<GgmlDType>,
    rows: usize,
    seq_len: usize,
) -> MemoryEstimate {
    let act = dtype.size_in_bytes().max(4) as f64; // LoRA branches and scores are f32
    let tokens = (rows * seq_len) as f64;
    let projection_elements =
        (cfg.layer_parameters() - 2 * cfg.hidden_size) * cfg.num_hidden_layers;
    let other_elements = cfg.total_parameters() - projection_elements;
    let frozen = projection_elements as f64 * projection_bytes_per_element(dtype, quantize)
        + other_elements as f64 * dtype.size_in_bytes() as f64;
    let lora_state = lora.trainable_parameters(cfg) as f64 * 4.0 * 5.0;
    let per_layer = tokens * layer_elements_per_token(cfg, lora, seq_len) * act;
    let layers = cfg.num_hidden_layers as f64;
    let chunk = (crate::ops::DEFAULT_CHUNK_POSITIONS as f64).min(tokens);
    MemoryEstimate {
        frozen_weights: frozen,
        lora_state,
        // Every layer's graph, and the gradients of the layer being backpropagated.
        activations: per_layer * (layers + 1.0),
        // Every layer's input, one recomputed layer and its gradients.
        activations_checkpointed: 2.0 * per_layer + layers * tokens * cfg.hidden_size as f64 * act,
        logits: 2.0 * chunk * cfg.vocab_size as f64 * 4.0,
    }
}

/// `1.23 GiB`, `456.7 MiB`.
pub fn human_bytes(b: f64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    if b >= GIB {
        format!("{:.2} GiB", b / GIB)
    } else {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> ModelConfig {
        ModelConfig::from_json(
            r#"{"architectures":["LlamaForCausalLM"],"vocab_size":49152,"hidden_size":576,
            "intermediate_size":1536,"num_hidden_layers":30,"num_attention_heads":9,
            "num_key_value_heads":3,"tie_word_embeddings":true}"#,
        )
        .unwrap()
    }

    fn mib(bytes: f64) -> f64 {
        bytes / (1024.0 * 1024.0)
    }

    /// Within 30% of a peak RSS measured with `lora-dpo bench` (the whole process: it also
    /// holds the tokenizer, the data and allocator slack).
    fn near(estimate: f64, measured_mib: f64) {
        let ratio = mib(estimate) / measured_mib;
        assert!(
            (0.7..1.3).contains(&ratio),
            "estimate {:.0} MiB vs measured {measured_mib} MiB",
            mib(estimate)
        );
    }

    #[test]
    fn the_demo_sft_step_is_near_its_measured_peak() {
        // configs/demo.toml SFT: 8 rows of at most 54 tokens, r 16 on all projections, dropout
        // 0.05, f32 weights: 1416 MiB measured, 803 MiB with gradient checkpointing
        // (`lora-dpo bench --config configs/demo.toml --stage sft --steps 2 --warmup 0`).
        let lora = LoraConfig {
            r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.05,
            ..Default::default()
        };
        let e = estimate(&smollm2(), &lora, DType::F32, None, 8, 54);
        near(e.total(), 1416.0);
        near(e.total_checkpointed(), 803.0);
    }

    #[test]
    fn the_dpo_estimate_bounds_the_packed_bench_step() {
        // configs/bench.toml DPO: 4 pairs of ~250 tokens sharing ~163-token prompts, no
        // dropout: 2296 MiB measured, 1038 MiB with gradient checkpointing. The estimate
        // counts 8 unshared rows, so it is above, but not far.
        let lora = LoraConfig {
            r: 16,
            lora_alpha: 32.0,
            ..Default::default()
        };
        let e = estimate(&smollm2(), &lora, DType::F32, None, 8, 250);
        for (estimate, measured) in [(e.total(), 2296.0), (e.total_checkpointed(), 1038.0)] {
            let ratio = mib(estimate) / measured;
            assert!(
                (1.0..2.0).contains(&ratio),
                "{} MiB vs {measured}",
                mib(estimate)
            );
        }
    }

    #[test]
    fn quantized_projections_shrink_the_frozen_part() {
        let cfg = smollm2();
        let lora = LoraConfig::default();
        let dense = estimate(&cfg, &lora, DType::BF16, None, 1, 128).frozen_weights;
        let q8 = estimate(&cfg, &lora, DType::BF16, Some(GgmlDType::Q8_0), 1, 128).frozen_weights;
        assert!(q8 < dense && q8 > dense / 2.0, "{q8} vs {dense}");
    }
}
