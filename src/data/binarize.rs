//! Rated completions in, preference pairs out, the way the Zephyr recipe built
//! HuggingFaceH4/ultrafeedback_binarized from openbmb/UltraFeedback.
//!
//! Input rows are either UltraFeedback's raw schema (`instruction`, `completions[]` with
//! `response`, `model` and `annotations.<aspect>.Rating`) or a generic one (`prompt` as a string
//! or message list, `completions[]` of `{text | messages, score}`). A completion's score is the
//! mean of its aspects' ratings (UltraFeedback; a rating of `"N/A"` is left out of the mean, and
//! a completion with no rating at all is unrated) or its `score` (generic; `null` or missing is
//! unrated). Unrated completions never enter a pair.
//!
//! Output rows have the binarized schema: `prompt` (as given), `prompt_id` (the row's own, else
//! the SHA-256 of the prompt text, as H4 computed it), `chosen` and `rejected` as message lists
//! (the prompt's messages, then the completion), `score_chosen`, `score_rejected`.
//!
//! Rules, over the rated completions in input order:
//! - `best-vs-random`: chosen is the highest score (the first one among equals); rejected is drawn
//!   uniformly from those scored strictly lower, so no pair is a tie. The draw for a prompt
//!   depends only on the seed and the prompt (see [`draw`]), not on the row's position or on
//!   other rows.
//! - `best-vs-worst`: chosen the first highest, rejected the first lowest.
//! - `all-pairs`: every ordered pair (i, j), i before j in input order or after, with
//!   `score_i − score_j > 0` and `≥ min_margin`; listed by i, then j, in input order.
//!
//! A prompt with fewer than two rated completions, with all of them tied, or (all-pairs) with no
//! pair reaching the margin, is dropped and counted under that reason.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _, Result};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::reader::{describe, list_files, stream_file, BadRow, RowLoc};

/// UltraFeedback's rated aspects; a completion's score is the mean of those it rates.
pub const ULTRAFEEDBACK_ASPECTS: [&str; 4] = [
    "instruction_following",
    "honesty",
    "truthfulness",
    "helpfulness",
];

/// How the rated completions of one prompt become pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    BestVsRandom { seed: u64 },
    BestVsWorst,
    AllPairs { min_margin: f64 },
}

/// One prompt with its completions as read from a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Rated {
    /// The prompt as the row gives it: a string or a message list.
    pub prompt: Value,
    pub prompt_id: String,
    pub completions: Vec<Completion>,
}

/// A completion: the assistant message(s) that answer the prompt, and its score if rated.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub messages: Vec<Value>,
    pub score: Option<f64>,
}

/// Why a prompt gave no pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dropped {
    FewerThanTwoRated,
    AllTied,
    NoPairReachesMargin,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dropped::FewerThanTwoRated => "fewer than two rated completions",
            Dropped::AllTied => "all rated completions tie",
            Dropped::NoPairReachesMargin => "no pair reaches --min-margin",
        })
    }
}

/// One chosen/rejected choice: indices into [`Rated::completions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub chosen: usize,
    pub rejected: usize,
}

/// What a binarize run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub prompts_in: usize,
    pub prompts_out: usize,
    pub pairs_out: usize,
    pub dropped: BTreeMap<Dropped, usize>,
    /// Rows skipped as malformed (with `skip_bad_rows`).
    pub bad_rows: usize,
    pub completions: usize,
    pub unrated_completions: usize,
    /// Ratings of `"N/A"` left out of their completion's mean.
    pub na_ratings: usize,
    /// Mean of `score_chosen − score_rejected` over the pairs written.
    pub mean_score_gap: f64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "prompts: {} in, {} out ({} pairs)",
            self.prompts_in, self.prompts_out, self.pairs_out
        )?;
        let dropped: usize = self.dropped.values().sum();
        write!(f, "dropped: {dropped} prompts")?;
        for (reason, n) in &self.dropped {
            write!(f, "; {n} {reason}")?;
        }
        writeln!(f)?;
        if self.bad_rows > 0 {
            writeln!(f, "bad rows skipped: {}", self.bad_rows)?;
        }
        writeln!(
            f,
            "completions: {}, {} unrated (left out), {} N/A ratings left out of their means",
            self.completions, self.unrated_completions, self.na_ratings
        )?;
        writeln!(
            f,
            "mean score gap (chosen − rejected): {:.4}",
            self.mean_score_gap
        )
    }
}

