//! Which implementation of the ops runs. Every op asks [`Kernels::cpu_dtype`]; nothing else
//! chooses between a backend kernel and the device-generic path.

use candle_core::{DType, Device, Tensor};

/// `[model] kernels` (also `--kernels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// The fastest path for the device and dtype: the CPU kernels for f32/f64 tensors on CPU,
    /// the generic path for everything else (bf16/f16, GPUs).
    #[default]
    Auto,
    /// The device-generic path (candle tensor ops: forward and backward for any device and
    /// dtype) everywhere, CPU included: what a GPU runs, checked on CPU.
    Generic,
}

impl crate::choice::Choice for Kernels {
    const CHOICES: &'static [(Self, &'static [&'static str])] =
        &[(Self::Auto, &["auto"]), (Self::Generic, &["generic"])];

    // Case and spaces have always been ignored here.
    fn normalize(raw: &str) -> std::borrow::Cow<'_, str> {
        raw.trim().to_ascii_lowercase().into()
    }
}
crate::choice::choice_impls!(Kernels);

impl Kernels {
    /// The element type of the CPU kernel that takes `tensors` (all on the CPU, all f32 or all
    /// f64), or `None`: the generic path runs.
    pub(crate) fn cpu_dtype(self, tensors: &[&Tensor]) -> Option<DType> {
        match self {
            Self::Auto => super::cpu::fast_dtype(tensors),
            Self::Generic => None,
        }
    }

    /// What runs for activations of `dtype` on `device`, for reports.
    pub fn describe(self, device: &Device, dtype: DType) -> &'static str {
        let cpu = device.is_cpu();
        match self {
            Self::Auto if cpu && matches!(dtype, DType::F32 | DType::F64) => "cpu kernels",
            // bf16 products with quantized weights run in f32 on CPU, through the kernel.
            Self::Auto if cpu => "generic (quantized products through the cpu kernel)",
            _ => "generic",
        }
    }
}
