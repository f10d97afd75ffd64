//! Training runs as a user starts them: configs and their errors, resume, signals, locks, fingerprints, faults, the reference cache, bench and the GPU kit dry run.
//!
//! One test binary for these modules (each integration-test crate links candle once).

#[path = "../common/mod.rs"]
mod common;

mod train_resume;
mod run_safety;
mod ref_cache;
mod bench;
mod gpu_kit;
mod cli_errors;
mod configs;
mod config_validation;
