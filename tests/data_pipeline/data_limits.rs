//! Every row is held at load to the tighter of `max_length` and the model's `max_position_embeddings`: cut by
//! the truncation rule, dropped, or (truncation off) a bad row naming its file and line, so that training never
//! sees a row longer than the model can place. Also: rows stream through the pipeline in chunks, in order.

use crate::common;
use common::lora_dpo;

use std::path::{Path, PathBuf};
use std::process::Command;

use lora_dpo::data::{self, ChatTokenizer, DataConfig, Pos, TruncationMode};
use lora_dpo::model::config::ModelConfig;

const TINY: &str = "models/tiny-llama";

fn tokenizer() -> ChatTokenizer {
    data::load_chat_tokenizer(&common::fixture(TINY)).unwrap()
}

/// The tiny model's own limit, read from its config.json (64 positions).
fn tiny_limit() -> usize {
    let cfg = ModelConfig::from_file(&common::fixture(&format!("{TINY}/config.json"))).unwrap();
    assert_eq!(cfg.max_position_embeddings, 64, "fixture changed");
    cfg.max_position_embeddings
}

fn sft_row(prompt: &str, completion: &str) -> String {
    serde_json::json!({
        "prompt": [{"role": "user", "content": prompt}],
        "completion": [{"role": "assistant", "content": completion}],
    })
    .to_string()
}

fn dpo_row(prompt: &str, chosen: &str, rejected: &str) -> String {
    serde_json::json!({
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    })
    .to_string()
}

/// A completion far longer than 64 tokens with the tiny tokenizer (about one token a character).
fn long_text() -> String {
    "one two three four five six seven eight nine ten ".repeat(6)
}

/// Writes `lines` as a JSONL file; line numbers are 1-based positions in `lines`.
fn write_jsonl(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Four SFT rows; line 3 is too long for the model.
fn sft_file(dir: &Path) -> PathBuf {
    let lines = [
        sft_row("1+1=?", "2"),
        sft_row("capital of Italy?", "Rome."),
        sft_row("count", &long_text()),
        sft_row("3+3=?", "six"),
    ];
    write_jsonl(dir, "sft.jsonl", &lines.map(String::from))
}

fn limited(mode: TruncationMode, skip: bool) -> DataConfig {
    DataConfig {
        truncation_mode: mode,
        skip_bad_rows: skip,
        ..DataConfig::default() // max_length 1024: the model's 64 is the tighter
    }
    .with_model_max_length(tiny_limit())
}

#[test]
fn an_over_long_row_is_truncated_to_the_model_limit_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = sft_file(dir.path());
    let tok = tokenizer();
    let ds = data::load_sft(
        &path,
        None,
        &tok,
        &limited(TruncationMode::KeepStart, false),
    )
    .unwrap();
    assert_eq!(ds.stats.rows, 4);
    assert_eq!(ds.stats.examples, 4);
    assert_eq!(ds.stats.truncated, 1);
    assert!(ds.stats.dropped.is_empty());
    assert!(
        ds.stats.lengths[2] > 64,
        "row 3 must start over the limit: {:?}",
        ds.stats.lengths
    );
    assert_eq!(ds.locs[2].pos, Pos::Line(3));
    // Cut to exactly the limit, and no row the trainer sees is longer.
    assert_eq!(ds.examples[2].len(), 64);
    assert_eq!(ds.lengths().into_iter().max(), Some(64));
    assert_eq!(ds.stats.longest_kept, 64);
}

#[test]
fn without_max_length_the_model_limit_is_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = sft_file(dir.path());
    let cfg = DataConfig {
        max_length: None,
        ..limited(TruncationMode::KeepEnd, false)
    };
    let ds = data::load_sft(&path, None, &tokenizer(), &cfg).unwrap();
    assert_eq!(ds.stats.truncated, 1);
    assert_eq!(ds.lengths().into_iter().max(), Some(64));
}

#[test]
fn with_truncation_off_the_error_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = sft_file(dir.path());
    let err = data::load_sft(
        &path,
        None,
        &tokenizer(),
        &limited(TruncationMode::Off, false),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("{}, line 3", path.display())),
        "{msg}"
    );
    assert!(msg.contains("max_position_embeddings 64"), "{msg}");
}

#[test]
fn with_truncation_off_and_skip_bad_rows_the_row_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = sft_file(dir.path());
    let ds = data::load_sft(
        &path,
        None,
        &tokenizer(),
        &limited(TruncationMode::Off, true),
    )
    .unwrap();
    assert_eq!(ds.stats.rows, 4);
    assert_eq!(ds.stats.examples, 3);
    assert_eq!(ds.stats.bad_rows.len(), 1);
    assert_eq!(ds.stats.bad_rows[0].loc.pos, Pos::Line(3));
    assert_eq!(ds.stats.truncated, 0);
    assert!(ds.lengths().into_iter().all(|n| n <= 64));
    let lines: Vec<_> = ds.locs.iter().map(|l| l.pos).collect();
    assert_eq!(lines, [Pos::Line(1), Pos::Line(2), Pos::Line(4)]);
}

#[test]
fn a_prompt_that_fills_the_model_limit_is_dropped_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [sft_row("1+1=?", "2"), sft_row(&long_text(), "yes")];
    let path = write_jsonl(dir.path(), "sft.jsonl", &lines);
    let ds = data::load_sft(
        &path,
        None,
        &tokenizer(),
        &limited(TruncationMode::KeepStart, false),
    )
    .unwrap();
    assert_eq!(ds.stats.examples, 1);
    assert_eq!(ds.stats.dropped.len(), 1);
    assert_eq!(ds.stats.dropped[0].0.pos, Pos::Line(2));
    let line = data::report::counts_line(&ds.stats);
    assert!(
        line.contains("2 rows read, 1 kept, 0 truncated, 1 dropped"),
        "{line}"
    );
    assert!(line.contains("line 2"), "{line}");
}

