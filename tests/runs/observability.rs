//! What a user watches: TensorBoard event files equal metrics.jsonl (and a resumed run repeats
//! no step), and `report` draws every metric's values and flags the patterns it should.

use crate::common;

use common::{fixture_str, lora_dpo};
use lora_dpo::config::LoadedConfig;
use lora_dpo::train::run::run_sft;
use lora_dpo::train::tensorboard::{event_files, read_events, tag_of};
use std::collections::BTreeMap;
use std::path::Path;

fn sft_config(out: &Path) -> LoadedConfig {
    let text = format!(
        r#"
{head}[sft]
train_file = "{data}"
eval_file = "{data}"
learning_rate = 0.01
max_steps = 4
per_device_train_batch_size = 1
save_steps = 2
logging_steps = 1
eval_steps = 2
report_to = ["tensorboard"]
[output]
dir = "{out}"
"#,
        head = common::tiny_llama_sections(),
        data = fixture_str("train/sft.jsonl"),
        out = out.display()
    );
    LoadedConfig::from_str(&text, &[]).unwrap()
}

/// (tag, step) → value of every scalar in the folder's event files; panics on a repeat.
fn scalars(runs: &Path) -> (BTreeMap<(String, i64), f32>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut texts = Vec::new();
    for file in event_files(runs).unwrap() {
        for event in read_events(&file).unwrap() {
            for v in event.summary.map(|s| s.value).unwrap_or_default() {
                if let Some(t) = &v.tensor {
                    texts.push(String::from_utf8(t.string_val[0].clone()).unwrap());
                    continue;
                }
                let key = (v.tag.clone(), event.step);
                let value = v.simple_value.unwrap();
                assert!(out.insert(key.clone(), value).is_none(), "{key:?} twice");
            }
        }
    }
    (out, texts)
}

/// (tag, step) → value of metrics.jsonl, as TensorBoard's f32.
fn jsonl(path: &Path) -> BTreeMap<(String, i64), f32> {
    let mut out = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
        let step = obj["step"].as_i64().unwrap();
        for (k, v) in obj.iter().filter(|(k, _)| *k != "step") {
            let key = (tag_of(k), step);
            assert!(out
                .insert(key.clone(), v.as_f64().unwrap() as f32)
                .is_none());
        }
    }
    out
}

#[test]
fn tensorboard_holds_every_metric_once_across_a_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cfg = sft_config(&out);
    let session = lora_dpo::train::run::Session::open(&cfg).unwrap();
    // Ctrl-C before the first step: step 1 is logged and checkpointed, then a resume runs 2..4.
    run_sft(&session, &cfg, &common::run_options(false, true)).unwrap();
    let runs = out.join("sft/runs");
    let (first, _) = scalars(&runs);
    assert!(first.contains_key(&("train/loss".into(), 1)), "{first:?}");
    run_sft(&session, &cfg, &common::run_options(true, false)).unwrap();
    let (tb, texts) = scalars(&runs);
    let expected = jsonl(&out.join("sft/metrics.jsonl"));
    assert_eq!(tb, expected);
    for tag in [
        "train/loss",
        "train/learning_rate",
        "train/grad_norm",
        "eval/loss",
    ] {
        assert!(tb.keys().any(|(t, _)| t == tag), "no {tag}");
    }
    assert_eq!(tb.keys().filter(|(t, _)| t == "train/loss").count(), 4);
    assert_eq!(texts.len(), 1, "the config once, from the first attempt");
    assert!(texts[0].contains("report_to"), "{}", texts[0]);
    assert_eq!(event_files(&runs).unwrap().len(), 2, "one file per attempt");

    // A run started again (not resumed) leaves no event file of the earlier one.
    std::fs::remove_dir_all(out.join("sft")).unwrap();
    run_sft(&session, &cfg, &common::run_options(false, false)).unwrap();
    assert_eq!(event_files(&runs).unwrap().len(), 1);
    assert_eq!(scalars(&runs).0, jsonl(&out.join("sft/metrics.jsonl")));
}

#[test]
fn report_to_refuses_services_it_does_not_write() {
    let err = LoadedConfig::from_str(
        "[model]\nname_or_path = \"m\"\n[sft]\nreport_to = \"wandb\"\n",
        &[],
    )
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("report_to") && text.contains("wandb"),
        "{text}"
    );
}

