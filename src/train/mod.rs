//! Training: log-probabilities, losses, optimizer, schedules and the loop.

pub mod batch;
pub mod bench;
pub mod checkpoint;
pub mod dpo;
pub mod evaluate;
pub mod fingerprint;
pub mod implicit_reward;
pub mod kto;
pub mod kto_run;
pub mod logprobs;
pub mod metrics;
pub mod optim;
pub mod orpo;
pub mod output_dir;
pub mod pair_packing;
pub mod preference;
pub mod ref_cache;
pub mod run;
pub mod schedule;
pub mod sft;
pub mod tensorboard;
pub mod trainer;
