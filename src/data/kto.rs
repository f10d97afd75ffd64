//! KTO data: TRL's unpaired preference layout (`prompt`, `completion`, boolean `label`; strings or
//! message lists), tokenized as TRL's `KTOTrainer` does, and the mismatched pairs its KL estimate
//! is computed on.
//!
//! - Tokens: as DPO's (see [`super::tokenize`]): prompt ids = template(prompt, generation prompt)
//!   or the plain prompt; the completion is what `prompt + completion` adds after the common prefix
//!   (plain-text completions get EOS appended when missing).
//! - Length: `prompt + completion` keeps its first `max_length` tokens; a row whose prompt alone
//!   fills `max_length` is dropped (TRL filters them before anything else).
//! - KL pairs: the kept rows, in file order, are cut into chunks of the training batch size and
//!   each chunk's completions rotate by one: `(x_1, y_n), (x_2, y_1), …, (x_n, y_{n−1})` (TRL's
//!   `add_kl_completion_ids`, a batched map over the dataset). Fixing them per row rather than per
//!   sampled batch is what lets the reference log-probs of both sequences be precomputed and cached.
//!
//! Each row is held as a [`DpoExample`] whose "chosen" is `prompt + completion` and whose
//! "rejected" is `prompt + KL completion`, so the packed pair forward pass, the reference pass and
//! the reference cache of DPO serve KTO unchanged.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde_json::{Map, Value};

use super::config::{DataConfig, TruncationMode};
use super::pipeline::{counted_fit, file_rows, load_rows, note, DpoDataset, Stats};
use super::reader::{describe, list_files, BadRow, PendingRow, RawDataset, RowLoc};
use super::schema::{check_pair, get, get_turns, Schema, Turns};
use super::tokenize::{
    chat_pair, common_prefix_len, encode_plain, has_eos, with_eos, DpoTokens, Notes,
};
use super::tokenizer::ChatTokenizer;
use super::truncate::{truncate_dpo, DpoExample, Fit};
use super::Stage;

/// A checked unpaired row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KtoRow {
    pub prompt: Turns,
    pub completion: Turns,
    /// Desirable (`true`) or undesirable.
    pub label: bool,
}

/// A tokenized row: the prompt and what the completion adds after it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KtoTokens {
    pub prompt_ids: Vec<u32>,
    pub completion_ids: Vec<u32>,
    pub label: bool,
}

/// A KTO dataset ready for batching: `pairs.examples[i]` holds row `i`'s sequence ("chosen") and
/// its KL sequence ("rejected"), `labels[i]` its label.
#[derive(Debug, Clone)]
pub struct KtoDataset {
    pub pairs: DpoDataset,
    pub labels: Vec<bool>,
    /// The chunk size the KL completions were rotated within.
    pub kl_chunk: usize,
}

impl KtoDataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Lengths of the longer sequence of each row (its own or its KL one), for batching.
    pub fn lengths(&self) -> Vec<usize> {
        self.pairs.lengths()
    }

    pub fn desirable(&self) -> usize {
        self.labels.iter().filter(|&&l| l).count()
    }
}

/// The unpaired layout needs `prompt`, `completion` and `label`.
pub fn detect(columns: &Map<String, Value>, cfg: &DataConfig) -> Result<Schema> {
    let c = &cfg.columns;
    let has = |k: &str| columns.contains_key(k);
    let names: Vec<&str> = columns.keys().map(String::as_str).collect();
    for key in [c.prompt(), c.completion(), c.label()] {
        if !has(key) {
            bail!(
                "field `{key}`: missing; the KTO (unpaired preference) layout needs `{}`, `{}` and a \
                 boolean `{}` (true: desirable), got columns [{}] (other names can be set under \
                 [kto.columns])",
                c.prompt(),
                c.completion(),
                c.label(),
                names.join(", ")
            );
        }
    }
    Ok(Schema::Unpaired)
}

/// Checks one unpaired row.
pub fn parse_kto(
    row: &Map<String, Value>,
    loc: &RowLoc,
    cfg: &DataConfig,
) -> Result<KtoRow, BadRow> {
    let c = &cfg.columns;
    let (pf, cf, lf) = (c.prompt(), c.completion(), c.label());
    let label = match get(row, loc, lf).map_err(|mut b| {
        b.message = format!(
            "{}: KTO needs a boolean label (true: desirable completion, false: undesirable)",
            b.message
        );
        b
    })? {
        Value::Bool(b) => *b,
        other => {
            return Err(BadRow::new(
                loc,
                Some(lf),
                format!(
                    "wrong type: expected a boolean (true: desirable, false: undesirable), got {}",
                    describe(other)
                ),
            ))
        }
    };
    let prompt = get_turns(row, loc, pf)?;
    let completion = get_turns(row, loc, cf)?;
    check_pair(&prompt, pf, &completion, cf, loc)?;
    Ok(KtoRow {
        prompt,
        completion,
        label,
    })
}

