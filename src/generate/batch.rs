//! Many sequences at once: prompts left-padded into one batch with one KV cache, each sequence
//! stopping on its own (at a stop id or its token budget) and leaving the batch when it does.
//!
//! Each sequence samples from its own generator, seeded from the run's seed, its prompt's
//! tokens and its sample index ([`sequence_seed`]), so a sequence's tokens do not depend on
//! which other sequences share its batch or in what order they come.

use anyhow::{bail, Result};
use candle_core::Tensor;
use rand::SeedableRng;

use super::{choose, GenerateOptions};
use crate::model::{Adapter, KvCache, Model, Pass};

/// One sequence to generate: the prompt's tokens and which of its samples this is
/// (`--num-return-sequences`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub sample: usize,
}

/// The sampler seed of one sequence: the run's seed mixed with a hash of the prompt's tokens
/// and the sample index.
pub fn sequence_seed(seed: u64, prompt: &[u32], sample: usize) -> u64 {
    let bytes: Vec<u8> = prompt.iter().flat_map(|t| t.to_le_bytes()).collect();
    let key = xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, seed);
    key ^ (sample as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Checks a prompt the model can continue; returns how many tokens it may add.
pub(super) fn budget(model: &Model, prompt: &[u32], max_new_tokens: usize) -> Result<usize> {
    if prompt.is_empty() {
        bail!("the prompt is empty: at least one token is needed to start generating");
    }
    let vocab = model.config.vocab_size;
    if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        bail!("prompt token id {bad} is outside the model's vocabulary of {vocab}");
    }
    let max_len = model.config.max_position_embeddings;
    if prompt.len() >= max_len {
        bail!(
            "the prompt has {} tokens; the model takes at most {max_len} (max_position_embeddings)",
            prompt.len()
        );
    }
    Ok(max_new_tokens.min(max_len - prompt.len()))
}

/// Generates every request in one batch; `on_token(i, id)` is called with each new token of
/// request `i` as soon as it is chosen. Returns each request's new tokens, ending with the
/// stop token when one was produced.
///
/// Rows share positions (left padding), so a short prompt batched with a long one reaches the
/// context limit (`max_position_embeddings`) sooner than alone; callers batch prompts of similar
/// lengths.
pub fn generate_batch(
    model: &Model,
    adapters: &[&Adapter],
    requests: &[Request],
    options: &GenerateOptions,
    mut on_token: impl FnMut(usize, u32) -> Result<()>,
) -> Result<Vec<Vec<u32>>> {
    options.validate()?;
    let mut out = vec![Vec::new(); requests.len()];
    if requests.is_empty() {
        return Ok(out);
    }
    let budgets = requests
        .iter()
        .map(|r| budget(model, &r.prompt, options.max_new_tokens))
        .collect::<Result<Vec<_>>>()?;
    let width = requests.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
    let max_len = model.config.max_position_embeddings;
    let device = model.device();
    let mut rngs: Vec<_> = requests
        .iter()
        .map(|r| {
            rand::rngs::StdRng::seed_from_u64(sequence_seed(options.seed, &r.prompt, r.sample))
        })
        .collect();
    // Rows still generating (indices into `requests`) and their key masks so far.
    let mut active: Vec<usize> = (0..requests.len()).filter(|&i| budgets[i] > 0).collect();
    let mut masks: Vec<Vec<f32>> = requests
        .iter()
        .map(|r| {
            let pad = width - r.prompt.len();
            (0..width)
                .map(|j| if j < pad { 0.0 } else { 1.0 })
                .collect()
        })
        .collect();
    let padded_ids: Vec<u32> = active
        .iter()
        .flat_map(|&i| {
            let p = &requests[i].prompt;
            std::iter::repeat_n(p[0], width - p.len()).chain(p.iter().copied())
        })
        .collect();
    let mut input = Tensor::from_vec(padded_ids, (active.len(), width), device)?;
    let padded = requests.iter().any(|r| r.prompt.len() < width);
    let pass = Pass::eval(adapters);
    let mut cache = KvCache::new();
    while !active.is_empty() {
        let key_mask = if padded {
            let total = masks[active[0]].len();
            let flat: Vec<f32> = active.iter().flat_map(|&i| masks[i].clone()).collect();
            Some(Tensor::from_vec(flat, (active.len(), total), device)?)
        } else {
            None
        };
        let logits = model
            .next_token_logits(&input, &mut cache, pass, key_mask.as_ref())?
            .to_vec2::<f32>()?;
        let positions_left = cache.len() < max_len;
        let mut kept = Vec::with_capacity(active.len());
        let mut next_ids = Vec::with_capacity(active.len());
        for (row, &i) in active.iter().enumerate() {
            let next = choose(&logits[row], options, &mut rngs[i]);
            out[i].push(next);
            on_token(i, next)?;
            let done = options.stop_ids.contains(&next) || out[i].len() >= budgets[i];
            if !done && positions_left {
                kept.push(row as u32);
                next_ids.push(next);
                masks[i].push(1.0);
            }
        }
        if kept.len() < active.len() {
            if kept.is_empty() {
                break;
            }
            cache.select_rows(&Tensor::new(kept.as_slice(), device)?)?;
            active = kept.iter().map(|&row| active[row as usize]).collect();
        }
        input = Tensor::new(next_ids.as_slice(), device)?.unsqueeze(1)?;
    }
    Ok(out)
}
