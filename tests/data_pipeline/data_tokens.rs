//! Tokenization, loss masks, truncation and batches match TRL 1.16 (`SFTTrainer._prepare_dataset`,
//! `DPOTrainer._prepare_dataset`, `DataCollatorForPreference`) with the SmolLM2 tokenizer.
//! Expected ids: tests/fixtures/data/{sft,dpo}_tokens.json, written by scripts/make_data_fixtures.py.

use std::io::Write;
use std::path::Path;

use lora_dpo::data::{self, ChatTemplate, ChatTokenizer, DataConfig};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("tests/fixtures/data/{name}")).expect("fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

fn smollm2() -> ChatTokenizer {
    data::load_chat_tokenizer(Path::new("tests/fixtures/data/smollm2")).unwrap()
}

fn jsonl(rows: &Value) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .unwrap();
    for r in rows.as_array().unwrap() {
        writeln!(f, "{}", serde_json::to_string(r).unwrap()).unwrap();
    }
    f.flush().unwrap();
    f
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn config(v: &Value) -> DataConfig {
    // TRL fixtures were made without a length limit unless the case sets one.
    let mut m = serde_json::Map::new();
    m.insert("max_length".into(), Value::Null);
    if let Value::Object(o) = v {
        m.extend(o.clone());
    }
    serde_json::from_value(Value::Object(m)).unwrap()
}

fn check_sft(tok: &ChatTokenizer, case: &Value) {
    let name = case["name"].as_str().unwrap();
    let file = jsonl(&case["rows"]);
    let cfg = config(&case["config"]);
    let ds =
        data::load_sft(file.path(), None, tok, &cfg).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let expected = case["expected"].as_array().unwrap();
    assert_eq!(
        ds.examples.len(),
        expected.len(),
        "{name}: number of examples"
    );
    for (k, (got, want)) in ds.examples.iter().zip(expected).enumerate() {
        assert_eq!(
            got.input_ids,
            ids(&want["input_ids"]),
            "{name} row {k}: input_ids"
        );
        let labels: Vec<i64> = want["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        assert_eq!(got.labels(), labels, "{name} row {k}: labels");
        assert!(got.n_trained() > 0);
    }
}

#[test]
fn sft_matches_trl_chatml() {
    let tok = smollm2();
    let fx = fixture("sft_tokens.json");
    let cases = fx["chatml"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        check_sft(&tok, case);
    }
}

#[test]
fn sft_assistant_masks_match_trl_llama3_generation_template() {
    // Our masks come from rendering prefixes of the plain Llama-3 template; TRL's from its {% generation %} copy.
    let mut tok = smollm2();
    let fx = fixture("sft_tokens.json");
    let l = &fx["llama3"];
    let specials = vec![
        ("bos_token".to_string(), "<|im_start|>".to_string()),
        ("eos_token".to_string(), "<|im_end|>".to_string()),
    ];
    tok.template = Some(ChatTemplate::new(l["template"].as_str().unwrap(), specials).unwrap());
    for case in l["cases"].as_array().unwrap() {
        check_sft(&tok, case);
    }
}

/// The model families' real templates, without `{% generation %}` markers, against TRL's masks from a tagged copy
/// of each (scripts/make_data_fixtures.py), with the SmolLM2 tokenizer standing in for theirs. Input ids and labels
/// must be equal. "Right" is the tagged copy's mask: every assistant turn from after the generation prompt through
/// the end-of-turn text (`<|im_end|>\n`, `<|eot_id|>`), as the template renders it inside the whole conversation.
/// For Qwen3 that trains the thinking block of turns after the last user message (reasoning_content, or `<think>`
/// in the content), and the empty `<think>\n\n</think>\n\n` the template writes for a last turn without
/// reasoning; turns before the last user message are rendered, and trained, without theirs (the template drops
/// it). TRL's qwen3_training.jinja, which always renders the thinking block, is checked too, as a model template.
#[test]
fn sft_assistant_masks_match_trl_for_qwen_and_llama3_1_templates() {
    let fx = fixture("sft_tokens.json");
    let families = fx["families"].as_object().unwrap();
    for name in [
        "qwen2_5",
        "qwen3",
        "qwen3_trl",
        "qwen3_trl_training",
        "llama3_1",
    ] {
        assert!(families.contains_key(name), "{name} missing");
    }
    for (name, family) in families {
        let mut tok = smollm2();
        let specials = vec![
            ("bos_token".to_string(), "<|im_start|>".to_string()),
            ("eos_token".to_string(), "<|im_end|>".to_string()),
        ];
        tok.template = Some(
            ChatTemplate::new(family["template"].as_str().unwrap(), specials)
                .unwrap_or_else(|e| panic!("{name}: {e:#}")),
        );
        for case in family["cases"].as_array().unwrap() {
            check_sft(&tok, case);
        }
    }
}

#[test]
fn qwen3_masks_leave_out_the_reasoning_it_drops() {
    // Reasoning on a turn before the last user message is not rendered, so the turn trains on its answer only.
    let fx = fixture("sft_tokens.json");
    let q = &fx["families"]["qwen3"];
    let mut tok = smollm2();
    tok.template = Some(ChatTemplate::new(q["template"].as_str().unwrap(), vec![]).unwrap());
    let case = &q["cases"][0];
    let file = jsonl(&case["rows"]);
    let ds = data::load_sft(file.path(), None, &tok, &config(&case["config"])).unwrap();
    let seq = &ds.examples[5];
    let trained: Vec<u32> = seq
        .input_ids
        .iter()
        .zip(&seq.loss_mask)
        .filter(|(_, &m)| m)
        .map(|(&id, _)| id)
        .collect();
    assert_eq!(
        tok.decode(&trained).unwrap(),
        "Hello. How can I help?<|im_end|>\n<think>\nPeru's capital is Lima.\n</think>\n\nLima.<|im_end|>\n"
    );
}

#[test]
fn multi_turn_masks_cover_every_assistant_turn_and_its_end_token() {
    let tok = smollm2();
    let fx = fixture("sft_tokens.json");
    let case = &fx["chatml"][0];
    let file = jsonl(&case["rows"]);
    let cfg = config(&case["config"]);
    let ds = data::load_sft(file.path(), None, &tok, &cfg).unwrap();
    // Row 2 has two assistant turns: two trained runs, each ending with <|im_end|> "\n".
    let seq = &ds.examples[2];
    let runs: Vec<Vec<u32>> = seq
        .input_ids
        .iter()
        .zip(&seq.loss_mask)
        .collect::<Vec<_>>()
        .chunk_by(|a, b| a.1 == b.1)
        .filter(|run| *run[0].1)
        .map(|run| run.iter().map(|(id, _)| **id).collect())
        .collect();
    assert_eq!(runs.len(), 2);
    for run in &runs {
        assert_eq!(
            &run[run.len() - 2..],
            &[2, 198],
            "run ends with <|im_end|> \\n"
        );
    }
    assert_eq!(tok.decode(&runs[1]).unwrap(), "Lima.<|im_end|>\n");
}

#[test]
fn dpo_matches_trl_with_qwen3_thinking() {
    // Reasoning of the prompt's earlier turn is dropped by the template; the completions keep theirs.
    let fx = fixture("dpo_tokens.json");
    let q = &fx["qwen3"];
    let mut tok = smollm2();
    tok.template = Some(ChatTemplate::new(q["template"].as_str().unwrap(), vec![]).unwrap());
    let cfg = DataConfig {
        max_length: None,
        ..DataConfig::default()
    };
    let file = jsonl(&q["rows"]);
    let ds = data::load_dpo(file.path(), None, &tok, &cfg).unwrap();
    let expected = q["expected"].as_array().unwrap();
    assert_eq!(ds.examples.len(), expected.len());
    for (k, (got, want)) in ds.examples.iter().zip(expected).enumerate() {
        assert_eq!(
            got.parts.prompt_ids,
            ids(&want["prompt_ids"]),
            "row {k}: prompt_ids"
        );
        assert_eq!(
            got.parts.chosen_ids,
            ids(&want["chosen_ids"]),
            "row {k}: chosen_ids"
        );
        assert_eq!(
            got.parts.rejected_ids,
            ids(&want["rejected_ids"]),
            "row {k}: rejected_ids"
        );
    }
}

#[test]
fn dpo_matches_trl() {
    let tok = smollm2();
    let fx = fixture("dpo_tokens.json");
    let groups = fx["groups"].as_object().unwrap();
    assert_eq!(groups.len(), 5);
    let cfg = DataConfig {
        max_length: None,
        ..DataConfig::default()
    };
    for (name, g) in groups {
        let file = jsonl(&g["rows"]);
        let ds = data::load_dpo(file.path(), None, &tok, &cfg)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let expected = g["expected"].as_array().unwrap();
        assert_eq!(ds.examples.len(), expected.len(), "{name}");
        for (got, want) in ds.examples.iter().zip(expected) {
            assert_eq!(
                got.parts.prompt_ids,
                ids(&want["prompt_ids"]),
                "{name}: prompt_ids"
            );
            assert_eq!(
                got.parts.chosen_ids,
                ids(&want["chosen_ids"]),
                "{name}: chosen_ids"
            );
            assert_eq!(
                got.parts.rejected_ids,
                ids(&want["rejected_ids"]),
                "{name}: rejected_ids"
            );
            // The completion keeps its end-of-turn token: the model learns to stop.
            assert!(got.parts.chosen_ids.contains(&2), "{name}: EOS in chosen");
            assert!(
                got.parts.rejected_ids.contains(&2),
                "{name}: EOS in rejected"
            );
        }
    }
}

#[test]
fn dpo_batches_match_trl_collator_with_truncation() {
    let tok = smollm2();
    let fx = fixture("dpo_tokens.json");
    let rows = &fx["groups"]["conversational"]["rows"];
    let file = jsonl(rows);
    for b in fx["collated_conversational"].as_array().unwrap() {
        let mode = b["truncation_mode"].as_str().unwrap();
        let cfg = DataConfig {
            max_length: Some(b["max_length"].as_u64().unwrap() as usize),
            truncation_mode: mode.parse().unwrap(),
            ..DataConfig::default()
        };
        let ds = data::load_dpo(file.path(), None, &tok, &cfg).unwrap();
        assert!(
            ds.stats.truncated > 0,
            "{mode}: the fixture should exercise truncation"
        );
        let pad = b["pad_token_id"].as_u64().unwrap() as u32;
        assert_eq!(ds.pad_id, pad);
        let refs: Vec<_> = ds.examples.iter().collect();
        let batch = data::collate_dpo(&refs, ds.pad_id, None);
        let flat = |k: &str| -> Vec<u64> {
            b[k].as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()))
                .collect()
        };
        let rows = b["input_ids"].as_array().unwrap();
        assert_eq!(batch.batch_size, rows.len(), "{mode}");
        assert_eq!(batch.seq_len, rows[0].as_array().unwrap().len(), "{mode}");
        let got: Vec<u64> = batch.input_ids.iter().map(|&x| x as u64).collect();
        assert_eq!(got, flat("input_ids"), "{mode}: input_ids");
        let got: Vec<u64> = batch.attention_mask.iter().map(|&x| x as u64).collect();
        assert_eq!(got, flat("attention_mask"), "{mode}: attention_mask");
        let got: Vec<u64> = batch.loss_mask.iter().map(|&x| x as u64).collect();
        assert_eq!(got, flat("completion_mask"), "{mode}: completion_mask");
    }
}