#[test]
fn dpo_pairs_are_held_to_the_model_limit() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        dpo_row("1+1=?", "2", "3"),
        dpo_row("count", &long_text(), "no"),
        dpo_row("3+3=?", "six", "five"),
    ];
    let path = write_jsonl(dir.path(), "prefs.jsonl", &lines);
    let tok = tokenizer();
    let ds = data::load_dpo(
        &path,
        None,
        &tok,
        &limited(TruncationMode::KeepStart, false),
    )
    .unwrap();
    assert_eq!(ds.stats.truncated, 1);
    assert_eq!(ds.examples[1].chosen_len(), 64);
    assert!(ds.examples[1].rejected_len() <= 64);
    assert_eq!(ds.lengths().into_iter().max(), Some(64));

    let err = data::load_dpo(&path, None, &tok, &limited(TruncationMode::Off, false)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("{}, line 2", path.display())),
        "{msg}"
    );
    assert!(msg.contains("max_position_embeddings 64"), "{msg}");

    let ds = data::load_dpo(&path, None, &tok, &limited(TruncationMode::Off, true)).unwrap();
    assert_eq!((ds.stats.examples, ds.stats.bad_rows.len()), (2, 1));
    assert_eq!(ds.stats.bad_rows[0].loc.pos, Pos::Line(2));
}

/// Rows cross several chunks of the streaming reader (2048 rows each): order, line numbers and a bad row far
/// into the file all survive.
#[test]
fn rows_stream_in_order_across_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let n = 5000;
    let mut lines: Vec<String> = (0..n)
        .map(|i| sft_row(&format!("{i}+0=?"), &i.to_string()))
        .collect();
    lines[4099] = "{not json".to_string(); // line 4100
    lines.insert(10, String::new()); // a blank line: skipped, but later line numbers move by one
    let path = write_jsonl(dir.path(), "many.jsonl", &lines);
    let tok = tokenizer();
    let err = data::load_sft(&path, None, &tok, &DataConfig::default()).unwrap_err();
    assert!(format!("{err:#}").contains("line 4101"), "{err:#}");
    let cfg = DataConfig {
        skip_bad_rows: true,
        ..DataConfig::default()
    };
    let ds = data::load_sft(&path, None, &tok, &cfg).unwrap();
    assert_eq!(ds.stats.rows, n);
    assert_eq!(ds.stats.examples, n - 1);
    assert_eq!(ds.stats.bad_rows[0].loc.pos, Pos::Line(4101));
    let Pos::Line(last) = ds.locs.last().unwrap().pos else {
        panic!("JSONL rows have lines")
    };
    assert_eq!(last, n + 1);
    assert!(ds.locs.windows(2).all(|w| match (w[0].pos, w[1].pos) {
        (Pos::Line(a), Pos::Line(b)) => a < b,
        _ => false,
    }));
    // Row 3000 (line 3002 after the blank line) is the prompt "2999+0=?" and its completion.
    let text = tok.decode(&ds.examples[2999].input_ids).unwrap();
    assert!(text.contains("2999+0=?"), "{text}");
}

/// A copy of the tiny model folder whose config says `positions`.
fn model_with_positions(positions: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(common::fixture(TINY)).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let path = dir.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["max_position_embeddings"] = positions.into();
    std::fs::write(&path, json.to_string()).unwrap();
    dir
}

#[test]
fn the_data_command_reads_the_limit_from_the_model_config() {
    let model = model_with_positions(48);
    let dir = tempfile::tempdir().unwrap();
    let data = sft_file(dir.path());
    let (m, d) = (model.path().to_str().unwrap(), data.to_str().unwrap());
    let (code, out, err) = lora_dpo(&["data", "--model", m, "--data", d]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("model max_position_embeddings 48 (the tighter)"),
        "{out}"
    );
    assert!(out.contains("truncated: 1 rows"), "{out}");
    assert!(out.contains("4 read, 4 kept (longest 48 tokens)"), "{out}");

    let (code, _, err) = lora_dpo(&[
        "data",
        "--model",
        m,
        "--data",
        d,
        "--truncation-mode",
        "off",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains(&format!("{d}, line 3")), "{err}");
    assert!(err.contains("max_position_embeddings 48"), "{err}");
}

#[test]
fn sft_prints_the_counts_of_each_split_and_trains_within_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let data = sft_file(dir.path());
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\nname_or_path = {:?}\ndevice = \"cpu\"\n[output]\ndir = {:?}\n\
             [sft]\ntrain_file = {:?}\neval_file = {:?}\nmax_steps = 1\nsave_steps = 0\n",
            common::fixture(TINY).display().to_string(),
            dir.path().join("out").display().to_string(),
            data.display().to_string(),
            data.display().to_string(),
        ),
    )
    .unwrap();
    let (code, _, err) = lora_dpo(&["sft", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let line = format!(
        "data {}: 4 rows read, 4 kept, 1 truncated, 0 dropped, 0 bad rows skipped; longest kept row 64 tokens",
        data.display()
    );
    assert_eq!(
        err.matches(&line).count(),
        2,
        "train and eval splits: {err}"
    );
}

#[test]
fn eval_holds_rows_to_the_model_limit_too() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_jsonl(
        dir.path(),
        "prefs.jsonl",
        &[
            dpo_row("1+1=?", "2", "3"),
            dpo_row("count", &long_text(), "no"),
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_lora-dpo"))
        .args(["eval", "--device", "cpu", "--model"])
        .arg(common::fixture(TINY))
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json.get("rewards/accuracies").is_some(), "{json}");
}
