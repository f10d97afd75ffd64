//! Readers: JSONL, JSON arrays, Parquet written by `datasets`, and folders of split files in the hub layout;
//! schema detection and prompt extraction; the data config in TOML.

use std::path::Path;

use lora_dpo::data::{self, read_dataset, DataConfig, Pos, Schema, Stage, TruncationMode, Turns};
use serde_json::Value;

fn expected() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/data/parquet/expected.json").unwrap(),
    )
    .unwrap()
}

fn rows(path: &Path, split: Option<&str>) -> Vec<Value> {
    read_dataset(path, split)
        .unwrap()
        .rows
        .into_iter()
        .map(|r| Value::Object(r.value.unwrap()))
        .collect()
}

#[test]
fn parquet_hub_layout_with_splits() {
    let hub = Path::new("tests/fixtures/data/parquet/hub");
    let fx = expected();
    // A folder with train and test splits reads train by default.
    let raw = read_dataset(hub, None).unwrap();
    assert_eq!(raw.files.len(), 1);
    assert!(raw.files[0].ends_with("data/train-00000-of-00001.parquet"));
    assert_eq!(raw.rows[2].loc.pos, Pos::Row(2));
    assert_eq!(rows(hub, None), fx["hub_train"].as_array().unwrap().clone());
    assert_eq!(
        rows(hub, Some("test")),
        fx["hub_test"].as_array().unwrap().clone()
    );
    let err = read_dataset(hub, Some("validation")).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("no data files for split `validation`") && msg.contains("test, train"),
        "{msg}"
    );
}

#[test]
fn parquet_ultrafeedback_layout_extracts_the_prompt() {
    let p = Path::new("tests/fixtures/data/parquet/ultrafeedback_like.parquet");
    let fx = expected();
    assert_eq!(
        rows(p, None),
        fx["ultrafeedback_like"].as_array().unwrap().clone()
    );
    let raw = read_dataset(p, None).unwrap();
    let cfg = DataConfig::default();
    let row0 = raw.rows[0].value.as_ref().unwrap();
    let schema = data::schema::detect(row0, Stage::Dpo, &cfg).unwrap();
    assert_eq!(schema, Schema::Preference);
    let r = data::schema::parse_dpo(row0, &raw.rows[0].loc, schema, &cfg).unwrap();
    assert_eq!(
        r.prompt,
        Turns::Chat(vec![data::Message::new("user", "Capital of Kenya?")])
    );
    assert_eq!(
        r.chosen,
        Turns::Chat(vec![data::Message::new("assistant", "Nairobi.")])
    );
    assert_eq!(
        r.rejected,
        Turns::Chat(vec![data::Message::new("assistant", "Mombasa.")])
    );
    let tok = data::load_chat_tokenizer(Path::new("tests/fixtures/data/smollm2")).unwrap();
    let ds = data::load_dpo(p, None, &tok, &cfg).unwrap();
    assert_eq!(ds.examples.len(), 2);
    assert_eq!(
        tok.decode(&ds.examples[0].parts.chosen_ids).unwrap(),
        "Nairobi.<|im_end|>\n"
    );
}