/// A DPO stage folder with the records given (one JSON object per line).
fn stage_with(dir: &Path, records: &[serde_json::Value]) {
    let stage = dir.join("dpo");
    std::fs::create_dir_all(stage.join("checkpoint-10")).unwrap();
    std::fs::create_dir_all(stage.join("checkpoint-5")).unwrap();
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(stage.join("metrics.jsonl"), text).unwrap();
    std::fs::write(dir.join("config.toml"), "[dpo]\nbeta = 0.1\n").unwrap();
}

fn healthy(step: usize) -> serde_json::Value {
    let s = step as f64;
    serde_json::json!({
        "step": step,
        "loss": 0.69 - 0.03 * s,
        "rewards/chosen": 0.01 * s,
        "rewards/rejected": -0.02 * s,
        "rewards/margins": 0.03 * s,
        "rewards/accuracies": 0.5 + 0.04 * s,
        "logps/chosen": -40.0 + 0.1 * s,
        "logps/rejected": -45.0 - 0.3 * s,
        "learning_rate": 5e-5,
        "grad_norm": 1.0 / (1.0 + s),
        "epoch": s / 10.0,
    })
}

fn eval(step: usize, loss: f64) -> serde_json::Value {
    serde_json::json!({"step": step, "eval_loss": loss, "eval_rewards/accuracies": 0.6})
}

/// Every polyline of the page: series name → (steps, values) as written.
fn page_series(html: &str) -> (Vec<(String, String, String)>, Vec<String>, usize) {
    let dom = tl::parse(html, tl::ParserOptions::default()).unwrap();
    let parser = dom.parser();
    let attr = |tag: &tl::HTMLTag, name: &str| -> String {
        tag.attributes()
            .get(name)
            .flatten()
            .map(|v| v.as_utf8_str().to_string())
            .unwrap_or_default()
    };
    let mut series = Vec::new();
    for h in dom.query_selector("polyline").unwrap() {
        let tag = h.get(parser).unwrap().as_tag().unwrap();
        series.push((
            attr(tag, "data-series"),
            attr(tag, "data-steps"),
            attr(tag, "data-values"),
        ));
    }
    let warnings = dom
        .query_selector("li.warning")
        .unwrap()
        .map(|h| attr(h.get(parser).unwrap().as_tag().unwrap(), "data-warning"))
        .collect();
    let plots = dom.query_selector("svg").unwrap().count();
    (series, warnings, plots)
}

#[test]
fn report_plots_the_metrics_values_and_stays_quiet_on_a_healthy_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut records = vec![eval(0, std::f64::consts::LN_2)];
    records.extend((1..=10).map(healthy));
    records.push(eval(10, 0.5));
    stage_with(tmp.path(), &records);
    let page = lora_dpo::report::write(tmp.path(), None).unwrap();
    assert_eq!(page, tmp.path().join("report.html"));
    let html = std::fs::read_to_string(&page).unwrap();
    for outside in ["<script", "<link", "src=", "@import"] {
        assert!(!html.contains(outside), "the page loads nothing: {outside}");
    }
    let (series, warnings, plots) = page_series(&html);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        plots, 7,
        "loss, rewards, margins, accuracies, log-probs, lr, grad norm"
    );
    // Each series holds exactly the metrics file's steps and values, in order.
    for (name, steps, values) in &series {
        let key = match name.strip_prefix("eval/") {
            Some(rest) => format!("eval_{rest}"),
            None => name.strip_prefix("train/").unwrap().to_string(),
        };
        let want: Vec<(u64, f64)> = records
            .iter()
            .filter_map(|r| Some((r["step"].as_u64()?, r.get(&key)?.as_f64()?)))
            .collect();
        let got_steps: Vec<u64> = steps.split(',').map(|s| s.parse().unwrap()).collect();
        let got_values: Vec<f64> = values.split(',').map(|s| s.parse().unwrap()).collect();
        assert_eq!(
            got_steps,
            want.iter().map(|w| w.0).collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(
            got_values,
            want.iter().map(|w| w.1).collect::<Vec<_>>(),
            "{name}"
        );
    }
    let names: Vec<&str> = series.iter().map(|s| s.0.as_str()).collect();
    for n in [
        "train/loss",
        "eval/loss",
        "train/rewards/chosen",
        "train/rewards/rejected",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert!(html.contains("checkpoint-5") && html.contains("checkpoint-10"));
    assert!(
        html.find("checkpoint-5") < html.find("checkpoint-10"),
        "steps in order"
    );
    assert!(html.contains("beta = 0.1"), "the config is on the page");
    assert!(html.contains("class=\"eval\""), "the final eval table");
}

/// Builds the record of a step.
type MakeRecord = Box<dyn Fn(usize) -> serde_json::Value>;

#[test]
fn report_warnings_fire_on_crafted_runs() {
    let cases: Vec<(&str, MakeRecord)> = vec![
        (
            "ln2-plateau",
            Box::new(|s| {
                let mut r = healthy(s);
                r["loss"] = (std::f64::consts::LN_2 + 1e-4).into();
                r
            }),
        ),
        (
            "likelihood-displacement",
            Box::new(|s| {
                let mut r = healthy(s);
                r["logps/chosen"] = (-40.0 - 0.5 * s as f64).into();
                r
            }),
        ),
        (
            "accuracy-pinned",
            Box::new(|s| {
                let mut r = healthy(s);
                r["rewards/accuracies"] = 1.0.into();
                r
            }),
        ),
        (
            "non-finite",
            Box::new(|s| {
                let mut r = healthy(s);
                if s == 7 {
                    r["loss"] = serde_json::Value::Null;
                }
                r
            }),
        ),
    ];
    for (kind, make) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let records: Vec<_> = (1..=10).map(make).collect();
        stage_with(tmp.path(), &records);
        let out = tmp.path().join("elsewhere.html");
        lora_dpo::report::write(tmp.path(), Some(&out)).unwrap();
        let (_, warnings, _) = page_series(&std::fs::read_to_string(&out).unwrap());
        assert_eq!(warnings, vec![kind.to_string()], "{kind}");
    }
}

