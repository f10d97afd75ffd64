//! The whole data flow: read → detect the schema → check rows → tokenize → truncate, with bad rows stopping the
//! run (or skipped and counted with `skip_bad_rows`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::config::DataConfig;
use super::reader::{read_dataset, BadRow, RawDataset, RowLoc};
use super::schema::{self, Schema};
use super::tokenize::{tokenize_dpo, tokenize_sft, Notes, Sequence};
use super::tokenizer::ChatTokenizer;
use super::truncate::{truncate_dpo, truncate_sft, DpoExample, Fit};
use super::Stage;

/// What happened to the rows of a dataset.
#[derive(Debug, Clone)]
pub struct Stats {
    pub stage: Stage,
    pub files: Vec<PathBuf>,
    pub schema: Schema,
    /// Whether the rows are conversations (rendered with the chat template) or plain text.
    pub conversational: bool,
    /// Rows read from the files.
    pub rows: usize,
    /// Rows kept for training.
    pub examples: usize,
    /// Bad rows skipped (only with `skip_bad_rows`).
    pub bad_rows: Vec<BadRow>,
    /// Rows cut to fit the length limits (kept).
    pub truncated: usize,
    /// Rows left with nothing to train on after truncation (not kept), and why.
    pub dropped: Vec<(RowLoc, String)>,
    /// Rows whose prompt tokens merged with the completion's at the boundary (TRL's `common_prefix_length` case).
    pub boundary_merges: usize,
    /// Rows whose completion has no EOS token.
    pub no_eos: usize,
    /// Token length of each kept-or-dropped row before truncation (DPO: prompt + longer completion).
    pub lengths: Vec<usize>,
    /// DPO: prompt lengths before truncation.
    pub prompt_lengths: Vec<usize>,
    /// DPO: completion lengths (chosen and rejected) before truncation.
    pub completion_lengths: Vec<usize>,
}

/// An SFT dataset ready for batching.
#[derive(Debug, Clone)]
pub struct SftDataset {
    pub examples: Vec<Sequence>,
    /// Where each example came from.
    pub locs: Vec<RowLoc>,
    pub stats: Stats,
    /// The padding id to batch with.
    pub pad_id: u32,
}

/// A DPO dataset ready for batching.
#[derive(Debug, Clone)]
pub struct DpoDataset {
    pub examples: Vec<DpoExample>,
    pub locs: Vec<RowLoc>,
    pub stats: Stats,
    pub pad_id: u32,
}

impl SftDataset {
    /// Lengths of the examples, for [`super::batch_order`].
    pub fn lengths(&self) -> Vec<usize> {
        self.examples.iter().map(Sequence::len).collect()
    }
}

impl DpoDataset {
    /// Lengths of the longer sequence of each pair, for [`super::batch_order`].
    pub fn lengths(&self) -> Vec<usize> {
        self.examples
            .iter()
            .map(|e| e.chosen.len().max(e.rejected.len()))
            .collect()
    }
}

fn stop(bad: &BadRow) -> anyhow::Error {
    anyhow::anyhow!("{bad} (the run stops at the first bad row; --skip-bad-rows or skip_bad_rows = true skips them)")
}

/// Reads a dataset file or folder (see [`read_dataset`]) and prepares it for SFT.
pub fn load_sft(
    path: &Path,
    split: Option<&str>,
    tok: &ChatTokenizer,
    cfg: &DataConfig,
) -> Result<SftDataset> {
    cfg.validate()?;
    prepare_sft(read_dataset(path, split)?, tok, cfg)
}

/// Reads a dataset file or folder (see [`read_dataset`]) and prepares it for DPO.
pub fn load_dpo(
    path: &Path,
    split: Option<&str>,
    tok: &ChatTokenizer,
    cfg: &DataConfig,
) -> Result<DpoDataset> {
    cfg.validate()?;
    prepare_dpo(read_dataset(path, split)?, tok, cfg)
}

/// The stage a dataset suits: DPO when its first readable row has the `chosen` and `rejected` columns, else SFT.
pub fn detect_stage(raw: &RawDataset, cfg: &DataConfig) -> Stage {
    let preference = raw
        .rows
        .iter()
        .find_map(|r| r.value.as_ref().ok())
        .is_some_and(|row| {
            row.contains_key(cfg.columns.chosen()) && row.contains_key(cfg.columns.rejected())
        });
    if preference {
        Stage::Dpo
    } else {
        Stage::Sft
    }
}

fn detect(raw: &RawDataset, stage: Stage, cfg: &DataConfig) -> Result<Schema> {
    let Some(first) = raw.rows.iter().find(|r| r.value.is_ok()) else {
        match raw.rows.first() {
            Some(r) => match &r.value {
                Err(bad) if !cfg.skip_bad_rows => return Err(stop(bad)),
                _ => bail!(
                    "no readable row in {} ({} bad rows)",
                    files(raw),
                    raw.rows.len()
                ),
            },
            None => bail!("{}: no rows", files(raw)),
        }
    };
    let cols = first.value.as_ref().expect("found an Ok row");
    schema::detect(cols, stage, cfg).map_err(|e| anyhow::anyhow!("{}: {e:#}", first.loc))
}

