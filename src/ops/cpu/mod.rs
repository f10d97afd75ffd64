//! The CPU kernels of the training ops, for f32 and f64 (the finite-difference gradient checks
//! run f64): matrix products that accumulate into one output, and element-wise passes run over
//! all cores in one sweep.
//!
//! candle's CPU backend runs most element-wise ops on one thread, zero-fills every matmul output
//! before writing it, and needs one pass (and one allocation) per op: on a 2-core machine that
//! overhead took about as long as the matmuls. Every kernel returns `None` when its inputs are
//! not contiguous CPU tensors of its type; whether a kernel is tried at all is decided by
//! [`super::Kernels`] alone. Raw pointers stay inside this module.

pub(crate) mod attention;
pub(crate) mod dropout;
mod gemm;
pub(crate) mod gemv;
pub(crate) mod head;
pub(crate) mod norm;
pub(crate) mod qlinear;
pub(crate) mod rope;
pub(crate) mod simd;
pub(crate) mod swiglu;

pub(crate) use gemm::{gemm_into, gemm_strided, matmul_sum, Mat};

use candle_core::{DType, Device, Layout, Result, Storage, Tensor, WithDType};
use std::mem::MaybeUninit;

/// The element types the fast paths run on.
pub trait Real:
    WithDType + num_traits::Float + std::ops::AddAssign + std::ops::MulAssign + Send + Sync + 'static
{
}
impl Real for f32 {}
impl Real for f64 {}

/// The CPU elements of `t` when it is a CPU tensor of `T`, with its layout.
pub fn slice_of<'a, T: Real>(storage: &'a Storage, layout: &Layout) -> Option<&'a [T]> {
    match storage {
        Storage::Cpu(cpu) => {
            // as_slice checks the dtype.
            let all = cpu.as_slice::<T>().ok()?;
            Some(&all[layout.start_offset()..])
        }
        _ => None,
    }
}

/// Whether every tensor is a CPU tensor of the same dtype, f32 or f64.
pub fn fast_dtype(tensors: &[&Tensor]) -> Option<DType> {
    let dtype = tensors.first()?.dtype();
    let ok = matches!(dtype, DType::F32 | DType::F64)
        && tensors
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == dtype);
    ok.then_some(dtype)
}

/// A vector of `n` elements written by `fill` in parallel over chunks of `chunk` elements:
/// `fill(chunk_index, chunk)` must write every element of its chunk.
pub fn par_fill<T: Real>(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    use rayon::prelude::*;
    let mut out: Vec<T> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| fill(i, c));
    // SAFETY: every chunk was written by `fill`.
    unsafe { out.set_len(n) };
    out
}

/// Two vectors of `n` elements written together by `fill(chunk_index, chunk_a, chunk_b)`, in
/// parallel over chunks of `chunk` elements; `fill` must write both chunks in full.
pub fn par_fill2<T: Real>(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>], &mut [MaybeUninit<T>]) + Sync,
) -> (Vec<T>, Vec<T>) {
    use rayon::prelude::*;
    let (mut a, mut b): (Vec<T>, Vec<T>) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let chunk = chunk.max(1);
    (a.spare_capacity_mut()[..n].par_chunks_mut(chunk))
        .zip(b.spare_capacity_mut()[..n].par_chunks_mut(chunk))
        .enumerate()
        .for_each(|(i, (ca, cb))| fill(i, ca, cb));
    // SAFETY: every chunk of both was written by `fill`.
    unsafe {
        a.set_len(n);
        b.set_len(n);
    }
    (a, b)
}

/// Elements per parallel chunk of an element-wise pass.
pub const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// The contiguous elements of a CPU tensor of `T`, or `None`.
pub fn contiguous_slice<'a, T: Real>(storage: &'a Storage, layout: &Layout) -> Option<&'a [T]> {
    if !layout.is_contiguous() {
        return None;
    }
    let s = slice_of::<T>(storage, layout)?;
    Some(&s[..layout.shape().elem_count()])
}

/// `f` over the elements of `tensors` when every one is a contiguous CPU tensor of `T`;
/// `None` (nothing run) otherwise. The storages stay read-locked while `f` runs.
pub fn with_contiguous<T: Real, R, const N: usize>(
    tensors: [&Tensor; N],
    f: impl FnOnce([&[T]; N]) -> R,
) -> Option<R> {
    let guards = tensors.map(|t| t.storage_and_layout());
    let mut slices: [&[T]; N] = [&[]; N];
    for (slot, (storage, layout)) in slices.iter_mut().zip(&guards) {
        *slot = contiguous_slice::<T>(storage, layout)?;
    }
    Some(f(slices))
}

/// `a + b` of same-shaped tensors in one parallel pass; `None` when they are not contiguous CPU
/// tensors of one fast dtype.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    if a.dims() != b.dims() {
        return Ok(None);
    }
    fn add_as<T: Real>(a: &Tensor, b: &Tensor) -> Option<Vec<T>> {
        with_contiguous::<T, _, 2>([a, b], |[xs, ys]| {
            par_fill::<T>(xs.len(), ELEMENTWISE_CHUNK, |c, out| {
                let at = c * ELEMENTWISE_CHUNK;
                for ((o, &x), &y) in out.iter_mut().zip(&xs[at..]).zip(&ys[at..]) {
                    o.write(x + y);
                }
            })
        })
    }
    let sum = match fast_dtype(&[a, b]) {
        Some(DType::F32) => add_as::<f32>(a, b).map(|v| tensor_of(v, a.dims())),
        Some(DType::F64) => add_as::<f64>(a, b).map(|v| tensor_of(v, a.dims())),
        _ => None,
    };
    sum.transpose()
}

/// The elements of a contiguous CPU tensor of u32 (token ids), copied; `None` elsewhere.
pub fn u32_values(t: &Tensor) -> Option<Vec<u32>> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return None;
    };
    let (start, end) = layout.contiguous_offsets()?;
    Some(cpu.as_slice::<u32>().ok()?[start..end].to_vec())
}

/// A CPU tensor from computed elements.
pub fn tensor_of<T: Real>(data: Vec<T>, dims: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, dims, &Device::Cpu)
}

/// A raw pointer that parallel tasks may share, each writing its own disjoint elements.
#[derive(Clone, Copy)]
pub struct SharedMut<T>(pub *mut T);
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so closures capture the shareable wrapper, not its field).
    pub fn get(self) -> *mut T {
        self.0
    }
}
