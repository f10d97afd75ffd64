//! Rotary embedding tables: inverse frequencies (with Llama-3 or linear rescaling) and the
//! cos/sin of every position.

use crate::model::config::{ModelConfig, RopeScaling};
use candle_core::{DType, Device, Result, Tensor};

/// cos and sin tables of shape `[max_len, head_dim / 2]`.
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    pub fn new(cfg: &ModelConfig, max_len: usize, dtype: DType, device: &Device) -> Result<Self> {
        let inv_freq = inverse_frequencies(cfg);
        let half = inv_freq.len();
        // transformers computes the angles in f32; so do we, for parity at long positions.
        let mut angles = Vec::with_capacity(max_len * half);
        for pos in 0..max_len {
            angles.extend(inv_freq.iter().map(|f| pos as f32 * *f as f32));
        }
        let angles = Tensor::from_vec(angles, (max_len, half), device)?;
        let scale = attention_scaling(cfg);
        Ok(Self {
            cos: (angles.cos()? * scale)?.to_dtype(dtype)?,
            sin: (angles.sin()? * scale)?.to_dtype(dtype)?,
        })
    }

    /// The tables for positions `0..len`.
    pub fn tables(&self, len: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.cos.narrow(0, 0, len)?, self.sin.narrow(0, 0, len)?))
    }

    /// The tables at arbitrary `positions` (`[n]` u32): `[n, head_dim / 2]` each.
    pub fn at(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.cos.index_select(positions, 0)?,
            self.sin.index_select(positions, 0)?,
        ))
    }

    pub fn max_len(&self) -> usize {
        self.cos.dims()[0]
    }
}

/// The factor cos and sin are multiplied by (transformers' `attention_scaling`): 1 but for YaRN.
pub fn attention_scaling(cfg: &ModelConfig) -> f64 {
    match cfg.rope_scaling {
        RopeScaling::Yarn {
            attention_factor, ..
        } => attention_factor,
        _ => 1.0,
    }
}

/// YaRN's inverse frequencies, in f32 as transformers computes them.
fn yarn_frequencies(cfg: &ModelConfig, base: &[f64]) -> Vec<f64> {
    let RopeScaling::Yarn {
        factor,
        original_max_position_embeddings: original,
        beta_fast,
        beta_slow,
        truncate,
        ..
    } = cfg.rope_scaling
    else {
        return base.to_vec();
    };
    let dim = cfg.head_dim as f64;
    let theta = cfg.rope_theta;
    // The dimension at which a frequency turns `rotations` times over the original context.
    let correction_dim = |rotations: f64| {
        dim * (original as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
    if truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
    if low == high {
        high += 0.001;
    }
    let span = (high - low) as f32;
    (0..base.len())
        .map(|i| {
            let pos_freq = (theta as f32).powf((2 * i) as f32 / dim as f32);
            let (extrapolated, interpolated) = (1.0 / pos_freq, 1.0 / (factor as f32 * pos_freq));
            let ramp = ((i as f32 - low as f32) / span).clamp(0.0, 1.0);
            (interpolated * ramp + extrapolated * (1.0 - ramp)) as f64
        })
        .collect()
}

/// `1 / theta^(2i/d)`, rescaled as the config's `rope_scaling` says.
pub fn inverse_frequencies(cfg: &ModelConfig) -> Vec<f64> {
    let d = cfg.head_dim;
    let base: Vec<f64> = (0..d / 2)
        .map(|i| {
            // transformers: 1 / theta ** (arange(0, d, 2).float() / d), computed in f32.
            let exponent = ((2 * i) as f32 / d as f32) as f64;
            (1.0 / (cfg.rope_theta as f32).powf(exponent as f32)) as f64
        })
        .collect();
    match cfg.rope_scaling {
        RopeScaling::None => base,
        RopeScaling::Yarn { .. } => yarn_frequencies(cfg, &base),
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Factors(ref factors) => base.iter().zip(factors).map(|(f, d)| f / d).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old_len = original_max_position_embeddings as f64;
            let low_freq_wavelen = old_len / low_freq_factor;
            let high_freq_wavelen = old_len / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_len / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}
