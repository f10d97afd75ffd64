//! Where model files come from: a local folder or a repo id in the Hugging Face cache.
