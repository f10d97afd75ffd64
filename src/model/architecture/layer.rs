//! One decoder layer, forward and written-out backward.
//!
//! The forward runs on untracked tensors and returns what the backward needs; the backward
//! walks the layer in reverse with each op's own backward function and hands the trained LoRA
//! factors' gradients out as it meets them. No autograd graph is built, so there is no
//! per-node gradient bookkeeping (candle's backward allocates and sums a gradient for every
//! intermediate tensor).

use anyhow::Result;
use candle_core::Tensor;

use super::{Attend, DecoderLayer, Model, Pass};
use crate::model::lora_linear::{
    lora_backward_shared, lora_forward_shared, FactorGrads, ProjectionSaved,
};
use crate::model::projection::PerProjection;
use crate::model::projection::Projection::{self, Down, Gate, Up, K, O, Q, V};
use crate::ops;

/// The activations of one layer's forward that its backward reads.
pub struct LayerSaved {
    /// The layer input, its first norm, and the attention's input to the o projection.
    x: Tensor,
    h1: Tensor,
    attn: Tensor,
    /// q and k before their per-head norms (Qwen3), `[b, t, heads, d]`.
    qk_unnormed: Option<(Tensor, Tensor)>,
    /// q and k after rotary embedding, v: `[b, t, heads, d]`.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// The attention probabilities of each group (one for a right-padded batch).
    probs: Vec<Tensor>,
    /// The mid-layer residual, its norm, the MLP's gate/up outputs and `swiglu(gate, up)`.
    x2: Tensor,
    h2: Tensor,
    gate: Tensor,
    up: Tensor,
    act: Tensor,
    /// What each projection's backward needs (every projection runs once per forward).
    proj: PerProjection<Option<ProjectionSaved>>,
}

/// The attention layout and rotary tables every layer of a pass shares.
pub struct LayerContext {
    /// How tokens attend under each window of [`ModelConfig::windows`] (one for most models;
    /// full and sliding when only some layers slide).
    ///
    /// [`ModelConfig::windows`]: crate::model::ModelConfig::windows
    pub attends: Vec<Attend>,
    /// Rotary tables of each position `[seq, head_dim / 2]`.
    pub cos: Tensor,
    pub sin: Tensor,
}

impl LayerContext {
    /// The attention groups: one over the whole row for a padded batch, the packed groups
    /// otherwise.
    fn groups(&self, window: usize) -> Vec<ops::Group<'_>> {
        match &self.attends[window] {
            Attend::Bias(mask) => vec![ops::Group {
                start: 0,
                // [b, 1, t, t]
                len: mask.dims()[2],
                bias: mask,
            }],
            Attend::Groups(groups) => groups
                .iter()
                .map(|(start, len, bias)| ops::Group {
                    start: *start,
                    len: *len,
                    bias,
                })
                .collect(),
            // Queries and keys differ in length: attended by `cached_attention`, not in groups.
            Attend::Cached(_) => Vec::new(),
        }
    }
}

