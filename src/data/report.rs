//! Human-readable descriptions of a prepared dataset: counts, token-length percentiles, and an example with its
//! loss mask visible.

use std::fmt::Write;

use anyhow::Result;

use super::config::DataConfig;
use super::pipeline::Stats;
use super::tokenize::Sequence;
use super::tokenizer::ChatTokenizer;

/// Marks around the tokens the loss counts, in [`show_sequence`].
pub const TRAINED_OPEN: &str = "[[";
pub const TRAINED_CLOSE: &str = "]]";

/// Nearest-rank percentiles (`p` in 0..=100) of `values`; `None` when empty.
pub fn percentile(values: &[usize], p: u32) -> Option<usize> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((p as f64 / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

fn length_line(name: &str, values: &[usize]) -> String {
    if values.is_empty() {
        return format!("{name}: none");
    }
    let p = |q| percentile(values, q).unwrap_or(0);
    format!(
        "{name}: min {} · p50 {} · p90 {} · p95 {} · p99 {} · max {}",
        values.iter().min().unwrap_or(&0),
        p(50),
        p(90),
        p(95),
        p(99),
        values.iter().max().unwrap_or(&0)
    )
}

/// The length limits in force, e.g. `max_length 1024, model max_position_embeddings 64 (the tighter),
/// truncation_mode keep_start`.
pub fn limits_text(cfg: &DataConfig) -> String {
    let mut parts = Vec::new();
    if let Some(l) = cfg.max_length {
        parts.push(format!("max_length {l}"));
    }
    if let Some(m) = cfg.model_max_length {
        let tighter = cfg.length_limit().is_some_and(|l| l.from_model) && cfg.max_length.is_some();
        parts.push(format!(
            "model max_position_embeddings {m}{}",
            if tighter { " (the tighter)" } else { "" }
        ));
    }
    if let Some(p) = cfg.max_prompt_length {
        parts.push(format!("max_prompt_length {p}"));
    }
    if let Some(c) = cfg.max_completion_length {
        parts.push(format!("max_completion_length {c}"));
    }
    if parts.is_empty() {
        return "no length limit".to_string();
    }
    format!(
        "{}, truncation_mode {}",
        parts.join(", "),
        cfg.truncation_mode
    )
}

/// One line of counts for a loaded split, as `sft`, `dpo` and `train` print it: the numbers `lora-dpo data`
/// prints, with the first dropped rows named.
pub fn counts_line(stats: &Stats) -> String {
    let files: Vec<String> = stats
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    let mut s = format!(
        "data {}: {} rows read, {} kept, {} truncated, {} dropped, {} bad rows skipped; longest kept row {} tokens",
        files.join(", "),
        stats.rows,
        stats.examples,
        stats.truncated,
        stats.dropped.len(),
        stats.bad_rows.len(),
        stats.longest_kept,
    );
    if stats.unpaired > 0 {
        let _ = write!(
            s,
            "\n  {} paired rows read as {} unpaired ones, as TRL's KTOTrainer does: per {} rows, \
             the chosen completions (label true), then the rejected (false)",
            stats.unpaired,
            2 * stats.unpaired,
            super::unpair::UNPAIR_BATCH
        );
    }
    for (loc, why) in stats.dropped.iter().take(3) {
        let _ = write!(s, "\n  dropped {loc}: {why}");
    }
    for b in stats.bad_rows.iter().take(3) {
        let _ = write!(s, "\n  skipped {b}");
    }
    s
}

/// The summary `lora-dpo data` prints.
pub fn summary(stats: &Stats, cfg: &DataConfig) -> String {
    let mut s = String::new();
    let files: Vec<String> = stats
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    let _ = writeln!(s, "files: {}", files.join(", "));
    let _ = writeln!(s, "stage: {}", stats.stage);
    let _ = writeln!(
        s,
        "schema: {}, {}",
        stats.schema,
        if stats.conversational {
            "conversational (chat template)"
        } else {
            "plain text"
        }
    );
    let _ = writeln!(
        s,
        "rows: {} read, {} kept (longest {} tokens)",
        stats.rows, stats.examples, stats.longest_kept
    );
    let _ = writeln!(
        s,
        "bad rows skipped: {}{}",
        stats.bad_rows.len(),
        if cfg.skip_bad_rows {
            ""
        } else {
            " (skip_bad_rows is off)"
        }
    );
    for b in stats.bad_rows.iter().take(5) {
        let _ = writeln!(s, "  {b}");
    }
    if stats.bad_rows.len() > 5 {
        let _ = writeln!(s, "  … and {} more", stats.bad_rows.len() - 5);
    }
    let limits = limits_text(cfg);
    let _ = writeln!(s, "limits: {limits}");
    let _ = writeln!(s, "truncated: {} rows (kept, cut to fit)", stats.truncated);
    let _ = writeln!(
        s,
        "dropped: {} rows (nothing left to train on after truncation)",
        stats.dropped.len()
    );
    for (loc, why) in stats.dropped.iter().take(3) {
        let _ = writeln!(s, "  {loc}: {why}");
    }
    let _ = writeln!(
        s,
        "{}",
        length_line("token lengths (before truncation)", &stats.lengths)
    );
    if !stats.prompt_lengths.is_empty() {
        let _ = writeln!(
            s,
            "{}",
            length_line("prompt lengths", &stats.prompt_lengths)
        );
        let _ = writeln!(
            s,
            "{}",
            length_line("completion lengths", &stats.completion_lengths)
        );
    }
    if stats.boundary_merges > 0 {
        let _ = writeln!(
            s,
            "note: in {} rows the prompt's last tokens merge with the completion's first; the completion starts \
             where the token lists diverge (as TRL does)",
            stats.boundary_merges
        );
    }
    if stats.no_eos > 0 {
        let _ = writeln!(
            s,
            "warning: {} rows have a completion without the EOS token: the model may not learn to stop",
            stats.no_eos
        );
    }
    s
}

/// The sequence's text with the trained tokens between `[[` and `]]`.
pub fn show_sequence(tok: &ChatTokenizer, seq: &Sequence) -> Result<String> {
    let mut out = String::new();
    let mut start = 0;
    while start < seq.len() {
        let m = seq.loss_mask[start];
        let mut end = start;
        while end < seq.len() && seq.loss_mask[end] == m {
            end += 1;
        }
        let text = tok.decode(&seq.input_ids[start..end])?;
        if m {
            out.push_str(TRAINED_OPEN);
            out.push_str(&text);
            out.push_str(TRAINED_CLOSE);
        } else {
            out.push_str(&text);
        }
        start = end;
    }
    Ok(out)
}

/// The sequence's tokens, one per line: position, id, text (escaped) and whether the loss counts it. At most
/// `limit` tokens are listed, from a few tokens before the first trained one.
pub fn token_table(tok: &ChatTokenizer, seq: &Sequence, limit: usize) -> Result<String> {
    let first = seq.loss_mask.iter().position(|&m| m).unwrap_or(0);
    let start = if seq.len() <= limit {
        0
    } else {
        first.saturating_sub(8).min(seq.len() - limit)
    };
    let mut out = String::from("  pos      id  loss  token\n");
    if start > 0 {
        let _ = writeln!(out, "  … {start} tokens before");
    }
    let end = (start + limit).min(seq.len());
    for i in start..end {
        let (id, m) = (seq.input_ids[i], seq.loss_mask[i]);
        let text = tok.decode(&[id])?;
        let _ = writeln!(
            out,
            "{i:>5} {id:>7}  {}  {:?}",
            if m { "  1 " } else { "  . " },
            text
        );
    }
    if seq.len() > end {
        let _ = writeln!(out, "  … {} more tokens", seq.len() - end);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank() {
        let v: Vec<usize> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 99), Some(99));
        assert_eq!(percentile(&v, 100), Some(100));
        assert_eq!(percentile(&[7], 90), Some(7));
        assert_eq!(percentile(&[], 90), None);
    }
}