/// Tokenizes an unpaired row as TRL's `KTOTrainer` does.
pub fn tokenize_kto(
    row: &KtoRow,
    tok: &ChatTokenizer,
    cfg: &DataConfig,
    loc: &RowLoc,
) -> Result<(KtoTokens, Notes), BadRow> {
    let cf = cfg.columns.completion();
    let (prompt_ids, full) = match (&row.prompt, &row.completion) {
        (Turns::Text(p), Turns::Text(c)) => (
            encode_plain(tok, p, loc)?,
            encode_plain(tok, &format!("{p}{}", with_eos(tok, c)), loc)?,
        ),
        (Turns::Chat(p), Turns::Chat(c)) => chat_pair(tok, p, c, loc, cf)?,
        _ => {
            return Err(BadRow::new(
                loc,
                None,
                "prompt and completion must both be strings or both message lists",
            ))
        }
    };
    let prompt_len = common_prefix_len(&prompt_ids, &full);
    let out = KtoTokens {
        prompt_ids: prompt_ids[..prompt_len].to_vec(),
        completion_ids: full[prompt_len..].to_vec(),
        label: row.label,
    };
    if out.completion_ids.is_empty() {
        return Err(BadRow::new(
            loc,
            Some(cf),
            "empty completion: it adds no tokens after the prompt",
        ));
    }
    let notes = Notes {
        boundary_merge: prompt_len < prompt_ids.len(),
        no_eos: !has_eos(tok, &out.completion_ids),
    };
    Ok((out, notes))
}

/// TRL's length rule for a KTO row: `prompt + completion` keeps its first tokens; a prompt that
/// fills the limit alone leaves nothing to train on.
pub fn fit_kto(t: KtoTokens, cfg: &DataConfig) -> Fit<KtoTokens> {
    let Some(limit) = cfg.length_limit() else {
        return Fit::Whole(t);
    };
    let len = t.prompt_ids.len() + t.completion_ids.len();
    if len <= limit.tokens {
        return Fit::Whole(t);
    }
    match cfg.truncation_mode {
        TruncationMode::Off => Fit::TooLong(format!(
            "{len} tokens (prompt + completion), longer than {limit} (truncation_mode = \"off\")"
        )),
        _ if t.prompt_ids.len() >= limit.tokens => Fit::Dropped(format!(
            "the prompt alone ({} tokens) fills {limit}",
            t.prompt_ids.len()
        )),
        // The cut itself is made with the KL sequence's, in `kl_pairs`.
        _ => Fit::Truncated(t),
    }
}

/// Pairs each row with the completion of the row before it in its chunk of `chunk` rows (the
/// first with the chunk's last), both sequences cut to the length limit from the start.
pub fn kl_pairs(rows: &[KtoTokens], chunk: usize, cfg: &DataConfig) -> Vec<DpoExample> {
    let keep_start = DataConfig {
        truncation_mode: TruncationMode::KeepStart,
        max_prompt_length: None,
        max_completion_length: None,
        ..cfg.clone()
    };
    let mut out = Vec::with_capacity(rows.len());
    for block in rows.chunks(chunk.max(1)) {
        for (i, row) in block.iter().enumerate() {
            let other = &block[(i + block.len() - 1) % block.len()];
            let tokens = DpoTokens {
                prompt_ids: row.prompt_ids.clone(),
                chosen_ids: row.completion_ids.clone(),
                rejected_ids: other.completion_ids.clone(),
            };
            match truncate_dpo(tokens, &keep_start) {
                Fit::Whole(e) | Fit::Truncated(e) => out.push(e),
                // The prompt is shorter than the limit (`fit_kto` dropped the others), so both
                // sequences keep at least one completion token.
                Fit::Dropped(why) | Fit::TooLong(why) => {
                    unreachable!("a kept KTO row cannot be dropped here: {why}")
                }
            }
        }
    }
    out
}

/// Reads a dataset file or folder of unpaired rows and prepares it for KTO, the KL completions
/// rotated within chunks of `kl_chunk` rows (the training batch size).
pub fn load_kto(
    path: &Path,
    split: Option<&str>,
    tok: &ChatTokenizer,
    cfg: &DataConfig,
    kl_chunk: usize,
) -> Result<KtoDataset> {
    cfg.validate()?;
    let files = list_files(path, split)?;
    let rows = file_rows(files.clone());
    kto_from_rows(files, rows, tok, cfg, kl_chunk)
}

/// Prepares rows that were already read for KTO.
pub fn prepare_kto(
    raw: RawDataset,
    tok: &ChatTokenizer,
    cfg: &DataConfig,
    kl_chunk: usize,
) -> Result<KtoDataset> {
    let rows = raw.rows.into_iter().map(|r| Ok(PendingRow::from(r)));
    kto_from_rows(raw.files, rows, tok, cfg, kl_chunk)
}

