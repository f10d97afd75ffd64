//! Answers to a file of prompts, in the formats evaluation tools read: MT-Bench's
//! `question.jsonl` (two turns, the second conditioned on the model's own first answer) to
//! FastChat llm_judge's model-answer JSONL; AlpacaEval's `instruction` rows to its
//! `model_outputs.json`; our `prompt` / `messages` rows to `prompt` + `completions[]` with empty
//! scores, the rated-completions schema `data binarize` reads once a judge has filled them.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{generate_batch, GenerateOptions, Request};
use crate::data::reader::{read_dataset, RowLoc};
use crate::data::schema::parse_messages;
use crate::data::{ChatTokenizer, Message};
use crate::model::{Adapter, Model};

/// What an input file is, from its first row's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `question_id`, `category`, `turns[]`.
    MtBench,
    /// `instruction` (AlpacaEval's eval set).
    AlpacaEval,
    /// `prompt` (a string or message list) or `messages` (up to the last user turn).
    Prompts,
}

/// One input row.
#[derive(Debug, Clone)]
pub struct Item {
    pub row: Map<String, Value>,
    pub loc: RowLoc,
    /// The user turns to answer in order (MT-Bench: each; others: one, the prompt).
    pub turns: Vec<Prompt>,
}

/// What the model continues: a conversation through the chat template, or raw text.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Chat(Vec<Message>),
    Raw(String),
}

/// Reads a prompt file (JSONL, JSON list or Parquet) and tells its format.
pub fn read_items(path: &Path, raw: bool) -> Result<(Format, Vec<Item>)> {
    let ds = read_dataset(path, None)?;
    let mut format = None;
    let mut items = Vec::with_capacity(ds.rows.len());
    for r in ds.rows {
        let row = r.value.map_err(|e| anyhow::anyhow!("{e}"))?;
        let this = if row.contains_key("turns") {
            Format::MtBench
        } else if row.contains_key("instruction") {
            Format::AlpacaEval
        } else if row.contains_key("prompt") || row.contains_key("messages") {
            Format::Prompts
        } else {
            bail!(
                "{}: expected `turns` (MT-Bench), `instruction` (AlpacaEval), `prompt` or \
                 `messages`",
                r.loc
            );
        };
        match format {
            None => format = Some(this),
            Some(f) if f != this => bail!(
                "{}: this row is {this:?} but the file's first row is {f:?}",
                r.loc
            ),
            _ => {}
        }
        let turns = turns_of(&row, &r.loc, this, raw)?;
        items.push(Item {
            row,
            loc: r.loc,
            turns,
        });
    }
    Ok((format.context("no rows")?, items))
}

fn string_field(row: &Map<String, Value>, loc: &RowLoc, field: &str) -> Result<String> {
    match row.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => bail!("{loc}, field `{field}`: expected a string"),
    }
}

fn turns_of(
    row: &Map<String, Value>,
    loc: &RowLoc,
    format: Format,
    raw: bool,
) -> Result<Vec<Prompt>> {
    let user = |text: String| {
        if raw {
            Prompt::Raw(text)
        } else {
            Prompt::Chat(vec![Message::new("user", &text)])
        }
    };
    Ok(match format {
        Format::MtBench => {
            let Some(Value::Array(turns)) = row.get("turns") else {
                bail!("{loc}, field `turns`: expected a list of strings");
            };
            if raw {
                bail!("{loc}: MT-Bench questions are chats; drop --raw");
            }
            let mut out = Vec::new();
            for (i, t) in turns.iter().enumerate() {
                let Some(t) = t.as_str() else {
                    bail!("{loc}, field `turns[{i}]`: expected a string");
                };
                out.push(user(t.to_string()));
            }
            if out.is_empty() {
                bail!("{loc}, field `turns`: empty");
            }
            out
        }
        Format::AlpacaEval => vec![user(string_field(row, loc, "instruction")?)],
        Format::Prompts => match (row.get("prompt"), row.get("messages")) {
            (Some(Value::String(s)), _) => vec![user(s.clone())],
            (Some(Value::Array(m)), _) if !raw => {
                vec![Prompt::Chat(
                    parse_messages(m, loc, "prompt").map_err(anyhow::Error::new)?,
                )]
            }
            (None, Some(Value::Array(m))) if !raw => {
                let mut msgs = parse_messages(m, loc, "messages").map_err(anyhow::Error::new)?;
                // A full conversation: answer its last user turn.
                while msgs.last().is_some_and(|m| m.role == "assistant") {
                    msgs.pop();
                }
                if msgs.last().is_none_or(|m| m.role != "user") {
                    bail!("{loc}, field `messages`: no user turn to answer");
                }
                vec![Prompt::Chat(msgs)]
            }
            _ if raw => bail!("{loc}: --raw takes a string `prompt`"),
            _ => bail!("{loc}, field `prompt`: expected a string or a message list"),
        },
    })
}

