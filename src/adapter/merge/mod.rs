//! Folding LoRA adapters into the base weights and writing a Hugging Face model folder.
//!
//! Streams tensor by tensor: each tensor is read from its file with a plain positioned read
//! (no memory map, so pages already written do not stay resident), merged in f32
//! (`W + scale · B · A` for each adapter in order), cast to the output dtype and written
//! straight into its shard, whose header is computed up front from the shapes. Tensors are
//! processed in blocks of rows, so peak memory is a few blocks, whatever the model or shard
//! size. A GGUF base is dequantized tensor by tensor (q/k rows put back in Hugging Face order)
//! and gets a config.json (and, where the data module can read its tokenizer, tokenizer files)
//! made from its metadata. Everything goes into a temporary folder beside the output, swapped in
//! whole at the end (an old output stays complete under its name until then), under the
//! output's lock. An output that is, holds or sits inside an input is refused.

pub(crate) mod base;
pub(crate) mod blocks;
mod hf_files;
pub(crate) mod shards;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::Adapter;
use crate::source::Source;

use crate::adapter::overlap::{check_apart, Input};

use base::Base;
use hf_files::*;
use shards::*;

/// transformers' default `max_shard_size`.
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 5_000_000_000;

#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// Output dtype; `None` keeps the dtype the embeddings are stored in.
    pub dtype: Option<DType>,
    /// Largest shard in bytes (a single larger tensor gets a shard of its own).
    pub max_shard_size: u64,
    /// Replace an existing non-empty output folder.
    pub overwrite: bool,
    /// Tensors are read, merged and written in blocks of whole rows of about this many bytes
    /// (as f32, at least one row): the working memory, whatever the tensor size.
    pub block_bytes: usize,
    /// Where the adapters were loaded from (folders or hub repo ids): the output must be apart
    /// from each, as from the model.
    pub adapter_sources: Vec<String>,
}

impl Default for MergeOptions {
    fn default() -> Self {
        Self {
            dtype: None,
            max_shard_size: DEFAULT_MAX_SHARD_SIZE,
            overwrite: false,
            block_bytes: 4 << 20,
            adapter_sources: vec![],
        }
    }
}

/// What `merge` wrote.
#[derive(Debug, Clone)]
pub struct MergeReport {
    pub out_dir: PathBuf,
    pub dtype: DType,
    /// `(file name, bytes of tensor data)` of each shard.
    pub shards: Vec<(String, u64)>,
    /// Sum of the tensors' sizes (`metadata.total_size` of the index).
    pub total_size: u64,
    /// Projections that received at least one adapter.
    pub merged_tensors: usize,
    /// Files written besides the weights (copied, or made from GGUF metadata).
    pub copied_files: Vec<String>,
    /// Things the user should know (for example: a GGUF tokenizer that could not be exported).
    pub notes: Vec<String>,
}

/// Parses a shard size such as `5GB`, `500MB`, `64MiB` or a plain number of bytes.
/// KB/MB/GB are powers of 1000 (as transformers reads them), KiB/MiB/GiB powers of 1024.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .with_context(|| format!("size `{text}`: expected a number with an optional unit"))?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("size `{text}`: unknown unit `{other}` (use B, KB, MB, GB, KiB, MiB, GiB)"),
    };
    let bytes = (value * mult).round();
    if bytes < 1.0 {
        bail!("size `{text}` must be at least 1 byte");
    }
    Ok(bytes as u64)
}

