//! The decoder model: configuration, weight loading, frozen and LoRA linears.
