//! `x @ w.T` for a few rows of `x`, as when generation decodes one token per sequence: one pass
//! over `w`, split across threads by output features. The general product (the `gemm` crate,
//! through candle) copies `w` into its packed layout on every call, which for one row costs
//! more than the product itself: the decoding of a 135M model in f32 read its weights three
//! times a token.

use candle_core::{DType, Result, Tensor};

use super::{par_fill, simd, with_contiguous};

/// Products with more rows than this go to the general product (at 8 rows one pass over the
/// weight still decodes SmolLM2-135M ~15% faster than the packed product).
pub const MAX_ROWS: usize = 16;
/// Rows of `w` per task: enough work per task to hide the scheduling.
const W_ROWS_PER_TASK: usize = 64;

/// `x: [m, k] @ w.T` for `w: [n, k]`, both contiguous f32 CPU tensors with `m ≤ MAX_ROWS`;
/// `None` otherwise.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    let (Ok((m, k)), Ok((n, k2))) = (x.dims2(), w.dims2()) else {
        return Ok(None);
    };
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if m == 0 || m > MAX_ROWS || k != k2 || k == 0 || !cpu_f32(x) || !cpu_f32(w) {
        return Ok(None);
    }
    let by_feature = with_contiguous::<f32, _, 2>([x, w], |[xs, ws]| {
        par_fill::<f32>(n * m, W_ROWS_PER_TASK * m, |task, out| {
            let r0 = task * W_ROWS_PER_TASK;
            let rows = out.len() / m;
            simd::dots(xs, m, &ws[r0 * k..(r0 + rows) * k], out);
        })
    });
    let Some(by_feature) = by_feature else {
        return Ok(None);
    };
    let y = Tensor::from_vec(by_feature, (n, m), x.device())?;
    Ok(Some(if m == 1 {
        y.reshape((1, n))?
    } else {
        y.t()?.contiguous()?
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn few_rows_equal_the_general_product() {
        let dev = Device::Cpu;
        for (m, k, n) in [(1, 576, 300), (3, 37, 129), (4, 64, 1)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let got = matmul_t(&x, &w).unwrap().expect("taken");
            let want = x.matmul(&w.t().unwrap()).unwrap();
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
            let scale = want.abs().unwrap().max_all().unwrap();
            // f32 sums of up to 576 terms in another order.
            let (diff, scale) = (
                diff.to_scalar::<f32>().unwrap(),
                scale.to_scalar::<f32>().unwrap(),
            );
            assert!(diff <= 1e-5 * scale, "{m}x{k}x{n}: {diff} vs {scale}");
        }
        let many = Tensor::zeros((MAX_ROWS + 1, 8), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 8), DType::F32, &dev).unwrap();
        assert!(matmul_t(&many, &w).unwrap().is_none());
        assert!(matmul_t(&many.to_dtype(DType::F64).unwrap(), &w)
            .unwrap()
            .is_none());
    }
}