#[test]
fn json_array_jsonl_and_mixed_folder_read_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let a = r#"{"text": "first"}"#;
    let b = r#"{"text": "second"}"#;
    std::fs::write(
        dir.path().join("part1.jsonl"),
        format!("\u{feff}{a}\r\n\r\n{b}\r\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("more.json"), format!("[{a}, {b}]")).unwrap();
    std::fs::write(
        dir.path().join("wrapped.json"),
        format!("{{\"data\": [{a}]}}"),
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let raw = read_dataset(&dir.path().join("part1.jsonl"), None).unwrap();
    // The blank line is skipped but still counted in line numbers.
    assert_eq!(raw.rows.len(), 2);
    assert_eq!(raw.rows[1].loc.pos, Pos::Line(3));
    let raw = read_dataset(&dir.path().join("more.json"), None).unwrap();
    assert_eq!(raw.rows[1].loc.pos, Pos::Row(1));
    let all = read_dataset(dir.path(), None).unwrap();
    assert_eq!(all.files.len(), 3);
    assert_eq!(all.rows.len(), 5);
    let err = read_dataset(&dir.path().join("notes.txt"), None).unwrap_err();
    assert!(format!("{err:#}").contains("unknown data file type"));
    // Once a split is named in the folder (train.jsonl next to eval.jsonl), only that split is read.
    std::fs::write(dir.path().join("train.jsonl"), format!("{a}\n")).unwrap();
    std::fs::write(dir.path().join("eval.jsonl"), format!("{b}\n{b}\n")).unwrap();
    assert_eq!(read_dataset(dir.path(), None).unwrap().rows.len(), 1);
    assert_eq!(
        read_dataset(dir.path(), Some("eval")).unwrap().rows.len(),
        2
    );
}

#[test]
fn schemas_are_detected_from_columns() {
    let cfg = DataConfig::default();
    let detect = |json: &str, stage| {
        let v: Value = serde_json::from_str(json).unwrap();
        data::schema::detect(v.as_object().unwrap(), stage, &cfg)
    };
    assert_eq!(
        detect(r#"{"messages": []}"#, Stage::Sft).unwrap(),
        Schema::Messages
    );
    assert_eq!(
        detect(r#"{"conversations": []}"#, Stage::Sft).unwrap(),
        Schema::Messages
    );
    assert_eq!(
        detect(r#"{"prompt": "", "completion": ""}"#, Stage::Sft).unwrap(),
        Schema::PromptCompletion
    );
    assert_eq!(
        detect(r#"{"text": "", "id": 3}"#, Stage::Sft).unwrap(),
        Schema::Text
    );
    assert_eq!(
        detect(
            r#"{"prompt": "", "chosen": "", "rejected": ""}"#,
            Stage::Dpo
        )
        .unwrap(),
        Schema::Preference
    );
    assert_eq!(
        detect(r#"{"chosen": "", "rejected": ""}"#, Stage::Dpo).unwrap(),
        Schema::ImplicitPreference
    );
    let err = detect(r#"{"chosen": "", "rejected": ""}"#, Stage::Sft).unwrap_err();
    assert!(format!("{err:#}").contains("--stage dpo"));
    // Column names from the config.
    let cfg2: DataConfig = toml::from_str(
        "dataset_text_field = \"body\"\n[columns]\nchosen = \"good\"\nrejected = \"bad\"\nprompt = \"question\"\n",
    )
    .unwrap();
    let v: Value =
        serde_json::from_str(r#"{"question": "Q:", "good": " yes", "bad": " no"}"#).unwrap();
    let o = v.as_object().unwrap();
    let s = data::schema::detect(o, Stage::Dpo, &cfg2).unwrap();
    assert_eq!(s, Schema::Preference);
    let loc = data::RowLoc {
        file: std::sync::Arc::new("x.jsonl".into()),
        pos: Pos::Line(1),
    };
    let r = data::schema::parse_dpo(o, &loc, s, &cfg2).unwrap();
    assert_eq!(r.chosen, Turns::Text(" yes".into()));
    let v: Value = serde_json::from_str(r#"{"body": "hello"}"#).unwrap();
    assert_eq!(
        data::schema::detect(v.as_object().unwrap(), Stage::Sft, &cfg2).unwrap(),
        Schema::Text
    );
}

#[test]
fn sharegpt_conversations_and_implicit_prompts() {
    let cfg = DataConfig::default();
    let loc = data::RowLoc {
        file: std::sync::Arc::new("x.jsonl".into()),
        pos: Pos::Line(1),
    };
    let v: Value = serde_json::from_str(
        r#"{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}"#,
    )
    .unwrap();
    let r = data::schema::parse_sft(v.as_object().unwrap(), &loc, Schema::Messages, &cfg).unwrap();
    assert_eq!(
        r,
        data::SftRow::Messages(vec![
            data::Message::new("user", "hi"),
            data::Message::new("assistant", "hello")
        ])
    );
    let (p, c, r) = data::schema::extract_text_prompt("The sky is blue.", "The sky is green.");
    assert_eq!(
        (p.as_str(), c.as_str(), r.as_str()),
        ("The sky is", " blue.", " green.")
    );
}

#[test]
fn config_reads_trl_keys_from_the_stage_table() {
    let text = r#"
        [sft]
        max_length = 512
        truncation_mode = "keep_end"
        assistant_only_loss = false
        learning_rate = 2e-4      # a training key: ignored here

        [dpo]
        max_length = 256
        max_prompt_length = 128
        skip_bad_rows = true
        group_by_length = true
        beta = 0.1
    "#;
    let sft = DataConfig::from_toml_str(text, Stage::Sft).unwrap();
    assert_eq!(sft.max_length, Some(512));
    assert_eq!(sft.truncation_mode, TruncationMode::KeepEnd);
    assert!(!sft.assistant_only_loss);
    let dpo = DataConfig::from_toml_str(text, Stage::Dpo).unwrap();
    assert_eq!(
        (dpo.max_length, dpo.max_prompt_length),
        (Some(256), Some(128))
    );
    assert!(dpo.skip_bad_rows && dpo.group_by_length);
    let err = DataConfig::from_toml_str(
        "[dpo]\nmax_length = 100\nmax_prompt_length = 200\n",
        Stage::Dpo,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("max_prompt_length"));
    let err =
        DataConfig::from_toml_str("[sft]\ntruncation_mode = \"middle\"\n", Stage::Sft).unwrap_err();
    assert!(format!("{err:#}").contains("middle"), "{err:#}");
}
