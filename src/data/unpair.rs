//! Paired preference rows read as KTO's unpaired ones, as TRL's `KTOTrainer` reads them: a row
//! without `prompt` is split where chosen and rejected first differ (`extract_prompt`), then each
//! batch of 1000 rows (`unpair_preference_dataset`'s `map` batch) becomes its 1000 chosen
//! completions labelled `true` followed by its 1000 rejected ones labelled `false`.

use rayon::prelude::*;
use serde_json::{Map, Value};

use super::config::Columns;
use super::reader::{PendingRow, RawRow};

/// TRL's `Dataset.map(batched=True)` batch, the unit its unpairing reorders within.
pub const UNPAIR_BATCH: usize = 1000;

/// Whether a row's columns are paired preference data (chosen and rejected, no completion).
pub fn is_paired(row: &Map<String, Value>, c: &Columns) -> bool {
    row.contains_key(c.chosen())
        && row.contains_key(c.rejected())
        && !row.contains_key(c.completion())
}

/// The rows with each paired one replaced by its two unpaired rows, reordered per batch; rows
/// that do not parse, or are not paired, pass through in place (their errors stay theirs).
/// `count` is raised by each paired row read.
pub fn unpaired(
    rows: impl Iterator<Item = anyhow::Result<PendingRow>>,
    columns: Columns,
    count: std::rc::Rc<std::cell::Cell<usize>>,
) -> impl Iterator<Item = anyhow::Result<PendingRow>> {
    let mut rows = rows.peekable();
    std::iter::from_fn(move || {
        rows.peek()?;
        let batch: Vec<anyhow::Result<PendingRow>> = rows.by_ref().take(UNPAIR_BATCH).collect();
        // Parsed here, in parallel as the pipeline would, which then finds them parsed.
        let parsed: Vec<anyhow::Result<RawRow>> = batch
            .into_par_iter()
            .map(|row| row.map(PendingRow::parse))
            .collect();
        let mut chosen = Vec::with_capacity(parsed.len());
        let mut rejected = Vec::with_capacity(parsed.len());
        for row in parsed {
            let raw = match row {
                Ok(raw) => raw,
                Err(e) => {
                    chosen.push(Err(e));
                    continue;
                }
            };
            match &raw.value {
                Ok(obj) if is_paired(obj, &columns) => {
                    count.set(count.get() + 1);
                    let (c, r) = split(obj, &columns);
                    chosen.push(Ok(PendingRow::from(RawRow {
                        loc: raw.loc.clone(),
                        value: Ok(c),
                    })));
                    rejected.push(Ok(PendingRow::from(RawRow {
                        loc: raw.loc,
                        value: Ok(r),
                    })));
                }
                _ => chosen.push(Ok(PendingRow::from(raw))),
            }
        }
        chosen.extend(rejected);
        Some(chosen)
    })
    .flatten()
}

