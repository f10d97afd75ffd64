//! A GGUF (version 3) file written as a stream: the header, the metadata and the tensor
//! directory first (offsets follow from each tensor's type and shape), then each tensor's
//! bytes as they are made, so a writer holds one tensor (or one block of rows) at a time.
//!
//! Layout (ggml's gguf.md): magic `GGUF`, version u32, tensor count u64, metadata count u64;
//! key/value pairs (string key, u32 value type, value); per tensor its name, u32 dimension
//! count, u64 dimensions innermost first, u32 ggml type, u64 offset in the data section; the
//! data section starts at the next multiple of `general.alignment` (32) and each tensor starts
//! at one too.

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

pub const ALIGNMENT: u64 = 32;

/// One tensor of the directory: its GGUF name, its shape as candle orders it (outermost
/// first; written innermost first) and its stored type.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: GgmlDType,
}

impl TensorEntry {
    /// Bytes of its data: whole blocks along the innermost dimension.
    pub fn size(&self) -> Result<u64> {
        let numel: usize = self.shape.iter().product();
        let block = self.dtype.block_size();
        let inner = self.shape.last().copied().unwrap_or(1);
        if !inner.is_multiple_of(block) {
            bail!(
                "tensor `{}`: {inner} columns are not a multiple of {:?}'s block of {block}",
                self.name,
                self.dtype
            );
        }
        Ok((numel / block * self.dtype.type_size()) as u64)
    }
}

/// ggml's number of each type.
pub fn ggml_type_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// A file being written: the directory is fixed at creation, the tensors' bytes follow in
/// its order.
pub struct GgufWriter {
    w: BufWriter<File>,
    entries: Vec<(TensorEntry, u64)>,
    /// The next tensor to write and the bytes of it written so far.
    next: usize,
    written: u64,
    path: std::path::PathBuf,
}

impl GgufWriter {
    pub fn create(
        path: &Path,
        metadata: &[(String, Value)],
        tensors: &[TensorEntry],
    ) -> Result<Self> {
        let file =
            File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut header = Vec::new();
        header.extend_from_slice(b"GGUF");
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            put_string(&mut header, key);
            header.extend_from_slice(&value_type(value)?.to_le_bytes());
            put_value(&mut header, value).with_context(|| format!("metadata `{key}`"))?;
        }
        let mut entries = Vec::with_capacity(tensors.len());
        let mut offset = 0u64;
        for t in tensors {
            put_string(&mut header, &t.name);
            header.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in t.shape.iter().rev() {
                header.extend_from_slice(&(*d as u64).to_le_bytes());
            }
            header.extend_from_slice(&ggml_type_id(t.dtype).to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            entries.push((t.clone(), offset));
            offset = (offset + t.size()?).next_multiple_of(ALIGNMENT);
        }
        header.resize(
            (header.len() as u64).next_multiple_of(ALIGNMENT) as usize,
            0,
        );
        w.write_all(&header)
            .with_context(|| format!("{}: cannot write", path.display()))?;
        Ok(Self {
            w,
            entries,
            next: 0,
            written: 0,
            path: path.to_path_buf(),
        })
    }

    /// Appends bytes of the current tensor; a tensor may come in several pieces.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let Some((entry, _)) = self.entries.get(self.next) else {
            bail!(
                "{}: more tensor data than the directory holds",
                self.path.display()
            );
        };
        let size = entry.size()?;
        if self.written + bytes.len() as u64 > size {
            bail!(
                "tensor `{}`: {} bytes written, the directory says {size}",
                entry.name,
                self.written + bytes.len() as u64
            );
        }
        self.w
            .write_all(bytes)
            .with_context(|| format!("{}: cannot write", self.path.display()))?;
        self.written += bytes.len() as u64;
        if self.written == size {
            let padding = size.next_multiple_of(ALIGNMENT) - size;
            self.w.write_all(&vec![0u8; padding as usize])?;
            self.next += 1;
            self.written = 0;
        }
        Ok(())
    }

    /// The tensor whose bytes come next.
    pub fn current(&self) -> Option<&TensorEntry> {
        self.entries.get(self.next).map(|(e, _)| e)
    }

    /// Checks every tensor was written whole and flushes the file to disk.
    pub fn finish(mut self) -> Result<()> {
        if self.next != self.entries.len() {
            bail!(
                "{}: {} of {} tensors written",
                self.path.display(),
                self.next,
                self.entries.len()
            );
        }
        self.w.flush()?;
        self.w
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
            .with_context(|| format!("{}: cannot sync", self.path.display()))
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// gguf.md's value type numbers.
fn value_type(v: &Value) -> Result<u32> {
    Ok(match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    })
}

fn put_value(out: &mut Vec<u8>, v: &Value) -> Result<()> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            // An empty array's element type does not matter; the others must agree.
            let element = match items.first() {
                Some(first) => value_type(first)?,
                None => 4,
            };
            for item in items {
                if value_type(item)? != element {
                    bail!("an array mixes value types");
                }
            }
            out.extend_from_slice(&element.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Content;
    use candle_core::{Device, Tensor};

    #[test]
    fn candle_reads_back_what_is_written_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let a = Tensor::arange(0f32, 64.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 32))
            .unwrap();
        let qa = candle_core::quantized::QTensor::quantize(&a, GgmlDType::Q8_0).unwrap();
        let metadata = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            (
                "x.list".to_string(),
                Value::Array(vec![Value::I32(1), Value::I32(-2)]),
            ),
        ];
        let tensors = [
            TensorEntry {
                name: "a".into(),
                shape: vec![2, 32],
                dtype: GgmlDType::Q8_0,
            },
            TensorEntry {
                name: "b".into(),
                shape: vec![3],
                dtype: GgmlDType::F32,
            },
        ];
        let mut w = GgufWriter::create(&path, &metadata, &tensors).unwrap();
        let bytes = qa.data().unwrap();
        let (first, second) = bytes.split_at(bytes.len() / 2);
        w.write(first).unwrap();
        w.write(second).unwrap();
        let b_bytes: Vec<u8> = [1f32, 2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        w.write(&b_bytes).unwrap();
        w.finish().unwrap();

        let mut f = File::open(&path).unwrap();
        let content = Content::read(&mut f).unwrap();
        assert_eq!(
            content.metadata["general.architecture"]
                .to_string()
                .unwrap(),
            "llama"
        );
        let a_back = content.tensor(&mut f, "a", &Device::Cpu).unwrap();
        assert_eq!(a_back.shape().dims(), &[2, 32]);
        let d = (a_back.dequantize(&Device::Cpu).unwrap() - qa.dequantize(&Device::Cpu).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
        let b_back = content.tensor(&mut f, "b", &Device::Cpu).unwrap();
        let b_back: Vec<f32> = b_back.dequantize(&Device::Cpu).unwrap().to_vec1().unwrap();
        assert_eq!(b_back, vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn short_or_extra_data_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let tensors = [TensorEntry {
            name: "b".into(),
            shape: vec![2],
            dtype: GgmlDType::F32,
        }];
        let mut w = GgufWriter::create(&path, &[], &tensors).unwrap();
        assert!(w.write(&[0u8; 12]).is_err());
        w.write(&[0u8; 4]).unwrap();
        assert!(w.finish().is_err(), "half a tensor");
    }
}
