//! Bad input gives an error naming the file, the line (JSONL) or row (Parquet, JSON array), the field and what is
//! wrong; `skip_bad_rows` skips such rows and counts them; the CLI exits non-zero without panicking.

use std::path::{Path, PathBuf};
use std::process::Command;

use lora_dpo::data::{self, ChatTokenizer, DataConfig, TruncationMode};

fn tok() -> ChatTokenizer {
    data::load_chat_tokenizer(Path::new("tests/fixtures/data/smollm2")).unwrap()
}

struct Tmp {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn file(name: &str, text: &str) -> Tmp {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    Tmp { _dir: dir, path }
}

const GOOD_SFT: &str =
    r#"{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}"#;
const GOOD_DPO: &str = r#"{"prompt": "2+2=", "chosen": " 4", "rejected": " 5"}"#;

fn sft_err(text: &str, cfg: &DataConfig) -> (String, PathBuf) {
    let f = file("train.jsonl", text);
    let err = data::load_sft(&f.path, None, &tok(), cfg).expect_err("a bad row must stop the run");
    (format!("{err:#}"), f.path.clone())
}

fn dpo_err(text: &str, cfg: &DataConfig) -> (String, PathBuf) {
    let f = file("prefs.jsonl", text);
    let err = data::load_dpo(&f.path, None, &tok(), cfg).expect_err("a bad row must stop the run");
    (format!("{err:#}"), f.path.clone())
}

/// The message names the file, the place and the field, and says what is wrong.
fn assert_names(msg: &str, path: &Path, place: &str, field: Option<&str>, what: &str) {
    assert!(
        msg.contains(&path.display().to_string()),
        "file missing in: {msg}"
    );
    assert!(msg.contains(place), "`{place}` missing in: {msg}");
    if let Some(f) = field {
        assert!(
            msg.contains(&format!("field `{f}`")),
            "field `{f}` missing in: {msg}"
        );
    }
    assert!(msg.contains(what), "`{what}` missing in: {msg}");
}

#[test]
fn not_json() {
    let (msg, p) = sft_err(
        &format!("{GOOD_SFT}\n{{\"messages\": [oops\n"),
        &DataConfig::default(),
    );
    assert_names(&msg, &p, "line 2", None, "not JSON");
}

#[test]
fn not_an_object() {
    let (msg, p) = sft_err(&format!("{GOOD_SFT}\n[1, 2]\n"), &DataConfig::default());
    assert_names(
        &msg,
        &p,
        "line 2",
        None,
        "expected a JSON object, got an array",
    );
}

#[test]
fn missing_field() {
    let (msg, p) = dpo_err(
        &format!("{GOOD_DPO}\n{{\"prompt\": \"1+1=\", \"chosen\": \" 2\"}}\n"),
        &DataConfig::default(),
    );
    assert_names(&msg, &p, "line 2", Some("rejected"), "missing field");
    let (msg, p) = sft_err(
        &format!("{GOOD_SFT}\n{{\"messages\": [{{\"role\": \"user\"}}]}}\n"),
        &DataConfig::default(),
    );
    assert_names(
        &msg,
        &p,
        "line 2",
        Some("messages[0].content"),
        "missing field",
    );
}

#[test]
fn wrong_type() {
    let (msg, p) = dpo_err(
        &format!("{GOOD_DPO}\n{{\"prompt\": \"1+1=\", \"chosen\": 2, \"rejected\": \" 3\"}}\n"),
        &DataConfig::default(),
    );
    assert_names(
        &msg,
        &p,
        "line 2",
        Some("chosen"),
        "wrong type: expected a string or a list",
    );
    assert!(msg.contains("got a number"), "{msg}");
    let (msg, p) = sft_err(
        &format!("{GOOD_SFT}\n{{\"messages\": [{{\"role\": \"user\", \"content\": [\"a\"]}}]}}\n"),
        &DataConfig::default(),
    );
    assert_names(
        &msg,
        &p,
        "line 2",
        Some("messages[0].content"),
        "wrong type: expected a string, got an array",
    );
    let (msg, p) = dpo_err(
        &format!(
            "{GOOD_DPO}\n{{\"prompt\": [{{\"role\": \"user\", \"content\": \"q\"}}], \"chosen\": \"a\", \"rejected\": \"b\"}}\n"
        ),
        &DataConfig::default(),
    );
    assert_names(&msg, &p, "line 2", Some("chosen"), "must be one too");
}

#[test]
fn unknown_role() {
    let row = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}"#;
    let (msg, p) = sft_err(
        &format!("{GOOD_SFT}\n{GOOD_SFT}\n{row}\n"),
        &DataConfig::default(),
    );
    assert_names(
        &msg,
        &p,
        "line 3",
        Some("messages[1].role"),
        "unknown role `robot`",
    );
}

