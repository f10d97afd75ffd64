//! Training runs as a user starts them: configs and their errors, resume, signals, locks, fingerprints, faults, the reference cache, bench and the GPU kit dry run.
//!
//! One test binary for these modules (each integration-test crate links candle once).

#[path = "../common/mod.rs"]
mod common;

mod bench;
mod cli_errors;
mod config_validation;
mod configs;
mod families;
mod gpu_kit;
mod hub_download;
mod kto_stage;
mod mixtures;
mod objectives;
mod observability;
mod ref_cache;
mod run_safety;
mod train_resume;
mod trajectories;
