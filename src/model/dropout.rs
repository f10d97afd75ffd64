//! LoRA dropout whose mask is a pure function of `(seed, element index)` (a SplitMix64 hash of
//! the two), not of a sequential generator: it is drawn in parallel, fused with its
//! application, and never stored, since the backward pass draws the same mask again.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use crate::ops::cpu;

/// Dropout on the LoRA input: probability `p`, mask drawn from `seed`, so a training step is
/// reproducible (candle's CPU generator cannot be seeded).
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    pub p: f64,
    pub seed: u64,
}

impl Dropout {
    /// The mask's value at element `index`: 0 (dropped) or `1 / (1 − p)`.
    fn mask_at(&self, index: u64) -> f32 {
        let mut z = self
            .seed
            .wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let uniform = (z >> 11) as f64 / (1u64 << 53) as f64;
        if uniform < self.p {
            0.0
        } else {
            (1.0 / (1.0 - self.p)) as f32
        }
    }
}

/// The dropout mask `[shape]` (f32: 0 or 1/(1-p)) that `d` draws.
pub fn dropout_mask(shape: &[usize], d: Dropout, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mask = cpu::par_fill::<f32>(n, cpu::ELEMENTWISE_CHUNK, |c, chunk| {
        let start = (c * cpu::ELEMENTWISE_CHUNK) as u64;
        for (i, m) in chunk.iter_mut().enumerate() {
            m.write(d.mask_at(start + i as u64));
        }
    });
    Ok(Tensor::from_vec(mask, shape, device)?)
}

/// `x ⊙ mask` in f32, the mask that [`dropout_mask`] draws for `x`'s shape: on CPU in one
/// parallel pass without the mask ever existing.
pub fn apply_dropout(x: &Tensor, d: Dropout) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let fused = cpu::with_contiguous::<f32, _, 1>([&x], |[xs]| {
        cpu::par_fill::<f32>(xs.len(), cpu::ELEMENTWISE_CHUNK, |c, chunk| {
            let start = c * cpu::ELEMENTWISE_CHUNK;
            for (i, o) in chunk.iter_mut().enumerate() {
                o.write(xs[start + i] * d.mask_at((start + i) as u64));
            }
        })
    });
    match fused {
        Some(out) => Ok(cpu::tensor_of(out, x.dims())?),
        None => Ok((&x * dropout_mask(x.dims(), d, x.device())?)?),
    }
}

/// `acc + x ⊙ mask` in f32 (the masked input gradient of a LoRA branch added to the rest), one
/// pass on CPU.
pub fn add_dropped(acc: &Tensor, x: &Tensor, d: Dropout) -> Result<Tensor> {
    let (acc, x) = (acc.to_dtype(DType::F32)?, x.to_dtype(DType::F32)?);
    if acc.dims() != x.dims() {
        anyhow::bail!("dropout: adding {:?} to {:?}", x.dims(), acc.dims());
    }
    let fused = cpu::with_contiguous::<f32, _, 2>([&acc, &x], |[a, xs]| {
        cpu::par_fill::<f32>(xs.len(), cpu::ELEMENTWISE_CHUNK, |c, chunk| {
            let start = c * cpu::ELEMENTWISE_CHUNK;
            for (i, o) in chunk.iter_mut().enumerate() {
                let at = start + i;
                o.write(a[at] + xs[at] * d.mask_at(at as u64));
            }
        })
    });
    match fused {
        Some(out) => Ok(cpu::tensor_of(out, x.dims())?),
        None => Ok((&acc + apply_dropout(&x, d)?)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_drops_about_p_and_scales_the_rest() {
        let d = Dropout { p: 0.3, seed: 7 };
        let m: Vec<f32> = dropout_mask(&[100_000], d, &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap();
        let dropped = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        assert!((dropped - 0.3).abs() < 0.01, "dropped {dropped}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
        // Another seed draws another mask; the same seed, the same.
        let again: Vec<f32> = dropout_mask(&[100_000], d, &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap();
        let other: Vec<f32> = dropout_mask(&[100_000], Dropout { seed: 8, ..d }, &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(m, again);
        assert_ne!(m, other);
    }

    #[test]
    fn applying_equals_multiplying_by_the_mask() {
        let d = Dropout { p: 0.25, seed: 3 };
        let x = Tensor::randn(0f32, 1.0, (37, 70), &Device::Cpu).unwrap();
        let fused = apply_dropout(&x, d).unwrap();
        let plain = (&x * dropout_mask(&[37, 70], d, &Device::Cpu).unwrap()).unwrap();
        let diff = (fused - &plain).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        let acc = Tensor::randn(0f32, 1.0, (37, 70), &Device::Cpu).unwrap();
        let added = add_dropped(&acc, &x, d).unwrap();
        let diff = (added - (&acc + &plain).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }
}