/// The desirable and the undesirable row of a paired one, other columns copied to both.
fn split(row: &Map<String, Value>, c: &Columns) -> (Map<String, Value>, Map<String, Value>) {
    let (mut chosen, mut rejected) = (row[c.chosen()].clone(), row[c.rejected()].clone());
    let prompt = match row.get(c.prompt()) {
        Some(p) => p.clone(),
        None => extract_prompt(&mut chosen, &mut rejected),
    };
    let mut base: Map<String, Value> = (row.iter())
        .filter(|(k, _)| ![c.chosen(), c.rejected(), c.prompt()].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    base.insert(c.prompt().to_string(), prompt);
    let mut good = base.clone();
    good.insert(c.completion().to_string(), chosen);
    good.insert(c.label().to_string(), Value::Bool(true));
    base.insert(c.completion().to_string(), rejected);
    base.insert(c.label().to_string(), Value::Bool(false));
    (good, base)
}

/// TRL's `extract_prompt`: the shared start of chosen and rejected (messages, or characters
/// with a space before the split left to the completion) becomes the prompt.
fn extract_prompt(chosen: &mut Value, rejected: &mut Value) -> Value {
    match (chosen, rejected) {
        (Value::Array(c), Value::Array(r)) => {
            let n = c.iter().zip(r.iter()).take_while(|(a, b)| a == b).count();
            let prompt: Vec<Value> = c.drain(..n).collect();
            r.drain(..n);
            Value::Array(prompt)
        }
        (Value::String(c), Value::String(r)) => {
            let chars: Vec<char> = c.chars().collect();
            let mut n = chars
                .iter()
                .zip(r.chars())
                .take_while(|(a, b)| **a == *b)
                .count();
            if n > 0 && n < chars.len() && chars[n - 1] == ' ' {
                n -= 1;
            }
            let bytes: usize = chars[..n].iter().map(|ch| ch.len_utf8()).sum();
            let prompt = c[..bytes].to_string();
            *c = c[bytes..].to_string();
            *r = r[bytes..].to_string();
            Value::String(prompt)
        }
        // Mismatched kinds: no shared start; the row's own checks name the problem.
        _ => Value::String(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::reader::{Pos, RowLoc};
    use serde_json::json;

    fn row(v: Value, line: usize) -> anyhow::Result<PendingRow> {
        Ok(PendingRow::from(RawRow {
            loc: RowLoc {
                file: std::sync::Arc::new("f.jsonl".into()),
                pos: Pos::Line(line),
            },
            value: Ok(v.as_object().unwrap().clone()),
        }))
    }

    fn values(rows: impl Iterator<Item = anyhow::Result<PendingRow>>) -> Vec<Value> {
        rows.map(|r| Value::Object(r.unwrap().parse().value.unwrap()))
            .collect()
    }

    #[test]
    fn a_batch_becomes_its_chosen_rows_then_its_rejected_rows() {
        let rows = vec![
            row(
                json!({"prompt": "p1", "chosen": "a", "rejected": "b", "id": 1}),
                1,
            ),
            row(
                json!({"prompt": "p2", "chosen": "c", "rejected": "d", "id": 2}),
                2,
            ),
        ];
        let got = values(unpaired(
            rows.into_iter(),
            Columns::default(),
            Default::default(),
        ));
        assert_eq!(
            got,
            vec![
                json!({"prompt": "p1", "completion": "a", "label": true, "id": 1}),
                json!({"prompt": "p2", "completion": "c", "label": true, "id": 2}),
                json!({"prompt": "p1", "completion": "b", "label": false, "id": 1}),
                json!({"prompt": "p2", "completion": "d", "label": false, "id": 2}),
            ]
        );
    }

    /// The reordering is per 1000 rows: row 1000's pair follows the first batch's 2000 rows.
    #[test]
    fn batches_of_a_thousand_are_reordered_separately() {
        let rows = (0..1001).map(|i| row(json!({"prompt": i, "chosen": "a", "rejected": "b"}), i));
        let got = values(unpaired(rows, Columns::default(), Default::default()));
        assert_eq!(got.len(), 2002);
        assert_eq!(
            (got[999]["prompt"].clone(), got[999]["label"].clone()),
            (json!(999), json!(true))
        );
        assert_eq!(
            (got[1000]["prompt"].clone(), got[1000]["label"].clone()),
            (json!(0), json!(false))
        );
        assert_eq!(
            (got[2000]["prompt"].clone(), got[2000]["label"].clone()),
            (json!(1000), json!(true))
        );
        assert_eq!(
            (got[2001]["prompt"].clone(), got[2001]["label"].clone()),
            (json!(1000), json!(false))
        );
    }

    #[test]
    fn an_implicit_prompt_is_the_shared_start_as_trl_extracts_it() {
        let u = |c: &str| json!({"role": "user", "content": c});
        let a = |c: &str| json!({"role": "assistant", "content": c});
        let rows = vec![
            row(
                json!({"chosen": [u("q"), a("yes")], "rejected": [u("q"), a("no")]}),
                1,
            ),
            row(
                json!({"chosen": "The sky is blue.", "rejected": "The sky is green."}),
                2,
            ),
        ];
        let got = values(unpaired(
            rows.into_iter(),
            Columns::default(),
            Default::default(),
        ));
        assert_eq!(got[0]["prompt"], json!([u("q")]));
        assert_eq!(got[0]["completion"], json!([a("yes")]));
        assert_eq!(got[2]["completion"], json!([a("no")]));
        assert_eq!(got[1]["prompt"], json!("The sky is"));
        assert_eq!(got[1]["completion"], json!(" blue."));
        assert_eq!(got[3]["completion"], json!(" green."));
    }
}
