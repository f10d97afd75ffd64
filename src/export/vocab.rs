//! The tokenizer as llama.cpp reads it from GGUF metadata (`tokenizer.ggml.*`), made from a
//! Hugging Face `tokenizer.json` + `tokenizer_config.json`, or copied from a GGUF base.
//!
//! Byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM) becomes `gpt2`: tokens by id, merges as
//! `"a b"`, token types, and `tokenizer.ggml.pre` named after the split pattern it uses
//! (llama.cpp picks its pre-tokenizer by that name; its converter finds the name by hashing a
//! tokenization, and names a few plain-GPT-2 vocabularies after their model, e.g. `smollm`,
//! where this writes `gpt-2`, the same split). BPE with byte fallback (Llama-2, Mistral)
//! becomes `llama`: `<0xNN>` tokens typed as bytes, the merges kept, and SentencePiece scores
//! made from the merges' ranks (llama.cpp's tokenizer reads the scores, not the merges).

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::Path;

use crate::data::tokenizer::{LLAMA3_SPLIT, QWEN2_SPLIT};

/// GGUF metadata entries, in the order they are written.
pub type Metadata = Vec<(String, Value)>;

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// Every `tokenizer.*` key of a GGUF base, as it is.
pub fn from_gguf(metadata: &HashMap<String, Value>) -> Metadata {
    let mut out: Metadata = (metadata.iter())
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The metadata of `tokenizer.json` (with `tokenizer_config.json` for the special tokens, the
/// BOS/EOS flags and the chat template, which transformers 5 writes to `chat_template.jinja`
/// instead), and notes for the user.
pub fn from_hf(
    tokenizer_json: &Path,
    config: Option<&Path>,
    template: Option<&Path>,
) -> Result<(Metadata, Vec<String>)> {
    let read = |p: &Path| -> Result<Json> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", p.display()))
    };
    let tok = read(tokenizer_json)?;
    let cfg = match config {
        Some(p) => read(p)?,
        None => Json::Null,
    };
    let p = tokenizer_json.display();
    let model = &tok["model"];
    if model["type"].as_str() != Some("BPE") {
        bail!(
            "{p}: model type {} cannot be exported (BPE tokenizers can)",
            model["type"]
        );
    }
    let vocab = model["vocab"]
        .as_object()
        .with_context(|| format!("{p}: model.vocab is not an object"))?;
    let added: Vec<(u32, String, bool)> = (tok["added_tokens"].as_array().into_iter().flatten())
        .filter_map(|t| {
            Some((
                t["id"].as_u64()? as u32,
                t["content"].as_str()?.to_string(),
                t["special"].as_bool().unwrap_or(false),
            ))
        })
        .collect();
    let size = (vocab.values().filter_map(Json::as_u64))
        .chain(added.iter().map(|(id, _, _)| *id as u64))
        .max()
        .map_or(0, |m| m as usize + 1);
    let mut tokens: Vec<Option<String>> = vec![None; size];
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .with_context(|| format!("{p}: vocab entry `{text}` has no id"))?;
        tokens[id as usize] = Some(text.clone());
    }
    let mut types = vec![NORMAL; size];
    for (id, text, special) in &added {
        tokens[*id as usize] = Some(text.clone());
        types[*id as usize] = if *special { CONTROL } else { USER_DEFINED };
    }
    let mut notes = Vec::new();
    let tokens: Vec<String> = (tokens.into_iter().enumerate())
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                // llama.cpp needs a token for every id: a placeholder like its converter's.
                format!("[PAD{i}]")
            })
        })
        .collect();
    let byte_level = json_mentions(&tok["pre_tokenizer"], "ByteLevel")
        || json_mentions(&tok["decoder"], "ByteLevel");
    let mut md: Metadata = Vec::new();
    let string = |s: &str| Value::String(s.to_string());
    if byte_level {
        let merges = (model["merges"].as_array().into_iter().flatten())
            .map(|m| match m {
                Json::String(s) => Ok(s.clone()),
                Json::Array(pair) if pair.len() == 2 => Ok(format!(
                    "{} {}",
                    pair[0].as_str().unwrap_or_default(),
                    pair[1].as_str().unwrap_or_default()
                )),
                other => bail!("{p}: merge {other} is neither \"a b\" nor [a, b]"),
            })
            .collect::<Result<Vec<_>>>()?;
        let pre = pre_name(&tok["pre_tokenizer"]);
        if pre == "default" {
            notes.push(format!(
                "{p}: the pre-tokenizer's split pattern is not one llama.cpp names; wrote \
                 tokenizer.ggml.pre = \"default\" (GPT-2's), which may split text differently"
            ));
        }
        md.push(("tokenizer.ggml.model".into(), string("gpt2")));
        md.push(("tokenizer.ggml.pre".into(), string(pre)));
        md.push(("tokenizer.ggml.merges".into(), strings(merges)));
        let prefix_space = find_bool(&tok["pre_tokenizer"], "add_prefix_space").unwrap_or(false);
        md.push((
            "tokenizer.ggml.add_space_prefix".into(),
            Value::Bool(prefix_space),
        ));
    } else if model["byte_fallback"].as_bool() == Some(true) {
        let unk = model["unk_token"].as_str();
        for (i, t) in tokens.iter().enumerate() {
            if is_byte_token(t) {
                types[i] = BYTE;
            } else if Some(t.as_str()) == unk {
                types[i] = UNKNOWN;
            }
        }
        let merges = (model["merges"].as_array().into_iter().flatten())
            .filter_map(|m| match m {
                Json::String(s) => Some(s.clone()),
                Json::Array(pair) => Some(format!(
                    "{} {}",
                    pair.first()?.as_str()?,
                    pair.get(1)?.as_str()?
                )),
                _ => None,
            })
            .collect::<Vec<_>>();
        md.push(("tokenizer.ggml.model".into(), string("llama")));
        md.push(("tokenizer.ggml.pre".into(), string("default")));
        md.push((
            "tokenizer.ggml.scores".into(),
            Value::Array(
                merge_scores(&tokens, &merges)
                    .into_iter()
                    .map(Value::F32)
                    .collect(),
            ),
        ));
        if !merges.is_empty() {
            md.push(("tokenizer.ggml.merges".into(), strings(merges)));
        }
    } else {
        bail!("{p}: a BPE tokenizer without byte-level pre-tokenization or byte fallback cannot be exported for llama.cpp");
    }
    let id_of = |text: &str| tokens.iter().position(|t| t == text).map(|i| i as u32);
    md.push(("tokenizer.ggml.tokens".into(), strings(tokens.clone())));
    md.push((
        "tokenizer.ggml.token_type".into(),
        Value::Array(types.into_iter().map(Value::I32).collect()),
    ));
    for (key, name) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ] {
        let text = match &cfg[key] {
            Json::String(s) => Some(s.as_str()),
            Json::Object(o) => o.get("content").and_then(Json::as_str),
            _ => None,
        };
        if let Some(id) = text.and_then(id_of) {
            md.push((format!("tokenizer.ggml.{name}"), Value::U32(id)));
        }
    }
    for key in ["add_bos_token", "add_eos_token"] {
        if let Some(b) = cfg[key].as_bool() {
            md.push((format!("tokenizer.ggml.{key}"), Value::Bool(b)));
        }
    }
    let template = match template {
        Some(p) => Some(
            std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?,
        ),
        None => cfg["chat_template"].as_str().map(str::to_string),
    };
    if let Some(template) = template {
        md.push(("tokenizer.chat_template".into(), Value::String(template)));
    }
    Ok((md, notes))
}

