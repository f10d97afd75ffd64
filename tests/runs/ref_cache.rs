//! The reference log-prob cache (`precompute_ref_log_probs`): an entry that is damaged, of other
//! rows or incomplete is reported and recomputed, never used; its key covers the whole content of
//! the weight files. Library checks on the entry format, and DPO runs of the built binary on the
//! tiny Llama fixture (each with its own cache folder, so no test shares process-wide state).

use crate::common;

use lora_dpo::train::preference::PairSums;
use lora_dpo::train::ref_cache::{self, Lookup, Rows};
use std::path::{Path, PathBuf};
use std::process::Command;

fn sums(n: usize) -> PairSums {
    let v = |k: f32| (0..n).map(|i| k * (i as f32 + 1.0)).collect::<Vec<_>>();
    PairSums {
        chosen: v(-1.5),
        rejected: v(-2.25),
        chosen_tokens: v(3.0),
        rejected_tokens: v(4.0),
        // The policy's weights: never cached.
        pair_weights: Vec::new(),
    }
}

fn rows(n: usize, hash: &str) -> Rows {
    Rows {
        count: n,
        hash: hash.into(),
    }
}

fn rejected(lookup: Lookup) -> String {
    match lookup {
        Lookup::Rejected(why) => why,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// The byte offset where an entry's arrays start (after the length and the JSON header).
fn data_start(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

/// A safetensors file with the given arrays and metadata, written by hand.
fn write_entry(path: &Path, arrays: &[(&str, Vec<f32>)], metadata: &[(&str, &str)]) {
    let bytes: Vec<Vec<u8>> = arrays
        .iter()
        .map(|(_, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<_> = arrays
        .iter()
        .zip(&bytes)
        .map(|((name, v), b)| {
            (
                *name,
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![v.len()], b)
                    .unwrap(),
            )
        })
        .collect();
    let meta = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

#[test]
fn an_intact_entry_is_reused_and_an_absent_one_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let r = rows(3, "abc");
    assert_eq!(ref_cache::load(dir.path(), "k", &r), Lookup::Missing);
    ref_cache::store(dir.path(), "k", &r, &sums(3)).unwrap();
    assert_eq!(
        ref_cache::load(dir.path(), "k", &r),
        Lookup::Reused(sums(3))
    );
    // Nothing left behind under a temporary name.
    let names: Vec<_> = std::fs::read_dir(dir.path().join("ref-logps"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("k.safetensors")]);
}

#[test]
fn flipped_bytes_in_the_arrays_are_a_checksum_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let r = rows(3, "abc");
    let path = ref_cache::store(dir.path(), "k", &r, &sums(3)).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    // The lowest mantissa bit of one value: still a plausible float.
    let at = data_start(&bytes) + 4;
    bytes[at] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(
        rejected(ref_cache::load(dir.path(), "k", &r)),
        "checksum mismatch"
    );
}

#[test]
fn a_truncated_entry_does_not_parse() {
    let dir = tempfile::tempdir().unwrap();
    let r = rows(3, "abc");
    let path = ref_cache::store(dir.path(), "k", &r, &sums(3)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    let why = rejected(ref_cache::load(dir.path(), "k", &r));
    assert!(why.starts_with("does not parse"), "{why}");
}

#[test]
fn an_entry_of_fewer_rows_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    ref_cache::store(dir.path(), "k", &rows(1, "abc"), &sums(1)).unwrap();
    assert_eq!(
        rejected(ref_cache::load(dir.path(), "k", &rows(3, "abc"))),
        "it has 1 rows, the data has 3"
    );
}

#[test]
fn an_entry_of_other_rows_or_another_order_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    ref_cache::store(dir.path(), "k", &rows(3, "abc"), &sums(3)).unwrap();
    assert_eq!(
        rejected(ref_cache::load(dir.path(), "k", &rows(3, "cba"))),
        "its rows are other pairs or in another order"
    );
}

#[test]
fn a_missing_array_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let s = sums(2);
    write_entry(
        &ref_cache::entry_path(dir.path(), "k"),
        &[
            ("chosen", s.chosen.clone()),
            ("rejected", s.rejected.clone()),
            ("chosen_tokens", s.chosen_tokens.clone()),
        ],
        &[("rows", "2"), ("rows_xxh3", "abc"), ("xxh3", "0")],
    );
    assert_eq!(
        rejected(ref_cache::load(dir.path(), "k", &rows(2, "abc"))),
        "missing array `rejected_tokens`"
    );
}

#[test]
fn arrays_of_different_lengths_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let s = sums(2);
    write_entry(
        &ref_cache::entry_path(dir.path(), "k"),
        &[
            ("chosen", s.chosen.clone()),
            ("rejected", vec![-1.0]),
            ("chosen_tokens", s.chosen_tokens.clone()),
            ("rejected_tokens", s.rejected_tokens.clone()),
        ],
        &[("rows", "2"), ("rows_xxh3", "abc"), ("xxh3", "0")],
    );
    assert_eq!(
        rejected(ref_cache::load(dir.path(), "k", &rows(2, "abc"))),
        "arrays of different lengths (chosen 2, rejected 1, chosen_tokens 2, rejected_tokens 2)"
    );
}

