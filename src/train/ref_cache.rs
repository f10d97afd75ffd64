//! Reference log-probs computed once and kept on disk, keyed by everything that determines
//! them: the model's files, the reference adapters' weights, the dtype, and the tokenized pairs
//! (which capture the data, the chat template, the truncation and the lengths).
//!
//! An entry is a safetensors file whose metadata records how many rows it holds, a hash of the
//! ordered rows it was computed for, and a checksum of its four arrays, so that a damaged or
//! mismatched entry is detected and recomputed rather than trained on.

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::preference::PairSums;
use crate::data::DpoDataset;
use crate::model::Adapter;

/// FNV-1a, 64 bits: stable across runs and platforms.
#[derive(Clone, Copy)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    pub fn bytes(&mut self, data: &[u8]) -> &mut Self {
        for b in data {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn adapter(&mut self, adapter: &Adapter) -> Result<&mut Self> {
        self.u64(adapter.config.scale().to_bits());
        for v in adapter.vars() {
            let vals: Vec<f32> = v.as_tensor().flatten_all()?.to_vec1()?;
            for x in vals {
                self.u64(x.to_bits() as u64);
            }
        }
        Ok(self)
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The rows an entry must have been computed for: their number and a hash of their token ids
/// and loss masks in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub count: usize,
    pub hash: String,
}

impl Rows {
    pub fn of(data: &DpoDataset) -> Self {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for e in &data.examples {
            for seq in [&e.chosen(), &e.rejected()] {
                h.update(&(seq.input_ids.len() as u64).to_le_bytes());
                for (id, m) in seq.input_ids.iter().zip(&seq.loss_mask) {
                    h.update(&(((*id as u64) << 1) | u64::from(*m)).to_le_bytes());
                }
            }
        }
        Self {
            count: data.examples.len(),
            hash: format!("{:032x}", h.digest128()),
        }
    }
}

/// What [`load`] found under a key.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    Reused(PairSums),
    Missing,
    /// An entry exists but must not be used; why.
    Rejected(String),
}

/// The cache folder (see [`crate::cache::dir`]).
pub fn cache_dir() -> PathBuf {
    crate::cache::dir()
}

/// Where the entry of `key` lives under the cache folder `dir`.
pub fn entry_path(dir: &Path, key: &str) -> PathBuf {
    dir.join("ref-logps").join(format!("{key}.safetensors"))
}

const ARRAYS: [&str; 4] = ["chosen", "rejected", "chosen_tokens", "rejected_tokens"];

fn arrays(sums: &PairSums) -> [&[f32]; 4] {
    [
        &sums.chosen,
        &sums.rejected,
        &sums.chosen_tokens,
        &sums.rejected_tokens,
    ]
}

/// XXH3-128 of the arrays' little-endian bytes, in [`ARRAYS`] order, each prefixed by its length
/// so that bytes moved from one array to the next change it.
fn checksum(arrays: &[&[u8]]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for a in arrays {
        h.update(&(a.len() as u64).to_le_bytes());
        h.update(a);
    }
    format!("{:032x}", h.digest128())
}

/// The entry of `key` in the cache folder `dir`, if it is intact and was computed for `rows`.
pub fn load(dir: &Path, key: &str, rows: &Rows) -> Lookup {
    let path = entry_path(dir, key);
    if !path.is_file() {
        return Lookup::Missing;
    }
    match std::fs::read(&path) {
        Ok(bytes) => match check(&bytes, rows) {
            Ok(sums) => Lookup::Reused(sums),
            Err(why) => Lookup::Rejected(why),
        },
        Err(e) => Lookup::Rejected(format!("cannot read: {e}")),
    }
}

fn check(bytes: &[u8], rows: &Rows) -> std::result::Result<PairSums, String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| format!("does not parse: {e}"))?;
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| format!("does not parse: {e}"))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let field = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| format!("no `{k}` in its metadata"))
    };
    let mut data: Vec<&[u8]> = Vec::new();
    for name in ARRAYS {
        let view = st
            .tensor(name)
            .map_err(|_| format!("missing array `{name}`"))?;
        if view.dtype() != Dtype::F32 || view.shape().len() != 1 {
            return Err(format!(
                "array `{name}` is {:?} {:?}, not a 1-D F32 array",
                view.dtype(),
                view.shape()
            ));
        }
        data.push(view.data());
    }
    let lengths: Vec<usize> = data.iter().map(|d| d.len() / 4).collect();
    if lengths.iter().any(|&n| n != lengths[0]) {
        let listed: Vec<String> = ARRAYS
            .iter()
            .zip(&lengths)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        return Err(format!(
            "arrays of different lengths ({})",
            listed.join(", ")
        ));
    }
    if field("xxh3")? != checksum(&data) {
        return Err("checksum mismatch".into());
    }
    let recorded: usize = field("rows")?
        .parse()
        .map_err(|_| "`rows` in its metadata is not a number".to_string())?;
    if recorded != lengths[0] {
        return Err(format!(
            "metadata says {recorded} rows, the arrays hold {}",
            lengths[0]
        ));
    }
    if recorded != rows.count {
        return Err(format!(
            "it has {recorded} rows, the data has {}",
            rows.count
        ));
    }
    if field("rows_xxh3")? != rows.hash {
        return Err("its rows are other pairs or in another order".into());
    }
    let floats = |d: &[u8]| -> Vec<f32> {
        d.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    Ok(PairSums {
        chosen: floats(data[0]),
        rejected: floats(data[1]),
        chosen_tokens: floats(data[2]),
        rejected_tokens: floats(data[3]),
        pair_weights: Vec::new(),
    })
}

/// Writes the entry of `key` for `rows` (through a temporary name, so a reader never sees half
/// of it).
pub fn store(dir: &Path, key: &str, rows: &Rows, sums: &PairSums) -> Result<PathBuf> {
    let path = entry_path(dir, key);
    let arrays = arrays(sums);
    if arrays.iter().any(|a| a.len() != rows.count) {
        bail!(
            "reference log-probs of {} pairs, but {} rows to cache",
            sums.chosen.len(),
            rows.count
        );
    }
    let bytes: Vec<Vec<u8>> = arrays
        .iter()
        .map(|a| a.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let metadata: HashMap<String, String> = [
        ("format", "lora-dpo reference log-probs".to_string()),
        ("rows", rows.count.to_string()),
        ("rows_xxh3", rows.hash.clone()),
        (
            "xxh3",
            checksum(&bytes.iter().map(Vec::as_slice).collect::<Vec<_>>()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let views = ARRAYS
        .iter()
        .zip(&bytes)
        .map(|(name, b)| {
            Ok((
                *name,
                safetensors::tensor::TensorView::new(Dtype::F32, vec![rows.count], b)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let file = safetensors::serialize(views, Some(metadata))?;
    let folder = path.parent().context("cache entry has no folder")?;
    std::fs::create_dir_all(folder)
        .with_context(|| format!("{}: cannot create", folder.display()))?;
    let tmp = folder.join(format!(".{key}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, file).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(path)
}
