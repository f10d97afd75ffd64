//! `lora-dpo data binarize` against scripts/make_binarize_fixtures.py, which applies the same
//! rules independently in Python to a 1000-prompt UltraFeedback-shaped file; and its output read
//! as DPO data.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::common::{fixture, fixture_str, lora_dpo};

/// `lora-dpo data binarize --data INPUT --out OUT` with more arguments.
fn run_binarize(input: &str, out: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["data", "binarize", "--data", input, "--out", out];
    args.extend_from_slice(extra);
    lora_dpo(&args)
}

/// [`run_binarize`] on the 1000-prompt fixture.
fn binarize(out: &Path, extra: &[&str]) -> (i32, String, String) {
    let input = fixture_str("data/binarize/ultrafeedback_1k.jsonl");
    run_binarize(&input, &out.display().to_string(), extra)
}

/// (row, chosen, rejected) of each output pair, from the responses `p{row}c{index}`.
fn indices(out: &Path) -> Vec<[u64; 3]> {
    let index = |conversation: &Value| -> (u64, u64) {
        let text = conversation.as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap()
            .to_string();
        let (row, c) = text[1..].split_once('c').unwrap();
        (row.parse().unwrap(), c.parse().unwrap())
    };
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let (row, chosen) = index(&v["chosen"]);
            let (row2, rejected) = index(&v["rejected"]);
            assert_eq!(row, row2);
            [row, chosen, rejected]
        })
        .collect()
}

/// The figure after `label` in the report, as printed.
fn figure(report: &str, label: &str) -> f64 {
    let at = report
        .find(label)
        .unwrap_or_else(|| panic!("{label} in {report}"))
        + label.len();
    let digits: String = report[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse().unwrap()
}

#[test]
fn every_rule_chooses_as_the_independent_python_binarizer() {
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("data/binarize/expected.json")).unwrap(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let seed = expected["seed"].to_string();
    let margin = expected["min_margin"].to_string();
    for (rule, extra) in [
        ("best-vs-random", vec!["--seed", seed.as_str()]),
        ("best-vs-worst", vec![]),
        ("all-pairs", vec!["--min-margin", margin.as_str()]),
    ] {
        let out = tmp.path().join(format!("{rule}.jsonl"));
        let mut args = vec!["--rule", rule];
        args.extend(extra);
        let (code, stdout, stderr) = binarize(&out, &args);
        assert_eq!(code, 0, "{rule}: {stderr}");
        let want = &expected["rules"][rule];
        let want_pairs: Vec<[u64; 3]> = serde_json::from_value(want["pairs"].clone()).unwrap();
        assert_eq!(indices(&out), want_pairs, "{rule}: chosen/rejected choices");
        assert_eq!(figure(&stdout, "prompts: "), 1000.0, "{stdout}");
        assert_eq!(
            figure(&stdout, "out ("),
            want_pairs.len() as f64,
            "{stdout}"
        );
        let dropped: BTreeMap<String, f64> =
            serde_json::from_value(want["dropped"].clone()).unwrap();
        for (reason, n) in dropped {
            assert!(
                stdout.contains(&format!("{n} {reason}")),
                "{rule}: {reason}: {stdout}"
            );
        }
        // Printed with 4 decimals.
        let gap = figure(&stdout, "mean score gap (chosen − rejected):");
        assert!(
            (gap - want["mean_score_gap"].as_f64().unwrap()).abs() <= 5e-5,
            "{stdout}"
        );
    }
}

#[test]
fn best_vs_random_depends_on_the_seed_and_not_on_the_row_order() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.jsonl");
    let b = tmp.path().join("b.jsonl");
    assert_eq!(binarize(&a, &["--seed", "7"]).0, 0);
    assert_eq!(binarize(&b, &["--seed", "8"]).0, 0);
    let (seven, eight) = (indices(&a), indices(&b));
    assert_eq!(seven.len(), eight.len());
    assert_ne!(seven, eight, "another seed draws other rejected answers");
    // The same rows reversed: each prompt gets the same pair.
    let text = std::fs::read_to_string(fixture("data/binarize/ultrafeedback_1k.jsonl")).unwrap();
    let reversed: Vec<&str> = text.lines().rev().collect();
    let input = tmp.path().join("reversed.jsonl");
    std::fs::write(&input, reversed.join("\n") + "\n").unwrap();
    let c = tmp.path().join("c.jsonl");
    let out = c.display().to_string();
    let input = input.display().to_string();
    assert_eq!(run_binarize(&input, &out, &["--seed", "7"]).0, 0);
    let mut again = indices(&c);
    again.sort();
    let mut seven = seven;
    seven.sort();
    assert_eq!(again, seven);
}

#[test]
fn the_pairs_are_dpo_data_as_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pairs.jsonl");
    assert_eq!(binarize(&out, &[]).0, 0);
    let model = fixture_str("models/tiny-llama");
    let data = out.display().to_string();
    let (code, stdout, stderr) = lora_dpo(&["data", "--model", &model, "--data", &data]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("stage: dpo") && stdout.contains("rows: 740 read"),
        "{stdout}"
    );
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    for key in [
        "prompt",
        "prompt_id",
        "chosen",
        "rejected",
        "score_chosen",
        "score_rejected",
    ] {
        assert!(first.get(key).is_some(), "{key} in {first}");
    }
    assert_eq!(first["prompt_id"].as_str().unwrap().len(), 64);
}

