//! Every model family lora-dpo reads, each described once: the names transformers and
//! llama.cpp give it, the tensors a checkpoint holds in both namings, which projections carry
//! biases, whether q and k are normed per head, and how its sliding window is switched on.
//!
//! All families share one decoder (pre-norm RMSNorm, rotary attention with GQA, SwiGLU MLP);
//! what differs between them is data in [`FAMILIES`]. Adding a family means a row here, its
//! config keys in `config.rs` if it has new ones, and its fixtures. The default LoRA targets
//! are the seven projections of every family ([`Projection::ALL`], QLoRA's "all linear").

use crate::model::projection::Projection;

/// A model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Ministral,
}

/// How a family's config switches sliding-window attention on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindow {
    /// Never, whatever the file says (transformers' Llama ignores `sliding_window`).
    Never,
    /// Every layer slides when `sliding_window` is set (Mistral).
    EveryLayer,
    /// Only with `use_sliding_window`, and then the layers `layer_types` names, or every layer
    /// from `max_window_layers` on (Qwen2, Qwen3).
    OptIn,
    /// The layers `layer_types` names; without it every layer when `sliding_window` is set
    /// (Ministral's interleaved layers).
    LayerTypes,
}

impl SlidingWindow {
    /// Whether config.json says per layer which ones slide (`layer_types`), so that a written
    /// config must say it too.
    pub fn names_layers(self) -> bool {
        matches!(self, SlidingWindow::OptIn | SlidingWindow::LayerTypes)
    }
}

/// What makes a family different from the shared decoder.
#[derive(Debug)]
pub struct Family {
    pub architecture: Architecture,
    /// `architectures[0]` in config.json.
    pub hf_class: &'static str,
    pub model_type: &'static str,
    /// `general.architecture` of a GGUF file. Mistral files are written as `llama`.
    pub gguf_arch: Option<&'static str>,
    /// The llama.cpp architecture an export writes (Mistral as `llama`, as llama.cpp's
    /// converter does); `None`: llama.cpp has no architecture for it.
    pub gguf_export_arch: Option<&'static str>,
    /// llama.cpp's converter permutes the rows of q and k for this architecture (its rope
    /// rotates interleaved pairs; transformers rotates halves), so reading undoes it.
    pub gguf_permutes_qk: bool,
    /// Projections that always carry a bias.
    pub biased: &'static [Projection],
    /// config.json's `attention_bias`: when true, q, k, v and o carry biases.
    pub reads_attention_bias: bool,
    /// config.json's `mlp_bias`: when true, gate, up and down carry biases.
    pub reads_mlp_bias: bool,
    /// RMSNorm of each head's q and k (over head_dim) before the rotary embedding.
    pub qk_norm: bool,
    pub sliding: SlidingWindow,
    /// transformers' default `head_dim` when config.json has none (else hidden / heads).
    pub default_head_dim: Option<usize>,
}

const QKV: &[Projection] = &[Projection::Q, Projection::K, Projection::V];

