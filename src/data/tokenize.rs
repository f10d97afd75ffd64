//! Tokenization with TRL's definitions.
//!
//! - Conversational prompt/completion: prompt ids = template(prompt, add_generation_prompt=True); full ids =
//!   template(prompt + completion); the completion is what the full conversation adds after the prompt. The
//!   rendered prompt must be a prefix of the rendered conversation (an error names the row otherwise); when tokens
//!   merge across the boundary the completion starts where the token lists diverge (TRL's `common_prefix_length`).
//! - Rendered chats are tokenized without the tokenizer's own special tokens (the template writes BOS), so BOS is
//!   never doubled.
//! - Plain-text completions get EOS appended if missing; plain text is tokenized with the tokenizer's special
//!   tokens, and a BOS doubled by a text that already starts with it is removed.
//! - SFT conversations: loss on every assistant turn, found by rendering the conversation prefix by prefix (the
//!   turn is what `messages[..=i]` adds to `messages[..i]` with the generation prompt), so the template needs no
//!   `{% generation %}` markers. The end-of-turn token the template writes after an assistant turn is part of it.
//!   Where the template renders an earlier turn shorter than a last one (Qwen3 drops the thinking block before
//!   the last user message), the turn is what the whole conversation has of it (see `assistant_spans`).

use super::config::DataConfig;
use super::reader::{BadRow, RowLoc};
use super::schema::{DpoRow, Message, SftRow, Turns};
use super::tokenizer::ChatTokenizer;

/// A training sequence and the tokens the loss counts (`loss_mask[i]`: token `i` is a target, predicted from the
/// tokens before it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sequence {
    pub input_ids: Vec<u32>,
    pub loss_mask: Vec<bool>,
}

impl Sequence {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Hugging Face style labels: the token id where the loss counts, -100 elsewhere.
    pub fn labels(&self) -> Vec<i64> {
        self.input_ids
            .iter()
            .zip(&self.loss_mask)
            .map(|(&id, &m)| if m { i64::from(id) } else { -100 })
            .collect()
    }

    /// Number of tokens the loss counts.
    pub fn n_trained(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }
}

/// TRL's tokenized preference row: the shared prompt and the two completions (what follows the prompt).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DpoTokens {
    pub prompt_ids: Vec<u32>,
    pub chosen_ids: Vec<u32>,
    pub rejected_ids: Vec<u32>,
}

/// Things worth counting about a tokenized row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notes {
    /// Tokens merged across the prompt/completion boundary, so the completion starts where the token lists
    /// diverge.
    pub boundary_merge: bool,
    /// A completion without the EOS token: the model may not learn to stop.
    pub no_eos: bool,
}

/// Length of the common prefix of two token lists.
pub fn common_prefix_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn bad(loc: &RowLoc, field: Option<&str>, msg: impl Into<String>) -> BadRow {
    BadRow::new(loc, field, msg)
}

/// Shows where two strings diverge, for error messages.
fn divergence(a: &str, b: &str) -> String {
    let at = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map(|((i, _), _)| i)
        .unwrap_or(a.len().min(b.len()));
    let start = a[..at]
        .char_indices()
        .rev()
        .nth(20)
        .map(|(i, _)| i)
        .unwrap_or(0);
    let tail = |s: &str| s[at..].chars().take(30).collect::<String>();
    format!(
        "after {:?} the prompt alone has {:?} but the full conversation has {:?}",
        &a[start..at],
        tail(a),
        tail(b)
    )
}

/// Plain text with the tokenizer's special tokens, without a doubled BOS.
pub(super) fn encode_plain(
    tok: &ChatTokenizer,
    text: &str,
    loc: &RowLoc,
) -> Result<Vec<u32>, BadRow> {
    let mut ids = tok
        .encode(text, true)
        .map_err(|e| bad(loc, None, format!("{e:#}")))?;
    if let Some(bos) = &tok.bos {
        if ids.len() >= 2 && ids[0] == bos.id && ids[1] == bos.id {
            ids.remove(0);
        }
    }
    Ok(ids)
}

pub(super) fn with_eos(tok: &ChatTokenizer, text: &str) -> String {
    match &tok.eos {
        Some(eos) if !text.ends_with(&eos.text) => format!("{text}{}", eos.text),
        _ => text.to_string(),
    }
}

fn render(
    tok: &ChatTokenizer,
    msgs: &[Message],
    gen: bool,
    loc: &RowLoc,
    field: &str,
) -> Result<String, BadRow> {
    tok.render(msgs, gen)
        .map_err(|e| bad(loc, Some(field), format!("{e:#}")))
}

fn encode_chat(tok: &ChatTokenizer, text: &str, loc: &RowLoc) -> Result<Vec<u32>, BadRow> {
    tok.encode(text, false)
        .map_err(|e| bad(loc, None, format!("{e:#}")))
}

