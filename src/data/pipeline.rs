//! The whole data flow: read → detect the schema → check rows → tokenize → truncate, with bad rows stopping the
//! run (or skipped and counted with `skip_bad_rows`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use rayon::prelude::*;

use serde_json::{Map, Value};

use super::config::DataConfig;
use super::reader::{
    list_files, stream_file, BadRow, PendingRow, RawDataset, RawRow, RowLoc, RowStream,
};
use super::schema::{self, Schema};
use super::tokenize::{tokenize_dpo, tokenize_sft, DpoTokens, Notes, Sequence};
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
    /// Token length of the longest kept sequence (DPO: of the chosen or rejected sequence), after truncation.
    pub longest_kept: usize,
    /// Token length of each kept-or-dropped row before truncation (DPO: prompt + longer completion).
    pub lengths: Vec<usize>,
    /// DPO: prompt lengths before truncation.
    pub prompt_lengths: Vec<usize>,
    /// DPO: completion lengths (chosen and rejected) before truncation.
    pub completion_lengths: Vec<usize>,
    /// KTO: paired rows read as two unpaired rows each ([`super::unpair`]).
    pub unpaired: usize,
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
        self.examples.iter().map(|e| e.len()).collect()
    }
}

fn stop(bad: &BadRow) -> anyhow::Error {
    anyhow::anyhow!("{bad} (the run stops at the first bad row; --skip-bad-rows or skip_bad_rows = true skips them)")
}

/// Reads a dataset file or folder (see [`read_dataset`]) and prepares it for SFT, a chunk of rows at a time: the
/// raw text of a row is dropped once it is tokenized, so only token ids stay in memory.
pub fn load_sft(
    path: &Path,
    split: Option<&str>,
    tok: &ChatTokenizer,
    cfg: &DataConfig,
) -> Result<SftDataset> {
    cfg.validate()?;
    let files = list_files(path, split)?;
    let rows = file_rows(files.clone());
    sft_from_rows(files, rows, tok, cfg)
}

/// Reads a dataset file or folder (see [`read_dataset`]) and prepares it for DPO, a chunk of rows at a time.
pub fn load_dpo(
    path: &Path,
    split: Option<&str>,
    tok: &ChatTokenizer,
    cfg: &DataConfig,
) -> Result<DpoDataset> {
    cfg.validate()?;
    let files = list_files(path, split)?;
    let rows = file_rows(files.clone());
    dpo_from_rows(files, rows, tok, cfg)
}

/// The stage a dataset suits: DPO when its first readable row has the `chosen` and `rejected` columns, else SFT.
pub fn detect_stage(raw: &RawDataset, cfg: &DataConfig) -> Stage {
    let first = raw.rows.iter().find_map(|r| r.value.as_ref().ok());
    stage_of(first, cfg)
}

/// [`detect_stage`] from the first readable row (see [`super::reader::first_readable_row`]).
pub fn stage_of(first_row: Option<&Map<String, Value>>, cfg: &DataConfig) -> Stage {
    let preference = first_row.is_some_and(|row| {
        row.contains_key(cfg.columns.chosen()) && row.contains_key(cfg.columns.rejected())
    });
    if preference {
        Stage::Dpo
    } else {
        Stage::Sft
    }
}

/// Rows per chunk: enough to keep both cores busy, few enough that the chunk's raw text stays small.
const CHUNK_ROWS: usize = 2048;

/// Files under this size load too fast to need a progress bar.
const PROGRESS_MIN_BYTES: u64 = 16 << 20;

/// The rows of `files` in order, each file opened when the one before it is done.
pub(super) fn file_rows(files: Vec<PathBuf>) -> impl Iterator<Item = Result<PendingRow>> {
    files.into_iter().flat_map(|f| match stream_file(&f) {
        Ok(rows) => rows,
        Err(e) => Box::new(std::iter::once(Err(e))) as RowStream,
    })
}

