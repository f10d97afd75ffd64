//! Training: log-probabilities, losses, optimizer, schedules and the loop.

pub mod batch;
pub mod checkpoint;
pub mod dpo;
pub mod logprobs;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod trainer;
