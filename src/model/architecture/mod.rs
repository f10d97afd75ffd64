//! What a model computes: the family spec, the config, the decoder every family shares (one
//! layer forward for training, evaluation and cached generation), its masks and rotary tables.

pub mod config;
pub mod decoder;
pub mod mask;
pub mod packed;
pub mod projection;
pub mod rotary;
pub mod spec;

pub use spec::{Architecture, Family, LayerTensor, ModelTensor, SlidingWindow, FAMILIES};
