//! LoRA dropout whose mask is a pure function of `(seed, element index)`: drawn where the
//! tensors live (tensor ops on any device, or one fused pass on CPU), never stored, and drawn
//! again by the backward pass.
//!
//! The function is a hash modulo the prime `P = 2³¹ − 1` with every intermediate below 2⁶³, so
//! that candle's 64-bit integer ops compute it exactly on every backend: an affine map of the
//! index followed by two rounds of `h ↦ h² + c`. The CPU kernel computes the same integers, so
//! every device and both kernel paths draw the same mask from the same seed.

use super::cpu;
use super::Kernels;
use candle_core::{DType, Device, Result, Tensor};
use std::sync::Mutex;

/// The hash's modulus, a Mersenne prime.
pub(crate) const P: u64 = (1 << 31) - 1;

/// Dropout on the LoRA input: probability `p`, mask drawn from `seed`.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    pub p: f64,
    pub seed: u64,
}

/// The constants of one mask, drawn from its seed: all below `P`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaskKey {
    mul: u64,
    add: u64,
    c1: u64,
    c2: u64,
    /// An element is dropped when its hash is below this.
    threshold: u64,
    /// The kept elements' value, `1 / (1 − p)`.
    pub(crate) keep: f32,
}

impl Dropout {
    pub(crate) fn key(&self) -> MaskKey {
        let mut state = self.seed;
        let mut draw = || splitmix64(&mut state) % P;
        MaskKey {
            mul: draw().max(1),
            add: draw(),
            c1: draw(),
            c2: draw(),
            threshold: (self.p.clamp(0.0, 1.0) * P as f64).round() as u64,
            keep: (1.0 / (1.0 - self.p)) as f32,
        }
    }

    /// The mask's value at element `index`: 0 (dropped) or `1 / (1 − p)`.
    pub fn mask_at(&self, index: u64) -> f32 {
        self.key().value(index)
    }
}

impl MaskKey {
    /// `x mod P` for `x < 2⁶³`, folding the Mersenne modulus.
    #[inline]
    fn reduce(x: u64) -> u64 {
        let x = (x & P) + (x >> 31);
        let x = (x & P) + (x >> 31);
        if x >= P {
            x - P
        } else {
            x
        }
    }

    /// The hash of element `index` (`index < P`), in `0..P`.
    #[inline]
    pub(crate) fn hash(&self, index: u64) -> u64 {
        let h = Self::reduce(index * self.mul + self.add);
        let h = Self::reduce(h * h + self.c1);
        Self::reduce(h * h + self.c2)
    }

    #[inline]
    pub(crate) fn value(&self, index: u64) -> f32 {
        if self.hash(index) < self.threshold {
            0.0
        } else {
            self.keep
        }
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Elements of one mask must be indexable below `P`.
fn check_size(n: usize) -> Result<()> {
    if n as u64 >= P {
        candle_core::bail!("dropout: a mask of {n} elements is larger than 2^31 - 1");
    }
    Ok(())
}

/// The dropout mask of `dims` (f32: 0 or 1/(1-p)) that `d` draws, computed on `device` with
/// tensor ops.
pub fn dropout_mask(dims: &[usize], d: Dropout, device: &Device) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    check_size(n)?;
    let cols = dims.last().copied().unwrap_or(1).max(1);
    let rows = n / cols;
    let key = d.key();
    let p = modulus(device)?;
    // t mod P by integer division (candle's integer ops have no remainder); squares by a binary
    // product (integer unary ops are not implemented).
    let modp = |t: Tensor| -> Result<Tensor> { &t - t.broadcast_div(&p)?.affine(P as f64, 0.0)? };
    let square = |t: &Tensor| t * t;
    let index = aranges(rows, device)?
        .reshape((rows, 1))?
        .affine(cols as f64, 0.0)?
        .broadcast_add(&aranges(cols, device)?.reshape((1, cols))?)?;
    let h = modp(index.affine(key.mul as f64, key.add as f64)?)?;
    let h = modp(square(&h)?.affine(1.0, key.c1 as f64)?)?;
    let h = modp(square(&h)?.affine(1.0, key.c2 as f64)?)?;
    // h ≥ threshold ⟺ ⌊(h + P − threshold) / P⌋ = 1, since h < P.
    let kept = h
        .affine(1.0, (P - key.threshold) as f64)?
        .broadcast_div(&p)?
        .to_dtype(DType::F32)?;
    kept.affine(key.keep as f64, 0.0)?.reshape(dims)
}

/// `x ⊙ mask` in f32, the mask [`dropout_mask`] draws for `x`'s shape.
pub fn apply_dropout(kernels: Kernels, x: &Tensor, d: Dropout) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    check_size(x.elem_count())?;
    if kernels.cpu_dtype(&[&x]).is_some() {
        if let Some(out) = cpu::dropout::apply(&x, d.key())? {
            return Ok(out);
        }
    }
    &x * dropout_mask(x.dims(), d, x.device())?
}

