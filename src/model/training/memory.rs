//! An estimate of a training run's memory, from the config alone: frozen weights, LoRA
//! weights + gradients + AdamW state, the activations this implementation keeps for the
//! backward pass of one micro-batch, the LM head's buffers, the temporaries of one product, and
//! what the runtime itself holds (a GPU's CUDA context).
//!
//! The activation count follows what each decoder layer saves for its written-out backward
//! ([`crate::model::decoder`]'s layer module), per token: the layer input, both norms' outputs,
//! the mid-layer residual, q and k after RoPE, v, the attention output, the MLP's gate, up and
//! SwiGLU outputs (all in the activations' dtype), the r-wide A projection of each trained LoRA
//! branch (f32), and one score row per head (the attention probabilities). Dropout masks are
//! drawn again in backward, not kept. The backward runs layer by layer
//! ([`crate::model::LayerTape`]), so gradients exist for one layer at a time; with gradient
//! checkpointing only each layer's input is kept and one layer is recomputed at a time. The LM
//! head works on chunks of positions: the chunk's f32 logits and probabilities, and each scored
//! position's f32 gradient row. Products with quantized (or, on CPU, bf16) weights convert one
//! weight tile at a time (a tile per thread on CPU).

use candle_core::quantized::GgmlDType;
use candle_core::DType;

use crate::model::config::ModelConfig;
use crate::model::lora::LoraConfig;

/// Where the run's memory lives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Host memory, with this many threads converting weight tiles at once.
    Cpu { threads: usize },
    /// GPU memory (the CUDA context counted in).
    Gpu,
}

/// What the CUDA context, cuBLAS's workspace and candle's kernel modules take on a GPU: a
/// measured figure for the check kit to confirm (`scripts/gpu_check.sh`).
pub const GPU_RUNTIME_BYTES: f64 = 600.0 * 1024.0 * 1024.0;

/// What the process holds besides the model on CPU: code, tokenizer, data, allocator slack.
pub const CPU_RUNTIME_BYTES: f64 = 60.0 * 1024.0 * 1024.0;

/// Bytes of one weight tile converted to f32 (see `crate::ops`).
const TILE_F32_BYTES: f64 = 8.0 * 1024.0 * 1024.0;

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
    /// The LM head's logits and probabilities over the vocabulary for a chunk of positions, and
    /// the gradient row kept per scored position.
    pub logits: f64,
    /// Alive during one product at a time: converted weight tiles, a widened input and output.
    pub transient: f64,
    /// The runtime's own memory (see [`CPU_RUNTIME_BYTES`], [`GPU_RUNTIME_BYTES`]).
    pub runtime: f64,
}

impl MemoryEstimate {
    fn fixed(&self) -> f64 {
        self.frozen_weights + self.lora_state + self.logits + self.transient + self.runtime
    }

    pub fn total(&self) -> f64 {
        self.fixed() + self.activations
    }

    pub fn total_checkpointed(&self) -> f64 {
        self.fixed() + self.activations_checkpointed
    }
}

/// Bytes per element of the frozen projections.
pub fn projection_bytes_per_element(dtype: DType, quantize: Option<GgmlDType>) -> f64 {
    match quantize {
        Some(q) => q.type_size() as f64 / q.block_size() as f64,
        None => dtype.size_in_bytes() as f64,
    }
}

/// Bytes one token keeps per decoder layer for the backward pass, activations in `act` bytes.
fn layer_bytes_per_token(cfg: &ModelConfig, lora: &LoraConfig, seq_len: usize, act: f64) -> f64 {
    let (h, q, kv, i) = (
        cfg.hidden_size as f64,
        cfg.q_dim() as f64,
        cfg.kv_dim() as f64,
        cfg.intermediate_size as f64,
    );
    // x, h1, x2, h2; attention output and q; k and v; gate, up and SwiGLU; the scores.
    let dense = 4.0 * h + 2.0 * q + 2.0 * kv + 3.0 * i;
    let scores = cfg.num_attention_heads as f64 * seq_len as f64;
    // The A projections of the trained branches, f32.
    (dense + scores) * act + 7.0 * lora.r as f64 * 4.0
}

