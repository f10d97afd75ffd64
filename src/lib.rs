//! lora-dpo: LoRA supervised fine-tuning and Direct Preference Optimization of
//! Mistral/Llama models on one frozen base, built on candle.
//!
//! Data flows one way: config → weights → data → forward → loss → step → adapter out.

pub mod adapter;
pub mod atomic_dir;
pub mod atomic_file;
pub mod cache;
pub mod choice;
pub mod config;
pub mod data;
pub mod export;
pub mod fault;
pub mod generate;
pub mod lock;
pub mod model;
pub mod ops;
pub mod parity;
pub mod paths;
pub mod report;
pub mod source;
pub mod train;