#[test]
fn an_entry_without_a_checksum_is_rejected() {
    // As written before entries carried one.
    let dir = tempfile::tempdir().unwrap();
    let s = sums(2);
    write_entry(
        &ref_cache::entry_path(dir.path(), "k"),
        &[
            ("chosen", s.chosen.clone()),
            ("rejected", s.rejected.clone()),
            ("chosen_tokens", s.chosen_tokens.clone()),
            ("rejected_tokens", s.rejected_tokens.clone()),
        ],
        &[("format", "pt")],
    );
    assert_eq!(
        rejected(ref_cache::load(dir.path(), "k", &rows(2, "abc"))),
        "no `xxh3` in its metadata"
    );
}

#[test]
fn storing_sums_of_another_row_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(ref_cache::store(dir.path(), "k", &rows(3, "abc"), &sums(2)).is_err());
    assert_eq!(
        ref_cache::load(dir.path(), "k", &rows(3, "abc")),
        Lookup::Missing
    );
}

/// A folder with a DPO config using precomputed reference log-probs, and its own cache.
struct DpoRuns {
    dir: tempfile::TempDir,
    runs: usize,
}

impl DpoRuns {
    fn new(model: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"
[model]
name_or_path = "{model}"
device = "cpu"
[lora]
r = 4
lora_alpha = 8
lora_dropout = 0.1
[dpo]
train_file = "{data}"
learning_rate = 0.01
max_steps = 3
per_device_train_batch_size = 2
per_device_eval_batch_size = 2
save_steps = 0
logging_steps = 1
precompute_ref_log_probs = true
[output]
seed = 5
"#,
            model = model.display(),
            data = common::fixture_str("train/prefs.jsonl"),
        );
        std::fs::write(dir.path().join("run.toml"), config).unwrap();
        Self { dir, runs: 0 }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The one cache entry (its path), after the first run.
    fn entry(&self) -> PathBuf {
        let entries: Vec<PathBuf> = std::fs::read_dir(self.cache().join("ref-logps"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        entries.into_iter().next().unwrap()
    }

    /// A run into a fresh output folder: its stderr and final adapter.
    fn run(&mut self) -> (String, Vec<u8>) {
        self.runs += 1;
        let out = self.dir.path().join(format!("out-{}", self.runs));
        let result = Command::new(env!("CARGO_BIN_EXE_lora-dpo"))
            .arg("dpo")
            .arg("--config")
            .arg(self.dir.path().join("run.toml"))
            .arg("--no-progress")
            .arg("--set")
            .arg(format!("output.dir=\"{}\"", out.display()))
            .env("LORA_DPO_CACHE", self.cache())
            .env_remove("LORA_DPO_FAULT")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr).to_string();
        assert!(!stderr.contains("panicked"), "panic: {stderr}");
        assert!(result.status.success(), "{stderr}");
        let adapter = std::fs::read(out.join("dpo/adapter/adapter_model.safetensors")).unwrap();
        (stderr, adapter)
    }
}

#[test]
fn damaged_entries_are_reported_recomputed_and_train_bit_identical() {
    let mut runs = DpoRuns::new(&common::fixture("models/tiny-llama"));
    let (first, expected) = runs.run();
    assert!(
        first.contains("reference log-probs: computing them"),
        "{first}"
    );
    let entry = runs.entry();

    // (e) Unchanged: reused, and the same training.
    let (err, adapter) = runs.run();
    assert!(err.contains("reusing the cached ones"), "{err}");
    assert!(adapter == expected, "a reused entry trained differently");

    let corrupt = |why: &str| format!("{}: corrupt ({why}", entry.display());

    // (a) Flipped bytes in the arrays.
    let mut bytes = std::fs::read(&entry).unwrap();
    let at = data_start(&bytes) + 8;
    bytes[at] ^= 0x10;
    std::fs::write(&entry, &bytes).unwrap();
    let (err, adapter) = runs.run();
    assert!(
        err.contains(&(corrupt("checksum mismatch") + "); recomputing")),
        "{err}"
    );
    assert!(
        adapter == expected,
        "recomputed after a flip: weights differ"
    );
    let (err, _) = runs.run();
    assert!(
        err.contains("reusing the cached ones"),
        "not rewritten: {err}"
    );

    // (b) Truncated.
    let bytes = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &bytes[..bytes.len() / 2]).unwrap();
    let (err, adapter) = runs.run();
    assert!(err.contains(&corrupt("does not parse")), "{err}");
    assert!(
        adapter == expected,
        "recomputed after a cut: weights differ"
    );