/// Every family, in the order errors list them.
pub const FAMILIES: [Family; 5] = [
    Family {
        architecture: Architecture::Llama,
        hf_class: "LlamaForCausalLM",
        model_type: "llama",
        gguf_arch: Some("llama"),
        gguf_export_arch: Some("llama"),
        gguf_permutes_qk: true,
        biased: &[],
        reads_attention_bias: true,
        reads_mlp_bias: true,
        qk_norm: false,
        sliding: SlidingWindow::Never,
        default_head_dim: None,
    },
    Family {
        architecture: Architecture::Mistral,
        hf_class: "MistralForCausalLM",
        model_type: "mistral",
        gguf_arch: None,
        gguf_export_arch: Some("llama"),
        gguf_permutes_qk: true,
        biased: &[],
        reads_attention_bias: false,
        reads_mlp_bias: false,
        qk_norm: false,
        sliding: SlidingWindow::EveryLayer,
        default_head_dim: None,
    },
    Family {
        architecture: Architecture::Qwen2,
        hf_class: "Qwen2ForCausalLM",
        model_type: "qwen2",
        gguf_arch: Some("qwen2"),
        gguf_export_arch: Some("qwen2"),
        gguf_permutes_qk: false,
        biased: QKV,
        reads_attention_bias: false,
        reads_mlp_bias: false,
        qk_norm: false,
        sliding: SlidingWindow::OptIn,
        default_head_dim: None,
    },
    Family {
        architecture: Architecture::Qwen3,
        hf_class: "Qwen3ForCausalLM",
        model_type: "qwen3",
        gguf_arch: Some("qwen3"),
        gguf_export_arch: Some("qwen3"),
        gguf_permutes_qk: false,
        biased: &[],
        reads_attention_bias: true,
        reads_mlp_bias: false,
        qk_norm: true,
        sliding: SlidingWindow::OptIn,
        default_head_dim: Some(128),
    },
    Family {
        architecture: Architecture::Ministral,
        hf_class: "MinistralForCausalLM",
        model_type: "ministral",
        gguf_arch: None,
        gguf_export_arch: None,
        gguf_permutes_qk: true,
        biased: &[],
        reads_attention_bias: false,
        reads_mlp_bias: false,
        qk_norm: false,
        sliding: SlidingWindow::LayerTypes,
        default_head_dim: None,
    },
];

impl Architecture {
    pub fn family(self) -> &'static Family {
        FAMILIES
            .iter()
            .find(|f| f.architecture == self)
            .expect("every architecture has a row in FAMILIES")
    }

    pub fn hf_class(self) -> &'static str {
        self.family().hf_class
    }

    /// The family of a config.json `architectures[0]` or `model_type`.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        FAMILIES
            .iter()
            .find(|f| f.hf_class == name || f.model_type == name)
            .map(|f| f.architecture)
    }

    /// The family of a GGUF `general.architecture`.
    pub fn from_gguf_arch(arch: &str) -> Option<Self> {
        FAMILIES
            .iter()
            .find(|f| f.gguf_arch == Some(arch))
            .map(|f| f.architecture)
    }

    /// The supported names, for errors.
    pub fn hf_classes() -> String {
        FAMILIES.map(|f| f.hf_class).join(", ")
    }

    pub fn gguf_archs() -> String {
        let names: Vec<_> = FAMILIES.iter().filter_map(|f| f.gguf_arch).collect();
        names.join(", ")
    }
}

/// A tensor of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerTensor {
    InputNorm,
    PostAttentionNorm,
    Weight(Projection),
    Bias(Projection),
    QNorm,
    KNorm,
}

impl LayerTensor {
    /// Every tensor a layer may have, for reading names back.
    fn all() -> impl Iterator<Item = LayerTensor> {
        [
            Self::InputNorm,
            Self::PostAttentionNorm,
            Self::QNorm,
            Self::KNorm,
        ]
        .into_iter()
        .chain(Projection::ALL.into_iter().map(Self::Weight))
        .chain(Projection::ALL.into_iter().map(Self::Bias))
    }

    /// The name inside `model.layers.N.` of a transformers checkpoint.
    fn hf_suffix(self) -> String {
        match self {
            Self::InputNorm => "input_layernorm.weight".into(),
            Self::PostAttentionNorm => "post_attention_layernorm.weight".into(),
            Self::Weight(p) => format!("{}.{}.weight", p.block(), p.name()),
            Self::Bias(p) => format!("{}.{}.bias", p.block(), p.name()),
            Self::QNorm => "self_attn.q_norm.weight".into(),
            Self::KNorm => "self_attn.k_norm.weight".into(),
        }
    }