/// How answers are produced: the model, its adapters, the tokenizer and sampling.
pub struct Answerer<'a> {
    pub model: &'a Model,
    pub adapters: &'a [&'a Adapter],
    pub tokenizer: &'a ChatTokenizer,
    pub options: &'a GenerateOptions,
    pub batch_size: usize,
    pub system: Option<&'a str>,
    /// Progress: called with `(0, 1)` for each token generated and `(1, 0)` for each
    /// sequence finished.
    pub on_progress: &'a mut dyn FnMut(usize, usize),
}

impl Answerer<'_> {
    /// The token ids of a prompt, as `generate --prompt` builds them.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        match prompt {
            Prompt::Raw(text) => self.tokenizer.encode(text, true),
            Prompt::Chat(messages) => {
                let mut all = Vec::new();
                if let Some(system) = self.system {
                    if messages.first().is_none_or(|m| m.role != "system") {
                        all.push(Message::new("system", system));
                    }
                }
                all.extend(messages.iter().cloned());
                // The template writes BOS itself, as transformers' apply_chat_template does.
                self.tokenizer
                    .encode(&self.tokenizer.render(&all, true)?, false)
            }
        }
    }

    /// Answers each `(prompt, sample)`: batches of similar prompt lengths, each sequence with
    /// its own seeded sampler. Returns the answers' texts in the order asked.
    pub fn answer(&mut self, asked: &[(Prompt, usize)]) -> Result<Vec<String>> {
        let requests = asked
            .iter()
            .map(|(p, sample)| {
                Ok(Request {
                    prompt: self.prompt_ids(p)?,
                    sample: *sample,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by_key(|&i| requests[i].prompt.len());
        let mut texts = vec![String::new(); requests.len()];
        for chunk in order.chunks(self.batch_size.max(1)) {
            let batch: Vec<Request> = chunk.iter().map(|&i| requests[i].clone()).collect();
            let progress = &mut *self.on_progress;
            let out = generate_batch(self.model, self.adapters, &batch, self.options, |_, _| {
                progress(0, 1);
                Ok(())
            })?;
            for (&i, ids) in chunk.iter().zip(out) {
                (self.on_progress)(1, 0);
                let answer: Vec<u32> = ids
                    .into_iter()
                    .filter(|t| !self.options.stop_ids.contains(t))
                    .collect();
                texts[i] = self
                    .tokenizer
                    .tokenizer
                    .decode(&answer, true)
                    .map_err(|e| anyhow::anyhow!("decoding an answer: {e}"))?;
            }
        }
        Ok(texts)
    }
}

/// Answers every item `samples` times and returns the output file's contents.
pub fn answer_file(
    answerer: &mut Answerer<'_>,
    format: Format,
    items: &[Item],
    samples: usize,
    model_id: &str,
) -> Result<String> {
    if format == Format::AlpacaEval && samples != 1 {
        bail!("AlpacaEval's model_outputs.json holds one output per instruction; drop --num-return-sequences");
    }
    // Turn by turn: turn t of every (item, sample) is answered in one set of batches, after
    // turn t − 1, since it is conditioned on that answer.
    let max_turns = items.iter().map(|it| it.turns.len()).max().unwrap_or(0);
    let mut answers: Vec<Vec<Vec<String>>> =
        items.iter().map(|_| vec![Vec::new(); samples]).collect();
    for t in 0..max_turns {
        let mut asked = Vec::new();
        let mut whose = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if t >= item.turns.len() {
                continue;
            }
            for (s, so_far) in answers[i].iter().enumerate() {
                asked.push((conversation(item, t, so_far), s));
                whose.push((i, s));
            }
        }
        let texts = answerer.answer(&asked)?;
        for ((i, s), text) in whose.into_iter().zip(texts) {
            answers[i][s].push(text);
        }
    }
    let tstamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut out = String::new();
    match format {
        Format::MtBench => {
            for (item, per_sample) in items.iter().zip(&answers) {
                let qid = item.row.get("question_id").cloned().unwrap_or(Value::Null);
                let choices: Vec<Value> = per_sample
                    .iter()
                    .enumerate()
                    .map(|(k, turns)| json!({"index": k, "turns": turns}))
                    .collect();
                let line = json!({
                    "question_id": qid,
                    "answer_id": answer_id(model_id, &qid),
                    "model_id": model_id,
                    "choices": choices,
                    "tstamp": tstamp,
                });
                out.push_str(&line.to_string());
                out.push('\n');
            }
        }
        Format::AlpacaEval => {
            let rows: Vec<Value> = items
                .iter()
                .zip(&answers)
                .map(|(item, a)| {
                    let mut row = Map::new();
                    row.insert("instruction".into(), item.row["instruction"].clone());
                    row.insert("output".into(), json!(a[0][0]));
                    row.insert("generator".into(), json!(model_id));
                    if let Some(d) = item.row.get("dataset") {
                        row.insert("dataset".into(), d.clone());
                    }
                    Value::Object(row)
                })
                .collect();
            out = serde_json::to_string_pretty(&rows)?;
            out.push('\n');
        }
        Format::Prompts => {
            for (item, per_sample) in items.iter().zip(&answers) {
                let prompt =
                    item.row
                        .get("prompt")
                        .cloned()
                        .unwrap_or_else(|| match &item.turns[0] {
                            Prompt::Chat(m) => serde_json::to_value(m).unwrap_or(Value::Null),
                            Prompt::Raw(s) => json!(s),
                        });
                let mut row = Map::new();
                if let Some(id) = item.row.get("prompt_id") {
                    row.insert("prompt_id".into(), id.clone());
                }
                row.insert("prompt".into(), prompt);
                let completions: Vec<Value> = per_sample
                    .iter()
                    .map(|turns| json!({"text": turns[0], "score": null, "model": model_id}))
                    .collect();
                row.insert("completions".into(), Value::Array(completions));
                out.push_str(&Value::Object(row).to_string());
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// Turn `t` of an item after the sample's earlier answers.
fn conversation(item: &Item, t: usize, earlier: &[String]) -> Prompt {
    match &item.turns[t] {
        Prompt::Raw(s) => Prompt::Raw(s.clone()),
        Prompt::Chat(last) => {
            let mut msgs = Vec::new();
            for (k, answer) in earlier.iter().enumerate().take(t) {
                if let Prompt::Chat(m) = &item.turns[k] {
                    msgs.extend(m.iter().cloned());
                }
                msgs.push(Message::new("assistant", answer));
            }
            msgs.extend(last.iter().cloned());
            Prompt::Chat(msgs)
        }
    }
}

/// A stable answer id (FastChat writes a random shortuuid; ours is reproducible).
fn answer_id(model_id: &str, question_id: &Value) -> String {
    let digest = Sha256::digest(format!("{model_id}\u{0}{question_id}").as_bytes());
    digest.iter().take(11).map(|b| format!("{b:02x}")).collect()
}
