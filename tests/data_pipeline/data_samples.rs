//! The project's sample datasets (data/sft, data/dpo; made by scripts/make_sample_data.py) load cleanly with the
//! SmolLM2 tokenizer, hold right-vs-wrong preferences, keep eval questions out of train, and batch correctly.

use std::collections::HashSet;
use std::path::Path;

use lora_dpo::data::{self, ChatTokenizer, DataConfig, DpoDataset, SftDataset};

fn tok() -> ChatTokenizer {
    data::load_chat_tokenizer(Path::new("tests/fixtures/data/smollm2")).unwrap()
}

fn sft(split: &str) -> SftDataset {
    data::load_sft(
        Path::new("data/sft"),
        Some(split),
        &tok(),
        &DataConfig::default(),
    )
    .unwrap()
}

fn dpo(split: &str) -> DpoDataset {
    data::load_dpo(
        Path::new("data/dpo"),
        Some(split),
        &tok(),
        &DataConfig::default(),
    )
    .unwrap()
}

fn user_questions(path: &str) -> HashSet<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .flat_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let msgs = if v.get("messages").is_some() {
                v["messages"].clone()
            } else {
                v["prompt"].clone()
            };
            msgs.as_array()
                .unwrap()
                .iter()
                .filter(|m| m["role"] == "user")
                .map(|m| m["content"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn sft_sample_loads_cleanly() {
    for (split, n) in [("train", 200), ("eval", 40)] {
        let ds = sft(split);
        assert_eq!((ds.stats.rows, ds.examples.len()), (n, n), "{split}");
        assert!(ds.stats.bad_rows.is_empty() && ds.stats.truncated == 0 && ds.stats.no_eos == 0);
        for ex in &ds.examples {
            // Trained tokens end each assistant turn with <|im_end|> "\n"; prompts are never trained.
            let last_trained = ex.loss_mask.iter().rposition(|&m| m).unwrap();
            assert_eq!(ex.input_ids[last_trained - 1..=last_trained], [2, 198]);
            assert!(!ex.loss_mask[0]);
        }
    }
    // Some rows have two assistant turns.
    let ds = sft("train");
    let multi = ds
        .examples
        .iter()
        .filter(|e| e.loss_mask.windows(2).filter(|w| !w[0] && w[1]).count() == 2)
        .count();
    assert!(multi >= 20, "{multi} multi-turn rows");
}

/// Checks `a op b = v.` answers.
fn arithmetic_is_right(text: &str) -> Option<bool> {
    let (lhs, rhs) = text.strip_suffix('.')?.split_once(" = ")?;
    let parts: Vec<&str> = lhs.split(' ').collect();
    let (a, op, b): (i64, &str, i64) = (parts[0].parse().ok()?, parts[1], parts[2].parse().ok()?);
    let v: i64 = rhs.parse().ok()?;
    Some(match op {
        "+" => a + b == v,
        "-" => a - b == v,
        "*" => a * b == v,
        _ => return None,
    })
}

#[test]
fn dpo_sample_prefers_right_answers() {
    let tok = tok();
    for (split, n) in [("train", 200), ("eval", 40)] {
        let ds = dpo(split);
        assert_eq!((ds.stats.rows, ds.examples.len()), (n, n), "{split}");
        assert!(ds.stats.bad_rows.is_empty() && ds.stats.no_eos == 0);
        let mut arithmetic = 0;
        for ex in &ds.examples {
            let chosen = tok.decode(&ex.parts.chosen_ids).unwrap();
            let rejected = tok.decode(&ex.parts.rejected_ids).unwrap();
            let (c, r) = (
                chosen.trim_end_matches("<|im_end|>\n"),
                rejected.trim_end_matches("<|im_end|>\n"),
            );
            assert_ne!(c, r);
            match (arithmetic_is_right(c), arithmetic_is_right(r)) {
                (Some(true), Some(false)) => arithmetic += 1,
                (None, None) => {
                    // Capitals: same sentence, another city.
                    assert!(
                        c.starts_with("The capital of ") && r.starts_with("The capital of "),
                        "{c} / {r}"
                    );
                }
                other => panic!("{split}: {c} / {r}: {other:?}"),
            }
        }
        assert!(arithmetic > n / 2, "{split}: {arithmetic} arithmetic pairs");
    }
}

#[test]
fn eval_questions_are_held_out() {
    for stage in ["sft", "dpo"] {
        let train = user_questions(&format!("data/{stage}/train.jsonl"));
        let eval = user_questions(&format!("data/{stage}/eval.jsonl"));
        assert!(!eval.is_empty());
        assert!(
            train.is_disjoint(&eval),
            "{stage}: eval questions appear in train"
        );
    }
    let sft_train = user_questions("data/sft/train.jsonl");
    assert!(sft_train.is_disjoint(&user_questions("data/dpo/eval.jsonl")));
}

#[test]
fn batches_pad_right_and_grouping_reduces_padding() {
    let ds = sft("train");
    let lengths = ds.lengths();
    let padding = |group: bool| -> usize {
        let order = data::batch_order(&lengths, 8, true, group, 7);
        let mut seen = 0;
        let mut pad = 0;
        for idx in &order {
            let seqs: Vec<_> = idx.iter().map(|&i| &ds.examples[i]).collect();
            let b = data::collate(&seqs, ds.pad_id, None);
            seen += idx.len();
            for (r, s) in seqs.iter().enumerate() {
                assert_eq!(b.row_ids(r), s.input_ids);
                let row = r * b.seq_len..(r + 1) * b.seq_len;
                assert!(b.input_ids[row.clone()][s.len()..]
                    .iter()
                    .all(|&t| t == ds.pad_id));
                assert!(b.loss_mask[row][s.len()..].iter().all(|&m| m == 0));
            }
            pad += b.batch_size * b.seq_len - b.n_tokens();
        }
        assert_eq!(seen, ds.examples.len());
        pad
    };
    assert!(padding(true) < padding(false));
    let d = dpo("eval");
    let refs: Vec<_> = d.examples.iter().take(4).collect();
    let b = data::collate_dpo(&refs, d.pad_id, Some(8));
    assert_eq!(b.batch_size, 8);
    assert_eq!(b.seq_len % 8, 0);
    assert_eq!(b.row_ids(0), d.examples[0].chosen().input_ids);
    assert_eq!(b.row_ids(4), d.examples[0].rejected().input_ids);
}

#[test]
fn data_command_reports_counts_lengths_and_a_masked_example() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[dpo]\nmax_length = 44\ntruncation_mode = \"keep_end\"\nbeta = 0.1\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lora-dpo"))
        .args([
            "data",
            "--model",
            "tests/fixtures/data/smollm2",
            "--data",
            "data/dpo/eval.jsonl",
        ])
        .args(["--stage", "dpo", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same numbers from the library.
    let cfg = DataConfig::from_toml_file(&config, data::Stage::Dpo).unwrap();
    let ds = data::load_dpo(Path::new("data/dpo/eval.jsonl"), None, &tok(), &cfg).unwrap();
    assert!(
        ds.stats.truncated > 0 && ds.stats.truncated < 40,
        "{}",
        ds.stats.truncated
    );
    let p50 = data::report::percentile(&ds.stats.lengths, 50).unwrap();
    for needle in [
        "schema: prompt + chosen + rejected (explicit prompt), conversational".to_string(),
        "rows: 40 read, 40 kept".to_string(),
        format!("truncated: {} rows", ds.stats.truncated),
        "dropped: 0 rows".to_string(),
        format!("p50 {p50} ·"),
        "max_length 44, truncation_mode keep_end".to_string(),
        "chosen:".to_string(),
        "rejected:".to_string(),
        "[[".to_string(),
        "<|im_end|>\n]]".to_string(),
    ] {
        assert!(stdout.contains(&needle), "`{needle}` missing in:\n{stdout}");
    }
    // Without --stage the stage comes from the columns.
    for (file, stage) in [
        ("data/dpo/eval.jsonl", "stage: dpo"),
        ("data/sft/eval.jsonl", "stage: sft"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lora-dpo"))
            .args([
                "data",
                "--model",
                "tests/fixtures/data/smollm2",
                "--data",
                file,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(stage),
            "{file}"
        );
    }
}