#[test]
fn broken_role_order() {
    let two_users = r#"{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}"#;
    let (msg, p) = sft_err(
        &format!("{GOOD_SFT}\n{two_users}\n"),
        &DataConfig::default(),
    );
    assert_names(
        &msg,
        &p,
        "line 2",
        Some("messages[1].role"),
        "broken role order",
    );
    let late_system = r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "system", "content": "c"}]}"#;
    let (msg, _) = sft_err(
        &format!("{GOOD_SFT}\n{late_system}\n"),
        &DataConfig::default(),
    );
    assert!(
        msg.contains("`system` message may only come first"),
        "{msg}"
    );
    let starts_with_assistant = r#"{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}"#;
    let (msg, _) = sft_err(
        &format!("{GOOD_SFT}\n{starts_with_assistant}\n"),
        &DataConfig::default(),
    );
    assert!(msg.contains("must start with `user`"), "{msg}");
    let no_assistant = r#"{"messages": [{"role": "user", "content": "a"}]}"#;
    let (msg, _) = sft_err(
        &format!("{GOOD_SFT}\n{no_assistant}\n"),
        &DataConfig::default(),
    );
    assert!(msg.contains("no assistant message"), "{msg}");
    let prompt_ends_with_assistant = r#"{"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "chosen": [{"role": "assistant", "content": "c"}], "rejected": [{"role": "assistant", "content": "d"}]}"#;
    let (msg, p) = dpo_err(
        &format!("{prompt_ends_with_assistant}\n"),
        &DataConfig::default(),
    );
    assert_names(
        &msg,
        &p,
        "line 1",
        Some("prompt[1].role"),
        "broken role order",
    );
}

#[test]
fn empty_completion() {
    let (msg, p) = dpo_err(
        &format!(
            "{GOOD_DPO}\n{{\"prompt\": \"1+1=\", \"chosen\": \"  \", \"rejected\": \" 3\"}}\n"
        ),
        &DataConfig::default(),
    );
    assert_names(&msg, &p, "line 2", Some("chosen"), "empty completion");
    let row =
        r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}"#;
    let (msg, p) = sft_err(&format!("{row}\n"), &DataConfig::default());
    assert_names(
        &msg,
        &p,
        "line 1",
        Some("messages[1].content"),
        "empty completion",
    );
    let pc = r#"{"prompt": [{"role": "user", "content": "a"}], "completion": []}"#;
    let (msg, p) = sft_err(&format!("{pc}\n"), &DataConfig::default());
    assert_names(&msg, &p, "line 1", Some("completion"), "empty completion");
}

#[test]
fn chosen_equal_to_rejected() {
    let (msg, p) = dpo_err(
        &format!("{GOOD_DPO}\n{GOOD_DPO}\n{{\"prompt\": \"1+1=\", \"chosen\": \" 2\", \"rejected\": \" 2\"}}\n"),
        &DataConfig::default(),
    );
    assert_names(&msg, &p, "line 3", Some("rejected"), "are identical");
}

