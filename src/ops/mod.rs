//! Differentiable fused ops with their backward passes.
