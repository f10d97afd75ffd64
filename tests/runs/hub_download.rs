//! Hub datasets fetched through `HF_ENDPOINT` from a small local server that answers as the
//! hub does (the repo listing, then each file's metadata and bytes), into an empty cache.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::common::{self, fixture, fixture_str};

const COMMIT: &str = "5eed5eed";

/// A file the mock hub serves: its URL path and its bytes.
struct Served {
    url: String,
    bytes: Vec<u8>,
}

/// The hub's answers for `owner/prefs`, whose main branch holds both splits as JSON lines,
/// and `owner/viewer`, whose data only exists on the `refs/convert/parquet` branch.
fn hub_files() -> (Vec<(String, String)>, Vec<Served>) {
    let rows = std::fs::read(fixture("train/prefs.jsonl")).unwrap();
    let parquet = std::fs::read(fixture("data/parquet/ultrafeedback_like.parquet")).unwrap();
    let listing = |names: &[&str]| {
        let siblings: Vec<String> = names
            .iter()
            .map(|n| format!("{{\"rfilename\":\"{n}\"}}"))
            .collect();
        format!(
            "{{\"sha\":\"{COMMIT}\",\"siblings\":[{}]}}",
            siblings.join(",")
        )
    };
    let converted = "refs%2Fconvert%2Fparquet";
    let listings = vec![
        (
            "/api/datasets/owner/prefs/revision/main".to_string(),
            listing(&[
                "README.md",
                "data/train_prefs-00000-of-00001.jsonl",
                "data/test_prefs-00000-of-00001.jsonl",
            ]),
        ),
        (
            "/api/datasets/owner/viewer/revision/main".to_string(),
            listing(&["README.md", "loader.py"]),
        ),
        (
            format!("/api/datasets/owner/viewer/revision/{converted}"),
            listing(&["default/train/0000.parquet"]),
        ),
    ];
    let files = vec![
        Served {
            url: "/datasets/owner/prefs/resolve/main/data/train_prefs-00000-of-00001.jsonl".into(),
            bytes: rows.clone(),
        },
        Served {
            url: "/datasets/owner/prefs/resolve/main/data/test_prefs-00000-of-00001.jsonl".into(),
            bytes: rows,
        },
        Served {
            url: format!("/datasets/owner/viewer/resolve/{converted}/default/train/0000.parquet"),
            bytes: parquet,
        },
    ];
    (listings, files)
}

/// Starts the mock hub on a free port; returns its endpoint and the paths it was asked for.
fn start_hub() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    std::thread::spawn(move || {
        let (listings, files) = hub_files();
        for stream in listener.incoming().flatten() {
            answer(stream, &listings, &files, &log);
        }
    });
    (endpoint, asked)
}

fn answer(
    stream: TcpStream,
    listings: &[(String, String)],
    files: &[Served],
    asked: &Mutex<Vec<String>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
    let mut range_start = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        if let Some(range) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let (start, end) = range.trim().split_once('-').unwrap();
            range_start = Some((start.parse::<usize>().unwrap(), end.parse::<usize>().ok()));
        }
    }
    asked.lock().unwrap().push(path.clone());
    let mut out = stream;
    if let Some((_, body)) = listings.iter().find(|(url, _)| *url == path) {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        out.write_all(head.as_bytes()).unwrap();
        out.write_all(body.as_bytes()).unwrap();
        return;
    }
    let Some(file) = files.iter().find(|f| f.url == path) else {
        out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap();
        return;
    };
    let size = file.bytes.len();
    let (start, end) = range_start.unwrap_or((0, None));
    let end = end.unwrap_or(size - 1).min(size - 1);
    let body = &file.bytes[start..=end];
    let head = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{size}\r\n\
         ETag: \"etag-{}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n",
        body.len(),
        path.len() + size
    );
    out.write_all(head.as_bytes()).unwrap();
    out.write_all(body).unwrap();
}

fn data_cmd(
    endpoint: &str,
    cache: &Path,
    repo: &str,
    split: &str,
    offline: bool,
) -> (i32, String, String) {
    let model = fixture_str("models/tiny-llama");
    let spec = format!("hf://datasets/{repo}");
    let args = ["data", "--model", &model, "--data", &spec, "--split", split];
    let endpoint = PathBuf::from(endpoint);
    let mut env = vec![("HF_HUB_CACHE", cache), ("HF_ENDPOINT", endpoint.as_path())];
    if offline {
        env.push(("HF_HUB_OFFLINE", Path::new("1")));
    }
    common::lora_dpo_with_env(&args, &env)
}

#[test]
fn a_split_is_downloaded_into_the_cache_and_then_read_offline() {
    let (endpoint, asked) = start_hub();
    let cache = tempfile::tempdir().unwrap();

    let (code, stdout, stderr) =
        data_cmd(&endpoint, cache.path(), "owner/prefs", "train_prefs", false);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("train_prefs-00000-of-00001.jsonl") && !stdout.contains("test_prefs"),
        "{stdout}"
    );
    let fetched: Vec<String> = asked.lock().unwrap().clone();
    assert!(
        fetched
            .iter()
            .all(|p| !p.contains("test_prefs") && !p.contains("README")),
        "only the split's files are downloaded: {fetched:?}"
    );
    // The standard cache layout, so Python's `datasets` and a later offline run find it.
    let repo = cache.path().join("datasets--owner--prefs");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    let cached = repo.join(format!(
        "snapshots/{COMMIT}/data/train_prefs-00000-of-00001.jsonl"
    ));
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        std::fs::read(fixture("train/prefs.jsonl")).unwrap()
    );

    let before = asked.lock().unwrap().len();
    let (code, stdout2, stderr) =
        data_cmd(&endpoint, cache.path(), "owner/prefs", "train_prefs", true);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        asked.lock().unwrap().len(),
        before,
        "offline asks the hub nothing"
    );
    assert_eq!(stdout2, stdout);
}

#[test]
fn a_split_only_on_the_converted_parquet_branch_is_taken_from_there() {
    let (endpoint, _) = start_hub();
    let cache = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = data_cmd(&endpoint, cache.path(), "owner/viewer", "train", false);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("default/train/0000.parquet"), "{stdout}");
    let repo = cache.path().join("datasets--owner--viewer");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/refs/convert/parquet")).unwrap(),
        COMMIT
    );

    let (code, _, stderr) = data_cmd(&endpoint, cache.path(), "owner/viewer", "test", false);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("no data files for split `test`") && stderr.contains("owner/viewer"),
        "{stderr}"
    );
}
