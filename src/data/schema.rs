//! The dataset layouts TRL accepts, detected from the columns, and checked rows.
//!
//! SFT: `messages` (a list of `{role, content}`), `prompt` + `completion` (strings or message lists), `text`.
//! DPO: `prompt` + `chosen` + `rejected` (strings or message lists), or only `chosen` + `rejected` (the shared
//! leading part is the prompt, as TRL's `extract_prompt` does; UltraFeedback-binarized stores whole conversations
//! in `chosen`/`rejected` next to a string `prompt`, and is read the same way).

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use super::config::DataConfig;
use super::reader::{describe, BadRow, RowLoc};
use super::Stage;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// An assistant's reasoning kept apart from its answer (Qwen3's templates render it as a `<think>` block).
    /// Absent rather than null when unset: templates test `is defined`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
            reasoning_content: None,
        }
    }

    pub fn with_reasoning(mut self, reasoning: &str) -> Self {
        self.reasoning_content = Some(reasoning.to_string());
        self
    }
}

/// A prompt or completion: plain text, or a list of chat messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turns {
    Text(String),
    Chat(Vec<Message>),
}

impl Turns {
    pub fn is_chat(&self) -> bool {
        matches!(self, Turns::Chat(_))
    }
}

/// The layout of a dataset, as detected from its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// SFT: one conversation per row.
    Messages,
    /// SFT: a prompt and its completion.
    PromptCompletion,
    /// SFT: plain text (language modelling).
    Text,
    /// DPO: `prompt`, `chosen`, `rejected`.
    Preference,
    /// DPO: only `chosen` and `rejected`; the prompt is their shared beginning.
    ImplicitPreference,
    /// KTO: `prompt`, `completion` and a boolean `label` (TRL's unpaired preference).
    Unpaired,
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Schema::Messages => "messages (conversational language modelling)",
            Schema::PromptCompletion => "prompt + completion",
            Schema::Text => "text (language modelling)",
            Schema::Preference => "prompt + chosen + rejected (explicit prompt)",
            Schema::ImplicitPreference => "chosen + rejected (implicit prompt)",
            Schema::Unpaired => "prompt + completion + label (unpaired preference)",
        })
    }
}

/// A checked SFT row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SftRow {
    Messages(Vec<Message>),
    PromptCompletion { prompt: Turns, completion: Turns },
    Text(String),
}

/// A checked DPO row, with the prompt made explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpoRow {
    pub prompt: Turns,
    pub chosen: Turns,
    pub rejected: Turns,
}

/// Roles a message may have.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// Finds the schema from one row's columns. `stage` says whether SFT or preference layouts are expected.
pub fn detect(
    columns: &Map<String, Value>,
    stage: Stage,
    cfg: &DataConfig,
) -> anyhow::Result<Schema> {
    let c = &cfg.columns;
    let has = |k: &str| columns.contains_key(k);
    let names: Vec<&str> = columns.keys().map(String::as_str).collect();
    match stage {
        Stage::Kto => super::kto::detect(columns, cfg),
        Stage::Sft => {
            if has(c.messages()) || (c.messages.is_none() && has("conversations")) {
                Ok(Schema::Messages)
            } else if has(c.prompt()) && has(c.completion()) {
                Ok(Schema::PromptCompletion)
            } else if has(&cfg.dataset_text_field) {
                Ok(Schema::Text)
            } else if has(c.chosen()) && has(c.rejected()) {
                anyhow::bail!(
                    "columns [{}] hold preference data (`{}`/`{}`): use --stage dpo",
                    names.join(", "),
                    c.chosen(),
                    c.rejected()
                )
            } else {
                anyhow::bail!(
                    "cannot tell the SFT dataset layout from columns [{}]: expected `{}`, `{}` + `{}`, or `{}` \
                     (other names can be set under [sft.columns] / dataset_text_field)",
                    names.join(", "),
                    c.messages(),
                    c.prompt(),
                    c.completion(),
                    cfg.dataset_text_field
                )
            }
        }
        Stage::Dpo | Stage::Orpo => {
            if has(c.chosen()) && has(c.rejected()) {
                if has(c.prompt()) {
                    Ok(Schema::Preference)
                } else {
                    Ok(Schema::ImplicitPreference)
                }
            } else {
                anyhow::bail!(
                    "cannot tell the preference dataset layout from columns [{}]: expected `{}` + `{}` + `{}`, or \
                     `{}` + `{}` (other names can be set under [dpo.columns])",
                    names.join(", "),
                    c.prompt(),
                    c.chosen(),
                    c.rejected(),
                    c.chosen(),
                    c.rejected()
                )
            }
        }
    }
}

