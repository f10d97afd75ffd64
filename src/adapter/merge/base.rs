//! Where the base weights come from: safetensors files or a GGUF file, and the tensors to write.

use anyhow::{bail, Context, Result};
use candle_core::DType;
use std::path::PathBuf;

use crate::model::gguf::{self, GgufFile};
use crate::model::weights::{parse_st_dtype, WeightFiles};
use crate::model::ModelConfig;
use crate::model::WeightSource;
use crate::source::Source;

use candle_core::quantized::GgmlDType;

/// Where the base weights come from.
pub(crate) enum Base {
    /// Safetensors files (a folder or hub snapshot), read block by block.
    Safetensors {
        reader: WeightFiles,
        config_path: PathBuf,
    },
    /// A GGUF file: each tensor is dequantized whole (and llama.cpp's q/k row order undone).
    Gguf(GgufFile),
}

impl Base {
    /// The base `source` names, with its config, checked against its tensors.
    pub(crate) fn open(source: &Source) -> Result<(ModelConfig, Base)> {
        Ok(match source {
            Source::File(path) if gguf::is_gguf(path) => {
                let file = GgufFile::open(path)?;
                let config = file.config()?;
                WeightSource::check_against(&file, &config)?;
                (config, Base::Gguf(file))
            }
            Source::File(path) => bail!(
                "{}: expected a Hugging Face model folder (config.json + safetensors), a .gguf \
                 file or a hub repo id",
                path.display()
            ),
            _ => {
                let config_path = source.require("config.json")?;
                let config = ModelConfig::from_file(&config_path)?;
                let reader = WeightFiles::open(source)?;
                reader.check_against(&config)?;
                (
                    config,
                    Base::Safetensors {
                        reader,
                        config_path,
                    },
                )
            }
        })
    }

    /// The embeddings' stored dtype when it is f32/bf16/f16; f32 for quantized GGUF tensors.
    pub(crate) fn default_dtype(&self) -> Result<DType> {
        Ok(match self {
            Base::Safetensors { reader, .. } => {
                parse_st_dtype(&reader.entry("model.embed_tokens.weight")?.dtype)?.0
            }
            Base::Gguf(file) => match file.ggml_dtype("model.embed_tokens.weight") {
                Some(GgmlDType::F16) => DType::F16,
                Some(GgmlDType::BF16) => DType::BF16,
                _ => DType::F32,
            },
        })
    }

    /// Every tensor to write with its shape: the config's tensors in checkpoint order, then
    /// any other tensor of the safetensors files by name.
    pub(crate) fn tensors(&self, config: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let mut out = config.expected_tensors();
        if let Base::Safetensors { reader, .. } = self {
            let rest: Vec<String> = (reader.names().into_iter())
                .filter(|n| !out.iter().any(|(m, _)| m == n))
                .collect();
            for name in &rest {
                let entry = reader.entry(name)?;
                parse_st_dtype(&entry.dtype).with_context(|| {
                    format!("{}: tensor `{name}`", reader.path_of(entry).display())
                })?;
                out.push((name.clone(), entry.shape.clone()));
            }
            for (name, _) in &config.expected_tensors() {
                let entry = reader.entry(name)?;
                parse_st_dtype(&entry.dtype).with_context(|| {
                    format!("{}: tensor `{name}`", reader.path_of(entry).display())
                })?;
            }
        }
        Ok(out)
    }
}