/// Renders and tokenizes `prompt` (with the generation prompt) and `prompt + completion`, checking that the
/// rendered prompt is a prefix of the rendered conversation.
pub(super) fn chat_pair(
    tok: &ChatTokenizer,
    prompt: &[Message],
    completion: &[Message],
    loc: &RowLoc,
    cfield: &str,
) -> Result<(Vec<u32>, Vec<u32>), BadRow> {
    let p = render(tok, prompt, true, loc, "prompt")?;
    let mut all = prompt.to_vec();
    all.extend_from_slice(completion);
    let f = render(tok, &all, false, loc, cfield)?;
    if !f.starts_with(&p) {
        return Err(bad(
            loc,
            Some(cfield),
            format!(
                "the chat template renders the prompt differently on its own (with the generation prompt) than \
                 inside the full conversation, so the completion is not what the conversation adds after the \
                 prompt: {}",
                divergence(&p, &f)
            ),
        ));
    }
    Ok((encode_chat(tok, &p, loc)?, encode_chat(tok, &f, loc)?))
}

pub(super) fn has_eos(tok: &ChatTokenizer, completion: &[u32]) -> bool {
    match &tok.eos {
        Some(eos) => completion.contains(&eos.id),
        None => false,
    }
}

/// The byte spans of the assistant turns in the rendered conversation `full`, found prefix by prefix: a turn starts
/// where the conversation before it, with the generation prompt, ends. It ends where its own rendering as the last
/// message ends, when the template renders earlier turns as it renders the last one. Some do not: Qwen3 (like
/// DeepSeek-R1) drops the thinking block of turns before the last user message, so inside the conversation such a
/// turn is only the tail of what it is at the end. Then the turn is the longest tail of its last-message rendering
/// that the conversation continues with at the turn's start, which is what the template writes for it there.
fn assistant_spans(
    tok: &ChatTokenizer,
    msgs: &[Message],
    full: &str,
    loc: &RowLoc,
    field: &str,
) -> Result<Vec<(usize, usize)>, BadRow> {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let at = format!("{field}[{i}]");
        let before = render(tok, &msgs[..i], true, loc, &at)?;
        let alone = if i + 1 == msgs.len() {
            full.to_string()
        } else {
            render(tok, &msgs[..=i], false, loc, &at)?
        };
        let (a, b) = turn_span(&before, &alone, full).map_err(|msg| bad(loc, Some(&at), msg))?;
        if spans.last().is_some_and(|&(_, prev_end)| a < prev_end) {
            return Err(bad(
                loc,
                Some(&at),
                "cannot find this assistant turn: it would overlap the previous one",
            ));
        }
        spans.push((a, b));
    }
    Ok(spans)
}

/// The span in `full` of the turn that `alone` (the conversation up to it) adds after `before` (the conversation
/// before it, with the generation prompt). See [`assistant_spans`].
fn turn_span(before: &str, alone: &str, full: &str) -> Result<(usize, usize), String> {
    if !alone.starts_with(before) {
        return Err(format!(
            "cannot find this assistant turn: the chat template renders the conversation before it (with the \
             generation prompt) differently from the conversation up to it: {}",
            divergence(before, alone)
        ));
    }
    if !full.starts_with(before) {
        return Err(format!(
            "cannot find this assistant turn: the chat template renders the conversation before it (with the \
             generation prompt) differently from the start of the whole conversation: {}",
            divergence(before, full)
        ));
    }
    let a = before.len();
    let turn = &alone[a..];
    match longest_tail_continued(turn, &full[a..]) {
        // An empty turn is reported later, as one without tokens.
        0 if !turn.is_empty() => Err(format!(
            "cannot find this assistant turn: nothing of the conversation up to it is where it starts in the whole \
             conversation: {}",
            divergence(alone, full)
        )),
        n => Ok((a, a + n)),
    }
}

/// Length of the longest tail of `turn` that `rest` starts with (all of `turn` when the template is
/// prefix-preserving).
fn longest_tail_continued(turn: &str, rest: &str) -> usize {
    turn.char_indices()
        .map(|(k, _)| &turn[k..])
        .find(|tail| rest.starts_with(tail))
        .map_or(0, str::len)
}

/// The tokens covering the byte span `a..b`, as transformers' `return_assistant_tokens_mask` finds them: from the
/// token holding byte `a` to the token holding byte `b - 1` (a token that straddles the start of the span counts).
/// Bytes in no token's offsets (trimmed whitespace) fall back to the nearest token inside the span.
fn token_range(offsets: &[(usize, usize)], a: usize, b: usize) -> Option<(usize, usize)> {
    let holding = |pos: usize| offsets.iter().position(|&(s, e)| s <= pos && pos < e);
    let first = holding(a).or_else(|| offsets.iter().position(|&(s, _)| s >= a && s < b))?;
    let last = holding(b.saturating_sub(1))
        .or_else(|| offsets.iter().rposition(|&(s, _)| s >= a && s < b))?;
    (first <= last).then_some((first, last))
}