#[test]
fn tiny_gguf_tokenizer_matches_transformers() {
    let tok = data::load_chat_tokenizer(Path::new("tests/fixtures/data/tiny.gguf")).unwrap();
    let fx = fixture("tiny_gguf.json");
    assert_eq!(
        tok.bos.as_ref().unwrap().text,
        fx["bos_token"].as_str().unwrap()
    );
    assert_eq!(
        tok.eos.as_ref().unwrap().text,
        fx["eos_token"].as_str().unwrap()
    );
    assert_eq!(
        tok.pad.as_ref().unwrap().text,
        fx["pad_token"].as_str().unwrap()
    );
    for t in fx["texts"].as_array().unwrap() {
        assert_eq!(
            tok.encode(t["text"].as_str().unwrap(), false).unwrap(),
            ids(&t["ids"]),
            "{t}"
        );
    }
    let msgs: Vec<data::Message> = fx["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| data::Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    let rendered = tok.render(&msgs, false).unwrap();
    assert_eq!(rendered, fx["rendered"].as_str().unwrap());
    assert_eq!(
        tok.encode(&rendered, false).unwrap(),
        ids(&fx["rendered_ids"])
    );
}

/// The SmolLM2 tokenizer with a post-processor that adds BOS, as Llama and Mistral tokenizers do.
fn bos_adding() -> ChatTokenizer {
    let mut tok = smollm2();
    let pp = tokenizers::processors::template::TemplateProcessing::builder()
        .try_single("<|im_start|> $0")
        .unwrap()
        .special_tokens(vec![("<|im_start|>", 1)])
        .build()
        .unwrap();
    tok.tokenizer.with_post_processor(Some(pp));
    assert_eq!(
        tok.encode("hi", true).unwrap()[0],
        1,
        "the test tokenizer adds BOS"
    );
    tok
}

#[test]
fn no_doubled_bos() {
    let tok = bos_adding();
    let dir = tempfile::tempdir().unwrap();
    // Plain text that already starts with the BOS string keeps one BOS; other text gets the tokenizer's BOS.
    let f = dir.path().join("t.jsonl");
    std::fs::write(
        &f,
        "{\"text\": \"<|im_start|>hello\"}\n{\"text\": \"hello\"}\n",
    )
    .unwrap();
    let ds = data::load_sft(&f, None, &tok, &DataConfig::default()).unwrap();
    for seq in &ds.examples {
        assert_eq!(seq.input_ids[0], 1);
        assert_eq!(
            seq.input_ids.iter().filter(|&&i| i == 1).count(),
            1,
            "{:?}",
            seq.input_ids
        );
        assert_eq!(
            *seq.input_ids.last().unwrap(),
            2,
            "EOS appended to plain text"
        );
    }
    // A chat template that writes BOS itself: the rendered text is tokenized without the tokenizer's BOS.
    let mut tok = tok;
    let fx = fixture("sft_tokens.json");
    let specials = vec![
        ("bos_token".to_string(), "<|im_start|>".to_string()),
        ("eos_token".to_string(), "<|im_end|>".to_string()),
    ];
    tok.template =
        Some(ChatTemplate::new(fx["llama3"]["template"].as_str().unwrap(), specials).unwrap());
    let f = dir.path().join("p.jsonl");
    std::fs::write(
        &f,
        r#"{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}], "rejected": [{"role": "assistant", "content": "Bye"}]}"#,
    )
    .unwrap();
    let ds = data::load_dpo(&f, None, &tok, &DataConfig::default()).unwrap();
    let seq = &ds.examples[0].chosen().input_ids;
    assert_eq!(seq[0], 1);
    assert_eq!(seq.iter().filter(|&&i| i == 1).count(), 1, "{seq:?}");
}

#[test]
fn tiny_sentencepiece_gguf_matches_transformers() {
    // Mistral / Llama-2 GGUFs store a SentencePiece vocabulary with scores and no merges.
    let tok = data::load_chat_tokenizer(Path::new("tests/fixtures/data/tiny_spm.gguf")).unwrap();
    let fx = fixture("tiny_spm_gguf.json");
    assert_eq!(
        tok.bos.as_ref().unwrap().text,
        fx["bos_token"].as_str().unwrap()
    );
    assert_eq!(
        tok.eos.as_ref().unwrap().text,
        fx["eos_token"].as_str().unwrap()
    );
    for t in fx["texts"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let plain = tok.encode(text, false).unwrap();
        assert_eq!(plain, ids(&t["ids"]), "{text:?}");
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&t["ids_with_special"]),
            "{text:?}: BOS added"
        );
        assert_eq!(
            tok.decode(&plain).unwrap(),
            t["decoded"].as_str().unwrap(),
            "{text:?}"
        );
    }
    let msgs: Vec<data::Message> = fx["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| data::Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    let rendered = tok.render(&msgs, false).unwrap();
    assert_eq!(rendered, fx["rendered"].as_str().unwrap());
    assert_eq!(
        tok.encode(&rendered, false).unwrap(),
        ids(&fx["rendered_ids"])
    );
}
