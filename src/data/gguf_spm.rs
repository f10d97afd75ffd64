//! A tokenizer from a GGUF SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`: Mistral, Llama-2 and
//! other Llama-architecture GGUFs), built as transformers builds it (`LlamaTokenizer` from a GGUF): BPE with byte
//! fallback, merges recovered from the token scores when the file stores none, a `Metaspace` pre-tokenizer that
//! prepends `▁` to the first word, and BOS added unless the file says otherwise. candle only builds GPT-2-style
//! byte-level vocabularies.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

fn get<'a>(ct: &'a Content, key: &str) -> Option<&'a Value> {
    ct.metadata.get(key)
}

fn strings(ct: &Content, key: &str) -> Result<Vec<String>> {
    let v = get(ct, key).with_context(|| format!("missing `{key}`"))?;
    v.to_vec()
        .map_err(|e| anyhow::anyhow!("`{key}`: {e}"))?
        .iter()
        .map(|x| {
            x.to_string()
                .cloned()
                .map_err(|e| anyhow::anyhow!("`{key}`: {e}"))
        })
        .collect()
}

fn numbers(ct: &Content, key: &str) -> Result<Option<Vec<f64>>> {
    let Some(v) = get(ct, key) else {
        return Ok(None);
    };
    let items = v.to_vec().map_err(|e| anyhow::anyhow!("`{key}`: {e}"))?;
    let mut out = Vec::with_capacity(items.len());
    for x in items {
        out.push(match x {
            Value::F32(f) => f64::from(*f),
            Value::F64(f) => *f,
            Value::I32(i) => f64::from(*i),
            Value::U32(i) => f64::from(*i),
            other => bail!("`{key}`: unexpected value {other:?}"),
        });
    }
    Ok(Some(out))
}

fn id(ct: &Content, key: &str) -> Option<u32> {
    get(ct, key).and_then(|v| v.to_u32().ok())
}

/// transformers' `generate_merges(vocab, vocab_scores)`: every split of a token into two tokens is a merge, ranked
/// by the merged token's score (highest first), ties by the lengths of the two pieces.
fn generate_merges(tokens: &[String], scores: &[f64]) -> Vec<(String, String)> {
    let vocab: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // Python's dict(zip(tokens, scores)): later duplicates overwrite the score but keep the first position.
    let mut order: Vec<&str> = Vec::new();
    let mut score_of: HashMap<&str, f64> = HashMap::new();
    for (t, &s) in tokens.iter().zip(scores) {
        if score_of.insert(t.as_str(), s).is_none() {
            order.push(t.as_str());
        }
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for merge in order {
        let score = score_of[merge];
        let mut local: Vec<(&str, &str, f64)> = Vec::new();
        for (idx, _) in merge.char_indices().skip(1) {
            let (l, r) = merge.split_at(idx);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                local.push((l, r, score));
            }
        }
        local.sort_by_key(|(l, r, _)| (vocab[l], vocab[r]));
        merges.extend(local);
    }
    // sorted(key=(score, len(l), len(r)), reverse=True) is stable: equal keys keep their order.
    merges.sort_by(|a, b| {
        let ka = (a.2, a.0.chars().count(), a.1.chars().count());
        let kb = (b.2, b.0.chars().count(), b.1.chars().count());
        kb.partial_cmp(&ka).unwrap_or(std::cmp::Ordering::Equal)
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
}

/// Builds the tokenizer of a GGUF whose `tokenizer.ggml.model` is `llama` (SentencePiece).
pub fn spm_tokenizer(ct: &Content) -> Result<Tokenizer> {
    let tokens = strings(ct, "tokenizer.ggml.tokens")?;
    let merges = match get(ct, "tokenizer.ggml.merges") {
        Some(_) => strings(ct, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => bail!("invalid merge `{m}`"),
            })
            .collect::<Result<Vec<_>>>()?,
        None => {
            let scores = numbers(ct, "tokenizer.ggml.scores")?
                .context("a SentencePiece vocabulary needs `tokenizer.ggml.scores` or merges")?;
            if scores.len() != tokens.len() {
                bail!("{} scores for {} tokens", scores.len(), tokens.len());
            }
            generate_merges(&tokens, &scores)
        }
    };
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    let unk = id(ct, "tokenizer.ggml.unknown_token_id").and_then(|i| tokens.get(i as usize));
    if let Some(unk) = unk {
        builder = builder.unk_token(unk.clone());
    }
    let bpe = builder.build().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut tok = Tokenizer::new(bpe);
    let add_prefix_space = get(ct, "tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(true);
    let scheme = if add_prefix_space {
        PrependScheme::First
    } else {
        PrependScheme::Never
    };
    tok.with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)));
    let mut steps = vec![
        Replace::new("▁", " ")
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_prefix_space {
        steps.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(DecoderSequence::new(steps)));
    let add_bos = get(ct, "tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(true);
    let bos = id(ct, "tokenizer.ggml.bos_token_id")
        .and_then(|i| tokens.get(i as usize).map(|t| (t.clone(), i)));
    if let (true, Some((bos, bos_id))) = (add_bos, bos) {
        let pp = TemplateProcessing::builder()
            .try_single(format!("{bos}:0 $A:0"))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .try_pair(format!("{bos}:0 $A:0 {bos}:1 $B:1"))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .special_tokens(vec![(bos, bos_id)])
            .build()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tok.with_post_processor(Some(pp));
    }
    // Control tokens (type 3) are special; user-defined ones (type 4) are matched whole but not special.
    if let Some(types) = get(ct, "tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (t, ty) in tokens.iter().zip(types) {
            match ty
                .to_i32()
                .ok()
                .or_else(|| ty.to_u32().ok().map(|u| u as i32))
            {
                Some(3) => special.push(AddedToken::from(t.clone(), true).normalized(false)),
                Some(4) => user.push(AddedToken::from(t.clone(), false).normalized(false)),
                _ => {}
            }
        }
        tok.add_special_tokens(special)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tok.add_tokens(user).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::generate_merges;

    #[test]
    fn merges_follow_scores() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "abc", "bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -3.0, -2.0];
        let m = generate_merges(&tokens, &scores);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, vec![("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]);
    }
}