/// SentencePiece scores that rank tokens as the merge table does: a token made by the merge of
/// rank r scores −(r + 1), the others (characters, bytes, specials) 0. llama.cpp's SentencePiece
/// tokenizer and transformers' GGUF reader read only the scores, merging the adjacent pair whose
/// result scores highest; flat scores (llama.cpp's converter writes −1000 for a tokenizer.json
/// without tokenizer.model) would merge in text order instead of the table's.
fn merge_scores(tokens: &[String], merges: &[String]) -> Vec<f32> {
    let ids: HashMap<&str, usize> = (tokens.iter().enumerate())
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut scores = vec![0f32; tokens.len()];
    for (rank, merge) in merges.iter().enumerate() {
        let Some((a, b)) = merge.split_once(' ') else {
            continue;
        };
        // A token's first merge ranks it; a score of 0 is one not yet ranked.
        if let Some(&id) = ids.get(format!("{a}{b}").as_str()) {
            if scores[id] == 0.0 {
                scores[id] = -(rank as f32 + 1.0);
            }
        }
    }
    scores
}

fn strings(items: Vec<String>) -> Value {
    Value::Array(items.into_iter().map(Value::String).collect())
}

fn is_byte_token(t: &str) -> bool {
    t.len() == 6 && t.starts_with("<0x") && t.ends_with('>')
}

/// Whether `type` is `name` anywhere in a (possibly nested `Sequence`) component.
fn json_mentions(component: &Json, name: &str) -> bool {
    match component {
        Json::Object(o) => {
            o.get("type").and_then(Json::as_str) == Some(name)
                || o.values().any(|v| json_mentions(v, name))
        }
        Json::Array(items) => items.iter().any(|v| json_mentions(v, name)),
        _ => false,
    }
}

/// The first `key` of a (possibly nested) component.
fn find_bool(component: &Json, key: &str) -> Option<bool> {
    match component {
        Json::Object(o) => o
            .get(key)
            .and_then(Json::as_bool)
            .or_else(|| o.values().find_map(|v| find_bool(v, key))),
        Json::Array(items) => items.iter().find_map(|v| find_bool(v, key)),
        _ => None,
    }
}

/// llama.cpp's name for the split pattern of a byte-level pre-tokenizer.
fn pre_name(pre: &Json) -> &'static str {
    let text = pre.to_string();
    let has = |re: &str| text.contains(&serde_json::to_string(re).unwrap_or_default());
    if has(LLAMA3_SPLIT) {
        "llama-bpe"
    } else if has(QWEN2_SPLIT) {
        "qwen2"
    } else if pre["type"].as_str() == Some("ByteLevel") && pre["use_regex"].as_bool() != Some(false)
    {
        // ByteLevel's own split is GPT-2's pattern.
        "gpt-2"
    } else {
        "default"
    }
}
