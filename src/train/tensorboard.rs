//! TensorBoard event files (`report_to = ["tensorboard"]`): the metrics of `metrics.jsonl`
//! as scalars under the tags TRL's trainers log (`train/loss`, `eval/rewards/accuracies`, …),
//! and the run's config as a text summary. Files follow TensorFlow's record format: each
//! `Event` protobuf framed by its length and masked CRC32C checksums.
//!
//! A resumed run rewrites the earlier files without the steps after its checkpoint and then
//! writes a new file of its own, so no step is in the folder twice.

use anyhow::{bail, Context, Result};
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `tensorflow/core/util/event.proto`'s `Event` (the fields written here).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow/core/framework/summary.proto`'s `Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `Summary.Value`: a scalar (`simple_value`) or a tensor (text).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    #[prost(message, optional, tag = "8")]
    pub tensor: Option<TensorProto>,
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorflow/core/framework/tensor.proto`'s `TensorProto`, as the text plugin reads it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShape>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShape {
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<TensorDim>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorDim {
    #[prost(int64, tag = "1")]
    pub size: i64,
}

/// TensorFlow's `DT_STRING`.
const DT_STRING: i32 = 7;

/// The folder of a stage's event files.
pub fn runs_dir(stage_dir: &Path) -> PathBuf {
    stage_dir.join("runs")
}

/// TRL's tag of a metric: our `eval_`-prefixed names under `eval/`, the rest under `train/`.
pub fn tag_of(metric: &str) -> String {
    match metric.strip_prefix("eval_") {
        Some(rest) => format!("eval/{rest}"),
        None => format!("train/{metric}"),
    }
}

/// One event file, written to as the run goes.
pub struct EventWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl EventWriter {
    /// A new event file in `dir` (TensorBoard's naming: time, host, pid), opened with the
    /// `file_version` record readers expect first.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        let secs = now().floor() as u64;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let mut n = 0;
        let path = loop {
            let name = format!(
                "events.out.tfevents.{secs}.{host}.{}.{n}",
                std::process::id()
            );
            let p = dir.join(name);
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        let file = std::fs::File::create(&path)
            .with_context(|| format!("{}: cannot create", path.display()))?;
        let mut w = Self { path, file };
        w.write_event(&Event {
            wall_time: now(),
            file_version: Some("brain.Event:2".into()),
            ..Default::default()
        })?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metrics of one step, each under its TRL tag; non-finite values are written as they
    /// are (TensorBoard shows NaN), so a diverging run is visible there too.
    pub fn scalars(&mut self, step: usize, values: &[(String, f64)]) -> Result<()> {
        let value = values
            .iter()
            .map(|(k, v)| SummaryValue {
                tag: tag_of(k),
                simple_value: Some(*v as f32),
                ..Default::default()
            })
            .collect();
        self.write_event(&Event {
            wall_time: now(),
            step: step as i64,
            summary: Some(Summary { value }),
            ..Default::default()
        })
    }

    /// `text` under `tag` for TensorBoard's text plugin (as torch's `add_text` writes it).
    pub fn text(&mut self, step: usize, tag: &str, text: &str) -> Result<()> {
        let value = SummaryValue {
            tag: format!("{tag}/text_summary"),
            tensor: Some(TensorProto {
                dtype: DT_STRING,
                tensor_shape: Some(TensorShape {
                    dim: vec![TensorDim { size: 1 }],
                }),
                string_val: vec![text.as_bytes().to_vec()],
            }),
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData {
                    plugin_name: "text".into(),
                    content: Vec::new(),
                }),
            }),
            ..Default::default()
        };
        self.write_event(&Event {
            wall_time: now(),
            step: step as i64,
            summary: Some(Summary { value: vec![value] }),
            ..Default::default()
        })
    }

    fn write_event(&mut self, event: &Event) -> Result<()> {
        let record = frame(&event.encode_to_vec());
        let context = || format!("{}: cannot write", self.path.display());
        self.file.write_all(&record).with_context(context)?;
        self.file.flush().with_context(context)
    }
}