fn kto_from_rows(
    files: Vec<PathBuf>,
    rows: impl Iterator<Item = Result<PendingRow>>,
    tok: &ChatTokenizer,
    cfg: &DataConfig,
    kl_chunk: usize,
) -> Result<KtoDataset> {
    if cfg.truncation_mode == TruncationMode::KeepEnd {
        bail!("truncation_mode = \"keep_end\" is not one KTO has: TRL keeps the start of each sequence (use keep_start or off)");
    }
    let work = |obj: &Map<String, Value>, loc: &RowLoc, _schema: Schema| {
        let row = parse_kto(obj, loc, cfg)?;
        let conv = row.prompt.is_chat();
        let (t, notes) = tokenize_kto(&row, tok, cfg, loc)?;
        Ok((t, notes, conv))
    };
    let keep = |stats: &mut Stats, loc: &RowLoc, (t, notes, conv): (KtoTokens, Notes, bool)| {
        stats.conversational |= conv;
        stats.prompt_lengths.push(t.prompt_ids.len());
        stats.completion_lengths.push(t.completion_ids.len());
        stats
            .lengths
            .push(t.prompt_ids.len() + t.completion_ids.len());
        let kept = counted_fit(stats, loc, fit_kto(t, cfg), cfg)?;
        if kept.is_some() {
            note(stats, notes);
        }
        Ok(kept)
    };
    let paired = std::rc::Rc::new(std::cell::Cell::new(0));
    let rows = super::unpair::unpaired(rows, cfg.columns.clone(), paired.clone());
    let (tokens, locs, mut stats) = load_rows(Stage::Kto, files, rows, cfg, work, keep)?;
    stats.unpaired = paired.get();
    let labels: Vec<bool> = tokens.iter().map(|t| t.label).collect();
    check_labels(&stats, &labels, cfg)?;
    let examples = kl_pairs(&tokens, kl_chunk, cfg);
    stats.longest_kept = examples.iter().map(|e| e.chosen_len()).max().unwrap_or(0);
    Ok(KtoDataset {
        pairs: DpoDataset {
            examples,
            locs,
            stats,
            pad_id: tok.pad_id(),
        },
        labels,
        kl_chunk: kl_chunk.max(1),
    })
}

/// KTO learns from the contrast of desirable and undesirable completions: both must be there.
fn check_labels(stats: &Stats, labels: &[bool], cfg: &DataConfig) -> Result<()> {
    let desirable = labels.iter().filter(|&&l| l).count();
    if desirable == 0 || desirable == labels.len() {
        let files: Vec<String> = stats
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        bail!(
            "{}, field `{}`: all {} kept rows have label = {}; KTO needs both desirable (true) and \
             undesirable (false) completions",
            files.join(", "),
            cfg.columns.label(),
            labels.len(),
            desirable > 0
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(p: usize, c: u32, n: usize) -> KtoTokens {
        KtoTokens {
            prompt_ids: (0..p as u32).collect(),
            completion_ids: vec![c; n],
            label: c.is_multiple_of(2),
        }
    }

    #[test]
    fn kl_completions_rotate_by_one_within_each_chunk() {
        let rows: Vec<_> = (0..5).map(|i| row(2, 100 + i, 1)).collect();
        let pairs = kl_pairs(&rows, 2, &DataConfig::default());
        let kl: Vec<u32> = pairs.iter().map(|e| e.parts.rejected_ids[0]).collect();
        // Chunks [0, 1], [2, 3], [4]: TRL's `[y_n] + y[:-1]` per chunk.
        assert_eq!(kl, vec![101, 100, 103, 102, 104]);
        let own: Vec<u32> = pairs.iter().map(|e| e.parts.chosen_ids[0]).collect();
        assert_eq!(own, vec![100, 101, 102, 103, 104]);
    }

    #[test]
    fn both_sequences_keep_their_start() {
        let cfg = DataConfig {
            max_length: Some(5),
            ..DataConfig::default()
        };
        let rows = vec![row(3, 7, 4), row(3, 8, 1)];
        let pairs = kl_pairs(&rows, 2, &cfg);
        assert_eq!(pairs[0].chosen().input_ids, vec![0, 1, 2, 7, 7]);
        assert_eq!(pairs[0].rejected().input_ids, vec![0, 1, 2, 8]);
        assert_eq!(pairs[1].rejected().input_ids, vec![0, 1, 2, 7, 7]);
        assert_eq!(
            pairs[1].rejected().loss_mask,
            vec![false, false, false, true, true]
        );
    }

    #[test]
    fn a_prompt_filling_max_length_is_dropped() {
        let cfg = DataConfig {
            max_length: Some(3),
            ..DataConfig::default()
        };
        assert!(matches!(fit_kto(row(3, 1, 2), &cfg), Fit::Dropped(_)));
        assert!(matches!(fit_kto(row(2, 1, 2), &cfg), Fit::Truncated(_)));
        assert!(matches!(fit_kto(row(2, 1, 1), &cfg), Fit::Whole(_)));
        let off = DataConfig {
            truncation_mode: TruncationMode::Off,
            ..cfg
        };
        assert!(matches!(fit_kto(row(2, 1, 2), &off), Fit::TooLong(_)));
    }
}
