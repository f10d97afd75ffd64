//! Attach a hand-written gradient to a value computed outside the autograd graph.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// `backward(input, output, grad_output) -> grad_input`.
pub type Backward = Arc<dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync>;

/// Returns `output` as a function of `input` whose gradient is `backward`.
///
/// `output` must have been computed from `input.detach()` (or from values not tracked at
/// all). When `input` is not tracked (inference, reference passes) `output` is returned
/// as it is: no graph, no copy.
pub fn attach_gradient(input: &Tensor, output: Tensor, backward: Backward) -> Result<Tensor> {
    if !input.track_op() {
        return Ok(output);
    }
    // The op's forward clones the storage of `output`: give it one that starts at 0 and is
    // laid out exactly as the shape says.
    // Whatever `output` was computed from, its only gradient path is `backward`.
    let output = output.detach();
    let output = if output.is_contiguous() && output.layout().start_offset() == 0 {
        output
    } else {
        output.contiguous()?.copy()?
    };
    input.apply_op2(&output, GradientOf(backward))
}

struct GradientOf(Backward);

impl CustomOp2 for GradientOf {
    fn name(&self) -> &'static str {
        "attached-gradient"
    }

    fn cpu_fwd(
        &self,
        _input: &CpuStorage,
        _input_layout: &Layout,
        output: &CpuStorage,
        output_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((
            output.try_clone(output_layout)?,
            output_layout.shape().clone(),
        ))
    }

    fn cuda_fwd(
        &self,
        _input: &CudaStorage,
        _input_layout: &Layout,
        output: &CudaStorage,
        output_layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        Ok((
            output.try_clone(output_layout)?,
            output_layout.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        input: &Tensor,
        _output_arg: &Tensor,
        output: &Tensor,
        grad_output: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_input = (self.0)(input, output, grad_output)?;
        Ok((Some(grad_input), None))
    }
}
