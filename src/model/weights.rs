//! Reading Hugging Face safetensors weights (one file or shards with an index), with errors
//! that name the file and the tensor.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::source::Source;

/// Memory-mapped safetensors files and which file holds each tensor.
pub struct WeightFiles {
    files: Vec<(PathBuf, candle_core::safetensors::MmapedSafetensors)>,
    location: HashMap<String, usize>,
}

impl WeightFiles {
    /// Opens `model.safetensors`, or the shards named by `model.safetensors.index.json`.
    pub fn open(source: &Source) -> Result<Self> {
        let paths = match source.find("model.safetensors.index.json")? {
            Some(index) => shard_paths(&index, source)?,
            None => match source.find("model.safetensors")? {
                Some(single) => vec![single],
                None => bail!(
                    "{}: no model.safetensors and no model.safetensors.index.json",
                    source.display_name()
                ),
            },
        };
        Self::open_files(&paths)
    }

    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut location = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            // SAFETY: the file is mapped read-only; as with every mmap-based loader, it must not
            // be truncated while we run.
            let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| {
                    format!(
                        "{}: not a valid safetensors file (truncated or corrupt?)",
                        path.display()
                    )
                })?;
            for (name, _) in st.tensors() {
                location.insert(name, i);
            }
            files.push((path.clone(), st));
        }
        Ok(Self { files, location })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// Names of all tensors, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.location.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    fn file_of(
        &self,
        name: &str,
    ) -> Result<&(PathBuf, candle_core::safetensors::MmapedSafetensors)> {
        let idx = self.location.get(name).with_context(|| {
            let files: Vec<String> = self.paths().map(|p| p.display().to_string()).collect();
            format!("tensor `{name}` not found in {}", files.join(", "))
        })?;
        Ok(&self.files[*idx])
    }

    /// The stored shape of `name`.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let (_, st) = self.file_of(name)?;
        let view = st.get(name).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(view.shape().to_vec())
    }

    /// Checks that every tensor the config calls for is present with the right shape,
    /// reading headers only.
    pub fn check_against(&self, config: &super::ModelConfig) -> Result<()> {
        for (name, shape) in config.expected_tensors() {
            let stored = self.shape(&name)?;
            if stored != shape {
                let (path, _) = self.file_of(&name)?;
                bail!(
                    "{}: tensor `{name}` has shape {stored:?}, expected {shape:?} from config.json",
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// The dtype `name` is stored in, as safetensors names it (F32, BF16, ...).
    pub fn stored_dtype(&self, name: &str) -> Result<String> {
        let (_, st) = self.file_of(name)?;
        let view = st.get(name).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(format!("{:?}", view.dtype()))
    }

    /// Loads `name`, checks its shape and converts it to `dtype` on `device`.
    pub fn load(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let (path, st) = self.file_of(name)?;
        let stored = self.shape(name)?;
        if stored != shape {
            bail!(
                "{}: tensor `{name}` has shape {stored:?}, expected {shape:?} from config.json",
                path.display()
            );
        }
        let t = st
            .load(name, device)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("{}: reading tensor `{name}`", path.display()))?;
        t.to_dtype(dtype).map_err(Into::into)
    }
}

fn shard_paths(index: &Path, source: &Source) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("{}: cannot read", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: missing object field `weight_map`", index.display()))?;
    let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    names.sort();
    names.dedup();
    let mut paths = Vec::with_capacity(names.len());
    for name in names {
        let p = source
            .require(name)
            .with_context(|| format!("shard {name} named by {}", index.display()))?;
        paths.push(p);
    }
    Ok(paths)
}
