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
        .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

fn check(name: &str) {
    let fx = fixture();
    let t = &fx[name];
    let template = ChatTemplate::new(
        t["template"].as_str().unwrap(),
        vec![
            ("bos_token".into(), t["bos_token"].as_str().unwrap().into()),
            ("eos_token".into(), t["eos_token"].as_str().unwrap().into()),
        ],
    )
    .unwrap();
    let cases = t["cases"].as_array().unwrap();
    assert!(cases.len() >= 3, "{name}: too few cases");
    for case in cases {
        let msgs = messages(&case["messages"]);
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let got = template.render(&msgs, gen);
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
