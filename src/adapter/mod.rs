//! Adapters in and out: PEFT's format, and stacked adapters combined into one.

pub mod combine;
pub mod peft;

pub use combine::combine;
pub use peft::{load_adapter, save_adapter};