fn files_text(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn progress(files: &[PathBuf]) -> indicatif::ProgressBar {
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    if total < PROGRESS_MIN_BYTES {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "tokenizing {bar:30} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Runs the data flow over `rows` a chunk at a time: `work` parses and tokenizes one row (in parallel), `keep`
/// takes each result in row order and returns what training keeps of it.
pub(super) fn load_rows<W: Send, T>(
    stage: Stage,
    files: Vec<PathBuf>,
    rows: impl Iterator<Item = Result<PendingRow>>,
    cfg: &DataConfig,
    work: impl Fn(&Map<String, Value>, &RowLoc, Schema) -> Result<W, BadRow> + Sync,
    mut keep: impl FnMut(&mut Stats, &RowLoc, W) -> Result<Option<T>>,
) -> Result<(Vec<T>, Vec<RowLoc>, Stats)> {
    let bar = progress(&files);
    let mut stats: Option<Stats> = None;
    let mut early_bad = Vec::new();
    let mut read = 0;
    let (mut examples, mut locs) = (Vec::new(), Vec::new());
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        let pending = rows.by_ref().take(CHUNK_ROWS).collect::<Result<Vec<_>>>()?;
        bar.inc(pending.iter().map(PendingRow::text_bytes).sum::<usize>() as u64);
        read += pending.len();
        let chunk: Vec<RawRow> = pending.into_par_iter().map(PendingRow::parse).collect();
        if stats.is_none() {
            if let Some(first) = chunk.iter().find(|r| r.value.is_ok()) {
                let cols = first.value.as_ref().expect("found an Ok row");
                let schema = schema::detect(cols, stage, cfg)
                    .map_err(|e| anyhow::anyhow!("{}: {e:#}", first.loc))?;
                let mut s = new_stats(&files, stage, schema);
                s.bad_rows = std::mem::take(&mut early_bad);
                stats = Some(s);
            }
        }
        let Some(st) = stats.as_mut() else {
            // No readable row yet: every row of the chunk is bad.
            for r in chunk {
                if let Err(bad) = r.value {
                    if !cfg.skip_bad_rows {
                        return Err(stop(&bad));
                    }
                    early_bad.push(bad);
                }
            }
            continue;
        };
        let schema = st.schema;
        let results: Vec<Result<W, BadRow>> = chunk
            .par_iter()
            .map(|r| work(r.value.as_ref().map_err(Clone::clone)?, &r.loc, schema))
            .collect();
        for (r, res) in chunk.into_iter().zip(results) {
            match res {
                Err(bad) => handle_bad(st, bad, cfg)?,
                Ok(w) => {
                    if let Some(t) = keep(st, &r.loc, w)? {
                        examples.push(t);
                        locs.push(r.loc);
                    }
                }
            }
        }
    }
    bar.finish_and_clear();
    let Some(mut stats) = stats else {
        bail!(
            "no readable row in {} ({} bad rows)",
            files_text(&files),
            read
        );
    };
    stats.rows = read;
    stats.examples = examples.len();
    finish(&stats)?;
    Ok((examples, locs, stats))
}

fn new_stats(files: &[PathBuf], stage: Stage, schema: Schema) -> Stats {
    Stats {
        stage,
        files: files.to_vec(),
        schema,
        conversational: false,
        rows: 0,
        examples: 0,
        bad_rows: Vec::new(),
        truncated: 0,
        dropped: Vec::new(),
        boundary_merges: 0,
        no_eos: 0,
        longest_kept: 0,
        lengths: Vec::new(),
        prompt_lengths: Vec::new(),
        completion_lengths: Vec::new(),
        unpaired: 0,
    }
}

/// Handles one row's outcome: a bad row stops the run or is counted.
pub(super) fn handle_bad(stats: &mut Stats, bad: BadRow, cfg: &DataConfig) -> Result<()> {
    if cfg.skip_bad_rows {
        stats.bad_rows.push(bad);
        Ok(())
    } else {
        Err(stop(&bad))
    }
}

pub(super) fn note(stats: &mut Stats, n: Notes) {
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

/// What a row becomes after the length limits, counted: kept (cut or whole), dropped with its
/// reason, or a bad row (`truncation_mode = "off"`).
pub(super) fn counted_fit<T>(
    stats: &mut Stats,
    loc: &RowLoc,
    fit: Fit<T>,
    cfg: &DataConfig,
) -> Result<Option<T>> {
    match fit {
        Fit::Whole(kept) => Ok(Some(kept)),
        Fit::Truncated(kept) => {
            stats.truncated += 1;
            Ok(Some(kept))
        }
        Fit::Dropped(why) => {
            stats.dropped.push((loc.clone(), why));
            Ok(None)
        }
        Fit::TooLong(why) => {
            handle_bad(stats, BadRow::new(loc, None, why), cfg)?;
            Ok(None)
        }
    }
}

/// Prepares rows that were already read for SFT.
pub fn prepare_sft(raw: RawDataset, tok: &ChatTokenizer, cfg: &DataConfig) -> Result<SftDataset> {
    let rows = raw.rows.into_iter().map(|r| Ok(PendingRow::from(r)));
    sft_from_rows(raw.files, rows, tok, cfg)
}

fn sft_from_rows(
    files: Vec<PathBuf>,
    rows: impl Iterator<Item = Result<PendingRow>>,
    tok: &ChatTokenizer,
    cfg: &DataConfig,
) -> Result<SftDataset> {
    let work = |obj: &Map<String, Value>, loc: &RowLoc, schema: Schema| {
        let row = schema::parse_sft(obj, loc, schema, cfg)?;
        let conv = matches!(
            &row,
            schema::SftRow::Messages(_)
                | schema::SftRow::PromptCompletion {
                    prompt: schema::Turns::Chat(_),
                    ..
                }
        );
        let (seq, notes) = tokenize_sft(&row, tok, cfg, loc)?;
        Ok((seq, notes, conv))
    };
    let keep = |stats: &mut Stats, loc: &RowLoc, (seq, notes, conv): (Sequence, Notes, bool)| {
        stats.conversational |= conv;
        stats.lengths.push(seq.len());
        let kept = counted_fit(stats, loc, truncate_sft(seq, cfg), cfg)?;
        if kept.is_some() {
            note(stats, notes);
        }
        Ok(kept)
    };
    let (examples, locs, mut stats) = load_rows(Stage::Sft, files, rows, cfg, work, keep)?;
    stats.longest_kept = examples.iter().map(Sequence::len).max().unwrap_or(0);
    Ok(SftDataset {
        examples,
        locs,
        stats,
        pad_id: tok.pad_id(),
    })
}

/// Prepares rows that were already read for DPO.
pub fn prepare_dpo(raw: RawDataset, tok: &ChatTokenizer, cfg: &DataConfig) -> Result<DpoDataset> {
    let rows = raw.rows.into_iter().map(|r| Ok(PendingRow::from(r)));
    dpo_from_rows(raw.files, rows, tok, cfg)
}

fn dpo_from_rows(
    files: Vec<PathBuf>,
    rows: impl Iterator<Item = Result<PendingRow>>,
    tok: &ChatTokenizer,
    cfg: &DataConfig,
) -> Result<DpoDataset> {
    let work = |obj: &Map<String, Value>, loc: &RowLoc, schema: Schema| {
        let row = schema::parse_dpo(obj, loc, schema, cfg)?;
        let conv = row.prompt.is_chat();
        let (t, notes) = tokenize_dpo(&row, tok, cfg, loc)?;
        Ok((t, notes, conv))
    };
    let keep = |stats: &mut Stats, loc: &RowLoc, (t, notes, conv): (DpoTokens, Notes, bool)| {
        stats.conversational |= conv;
        stats.prompt_lengths.push(t.prompt_ids.len());
        stats.completion_lengths.push(t.chosen_ids.len());
        stats.completion_lengths.push(t.rejected_ids.len());
        stats
            .lengths
            .push(t.prompt_ids.len() + t.chosen_ids.len().max(t.rejected_ids.len()));
        let kept = counted_fit(stats, loc, truncate_dpo(t, cfg), cfg)?;
        if kept.is_some() {
            note(stats, notes);
        }
        Ok(kept)
    };
    let (examples, locs, mut stats) = load_rows(Stage::Dpo, files, rows, cfg, work, keep)?;
    stats.longest_kept = examples.iter().map(|e| e.len()).max().unwrap_or(0);
    Ok(DpoDataset {
        examples,
        locs,
        stats,
        pad_id: tok.pad_id(),
    })
}