#[test]
fn too_long_with_truncation_off() {
    let cfg = DataConfig {
        max_length: Some(8),
        truncation_mode: TruncationMode::Off,
        ..DataConfig::default()
    };
    let long = r#"{"prompt": "one two three four five six seven eight nine ten", "chosen": " yes", "rejected": " no"}"#;
    let (msg, p) = dpo_err(&format!("{GOOD_DPO}\n{long}\n"), &cfg);
    assert_names(&msg, &p, "line 2", None, "longer than max_length 8");
    let (msg, p) = sft_err(&format!("{GOOD_SFT}\n"), &cfg);
    assert_names(&msg, &p, "line 1", None, "longer than max_length 8");
    // With truncation on, the same rows are cut (or dropped) and counted instead.
    let f = file("t.jsonl", &format!("{GOOD_DPO}\n{long}\n"));
    let ds = data::load_dpo(
        &f.path,
        None,
        &tok(),
        &DataConfig {
            max_length: Some(8),
            ..DataConfig::default()
        },
    )
    .unwrap();
    assert_eq!(ds.stats.examples + ds.stats.dropped.len(), 2);
    assert_eq!(ds.stats.truncated + ds.stats.dropped.len(), 1);
    assert!(ds
        .examples
        .iter()
        .all(|e| e.chosen_len() <= 8 && e.rejected_len() <= 8));
}

#[test]
fn empty_file_and_empty_folder() {
    let f = file("train.jsonl", "");
    let err = data::load_sft(&f.path, None, &tok(), &DataConfig::default()).unwrap_err();
    assert_names(&format!("{err:#}"), &f.path, "", None, "the file is empty");
    let f = file("train.json", "  \n");
    let err = data::load_sft(&f.path, None, &tok(), &DataConfig::default()).unwrap_err();
    assert_names(&format!("{err:#}"), &f.path, "", None, "the file is empty");
    let f = file("train.json", "[]");
    let err = data::load_sft(&f.path, None, &tok(), &DataConfig::default()).unwrap_err();
    assert!(format!("{err:#}").contains("empty"), "{err:#}");
    let dir = tempfile::tempdir().unwrap();
    let err = data::load_sft(dir.path(), None, &tok(), &DataConfig::default()).unwrap_err();
    assert!(format!("{err:#}").contains("no data files"), "{err:#}");
}

#[test]
fn json_array_rows_and_syntax_errors() {
    let f = file(
        "train.json",
        &format!("[{GOOD_SFT},\n {{\"messages\": 3}}]"),
    );
    let err = data::load_sft(&f.path, None, &tok(), &DataConfig::default()).unwrap_err();
    assert_names(
        &format!("{err:#}"),
        &f.path,
        "row 1",
        Some("messages"),
        "wrong type",
    );
    let f = file("train.json", &format!("[{GOOD_SFT},\n {{\"messages\": ]"));
    let err = data::load_sft(&f.path, None, &tok(), &DataConfig::default()).unwrap_err();
    assert_names(&format!("{err:#}"), &f.path, "line 2", None, "not JSON");
}

#[test]
fn unknown_layout_names_the_columns() {
    let f = file("x.jsonl", "{\"question\": \"a\", \"answer\": \"b\"}\n");
    let err = data::load_sft(&f.path, None, &tok(), &DataConfig::default()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("[question, answer]") && msg.contains("messages"),
        "{msg}"
    );
    let err = data::load_dpo(&f.path, None, &tok(), &DataConfig::default()).unwrap_err();
    assert!(format!("{err:#}").contains("chosen"), "{err:#}");
}