#[test]
fn bad_input_and_unsafe_outputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("rated.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"prompt": "a", "completions": [{"text": "x", "score": 1}, {"text": "y", "score": 0}]}"#,
            "\n",
            r#"{"prompt": "b", "completions": [{"text": "x", "score": "great"}]}"#,
            "\n",
        ),
    )
    .unwrap();
    let inp = input.display().to_string();
    let out = tmp.path().join("pairs.jsonl");
    let outs = out.display().to_string();
    let (code, _, stderr) = run_binarize(&inp, &outs, &[]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("line 2") && stderr.contains("completions[0].score"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing is left under the output's name");
    let (code, stdout, stderr) = run_binarize(&inp, &outs, &["--skip-bad-rows"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("bad rows skipped: 1") && stdout.contains("1 out (1 pairs)"),
        "{stdout}"
    );
    // An existing output is kept unless asked; the input is never the output.
    let before = std::fs::read(&out).unwrap();
    let (code, _, stderr) = run_binarize(&inp, &outs, &[]);
    assert!(code != 0 && stderr.contains("--overwrite"), "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    let (code, _, stderr) = run_binarize(&inp, &inp, &["--overwrite"]);
    assert!(code != 0 && stderr.contains("is the input"), "{stderr}");
    let (code, _, stderr) = run_binarize(&inp, &outs, &["--overwrite", "--min-margin", "1"]);
    assert!(code != 0 && stderr.contains("--min-margin"), "{stderr}");
    // `data` without a subcommand still needs its arguments.
    let (code, _, stderr) = lora_dpo(&["data", "--data", &inp]);
    assert!(code != 0 && stderr.contains("--model"), "{stderr}");
}

#[test]
fn implicit_reward_scores_are_dpo_rewards_of_eval_per_row() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = [
        (
            r#"[{"role": "user", "content": "What is 2 + 2?"}]"#,
            ["4.", "5.", "Four, of course."],
        ),
        (r#""Name a colour.""#, ["Blue.", "Seven.", "Green"]),
    ];
    let mut rated = String::new();
    let mut pairs = String::new();
    for (prompt, answers) in rows {
        let completions: Vec<String> = answers
            .iter()
            .map(|a| format!(r#"{{"text": "{a}", "score": null}}"#))
            .collect();
        rated += &format!(
            "{{\"prompt\": {prompt}, \"completions\": [{}]}}\n",
            completions.join(",")
        );
        let msgs = if prompt.starts_with('[') {
            prompt.to_string()
        } else {
            format!(r#"[{{"role": "user", "content": {prompt}}}]"#)
        };
        for a in answers {
            let turn = format!(r#"[{{"role": "assistant", "content": "{a}"}}]"#);
            let other = r#"[{"role": "assistant", "content": "."}]"#;
            pairs +=
                &format!("{{\"prompt\": {msgs}, \"chosen\": {turn}, \"rejected\": {other}}}\n");
        }
    }
    let input = tmp.path().join("rated.jsonl");
    std::fs::write(&input, rated).unwrap();
    let pairs_file = tmp.path().join("pairs.jsonl");
    std::fs::write(&pairs_file, pairs).unwrap();
    let model = fixture_str("models/tiny-llama");
    let adapter = fixture_str("models/tiny-llama/adapter");
    let out = tmp.path().join("scored.jsonl");
    let (inp, outs) = (input.display().to_string(), out.display().to_string());
    let (code, stdout, stderr) = run_binarize(
        &inp,
        &outs,
        &[
            "--rule",
            "all-pairs",
            "--score-with",
            "implicit-reward",
            "--model",
            &model,
            "--adapter",
            &adapter,
            "--beta",
            "0.5",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("0 unrated"), "{stdout}");
    // Each answer's reward from eval: β·(policy − reference) summed log-probs.
    let (code, eval, stderr) = lora_dpo(&[
        "eval",
        "--model",
        &model,
        "--adapter",
        &adapter,
        "--data",
        &pairs_file.display().to_string(),
        "--per-row",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let eval: Value = serde_json::from_str(&eval).unwrap();
    let per_row = eval["per_row"].as_array().unwrap();
    let mut reward = BTreeMap::new();
    let answers = rows.iter().flat_map(|(_, a)| a.iter());
    for (a, r) in answers.zip(per_row) {
        let pol = r["chosen_logps"].as_f64().unwrap();
        let reference = r["ref_chosen_logps"].as_f64().unwrap();
        reward.insert(a.to_string(), 0.5 * (pol - reference));
    }
    let text = std::fs::read_to_string(&out).unwrap();
    let mut seen = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        for (side, score) in [("chosen", "score_chosen"), ("rejected", "score_rejected")] {
            let answer = v[side].as_array().unwrap().last().unwrap()["content"]
                .as_str()
                .unwrap();
            let got = v[score].as_f64().unwrap();
            let want = reward[answer];
            // Summed f32 log-probs of the same forward, batched differently.
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{answer}: {got} vs {want}"
            );
            seen += 1;
        }
        assert!(v["score_chosen"].as_f64() > v["score_rejected"].as_f64());
    }
    assert!(seen >= 4, "{text}");
}