pub(super) fn get<'a>(
    row: &'a Map<String, Value>,
    loc: &RowLoc,
    field: &str,
) -> Result<&'a Value, BadRow> {
    match row.get(field) {
        None => Err(BadRow::new(loc, Some(field), "missing field")),
        Some(Value::Null) => Err(BadRow::new(loc, Some(field), "missing value (null)")),
        Some(v) => Ok(v),
    }
}

fn get_str(row: &Map<String, Value>, loc: &RowLoc, field: &str) -> Result<String, BadRow> {
    match get(row, loc, field)? {
        Value::String(s) => Ok(s.clone()),
        other => Err(BadRow::new(
            loc,
            Some(field),
            format!("wrong type: expected a string, got {}", describe(other)),
        )),
    }
}

/// Reads a string or a message list.
pub(super) fn get_turns(
    row: &Map<String, Value>,
    loc: &RowLoc,
    field: &str,
) -> Result<Turns, BadRow> {
    match get(row, loc, field)? {
        Value::String(s) => Ok(Turns::Text(s.clone())),
        Value::Array(items) => Ok(Turns::Chat(parse_messages(items, loc, field)?)),
        other => Err(BadRow::new(
            loc,
            Some(field),
            format!(
                "wrong type: expected a string or a list of {{role, content}} messages, got {}",
                describe(other)
            ),
        )),
    }
}

/// Parses a list of messages. Accepts ShareGPT-style `{from, value}` keys (with roles `human`/`gpt`), as TRL's
/// `maybe_convert_to_chatml` does.
pub fn parse_messages(items: &[Value], loc: &RowLoc, field: &str) -> Result<Vec<Message>, BadRow> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let obj = match item {
            Value::Object(o) => o,
            other => {
                return Err(BadRow::new(
                    loc,
                    Some(&at),
                    format!(
                        "wrong type: expected a message {{role, content}}, got {}",
                        describe(other)
                    ),
                ))
            }
        };
        let (role_key, content_key) = if !obj.contains_key("role") && obj.contains_key("from") {
            ("from", "value")
        } else {
            ("role", "content")
        };
        let role = match obj.get(role_key) {
            None | Some(Value::Null) => {
                return Err(BadRow::new(
                    loc,
                    Some(&format!("{at}.{role_key}")),
                    if obj.contains_key(role_key) {
                        "missing value (null)"
                    } else {
                        "missing field"
                    },
                ))
            }
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                return Err(BadRow::new(
                    loc,
                    Some(&format!("{at}.{role_key}")),
                    format!("wrong type: expected a string, got {}", describe(other)),
                ))
            }
        };
        let role = match (role_key, role) {
            ("from", "human") => "user",
            ("from", "gpt") => "assistant",
            (_, r) => r,
        };
        if !ROLES.contains(&role) {
            return Err(BadRow::new(
                loc,
                Some(&format!("{at}.{role_key}")),
                format!(
                    "unknown role `{role}` (expected one of: {})",
                    ROLES.join(", ")
                ),
            ));
        }
        let content = match obj.get(content_key) {
            None | Some(Value::Null) => {
                return Err(BadRow::new(
                    loc,
                    Some(&format!("{at}.{content_key}")),
                    if obj.contains_key(content_key) {
                        "missing value (null)"
                    } else {
                        "missing field"
                    },
                ))
            }
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(BadRow::new(
                    loc,
                    Some(&format!("{at}.{content_key}")),
                    format!("wrong type: expected a string, got {}", describe(other)),
                ))
            }
        };
        let reasoning_content = match obj.get("reasoning_content") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(BadRow::new(
                    loc,
                    Some(&format!("{at}.reasoning_content")),
                    format!("wrong type: expected a string, got {}", describe(other)),
                ))
            }
        };
        out.push(Message {
            role: role.to_string(),
            content,
            reasoning_content,
        });
    }
    Ok(out)
}

