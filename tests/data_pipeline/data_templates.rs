//! Chat templates render byte for byte as transformers' `apply_chat_template(tokenize=False)` does.
//! Expected strings: tests/fixtures/data/templates.json, written by scripts/make_data_fixtures.py.

use lora_dpo::data::{ChatTemplate, Message};
use serde_json::Value;

fn fixture() -> Value {
    let text = std::fs::read_to_string("tests/fixtures/data/templates.json").expect("fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let msg = Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap());
            match m["reasoning_content"].as_str() {
                Some(r) => msg.with_reasoning(r),
                None => msg,
            }
        })
        .collect()
}

/// The fixture's special tokens; a family without one (Qwen has no BOS) leaves the variable undefined, as
/// transformers does.
fn special_tokens(t: &Value) -> Vec<(String, String)> {
    ["bos_token", "eos_token"]
        .iter()
        .filter_map(|k| Some((k.to_string(), t[*k].as_str()?.to_string())))
        .collect()
}

fn kwargs(case: &Value) -> serde_json::Map<String, Value> {
    case["kwargs"].as_object().cloned().unwrap_or_default()
}

fn check(name: &str) {
    let fx = fixture();
    let t = &fx[name];
    let template = ChatTemplate::new(t["template"].as_str().unwrap(), special_tokens(t)).unwrap();
    let cases = t["cases"].as_array().unwrap();
    assert!(cases.len() >= 3, "{name}: too few cases");
    for case in cases {
        let msgs = messages(&case["messages"]);
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let got = template.render_with(&msgs, gen, &kwargs(case));
        let label = format!("{name}/{}", case["name"].as_str().unwrap());
        match (&case["expected"], &case["error"]) {
            (Value::String(expected), _) => {
                assert_eq!(
                    &got.unwrap_or_else(|e| panic!("{label}: {e:#}")),
                    expected,
                    "{label}"
                )
            }
            (_, Value::String(err)) => {
                let e = got.expect_err(&label);
                assert!(
                    format!("{e:#}").contains(err.as_str()),
                    "{label}: {e:#} should contain {err}"
                );
            }
            _ => panic!("{label}: bad fixture"),
        }
    }
}

#[test]
fn every_template_in_the_fixture_renders_like_transformers() {
    // A template added to the fixture is checked without a test of its own.
    let fx = fixture();
    let names: Vec<&String> = fx.as_object().unwrap().keys().collect();
    assert!(names.len() >= 11, "{names:?}");
    for name in names {
        check(name);
    }
}

#[test]
fn zephyr() {
    check("zephyr");
}

#[test]
fn mistral_instruct_v1() {
    check("mistral_v1");
}

#[test]
fn mistral_v3_style_with_system() {
    check("mistral_v3");
}

#[test]
fn llama3() {
    check("llama3");
}

#[test]
fn chatml_smollm2() {
    check("chatml_smollm2");
}

/// Qwen2.5-Instruct: ChatML with its default system prompt when the conversation has none.
#[test]
fn qwen2_5_instruct() {
    check("qwen2_5");
}

/// Qwen3 as released: `<think>` blocks from `reasoning_content` or the content, dropped before the last user
/// message; `enable_thinking=False` puts an empty one in the generation prompt.
#[test]
fn qwen3_thinking() {
    check("qwen3");
}

/// The later Qwen3 revision (as TRL stores it): same cases.
#[test]
fn qwen3_later_revision() {
    check("qwen3_trl");
}

/// Llama-3.1-Instruct: "Cutting Knowledge Date" header, its default date or `date_string`.
#[test]
fn llama3_1_instruct() {
    check("llama3_1");
}

/// Llama-3.2-Instruct: today's date from `strftime_now` unless `date_string` is given (the fixture gives one).
#[test]
fn llama3_2_instruct() {
    check("llama3_2");
}

