//! Reading dataset files: JSONL, JSON (an array of rows) and Parquet, from one file or a folder of split files.
//!
//! Every row comes back as a JSON object with the place it came from, so that later stages can name the file and
//! line (JSONL) or row (JSON array, Parquet) in their errors.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

/// Where a row comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowLoc {
    pub file: Arc<PathBuf>,
    pub pos: Pos,
}

/// Position of a row inside its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pos {
    /// 1-based line of a JSONL file, as editors number lines.
    Line(usize),
    /// 0-based row of a Parquet file or JSON array, as `datasets` indexes rows (`dataset[i]`).
    Row(usize),
}

impl fmt::Display for RowLoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Pos::Line(n) => write!(f, "{}, line {n}", self.file.display()),
            Pos::Row(n) => write!(f, "{}, row {n}", self.file.display()),
        }
    }
}

/// A problem with one row: where, which field (if any) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub loc: RowLoc,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}, field `{field}`: {}", self.loc, self.message),
            None => write!(f, "{}: {}", self.loc, self.message),
        }
    }
}

impl std::error::Error for BadRow {}

impl BadRow {
    pub fn new(loc: &RowLoc, field: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            loc: loc.clone(),
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
}

/// One row as read from its file: a JSON object, or the reason it could not be read.
#[derive(Debug, Clone)]
pub struct RawRow {
    pub loc: RowLoc,
    pub value: std::result::Result<Map<String, Value>, BadRow>,
}

/// The rows of a dataset, with the files they came from.
#[derive(Debug, Clone, Default)]
pub struct RawDataset {
    pub files: Vec<PathBuf>,
    pub rows: Vec<RawRow>,
}

const EXTENSIONS: [&str; 3] = ["jsonl", "json", "parquet"];

/// Reads a dataset file, or every data file under a folder (recursively, sorted by path).
///
/// In a folder, files are grouped by split: the part of the name before the first `-` or `.`
/// (`train-00000-of-00001.parquet`, `train.jsonl`) or the name of the folder holding them (`train/0.jsonl`).
/// `split` selects one; without it, `train` is used when the folder holds several splits.
///
/// File-level problems (missing file, empty file, a JSON file that does not parse, a corrupt Parquet file) are
/// errors; problems with single rows are kept in [`RawRow::value`] so that they can be skipped.
pub fn read_dataset(path: &Path, split: Option<&str>) -> Result<RawDataset> {
    let files = list_files(path, split)?;
    let mut out = RawDataset::default();
    for file in &files {
        let rows = read_file(file)?;
        out.rows.extend(rows);
    }
    out.files = files;
    Ok(out)
}

/// The data files `read_dataset` would read.
pub fn list_files(path: &Path, split: Option<&str>) -> Result<Vec<PathBuf>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    walk(path, &mut files).with_context(|| format!("cannot list {}", path.display()))?;
    files.sort();
    if files.is_empty() {
        bail!(
            "{}: folder has no data files (.jsonl, .json or .parquet)",
            path.display()
        );
    }
    let split_of = |f: &PathBuf| split_of(f, split);
    let mut splits: Vec<String> = files.iter().map(split_of).collect();
    splits.sort();
    splits.dedup();
    let wanted = match split {
        Some(s) => Some(s.to_string()),
        None if splits.len() > 1 && splits.iter().any(|s| s == "train") => {
            Some("train".to_string())
        }
        None => None,
    };
    if let Some(wanted) = wanted {
        files.retain(|f| split_of(f) == wanted);
        if files.is_empty() {
            bail!(
                "{}: no data files for split `{wanted}` (found splits: {})",
                path.display(),
                splits
                    .iter()
                    .map(|s| if s.is_empty() { "(none)" } else { s.as_str() })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(files)
}

/// Split names recognised without being asked for.
const KNOWN_SPLITS: &[&str] = &["train", "test", "validation", "valid", "eval", "dev"];

/// The split a data file belongs to: the part of its name before the first `-` or `.`, else the
/// name of its folder, when that is a known split name or the one `wanted` (hub datasets name
/// theirs freely: `train_prefs-00000-of-00001.parquet`, `default/train_sft/0000.parquet`).
fn split_of(f: &Path, wanted: Option<&str>) -> String {
    let is_split = |n: &str| KNOWN_SPLITS.contains(&n) || wanted == Some(n);
    let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let stem = name.split(['-', '.']).next().unwrap_or("");
    if is_split(stem) {
        return stem.to_string();
    }
    f.parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .filter(|n| is_split(n))
        .map(str::to_string)
        .unwrap_or_default()
}

/// Whether `path` (a data file's name in a folder or repo) holds rows of `split`.
pub fn split_matches(path: &Path, split: &str) -> bool {
    let data = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e));
    data && split_of(path, Some(split)) == split
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let p = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk(&p, out)?;
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e))
        {
            out.push(p);
        }
    }
    Ok(())
}

