//! An Ollama `Modelfile` beside an exported GGUF: `FROM` the file, a `TEMPLATE` in Ollama's Go
//! template language for the chat-template families recognised from their markers (ChatML,
//! Llama-3, Zephyr, Mistral/Llama-2 `[INST]`), and a stop `PARAMETER` for each end-of-turn
//! text. A template that is none of these is not translated: the file says so and leaves
//! Ollama's plain prompt.

/// A chat-template family Ollama's template can reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFamily {
    ChatMl,
    Llama3,
    Zephyr,
    Inst,
}

impl ChatFamily {
    /// The family of a Jinja chat template, from the markers it writes.
    pub fn of(template: &str) -> Option<Self> {
        if template.contains("<|im_start|>") {
            Some(Self::ChatMl)
        } else if template.contains("<|start_header_id|>") {
            Some(Self::Llama3)
        } else if template.contains("<|user|>") && template.contains("<|assistant|>") {
            Some(Self::Zephyr)
        } else if template.contains("[INST]") {
            Some(Self::Inst)
        } else {
            None
        }
    }

    fn template(self) -> &'static str {
        match self {
            Self::ChatMl => {
                "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}\
                 {{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}\
                 <|im_start|>assistant\n"
            }
            Self::Llama3 => {
                "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}\
                 {{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}\
                 <|start_header_id|>assistant<|end_header_id|>\n\n"
            }
            Self::Zephyr => {
                "{{- if .System }}<|system|>\n{{ .System }}</s>\n{{ end }}\
                 {{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}</s>\n{{ end }}<|assistant|>\n"
            }
            Self::Inst => {
                "{{- range .Messages }}{{ if eq .Role \"user\" }}[INST] {{ .Content }} [/INST]\
                 {{ else if eq .Role \"assistant\" }}{{ .Content }}</s>{{ end }}{{ end }}"
            }
        }
    }

    /// The texts that end an assistant turn or start the next one.
    fn stops(self) -> &'static [&'static str] {
        match self {
            Self::ChatMl => &["<|im_end|>", "<|im_start|>"],
            Self::Llama3 => &["<|eot_id|>", "<|start_header_id|>"],
            Self::Zephyr => &["</s>", "<|user|>"],
            Self::Inst => &["</s>", "[INST]"],
        }
    }
}

/// The Modelfile text for `gguf_name` (a file beside it), the model's chat template and its
/// end-of-sequence text.
pub fn modelfile(
    gguf_name: &str,
    template: Option<&str>,
    eos: Option<&str>,
    origin: &str,
) -> String {
    let mut out = format!("# Written by lora-dpo export from {origin}\nFROM ./{gguf_name}\n");
    let family = template.and_then(ChatFamily::of);
    let mut stops: Vec<&str> = family.map(|f| f.stops().to_vec()).unwrap_or_default();
    match family {
        Some(f) => out.push_str(&format!("TEMPLATE \"\"\"{}\"\"\"\n", f.template())),
        None if template.is_some() => out.push_str(
            "# The model's chat template is none of ChatML, Llama-3, Zephyr or [INST] and was not\n\
             # translated to Ollama's template language: add a TEMPLATE by hand.\n",
        ),
        None => out.push_str("# The model has no chat template: Ollama sends the plain prompt.\n"),
    }
    if let Some(eos) = eos.filter(|e| !stops.contains(e)) {
        stops.push(eos);
    }
    for stop in stops {
        out.push_str(&format!("PARAMETER stop \"{stop}\"\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_recognised_by_their_markers() {
        let chatml = "{{'<|im_start|>' + message['role'] + '\\n'}}";
        assert_eq!(ChatFamily::of(chatml), Some(ChatFamily::ChatMl));
        assert_eq!(
            ChatFamily::of("<|start_header_id|>{{ role }}<|end_header_id|>"),
            Some(ChatFamily::Llama3)
        );
        assert_eq!(
            ChatFamily::of("<|user|>\n{{x}}</s><|assistant|>"),
            Some(ChatFamily::Zephyr)
        );
        assert_eq!(
            ChatFamily::of("[INST] {{ x }} [/INST]"),
            Some(ChatFamily::Inst)
        );
        assert_eq!(ChatFamily::of("{{ messages }}"), None);
    }

    #[test]
    fn a_modelfile_has_from_template_and_stops() {
        let m = modelfile("m.gguf", Some("<|im_start|>"), Some("<|im_end|>"), "base");
        assert!(m.contains("FROM ./m.gguf\n"));
        assert!(m.contains("TEMPLATE \"\"\"{{- if .System }}<|im_start|>system"));
        assert_eq!(m.matches("PARAMETER stop \"<|im_end|>\"").count(), 1);
        assert!(m.contains("PARAMETER stop \"<|im_start|>\""));
        let m = modelfile("m.gguf", Some("{{ messages }}"), Some("</s>"), "base");
        assert!(m.contains("was not\n# translated"));
        assert!(m.contains("PARAMETER stop \"</s>\""));
    }
}
