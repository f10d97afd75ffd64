//! What only training needs on top of the decoder: LoRA adapters and the linears that apply
//! them with their backward, the layer tape (gradient checkpointing), the memory estimate.
//! The tape itself is compiled as a child of the decoder (it reads the private layers).

pub mod lora;
pub mod lora_linear;
pub mod memory;