#[test]
fn report_of_a_folder_without_metrics_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display().to_string();
    let (code, _, stderr) = lora_dpo(&["report", &dir]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("not a run folder") && stderr.contains(&dir),
        "{stderr}"
    );
}

/// An HF cache holding `owner/prefs` at commit `c0ffee` with two splits, as the hub client
/// leaves it (refs/main naming the snapshot).
fn hub_cache_with_prefs(cache: &Path) {
    let repo = cache.join("datasets--owner--prefs");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "c0ffee").unwrap();
    let data = repo.join("snapshots/c0ffee/data");
    std::fs::create_dir_all(&data).unwrap();
    let rows = std::fs::read_to_string(common::fixture("train/prefs.jsonl")).unwrap();
    std::fs::write(data.join("train_prefs-00000-of-00001.jsonl"), &rows).unwrap();
    let first: String = rows.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(data.join("test_prefs-00000-of-00001.jsonl"), first).unwrap();
}

fn data_cmd(cache: &Path, split: &str) -> (i32, String, String) {
    let model = fixture_str("models/tiny-llama");
    let args = [
        "data",
        "--model",
        &model,
        "--data",
        "hf://datasets/owner/prefs",
    ];
    let args: Vec<&str> = args.into_iter().chain(["--split", split]).collect();
    let offline = Path::new("1");
    common::lora_dpo_with_env(
        &args,
        &[("HF_HUB_CACHE", cache), ("HF_HUB_OFFLINE", offline)],
    )
}

#[test]
fn hub_datasets_resolve_from_the_cache_offline() {
    let tmp = tempfile::tempdir().unwrap();
    hub_cache_with_prefs(tmp.path());
    let (code, stdout, stderr) = data_cmd(tmp.path(), "train_prefs");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("data/train_prefs-00000-of-00001.jsonl") && !stdout.contains("test_prefs"),
        "{stdout}"
    );
    let (code, _, stderr) = data_cmd(tmp.path(), "train_sft");
    assert_ne!(code, 0);
    assert!(
        stderr.contains("train_sft") && stderr.contains("HF_HUB_OFFLINE"),
        "{stderr}"
    );
    // The split's files only, for the library as for the command.
    let dir =
        lora_dpo::data::hub::cached_split(tmp.path(), "owner/prefs", "main", "test_prefs").unwrap();
    let files = lora_dpo::data::reader::list_files(&dir, Some("test_prefs")).unwrap();
    assert_eq!(files.len(), 1);
    assert!(
        lora_dpo::data::hub::cached_split(tmp.path(), "owner/other", "main", "train").is_none()
    );
}
