//! Reading Hugging Face safetensors weights (one file or shards with an index) by positioned
//! reads, with errors that name the file and the tensor.
//!
//! Not memory-mapped: the pages of a mapped shard count as the process's memory until it is
//! unmapped, so loading (and quantizing) a 7B model through mmap peaked at the size of the
//! shards on top of the model. A positioned read copies one tensor out of the page cache and
//! leaves nothing behind.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::source::Source;

/// Where a tensor lies in its safetensors file.
pub struct Entry {
    file: usize,
    /// The safetensors dtype name (F32, BF16, ...).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// Safetensors files, their headers parsed, and which file holds each tensor.
pub struct WeightFiles {
    files: Vec<(PathBuf, File)>,
    entries: HashMap<String, Entry>,
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
        let mut entries = HashMap::new();
        for path in paths {
            let file =
                File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
            let header = read_header(&file).with_context(|| {
                format!(
                    "{}: not a valid safetensors file (truncated or corrupt?)",
                    path.display()
                )
            })?;
            for (name, entry) in header {
                entries.insert(
                    name,
                    Entry {
                        file: files.len(),
                        ..entry
                    },
                );
            }
            files.push((path.clone(), file));
        }
        Ok(Self { files, entries })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Names of all tensors, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.entries.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    /// Where tensor `name` lies.
    pub fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).with_context(|| {
            let files: Vec<String> = self.paths().map(|p| p.display().to_string()).collect();
            format!("tensor `{name}` not found in {}", files.join(", "))
        })
    }

    /// The file that holds `entry`.
    pub fn path_of(&self, entry: &Entry) -> &Path {
        &self.files[entry.file].0
    }

    /// The stored shape of `name`.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.entry(name)?.shape.clone())
    }

    /// Checks that every tensor the config calls for is present with the right shape,
    /// reading headers only.
    pub fn check_against(&self, config: &super::ModelConfig) -> Result<()> {
        for (name, shape) in config.expected_tensors() {
            self.check_shape(&name, &shape)?;
        }
        Ok(())
    }

    fn check_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        let entry = self.entry(name)?;
        if entry.shape != shape {
            bail!(
                "{}: tensor `{name}` has shape {:?}, expected {shape:?} from config.json",
                self.path_of(entry).display(),
                entry.shape
            );
        }
        Ok(())
    }

    /// The dtype `name` is stored in, as safetensors names it (F32, BF16, ...).
    pub fn stored_dtype(&self, name: &str) -> Result<String> {
        Ok(self.entry(name)?.dtype.clone())
    }

    /// `len` bytes of tensor `name`, starting `offset` bytes into its data.
    pub fn read_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let e = self.entry(name)?;
        let (path, file) = &self.files[e.file];
        if e.start + offset + len as u64 > e.end {
            bail!(
                "{}: tensor `{name}` is shorter than its shape {:?} says",
                path.display(),
                e.shape
            );
        }
        let mut buf = vec![0u8; len];
        read_exact_at(file, &mut buf, e.start + offset)
            .with_context(|| format!("{}: reading tensor `{name}`", path.display()))?;
        Ok(buf)
    }

    /// Loads `name`, checks its shape and converts it to `dtype` on `device`.
    pub fn load(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        self.check_shape(name, shape)?;
        let entry = self.entry(name)?;
        let path = self.path_of(entry);
        let (stored, _) = parse_st_dtype(&entry.dtype)
            .with_context(|| format!("{}: tensor `{name}`", path.display()))?;
        // Read straight into the tensor's own buffer: a 7B model's embeddings are 400 MB.
        let t = match stored {
            DType::F32 => self.read_typed::<f32>(name, shape)?,
            DType::BF16 => self.read_typed::<half::bf16>(name, shape)?,
            DType::F16 => self.read_typed::<half::f16>(name, shape)?,
            _ => self.read_typed::<f64>(name, shape)?,
        };
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }

    /// Tensor `name` of the stored element type `T` (little-endian on disk, as on every host
    /// candle runs on), read into its buffer with no intermediate copy.
    fn read_typed<T: candle_core::WithDType + bytemuck::Pod>(
        &self,
        name: &str,
        shape: &[usize],
    ) -> Result<Tensor> {
        let e = self.entry(name)?;
        let (path, file) = &self.files[e.file];
        let n: usize = shape.iter().product();
        let mut values = vec![T::zero(); n];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut values);
        if e.end - e.start != bytes.len() as u64 {
            bail!(
                "{}: tensor `{name}` has {} bytes for its shape {shape:?}",
                path.display(),
                e.end - e.start
            );
        }
        read_exact_at(file, bytes, e.start)
            .with_context(|| format!("{}: reading tensor `{name}`", path.display()))?;
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    }
}

/// The tensors a safetensors file's header lists (file index left 0).
fn read_header(file: &File) -> Result<Vec<(String, Entry)>> {
    let mut len = [0u8; 8];
    read_exact_at(file, &mut len, 0).context("no header")?;
    let n = u64::from_le_bytes(len);
    let file_len = file.metadata()?.len();
    if n > file_len.saturating_sub(8) || n > 100_000_000 {
        bail!("header size {n} is impossible");
    }
    let mut header = vec![0u8; n as usize];
    read_exact_at(file, &mut header, 8)?;
    let json: serde_json::Map<String, Value> =
        serde_json::from_slice(&header).context("the header is not JSON")?;
    let data_start = 8 + n;
    let mut out = Vec::with_capacity(json.len());
    for (name, info) in json {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info
            .get("dtype")
            .and_then(Value::as_str)
            .with_context(|| format!("tensor `{name}` has no dtype"))?
            .to_string();
        let shape: Vec<usize> =
            serde_json::from_value(info.get("shape").cloned().unwrap_or(Value::Null))
                .with_context(|| format!("tensor `{name}`: bad shape"))?;
        let offs: [u64; 2] =
            serde_json::from_value(info.get("data_offsets").cloned().unwrap_or(Value::Null))
                .with_context(|| format!("tensor `{name}`: bad data_offsets"))?;
        let (start, end) = (data_start + offs[0], data_start + offs[1]);
        if offs[0] > offs[1] || end > file_len {
            bail!("tensor `{name}` lies outside the file");
        }
        if let Ok((_, size)) = parse_st_dtype(&dtype) {
            let want = shape.iter().product::<usize>() as u64 * size as u64;
            if end - start != want {
                bail!(
                    "tensor `{name}` has {} bytes, its shape {shape:?} in {dtype} needs {want}",
                    end - start
                );
            }
        }
        out.push((
            name,
            Entry {
                file: 0,
                dtype,
                shape,
                start,
                end,
            },
        ));
    }
    Ok(out)
}

/// The candle dtype and element size of a safetensors dtype name.
pub fn parse_st_dtype(name: &str) -> Result<(DType, usize)> {
    Ok(match name {
        "F32" => (DType::F32, 4),
        "BF16" => (DType::BF16, 2),
        "F16" => (DType::F16, 2),
        "F64" => (DType::F64, 8),
        other => bail!("tensors stored as {other} are not supported (only F32, BF16, F16, F64)"),
    })
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

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}
