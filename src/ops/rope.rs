//! Rotary position embeddings (the rotate-half layout of Hugging Face Llama/Mistral).

use super::attach_gradient;
use super::cpu::{self, Real};
use candle_core::{DType, Result, Tensor};
use std::sync::Arc;

/// Rotates `x: [batch, heads, seq, head_dim]` by the angles whose `cos`/`sin` are `[seq, head_dim/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let y = candle_nn::rotary_emb::rope(&x.detach().contiguous()?, cos, sin)?;
    let (cos, sin) = (cos.clone(), sin.clone());
    attach_gradient(
        x,
        y,
        Arc::new(move |_, _, grad| rope_backward(grad, &cos, &sin)),
    )
}

/// The input gradient of [`rope`] for the output gradient `grad`.
pub fn rope_backward(grad: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    // A rotation's transpose is the rotation by the opposite angle.
    candle_nn::rotary_emb::rope(&grad.contiguous()?, cos, &sin.neg()?)
}

/// [`rope`] for the projections' layout `x: [batch, seq, heads, head_dim]`, on an untracked
/// tensor.
pub fn rope_thd(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    rotate_thd(x, cos, sin, false)
}

/// The input gradient of [`rope_thd`] for the output gradient `grad`.
pub fn rope_thd_backward(grad: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    rotate_thd(grad, cos, sin, true)
}

fn rotate_thd(x: &Tensor, cos: &Tensor, sin: &Tensor, inverse: bool) -> Result<Tensor> {
    let x = x.contiguous()?;
    let fast = match cpu::fast_dtype(&[&x, cos, sin]) {
        Some(DType::F32) => cpu_rotate::<f32>(&x, cos, sin, inverse)?,
        Some(DType::F64) => cpu_rotate::<f64>(&x, cos, sin, inverse)?,
        _ => None,
    };
    match fast {
        Some(y) => Ok(y),
        None if inverse => candle_nn::rotary_emb::rope_thd(&x, cos, &sin.neg()?),
        // candle's kernel splits the work by batch row only: one thread for a packed batch.
        None => candle_nn::rotary_emb::rope_thd(&x, cos, sin),
    }
}

/// One parallel pass over the `[batch·seq]` rows; `None` when the tables are not the shared
/// `[≥ seq, head_dim / 2]` pair (candle's op handles per-row tables).
fn cpu_rotate<T: Real>(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    inverse: bool,
) -> Result<Option<Tensor>> {
    let (_, seq, heads, d) = x.dims4()?;
    let half = d / 2;
    if cos.rank() != 2 || cos.dims() != sin.dims() || cos.dim(1)? != half || cos.dim(0)? < seq {
        return Ok(None);
    }
    if 2 * half != d {
        candle_core::bail!("rope: head_dim {d} is odd");
    }
    let row = heads * d;
    let rows_per_chunk = (cpu::ELEMENTWISE_CHUNK / row).max(1);
    let out = cpu::with_contiguous::<T, _, 3>([x, cos, sin], |[xs, cos, sin]| {
        cpu::par_fill::<T>(xs.len(), rows_per_chunk * row, |c, chunk| {
            let first = c * rows_per_chunk;
            for (r, out) in chunk.chunks_mut(row).enumerate() {
                let at = (first + r) * row;
                let pos = (first + r) % seq;
                let (c, s) = (
                    &cos[pos * half..(pos + 1) * half],
                    &sin[pos * half..(pos + 1) * half],
                );
                for (o, x) in out.chunks_mut(d).zip(xs[at..at + row].chunks(d)) {
                    rotate_head(o, x, c, s, inverse);
                }
            }
        })
    });
    out.map(|out| cpu::tensor_of(out, x.dims())).transpose()
}

/// `out = x·cos + rotate_half(x)·sin` for one head (`sin` negated for the inverse rotation).
#[inline]
fn rotate_head<T: Real>(
    out: &mut [std::mem::MaybeUninit<T>],
    x: &[T],
    cos: &[T],
    sin: &[T],
    inverse: bool,
) {
    let half = cos.len();
    let (x1, x2) = x.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    let sign = if inverse { -T::one() } else { T::one() };
    for i in 0..half {
        let s = sign * sin[i];
        o1[i].write(x1[i] * cos[i] - x2[i] * s);
        o2[i].write(x2[i] * cos[i] + x1[i] * s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn inputs(dtype: DType) -> (Tensor, Tensor, Tensor) {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 3, 8), &dev).unwrap();
        let angles = Tensor::randn(0f32, 2.0, (7, 4), &dev).unwrap();
        // Tables computed in the test's dtype, so that cos² + sin² = 1 to its precision.
        let angles = angles.to_dtype(dtype).unwrap();
        (
            x.to_dtype(dtype).unwrap(),
            angles.cos().unwrap(),
            angles.sin().unwrap(),
        )
    }

    #[test]
    fn cpu_rotation_matches_candles_kernel() {
        for dtype in [DType::F32, DType::F64] {
            let (x, cos, sin) = inputs(dtype);
            let (c5, s5) = (cos.narrow(0, 0, 5).unwrap(), sin.narrow(0, 0, 5).unwrap());
            // candle's op has no f64 CPU path: compare in f32.
            let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want = candle_nn::rotary_emb::rope_thd(&f32(&x), &f32(&c5), &f32(&s5)).unwrap();
            let got = f32(&rope_thd(&x, &cos, &sin).unwrap());
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            // Tolerance: f32 rounding of a two-term sum of unit-size values.
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-6, "{dtype:?}: {diff}");
        }
    }

    #[test]
    fn backward_is_the_inverse_rotation() {
        let (x, cos, sin) = inputs(DType::F64);
        let back = rope_thd_backward(&rope_thd(&x, &cos, &sin).unwrap(), &cos, &sin).unwrap();
        let diff = (back - &x).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12, "{diff}");
    }
}