/// The SHA-256 hex of the prompt's text (a message list: its compact JSON).
pub fn prompt_id_of(prompt: &Value) -> String {
    let text = match prompt {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    hex(&Sha256::digest(text.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The seeded draw of an index below `n` for one prompt:
/// `splitmix64(seed XOR u64_le(sha256(prompt_id)[0..8])) mod n`. It depends only on the seed
/// and the prompt id, so a prompt's pair is the same whatever the file's order or content.
pub fn draw(seed: u64, prompt_id: &str, n: usize) -> usize {
    let digest = Sha256::digest(prompt_id.as_bytes());
    let key = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    (splitmix64(seed ^ key) % n as u64) as usize
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The choices a rule makes among one prompt's completions, or why there is none.
pub fn choose(rated: &Rated, rule: Rule) -> Result<Vec<Choice>, Dropped> {
    let scored: Vec<(usize, f64)> = rated
        .completions
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.score.map(|s| (i, s)))
        .collect();
    if scored.len() < 2 {
        return Err(Dropped::FewerThanTwoRated);
    }
    // The first of the highest / lowest in input order.
    let best = scored
        .iter()
        .copied()
        .fold(scored[0], |a, b| if b.1 > a.1 { b } else { a });
    let worst = scored
        .iter()
        .copied()
        .fold(scored[0], |a, b| if b.1 < a.1 { b } else { a });
    if best.1 == worst.1 {
        return Err(Dropped::AllTied);
    }
    match rule {
        Rule::BestVsWorst => Ok(vec![Choice {
            chosen: best.0,
            rejected: worst.0,
        }]),
        Rule::BestVsRandom { seed } => {
            let lower: Vec<usize> = scored
                .iter()
                .filter(|(_, s)| *s < best.1)
                .map(|(i, _)| *i)
                .collect();
            let pick = lower[draw(seed, &rated.prompt_id, lower.len())];
            Ok(vec![Choice {
                chosen: best.0,
                rejected: pick,
            }])
        }
        Rule::AllPairs { min_margin } => {
            let mut out = Vec::new();
            for &(i, si) in &scored {
                for &(j, sj) in &scored {
                    if si - sj > 0.0 && si - sj >= min_margin {
                        out.push(Choice {
                            chosen: i,
                            rejected: j,
                        });
                    }
                }
            }
            if out.is_empty() {
                Err(Dropped::NoPairReachesMargin)
            } else {
                Ok(out)
            }
        }
    }
}

/// Counts of what reading a row left out, added to the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadCounts {
    pub na_ratings: usize,
}

/// Reads one row in either input schema.
pub fn read_rated(row: &Map<String, Value>, loc: &RowLoc) -> Result<(Rated, ReadCounts), BadRow> {
    let bad = |field: &str, msg: String| BadRow::new(loc, Some(field), msg);
    let ultrafeedback = row.contains_key("instruction");
    let prompt = match (row.get("instruction"), row.get("prompt")) {
        (Some(Value::String(s)), _) => Value::String(s.clone()),
        (Some(v), _) => {
            return Err(bad(
                "instruction",
                format!("expected a string, found {}", describe(v)),
            ))
        }
        (None, Some(v @ Value::String(_))) => v.clone(),
        (None, Some(Value::Array(msgs))) => {
            check_messages(msgs, "prompt", loc)?;
            Value::Array(msgs.clone())
        }
        (None, Some(v)) => {
            return Err(bad(
                "prompt",
                format!("expected a string or a message list, found {}", describe(v)),
            ))
        }
        (None, None) => {
            return Err(BadRow::new(
                loc,
                None,
                "no `instruction` (UltraFeedback) or `prompt` (rated completions) field",
            ))
        }
    };
    let completions = match row.get("completions") {
        Some(Value::Array(c)) => c,
        Some(v) => {
            return Err(bad(
                "completions",
                format!("expected a list, found {}", describe(v)),
            ))
        }
        None => return Err(BadRow::new(loc, Some("completions"), "missing")),
    };
    let prompt_id = match row.get("prompt_id") {
        Some(Value::String(id)) => id.clone(),
        _ => prompt_id_of(&prompt),
    };
    let mut counts = ReadCounts::default();
    let mut out = Vec::with_capacity(completions.len());
    for (k, c) in completions.iter().enumerate() {
        let field = format!("completions[{k}]");
        let Value::Object(c) = c else {
            return Err(bad(
                &field,
                format!("expected an object, found {}", describe(c)),
            ));
        };
        let completion = if ultrafeedback {
            ultrafeedback_completion(c, &field, loc, &mut counts)?
        } else {
            generic_completion(c, &field, loc)?
        };
        out.push(completion);
    }
    Ok((
        Rated {
            prompt,
            prompt_id,
            completions: out,
        },
        counts,
    ))
}

fn ultrafeedback_completion(
    c: &Map<String, Value>,
    field: &str,
    loc: &RowLoc,
    counts: &mut ReadCounts,
) -> Result<Completion, BadRow> {
    let response = match c.get("response") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            return Err(BadRow::new(
                loc,
                Some(&format!("{field}.response")),
                format!("expected a string, found {}", describe(v)),
            ))
        }
        None => {
            return Err(BadRow::new(
                loc,
                Some(&format!("{field}.response")),
                "missing",
            ))
        }
    };
    let annotations = c.get("annotations").and_then(Value::as_object);
    let mut sum = 0.0;
    let mut n = 0usize;
    for aspect in ULTRAFEEDBACK_ASPECTS {
        let Some(rating) = annotations
            .and_then(|a| a.get(aspect))
            .and_then(|a| a.get("Rating"))
        else {
            continue;
        };
        let name = format!("{field}.annotations.{aspect}.Rating");
        match rating_value(rating) {
            Ok(Some(r)) => {
                sum += r;
                n += 1;
            }
            Ok(None) => counts.na_ratings += 1,
            Err(msg) => return Err(BadRow::new(loc, Some(&name), msg)),
        }
    }
    Ok(Completion {
        messages: vec![assistant(&response)],
        score: (n > 0).then(|| sum / n as f64),
    })
}

/// A rating as a number: `4`, `"4"` or `"4.5"`; `"N/A"` (or null) is `None`.
fn rating_value(v: &Value) -> Result<Option<f64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(n.as_f64()),
        Value::String(s) if s.trim().eq_ignore_ascii_case("n/a") => Ok(None),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|r| r.is_finite())
            .map(Some)
            .ok_or_else(|| format!("expected a number or \"N/A\", found {s:?}")),
        other => Err(format!(
            "expected a number or \"N/A\", found {}",
            describe(other)
        )),
    }
}