#[test]
fn llama3_2_without_date_string_writes_today() {
    let fx = fixture();
    let t = &fx["llama3_2"];
    let template = ChatTemplate::new(t["template"].as_str().unwrap(), special_tokens(t)).unwrap();
    let got = template
        .render(&[Message::new("user", "Hi")], true)
        .unwrap();
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // Rendered a moment ago: today, or yesterday just after midnight.
    let today = lora_dpo::data::template::strftime("%d %b %Y", secs);
    let yesterday = lora_dpo::data::template::strftime("%d %b %Y", secs - 60);
    assert!(
        got.contains(&format!("Today Date: {today}\n"))
            || got.contains(&format!("Today Date: {yesterday}\n")),
        "{got}"
    );
}

#[test]
fn tojson_namespace_and_python_methods() {
    check("probe");
}

#[test]
fn template_from_model_folder_matches() {
    // The SmolLM2 folder stores its template in chat_template.jinja (as transformers 5 saves it).
    let tok =
        lora_dpo::data::load_chat_tokenizer(std::path::Path::new("tests/fixtures/data/smollm2"))
            .unwrap();
    let fx = fixture();
    let t = &fx["chatml_smollm2"];
    assert_eq!(
        tok.template.as_ref().unwrap().source(),
        t["template"].as_str().unwrap()
    );
    for case in t["cases"].as_array().unwrap() {
        let got = tok
            .render(
                &messages(&case["messages"]),
                case["add_generation_prompt"].as_bool().unwrap(),
            )
            .unwrap();
        assert_eq!(got, case["expected"].as_str().unwrap());
    }
    assert_eq!(tok.bos.as_ref().unwrap().text, "<|im_start|>");
    assert_eq!(tok.eos.as_ref().unwrap().id, 2);
    assert_eq!(tok.pad_id(), 2);
}

#[test]
fn generation_tags_are_accepted() {
    // TRL's training templates mark assistant output with {% generation %}; they must still render.
    let src =
        "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}\
               {% endgeneration %}{% else %}{{ m.content }}{% endif %}|{% endfor %}";
    let t = ChatTemplate::new(src, vec![]).unwrap();
    let out = t
        .render(
            &[Message::new("user", "q"), Message::new("assistant", "a")],
            false,
        )
        .unwrap();
    assert_eq!(out, "q|a|");
}

#[test]
fn raise_exception_surfaces_the_message() {
    let t = ChatTemplate::new("{{ raise_exception('no system role, please') }}", vec![]).unwrap();
    let err = t.render(&[Message::new("user", "x")], false).unwrap_err();
    assert!(
        format!("{err:#}").contains("no system role, please"),
        "{err:#}"
    );
}

#[test]
fn template_and_special_tokens_from_tokenizer_config() {
    // Older folders keep the template in tokenizer_config.json: a string, or a list of named templates; special
    // tokens may be AddedToken objects.
    let fx = fixture();
    let zephyr = fx["zephyr"]["template"].as_str().unwrap();
    let llama3 = fx["llama3"]["template"].as_str().unwrap();
    let src = std::path::Path::new("tests/fixtures/data/smollm2/tokenizer.json");
    for chat_template in [
        serde_json::json!(zephyr),
        serde_json::json!([{"name": "tool_use", "template": llama3}, {"name": "default", "template": zephyr}]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(src, dir.path().join("tokenizer.json")).unwrap();
        let config = serde_json::json!({
            "bos_token": {"content": "<|im_start|>", "lstrip": false, "special": true},
            "eos_token": "<|im_end|>",
            "chat_template": chat_template,
        });
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        let tok = lora_dpo::data::load_chat_tokenizer(dir.path()).unwrap();
        assert_eq!(tok.bos.as_ref().unwrap().id, 1);
        assert_eq!(tok.eos.as_ref().unwrap().id, 2);
        assert!(tok.pad.is_none());
        assert_eq!(tok.pad_id(), 2, "no pad token: pad with EOS");
        let got = tok.render(&[Message::new("user", "Hi")], true).unwrap();
        assert_eq!(got, "<|user|>\nHi<|im_end|>\n<|assistant|>\n");
    }
    // No template at all: conversational data cannot be formatted, and the error says so.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src, dir.path().join("tokenizer.json")).unwrap();
    let tok = lora_dpo::data::load_chat_tokenizer(dir.path()).unwrap();
    let err = tok.render(&[Message::new("user", "Hi")], true).unwrap_err();
    assert!(format!("{err:#}").contains("no chat template"), "{err:#}");
}
