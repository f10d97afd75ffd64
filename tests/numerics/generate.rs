//! Generation: the KV-cached forward equals the full forward (sliding window and GQA
//! included), greedy tokens equal transformers' `generate` (fixture from
//! scripts/make_io_fixtures.py) on both paths, sampling is seeded, and the CLI streams text.

use crate::common;
use common::lora_dpo;

use candle_core::{DType, Device, Tensor};
use common::{fixture, fixture_str, load_on, max_abs_diff, PATHS};
use lora_dpo::adapter::load_adapter;
use lora_dpo::generate::{generate, GenerateOptions};
use lora_dpo::model::{load_model, Adapter, KvCache, Model, Pass};
use std::collections::HashMap;

use common::MODELS;

pub(crate) fn expected_io(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture(&format!("models/{name}/expected-io.safetensors")),
        &Device::Cpu,
    )
    .expect("fixture expected-io.safetensors (scripts/make_io_fixtures.py)")
}

pub(crate) fn model(name: &str) -> Model {
    load_model(
        &fixture_str(&format!("models/{name}")),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

pub(crate) fn adapter(name: &str, model: &Model) -> Adapter {
    load_adapter(
        &fixture_str(&format!("models/{name}/adapter")),
        &model.config,
        &Device::Cpu,
    )
    .unwrap()
}

pub(crate) fn ids(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::U32).unwrap().to_vec1().unwrap()
}

pub(crate) fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: n,
        ..GenerateOptions::default()
    }
}

#[test]
fn greedy_tokens_match_transformers() {
    for (name, kernels) in MODELS.iter().flat_map(|&n| PATHS.map(|k| (n, k))) {
        let m = load_on(&fixture_str(&format!("models/{name}")), DType::F32, kernels);
        let a = adapter(name, &m);
        let io = expected_io(name);
        let prompt = ids(&io["gen_prompt"]);
        for (adapters, key) in [(vec![], "gen_base"), (vec![&a], "gen_adapter")] {
            let want = ids(&io[key]);
            let mut streamed = Vec::new();
            let got = generate(&m, &adapters, &prompt, &greedy(want.len()), |t| {
                streamed.push(t);
                Ok(())
            })
            .unwrap();
            assert_eq!(got, want, "{name} {key} ({kernels})");
            assert_eq!(streamed, want, "{name} {key} ({kernels}): streamed tokens");
        }
    }
}