fn generic_completion(
    c: &Map<String, Value>,
    field: &str,
    loc: &RowLoc,
) -> Result<Completion, BadRow> {
    let messages = match (c.get("text"), c.get("messages")) {
        (Some(Value::String(t)), _) => vec![assistant(t)],
        (None, Some(Value::Array(m))) => {
            check_messages(m, &format!("{field}.messages"), loc)?;
            m.clone()
        }
        (Some(v), _) => {
            return Err(BadRow::new(
                loc,
                Some(&format!("{field}.text")),
                format!("expected a string, found {}", describe(v)),
            ))
        }
        (None, Some(v)) => {
            return Err(BadRow::new(
                loc,
                Some(&format!("{field}.messages")),
                format!("expected a message list, found {}", describe(v)),
            ))
        }
        (None, None) => {
            return Err(BadRow::new(
                loc,
                Some(field),
                "a completion needs `text` or `messages`",
            ))
        }
    };
    let score = match c.get("score") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64().filter(|s| s.is_finite()),
        Some(v) => {
            return Err(BadRow::new(
                loc,
                Some(&format!("{field}.score")),
                format!("expected a number or null, found {}", describe(v)),
            ))
        }
    };
    Ok(Completion { messages, score })
}

fn check_messages(msgs: &[Value], field: &str, loc: &RowLoc) -> Result<(), BadRow> {
    for (i, m) in msgs.iter().enumerate() {
        let ok = m.get("role").is_some_and(Value::is_string) && m.get("content").is_some();
        if !ok {
            return Err(BadRow::new(
                loc,
                Some(&format!("{field}[{i}]")),
                "a message needs `role` and `content`",
            ));
        }
    }
    Ok(())
}

