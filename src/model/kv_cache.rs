//! Inference with a key/value cache: the same math as the training forward, one new chunk of
//! tokens at a time, reusing the keys and values of the tokens already seen.
//!
//! Declared as a child module of `decoder` so it can reuse the frozen weights and projections
//! without widening their visibility.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::{DecoderLayer, Model, Pass};
use crate::model::projection::Projection::{Down, Gate, Up, K, O, Q, V};
use crate::ops;

/// Keys and values of every layer for the tokens seen so far (batch 1 or more, equal lengths).
///
/// With a sliding window only the last `sliding_window - 1` positions are kept between calls:
/// no later query can see anything older (query i sees key j iff `j <= i` and `i - j < window`).
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Tokens processed so far: the absolute position of the next token.
    len: usize,
    /// Absolute position of the first cached key.
    start: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of tokens processed so far (the position the next token gets).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of positions whose keys and values are held.
    pub fn cached_positions(&self) -> usize {
        self.len - self.start
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

impl Model {
    /// Logits `[batch, seq, vocab]` (f32) of `input_ids: [batch, seq]`, the tokens that follow
    /// those already in `cache`; appends their keys and values to `cache`.
    ///
    /// No padding: every row has the same length. With an empty cache this equals
    /// [`Model::forward`] without an attention mask.
    pub fn forward_with_cache(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        pass: Pass,
    ) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let offset = cache.len;
        let total = offset + seq;
        if total > self.rotary.max_len() {
            bail!(
                "{total} tokens is more than max_position_embeddings {}",
                self.rotary.max_len()
            );
        }
        if cache.layers.is_empty() {
            cache.layers = vec![None; self.layers.len()];
        }
        let mut x = self
            .embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((batch, seq, self.config.hidden_size))?;
        let (cos, sin) = self.rotary.tables(total)?;
        let (cos, sin) = (cos.narrow(0, offset, seq)?, sin.narrow(0, offset, seq)?);
        let mask = crate::model::mask::cached(
            self.config.sliding_window,
            offset,
            cache.start,
            seq,
            &self.device,
        )?;
        let eps = self.config.rms_norm_eps;
        let k = self.kernels;
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let h = ops::rms_norm(k, &x, &layer.input_layernorm, eps)?;
            let attn = self.cached_attention(layer, &h, slot, &mask, &cos, &sin, pass)?;
            x = (x + attn)?;
            let h = ops::rms_norm(k, &x, &layer.post_attention_layernorm, eps)?;
            let gate = layer.proj[Gate].forward(k, &h, pass)?;
            let up = layer.proj[Up].forward(k, &h, pass)?;
            let act = ops::swiglu(k, &gate, &up)?;
            x = (&x + layer.proj[Down].forward(k, &act, pass)?)?;
        }
        cache.len = total;
        if let Some(w) = self.config.sliding_window {
            // Future queries sit at positions >= total and see keys j > total - w.
            let keep_from = total.saturating_sub(w - 1).max(cache.start);
            if keep_from > cache.start {
                let drop = keep_from - cache.start;
                for (k, v) in cache.layers.iter_mut().flatten() {
                    let kept = k.dim(2)? - drop;
                    *k = k.narrow(2, drop, kept)?.contiguous()?;
                    *v = v.narrow(2, drop, kept)?.contiguous()?;
                }
                cache.start = keep_from;
            }
        }
        let h = ops::rms_norm(k, &x, &self.norm, eps)?;
        Ok(self.logits(&h)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn cached_attention(
        &self,
        layer: &DecoderLayer,
        x: &Tensor,
        slot: &mut Option<(Tensor, Tensor)>,
        mask: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        pass: Pass,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, t, _) = x.dims3()?;
        let (h, kvh, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, d))?.transpose(1, 2)?)
        };
        let kernels = self.kernels;
        let q = heads(layer.proj[Q].forward(kernels, x, pass)?, h)?;
        let k = heads(layer.proj[K].forward(kernels, x, pass)?, kvh)?;
        let v = heads(layer.proj[V].forward(kernels, x, pass)?, kvh)?.contiguous()?;
        let q = ops::rope(&q, cos, sin)?.contiguous()?;
        let k = ops::rope(&k, cos, sin)?.contiguous()?;
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        let out = ops::attention(kernels, &q, &k, &v, mask, self.dtype)?;
        *slot = Some((k, v));
        layer.proj[O].forward(kernels, &out, pass)
    }
}
