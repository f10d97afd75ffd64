//! Attach a hand-written gradient to a value computed outside the autograd graph.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor,
};
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

/// `backward(inputs, grad_output) -> gradient of each input` (None where not needed).
pub type Backward3 =
    Arc<dyn Fn([&Tensor; 3], &Tensor) -> Result<[Option<Tensor>; 3]> + Send + Sync>;

/// [`attach_gradient`] for a value of three inputs: `output`, computed outside the graph, is
/// returned as a function of `inputs` whose gradients `backward` gives. When no input is
/// tracked, `output` is returned as it is.
pub fn attach_gradient3(
    inputs: [&Tensor; 3],
    output: Tensor,
    backward: Backward3,
) -> Result<Tensor> {
    if !inputs.iter().any(|t| t.track_op()) {
        return Ok(output);
    }
    let output = output.detach();
    let output = if output.is_contiguous() && output.layout().start_offset() == 0 {
        output
    } else {
        output.contiguous()?.copy()?
    };
    inputs[0].apply_op3(inputs[1], inputs[2], GradientOf3 { output, backward })
}

struct GradientOf3 {
    /// The value the op returns (a copy of its storage: candle's ops produce new storage).
    output: Tensor,
    backward: Backward3,
}

impl CustomOp3 for GradientOf3 {
    fn name(&self) -> &'static str {
        "attached-gradient-3"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (storage, layout) = self.output.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("attached-gradient-3: the output is not on the CPU"),
        }
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (storage, layout) = self.output.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("attached-gradient-3: the output is not on the GPU"),
        }
    }

    fn bwd(
        &self,
        a1: &Tensor,
        a2: &Tensor,
        a3: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [g1, g2, g3] = (self.backward)([a1, a2, a3], grad_res)?;
        Ok((g1, g2, g3))
    }
}