fn assistant(text: &str) -> Value {
    json!({"role": "assistant", "content": text})
}

/// The prompt as the start of a conversation.
pub fn prompt_messages(prompt: &Value) -> Vec<Value> {
    match prompt {
        Value::Array(m) => m.clone(),
        other => vec![json!({"role": "user", "content": other})],
    }
}

/// The output row of one choice, in ultrafeedback_binarized's schema.
pub fn pair_row(rated: &Rated, choice: Choice) -> Value {
    let conversation = |k: usize| {
        let mut m = prompt_messages(&rated.prompt);
        m.extend(rated.completions[k].messages.iter().cloned());
        Value::Array(m)
    };
    json!({
        "prompt": rated.prompt,
        "prompt_id": rated.prompt_id,
        "chosen": conversation(choice.chosen),
        "rejected": conversation(choice.rejected),
        "score_chosen": rated.completions[choice.chosen].score,
        "score_rejected": rated.completions[choice.rejected].score,
    })
}

/// Accumulates the report while rows are binarized one by one.
#[derive(Debug, Default)]
pub struct Tally {
    report: Report,
    gap_sum: f64,
}

impl Tally {
    /// Counts one prompt and returns its output rows.
    pub fn add(&mut self, rated: &Rated, counts: ReadCounts, rule: Rule) -> Vec<Value> {
        let r = &mut self.report;
        r.prompts_in += 1;
        r.completions += rated.completions.len();
        r.unrated_completions += rated
            .completions
            .iter()
            .filter(|c| c.score.is_none())
            .count();
        r.na_ratings += counts.na_ratings;
        match choose(rated, rule) {
            Ok(choices) => {
                r.prompts_out += 1;
                r.pairs_out += choices.len();
                choices
                    .into_iter()
                    .map(|c| {
                        let score = |k: usize| rated.completions[k].score.unwrap_or(0.0);
                        self.gap_sum += score(c.chosen) - score(c.rejected);
                        pair_row(rated, c)
                    })
                    .collect()
            }
            Err(reason) => {
                *r.dropped.entry(reason).or_default() += 1;
                Vec::new()
            }
        }
    }

    pub fn bad_row(&mut self) {
        self.report.prompts_in += 1;
        self.report.bad_rows += 1;
    }

    pub fn finish(mut self) -> Report {
        if self.report.pairs_out > 0 {
            self.report.mean_score_gap = self.gap_sum / self.report.pairs_out as f64;
        }
        self.report
    }
}

/// Scores the completions of a chunk of prompts in place (e.g. by a model), before the rule
/// chooses among them.
pub type Scorer<'a> = dyn FnMut(&mut [Rated]) -> Result<()> + 'a;

/// Prompts scored together by a [`Scorer`].
const SCORED_CHUNK: usize = 64;