#[test]
fn every_greedy_step_has_transformers_logits() {
    // Teacher-forced through the cache: prompt, then each of transformers' tokens.
    for (name, kernels) in MODELS.iter().flat_map(|&n| PATHS.map(|k| (n, k))) {
        let m = load_on(&fixture_str(&format!("models/{name}")), DType::F32, kernels);
        let io = expected_io(name);
        let prompt = ids(&io["gen_prompt"]);
        let tokens = ids(&io["gen_base"]);
        let want = &io["gen_base_logits"];
        let mut cache = KvCache::new();
        let mut input = prompt.clone();
        for (step, &tok) in tokens.iter().enumerate() {
            let x = Tensor::new(input.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let logits = m
                .forward_with_cache(&x, &mut cache, Pass::eval(&[]))
                .unwrap();
            let last = logits.get(0).unwrap().get(input.len() - 1).unwrap();
            let d = max_abs_diff(&last, &want.get(step).unwrap());
            assert!(d < 1e-4, "{name} ({kernels}) step {step}: max |diff| {d}");
            input = vec![tok];
        }
        let every_layer_slides = m.config.layer_windows.iter().all(Option::is_some);
        if let Some(w) = m.config.sliding_window().filter(|_| every_layer_slides) {
            assert!(
                cache.cached_positions() < w,
                "the cache keeps only the window"
            );
            assert!(
                prompt.len() + tokens.len() > 3 * w,
                "the test passes the window"
            );
        }
    }
}

#[test]
fn cached_forward_equals_full_forward_in_any_chunking() {
    for name in MODELS {
        let m = model(name);
        let a = adapter(name, &m);
        let seq: Vec<u32> = (0..23).map(|i| (i * 37 + 5) % 96).collect();
        let full_ids = Tensor::new(seq.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        for adapters in [vec![], vec![&a]] {
            let pass = Pass::eval(&adapters);
            let full = m.forward(&full_ids, None, pass).unwrap().get(0).unwrap();
            for chunks in [vec![23], vec![1; 23], vec![5, 1, 1, 7, 2, 7], vec![3, 20]] {
                let mut cache = KvCache::new();
                let mut at = 0;
                for c in chunks.clone() {
                    let x = full_ids.narrow(1, at, c).unwrap();
                    let got = m.forward_with_cache(&x, &mut cache, pass).unwrap();
                    let want = full.narrow(0, at, c).unwrap();
                    let d = max_abs_diff(&got.get(0).unwrap(), &want);
                    assert!(d < 1e-4, "{name} chunks {chunks:?} at {at}: {d}");
                    at += c;
                }
                assert_eq!(cache.len(), 23);
            }
        }
    }
}

#[test]
fn sampling_is_seeded_and_top_p_narrows_to_greedy() {
    let m = model("tiny-mistral");
    let prompt = [5u32, 17, 33];
    let sampled = |seed, temperature, top_p| {
        let opts = GenerateOptions {
            max_new_tokens: 12,
            temperature,
            top_p,
            top_k: 0,
            seed,
            stop_ids: vec![],
        };
        generate(&m, &[], &prompt, &opts, |_| Ok(())).unwrap()
    };
    assert_eq!(sampled(1, 1.0, 1.0), sampled(1, 1.0, 1.0));
    let runs: Vec<_> = (0..4).map(|s| sampled(s, 1.5, 1.0)).collect();
    assert!(runs.iter().any(|r| r != &runs[0]), "seeds change samples");
    let greedy_run = generate(&m, &[], &prompt, &greedy(12), |_| Ok(())).unwrap();
    assert_eq!(sampled(3, 1.0, 1e-6), greedy_run);
    assert_eq!(sampled(3, 1e-4, 1.0), greedy_run);
}

#[test]
fn stops_at_a_stop_id_and_checks_its_inputs() {
    let m = model("tiny-llama");
    let io = expected_io("tiny-llama");
    let prompt = ids(&io["gen_prompt"]);
    let want = ids(&io["gen_base"]);
    let opts = GenerateOptions {
        max_new_tokens: 50,
        stop_ids: vec![want[8]],
        ..GenerateOptions::default()
    };
    let got = generate(&m, &[], &prompt, &opts, |_| Ok(())).unwrap();
    let first = want.iter().position(|t| *t == want[8]).unwrap();
    assert_eq!(got, want[..=first].to_vec());
    let err = |p: &[u32], o: &GenerateOptions| {
        format!("{:#}", generate(&m, &[], p, o, |_| Ok(())).unwrap_err())
    };
    assert!(err(&[], &greedy(3)).contains("empty"));
    assert!(err(&[500], &greedy(3)).contains("vocabulary"));
    let bad = GenerateOptions {
        top_p: 0.0,
        ..greedy(3)
    };
    assert!(err(&[1], &bad).contains("top_p"));
    // The context is bounded by max_position_embeddings (64): generation stops there.
    let long: Vec<u32> = vec![7; 60];
    assert_eq!(
        generate(&m, &[], &long, &greedy(100), |_| Ok(()))
            .unwrap()
            .len(),
        4
    );
}

/// A copy of tiny-mistral with a word-level tokenizer (token i is `t{i}`, a few are role
/// names) and a chat template.
pub(crate) fn model_with_tokenizer() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(
            fixture(&format!("models/tiny-mistral/{f}")),
            dir.path().join(f),
        )
        .unwrap();
    }
    let mut vocab = serde_json::Map::new();
    for i in 0..96u32 {
        let word = match i {
            90 => "system".to_string(),
            91 => "user".to_string(),
            92 => "assistant".to_string(),
            _ => format!("t{i}"),
        };
        vocab.insert(word, i.into());
    }
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}
    });
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let config = serde_json::json!({
        "eos_token": "t2",
        "chat_template": "{% for m in messages %}{{ m['role'] }} {{ m['content'] | trim }} {% endfor %}{% if add_generation_prompt %}assistant {% endif %}"
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn cli_generates_raw_and_chat() {
    let dir = model_with_tokenizer();
    let model = dir.path().to_str().unwrap();
    let io = expected_io("tiny-mistral");
    let prompt: Vec<String> = ids(&io["gen_prompt"])
        .iter()
        .map(|i| format!("t{i}"))
        .collect();
    let want: Vec<String> = ids(&io["gen_base"])[..6]
        .iter()
        .map(|i| format!("t{i}"))
        .collect();
    let (code, out, err) = lora_dpo(&[
        "generate",
        "--model",
        model,
        "--raw",
        "--prompt",
        &prompt.join(" "),
        "--max-new-tokens",
        "6",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), want, "{out}");

    let (code, out, err) = lora_dpo(&[
        "generate",
        "--model",
        model,
        "--adapter",
        &fixture_str("models/tiny-mistral/adapter"),
        "--system",
        "t5 t6",
        "--prompt",
        "t7",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--seed",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.trim().is_empty());

    // The tokenizer's EOS (here t63, a special token) ends generation and is not printed.
    let tok_path = dir.path().join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tok_path).unwrap()).unwrap();
    tok["added_tokens"] = serde_json::json!([{"id": 63, "content": "t63", "single_word": false,
        "lstrip": false, "rstrip": false, "normalized": false, "special": true}]);
    std::fs::write(&tok_path, tok.to_string()).unwrap();
    let config = serde_json::json!({"eos_token": "t63", "chat_template": "x"});
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let (code, out, err) = lora_dpo(&[
        "generate",
        "--model",
        model,
        "--raw",
        "--prompt",
        &prompt.join(" "),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "t53", "greedy gives t53 t63 ...: {out}");

    std::fs::remove_file(dir.path().join("tokenizer_config.json")).unwrap();
    let (code, _, err) = lora_dpo(&["generate", "--model", model, "--prompt", "t7"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("chat_template") && err.contains("--raw"),
        "{err}"
    );
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let (code, _, err) = lora_dpo(&["generate", "--model", model, "--raw", "--prompt", "t7"]);
    assert_eq!(code, 1);
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn chat_generation_matches_transformers() {
    for name in MODELS {
        let folder = fixture(&format!("models/{name}"));
        let io = expected_io(name);
        let tok = lora_dpo::data::load_chat_tokenizer(&folder).unwrap();
        let messages = [
            lora_dpo::data::Message::new("system", "Hi"),
            lora_dpo::data::Message::new("user", "yo"),
        ];
        let prompt = tok
            .encode(&tok.render(&messages, true).unwrap(), false)
            .unwrap();
        assert_eq!(
            prompt,
            ids(&io["chat_prompt"]),
            "{name}: templated prompt ids"
        );
        let m = model(name);
        let a = adapter(name, &m);
        let want = ids(&io["chat_gen"]);
        let opts = GenerateOptions {
            max_new_tokens: 24,
            stop_ids: vec![2, 4],
            ..GenerateOptions::default()
        };
        let got = generate(&m, &[&a], &prompt, &opts, |_| Ok(())).unwrap();
        assert_eq!(got, want, "{name}");

        let text = String::from_utf8(io["chat_text_utf8"].to_vec1::<u8>().unwrap()).unwrap();
        let (code, out, err) = lora_dpo(&[
            "generate",
            "--model",
            folder.to_str().unwrap(),
            "--adapter",
            folder.join("adapter").to_str().unwrap(),
            "--system",
            "Hi",
            "--prompt",
            "yo",
            "--max-new-tokens",
            "24",
        ]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, format!("{text}\n"), "{name}: streamed text");
    }
}

#[test]
fn cli_generates_from_a_gguf_file_as_from_its_conversion() {
    let gguf = fixture_str("models/tiny-gguf/model-f32.gguf");
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("hf");
    let (code, _, err) = lora_dpo(&["merge", "--model", &gguf, "--out", folder.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let run = |model: &str| {
        let (code, out, err) = lora_dpo(&[
            "generate",
            "--model",
            model,
            "--raw",
            "--prompt",
            "ab",
            "--max-new-tokens",
            "6",
        ]);
        assert_eq!(code, 0, "{err}");
        out
    };
    let from_gguf = run(&gguf);
    assert!(!from_gguf.trim().is_empty());
    assert_eq!(from_gguf, run(folder.to_str().unwrap()));
}
