//! Matrix products on CPU through the gemm crate: `dst = α·dst + β·A·B` with transposes as
//! strides, split between threads by hand along the longer side, and the accumulated sum of
//! several products into one output (no zero-fill, no temporaries).

use super::{fast_dtype, slice_of, Real, SharedMut};
use candle_core::{DType, Device, Layout, Result, Tensor};
use gemm::Parallelism;

/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 16;

/// Rows (or columns) per thread below which a product is not split between threads by hand.
const SPLIT_MIN: usize = 128;

/// A 2-D operand of a product: a pointer to its first element and its strides in elements.
#[derive(Clone, Copy)]
pub struct Mat<T> {
    pub ptr: *const T,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: isize,
    pub col_stride: isize,
}

// Mats point into storage held (read-locked) by the caller for the duration of the call.
unsafe impl<T> Send for Mat<T> {}
unsafe impl<T> Sync for Mat<T> {}

impl<T> Mat<T> {
    /// A row-major `rows × cols` matrix at `ptr`.
    pub fn row_major(ptr: *const T, rows: usize, cols: usize) -> Self {
        Self {
            ptr,
            rows,
            cols,
            row_stride: cols as isize,
            col_stride: 1,
        }
    }

    /// The 2-D view a rank-2 tensor's layout describes, its first element at `ptr`.
    pub fn of_layout(ptr: *const T, layout: &Layout) -> Option<Self> {
        let (rows, cols) = layout.shape().dims2().ok()?;
        let stride = layout.stride();
        Some(Self {
            ptr,
            rows,
            cols,
            row_stride: stride[0] as isize,
            col_stride: stride[1] as isize,
        })
    }

    /// Rows `start..start + rows` (a view).
    pub fn row_block(&self, start: usize, rows: usize) -> Self {
        Self {
            ptr: self.ptr.wrapping_offset(start as isize * self.row_stride),
            rows,
            ..*self
        }
    }

    /// The transpose (a view: strides swapped).
    pub fn t(&self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..*self
        }
    }
}

/// `dst[m, n] = α·dst + β·a·b` on raw operands (`a: [m, k]`, `b: [k, n]`, `dst` row-major with
/// row stride `n`).
///
/// # Safety
/// `dst` must hold `m·n` writable elements and `a`, `b` must point at live elements of the shapes
/// and strides they describe. With `read_dst` false `dst` may be uninitialised.
pub unsafe fn gemm_into<T: Real>(
    dst: *mut T,
    a: Mat<T>,
    b: Mat<T>,
    read_dst: bool,
    beta: T,
    threads: usize,
) {
    gemm_strided(dst, b.cols as isize, a, b, read_dst, beta, threads)
}

/// [`gemm_into`] with `dst` rows `dst_row_stride` elements apart.
///
/// # Safety
/// As [`gemm_into`], for a `dst` whose rows are `dst_row_stride` apart.
pub unsafe fn gemm_strided<T: Real>(
    dst: *mut T,
    dst_row_stride: isize,
    a: Mat<T>,
    b: Mat<T>,
    read_dst: bool,
    beta: T,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    debug_assert_eq!(b.rows, k);
    // gemm packs the whole left operand on the calling thread before its parallel part when it
    // is short enough (≤ 2 row blocks, e.g. 2048 tokens), leaving the other threads idle. Split
    // the product instead along its longer side: each thread packs its share of that operand
    // and all of the other.
    if threads > 1 && m.max(n) >= threads * SPLIT_MIN && m * n * k >= PARALLEL_MIN_WORK {
        let by_rows = m >= n;
        let (dst, a, b) = (SharedMut(dst), a, b);
        let long = if by_rows { m } else { n };
        let per = long.div_ceil(threads);
        rayon::scope(|scope| {
            for t in 0..threads {
                let start = t * per;
                if start >= long {
                    break;
                }
                let len = per.min(long - start);
                scope.spawn(move |_| {
                    let (a, b, offset) = if by_rows {
                        (a.row_block(start, len), b, start as isize * dst_row_stride)
                    } else {
                        (a, b.t().row_block(start, len).t(), start as isize)
                    };
                    let dst = dst.get().wrapping_offset(offset);
                    gemm_strided(dst, dst_row_stride, a, b, read_dst, beta, 1);
                });
            }
        });
        return;
    }
    let parallelism = if threads > 1 && m * n * k >= PARALLEL_MIN_WORK {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_row_stride,
        read_dst,
        a.ptr,
        a.col_stride,
        a.row_stride,
        b.ptr,
        b.col_stride,
        b.row_stride,
        T::one(),
        beta,
        false,
        false,
        false,
        parallelism,
    );
}

/// `Σ scale_i · a_i · b_i` (`a_i: [m, k_i]`, `b_i: [k_i, n]`, strided views allowed) into one
/// freshly written `[m, n]` tensor: the first product writes, the others accumulate. `None`
/// when the operands are not CPU f32/f64.
/// `threads` of the rayon pool (1: on the calling thread, for small products run side by side).
pub fn matmul_sum(terms: &[(&Tensor, &Tensor, f64)], threads: usize) -> Result<Option<Tensor>> {
    let all: Vec<&Tensor> = terms.iter().flat_map(|(a, b, _)| [*a, *b]).collect();
    match fast_dtype(&all) {
        Some(DType::F32) => matmul_sum_as::<f32>(terms, threads),
        Some(DType::F64) => matmul_sum_as::<f64>(terms, threads),
        _ => Ok(None),
    }
}

fn matmul_sum_as<T: Real>(
    terms: &[(&Tensor, &Tensor, f64)],
    threads: usize,
) -> Result<Option<Tensor>> {
    let Some(&(first, first_b, _)) = terms.first() else {
        candle_core::bail!("matmul_sum: no terms");
    };
    let (m, n) = (first.dim(0)?, first_b.dim(1)?);
    let guards: Vec<_> = terms
        .iter()
        .map(|(a, b, _)| (a.storage_and_layout(), b.storage_and_layout()))
        .collect();
    let mut operands = Vec::with_capacity(terms.len());
    for (((ga, la), (gb, lb)), (_, _, scale)) in guards.iter().zip(terms) {
        let (Some(sa), Some(sb)) = (slice_of::<T>(ga, la), slice_of::<T>(gb, lb)) else {
            return Ok(None);
        };
        let (Some(a), Some(b)) = (
            Mat::of_layout(sa.as_ptr(), la),
            Mat::of_layout(sb.as_ptr(), lb),
        ) else {
            return Ok(None);
        };
        if a.rows != m || b.cols != n || a.cols != b.rows {
            candle_core::bail!(
                "matmul_sum: [{}, {}] x [{}, {}] does not make [{m}, {n}]",
                a.rows,
                a.cols,
                b.rows,
                b.cols
            );
        }
        operands.push((a, b, T::from(*scale).expect("finite scale")));
    }
    if m * n == 0 {
        return Ok(Some(Tensor::zeros((m, n), T::DTYPE, &Device::Cpu)?));
    }
    let mut out: Vec<T> = Vec::with_capacity(m * n);
    for (i, (a, b, scale)) in operands.into_iter().enumerate() {
        // SAFETY: `out` has room for m·n elements, the first product writes all of them before
        // any is read, and the operands point into storage the guards keep alive.
        unsafe { gemm_into(out.as_mut_ptr(), a, b, i > 0, scale, threads) };
    }
    // SAFETY: written in full by the first product.
    unsafe { out.set_len(m * n) };
    drop(guards);
    Ok(Some(Tensor::from_vec(out, (m, n), &Device::Cpu)?))
}
