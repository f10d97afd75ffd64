//! Stacked LoRAs as one: `Σ s_i·B_i·A_i = s·[B_1·s_1/s | B_2·s_2/s | …]·[A_1; A_2; …]`, a LoRA of
//! rank `Σ r_i`. With `lora_alpha = Σ r_i` the combined scale `s` is 1.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, Var};

use crate::model::{Adapter, LoraConfig, LoraPair, ModelConfig, PerProjection};

pub fn combine(adapters: &[&Adapter], model: &ModelConfig) -> Result<Adapter> {
    if adapters.is_empty() {
        bail!("nothing to combine");
    }
    let rank: usize = adapters.iter().map(|a| a.config.r).sum();
    let mut layers: Vec<PerProjection<Option<LoraPair>>> = (0..model.num_hidden_layers)
        .map(|_| Default::default())
        .collect();
    let mut targets = Vec::new();
    for (l, slots) in layers.iter_mut().enumerate() {
        for (p, slot) in slots.iter_mut() {
            if adapters.iter().all(|a| a.pair(l, p).is_none()) {
                continue;
            }
            let (out, inp) = model.projection_shape(p);
            let (mut a_parts, mut b_parts) = (Vec::new(), Vec::new());
            for adapter in adapters {
                let r = adapter.config.r;
                match adapter.pair(l, p) {
                    Some(pair) => {
                        a_parts.push(pair.a.as_tensor().detach());
                        b_parts.push((pair.b.as_tensor().detach() * adapter.scale())?);
                    }
                    None => {
                        let device = adapters[0].vars()[0].device().clone();
                        a_parts.push(Tensor::zeros((r, inp), DType::F32, &device)?);
                        b_parts.push(Tensor::zeros((out, r), DType::F32, &device)?);
                    }
                }
            }
            *slot = Some(LoraPair {
                a: Var::from_tensor(&Tensor::cat(&a_parts, 0)?)?,
                b: Var::from_tensor(&Tensor::cat(&b_parts, 1)?)?,
            });
            if !targets.contains(&p) {
                targets.push(p);
            }
        }
    }
    targets.sort();
    let targets = targets.iter().map(|p| p.name().to_string()).collect();
    Ok(Adapter {
        config: LoraConfig {
            r: rank,
            lora_alpha: rank as f64,
            lora_dropout: 0.0,
            target_modules: targets,
            use_rslora: false,
        },
        frozen: true,
        layers,
    })
}