/// Binarizes every row of `input` (a file or a split of a folder) into `out` as JSON lines,
/// written under a temporary name and renamed when complete. Rows are streamed, so a large
/// UltraFeedback dump is never held whole. A malformed row stops the run naming its file, line
/// and field, unless `skip_bad_rows`. With a `scorer`, every completion's score is the one it
/// gives.
pub fn binarize_file(
    input: &Path,
    split: Option<&str>,
    rule: Rule,
    skip_bad_rows: bool,
    mut scorer: Option<&mut Scorer<'_>>,
    out: &Path,
) -> Result<Report> {
    let files = list_files(input, split)?;
    crate::atomic_file::write_into_place(out, |tmp| {
        let file = std::fs::File::create(tmp)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        let mut w = std::io::BufWriter::new(file);
        let mut tally = Tally::default();
        let mut pending: Vec<(Rated, ReadCounts)> = Vec::new();
        let mut flush = |pending: &mut Vec<(Rated, ReadCounts)>,
                         tally: &mut Tally,
                         w: &mut std::io::BufWriter<std::fs::File>|
         -> Result<()> {
            if let Some(score) = scorer.as_mut() {
                let mut rated: Vec<Rated> = pending.iter().map(|(r, _)| r.clone()).collect();
                score(&mut rated)?;
                for ((r, _), scored) in pending.iter_mut().zip(rated) {
                    *r = scored;
                }
            }
            for (rated, counts) in pending.drain(..) {
                for pair in tally.add(&rated, counts, rule) {
                    serde_json::to_writer(&mut *w, &pair)?;
                    w.write_all(b"\n")?;
                }
            }
            Ok(())
        };
        for f in &files {
            for row in stream_file(f)? {
                let row = row?.parse();
                match row.value.and_then(|m| read_rated(&m, &row.loc)) {
                    Ok(r) => pending.push(r),
                    Err(_) if skip_bad_rows => tally.bad_row(),
                    Err(bad) => bail!("{bad}"),
                }
                if pending.len() >= SCORED_CHUNK {
                    flush(&mut pending, &mut tally, &mut w)?;
                }
            }
        }
        flush(&mut pending, &mut tally, &mut w)?;
        w.flush()
            .with_context(|| format!("{}: cannot write", out.display()))?;
        let report = tally.finish();
        if report.pairs_out == 0 {
            bail!(
                "{}: no prompt gave a pair ({} prompts read); nothing written",
                input.display(),
                report.prompts_in
            );
        }
        Ok(report)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn loc() -> RowLoc {
        RowLoc {
            file: Arc::new(PathBuf::from("rated.jsonl")),
            pos: super::super::reader::Pos::Line(3),
        }
    }

    fn rated(scores: &[Option<f64>]) -> Rated {
        let completions = scores
            .iter()
            .enumerate()
            .map(|(i, s)| Completion {
                messages: vec![assistant(&format!("answer {i}"))],
                score: *s,
            })
            .collect();
        Rated {
            prompt: json!("What is 2 + 2?"),
            prompt_id: prompt_id_of(&json!("What is 2 + 2?")),
            completions,
        }
    }

    fn pairs(c: &[Choice]) -> Vec<(usize, usize)> {
        c.iter().map(|c| (c.chosen, c.rejected)).collect()
    }

    #[test]
    fn best_vs_worst_takes_the_first_of_equal_bests_and_worsts() {
        let r = rated(&[Some(2.0), Some(5.0), Some(5.0), Some(2.0), None]);
        assert_eq!(pairs(&choose(&r, Rule::BestVsWorst).unwrap()), [(1, 0)]);
    }

    #[test]
    fn best_vs_random_never_draws_a_tie_with_the_chosen_and_is_seeded() {
        let r = rated(&[Some(4.0), Some(5.0), Some(5.0), Some(1.0), Some(3.0), None]);
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let c = choose(&r, Rule::BestVsRandom { seed }).unwrap();
            assert_eq!(c.len(), 1);
            assert_eq!(c[0].chosen, 1);
            assert_eq!(c, choose(&r, Rule::BestVsRandom { seed }).unwrap());
            seen.insert(c[0].rejected);
        }
        // Uniform over the strictly lower ones: 0, 3 and 4, never 2 (tied) or 5 (unrated).
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [0, 3, 4]);
    }

    #[test]
    fn draw_is_a_fixed_function_of_seed_and_prompt() {
        // sha256("abc") starts ba7816bf8f01cfea; splitmix64's first output from state 0 is the
        // published e220a8397b1dcdaf: the two pieces scripts/make_binarize_fixtures.py re-implements.
        let key = u64::from_le_bytes([0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea]);
        assert_eq!(draw(0, "abc", 1000), (splitmix64(key) % 1000) as usize);
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn all_pairs_respects_the_margin_and_skips_ties() {
        let r = rated(&[Some(3.0), Some(5.0), Some(3.0), Some(4.0)]);
        let all = choose(&r, Rule::AllPairs { min_margin: 0.0 }).unwrap();
        assert_eq!(pairs(&all), [(1, 0), (1, 2), (1, 3), (3, 0), (3, 2)]);
        let wide = choose(&r, Rule::AllPairs { min_margin: 1.5 }).unwrap();
        assert_eq!(pairs(&wide), [(1, 0), (1, 2)]);
        assert_eq!(
            choose(&r, Rule::AllPairs { min_margin: 3.0 }),
            Err(Dropped::NoPairReachesMargin)
        );
    }

    #[test]
    fn too_few_rated_or_all_tied_prompts_are_dropped() {
        for rule in [
            Rule::BestVsWorst,
            Rule::BestVsRandom { seed: 1 },
            Rule::AllPairs { min_margin: 0.0 },
        ] {
            assert_eq!(
                choose(&rated(&[Some(5.0)]), rule),
                Err(Dropped::FewerThanTwoRated)
            );
            assert_eq!(
                choose(&rated(&[Some(5.0), None, None]), rule),
                Err(Dropped::FewerThanTwoRated)
            );
            assert_eq!(
                choose(&rated(&[Some(4.0), Some(4.0)]), rule),
                Err(Dropped::AllTied)
            );
        }
    }

    #[test]
    fn ultrafeedback_ratings_average_without_na_and_all_na_is_unrated() {
        let row = json!({
            "instruction": "Name a prime.",
            "completions": [
                {"model": "a", "response": "7", "annotations": {
                    "helpfulness": {"Rating": "5"}, "honesty": {"Rating": "4"},
                    "instruction_following": {"Rating": "N/A"}, "truthfulness": {"Rating": 3}}},
                {"model": "b", "response": "9", "annotations": {
                    "helpfulness": {"Rating": "N/A"}, "honesty": {"Rating": "N/A"}}},
            ]
        });
        let (r, counts) = read_rated(row.as_object().unwrap(), &loc()).unwrap();
        assert_eq!(r.completions[0].score, Some(4.0));
        assert_eq!(r.completions[1].score, None);
        assert_eq!(counts.na_ratings, 3);
        assert_eq!(r.prompt_id, prompt_id_of(&json!("Name a prime.")));
        assert_eq!(r.completions[0].messages, [assistant("7")]);
    }

    #[test]
    fn bad_ratings_and_missing_fields_name_the_field() {
        let row = json!({"instruction": "x", "completions": [
            {"response": "a", "annotations": {"honesty": {"Rating": "good"}}}]});
        let e = read_rated(row.as_object().unwrap(), &loc()).unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("completions[0].annotations.honesty.Rating")
        );
        assert!(e.to_string().contains("rated.jsonl, line 3"), "{e}");
        let row = json!({"prompt": "x", "completions": [{"text": "a", "score": "high"}]});
        let e = read_rated(row.as_object().unwrap(), &loc()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("completions[0].score"));
        let row = json!({"prompt": "x"});
        let e = read_rated(row.as_object().unwrap(), &loc()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("completions"));
        let row = json!({"question": "x", "completions": []});
        assert!(read_rated(row.as_object().unwrap(), &loc()).is_err());
    }

    #[test]
    fn generic_rows_keep_message_prompts_and_give_the_binarized_schema() {
        let row = json!({
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "prompt_id": "p-1",
            "completions": [
                {"text": "Hello.", "score": 0.9},
                {"messages": [{"role": "assistant", "content": "Go away."}], "score": 0.1},
                {"text": "Unscored"}
            ]
        });
        let (r, _) = read_rated(row.as_object().unwrap(), &loc()).unwrap();
        let mut tally = Tally::default();
        let rows = tally.add(&r, ReadCounts::default(), Rule::BestVsWorst);
        assert_eq!(rows.len(), 1);
        let out = &rows[0];
        assert_eq!(out["prompt_id"], "p-1");
        assert_eq!(out["chosen"].as_array().unwrap().len(), 3);
        assert_eq!(out["chosen"][2]["content"], "Hello.");
        assert_eq!(out["rejected"][2]["content"], "Go away.");
        assert_eq!(out["score_chosen"], 0.9);
        let report = tally.finish();
        assert_eq!(report.unrated_completions, 1);
        assert!((report.mean_score_gap - 0.8).abs() < 1e-12);
    }
}