    /// The name inside `blk.N.` of a llama.cpp file.
    fn gguf_suffix(self) -> String {
        match self {
            Self::InputNorm => "attn_norm.weight".into(),
            Self::PostAttentionNorm => "ffn_norm.weight".into(),
            Self::Weight(p) => format!("{}.weight", gguf_projection(p)),
            Self::Bias(p) => format!("{}.bias", gguf_projection(p)),
            Self::QNorm => "attn_q_norm.weight".into(),
            Self::KNorm => "attn_k_norm.weight".into(),
        }
    }
}

fn gguf_projection(p: Projection) -> &'static str {
    match p {
        Projection::Q => "attn_q",
        Projection::K => "attn_k",
        Projection::V => "attn_v",
        Projection::O => "attn_output",
        Projection::Gate => "ffn_gate",
        Projection::Up => "ffn_up",
        Projection::Down => "ffn_down",
    }
}

/// A tensor of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelTensor {
    Embed,
    FinalNorm,
    LmHead,
    Layer(usize, LayerTensor),
}

impl ModelTensor {
    pub fn hf_name(self) -> String {
        match self {
            Self::Embed => "model.embed_tokens.weight".into(),
            Self::FinalNorm => "model.norm.weight".into(),
            Self::LmHead => "lm_head.weight".into(),
            Self::Layer(i, t) => format!("model.layers.{i}.{}", t.hf_suffix()),
        }
    }

    pub fn gguf_name(self) -> String {
        match self {
            Self::Embed => "token_embd.weight".into(),
            Self::FinalNorm => "output_norm.weight".into(),
            Self::LmHead => "output.weight".into(),
            Self::Layer(i, t) => format!("blk.{i}.{}", t.gguf_suffix()),
        }
    }

    /// The tensor a transformers name stands for.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        for t in [Self::Embed, Self::FinalNorm, Self::LmHead] {
            if t.hf_name() == name {
                return Some(t);
            }
        }
        let (layer, suffix) = name.strip_prefix("model.layers.")?.split_once('.')?;
        let layer = layer.parse().ok()?;
        LayerTensor::all()
            .find(|t| t.hf_suffix() == suffix)
            .map(|t| Self::Layer(layer, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_found_by_its_names() {
        for f in &FAMILIES {
            assert_eq!(Architecture::from_hf_name(f.hf_class), Some(f.architecture));
            assert_eq!(
                Architecture::from_hf_name(f.model_type),
                Some(f.architecture)
            );
            if let Some(g) = f.gguf_arch {
                assert_eq!(Architecture::from_gguf_arch(g), Some(f.architecture));
            }
        }
        assert_eq!(Architecture::from_gguf_arch("gpt2"), None);
    }

    #[test]
    fn tensor_names_in_both_namings_round_trip() {
        let layer_tensors: Vec<_> = LayerTensor::all().collect();
        assert_eq!(layer_tensors.len(), 18);
        for t in layer_tensors
            .into_iter()
            .map(|t| ModelTensor::Layer(3, t))
            .chain([
                ModelTensor::Embed,
                ModelTensor::FinalNorm,
                ModelTensor::LmHead,
            ])
        {
            assert_eq!(ModelTensor::from_hf_name(&t.hf_name()), Some(t));
        }
        let q_bias = ModelTensor::Layer(0, LayerTensor::Bias(Projection::Q));
        assert_eq!(q_bias.hf_name(), "model.layers.0.self_attn.q_proj.bias");
        assert_eq!(q_bias.gguf_name(), "blk.0.attn_q.bias");
        let k_norm = ModelTensor::Layer(2, LayerTensor::KNorm);
        assert_eq!(k_norm.gguf_name(), "blk.2.attn_k_norm.weight");
        let down = ModelTensor::Layer(1, LayerTensor::Weight(Projection::Down));
        assert_eq!(down.hf_name(), "model.layers.1.mlp.down_proj.weight");
        assert_eq!(down.gguf_name(), "blk.1.ffn_down.weight");
        assert_eq!(
            ModelTensor::from_hf_name("model.layers.x.mlp.up_proj.weight"),
            None
        );
    }
}