/// Reads one file, choosing the format from its extension (`.jsonl`, `.json`, `.parquet`).
pub fn read_file(path: &Path) -> Result<Vec<RawRow>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let file = Arc::new(path.to_path_buf());
    let rows = match ext {
        "jsonl" | "ndjson" => read_jsonl(&file)?,
        "json" => read_json(&file)?,
        "parquet" => read_parquet(&file)?,
        _ => bail!(
            "{}: unknown data file type (expected .jsonl, .json or .parquet)",
            path.display()
        ),
    };
    if rows.is_empty() {
        bail!("{}: the file is empty (no rows)", path.display());
    }
    Ok(rows)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Describes a JSON value's type for error messages (`a string`, `an array`, …).
pub fn describe(v: &Value) -> &'static str {
    json_kind(v)
}

/// A row read but not yet parsed: JSONL lines are parsed by the caller (in parallel), other formats come parsed.
#[derive(Debug)]
pub struct PendingRow {
    pub loc: RowLoc,
    body: Body,
}

#[derive(Debug)]
enum Body {
    Line(String),
    Parsed(std::result::Result<Map<String, Value>, BadRow>),
}

impl From<RawRow> for PendingRow {
    fn from(r: RawRow) -> Self {
        Self {
            loc: r.loc,
            body: Body::Parsed(r.value),
        }
    }
}

impl PendingRow {
    /// Bytes of raw text still held (a JSONL line), for progress.
    pub fn text_bytes(&self) -> usize {
        match &self.body {
            Body::Line(l) => l.len() + 1,
            Body::Parsed(_) => 0,
        }
    }

    /// Parses the row (a JSONL line) into its JSON object, or the reason it is bad.
    pub fn parse(self) -> RawRow {
        let value = match self.body {
            Body::Parsed(v) => v,
            Body::Line(line) => parse_line(&line, &self.loc),
        };
        RawRow {
            loc: self.loc,
            value,
        }
    }
}

fn parse_line(line: &str, loc: &RowLoc) -> std::result::Result<Map<String, Value>, BadRow> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(BadRow::new(
            loc,
            None,
            format!("expected a JSON object, got {}", json_kind(&other)),
        )),
        Err(e) => Err(BadRow::new(loc, None, format!("not JSON: {e}"))),
    }
}

/// The rows of one file, read as they are asked for, so that a big JSONL file is never held whole. JSON arrays
/// and Parquet files are read whole (a JSON array cannot be split before it is parsed).
pub type RowStream = Box<dyn Iterator<Item = Result<PendingRow>> + Send>;

/// Opens one data file for [`RowStream`] reading; an empty file is an error when the stream ends without a row.
pub fn stream_file(path: &Path) -> Result<RowStream> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !matches!(ext, "jsonl" | "ndjson") {
        let rows = read_file(path)?;
        return Ok(Box::new(rows.into_iter().map(|r| Ok(PendingRow::from(r)))));
    }
    Ok(Box::new(JsonlLines::open(path)?))
}

struct JsonlLines {
    file: Arc<PathBuf>,
    reader: std::io::BufReader<std::fs::File>,
    line: usize,
    rows: usize,
    done: bool,
}

impl JsonlLines {
    fn open(path: &Path) -> Result<Self> {
        let f =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Self {
            file: Arc::new(path.to_path_buf()),
            reader: std::io::BufReader::with_capacity(1 << 20, f),
            line: 0,
            rows: 0,
            done: false,
        })
    }
}

impl Iterator for JsonlLines {
    type Item = Result<PendingRow>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::io::BufRead;
        while !self.done {
            let mut buf = Vec::new();
            match self.reader.read_until(b'\n', &mut buf) {
                Ok(0) => {
                    self.done = true;
                    if self.rows == 0 {
                        return Some(Err(anyhow::anyhow!(
                            "{}: the file is empty (no rows)",
                            self.file.display()
                        )));
                    }
                    return None;
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(anyhow::Error::new(e)
                        .context(format!("cannot read {}", self.file.display()))));
                }
            }
            self.line += 1;
            let text = match String::from_utf8(buf) {
                Ok(t) => t,
                Err(e) => {
                    self.done = true;
                    return Some(Err(anyhow::anyhow!(
                        "{}: not UTF-8 text (line {}: {})",
                        self.file.display(),
                        self.line,
                        e.utf8_error()
                    )));
                }
            };
            let mut text = text.as_str();
            // A UTF-8 byte-order mark (some Windows editors write one) is not part of the first row.
            if self.line == 1 {
                text = text.strip_prefix('\u{feff}').unwrap_or(text);
            }
            let text = text.strip_suffix('\n').unwrap_or(text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            if text.trim().is_empty() {
                continue;
            }
            self.rows += 1;
            return Some(Ok(PendingRow {
                loc: RowLoc {
                    file: self.file.clone(),
                    pos: Pos::Line(self.line),
                },
                body: Body::Line(text.to_string()),
            }));
        }
        None
    }
}

