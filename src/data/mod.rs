//! Datasets, chat templates, tokenization, loss masks and batches.