    // (c) One row where the data has five, intact otherwise: a panic before.
    let key = entry.file_stem().unwrap().to_str().unwrap().to_string();
    ref_cache::store(&runs.cache(), &key, &rows(1, "abc"), &sums(1)).unwrap();
    let (err, adapter) = runs.run();
    assert!(
        err.contains(&corrupt("it has 1 rows, the data has 5")),
        "{err}"
    );
    assert!(
        adapter == expected,
        "recomputed after too few rows: weights differ"
    );
}

/// A copy of the tiny Llama whose weight file has 1.5 MiB of header padding (allowed by the
/// safetensors format), so that its weights lie beyond the first MiB.
fn padded_model_copy(to: &Path) -> PathBuf {
    let from = common::fixture("models/tiny-llama");
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(&from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    let weights = to.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    let start = data_start(&bytes);
    let mut header = bytes[8..start].to_vec();
    header.resize(header.len() + (3 << 19), b' ');
    let mut padded = (header.len() as u64).to_le_bytes().to_vec();
    padded.extend_from_slice(&header);
    padded.extend_from_slice(&bytes[start..]);
    std::fs::write(&weights, padded).unwrap();
    weights
}

#[test]
fn a_weight_file_changed_beyond_its_first_mib_gets_another_key() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = padded_model_copy(&tmp.path().join("model"));
    let mut runs = DpoRuns::new(&tmp.path().join("model"));
    let (first, _) = runs.run();
    assert!(first.contains("computing them"), "{first}");

    // Same path, same size, one weight's lowest mantissa bit flipped.
    let mut bytes = std::fs::read(&weights).unwrap();
    let len = bytes.len();
    assert!(data_start(&bytes) > 1 << 20);
    bytes[len - 4] ^= 1;
    std::fs::write(&weights, &bytes).unwrap();
    // A new modification time even where the clock is coarse.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_eq!(std::fs::metadata(&weights).unwrap().len() as usize, len);

    let (err, _) = runs.run();
    assert!(
        err.contains("computing them") && !err.contains("reusing"),
        "served the entry of the old weights: {err}"
    );
    assert_eq!(
        std::fs::read_dir(runs.cache().join("ref-logps"))
            .unwrap()
            .count(),
        2
    );
}
