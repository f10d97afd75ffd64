//! Adapters in PEFT's format, merge and what it may never delete, missing adapter tensors.
//!
//! One test binary for these modules (each integration-test crate links candle once).

#[path = "../common/mod.rs"]
mod common;

mod adapter_io;
mod adapter_missing;
mod export;
mod merge;
mod merge_safety;
