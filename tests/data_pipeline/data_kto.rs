//! KTO (unpaired) data: rows without a usable label, or files with only one label value, are
//! refused with the file, the line and the field; paired data is pointed to its stage.

use std::path::{Path, PathBuf};

use lora_dpo::data::{self, ChatTokenizer, DataConfig};

fn tok() -> ChatTokenizer {
    data::load_chat_tokenizer(Path::new("tests/fixtures/data/smollm2")).unwrap()
}

struct Tmp {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn file(text: &str) -> Tmp {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kto.jsonl");
    std::fs::write(&path, text).unwrap();
    Tmp { _dir: dir, path }
}

fn load(text: &str) -> Result<data::KtoDataset, String> {
    let f = file(text);
    data::load_kto(&f.path, None, &tok(), &DataConfig::default(), 4).map_err(|e| {
        let msg = format!("{e:#}");
        assert!(msg.contains("kto.jsonl"), "no file in: {msg}");
        msg
    })
}

const GOOD: &str = r#"{"prompt": "2+2=", "completion": " 4", "label": true}
{"prompt": "2+2=", "completion": " 5", "label": false}
"#;

#[test]
fn good_rows_load_with_their_labels() {
    let ds = load(GOOD).unwrap();
    assert_eq!(ds.labels, vec![true, false]);
    assert_eq!(ds.desirable(), 1);
    // Each row's KL sequence is its prompt with the other row's completion.
    let e = &ds.pairs.examples;
    assert_eq!(e[0].parts.rejected_ids, e[1].parts.chosen_ids);
    assert_eq!(e[1].parts.rejected_ids, e[0].parts.chosen_ids);
}

#[test]
fn conversational_rows_load() {
    let text = r#"{"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}], "label": true}
{"prompt": [{"role": "user", "content": "2+3?"}], "completion": [{"role": "assistant", "content": "6"}], "label": false}
"#;
    let ds = load(text).unwrap();
    assert!(ds.pairs.stats.conversational);
    assert_eq!(ds.len(), 2);
}

#[test]
fn a_row_without_label_names_line_and_field() {
    let text = format!("{GOOD}{}\n", r#"{"prompt": "1+1=", "completion": " 2"}"#);
    let msg = load(&text).unwrap_err();
    assert!(
        msg.contains("line 3") && msg.contains("field `label`") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn a_null_or_non_boolean_label_is_a_bad_row() {
    for (value, expect) in [
        ("null", "null"),
        ("1", "expected a boolean"),
        ("\"yes\"", "expected a boolean"),
    ] {
        let text =
            format!("{GOOD}{{\"prompt\": \"1+1=\", \"completion\": \" 2\", \"label\": {value}}}\n");
        let msg = load(&text).unwrap_err();
        assert!(
            msg.contains("line 3") && msg.contains("field `label`") && msg.contains(expect),
            "{value}: {msg}"
        );
    }
}

#[test]
fn a_file_without_a_label_column_names_the_field() {
    let msg = load("{\"prompt\": \"a\", \"completion\": \" b\"}\n").unwrap_err();
    assert!(
        msg.contains("line 1") && msg.contains("field `label`"),
        "{msg}"
    );
}

#[test]
fn one_label_value_only_is_refused() {
    for label in ["true", "false"] {
        let text = format!(
            "{{\"prompt\": \"a\", \"completion\": \" b\", \"label\": {label}}}\n\
             {{\"prompt\": \"c\", \"completion\": \" d\", \"label\": {label}}}\n"
        );
        let msg = load(&text).unwrap_err();
        assert!(
            msg.contains("field `label`")
                && msg.contains(&format!("all 2 kept rows have label = {label}"))
                && msg.contains("desirable (true) and undesirable (false)"),
            "{msg}"
        );
    }
}

/// Paired rows are read as TRL's KTOTrainer reads them: chosen rows labelled true, then
/// rejected rows labelled false, with the shared prompt (TRL's unpair_preference_dataset).
#[test]
fn paired_data_is_unpaired_as_trls_kto_trainer_does() {
    let ds = load(
        "{\"prompt\": \"2+2=\", \"chosen\": \" 4\", \"rejected\": \" 5\"}\n\
         {\"prompt\": \"3+3=\", \"chosen\": \" 6\", \"rejected\": \" 7\"}\n",
    )
    .unwrap();
    assert_eq!(ds.labels, vec![true, true, false, false]);
    assert_eq!(ds.pairs.stats.unpaired, 2);
    let line = |i: usize| ds.pairs.locs[i].to_string();
    assert!(
        line(0).ends_with("line 1") && line(2).ends_with("line 1"),
        "{}",
        line(2)
    );
    let unpaired = load(
        "{\"prompt\": \"2+2=\", \"completion\": \" 4\", \"label\": true}\n\
         {\"prompt\": \"3+3=\", \"completion\": \" 6\", \"label\": true}\n\
         {\"prompt\": \"2+2=\", \"completion\": \" 5\", \"label\": false}\n\
         {\"prompt\": \"3+3=\", \"completion\": \" 7\", \"label\": false}\n",
    )
    .unwrap();
    let seqs = |d: &data::KtoDataset| -> Vec<_> {
        d.pairs
            .examples
            .iter()
            .map(|e| e.chosen().input_ids.clone())
            .collect()
    };
    assert_eq!(seqs(&ds), seqs(&unpaired));
}

#[test]
fn keep_end_is_refused() {
    let f = file(GOOD);
    let cfg = DataConfig {
        truncation_mode: data::TruncationMode::KeepEnd,
        ..DataConfig::default()
    };
    let msg = format!(
        "{:#}",
        data::load_kto(&f.path, None, &tok(), &cfg, 4).unwrap_err()
    );
    assert!(msg.contains("keep_end"), "{msg}");
}