/// Folds `adapters` (in order; none = plain conversion) into the base `model_spec` (folder or
/// hub repo id) and writes a Hugging Face folder at `out`.
pub fn merge(
    model_spec: &str,
    adapters: &[Adapter],
    out: &Path,
    options: &MergeOptions,
) -> Result<MergeReport> {
    let source = Source::parse(model_spec)?;
    if options.max_shard_size == 0 {
        bail!("max_shard_size must be at least 1 byte");
    }
    let (config, base) = Base::open(&source)?;
    check_apart(out, &inputs(model_spec, &source, &options.adapter_sources)?)?;
    // Held until the new folder is in place: a second writer fails at once instead of
    // replacing this one's temporary folder or output.
    let _lock = crate::lock::lock_output(out)?;
    if crate::atomic_dir::recover(out)? {
        eprintln!(
            "{}: put back the previous output, which an interrupted replacement had left only \
             under its .old name",
            out.display()
        );
    }
    check_output(out, options.overwrite)?;
    let dtype = match options.dtype {
        Some(d) => d,
        None => base.default_dtype()?,
    };
    for (i, adapter) in adapters.iter().enumerate() {
        if adapter.layers.len() != config.num_hidden_layers {
            bail!(
                "adapter {} has {} layers, the model {}",
                i + 1,
                adapter.layers.len(),
                config.num_hidden_layers
            );
        }
    }
    let plan = plan_shards(&base.tensors(&config)?, dtype, options.max_shard_size);

    let tmp = temp_dir_for(out)?;
    let result = (|| -> Result<MergeReport> {
        let n = plan.len();
        let mut shards = Vec::with_capacity(n);
        let mut weight_map = BTreeMap::new();
        let mut merged_tensors = 0;
        for (k, shard) in plan.iter().enumerate() {
            let file = if n == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{n:05}.safetensors", k + 1)
            };
            merged_tensors += write_shard(
                &tmp.join(&file),
                shard,
                &base,
                adapters,
                dtype,
                options.block_bytes,
            )?;
            for (name, _) in &shard.tensors {
                weight_map.insert(name.clone(), file.clone());
            }
            shards.push((file, shard.bytes));
        }
        let total_size: u64 = shards.iter().map(|(_, b)| b).sum();
        if n > 1 {
            let index = json!({
                "metadata": {"total_size": total_size},
                "weight_map": weight_map,
            });
            std::fs::write(
                tmp.join("model.safetensors.index.json"),
                serde_json::to_string_pretty(&index)? + "\n",
            )?;
        }
        let mut copied_files = Vec::new();
        let mut notes = Vec::new();
        match &base {
            Base::Safetensors { config_path, .. } => {
                write_config(config_path, &tmp.join("config.json"), dtype)?;
                for name in COPIED_FILES {
                    if let Some(p) = source.find(name)? {
                        std::fs::copy(&p, tmp.join(name))
                            .with_context(|| format!("copying {}", p.display()))?;
                        copied_files.push(name.to_string());
                    }
                }
            }
            Base::Gguf(file) => {
                write_json(&tmp.join("config.json"), &hf_config(&config, dtype)?)?;
                let mut generation = serde_json::Map::new();
                if let Some(bos) = config.bos_token_id {
                    generation.insert("bos_token_id".into(), json!(bos));
                }
                match config.eos_token_ids.as_slice() {
                    [] => {}
                    [one] => {
                        generation.insert("eos_token_id".into(), json!(one));
                    }
                    many => {
                        generation.insert("eos_token_id".into(), json!(many));
                    }
                }
                write_json(
                    &tmp.join("generation_config.json"),
                    &Value::Object(generation),
                )?;
                match gguf_tokenizer(file.path(), &tmp) {
                    Ok(files) => copied_files.extend(files),
                    Err(e) => notes.push(format!("no tokenizer files written: {e:#}")),
                }
            }
        }
        Ok(MergeReport {
            out_dir: out.to_path_buf(),
            dtype,
            shards,
            total_size,
            merged_tensors,
            copied_files,
            notes,
        })
    })();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    crate::fault::point("merge-before-swap");
    // check_output allowed an existing folder only when empty or with --overwrite.
    crate::atomic_dir::replace_dir(&tmp, out)?;
    crate::fault::point("merge-after-swap");
    Ok(report)
}

fn file_name(path: &Path) -> Result<String> {
    Ok(path
        .file_name()
        .with_context(|| format!("{}: the output path has no folder name", path.display()))?
        .to_string_lossy()
        .to_string())
}

fn check_output(out: &Path, overwrite: bool) -> Result<()> {
    if out.is_file() {
        bail!("{}: exists and is a file, not a folder", out.display());
    }
    if out.is_dir() && !overwrite {
        let non_empty = std::fs::read_dir(out)
            .with_context(|| format!("{}: cannot read", out.display()))?
            .next()
            .is_some();
        if non_empty {
            bail!(
                "{}: folder exists and is not empty (choose another --out or pass --overwrite)",
                out.display()
            );
        }
    }
    Ok(())
}

/// The model and the adapters as inputs the output must stay apart from.
fn inputs(model_spec: &str, model: &Source, adapters: &[String]) -> Result<Vec<Input>> {
    let role = match model {
        Source::File(_) => "the model file",
        _ => "the model folder",
    };
    let mut inputs: Vec<Input> = Input::of(role, model_spec, "config.json")?
        .into_iter()
        .collect();
    for (i, spec) in adapters.iter().enumerate() {
        let role = format!("the folder of adapter {}", i + 1);
        inputs.extend(Input::of(&role, spec, "adapter_config.json")?);
    }
    Ok(inputs)
}

/// A fresh `.NAME.tmp` folder beside `out` (a stale one is a killed merge's: the lock says no
/// merge is writing it now).
fn temp_dir_for(out: &Path) -> Result<PathBuf> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("{}: cannot create", parent.display()))?;
    let tmp = parent.join(format!(".{}.tmp", file_name(out)?));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| {
            format!("{}: cannot remove a stale temporary folder", tmp.display())
        })?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_transformers() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("0.5 KB").unwrap(), 500);
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }
}