#[test]
fn template_that_breaks_the_prefix_rule_is_named() {
    // A Mistral v0.3-style template moves the system message into the last user turn, so the prompt rendered
    // alone is not a prefix of the whole conversation.
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/data/templates.json").unwrap(),
    )
    .unwrap();
    let mut t = tok();
    t.template = Some(
        data::ChatTemplate::new(
            fx["mistral_v3"]["template"].as_str().unwrap(),
            vec![
                ("bos_token".into(), "<s>".into()),
                ("eos_token".into(), "</s>".into()),
            ],
        )
        .unwrap(),
    );
    let row = r#"{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}], "rejected": [{"role": "assistant", "content": "Go"}]}"#;
    let f = file("p.jsonl", &format!("{row}\n"));
    let err = data::load_dpo(&f.path, None, &t, &DataConfig::default()).unwrap_err();
    let msg = format!("{err:#}");
    assert_names(
        &msg,
        &f.path,
        "line 1",
        Some("chosen"),
        "renders the prompt differently",
    );
    // The same template without a system message is fine.
    let ok = r#"{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}], "rejected": [{"role": "assistant", "content": "Go"}]}"#;
    let f = file("p.jsonl", &format!("{ok}\n"));
    data::load_dpo(&f.path, None, &t, &DataConfig::default()).unwrap();
}

#[test]
fn skip_bad_rows_counts_them() {
    let text = format!(
        "{GOOD_SFT}\nnot json\n{{\"messages\": [{{\"role\": \"bot\", \"content\": \"x\"}}]}}\n{GOOD_SFT}\n{{\"messages\": 1}}\n"
    );
    let f = file("train.jsonl", &text);
    let cfg = DataConfig {
        skip_bad_rows: true,
        ..DataConfig::default()
    };
    let ds = data::load_sft(&f.path, None, &tok(), &cfg).unwrap();
    assert_eq!(ds.stats.rows, 5);
    assert_eq!(ds.examples.len(), 2);
    let lines: Vec<String> = ds
        .stats
        .bad_rows
        .iter()
        .map(|b| b.loc.to_string())
        .collect();
    assert_eq!(ds.stats.bad_rows.len(), 3);
    assert!(
        lines[0].ends_with("line 2")
            && lines[1].ends_with("line 3")
            && lines[2].ends_with("line 5")
    );
    let summary = data::report::summary(&ds.stats, &cfg);
    assert!(summary.contains("bad rows skipped: 3"), "{summary}");
    // Only bad rows: nothing left is an error too.
    let f = file("train.jsonl", "nope\n{\"messages\": 1}\n");
    let err = data::load_sft(&f.path, None, &tok(), &cfg).unwrap_err();
    assert!(format!("{err:#}").contains("no usable rows"), "{err:#}");
}

#[test]
fn parquet_bad_rows_name_the_row() {
    let p = Path::new("tests/fixtures/data/parquet/bad_rows.parquet");
    let err = data::load_sft(p, None, &tok(), &DataConfig::default()).unwrap_err();
    assert_names(
        &format!("{err:#}"),
        p,
        "row 1",
        Some("messages[1].content"),
        "missing value (null)",
    );
    let cfg = DataConfig {
        skip_bad_rows: true,
        ..DataConfig::default()
    };
    let ds = data::load_sft(p, None, &tok(), &cfg).unwrap();
    assert_eq!(ds.examples.len(), 1);
    assert_eq!(ds.stats.bad_rows.len(), 2);
    let b = &ds.stats.bad_rows[1];
    assert_eq!(b.field.as_deref(), Some("messages[1].role"));
    assert!(
        b.to_string().contains("row 2") && b.message.contains("unknown role `robot`"),
        "{b}"
    );
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lora-dpo"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_exits_non_zero_without_panicking() {
    let f = file(
        "train.jsonl",
        &format!("{GOOD_DPO}\n{{\"prompt\": \"x\", \"chosen\": \" y\", \"rejected\": \" y\"}}\n"),
    );
    let path = f.path.to_str().unwrap();
    let model = "tests/fixtures/data/smollm2";
    let out = cli(&["data", "--model", model, "--data", path, "--stage", "dpo"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("line 2") && stderr.contains("identical"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let out = cli(&[
        "data",
        "--model",
        model,
        "--data",
        path,
        "--stage",
        "dpo",
        "--skip-bad-rows",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("bad rows skipped: 1"), "{stdout}");
    // A missing model, a missing file: errors, not panics.
    let out = cli(&["data", "--model", "no/such/model", "--data", path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/model"));
    let out = cli(&["data", "--model", model, "--data", "no/such/file.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/file.jsonl"));
}
