//! Adapters in and out: PEFT's on-disk format.

pub mod peft;

pub use peft::{load_adapter, save_adapter};
