//! The decoder every family shares (see `architecture.rs` for what differs), written for
//! training: every op has a backward that reaches the LoRA factors and none computes a gradient
//! for a frozen weight. The same layer forward serves training, evaluation and generation.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::model::architecture::{LayerTensor, ModelTensor};
use crate::model::config::ModelConfig;
use crate::model::frozen::{FrozenWeight, LoadOptions, WeightSource};
use crate::model::lora::{Adapter, Dropout};
use crate::model::lora_linear::Branch;
use crate::model::packed::PackedBatch;
use crate::model::projection::{PerProjection, Projection};
use crate::model::rotary::Rotary;
use crate::ops;

// The cached inference forward lives in its own file but inside this module, so it can use
// the private weights without widening their visibility.
#[path = "kv_cache.rs"]
mod kv_cache;
pub use kv_cache::KvCache;
// The tape lives with the training parts but reads the private layers, as a child module.
#[path = "../training/tape.rs"]
mod tape;
pub use tape::LayerTape;
#[path = "layer.rs"]
mod layer;
use layer::LayerContext;

/// How a forward pass runs.
#[derive(Clone, Copy)]
pub struct Pass<'a> {
    /// Adapters applied on top of the frozen base, in order; empty = the bare base.
    pub adapters: &'a [&'a Adapter],
    /// Applies LoRA dropout.
    pub training: bool,
    /// Seeds the dropout masks of this pass (each projection derives its own).
    pub dropout_seed: u64,
}

impl<'a> Pass<'a> {
    pub fn eval(adapters: &'a [&'a Adapter]) -> Self {
        Self {
            adapters,
            training: false,
            dropout_seed: 0,
        }
    }

    pub fn train(adapters: &'a [&'a Adapter], dropout_seed: u64) -> Self {
        Self {
            adapters,
            training: true,
            dropout_seed,
        }
    }
}

/// A frozen projection weight `[out, in]`, its bias if the family has one, and where it sits.
struct ProjectionLinear {
    weight: FrozenWeight,
    bias: Option<Tensor>,
    layer: usize,
    which: Projection,
}

impl ProjectionLinear {
    /// The LoRA branches `pass` puts on this projection; `trains` marks the unfrozen adapter's
    /// branch as trained (its backward computes the factors' gradients).
    fn branches<'a>(&self, pass: Pass<'a>, trains: bool) -> Vec<Branch<'a>> {
        pass.adapters
            .iter()
            .enumerate()
            .filter_map(|(slot, adapter)| {
                let pair = adapter.pair(self.layer, self.which)?;
                Some(Branch {
                    pair,
                    scale: adapter.scale(),
                    dropout: pass.training.then(|| Dropout {
                        p: adapter.config.lora_dropout,
                        seed: mix_seed(pass.dropout_seed, [self.layer, self.which.index(), slot]),
                    }),
                    trained: trains && pass.training && !adapter.frozen,
                })
            })
            .collect()
    }
}

struct DecoderLayer {
    input_layernorm: Tensor,
    post_attention_layernorm: Tensor,
    proj: PerProjection<ProjectionLinear>,
    /// The per-head norms of q and k (Qwen3), `[head_dim]` each.
    qk_norm: Option<(Tensor, Tensor)>,
    /// Which of [`ModelConfig::windows`] the layer attends with.
    window: usize,
}

/// How the tokens of a batch attend to each other.
pub enum Attend {
    /// One additive bias `[batch, 1, seq, seq]` (right-padded rows).
    Bias(Tensor),
    /// A packed row: `(start, len, bias [1, 1, len, len])` of each group.
    Groups(Vec<(usize, usize, Tensor)>),
    /// New tokens after those in a KV cache: the bias `[seq, cached + seq]` over the cached and
    /// the new keys.
    Cached(Tensor),
}

/// A batch ready for the decoder layers.
pub struct Inputs {
    /// Embeddings `[batch, seq, hidden]`.
    x: Tensor,
    /// How its tokens attend and their rotary tables, shared by every layer.
    context: LayerContext,
}

