//! Differentiable ops with written-out backward passes, laid out by backend.
//!
//! candle's fused kernels (`softmax_last_dim`, `rms_norm`, `rope`, quantized matmul) record no
//! backward, and its matmul backward also computes a gradient for frozen weights. Each op here
//! computes its forward untracked and attaches (or exposes) an analytic gradient for its inputs
//! only.
//!
//! `<op>.rs` holds the op's device-generic implementation (candle tensor ops: forward and
//! backward for any device and dtype, the path GPUs take) and its dispatch; `cpu/` holds the
//! CPU kernels (f32/f64), optional fast paths. [`Kernels`] alone decides which runs. A CUDA
//! kernel of an op would sit in `cuda/` and be chosen in the same place.

mod attention;
pub(crate) mod cpu;
mod dropout;
mod grad_attach;
mod head;
pub mod host;
mod kernels;
mod linear;
mod norm;
mod qlinear;
mod rope;
mod softmax;
mod swiglu;

pub use attention::{
    attention, attention_backward, attention_forward, grouped_attention_backward,
    grouped_attention_forward, Group,
};
pub use dropout::{add_dropped, apply_dropout, dropout_mask, Dropout};
pub use grad_attach::{attach_gradient, attach_gradient3, Backward3};
pub use head::{
    head_logprobs, log_sum_exp, position_logprobs, HeadLogprobs, DEFAULT_CHUNK_POSITIONS,
};
pub use kernels::Kernels;
pub use linear::{
    frozen_linear, frozen_matmul, frozen_matmul_t, matmul_sum, matmul_sum_on, matmul_sum_serial,
    matmul_t, product_dtype,
};
pub use norm::{add_rms_norm, residual_add, rms_norm, rms_norm_backward, rms_norm_backward_add};
pub use qlinear::{quantized_forward, quantized_input_grad, quantized_linear, QuantizedWeight};
pub use rope::{rope, rope_backward, rope_thd, rope_thd_backward};
pub use softmax::softmax_last_dim;
pub use swiglu::{swiglu, swiglu_backward, swiglu_forward};

/// The dtype softmaxes, log-sum-exps and log-probs run in: f32 at least (bf16 would lose them);
/// f64 stays f64 for the gradient checks.
pub fn work_dtype(dtype: candle_core::DType) -> candle_core::DType {
    match dtype {
        candle_core::DType::F64 => candle_core::DType::F64,
        _ => candle_core::DType::F32,
    }
}