impl Model {
    /// The layer's output for the untracked input `x`, and what its backward needs. `trains`
    /// asks for the trained adapter's saved A-projections (a pass that will run backward).
    /// With `cache` (generation, `ctx.attend` = [`Attend::Cached`]), the new keys and values are
    /// appended to the layer's cached ones and attended with them; nothing is saved for a
    /// backward.
    pub(super) fn layer_forward(
        &self,
        layer: &DecoderLayer,
        x: &Tensor,
        ctx: &LayerContext,
        pass: Pass,
        trains: bool,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<(Tensor, LayerSaved)> {
        let c = &self.config;
        let eps = c.rms_norm_eps;
        let (b, t, _) = x.dims3()?;
        let (heads, kv_heads, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let mut proj: PerProjection<Option<ProjectionSaved>> = Default::default();
        // Projections `ps` of `input`, their small LoRA products side by side.
        let mut project = |ps: &[Projection], input: &Tensor| -> Result<Vec<Tensor>> {
            let linears: Vec<_> = ps.iter().map(|&p| &layer.proj[p]).collect();
            let branches: Vec<_> = linears.iter().map(|l| l.branches(pass, trains)).collect();
            let parts: Vec<_> = (linears.iter().zip(&branches))
                .map(|(l, b)| (&l.weight, b.as_slice()))
                .collect();
            let done = lora_forward_shared(self.kernels, input, &parts)?;
            ps.iter()
                .zip(done)
                .map(|(&p, (y, saved))| {
                    proj[p] = Some(saved);
                    // A frozen bias adds a constant: the backward passes through unchanged.
                    Ok(match &layer.proj[p].bias {
                        Some(bias) => y.broadcast_add(bias)?,
                        None => y,
                    })
                })
                .collect()
        };
        let k = self.kernels;
        let h1 = ops::rms_norm(k, x, &layer.input_layernorm, eps)?;
        // q, k, v stay in the projections' layout [b, t, heads, d]; attention reads them as
        // [b, heads, t, d] views.
        let [q, key, v]: [Tensor; 3] = project(&[Q, K, V], &h1)?
            .try_into()
            .expect("three projections");
        let split = |y: Tensor, n: usize| y.reshape((b, t, n, d));
        let (q, key) = (split(q, heads)?, split(key, kv_heads)?);
        let (q_normed, key_normed, qk_unnormed) = match &layer.qk_norm {
            Some((q_norm, k_norm)) => (
                ops::rms_norm(k, &q, q_norm, eps)?,
                ops::rms_norm(k, &key, k_norm, eps)?,
                Some((q, key)),
            ),
            None => (q, key, None),
        };
        let q = ops::rope_thd(k, &q_normed, &ctx.cos, &ctx.sin)?;
        let key = ops::rope_thd(k, &key_normed, &ctx.cos, &ctx.sin)?;
        let v = split(v, kv_heads)?;
        let (attn, probs) = match (cache, &ctx.attends[layer.window]) {
            (Some(slot), Attend::Cached(bias)) => {
                (self.cached_attention(&q, &key, &v, slot, bias)?, Vec::new())
            }
            (None, Attend::Cached(_)) => anyhow::bail!("a cached pass needs its KV cache"),
            _ => ops::grouped_attention_forward(
                k,
                &q.transpose(1, 2)?,
                &key.transpose(1, 2)?,
                &v.transpose(1, 2)?,
                &ctx.groups(layer.window),
                self.dtype,
            )?,
        };
        let [o]: [Tensor; 1] = project(&[O], &attn)?.try_into().expect("one");
        let (x2, h2) = ops::add_rms_norm(k, x, &o, &layer.post_attention_layernorm, eps)?;
        let [gate, up]: [Tensor; 2] = project(&[Gate, Up], &h2)?
            .try_into()
            .expect("two projections");
        let act = ops::swiglu_forward(k, &gate, &up)?;
        let [down]: [Tensor; 1] = project(&[Down], &act)?.try_into().expect("one");
        let y = ops::residual_add(k, &x2, &down)?;
        let saved = LayerSaved {
            x: x.clone(),
            h1,
            attn,
            qk_unnormed,
            q,
            k: key,
            v,
            probs,
            x2,
            h2,
            gate,
            up,
            act,
            proj,
        };
        Ok((y, saved))
    }

    /// Attention of the new queries over the cached keys and values followed by the new ones
    /// (`[b, t, heads, d]` in, `[b, t, heads·d]` out); the layer's cache becomes all of them.
    fn cached_attention(
        &self,
        q: &Tensor,
        key: &Tensor,
        v: &Tensor,
        slot: &mut Option<(Tensor, Tensor)>,
        bias: &Tensor,
    ) -> Result<Tensor> {
        let heads_first = |t: &Tensor| -> Result<Tensor> { Ok(t.transpose(1, 2)?.contiguous()?) };
        let (new_k, new_v) = (heads_first(key)?, heads_first(v)?);
        let (keys, values) = match slot.take() {
            Some((pk, pv)) => (
                Tensor::cat(&[&pk, &new_k], 2)?,
                Tensor::cat(&[&pv, &new_v], 2)?,
            ),
            None => (new_k, new_v),
        };
        let out = ops::attention(
            self.kernels,
            &heads_first(q)?,
            &keys,
            &values,
            bias,
            self.dtype,
        )?;
        *slot = Some((keys, values));
        Ok(out)
    }

    /// The gradient of the layer's input for the gradient `dy` of its output; the trained
    /// factors' gradients go to `factors`.
    pub(super) fn layer_backward(
        &self,
        layer: &DecoderLayer,
        saved: &LayerSaved,
        ctx: &LayerContext,
        dy: &Tensor,
        factors: &mut dyn FnMut(FactorGrads) -> Result<()>,
    ) -> Result<Tensor> {
        let s = saved;
        let k = self.kernels;
        let eps = self.config.rms_norm_eps;
        let (b, t, hidden) = s.x.dims3()?;
        // The summed input gradient of the projections `ps` of `input`.
        let mut back = |ps: &[(Projection, &Tensor)], input: &Tensor| -> Result<Tensor> {
            let parts: Vec<_> = ps
                .iter()
                .map(|(p, g)| (s.proj[*p].as_ref().expect("saved by the forward"), *g))
                .collect();
            lora_backward_shared(k, input, &parts, factors)
        };
        // MLP: y = x2 + down(swiglu(gate(h2), up(h2))).
        let d_act = back(&[(Down, dy)], &s.act)?;
        let (d_gate, d_up) = ops::swiglu_backward(k, &s.gate, &s.up, &d_act)?;
        let dh2 = back(&[(Gate, &d_gate), (Up, &d_up)], &s.h2)?;
        let post_norm = &layer.post_attention_layernorm;
        let dx2 = ops::rms_norm_backward_add(k, &s.x2, post_norm, eps, &dh2, dy)?;
        // Attention: x2 = x + o(attention(rope(q(h1)), rope(k(h1)), v(h1))).
        let d_attn = back(&[(O, &dx2)], &s.attn)?;
        let (dq, dk, dv) = ops::grouped_attention_backward(
            k,
            &s.q.transpose(1, 2)?,
            &s.k.transpose(1, 2)?,
            &s.v.transpose(1, 2)?,
            &ctx.groups(layer.window),
            &s.probs,
            &d_attn,
        )?;
        // Back to [b, t, heads·d] (free when the kernel wrote the projections' layout).
        let merge = |g: Tensor| -> Result<Tensor> {
            let (n, d) = (g.dim(2)?, g.dim(3)?);
            Ok(g.contiguous()?.reshape((b, t, n * d))?)
        };
        let unrotate =
            |g: &Tensor| ops::rope_thd_backward(k, &g.transpose(1, 2)?, &ctx.cos, &ctx.sin);
        let (mut dq, mut dk) = (unrotate(&dq)?, unrotate(&dk)?);
        if let (Some((q, key)), Some((q_norm, k_norm))) = (&s.qk_unnormed, &layer.qk_norm) {
            dq = ops::rms_norm_backward(q, q_norm, eps, &dq)?;
            dk = ops::rms_norm_backward(key, k_norm, eps, &dk)?;
        }
        let (dq, dk) = (merge(dq)?, merge(dk)?);
        let dv = merge(dv.transpose(1, 2)?)?;
        let dh1 = back(&[(Q, &dq), (K, &dk), (V, &dv)], &s.h1)?;
        let dx = ops::rms_norm_backward_add(k, &s.x, &layer.input_layernorm, eps, &dh1, &dx2)?;
        debug_assert_eq!(dx.dims(), &[b, t, hidden]);
        Ok(dx)
    }
}