/// What part of a conversation a message list is, for the role-order check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// A whole conversation (SFT `messages`): must contain an assistant turn.
    Whole,
    /// A prompt: must not end with an assistant turn.
    Prompt,
}

/// Checks the role order: `system` only first; then `user` first; `user` → `assistant`; `assistant` → `user` or
/// `tool`; `tool` → `tool` or `assistant`.
fn check_order(msgs: &[Message], loc: &RowLoc, field: &str, part: Part) -> Result<(), BadRow> {
    if msgs.is_empty() {
        return Err(BadRow::new(loc, Some(field), "empty message list"));
    }
    let mut prev: Option<&str> = None;
    for (i, m) in msgs.iter().enumerate() {
        let at = format!("{field}[{i}].role");
        let role = m.role.as_str();
        let ok = match (prev, role) {
            (None, "system") | (None, "user") => true,
            (_, "system") => {
                return Err(BadRow::new(
                    loc,
                    Some(&at),
                    "broken role order: a `system` message may only come first",
                ))
            }
            (None, r) | (Some("system"), r) => {
                if r != "user" {
                    return Err(BadRow::new(
                        loc,
                        Some(&at),
                        format!(
                            "broken role order: the conversation must start with `user`, not `{r}`"
                        ),
                    ));
                }
                true
            }
            (Some("user"), "assistant") => true,
            (Some("assistant"), "user" | "tool") => true,
            (Some("tool"), "tool" | "assistant") => true,
            _ => false,
        };
        if !ok {
            return Err(BadRow::new(
                loc,
                Some(&at),
                format!(
                    "broken role order: `{role}` follows `{}` (user and assistant turns must alternate)",
                    prev.unwrap_or("")
                ),
            ));
        }
        prev = Some(role);
    }
    match part {
        Part::Whole => {
            if !msgs.iter().any(|m| m.role == "assistant") {
                return Err(BadRow::new(
                    loc,
                    Some(field),
                    "no assistant message: nothing to learn from this conversation",
                ));
            }
        }
        Part::Prompt => {
            if prev == Some("assistant") {
                return Err(BadRow::new(
                    loc,
                    Some(&format!("{field}[{}].role", msgs.len() - 1)),
                    "broken role order: the prompt ends with an assistant message; the completion must answer it",
                ));
            }
        }
    }
    Ok(())
}

/// Checks a completion's messages: non-empty, starting with the assistant, no empty assistant message.
fn check_completion(msgs: &[Message], loc: &RowLoc, field: &str) -> Result<(), BadRow> {
    if msgs.is_empty() {
        return Err(BadRow::new(
            loc,
            Some(field),
            "empty completion (no messages)",
        ));
    }
    if msgs[0].role != "assistant" {
        return Err(BadRow::new(
            loc,
            Some(&format!("{field}[0].role")),
            format!(
                "broken role order: a completion must start with `assistant`, not `{}`",
                msgs[0].role
            ),
        ));
    }
    check_assistant_content(msgs, loc, field)
}

fn check_assistant_content(msgs: &[Message], loc: &RowLoc, field: &str) -> Result<(), BadRow> {
    for (i, m) in msgs.iter().enumerate() {
        if m.role == "assistant" && m.content.trim().is_empty() {
            return Err(BadRow::new(
                loc,
                Some(&format!("{field}[{i}].content")),
                "empty completion: the assistant message is empty",
            ));
        }
    }
    Ok(())
}

