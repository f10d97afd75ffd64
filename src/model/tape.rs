//! A training forward whose backward runs one decoder layer at a time.
//!
//! candle's `backward` keeps the gradient of every intermediate tensor until it returns, so
//! one backward over the whole model holds several times the activations. Here each layer's
//! input is a leaf: the loss's backward stops at the last layer's output, and
//! [`LayerTape::backward`] then walks down the layers, each with its own short-lived gradient
//! store. With gradient checkpointing the forward keeps only each layer's input and the
//! backward recomputes the layer (same dropout masks: they are a function of the seed).

use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::{Attend, Inputs, Model, Pass};
use crate::model::Adapter;

/// What a training forward kept for its backward pass.
pub struct LayerTape<'a> {
    model: &'a Model,
    adapters: Vec<&'a Adapter>,
    dropout_seed: u64,
    attend: Attend,
    cos: Tensor,
    sin: Tensor,
    /// With checkpointing: each layer's input, untracked, to recompute the layer from.
    inputs: Vec<Tensor>,
    /// Without checkpointing: each layer's input as a leaf and its tracked output.
    kept: Vec<(Var, Tensor)>,
    /// The last layer's output as a leaf; the final norm and the head start from it.
    top: Var,
}

impl Model {
    /// Final hidden states (after the last norm) of a training pass over `inputs` with
    /// `adapters`, tracked back to the tape's top; the tape carries the gradient further down.
    pub fn hidden_states_layered<'a>(
        &'a self,
        inputs: Inputs,
        adapters: &[&'a Adapter],
        dropout_seed: u64,
        checkpointing: bool,
    ) -> Result<(Tensor, LayerTape<'a>)> {
        let Inputs {
            mut x,
            attend,
            cos,
            sin,
        } = inputs;
        let pass = Pass {
            record_graph: !checkpointing,
            ..Pass::train(adapters, dropout_seed)
        };
        let (mut inputs, mut kept) = (Vec::new(), Vec::new());
        for layer in &self.layers {
            if checkpointing {
                inputs.push(x.clone());
                x = self.layer_forward(layer, &x, &attend, &cos, &sin, pass)?;
            } else {
                let leaf = Var::from_tensor(&x)?;
                let y = self.layer_forward(layer, leaf.as_tensor(), &attend, &cos, &sin, pass)?;
                x = y.detach();
                kept.push((leaf, y));
            }
        }
        let top = Var::from_tensor(&x)?;
        let hidden = crate::ops::rms_norm(top.as_tensor(), &self.norm, self.config.rms_norm_eps)?;
        let tape = LayerTape {
            model: self,
            adapters: adapters.to_vec(),
            dropout_seed,
            attend,
            cos,
            sin,
            inputs,
            kept,
            top,
        };
        Ok((hidden, tape))
    }
}

impl LayerTape<'_> {
    /// Carries the gradient that `loss_grads` (the loss's backward) holds for the top down
    /// through every layer, handing each layer's gradient store to `absorb` (which picks the
    /// trainable adapters' gradients out of it) before dropping it.
    pub fn backward(
        mut self,
        loss_grads: &GradStore,
        absorb: &mut dyn FnMut(&GradStore) -> Result<()>,
    ) -> Result<()> {
        let Some(mut grad) = loss_grads.get(self.top.as_tensor()).cloned() else {
            return Ok(());
        };
        let pass = Pass::train(&self.adapters, self.dropout_seed);
        let model = self.model;
        for (index, layer) in model.layers.iter().enumerate().rev() {
            let (leaf, output) = match self.kept.pop() {
                Some(kept) => kept,
                None => {
                    let leaf = Var::from_tensor(&self.inputs[index])?;
                    let y = model.layer_forward(
                        layer,
                        leaf.as_tensor(),
                        &self.attend,
                        &self.cos,
                        &self.sin,
                        pass,
                    )?;
                    (leaf, y)
                }
            };
            // d(Σ output·grad)/dθ is the vector-Jacobian product the layer passes down.
            let store = (output * &grad)?.sum_all()?.backward()?;
            absorb(&store)?;
            if index > 0 {
                grad = store
                    .get(leaf.as_tensor())
                    .cloned()
                    .with_context(|| format!("no gradient reached the input of layer {index}"))?;
            }
        }
        Ok(())
    }
}
