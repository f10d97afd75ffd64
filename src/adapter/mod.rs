//! Adapters in and out: PEFT's format, stacked adapters combined into one, and merging into
//! the base weights.

pub mod combine;
pub mod merge;
pub mod overlap;
pub mod peft;
pub mod targets;

pub use combine::combine;
pub use merge::{merge, MergeOptions, MergeReport};
pub use peft::{load_adapter, load_adapter_with, save_adapter, LoadedAdapter, MissingTensors};
