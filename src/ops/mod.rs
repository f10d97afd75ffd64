//! Differentiable fused ops with their backward passes.
//!
//! candle's fused kernels (`softmax_last_dim`, `rms_norm`, `rope`, quantized matmul) record no
//! backward, and its matmul backward also computes a gradient for frozen weights. Each op here
//! runs the fast forward and attaches an analytic gradient for its input only.

mod attention;
mod attention_cpu;
pub mod cpu;
mod grad_attach;
mod head;
mod head_cpu;
mod linear;
mod norm;
mod qlinear;
mod rope;
mod simd;
mod softmax;
mod swiglu;

pub use attention::{
    attention, attention_backward, attention_forward, grouped_attention_backward,
    grouped_attention_forward, Group,
};
pub use grad_attach::{attach_gradient, attach_gradient3, Backward3};
pub use head::{
    head_logprobs, log_sum_exp, position_logprobs, HeadLogprobs, DEFAULT_CHUNK_POSITIONS,
};
pub use linear::{frozen_linear, matmul_sum, matmul_sum_on, matmul_sum_serial, matmul_t};
pub use norm::{add_rms_norm, residual_add, rms_norm, rms_norm_backward, rms_norm_backward_add};
pub use qlinear::quantized_linear;
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