fn check_text_completion(s: &str, loc: &RowLoc, field: &str) -> Result<(), BadRow> {
    if s.trim().is_empty() {
        return Err(BadRow::new(loc, Some(field), "empty completion"));
    }
    Ok(())
}

/// Checks that a prompt and a completion are both strings or both message lists, and joins them into a
/// whole-conversation order check.
pub(super) fn check_pair(
    prompt: &Turns,
    pfield: &str,
    completion: &Turns,
    cfield: &str,
    loc: &RowLoc,
) -> Result<(), BadRow> {
    match (prompt, completion) {
        (Turns::Text(_), Turns::Text(c)) => check_text_completion(c, loc, cfield),
        (Turns::Chat(p), Turns::Chat(c)) => {
            check_order(p, loc, pfield, Part::Prompt)?;
            check_completion(c, loc, cfield)?;
            let mut all = p.clone();
            all.extend(c.iter().cloned());
            // The joined conversation gives the order errors; re-label indices into the completion.
            check_order(&all, loc, &format!("{pfield} + {cfield}"), Part::Whole)
        }
        (Turns::Chat(_), Turns::Text(_)) => Err(BadRow::new(
            loc,
            Some(cfield),
            format!("wrong type: `{pfield}` is a message list, so `{cfield}` must be one too, not a string"),
        )),
        (Turns::Text(_), Turns::Chat(_)) => Err(BadRow::new(
            loc,
            Some(cfield),
            format!("wrong type: `{pfield}` is a string, so `{cfield}` must be one too, not a message list"),
        )),
    }
}

/// Checks one SFT row against the detected schema.
pub fn parse_sft(
    row: &Map<String, Value>,
    loc: &RowLoc,
    schema: Schema,
    cfg: &DataConfig,
) -> Result<SftRow, BadRow> {
    let c = &cfg.columns;
    match schema {
        Schema::Messages => {
            let field = if row.contains_key(c.messages()) || c.messages.is_some() {
                c.messages()
            } else {
                "conversations"
            };
            let msgs = match get(row, loc, field)? {
                Value::Array(items) => parse_messages(items, loc, field)?,
                other => {
                    return Err(BadRow::new(
                        loc,
                        Some(field),
                        format!(
                            "wrong type: expected a list of {{role, content}} messages, got {}",
                            describe(other)
                        ),
                    ))
                }
            };
            check_order(&msgs, loc, field, Part::Whole)?;
            check_assistant_content(&msgs, loc, field)?;
            Ok(SftRow::Messages(msgs))
        }
        Schema::PromptCompletion => {
            let prompt = get_turns(row, loc, c.prompt())?;
            let completion = get_turns(row, loc, c.completion())?;
            check_pair(&prompt, c.prompt(), &completion, c.completion(), loc)?;
            Ok(SftRow::PromptCompletion { prompt, completion })
        }
        Schema::Text => {
            let f = cfg.dataset_text_field.as_str();
            let text = get_str(row, loc, f)?;
            if text.trim().is_empty() {
                return Err(BadRow::new(loc, Some(f), "empty text"));
            }
            Ok(SftRow::Text(text))
        }
        _ => Err(BadRow::new(
            loc,
            None,
            format!("schema {schema} is not an SFT layout"),
        )),
    }
}

