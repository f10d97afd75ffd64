//! The data pipeline: readers, schemas, chat templates, tokens and masks, truncation and the model limit, bad rows.
//!
//! One test binary for these modules (each integration-test crate links candle once).

#[path = "../common/mod.rs"]
mod common;

mod data_bad_rows;
mod data_binarize;
mod data_kto;
mod data_limits;
mod data_readers;
mod data_samples;
mod data_templates;
mod data_tokens;
