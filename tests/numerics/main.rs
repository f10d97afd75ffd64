//! Numerics against the references (transformers, PEFT, TRL fixtures), finite-difference gradients, both op paths, quantized and GGUF bases, bf16, packing, generation and the parity command.
//!
//! One test binary for these modules (each integration-test crate links candle once).

#[path = "../common/mod.rs"]
mod common;

mod model_parity;
mod quantized;
mod gguf;
mod bf16;
mod attention;
mod ops_grad;
mod lora_linear;
mod packed;
mod train_losses;
mod combine;
mod generate;
mod parity_cli;
