//! Batched generation: left-padded prompts of different lengths give, row by row, the tokens
//! each prompt gives alone (and transformers' greedy tokens for the fixture prompt), on every
//! family and both op paths; seeded samples do not depend on the batch; `generate --data`
//! answers as `--prompt` does, in FastChat's, AlpacaEval's and our rated-completions formats.

use crate::common::{fixture_str, load_on, lora_dpo, MODELS, PATHS};
use crate::generate::{adapter, expected_io, greedy, ids, model, model_with_tokenizer};

use candle_core::DType;
use lora_dpo::generate::answers::{Answerer, Prompt};
use lora_dpo::generate::{generate, generate_batch, GenerateOptions, Request};
use serde_json::Value;

fn request(prompt: &[u32], sample: usize) -> Request {
    Request {
        prompt: prompt.to_vec(),
        sample,
    }
}

#[test]
fn batched_greedy_rows_equal_each_prompt_alone_and_transformers() {
    for (name, kernels) in MODELS.iter().flat_map(|&n| PATHS.map(|k| (n, k))) {
        let m = load_on(&fixture_str(&format!("models/{name}")), DType::F32, kernels);
        let a = adapter(name, &m);
        let io = expected_io(name);
        let fixture_prompt = ids(&io["gen_prompt"]);
        let want = ids(&io["gen_adapter"]);
        let prompts = [
            fixture_prompt.clone(),
            vec![3, 9],
            vec![11, 4, 27, 8, 50, 2, 19],
            (1..=13).map(|i| (i * 7) % 60).collect::<Vec<u32>>(),
        ];
        let opts = greedy(want.len());
        let alone: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| generate(&m, &[&a], p, &opts, |_| Ok(())).unwrap())
            .collect();
        assert_eq!(alone[0], want, "{name} {kernels:?}: alone vs transformers");
        let batch: Vec<Request> = prompts.iter().map(|p| request(p, 0)).collect();
        let together = generate_batch(&m, &[&a], &batch, &opts, |_, _| Ok(())).unwrap();
        assert_eq!(together, alone, "{name} {kernels:?}: batched vs alone");
        let reversed: Vec<Request> = batch.iter().rev().cloned().collect();
        let mut back = generate_batch(&m, &[&a], &reversed, &opts, |_, _| Ok(())).unwrap();
        back.reverse();
        assert_eq!(back, alone, "{name} {kernels:?}: another order");
    }
}

#[test]
fn rows_finish_on_their_own_and_the_rest_go_on() {
    let m = model("tiny-llama");
    let io = expected_io("tiny-llama");
    let prompt = ids(&io["gen_prompt"]);
    let want = ids(&io["gen_base"]);
    // The fixture prompt stops at its 4th token; the other row runs its whole budget.
    let opts = GenerateOptions {
        max_new_tokens: 9,
        stop_ids: vec![want[3]],
        ..GenerateOptions::default()
    };
    let other = vec![5, 6, 7, 8, 9, 10, 11, 12];
    let alone_other = generate(&m, &[], &other, &opts, |_| Ok(())).unwrap();
    let out = generate_batch(
        &m,
        &[],
        &[request(&prompt, 0), request(&other, 0)],
        &opts,
        |_, _| Ok(()),
    )
    .unwrap();
    let first = want.iter().position(|t| *t == want[3]).unwrap();
    assert_eq!(out[0], want[..=first].to_vec());
    assert_eq!(out[1], alone_other);
}

#[test]
fn seeded_samples_do_not_depend_on_the_batch() {
    let m = model("tiny-mistral");
    let opts = GenerateOptions {
        max_new_tokens: 10,
        temperature: 1.0,
        top_k: 20,
        top_p: 0.95,
        seed: 5,
        ..GenerateOptions::default()
    };
    let a = vec![5u32, 17, 33];
    let b = vec![40u32, 2, 9, 14, 21, 30];
    let c = vec![8u32];
    let one = |r: Request| {
        generate_batch(&m, &[], &[r], &opts, |_, _| Ok(()))
            .unwrap()
            .remove(0)
    };
    let all = generate_batch(
        &m,
        &[],
        &[
            request(&a, 0),
            request(&b, 0),
            request(&a, 1),
            request(&c, 0),
        ],
        &opts,
        |_, _| Ok(()),
    )
    .unwrap();
    assert_eq!(all[0], one(request(&a, 0)));
    assert_eq!(all[1], one(request(&b, 0)));
    assert_eq!(all[2], one(request(&a, 1)));
    assert_eq!(all[3], one(request(&c, 0)));
    assert_ne!(all[0], all[2], "two samples of one prompt differ");
    let two = generate_batch(&m, &[], &[request(&c, 0), request(&a, 1)], &opts, |_, _| {
        Ok(())
    })
    .unwrap();
    assert_eq!(two, vec![all[3].clone(), all[2].clone()]);
    assert_eq!(
        all[0],
        generate(&m, &[], &a, &opts, |_| Ok(())).unwrap(),
        "--prompt's sample 0"
    );
}

