//! Adapters in and out: PEFT's on-disk format, and merging into the base weights.

pub mod merge;
pub mod peft;

pub use merge::{merge, MergeOptions, MergeReport};
pub use peft::{load_adapter, save_adapter};
