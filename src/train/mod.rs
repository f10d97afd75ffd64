//! Training: log-probabilities, losses, optimizer, schedules and the loop.

pub mod logprobs;