/// `lora-dpo generate --data DATA --out OUT` on `model` with more arguments.
fn generate_data(model: &str, data: &str, out: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["generate", "--model", model, "--data", data, "--out", out];
    args.extend_from_slice(extra);
    lora_dpo(&args)
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn tokens(text: &str) -> Vec<String> {
    // The tiny tokenizer's EOS `t2` is not special, so `--prompt` prints it; answers drop stop
    // tokens.
    let mut t: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    if t.last().is_some_and(|w| w == "t2") {
        t.pop();
    }
    t
}

#[test]
fn generate_data_answers_as_generate_prompt_one_by_one() {
    let dir = model_with_tokenizer();
    let model = dir.path().to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prompts = [
        "t7",
        "t8 t9 t10 t11",
        "t12 t13",
        "t20 t21 t22 t23 t24 t25",
        "t30",
    ];
    let rows: String = prompts
        .iter()
        .map(|p| format!("{{\"prompt\": \"{p}\"}}\n"))
        .collect();
    let data = write(tmp.path(), "prompts.jsonl", &rows);
    let out = tmp.path().join("answers.jsonl");
    let outs = out.display().to_string();
    let adapter = fixture_str("models/tiny-mistral/adapter");
    let common_args = [
        "--model",
        model,
        "--adapter",
        &adapter,
        "--max-new-tokens",
        "6",
    ];
    let mut args = vec![
        "generate",
        "--data",
        &data,
        "--out",
        &outs,
        "--batch-size",
        "3",
    ];
    args.extend(common_args);
    let (code, _, err) = lora_dpo(&args);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), prompts.len());
    for (p, line) in prompts.iter().zip(&lines) {
        let mut args = vec!["generate", "--prompt", p];
        args.extend(common_args);
        let (code, alone, err) = lora_dpo(&args);
        assert_eq!(code, 0, "{err}");
        assert_eq!(line["prompt"], *p);
        let c = &line["completions"][0];
        assert!(c["score"].is_null());
        assert_eq!(tokens(c["text"].as_str().unwrap()), tokens(&alone), "{p}");
    }
    // An existing output is kept unless asked.
    let (code, _, err) = lora_dpo(&args);
    assert!(code != 0 && err.contains("--overwrite"), "{err}");
}

#[test]
fn mt_bench_questions_give_fastchat_answers_with_turn_two_on_turn_one() {
    let dir = model_with_tokenizer();
    let model_dir = dir.path().to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = write(
        tmp.path(),
        "question.jsonl",
        concat!(
            r#"{"question_id": 81, "category": "writing", "turns": ["t7 t8", "t9 t10"]}"#,
            "\n",
            r#"{"question_id": 82, "category": "math", "turns": ["t11", "t12"]}"#,
            "\n"
        ),
    );
    let out = tmp.path().join("model_answer.jsonl");
    let outs = out.display().to_string();
    let (code, _, err) = generate_data(
        model_dir,
        &data,
        &outs,
        &[
            "--max-new-tokens",
            "4",
            "--model-id",
            "tiny-dpo",
            "--num-return-sequences",
            "2",
            "--temperature",
            "0.9",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (line, qid) in lines.iter().zip([81, 82]) {
        assert_eq!(line["question_id"], qid);
        assert_eq!(line["model_id"], "tiny-dpo");
        assert!(line["answer_id"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(line["tstamp"].as_f64().is_some());
        let choices = line["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 2);
        for (k, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], k);
            assert_eq!(c["turns"].as_array().unwrap().len(), 2);
        }
    }

    // Greedy: turn 2 is the answer to [turn 1, the model's own answer, turn 2].
    let (code, _, err) = generate_data(
        model_dir,
        &data,
        &outs,
        &["--overwrite", "--max-new-tokens", "4"],
    );
    assert_eq!(code, 0, "{err}");
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let turns = &first["choices"][0]["turns"];
    let m = lora_dpo::model::load_model(model_dir, DType::F32, &candle_core::Device::Cpu).unwrap();
    let tok = lora_dpo::data::load_chat_tokenizer(dir.path()).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 4,
        stop_ids: vec![2],
        ..GenerateOptions::default()
    };
    let mut quiet = |_: usize, _: usize| {};
    let mut answerer = Answerer {
        model: &m,
        adapters: &[],
        tokenizer: &tok,
        options: &opts,
        batch_size: 1,
        system: None,
        on_progress: &mut quiet,
    };
    let msg = lora_dpo::data::Message::new;
    let second = Prompt::Chat(vec![
        msg("user", "t7 t8"),
        msg("assistant", turns[0].as_str().unwrap()),
        msg("user", "t9 t10"),
    ]);
    let again = answerer.answer(&[(second, 0)]).unwrap();
    assert_eq!(tokens(&again[0]), tokens(turns[1].as_str().unwrap()));
}

#[test]
fn alpaca_eval_instructions_give_model_outputs_json() {
    let dir = model_with_tokenizer();
    let model_dir = dir.path().to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = write(
        tmp.path(),
        "alpaca_eval.json",
        r#"[{"instruction": "t7 t8", "dataset": "helpful_base", "output": "ref"}, {"instruction": "t9", "dataset": "koala"}]"#,
    );
    let out = tmp.path().join("model_outputs.json");
    let outs = out.display().to_string();
    let (code, _, err) = generate_data(
        model_dir,
        &data,
        &outs,
        &["--max-new-tokens", "3", "--model-id", "tiny"],
    );
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["instruction"], "t7 t8");
    assert_eq!(rows[0]["generator"], "tiny");
    assert_eq!(rows[1]["dataset"], "koala");
    assert!(rows[0]["output"].is_string() && rows[0]["output"] != "ref");
    let (code, _, err) = generate_data(
        model_dir,
        &data,
        &outs,
        &["--overwrite", "--num-return-sequences", "2"],
    );
    assert!(
        code != 0 && err.contains("one output per instruction"),
        "{err}"
    );
}