/// Tokenizes a rendered conversation and marks the tokens of the assistant spans.
fn masked_chat(
    tok: &ChatTokenizer,
    msgs: &[Message],
    loc: &RowLoc,
    field: &str,
) -> Result<(Sequence, Vec<(usize, usize)>), BadRow> {
    let full = render(tok, msgs, false, loc, field)?;
    let spans = assistant_spans(tok, msgs, &full, loc, field)?;
    let (ids, offsets) = tok
        .encode_with_offsets(&full)
        .map_err(|e| bad(loc, None, format!("{e:#}")))?;
    let mut mask = vec![false; ids.len()];
    for (k, &(a, b)) in spans.iter().enumerate() {
        match token_range(&offsets, a, b) {
            Some((first, last)) => mask[first..=last].iter_mut().for_each(|m| *m = true),
            None => {
                return Err(bad(
                    loc,
                    Some(field),
                    format!("assistant turn {} produced no tokens of its own", k + 1),
                ))
            }
        }
    }
    Ok((
        Sequence {
            input_ids: ids,
            loss_mask: mask,
        },
        spans,
    ))
}

/// Tokenizes an SFT row: the sequence and its loss mask (see the module docs for the masking rules).
pub fn tokenize_sft(
    row: &SftRow,
    tok: &ChatTokenizer,
    cfg: &DataConfig,
    loc: &RowLoc,
) -> Result<(Sequence, Notes), BadRow> {
    let mut notes = Notes::default();
    let seq = match row {
        SftRow::Text(text) => {
            let ids = encode_plain(tok, &with_eos(tok, text), loc)?;
            notes.no_eos = !has_eos(tok, &ids);
            Sequence {
                loss_mask: vec![true; ids.len()],
                input_ids: ids,
            }
        }
        SftRow::Messages(msgs) if !cfg.assistant_only_loss => {
            // Loss on every token (TRL's default): no need to find the assistant turns.
            let full = render(tok, msgs, false, loc, cfg.columns.messages())?;
            let ids = encode_chat(tok, &full, loc)?;
            notes.no_eos = !has_eos(tok, &ids);
            Sequence {
                loss_mask: vec![true; ids.len()],
                input_ids: ids,
            }
        }
        SftRow::Messages(msgs) => {
            let (seq, _) = masked_chat(tok, msgs, loc, cfg.columns.messages())?;
            let trained: Vec<u32> = seq
                .input_ids
                .iter()
                .zip(&seq.loss_mask)
                .filter(|(_, &m)| m)
                .map(|(&id, _)| id)
                .collect();
            notes.no_eos = !has_eos(tok, &trained);
            seq
        }
        SftRow::PromptCompletion { prompt, completion } => {
            let completion_only = cfg.completion_only_loss.unwrap_or(true);
            let cfield = cfg.columns.completion();
            let (prompt_ids, full_ids, assistant_mask) = match (prompt, completion) {
                (Turns::Text(p), Turns::Text(c)) => {
                    let p_ids = encode_plain(tok, p, loc)?;
                    let f_ids = encode_plain(tok, &with_eos(tok, &format!("{p}{c}")), loc)?;
                    (p_ids, f_ids, None)
                }
                (Turns::Chat(p), Turns::Chat(c)) => {
                    let (p_ids, f_ids) = chat_pair(tok, p, c, loc, cfield)?;
                    let mut all = p.clone();
                    all.extend_from_slice(c);
                    let mask = if cfg.assistant_only_loss {
                        let (seq, _) = masked_chat(tok, &all, loc, cfield)?;
                        if seq.input_ids != f_ids {
                            return Err(bad(
                                loc,
                                Some(cfield),
                                "internal: the conversation tokenized twice differs",
                            ));
                        }
                        Some(seq.loss_mask)
                    } else {
                        None
                    };
                    (p_ids, f_ids, mask)
                }
                _ => {
                    return Err(bad(
                        loc,
                        Some(cfield),
                        "prompt and completion must be of the same kind",
                    ))
                }
            };
            let prompt_len = common_prefix_len(&prompt_ids, &full_ids);
            notes.boundary_merge = prompt_len < prompt_ids.len();
            if prompt_len == full_ids.len() {
                return Err(bad(
                    loc,
                    Some(cfield),
                    "empty completion: it adds no tokens after the prompt",
                ));
            }
            notes.no_eos = !has_eos(tok, &full_ids[prompt_len..]);
            let mut mask: Vec<bool> = (0..full_ids.len())
                .map(|i| !completion_only || i >= prompt_len)
                .collect();
            if let Some(am) = assistant_mask {
                for (m, a) in mask.iter_mut().zip(am) {
                    *m = *m && a;
                }
            }
            Sequence {
                input_ids: full_ids,
                loss_mask: mask,
            }
        }
    };
    if seq.n_trained() == 0 {
        return Err(bad(
            loc,
            None,
            "no token to train on (the loss mask is all zero)",
        ));
    }
    Ok((seq, notes))
}