/// The first row of a dataset that reads as a JSON object, reading no further than it (to choose the stage).
pub fn first_readable_row(path: &Path, split: Option<&str>) -> Result<Option<Map<String, Value>>> {
    for file in list_files(path, split)? {
        for row in stream_file(&file)? {
            if let Ok(m) = row?.parse().value {
                return Ok(Some(m));
            }
        }
    }
    Ok(None)
}

/// A whole JSONL file, through the same line reader as [`stream_file`].
fn read_jsonl(file: &Arc<PathBuf>) -> Result<Vec<RawRow>> {
    JsonlLines::open(file)?
        .map(|row| Ok(row?.parse()))
        .collect()
}

fn read_json(file: &Arc<PathBuf>) -> Result<Vec<RawRow>> {
    let text = std::fs::read_to_string(file.as_path())
        .with_context(|| format!("cannot read {}", file.display()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    if text.trim().is_empty() {
        bail!("{}: the file is empty (no rows)", file.display());
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", file.display()))?;
    let items = match value {
        Value::Array(items) => items,
        // `datasets` also reads `{"data": [...]}` with `field="data"`; accept that one common wrapper.
        Value::Object(mut m) if m.len() == 1 && matches!(m.get("data"), Some(Value::Array(_))) => {
            match m.remove("data") {
                Some(Value::Array(items)) => items,
                _ => unreachable!(),
            }
        }
        other => bail!(
            "{}: expected a JSON array of rows, got {} (for one row per line, name the file .jsonl)",
            file.display(),
            json_kind(&other)
        ),
    };
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let loc = RowLoc {
                file: file.clone(),
                pos: Pos::Row(i),
            };
            let value = match v {
                Value::Object(m) => Ok(m),
                other => Err(BadRow::new(
                    &loc,
                    None,
                    format!("expected a JSON object, got {}", json_kind(&other)),
                )),
            };
            RawRow { loc, value }
        })
        .collect())
}

fn read_parquet(file: &Arc<PathBuf>) -> Result<Vec<RawRow>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let f = std::fs::File::open(file.as_path())
        .with_context(|| format!("cannot open {}", file.display()))?;
    let reader = SerializedFileReader::new(f)
        .map_err(|e| anyhow::anyhow!("{}: not a readable Parquet file: {e}", file.display()))?;
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| anyhow::anyhow!("{}: cannot read rows: {e}", file.display()))?;
    let mut rows = Vec::new();
    for (i, row) in iter.enumerate() {
        let row =
            row.map_err(|e| anyhow::anyhow!("{}, row {i}: cannot decode: {e}", file.display()))?;
        let loc = RowLoc {
            file: file.clone(),
            pos: Pos::Row(i),
        };
        let mut map = Map::new();
        let mut err = None;
        for (name, field) in row.get_column_iter() {
            match field_to_json(field) {
                Ok(v) => {
                    map.insert(name.clone(), v);
                }
                Err(msg) => {
                    err = Some(BadRow::new(&loc, Some(name), msg));
                    break;
                }
            }
        }
        let value = match err {
            Some(e) => Err(e),
            None => Ok(map),
        };
        rows.push(RawRow { loc, value });
    }
    Ok(rows)
}

fn field_to_json(field: &parquet::record::Field) -> std::result::Result<Value, String> {
    use parquet::record::Field;
    Ok(match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => Value::from(*n),
        Field::Short(n) => Value::from(*n),
        Field::Int(n) => Value::from(*n),
        Field::Long(n) => Value::from(*n),
        Field::UByte(n) => Value::from(*n),
        Field::UShort(n) => Value::from(*n),
        Field::UInt(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float(n) => serde_json::Number::from_f64(f64::from(*n))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Field::Double(n) => serde_json::Number::from_f64(*n)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => return Err("binary data that is not UTF-8 text".to_string()),
        },
        Field::Group(row) => {
            let mut m = Map::new();
            for (name, f) in row.get_column_iter() {
                m.insert(name.clone(), field_to_json(f)?);
            }
            Value::Object(m)
        }
        Field::ListInternal(list) => Value::Array(
            list.elements()
                .iter()
                .map(field_to_json)
                .collect::<std::result::Result<_, _>>()?,
        ),
        Field::MapInternal(map) => {
            let mut m = Map::new();
            for (k, v) in map.entries() {
                let k = match k {
                    Field::Str(s) => s.clone(),
                    other => other.to_string(),
                };
                m.insert(k, field_to_json(v)?);
            }
            Value::Object(m)
        }
        other => Value::String(other.to_string()),
    })
}
