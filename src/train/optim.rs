//! AdamW with torch's semantics (decoupled weight decay, bias correction), global-norm
//! gradient clipping, and a state that can be saved and restored exactly.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Var>,
    /// First and second moments, f32, one pair per parameter.
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Steps taken so far.
    pub step: usize,
}

impl AdamW {
    pub fn new(params: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        let zeros = |p: &Var| p.as_tensor().zeros_like()?.to_dtype(DType::F32);
        let m = params
            .iter()
            .map(zeros)
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = params
            .iter()
            .map(zeros)
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            config,
            params,
            m,
            v,
            step: 0,
        })
    }

    /// One update with learning rate `lr` from `grads` (one per parameter, in order):
    /// `p ← p(1 − lr·wd)`, then Adam with bias correction.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            bail!(
                "optimizer: {} gradients for {} parameters",
                grads.len(),
                self.params.len()
            );
        }
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for (i, (p, g)) in self.params.iter().zip(grads).enumerate() {
            let g = g.to_dtype(DType::F32)?;
            self.m[i] = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            self.v[i] = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((self.v[i].sqrt()? / bias2.sqrt())? + c.eps)?;
            let update = ((&self.m[i] / denom)? * (lr / bias1))?;
            let mut w = p.as_tensor().to_dtype(DType::F32)?;
            if c.weight_decay != 0.0 {
                w = (w * (1.0 - lr * c.weight_decay))?;
            }
            p.set(&(w - update)?.to_dtype(p.dtype())?)?;
        }
        Ok(())
    }

    /// Saves moments and step count to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut data: Vec<(String, Tensor)> = Vec::new();
        for i in 0..self.params.len() {
            data.push((format!("m.{i}"), self.m[i].clone()));
            data.push((format!("v.{i}"), self.v[i].clone()));
        }
        data.push((
            "step".into(),
            Tensor::new(&[self.step as u32], &Device::Cpu)?,
        ));
        crate::adapter::peft::write_safetensors(&data, path)
    }

    /// Restores what [`AdamW::save`] wrote, for the same parameters.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let device = self
            .params
            .first()
            .map(|p| p.device().clone())
            .unwrap_or(Device::Cpu);
        let mut t: HashMap<String, Tensor> = candle_core::safetensors::load(path, &device)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("{}: cannot read optimizer state", path.display()))?;
        for i in 0..self.params.len() {
            let (m, v) = (t.remove(&format!("m.{i}")), t.remove(&format!("v.{i}")));
            match (m, v) {
                (Some(m), Some(v)) if m.dims() == self.params[i].dims() => {
                    self.m[i] = m;
                    self.v[i] = v;
                }
                _ => bail!(
                    "{}: optimizer state does not fit parameter {i}",
                    path.display()
                ),
            }
        }
        let step = t.remove("step").context("optimizer state has no step")?;
        self.step = crate::ops::host::scalar(&step)? as usize;
        Ok(())
    }
}

/// Global L2 norm of `grads`; when above `max_norm`, scales them by `max_norm / (norm + 1e-6)`
/// (torch's `clip_grad_norm_`). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    // Summed on the device, one value read back.
    let squares = grads
        .iter()
        .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all()?.reshape(1))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let norm = match squares.is_empty() {
        true => 0.0,
        false => (crate::ops::host::scalar(&Tensor::cat(&squares, 0)?.sum_all()?)? as f64).sqrt(),
    };
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two steps of torch.optim.AdamW(lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1) on
    /// p = [1, -2, 3] with gradients [0.5, -1, 2] then [0.1, 0.2, -0.3] (computed with torch 2.15).
    #[test]
    fn matches_torch_adamw() {
        let p = Var::new(&[1f32, -2., 3.], &Device::Cpu).unwrap();
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(vec![p.clone()], cfg).unwrap();
        let g1 = Tensor::new(&[0.5f32, -1., 2.], &Device::Cpu).unwrap();
        let g2 = Tensor::new(&[0.1f32, 0.2, -0.3], &Device::Cpu).unwrap();
        opt.step(&[g1], 0.1).unwrap();
        opt.step(&[g2], 0.1).unwrap();
        let got = p.as_tensor().to_vec1::<f32>().unwrap();
        let want = [0.800_627_6_f32, -1.809_990_3, 2.785_960_7];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut g = vec![Tensor::new(&[3f32, 4.], &Device::Cpu).unwrap()];
        let norm = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let v = g[0].to_vec1::<f32>().unwrap();
        assert!(
            (v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6,
            "{v:?}"
        );
    }
}
