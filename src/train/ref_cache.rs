//! Reference log-probs computed once and kept on disk, keyed by everything that determines
//! them: the model's files, the reference adapters' weights, the dtype, and the tokenized pairs
//! (which capture the data, the chat template, the truncation and the lengths).

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
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

    /// A file's length and first MiB (weights are too large to read whole for a cache key).
    pub fn file_head(&mut self, path: &Path) -> Result<&mut Self> {
        use std::io::Read;
        let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
        let len = f.metadata()?.len();
        let mut head = vec![0u8; (len.min(1 << 20)) as usize];
        f.read_exact(&mut head)?;
        Ok(self.u64(len).bytes(&head))
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

    pub fn pairs(&mut self, data: &DpoDataset) -> &mut Self {
        for e in &data.examples {
            for seq in [&e.chosen, &e.rejected] {
                self.u64(seq.input_ids.len() as u64);
                for (id, m) in seq.input_ids.iter().zip(&seq.loss_mask) {
                    self.u64(((*id as u64) << 1) | u64::from(*m));
                }
            }
        }
        self
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The cache folder (see [`crate::cache::dir`]).
pub fn cache_dir() -> PathBuf {
    crate::cache::dir()
}

fn path_for(key: &str) -> PathBuf {
    cache_dir()
        .join("ref-logps")
        .join(format!("{key}.safetensors"))
}

pub fn load(key: &str) -> Result<Option<PairSums>> {
    let path = path_for(key);
    if !path.is_file() {
        return Ok(None);
    }
    let t =
        candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| anyhow::anyhow!("{e}"))?;
    let get = |k: &str| -> Result<Vec<f32>> {
        Ok(t.get(k)
            .with_context(|| format!("{}: no {k}", path.display()))?
            .to_vec1()?)
    };
    Ok(Some(PairSums {
        chosen: get("chosen")?,
        rejected: get("rejected")?,
        chosen_tokens: get("chosen_tokens")?,
        rejected_tokens: get("rejected_tokens")?,
    }))
}

pub fn store(key: &str, sums: &PairSums) -> Result<PathBuf> {
    let path = path_for(key);
    let dir = path.parent().expect("has a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let t = |v: &Vec<f32>| Tensor::from_slice(v, v.len(), &Device::Cpu);
    let data = vec![
        ("chosen".to_string(), t(&sums.chosen)?),
        ("rejected".to_string(), t(&sums.rejected)?),
        ("chosen_tokens".to_string(), t(&sums.chosen_tokens)?),
        ("rejected_tokens".to_string(), t(&sums.rejected_tokens)?),
    ];
    let tmp = path.with_extension("tmp");
    crate::adapter::peft::write_safetensors(&data, &tmp)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}
