//! A training forward whose backward runs one decoder layer at a time.
//!
//! The decoder layers build no autograd graph: each keeps the activations its written-out
//! backward needs ([`super::layer`]). The last layer's output is a leaf: the loss's backward
//! (candle's autograd over the final norm, the head and the loss) stops there, and
//! [`LayerTape::backward`] carries the gradient down the layers. With gradient checkpointing
//! the forward keeps only each layer's input and the backward recomputes the layer (same
//! dropout masks: they are a function of the seed).

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::layer::{LayerContext, LayerSaved};
use super::{Inputs, Model, Pass};
use crate::model::lora_linear::FactorGrads;
use crate::model::Adapter;

/// What a training forward kept for its backward pass.
pub struct LayerTape<'a> {
    model: &'a Model,
    adapters: Vec<&'a Adapter>,
    dropout_seed: u64,
    context: LayerContext,
    /// With checkpointing: each layer's input, to recompute the layer from.
    inputs: Vec<Tensor>,
    /// Without checkpointing: each layer's saved activations.
    kept: Vec<LayerSaved>,
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
        let Inputs { mut x, context } = inputs;
        let pass = Pass::train(adapters, dropout_seed);
        let (mut inputs, mut kept) = (Vec::new(), Vec::new());
        for layer in &self.layers {
            if checkpointing {
                inputs.push(x.clone());
            }
            let (y, saved) = self.layer_forward(layer, &x, &context, pass, !checkpointing, None)?;
            if !checkpointing {
                kept.push(saved);
            }
            x = y;
        }
        let top = Var::from_tensor(&x)?;
        let eps = self.config.rms_norm_eps;
        let hidden = crate::ops::rms_norm(self.kernels, top.as_tensor(), &self.norm, eps)?;
        let tape = LayerTape {
            model: self,
            adapters: adapters.to_vec(),
            dropout_seed,
            context,
            inputs,
            kept,
            top,
        };
        Ok((hidden, tape))
    }
}

impl LayerTape<'_> {
    /// Carries the gradient that `loss_grads` (the loss's backward) holds for the top down
    /// through every layer, handing the trained LoRA factors' gradients to `factors`.
    pub fn backward(
        mut self,
        loss_grads: &GradStore,
        factors: &mut dyn FnMut(FactorGrads) -> Result<()>,
    ) -> Result<()> {
        let Some(mut grad) = loss_grads.get(self.top.as_tensor()).cloned() else {
            return Ok(());
        };
        let pass = Pass::train(&self.adapters, self.dropout_seed);
        let model = self.model;
        let ctx = &self.context;
        for (index, layer) in model.layers.iter().enumerate().rev() {
            let saved = match self.kept.pop() {
                Some(saved) => saved,
                None => {
                    model
                        .layer_forward(layer, &self.inputs[index], ctx, pass, true, None)?
                        .1
                }
            };
            grad = model.layer_backward(layer, &saved, ctx, &grad, factors)?;
        }
        Ok(())
    }
}