/// Checks one DPO row and makes its prompt explicit (TRL's `maybe_extract_prompt`).
pub fn parse_dpo(
    row: &Map<String, Value>,
    loc: &RowLoc,
    schema: Schema,
    cfg: &DataConfig,
) -> Result<DpoRow, BadRow> {
    let c = &cfg.columns;
    let (cf, rf, pf) = (c.chosen(), c.rejected(), c.prompt());
    let chosen = get_turns(row, loc, cf)?;
    let rejected = get_turns(row, loc, rf)?;
    if chosen.is_chat() != rejected.is_chat() {
        return Err(BadRow::new(
            loc,
            Some(rf),
            format!(
                "wrong type: `{cf}` is {}, `{rf}` is {}; both must be strings or both message lists",
                if chosen.is_chat() { "a message list" } else { "a string" },
                if rejected.is_chat() { "a message list" } else { "a string" },
            ),
        ));
    }
    if chosen == rejected {
        return Err(BadRow::new(
            loc,
            Some(rf),
            format!("`{cf}` and `{rf}` are identical: there is no preference to learn"),
        ));
    }
    let explicit = match schema {
        // Mixed files: a row without a prompt has an implicit one, whatever the first row had.
        Schema::Preference if matches!(row.get(pf), None | Some(Value::Null)) => None,
        Schema::Preference => Some(get_turns(row, loc, pf)?),
        Schema::ImplicitPreference => None,
        _ => {
            return Err(BadRow::new(
                loc,
                None,
                format!("schema {schema} is not a preference layout"),
            ))
        }
    };
    let (prompt, chosen, rejected) = match (explicit, chosen, rejected) {
        // Both conversational with a conversational prompt: if the completions repeat the prompt, strip it.
        (Some(Turns::Chat(p)), Turns::Chat(ch), Turns::Chat(rj)) => {
            if ch.len() > p.len() && rj.len() > p.len() && ch.starts_with(&p) && rj.starts_with(&p)
            {
                let (ch, rj) = (ch[p.len()..].to_vec(), rj[p.len()..].to_vec());
                (Turns::Chat(p), Turns::Chat(ch), Turns::Chat(rj))
            } else {
                (Turns::Chat(p), Turns::Chat(ch), Turns::Chat(rj))
            }
        }
        (Some(p @ Turns::Text(_)), ch @ Turns::Text(_), rj @ Turns::Text(_)) => (p, ch, rj),
        (Some(Turns::Chat(_)), Turns::Text(_), _) => {
            return Err(BadRow::new(
                loc,
                Some(cf),
                format!(
                    "wrong type: `{pf}` is a message list, so `{cf}` must be one too, not a string"
                ),
            ))
        }
        // A string prompt next to conversational completions (UltraFeedback-binarized), or no prompt at all:
        // the shared leading part of chosen and rejected is the prompt.
        (_, Turns::Chat(ch), Turns::Chat(rj)) => {
            let k = ch.iter().zip(rj.iter()).take_while(|(a, b)| a == b).count();
            if k == 0 {
                return Err(BadRow::new(
                    loc,
                    Some(cf),
                    format!(
                        "`{cf}` and `{rf}` share no leading messages, so there is no prompt (add a `{pf}` column)"
                    ),
                ));
            }
            (
                Turns::Chat(ch[..k].to_vec()),
                Turns::Chat(ch[k..].to_vec()),
                Turns::Chat(rj[k..].to_vec()),
            )
        }
        (_, Turns::Text(ch), Turns::Text(rj)) => {
            let (p, c2, r2) = extract_text_prompt(&ch, &rj);
            (Turns::Text(p), Turns::Text(c2), Turns::Text(r2))
        }
        _ => unreachable!("chosen and rejected kinds were checked above"),
    };
    check_pair(&prompt, pf, &chosen, cf, loc)?;
    check_pair(&prompt, pf, &rejected, rf, loc)?;
    Ok(DpoRow {
        prompt,
        chosen,
        rejected,
    })
}

/// TRL's `extract_prompt` for strings: the prompt is the common prefix, without the space that starts the
/// completions.
pub fn extract_text_prompt(chosen: &str, rejected: &str) -> (String, String, String) {
    let mut cut = chosen.len().min(rejected.len());
    for ((i, a), (_, b)) in chosen.char_indices().zip(rejected.char_indices()) {
        if a != b {
            cut = i;
            break;
        }
    }
    if cut > 0 && chosen[..cut].ends_with(' ') {
        cut -= 1;
    }
    (
        chosen[..cut].to_string(),
        chosen[cut..].to_string(),
        rejected[cut..].to_string(),
    )
}