/// Tokenizes a DPO row as TRL does: the prompt, and what `prompt + chosen` / `prompt + rejected` add after it.
pub fn tokenize_dpo(
    row: &DpoRow,
    tok: &ChatTokenizer,
    cfg: &DataConfig,
    loc: &RowLoc,
) -> Result<(DpoTokens, Notes), BadRow> {
    let (cf, rf) = (cfg.columns.chosen(), cfg.columns.rejected());
    let (prompt_ids, chosen_full, rejected_full) = match (&row.prompt, &row.chosen, &row.rejected) {
        (Turns::Text(p), Turns::Text(c), Turns::Text(r)) => (
            encode_plain(tok, p, loc)?,
            encode_plain(tok, &format!("{p}{}", with_eos(tok, c)), loc)?,
            encode_plain(tok, &format!("{p}{}", with_eos(tok, r)), loc)?,
        ),
        (Turns::Chat(p), Turns::Chat(c), Turns::Chat(r)) => {
            let (p_ids, c_ids) = chat_pair(tok, p, c, loc, cf)?;
            let (_, r_ids) = chat_pair(tok, p, r, loc, rf)?;
            (p_ids, c_ids, r_ids)
        }
        _ => {
            return Err(bad(
                loc,
                None,
                "prompt, chosen and rejected must all be strings or all message lists",
            ))
        }
    };
    let prompt_len = common_prefix_len(&prompt_ids, &chosen_full)
        .min(common_prefix_len(&prompt_ids, &rejected_full));
    let out = DpoTokens {
        prompt_ids: prompt_ids[..prompt_len].to_vec(),
        chosen_ids: chosen_full[prompt_len..].to_vec(),
        rejected_ids: rejected_full[prompt_len..].to_vec(),
    };
    if out.chosen_ids.is_empty() {
        return Err(bad(
            loc,
            Some(cf),
            "empty completion: it adds no tokens after the prompt",
        ));
    }
    if out.rejected_ids.is_empty() {
        return Err(bad(
            loc,
            Some(rf),
            "empty completion: it adds no tokens after the prompt",
        ));
    }
    if out.chosen_ids == out.rejected_ids {
        return Err(bad(
            loc,
            Some(rf),
            format!("`{cf}` and `{rf}` tokenize identically: there is no preference to learn"),
        ));
    }
    let notes = Notes {
        boundary_merge: prompt_len < prompt_ids.len(),
        no_eos: !has_eos(tok, &out.chosen_ids) || !has_eos(tok, &out.rejected_ids),
    };
    Ok((out, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_preserving_turn_is_all_of_it() {
        let before = "<u>q</u><a>";
        let alone = "<u>q</u><a>answer</a>";
        let full = "<u>q</u><a>answer</a><u>next</u><a>more</a>";
        assert_eq!(turn_span(before, alone, full), Ok((11, 21)));
    }

    #[test]
    fn a_turn_shortened_inside_the_conversation_is_its_tail() {
        // Qwen3: the thinking block of a turn before the last user message is dropped.
        let before = "<u>q</u><a>";
        let alone = "<u>q</u><a><think></think>answer</a>";
        let full = "<u>q</u><a>answer</a><u>next</u><a><think></think>more</a>";
        assert_eq!(turn_span(before, alone, full), Ok((11, 21)));
        assert_eq!(&full[11..21], "answer</a>");
    }

    #[test]
    fn a_turn_rendered_otherwise_is_an_error() {
        let err = turn_span("<a>", "<a>answer</a>", "<a>ANSWER|<u>next").unwrap_err();
        assert!(err.contains("cannot find this assistant turn"), "{err}");
        let err = turn_span("<x>", "<a>answer</a>", "<a>answer</a>").unwrap_err();
        assert!(err.contains("conversation before it"), "{err}");
    }

    #[test]
    fn longest_tail_prefers_the_whole_turn() {
        assert_eq!(longest_tail_continued("aXa", "aXa|"), 3);
        assert_eq!(longest_tail_continued("<t>é</t>ok", "ok|"), 2);
        assert_eq!(longest_tail_continued("abc", "x"), 0);
    }
}
