//! Inference with a key/value cache: the same math as the training forward, one new chunk of
//! tokens at a time, reusing the keys and values of the tokens already seen.
//!
//! Declared as a child module of `decoder` so it can reuse the frozen weights and projections
//! without widening their visibility.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::layer::LayerContext;
use super::{Attend, Model, Pass};
use crate::ops;

/// Keys and values of every layer for the tokens seen so far (batch 1 or more, equal lengths).
///
/// A layer with a sliding window keeps only the last `window - 1` positions between calls: no
/// later query can see anything older (query i sees key j iff `j <= i` and `i - j < window`).
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Tokens processed so far: the absolute position of the next token.
    len: usize,
    /// Absolute position of the first cached key of the layers of each attention window
    /// (`ModelConfig::windows`).
    starts: Vec<usize>,
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

    /// Number of positions whose keys and values are held (by the layers that hold most).
    pub fn cached_positions(&self) -> usize {
        self.len - self.starts.iter().copied().min().unwrap_or(0)
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Keeps only the given batch rows, in that order (sequences that finished are dropped).
    pub fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(rows, 0)?;
            *v = v.index_select(rows, 0)?;
        }
        Ok(())
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
        let h = self.cached_hidden(input_ids, cache, pass, None)?;
        Ok(self.logits(&h)?)
    }

    /// The final hidden states `[batch, seq, hidden]` of a cached pass. For rows of different
    /// lengths, left-padded, `key_mask` `[batch, cached + seq]` (f32, 1 = a real token, 0 =
    /// padding) hides the padded keys. Rows share positions, so a row padded by p tokens sits p
    /// positions later than alone; rotary attention depends only on the distance between query
    /// and key, so its scores are the same up to rounding.
    fn cached_hidden(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        pass: Pass,
        key_mask: Option<&Tensor>,
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
        let windows = self.config.windows();
        if cache.layers.is_empty() {
            cache.layers = vec![None; self.layers.len()];
            cache.starts = vec![0; windows.len()];
        }
        let mut x = self
            .embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((batch, seq, self.config.hidden_size))?;
        let (cos, sin) = self.rotary.tables(total)?;
        let (cos, sin) = (cos.narrow(0, offset, seq)?, sin.narrow(0, offset, seq)?);
        let attends = (windows.iter().zip(&cache.starts))
            .map(|(&window, &start)| {
                let mask = crate::model::mask::cached(window, offset, start, seq, &self.device)?;
                let Some(keys) = key_mask else {
                    return Ok(Attend::Cached(mask));
                };
                let keys = keys.narrow(1, start, total - start)?;
                let hidden = keys
                    .affine(-1.0, 1.0)?
                    .affine(crate::model::mask::HIDDEN as f64, 0.0)?
                    .reshape((batch, 1, 1, total - start))?;
                Ok(Attend::Cached(
                    mask.broadcast_minimum(&hidden)?.contiguous()?,
                ))
            })
            .collect::<Result<_>>()?;
        let context = LayerContext { attends, cos, sin };
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = self
                .layer_forward(layer, &x, &context, pass, false, Some(slot))?
                .0;
        }
        cache.len = total;
        for (slot, window) in windows.iter().enumerate() {
            let Some(w) = window else { continue };
            // Future queries sit at positions >= total and see keys j > total - w.
            let start = cache.starts[slot];
            let keep_from = total.saturating_sub(w - 1).max(start);
            if keep_from == start {
                continue;
            }
            let drop = keep_from - start;
            let layers = self.layers.iter().zip(cache.layers.iter_mut());
            for (_, kv) in layers.filter(|(layer, _)| layer.window == slot) {
                if let Some((k, v)) = kv {
                    let kept = k.dim(2)? - drop;
                    *k = k.narrow(2, drop, kept)?.contiguous()?;
                    *v = v.narrow(2, drop, kept)?.contiguous()?;
                }
            }
            cache.starts[slot] = keep_from;
        }
        let h = ops::rms_norm(self.kernels, &x, &self.norm, self.config.rms_norm_eps)?;
        Ok(h)
    }

    /// Logits `[batch, vocab]` (f32) of the token after the last of `input_ids` in each row
    /// (left padding keeps every row's last position real): what generation samples from,
    /// without the head's cost over the prompt's positions.
    pub fn next_token_logits(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        pass: Pass,
        key_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let h = self.cached_hidden(input_ids, cache, pass, key_mask)?;
        let seq = h.dim(1)?;
        let last = h.narrow(1, seq - 1, 1)?;
        Ok(self.logits(&last)?.squeeze(1)?)
    }
}
