//! Text generation on token ids: a KV-cached decoder loop over one prompt or a batch of them
//! ([`batch`]), greedy or sampled (temperature, top-k, top-p, seeded per sequence), stopping at
//! any of the stop ids.

use anyhow::{bail, Result};
use rand::Rng;

use crate::model::{Adapter, Model};

pub mod answers;
pub mod batch;
pub use batch::{generate_batch, sequence_seed, Request};

/// How tokens are chosen and when generation stops.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Upper bound on the number of generated tokens (the stop token included).
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Nucleus sampling: sample among the most likely tokens whose probabilities sum to `top_p`.
    pub top_p: f64,
    /// Sample among the `top_k` most likely tokens only (0 = all), applied before `top_p` as
    /// transformers does.
    pub top_k: usize,
    /// Seed of the sampler's random generator.
    pub seed: u64,
    /// Generation ends after any of these is produced (it is returned too).
    pub stop_ids: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 42,
            stop_ids: vec![],
        }
    }
}

impl GenerateOptions {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("top_p must be in (0, 1], got {}", self.top_p);
        }
        Ok(())
    }
}

/// Generates up to `max_new_tokens` after `prompt_ids` with `adapters` applied (in order),
/// calling `on_token` with each new token as soon as it is chosen. Returns the new tokens,
/// ending with the stop token when one was produced. The same as the prompt's first sample in
/// [`generate_batch`].
pub fn generate(
    model: &Model,
    adapters: &[&Adapter],
    prompt_ids: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    let request = Request {
        prompt: prompt_ids.to_vec(),
        sample: 0,
    };
    let mut out = generate_batch(model, adapters, &[request], options, |_, id| on_token(id))?;
    Ok(out.remove(0))
}

/// Picks the next token from one row of logits.
pub fn choose(logits: &[f32], options: &GenerateOptions, rng: &mut impl Rng) -> u32 {
    if options.temperature == 0.0 {
        return argmax(logits);
    }
    let t = options.temperature as f32;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l - max) / t).exp()))
        .collect();
    let sum: f32 = probs.iter().map(|(_, p)| p).sum();
    probs.iter_mut().for_each(|(_, p)| *p /= sum);
    // Most likely first; ties broken by token id so the order is deterministic.
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if options.top_k > 0 && options.top_k < probs.len() {
        probs.truncate(options.top_k);
        let kept: f32 = probs.iter().map(|(_, p)| p).sum();
        probs.iter_mut().for_each(|(_, p)| *p /= kept);
    }
    if options.top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (at least one token).
        let mut mass = 0.0f32;
        let mut keep = 0;
        for (_, p) in &probs {
            keep += 1;
            mass += p;
            if mass >= options.top_p as f32 {
                break;
            }
        }
        probs.truncate(keep.max(1));
    }
    let total: f32 = probs.iter().map(|(_, p)| p).sum();
    let mut u = rng.random::<f32>() * total;
    for (id, p) in &probs {
        if u < *p {
            return *id;
        }
        u -= p;
    }
    probs.last().map(|(id, _)| *id).unwrap_or(0)
}

/// Index of the largest logit (the first one on ties, like torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Tokens that close a turn in common chat formats (ChatML, Llama 3, Phi-3, Gemma, Command-R,
/// Mistral/Llama 2).
const END_OF_TURN_MARKERS: [&str; 7] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|END_OF_TURN_TOKEN|>",
    "</s>",
    "<|endoftext|>",
];

/// Ids of the end-of-turn tokens a chat template writes literally (for example `<|im_end|>`
/// in a ChatML template whose EOS is `<|endoftext|>`): generation stops at them too.
pub fn end_of_turn_ids(template_source: &str, tokenizer: &tokenizers::Tokenizer) -> Vec<u32> {
    END_OF_TURN_MARKERS
        .iter()
        .filter(|m| template_source.contains(**m))
        .filter_map(|m| tokenizer.token_to_id(m))
        .collect()
}

/// Turns a growing list of token ids into text pieces as they become printable: decodes the
/// whole sequence each time and emits what was added, holding back an incomplete UTF-8 tail.
pub struct TextStream<'a> {
    tokenizer: &'a tokenizers::Tokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a tokenizers::Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            printed: 0,
        }
    }

    /// Adds a token; returns the new text, if any is ready.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self
            .tokenizer
            .decode(&self.ids, true)
            .map_err(|e| anyhow::anyhow!("decoding generated tokens: {e}"))?;
        if text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        // Decoding is not always prefix-stable (a tokenizer may clean up spaces differently
        // as text grows): print only what extends what was printed.
        match text.get(self.printed..) {
            Some(piece) if !piece.is_empty() => {
                let piece = piece.to_string();
                self.printed = text.len();
                Ok(Some(piece))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn opts(temperature: f64, top_p: f64) -> GenerateOptions {
        GenerateOptions {
            temperature,
            top_p,
            ..GenerateOptions::default()
        }
    }

    #[test]
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        // Probabilities 0.6, 0.3, 0.1 at temperature 1.
        let logits = [0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let draws = |o: &GenerateOptions, rng: &mut rand::rngs::StdRng| {
            let mut counts = [0usize; 3];
            for _ in 0..3000 {
                counts[choose(&logits, o, rng) as usize] += 1;
            }
            counts
        };
        assert_eq!(draws(&opts(1.0, 0.5), &mut rng), [3000, 0, 0]);
        let c = draws(&opts(1.0, 0.85), &mut rng);
        assert_eq!(c[2], 0, "{c:?}");
        assert!((c[0] as f64 / 3000.0 - 2.0 / 3.0).abs() < 0.05, "{c:?}");
        let c = draws(&opts(1.0, 1.0), &mut rng);
        assert!((c[2] as f64 / 3000.0 - 0.1).abs() < 0.03, "{c:?}");
    }

    #[test]
    fn end_of_turn_tokens_come_from_the_template() {
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":{"type":"WhitespaceSplit"},"post_processor":null,
            "decoder":null,"model":{"type":"WordLevel","unk_token":"a",
            "vocab":{"a":0,"<|im_end|>":1,"<|endoftext|>":2,"<|eot_id|>":3}}}"#;
        let tok = tokenizers::Tokenizer::from_bytes(json).unwrap();
        let chatml = "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}";
        assert_eq!(end_of_turn_ids(chatml, &tok), vec![1]);
        assert!(end_of_turn_ids("{{ eos_token }}", &tok).is_empty());
    }

    #[test]
    fn options_are_checked() {
        assert!(opts(-1.0, 1.0).validate().is_err());
        assert!(opts(f64::NAN, 1.0).validate().is_err());
        assert!(opts(1.0, 1.5).validate().is_err());
        assert!(opts(0.7, 0.9).validate().is_ok());
    }
}
