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
        Ok(Self {
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
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
