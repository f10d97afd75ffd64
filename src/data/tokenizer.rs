//! A tokenizer with its chat template and special tokens, from a Hugging Face model folder or a GGUF file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::schema::Message;
use super::template::ChatTemplate;

/// A byte range `start..end` of a text.
pub type Span = (usize, usize);

/// A special token: its text and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    pub text: String,
    pub id: u32,
}

/// What the data pipeline needs from a model: the tokenizer, the chat template, and the special tokens.
#[derive(Debug)]
pub struct ChatTokenizer {
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub bos: Option<SpecialToken>,
    pub eos: Option<SpecialToken>,
    pub pad: Option<SpecialToken>,
    /// Where it was loaded from.
    pub source: PathBuf,
}

/// Loads the tokenizer of a model: a folder with `tokenizer.json` (and `tokenizer_config.json` for the chat
/// template and special tokens, or `chat_template.jinja`), or a `.gguf` file (`tokenizer.ggml.*` metadata and
/// `tokenizer.chat_template`; GPT-2-style BPE vocabularies only, as candle supports).
pub fn load_chat_tokenizer(path: &Path) -> Result<ChatTokenizer> {
    if path.is_dir() {
        load_folder(path)
    } else if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
        load_gguf(path)
    } else if path.file_name().and_then(|n| n.to_str()) == Some("tokenizer.json") {
        load_folder(path.parent().unwrap_or(Path::new(".")))
    } else if !path.exists() {
        bail!("{}: no such file or folder", path.display())
    } else {
        bail!(
            "{}: expected a model folder (with tokenizer.json) or a .gguf file",
            path.display()
        )
    }
}

/// The text of a special token in tokenizer_config.json: a string or an AddedToken object `{"content": ...}`.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn load_folder(dir: &Path) -> Result<ChatTokenizer> {
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.exists() {
        bail!(
            "{}: no tokenizer.json in this folder (a Hugging Face model folder or a .gguf file is needed)",
            dir.display()
        );
    }
    let tokenizer = Tokenizer::from_file(&tok_path)
        .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer: {e}", tok_path.display()))?;
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg: serde_json::Map<String, Value> = if cfg_path.exists() {
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("cannot read {}", cfg_path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a JSON object", cfg_path.display()))?
    } else {
        Default::default()
    };
    let mut template_src = match cfg.get("chat_template") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => {
            // A list of named templates: use "default".
            let named = list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"));
            named
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string)
        }
        Some(_) => bail!(
            "{}: `chat_template` must be a string or a list",
            cfg_path.display()
        ),
    };
    let jinja = dir.join("chat_template.jinja");
    if template_src.is_none() && jinja.exists() {
        template_src = Some(
            std::fs::read_to_string(&jinja)
                .with_context(|| format!("cannot read {}", jinja.display()))?,
        );
    }
    let special = |name: &str| -> Option<SpecialToken> {
        let text = token_text(cfg.get(name))?;
        let id = tokenizer.token_to_id(&text)?;
        Some(SpecialToken { text, id })
    };
    let (bos, eos, pad) = (
        special("bos_token"),
        special("eos_token"),
        special("pad_token"),
    );
    let mut names = Vec::new();
    for name in [
        "bos_token",
        "eos_token",
        "unk_token",
        "pad_token",
        "sep_token",
        "cls_token",
        "mask_token",
    ] {
        if let Some(t) = token_text(cfg.get(name)) {
            names.push((name.to_string(), t));
        }
    }
    let template = template_src
        .map(|src| ChatTemplate::new(&src, names))
        .transpose()
        .with_context(|| format!("{}: chat_template", cfg_path.display()))?;
    Ok(ChatTokenizer {
        tokenizer,
        template,
        bos,
        eos,
        pad,
        source: dir.to_path_buf(),
    })
}

fn load_gguf(path: &Path) -> Result<ChatTokenizer> {
    use candle_core::quantized::gguf_file;
    use candle_core::quantized::tokenizer::TokenizerFromGguf;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| anyhow::anyhow!("{}: not a readable GGUF file: {e}", path.display()))?;
    let md = &content.metadata;
    let model = md
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if model == "llama" {
        let tokenizer = super::gguf_spm::spm_tokenizer(&content).with_context(|| {
            format!(
                "{}: cannot build the SentencePiece tokenizer",
                path.display()
            )
        })?;
        return finish_gguf(path, &content, tokenizer);
    }
    if model != "gpt2" {
        bail!(
            "{}: tokenizer.ggml.model `{model}` is not supported (gpt2 and llama are); use the model's Hugging \
             Face folder with tokenizer.json instead",
            path.display()
        );
    }
    let mut tokenizer = Tokenizer::from_gguf(&content)
        .map_err(|e| anyhow::anyhow!("{}: cannot build the tokenizer: {e}", path.display()))?;
    let pre = md
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let add_prefix_space = md
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    set_gguf_pre_tokenizer(&mut tokenizer, &pre, add_prefix_space)
        .with_context(|| format!("{}: tokenizer.ggml.pre `{pre}`", path.display()))?;
    finish_gguf(path, &content, tokenizer)
}

