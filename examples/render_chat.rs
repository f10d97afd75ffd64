//! Renders conversations with a model's chat template and tokenizes them as lora-dpo does, for
//! comparisons outside CI (scripts/check_llama_cpp.py):
//!
//!     cargo run --release --example render_chat -- MODEL CONVERSATIONS.json OUT.json
//!
//! CONVERSATIONS.json is a list of message lists; OUT gets, for each, `{"text", "ids"}`: the
//! rendering with the generation prompt and its token ids (no special tokens added).

use anyhow::{Context, Result};
use lora_dpo::data::schema::Message;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, conversations, out] = args.as_slice() else {
        anyhow::bail!("usage: render_chat MODEL CONVERSATIONS.json OUT.json");
    };
    let tok = lora_dpo::data::load_chat_tokenizer(model.as_ref())?;
    let template = tok
        .template
        .as_ref()
        .context("the model has no chat template")?;
    let conversations: Vec<Vec<(String, String)>> = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(conversations)
            .with_context(|| format!("reading {conversations}"))?,
    )?
    .as_array()
    .context("a list of conversations")?
    .iter()
    .map(|c| {
        (c.as_array().into_iter().flatten())
            .map(|m| {
                (
                    m["role"].as_str().unwrap_or("").into(),
                    m["content"].as_str().unwrap_or("").into(),
                )
            })
            .collect()
    })
    .collect();
    let mut rendered = Vec::new();
    for conversation in &conversations {
        let messages: Vec<Message> = conversation
            .iter()
            .map(|(r, c)| Message::new(r, c))
            .collect();
        let text = template.render(&messages, true)?;
        let ids = tok.encode(&text, false)?;
        rendered.push(serde_json::json!({ "text": text, "ids": ids }));
    }
    std::fs::write(out, serde_json::to_string(&rendered)?)?;
    Ok(())
}
