//! The values a training step brings back from the device, counted: only its metrics (loss,
//! gradient norm, the per-pair figures TRL reports) come back, through these functions, and a
//! test counts them (`tests/host_reads.rs`). Each read waits for the device, so a step that
//! read back anything else would stall a GPU and leave the device's memory in use longer.

use candle_core::{DType, Result, Tensor};
use std::sync::atomic::{AtomicUsize, Ordering};

static READS: AtomicUsize = AtomicUsize::new(0);

/// Reads made through this module since the process started.
pub fn reads() -> usize {
    READS.load(Ordering::Relaxed)
}

/// A one-element tensor's value.
pub fn scalar(t: &Tensor) -> Result<f32> {
    READS.fetch_add(1, Ordering::Relaxed);
    t.to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .first()
        .copied()
        .ok_or_else(|| candle_core::Error::Msg("host::scalar: an empty tensor".into()))
}

/// A tensor's values, flattened, as f32.
pub fn values(t: &Tensor) -> Result<Vec<f32>> {
    READS.fetch_add(1, Ordering::Relaxed);
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// The rows of same-length vectors, read back together: one read for several metrics.
pub fn rows(ts: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
    let n = ts.first().map(|t| t.elem_count()).unwrap_or(0);
    if ts.iter().any(|t| t.elem_count() != n) {
        candle_core::bail!("host::rows: vectors of different lengths");
    }
    let flat: Vec<Tensor> = ts
        .iter()
        .map(|t| t.to_dtype(DType::F32)?.flatten_all())
        .collect::<Result<_>>()?;
    let all = values(&Tensor::cat(&flat, 0)?)?;
    Ok(all.chunks(n.max(1)).map(<[f32]>::to_vec).collect())
}
