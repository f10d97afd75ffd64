//! Numerics against the references (transformers, PEFT, TRL fixtures), finite-difference gradients, both op paths, quantized and GGUF bases, bf16, packing, generation and the parity command.
//!
//! One test binary for these modules (each integration-test crate links candle once).

#[path = "../common/mod.rs"]
mod common;

mod attention;
mod bf16;
mod combine;
mod generate;
mod generate_batch;
mod gguf;
mod kto;
mod lora_linear;
mod model_parity;
mod objectives;
mod ops_grad;
mod packed;
mod parity_cli;
mod quantized;
mod rope_scaling;
mod train_losses;