fn files(raw: &RawDataset) -> String {
    raw.files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn new_stats(raw: &RawDataset, stage: Stage, schema: Schema) -> Stats {
    Stats {
        stage,
        files: raw.files.clone(),
        schema,
        conversational: false,
        rows: raw.rows.len(),
        examples: 0,
        bad_rows: Vec::new(),
        truncated: 0,
        dropped: Vec::new(),
        boundary_merges: 0,
        no_eos: 0,
        lengths: Vec::new(),
        prompt_lengths: Vec::new(),
        completion_lengths: Vec::new(),
    }
}

/// Handles one row's outcome: a bad row stops the run or is counted.
fn handle_bad(stats: &mut Stats, bad: BadRow, cfg: &DataConfig) -> Result<()> {
    if cfg.skip_bad_rows {
        stats.bad_rows.push(bad);
        Ok(())
    } else {
        Err(stop(&bad))
    }
}

fn note(stats: &mut Stats, n: Notes) {
    stats.boundary_merges += usize::from(n.boundary_merge);
    stats.no_eos += usize::from(n.no_eos);
}

fn finish(stats: &Stats) -> Result<()> {
    if stats.examples == 0 {
        bail!(
            "no usable rows in {} ({} read, {} bad rows skipped, {} dropped by truncation)",
            stats
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            stats.rows,
            stats.bad_rows.len(),
            stats.dropped.len()
        );
    }
    Ok(())
}

/// Prepares rows that were already read for SFT.
pub fn prepare_sft(raw: RawDataset, tok: &ChatTokenizer, cfg: &DataConfig) -> Result<SftDataset> {
    let schema = detect(&raw, Stage::Sft, cfg)?;
    let mut stats = new_stats(&raw, Stage::Sft, schema);
    let results: Vec<Result<(Sequence, Notes, bool), BadRow>> = raw
        .rows
        .par_iter()
        .map(|r| {
            let obj = r.value.as_ref().map_err(Clone::clone)?;
            let row = schema::parse_sft(obj, &r.loc, schema, cfg)?;
            let conv = matches!(
                &row,
                schema::SftRow::Messages(_)
                    | schema::SftRow::PromptCompletion {
                        prompt: schema::Turns::Chat(_),
                        ..
                    }
            );
            let (seq, notes) = tokenize_sft(&row, tok, cfg, &r.loc)?;
            Ok((seq, notes, conv))
        })
        .collect();
    let mut examples = Vec::new();
    let mut locs = Vec::new();
    for (r, res) in raw.rows.iter().zip(results) {
        let (seq, notes, conv) = match res {
            Ok(x) => x,
            Err(bad) => {
                handle_bad(&mut stats, bad, cfg)?;
                continue;
            }
        };
        stats.conversational |= conv;
        stats.lengths.push(seq.len());
        let (kept, truncated) = match truncate_sft(seq, cfg) {
            Fit::Whole(s) => (s, false),
            Fit::Truncated(s) => (s, true),
            Fit::Dropped(why) => {
                stats.dropped.push((r.loc.clone(), why));
                continue;
            }
            Fit::TooLong(why) => {
                handle_bad(&mut stats, BadRow::new(&r.loc, None, why), cfg)?;
                continue;
            }
        };
        stats.truncated += usize::from(truncated);
        note(&mut stats, notes);
        examples.push(kept);
        locs.push(r.loc.clone());
    }
    stats.examples = examples.len();
    finish(&stats)?;
    Ok(SftDataset {
        examples,
        locs,
        stats,
        pad_id: tok.pad_id(),
    })
}

/// Prepares rows that were already read for DPO.
pub fn prepare_dpo(raw: RawDataset, tok: &ChatTokenizer, cfg: &DataConfig) -> Result<DpoDataset> {
    let schema = detect(&raw, Stage::Dpo, cfg)?;
    let mut stats = new_stats(&raw, Stage::Dpo, schema);
    let results: Vec<_> = raw
        .rows
        .par_iter()
        .map(|r| {
            let obj = r.value.as_ref().map_err(Clone::clone)?;
            let row = schema::parse_dpo(obj, &r.loc, schema, cfg)?;
            let conv = row.prompt.is_chat();
            let (t, notes) = tokenize_dpo(&row, tok, cfg, &r.loc)?;
            Ok((t, notes, conv))
        })
        .collect();
    let mut examples = Vec::new();
    let mut locs = Vec::new();
    for (r, res) in raw.rows.iter().zip(results) {
        let (t, notes, conv) = match res {
            Ok(x) => x,
            Err(bad) => {
                handle_bad(&mut stats, bad, cfg)?;
                continue;
            }
        };
        stats.conversational |= conv;
        stats.prompt_lengths.push(t.prompt_ids.len());
        stats.completion_lengths.push(t.chosen_ids.len());
        stats.completion_lengths.push(t.rejected_ids.len());
        stats
            .lengths
            .push(t.prompt_ids.len() + t.chosen_ids.len().max(t.rejected_ids.len()));
        match truncate_dpo(t, cfg) {
            Fit::Whole(ex) => {
                note(&mut stats, notes);
                examples.push(ex);
                locs.push(r.loc.clone());
            }
            Fit::Truncated(ex) => {
                stats.truncated += 1;
                note(&mut stats, notes);
                examples.push(ex);
                locs.push(r.loc.clone());
            }
            Fit::Dropped(why) => stats.dropped.push((r.loc.clone(), why)),
            Fit::TooLong(why) => handle_bad(&mut stats, BadRow::new(&r.loc, None, why), cfg)?,
        }
    }
    stats.examples = examples.len();
    finish(&stats)?;
    Ok(DpoDataset {
        examples,
        locs,
        stats,
        pad_id: tok.pad_id(),
    })
}