/// Special tokens and chat template of a GGUF.
fn finish_gguf(
    path: &Path,
    content: &candle_core::quantized::gguf_file::Content,
    tokenizer: Tokenizer,
) -> Result<ChatTokenizer> {
    use candle_core::quantized::gguf_file;
    let md = &content.metadata;
    let tokens: Vec<String> = match md.get("tokenizer.ggml.tokens") {
        Some(gguf_file::Value::Array(a)) => a
            .iter()
            .map(|v| v.to_string().map(|s| s.to_string()).unwrap_or_default())
            .collect(),
        _ => bail!("{}: no tokenizer.ggml.tokens", path.display()),
    };
    let special = |key: &str| -> Option<SpecialToken> {
        let id = md.get(key)?.to_u32().ok()?;
        let text = tokens.get(id as usize)?.clone();
        Some(SpecialToken { text, id })
    };
    let bos = special("tokenizer.ggml.bos_token_id");
    let eos = special("tokenizer.ggml.eos_token_id");
    let pad = special("tokenizer.ggml.padding_token_id");
    let unk = special("tokenizer.ggml.unknown_token_id");
    let mut names = Vec::new();
    for (name, t) in [
        ("bos_token", &bos),
        ("eos_token", &eos),
        ("unk_token", &unk),
        ("pad_token", &pad),
    ] {
        if let Some(t) = t {
            names.push((name.to_string(), t.text.clone()));
        }
    }
    let template = match md.get("tokenizer.chat_template") {
        Some(v) => {
            let src = v
                .to_string()
                .map_err(|e| anyhow::anyhow!("{}: tokenizer.chat_template: {e}", path.display()))?;
            Some(
                ChatTemplate::new(src, names)
                    .with_context(|| format!("{}: tokenizer.chat_template", path.display()))?,
            )
        }
        None => None,
    };
    Ok(ChatTokenizer {
        tokenizer,
        template,
        bos,
        eos,
        pad,
        source: path.to_path_buf(),
    })
}

pub(crate) const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Sets the pre-tokenizer of a GPT-2-style GGUF vocabulary the way transformers (and llama.cpp) split text for
/// that `tokenizer.ggml.pre`. candle's default adds a prefix space (`"Hi"` becomes `" Hi"`), which transformers
/// does not, and it does not know llama.cpp's `llama-bpe` name for Llama-3.
fn set_gguf_pre_tokenizer(
    tokenizer: &mut Tokenizer,
    pre: &str,
    add_prefix_space: bool,
) -> Result<()> {
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::pre_tokenizers::PreTokenizerWrapper;
    let split = match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "dbrx" | "smaug-bpe" => Some(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2_SPLIT),
        _ => None,
    };
    let wrapper: PreTokenizerWrapper = match split {
        Some(re) => {
            let split = Split::new(
                SplitPattern::Regex(re.to_string()),
                tokenizers::SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            Sequence::new(vec![
                split.into(),
                ByteLevel::new(add_prefix_space, true, false).into(),
            ])
            .into()
        }
        None => ByteLevel::new(add_prefix_space, true, true).into(),
    };
    tokenizer.with_pre_tokenizer(Some(wrapper));
    Ok(())
}

impl ChatTokenizer {
    /// Token ids of `text`. With `add_special_tokens` the tokenizer's post-processor runs (it may add BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// Token ids and each token's byte span in `text`, without special tokens added.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<Span>)> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))
    }

    /// Renders messages with the chat template.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        match &self.template {
            Some(t) => t.render(messages, add_generation_prompt),
            None => bail!(
                "{}: the model has no chat template, so conversational data cannot be formatted \
                 (use prompt/completion strings or text)",
                self.source.display()
            ),
        }
    }

    /// The padding id: the pad token, else EOS (as TRL does), else 0. Padding is never trained on, so using EOS
    /// does not hide the real EOS at the end of completions.
    pub fn pad_id(&self) -> u32 {
        self.pad
            .as_ref()
            .or(self.eos.as_ref())
            .map(|t| t.id)
            .unwrap_or(0)
    }
}