/// Estimate for micro-batches of `rows` sequences of `seq_len` tokens (DPO: 2 × pairs) with
/// frozen weights and activations in `dtype`, on `target`.
pub fn estimate(
    cfg: &ModelConfig,
    lora: &LoraConfig,
    dtype: DType,
    quantize: Option<GgmlDType>,
    rows: usize,
    seq_len: usize,
    target: Target,
) -> MemoryEstimate {
    let act = dtype.size_in_bytes() as f64;
    let tokens = (rows * seq_len) as f64;
    let (h, i) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
    let projection_elements = cfg.layer_projection_parameters() * cfg.num_hidden_layers;
    let other_elements = cfg.total_parameters() - projection_elements;
    let frozen = projection_elements as f64 * projection_bytes_per_element(dtype, quantize)
        + other_elements as f64 * dtype.size_in_bytes() as f64;
    let lora_state = lora.trainable_parameters(cfg) as f64 * 4.0 * 5.0;
    let per_layer = tokens * layer_bytes_per_token(cfg, lora, seq_len, act);
    let layers = cfg.num_hidden_layers as f64;
    let chunk = (crate::ops::DEFAULT_CHUNK_POSITIONS as f64).min(tokens);
    let (cpu, threads) = match target {
        Target::Cpu { threads } => (true, threads.max(1) as f64),
        Target::Gpu => (false, 1.0),
    };
    // Weight tiles converted at once (quantized, or bf16 on CPU), and on CPU the bf16 product's
    // input and output widened to f32.
    let tiled = quantize.is_some() || (cpu && dtype == DType::BF16);
    let tiles = if tiled { threads * TILE_F32_BYTES } else { 0.0 };
    let widened = if cpu && dtype == DType::BF16 {
        tokens * (h + i) * 4.0
    } else {
        0.0
    };
    // The generic attention's f32 scores and softmax of one layer (the CPU kernels work on one
    // head's block at a time).
    let cpu_kernels = cpu && matches!(dtype, DType::F32 | DType::F64);
    let scores = if cpu_kernels {
        0.0
    } else {
        2.0 * tokens * cfg.num_attention_heads as f64 * seq_len as f64 * 4.0
    };
    MemoryEstimate {
        frozen_weights: frozen,
        lora_state,
        // Every layer's saved activations, and the gradients of the layer being backpropagated.
        activations: per_layer * (layers + 1.0),
        // Every layer's input, one recomputed layer and its gradients.
        activations_checkpointed: 2.0 * per_layer + layers * tokens * h * act,
        logits: 2.0 * chunk * cfg.vocab_size as f64 * 4.0 + tokens * h * 4.0,
        transient: tiles + widened + scores,
        runtime: if cpu {
            CPU_RUNTIME_BYTES
        } else {
            GPU_RUNTIME_BYTES
        },
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

    /// The machine the peaks below were measured on.
    const CPU: Target = Target::Cpu { threads: 2 };

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
        let e = estimate(&smollm2(), &lora, DType::F32, None, 8, 54, CPU);
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
        let e = estimate(&smollm2(), &lora, DType::F32, None, 8, 250, CPU);
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
    fn the_7b_shaped_q4k_run_is_within_15_percent_of_its_peak() {
        // scripts/scale_check.sh on 2026-12-02: Mistral-7B shapes with SmolLM2's vocabulary,
        // q4k, bf16, r 16 on all projections, dropout 0.05, batch 1, max_length 64, gradient
        // checkpointing: the train command's peak RSS (SFT then DPO) was 5545 MiB.
        let cfg = ModelConfig::from_json(
            r#"{"architectures":["MistralForCausalLM"],"vocab_size":49152,"hidden_size":4096,
            "intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,
            "num_key_value_heads":8,"head_dim":128,"sliding_window":4096,
            "tie_word_embeddings":false}"#,
        )
        .unwrap();
        let lora = LoraConfig {
            r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.05,
            ..Default::default()
        };
        let e = estimate(&cfg, &lora, DType::BF16, Some(GgmlDType::Q4K), 2, 64, CPU);
        let ratio = 5545.0 / mib(e.total_checkpointed());
        assert!((0.85..1.15).contains(&ratio), "measured / estimate {ratio}");
    }

    #[test]
    fn quantized_projections_shrink_the_frozen_part() {
        let cfg = smollm2();
        let lora = LoraConfig::default();
        let dense = estimate(&cfg, &lora, DType::BF16, None, 1, 128, CPU).frozen_weights;
        let q8 = estimate(&cfg, &lora, DType::BF16, Some(GgmlDType::Q8_0), 1, 128, CPU);
        let q8 = q8.frozen_weights;
        assert!(q8 < dense && q8 > dense / 2.0, "{q8} vs {dense}");
    }
}