/// The frozen base model.
pub struct Model {
    pub config: ModelConfig,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    lm_head: Tensor,
    rotary: Rotary,
    dtype: DType,
    kernels: ops::Kernels,
    device: Device,
}

impl Model {
    /// Loads every weight the config calls for from any [`WeightSource`] (safetensors, GGUF),
    /// the projections dense or quantized as `options` say.
    pub fn load_with(
        config: ModelConfig,
        weights: &dyn WeightSource,
        options: &LoadOptions,
        device: &Device,
    ) -> Result<Self> {
        weights.check_against(&config)?;
        let c = &config;
        let dtype = options.dtype;
        let load = |t: ModelTensor, shape: &[usize]| {
            weights.load_dense(&t.hf_name(), shape, dtype, device)
        };
        let embed_tokens = load(ModelTensor::Embed, &[c.vocab_size, c.hidden_size])?;
        let windows = c.windows();
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let tensor = |t: LayerTensor| ModelTensor::Layer(i, t);
            let proj = PerProjection::try_from_fn(|which| -> Result<_> {
                let (out, inp) = c.projection_shape(which);
                let name = tensor(LayerTensor::Weight(which)).hf_name();
                let bias = match c.biased[which] {
                    true => Some(load(tensor(LayerTensor::Bias(which)), &[out])?),
                    false => None,
                };
                Ok(ProjectionLinear {
                    weight: weights.load_frozen(&name, &[out, inp], options, device)?,
                    bias,
                    layer: i,
                    which,
                })
            })?;
            let norm = |t: LayerTensor, len: usize| load(tensor(t), &[len]);
            let qk_norm = match c.qk_norm {
                true => Some((
                    norm(LayerTensor::QNorm, c.head_dim)?,
                    norm(LayerTensor::KNorm, c.head_dim)?,
                )),
                false => None,
            };
            let window = windows.iter().position(|w| *w == c.layer_windows[i]);
            layers.push(DecoderLayer {
                input_layernorm: norm(LayerTensor::InputNorm, c.hidden_size)?,
                post_attention_layernorm: norm(LayerTensor::PostAttentionNorm, c.hidden_size)?,
                proj,
                qk_norm,
                window: window.expect("windows() lists every layer's window"),
            });
        }
        let norm = load(ModelTensor::FinalNorm, &[c.hidden_size])?;
        let lm_head = if c.tie_word_embeddings && !weights.contains("lm_head.weight") {
            embed_tokens.clone()
        } else {
            load(ModelTensor::LmHead, &[c.vocab_size, c.hidden_size]).context(
                "(set tie_word_embeddings in config.json if the head shares the embeddings)",
            )?
        };
        let rotary = Rotary::new(c, c.max_position_embeddings.max(1), dtype, device)?;
        Ok(Self {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            dtype,
            kernels: options.kernels,
            device: device.clone(),
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Which implementation of the ops this model's passes run.
    pub fn kernels(&self) -> ops::Kernels {
        self.kernels
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Final hidden states `[batch, seq, hidden]` (after the last norm).
    ///
    /// `input_ids: [batch, seq]` (u32), right-padded; `attention_mask: [batch, seq]`, 1 for real
    /// tokens. Positions count from 0 in every row.
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        pass: Pass,
    ) -> Result<Tensor> {
        let inputs = self.inputs(input_ids, attention_mask)?;
        self.hidden_states_of(inputs, pass)
    }

    /// Final hidden states (after the last norm) of prepared inputs: `[batch, seq, hidden]`,
    /// or `[1, tokens, hidden]` for a packed batch.
    pub fn hidden_states_of(&self, inputs: Inputs, pass: Pass) -> Result<Tensor> {
        let Inputs { mut x, context } = inputs;
        for layer in &self.layers {
            x = self
                .layer_forward(layer, &x, &context, pass, false, None)?
                .0;
        }
        Ok(ops::rms_norm(
            self.kernels,
            &x,
            &self.norm,
            self.config.rms_norm_eps,
        )?)
    }

    /// A right-padded batch: the embeddings, the attention bias and the rotary tables.
    pub fn inputs(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Inputs> {
        let (batch, seq) = input_ids.dims2()?;
        self.check_length(seq)?;
        let x = self.embed(input_ids)?;
        let attends = (self.config.windows().into_iter())
            .map(|window| {
                let mask = crate::model::mask::padded_batch(
                    window,
                    attention_mask,
                    batch,
                    seq,
                    &self.device,
                )?;
                Ok(Attend::Bias(mask))
            })
            .collect::<Result<_>>()?;
        let (cos, sin) = self.rotary.tables(seq)?;
        Ok(Inputs {
            x,
            context: LayerContext { attends, cos, sin },
        })
    }

    /// A packed batch (one row, groups attended separately, positions per token).
    pub fn packed_inputs(&self, packed: &PackedBatch) -> Result<Inputs> {
        self.check_length(packed.max_position())?;
        let (ids, positions) = packed.tensors(&self.device)?;
        let (cos, sin) = self.rotary.at(&positions)?;
        let attends = (self.config.windows().into_iter())
            .map(|window| {
                let groups = (packed.groups.iter().enumerate())
                    .map(|(g, &(start, len))| {
                        Ok((start, len, packed.group_bias(g, window, &self.device)?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Attend::Groups(groups))
            })
            .collect::<Result<_>>()?;
        Ok(Inputs {
            x: self.embed(&ids)?,
            context: LayerContext { attends, cos, sin },
        })
    }

    fn check_length(&self, seq: usize) -> Result<()> {
        if seq > self.rotary.max_len() {
            anyhow::bail!(
                "sequence of {seq} tokens is longer than max_position_embeddings {}",
                self.rotary.max_len()
            );
        }
        Ok(())
    }

    fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        Ok(self
            .embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((batch, seq, self.config.hidden_size))?)
    }

    /// Logits `[batch, seq, vocab]` in f32.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        pass: Pass,
    ) -> Result<Tensor> {
        let h = self.hidden_states(input_ids, attention_mask, pass)?;
        Ok(self.logits(&h)?)
    }

    /// Next-token log-probs (and mean logits) of hidden states `[b, seq, h]` from
    /// [`Model::hidden_states`], through the LM head in chunks of positions.
    pub fn head_logprobs(&self, hidden: &Tensor, input_ids: &Tensor) -> Result<ops::HeadLogprobs> {
        Ok(ops::head_logprobs(
            self.kernels,
            hidden,
            &self.lm_head,
            input_ids,
            ops::DEFAULT_CHUNK_POSITIONS,
        )?)
    }

    /// Log-probs of `targets` (`[m]`) after the hidden-state rows `states` (`[m, h]`).
    pub fn position_logprobs(
        &self,
        states: &Tensor,
        targets: &Tensor,
    ) -> Result<ops::HeadLogprobs> {
        Ok(ops::position_logprobs(
            self.kernels,
            states,
            &self.lm_head,
            targets,
            ops::DEFAULT_CHUNK_POSITIONS,
        )?)
    }

    /// The LM head applied to hidden states.
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        ops::frozen_linear(hidden, &self.lm_head)?.to_dtype(DType::F32)
    }

    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }

    /// The frozen weight of projection `p` of layer `layer`.
    pub fn projection_weight(&self, layer: usize, p: Projection) -> Option<&FrozenWeight> {
        self.layers.get(layer).map(|l| &l.proj[p].weight)
    }
}

/// A seed for one projection's dropout mask, from the pass seed and its position (SplitMix64).
fn mix_seed(seed: u64, parts: [usize; 3]) -> u64 {
    let mut z = seed;
    for p in parts {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(p as u64);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}
