//! Attach a hand-written gradient to a value computed outside the autograd graph.
//!
//! The value is computed by the caller from detached inputs (with candle's fast kernels); a
//! custom op then returns it as a function of the tracked inputs. candle's custom ops must
//! produce new storage, so the op copies the value once and drops the original: the graph
//! keeps one copy, the op's result.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor,
};
use std::sync::{Arc, Mutex};

/// `backward(input, output, grad_output) -> grad_input`.
pub type Backward = Arc<dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync>;

/// `backward(inputs, grad_output) -> gradient of each input` (None where not needed).
pub type Backward3 =
    Arc<dyn Fn([&Tensor; 3], &Tensor) -> Result<[Option<Tensor>; 3]> + Send + Sync>;

/// Returns `output` as a function of `input` whose gradient is `backward`.
///
/// `output` must have been computed from `input.detach()` (or from values not tracked at
/// all). When `input` is not tracked (inference, reference passes) `output` is returned
/// as it is: no graph, no copy. The backward receives the input detached.
pub fn attach_gradient(input: &Tensor, output: Tensor, backward: Backward) -> Result<Tensor> {
    if !input.track_op() {
        return Ok(output);
    }
    input.apply_op1(GradientOf {
        output: Value::new(output)?,
        backward,
    })
}

/// [`attach_gradient`] for a value of three inputs. When no input is tracked, `output` is
/// returned as it is.
pub fn attach_gradient3(
    inputs: [&Tensor; 3],
    output: Tensor,
    backward: Backward3,
) -> Result<Tensor> {
    if !inputs.iter().any(|t| t.track_op()) {
        return Ok(output);
    }
    inputs[0].apply_op3(
        inputs[1],
        inputs[2],
        GradientOf3 {
            output: Value::new(output)?,
            backward,
        },
    )
}

/// The precomputed value, handed over once to the op's forward.
struct Value(Mutex<Option<Tensor>>);

impl Value {
    fn new(output: Tensor) -> Result<Self> {
        // Whatever `output` was computed from, its only gradient path is the attached one.
        let output = output.detach();
        let output = if output.is_contiguous() && output.layout().start_offset() == 0 {
            output
        } else {
            output.contiguous()?.copy()?
        };
        Ok(Self(Mutex::new(Some(output))))
    }

    fn take(&self) -> Result<Tensor> {
        let taken = self.0.lock().map(|mut v| v.take()).ok().flatten();
        taken.ok_or_else(|| candle_core::Error::Msg("attached value used twice".into()))
    }

    fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        let output = self.take()?;
        let (storage, layout) = output.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("attached gradient: the value is not on the CPU"),
        }
    }

    fn cuda(&self) -> Result<(CudaStorage, Shape)> {
        let output = self.take()?;
        let (storage, layout) = output.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("attached gradient: the value is not on the GPU"),
        }
    }
}

struct GradientOf {
    output: Value,
    backward: Backward,
}

impl CustomOp1 for GradientOf {
    fn name(&self) -> &'static str {
        "attached-gradient"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.output.cpu()
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.output.cuda()
    }

    fn bwd(&self, input: &Tensor, output: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // Detached: a gradient computed from the tracked input would carry (and keep alive)
        // the input's whole graph.
        Ok(Some((self.backward)(&input.detach(), output, grad)?))
    }
}

struct GradientOf3 {
    output: Value,
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
        self.output.cpu()
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
        self.output.cuda()
    }

    fn bwd(
        &self,
        a1: &Tensor,
        a2: &Tensor,
        a3: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (a1, a2, a3) = (a1.detach(), a2.detach(), a3.detach());
        let [g1, g2, g3] = (self.backward)([&a1, &a2, &a3], grad_res)?;
        Ok((g1, g2, g3))
    }
}