/// Keeps, in every event file of `dir`, only the events up to `step` (a resumed run writes the
/// rest again). A record cut short by a kill ends its file's reading.
pub fn truncate_after(dir: &Path, step: usize) -> Result<()> {
    for path in event_files(dir)? {
        let kept: Vec<u8> = read_events(&path)?
            .into_iter()
            .filter(|e| e.file_version.is_some() || e.step <= step as i64)
            .flat_map(|e| frame(&e.encode_to_vec()))
            .collect();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, kept).with_context(|| format!("{}: cannot write", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(())
}

/// Removes the event files of an earlier attempt (a run starting at step 0).
pub fn start_anew(dir: &Path) -> Result<()> {
    for path in event_files(dir)? {
        std::fs::remove_file(&path)
            .with_context(|| format!("{}: cannot remove", path.display()))?;
    }
    Ok(())
}

/// The event files in `dir`, in name order (none when it does not exist).
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot list", dir.display())),
    };
    let mut files = Vec::new();
    for entry in entries {
        let p = entry
            .with_context(|| format!("{}: cannot list", dir.display()))?
            .path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("events.out.tfevents.") && !name.ends_with(".tmp") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// The events of one file, each record's checksums verified. A last record cut short (a kill
/// in the middle of a write) is dropped; a corrupt one is an error.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut events = Vec::new();
    let mut at = 0;
    while at + 12 <= bytes.len() {
        let header = &bytes[at..at + 8];
        let len = u64::from_le_bytes(header.try_into().expect("8 bytes")) as usize;
        let header_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        if masked_crc(header) != header_crc {
            bail!("{}: corrupt record header at byte {at}", path.display());
        }
        let data_at = at + 12;
        if data_at + len + 4 > bytes.len() {
            break;
        }
        let data = &bytes[data_at..data_at + len];
        let crc_at = data_at + len;
        let data_crc = u32::from_le_bytes(bytes[crc_at..crc_at + 4].try_into().expect("4 bytes"));
        if masked_crc(data) != data_crc {
            bail!("{}: corrupt record at byte {at}", path.display());
        }
        let event = Event::decode(data)
            .with_context(|| format!("{}: record at byte {at} is not an Event", path.display()))?;
        events.push(event);
        at = crc_at + 4;
    }
    Ok(events)
}

/// TFRecord framing: length, its masked CRC32C, the data, the data's masked CRC32C.
fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// TFRecord's masked CRC32C (a CRC of data holding CRCs is itself weak, hence the rotation).
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // TFRecord's published example: crc32c("") = 0, masked = 0xa282ead8; and
        // crc32c("123456789") = 0xe3069283 (the CRC-32C check value).
        assert_eq!(masked_crc(b""), 0xa282_ead8);
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(
            masked_crc(b"123456789"),
            0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn tags_follow_trl() {
        assert_eq!(tag_of("loss"), "train/loss");
        assert_eq!(tag_of("rewards/chosen"), "train/rewards/chosen");
        assert_eq!(tag_of("eval_rewards/accuracies"), "eval/rewards/accuracies");
    }

    #[test]
    fn events_round_trip_and_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.text(0, "config", "[sft]\nlearning_rate = 1e-4").unwrap();
        for step in 1..=4 {
            w.scalars(step, &[("loss".into(), step as f64 / 10.0)])
                .unwrap();
        }
        let path = w.path().to_path_buf();
        drop(w);
        let events = read_events(&path).unwrap();
        assert_eq!(events.len(), 6);
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        let v = &events[5].summary.as_ref().unwrap().value[0];
        assert_eq!((events[5].step, v.tag.as_str()), (4, "train/loss"));
        assert_eq!(v.simple_value, Some(0.4f32));
        truncate_after(dir.path(), 2).unwrap();
        let steps: Vec<i64> = read_events(&path).unwrap().iter().map(|e| e.step).collect();
        assert_eq!(steps, vec![0, 0, 1, 2]);
    }

    #[test]
    fn a_cut_record_is_dropped_and_a_corrupt_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(1, &[("loss".into(), 0.5)]).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 3]).unwrap();
        assert_eq!(read_events(&path).unwrap().len(), 1);
        let mut bad = full.clone();
        let last = bad.len() - 6;
        bad[last] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        let err = read_events(&path).unwrap_err().to_string();
        assert!(err.contains("corrupt record"), "{err}");
    }
}