/// `acc + x ⊙ mask` in f32 (the masked input gradient of a LoRA branch added to the rest).
pub fn add_dropped(kernels: Kernels, acc: &Tensor, x: &Tensor, d: Dropout) -> Result<Tensor> {
    let (acc, x) = (acc.to_dtype(DType::F32)?, x.to_dtype(DType::F32)?);
    if acc.dims() != x.dims() {
        candle_core::bail!("dropout: adding {:?} to {:?}", x.dims(), acc.dims());
    }
    check_size(x.elem_count())?;
    if kernels.cpu_dtype(&[&acc, &x]).is_some() {
        if let Some(out) = cpu::dropout::add(&acc, &x, d.key())? {
            return Ok(out);
        }
    }
    &acc + (&x * dropout_mask(x.dims(), d, x.device())?)?
}

/// `[0, 1, …, n)` as i64 on `device`, narrowed from one table per device that grows as needed:
/// a step uploads nothing once the table is long enough.
fn aranges(n: usize, device: &Device) -> Result<Tensor> {
    static TABLES: Mutex<Vec<Tensor>> = Mutex::new(Vec::new());
    let mut tables = TABLES
        .lock()
        .map_err(|_| candle_core::Error::Msg("arange cache".into()))?;
    let slot = tables.iter().position(|t| t.device().same_device(device));
    match slot {
        Some(i) if tables[i].dim(0)? >= n => tables[i].narrow(0, 0, n),
        _ => {
            let len = n.next_power_of_two().max(1024);
            let table = Tensor::arange(0i64, len as i64, device)?;
            match slot {
                Some(i) => tables[i] = table.clone(),
                None => tables.push(table.clone()),
            }
            table.narrow(0, 0, n)
        }
    }
}

/// `P` as a one-element i64 tensor on `device`, made once per device.
fn modulus(device: &Device) -> Result<Tensor> {
    static MODULI: Mutex<Vec<Tensor>> = Mutex::new(Vec::new());
    let mut moduli = MODULI
        .lock()
        .map_err(|_| candle_core::Error::Msg("modulus cache".into()))?;
    if let Some(t) = moduli.iter().find(|t| t.device().same_device(device)) {
        return Ok(t.clone());
    }
    let t = Tensor::new(&[P as i64], device)?;
    moduli.push(t.clone());
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(n: usize, d: Dropout) -> Vec<f32> {
        dropout_mask(&[n], d, &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn the_mask_drops_about_p_and_scales_the_rest() {
        let d = Dropout { p: 0.3, seed: 7 };
        let m = mask(100_000, d);
        let dropped = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        // 4.6 standard deviations of a binomial(100000, 0.3) fraction.
        assert!((dropped - 0.3).abs() < 0.0067, "dropped {dropped}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
        // Another seed draws another mask; the same seed, the same.
        assert_eq!(m, mask(100_000, d));
        assert_ne!(m, mask(100_000, Dropout { seed: 8, ..d }));
    }

    #[test]
    fn neighbouring_elements_are_drawn_independently() {
        // For independent draws P(both dropped) = p²; a linear hash would give lattice patterns.
        let d = Dropout { p: 0.5, seed: 11 };
        let (rows, cols) = (200, 500);
        let m = dropout_mask(&[rows, cols], d, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for offset in [1, 2, 3, cols] {
            let pairs = m.len() - offset;
            let both = (0..pairs)
                .filter(|&i| m[i] == 0.0 && m[i + offset] == 0.0)
                .count() as f64
                / pairs as f64;
            // 0.25 ± 5 standard deviations of the pair fraction.
            assert!((both - 0.25).abs() < 0.01, "offset {offset}: {both}");
        }
    }

    #[test]
    fn tensor_ops_and_the_cpu_kernel_draw_the_same_mask() {
        let d = Dropout { p: 0.25, seed: 3 };
        let x = Tensor::randn(0f32, 1.0, (37, 70), &Device::Cpu).unwrap();
        let by_index: Vec<f32> = (0..37 * 70).map(|i| d.mask_at(i)).collect();
        let generic = dropout_mask(&[37, 70], d, &Device::Cpu).unwrap();
        let flat: Vec<f32> = generic.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(flat, by_index);
        let acc = Tensor::randn(0f32, 1.0, (37, 70), &Device::Cpu).unwrap();
        for kernels in [Kernels::Auto, Kernels::Generic] {
            let applied = apply_dropout(kernels, &x, d).unwrap();
            let want = (&x * &generic).unwrap();
            let diff = (applied - &want).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{kernels:?}");
            let added = add_dropped(kernels, &acc, &x, d).unwrap();
            let diff = (added - (&acc + &want).unwrap()).unwrap();
            let diff = diff.abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{kernels:?}");
        }
    }
}
