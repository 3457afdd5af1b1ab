//! `msaas models pull | import` end to end: the real binary, the real converter (the venv
//! `tools/setup` makes: numpy + onnx, no PyTorch), checkpoints written by the real demucs code
//! (`separate/tests/fixtures/demucs-checkpoints/`, see its README), and a local HTTP server laid
//! out like Hugging Face and the legacy Demucs host (the real hosts are not reachable here).

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// The signature the test catalogue gives the fixture model (a name, as the official ones).
const SIG: &str = "7e57c0de";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("separate/tests/fixtures/demucs-checkpoints")
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// Where `tools/setup` put the converter venv and the ONNX Runtime library.
fn msaas_home() -> PathBuf {
    if let Ok(home) = std::env::var("MSAAS_HOME") {
        return PathBuf::from(home);
    }
    let data = std::env::var("XDG_DATA_HOME").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".local/share"),
        PathBuf::from,
    );
    data.join("msaas")
}

fn converter_python() -> PathBuf {
    let python = msaas_home().join("venv/bin/python");
    assert!(
        python.is_file(),
        "the converter venv is missing at {}: run tools/setup",
        python.display()
    );
    python
}

fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A temp home for one test: its own models dir and download cache, the real converter.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn models(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    fn msaas(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_msaas"));
        command
            .env_remove("MSAAS_CONFIG")
            .env("MSAAS_LOG", "warn")
            .env("MSAAS_HOME", self.dir.path())
            .env("MSAAS_MODELS__CONVERTER_PYTHON", converter_python())
            .env(
                "MSAAS_MODELS__ORT_LIBRARY",
                msaas_home().join("lib/libonnxruntime.so.1.31.1"),
            );
        command
    }

    /// A catalogue with one model, `tiny`, whose files the test server holds.
    fn catalogue(&self, legacy_file: &str) -> PathBuf {
        let path = self.dir.path().join("catalogue.toml");
        std::fs::write(
            &path,
            format!(
                r#"[[model]]
name = "tiny"
description = "the fixture model"
sources = ["drums", "bass", "other", "vocals"]
hf_repo = "test/TinyDemucs"
yaml = "tiny.yaml"
legacy_files = ["{legacy_file}"]
"#
            ),
        )
        .expect("catalogue");
        path
    }
}

/// `models pull tiny` of a catalogue whose only source is `checkpoint` served as its legacy
/// file (named with its real hash prefix unless `sha8` is given); Hugging Face has nothing.
fn pull_legacy_only(checkpoint: &str, sha8: Option<&str>) -> (Home, Output) {
    let hosts = Hosts::new();
    let legacy = hosts.legacy(checkpoint, sha8);
    let server = hosts.serve(&[]);
    let home = Home::new();
    let catalogue = home.catalogue(&legacy);
    let output = home.pull(
        &catalogue,
        &[
            "--from",
            &server.url("none"),
            "--legacy-from",
            &server.url("legacy"),
        ],
    );
    (home, output)
}

impl Home {
    fn pull(&self, catalogue: &Path, extra: &[&str]) -> Output {
        self.msaas()
            .args(["models", "pull", "tiny", "--catalogue"])
            .arg(catalogue)
            .args(extra)
            .output()
            .expect("run msaas models pull")
    }

    fn installed(&self, name: &str) -> bool {
        self.models().join(name).join("manifest.toml").is_file()
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_fails_with(output: &Output, code: &str) -> String {
    let text = stderr(output);
    assert!(
        !output.status.success(),
        "expected a failure [{code}], got success: {text}"
    );
    assert!(
        text.contains(&format!("error [{code}]")),
        "expected error [{code}]: {text}"
    );
    text
}

/// Each request the server saw: (path, `Range` header).
type RequestLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Serves a directory over HTTP/1.1 with single byte ranges, as both model hosts do. Paths in
/// `cut_once` get half their body and a closed connection on their first request.
struct FileServer {
    addr: SocketAddr,
    requests: RequestLog,
}

impl FileServer {
    fn start(root: PathBuf, cut_once: &[&str]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let cut: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(
            cut_once.iter().map(|s| (*s).to_owned()).collect(),
        ));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, seen, cut) = (root.clone(), seen.clone(), cut.clone());
                std::thread::spawn(move || serve_one(stream, &root, &seen, &cut));
            }
        });
        Self { addr, requests }
    }

    fn url(&self, prefix: &str) -> String {
        format!("http://{}/{prefix}", self.addr)
    }

    fn requests(&self) -> Vec<(String, Option<String>)> {
        self.requests.lock().expect("lock").clone()
    }
}

fn serve_one(
    stream: TcpStream,
    root: &Path,
    seen: &Mutex<Vec<(String, Option<String>)>>,
    cut: &Mutex<HashSet<String>>,
) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_owned());
        }
    }
    seen.lock()
        .expect("lock")
        .push((path.clone(), range.clone()));
    let mut stream = stream;
    let file = root.join(&path);
    let body = match (path.contains(".."), std::fs::read(&file)) {
        (false, Ok(body)) => body,
        _ => {
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
    };
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n < body.len());
    let (status, part) = match start {
        Some(start) => (
            format!(
                "206 Partial Content\r\nContent-Range: bytes {start}-{}/{}",
                body.len() - 1,
                body.len()
            ),
            &body[start..],
        ),
        None => ("200 OK".to_owned(), &body[..]),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        part.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let cut_now = cut.lock().expect("lock").remove(&path);
    let sent = if cut_now {
        &part[..part.len() / 2]
    } else {
        part
    };
    let _ = stream.write_all(sent);
    let _ = stream.flush();
    // Dropping the stream closes the connection: mid-body when cut.
}

/// The directory the server serves: `hf/test/TinyDemucs/resolve/main/…` and
/// `legacy/hybrid_transformer/…`, from the fixture files.
struct Hosts {
    root: tempfile::TempDir,
}

impl Hosts {
    fn new() -> Self {
        Self {
            root: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn hf(&self, checkpoint: &str) -> &Self {
        let dir = self.root.path().join("hf/test/TinyDemucs/resolve/main");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("tiny.yaml"), format!("models: ['{SIG}']\n")).expect("yaml");
        std::fs::copy(fixture(checkpoint), dir.join(format!("{SIG}.safetensors"))).expect("copy");
        self
    }

    /// Serves `checkpoint` as a legacy file; returns its name (with the real hash prefix
    /// unless `sha8` is given).
    fn legacy(&self, checkpoint: &str, sha8: Option<&str>) -> String {
        let dir = self.root.path().join("legacy/hybrid_transformer");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let source = fixture(checkpoint);
        let hash = sha256_hex(&source);
        let name = format!("{SIG}-{}.th", sha8.unwrap_or(&hash[..8]));
        std::fs::copy(source, dir.join(&name)).expect("copy");
        name
    }

    fn serve(&self, cut_once: &[&str]) -> FileServer {
        FileServer::start(self.root.path().to_owned(), cut_once)
    }
}

/// Planar f32 samples of a WAV.
fn read_planar(path: &Path) -> Vec<Vec<f64>> {
    let mut reader =
        hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    let samples: Vec<f64> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .map(|s| f64::from(s.expect("sample")))
            .collect(),
        hound::SampleFormat::Int => {
            let scale = f64::from(1u32 << (spec.bits_per_sample - 1));
            reader
                .samples::<i32>()
                .map(|s| f64::from(s.expect("sample")) / scale)
                .collect()
        }
    };
    (0..channels)
        .map(|c| samples.iter().skip(c).step_by(channels).copied().collect())
        .collect()
}

/// Separates the fixture input with an installed model and compares every stem with the
/// Python reference (`demucs.apply.apply_model`): within 1e-4 of the reference's peak.
fn assert_separates_like_the_reference(home: &Home, model: &str, reference: &str) {
    let out = home.dir.path().join(format!("stems-{model}"));
    let output = home
        .msaas()
        .arg("run")
        .arg(fixture("input.wav"))
        .args(["--model", model, "--format", "wav", "--wav-format", "f32"])
        .args([
            "--clip-mode",
            "none",
            "--overlap",
            "0.25",
            "--shifts",
            "0",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("run msaas run");
    assert!(output.status.success(), "msaas run: {}", stderr(&output));
    let reference_dir = fixture(reference);
    let mut peak = 0f64;
    let mut worst = 0f64;
    let mut compared = 0;
    for stem in ["drums", "bass", "other", "vocals"] {
        let expected = read_planar(&reference_dir.join(format!("{stem}.wav")));
        let got = read_planar(&out.join("input").join(format!("{stem}.wav")));
        assert_eq!(got.len(), expected.len(), "{stem}: channels");
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g.len(), e.len(), "{stem}: length");
            for (a, b) in g.iter().zip(e) {
                peak = peak.max(b.abs());
                worst = worst.max((a - b).abs());
            }
        }
        compared += 1;
    }
    assert_eq!(compared, 4);
    assert!(
        peak > 1e-3,
        "the reference is silent: nothing would be compared"
    );
    assert!(
        worst <= 1e-4 * peak,
        "{model}: max |msaas - demucs| = {worst:e}, peak {peak:e} (limit 1e-4 of peak)"
    );
}

#[test]
fn pull_from_a_hugging_face_layout_installs_a_model_that_separates_like_demucs() {
    let hosts = Hosts::new();
    hosts.hf("tiny.safetensors");
    let server = hosts.serve(&[]);
    let home = Home::new();
    let catalogue = home.catalogue(&format!("{SIG}-00000000.th"));
    let output = home.pull(&catalogue, &["--from", &server.url("hf")]);
    assert!(output.status.success(), "pull: {}", stderr(&output));
    assert!(
        stderr(&output).contains("research purposes"),
        "licence printed"
    );
    assert!(home.installed("tiny"));
    let manifest = std::fs::read_to_string(home.models().join("tiny/manifest.toml")).unwrap();
    assert!(
        manifest.contains("research purposes"),
        "licence recorded: {manifest}"
    );
    let requested: Vec<String> = server.requests().into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        requested,
        [
            "hf/test/TinyDemucs/resolve/main/tiny.yaml".to_owned(),
            format!("hf/test/TinyDemucs/resolve/main/{SIG}.safetensors"),
        ],
        "the yaml is read from the source, then its members"
    );
    assert_separates_like_the_reference(&home, "tiny", "expected/tiny");
}

#[test]
fn without_hugging_face_the_legacy_file_is_fetched_resumed_and_verified() {
    let hosts = Hosts::new();
    let legacy = hosts.legacy("tiny.th", None);
    let cut = format!("legacy/hybrid_transformer/{legacy}");
    let server = hosts.serve(&[&cut]);
    let home = Home::new();
    let catalogue = home.catalogue(&legacy);
    let output = home.pull(
        &catalogue,
        &[
            "--from",
            &server.url("nothing-here"),
            "--legacy-from",
            &server.url("legacy"),
        ],
    );
    assert!(output.status.success(), "pull: {}", stderr(&output));
    assert!(
        stderr(&output).contains("trying the legacy files"),
        "{}",
        stderr(&output)
    );
    let ranges: Vec<Option<String>> = server
        .requests()
        .into_iter()
        .filter(|(path, _)| *path == cut)
        .map(|(_, range)| range)
        .collect();
    assert_eq!(ranges.len(), 2, "cut once, then resumed: {ranges:?}");
    assert_eq!(ranges[0], None);
    assert!(
        ranges[1]
            .as_deref()
            .is_some_and(|r| r.starts_with("bytes=") && r != "bytes=0-"),
        "the second request resumes where the first stopped: {ranges:?}"
    );
    assert_separates_like_the_reference(&home, "tiny", "expected/tiny");
}

#[test]
fn a_checksum_mismatch_deletes_the_file_and_installs_nothing() {
    let (home, output) = pull_legacy_only("tiny.th", Some("00000000"));
    let text = assert_fails_with(&output, "checksum_mismatch");
    assert!(text.contains("00000000"), "{text}");
    assert!(!home.installed("tiny"));
    let downloads = home.dir.path().join("cache/downloads/tiny");
    let left: Vec<_> = std::fs::read_dir(&downloads)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the bad file is deleted: {left:?}");
}

#[test]
fn an_unreachable_host_is_named_with_the_offline_way() {
    let home = Home::new();
    let catalogue = home.catalogue(&format!("{SIG}-00000000.th"));
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let output = home.pull(
        &catalogue,
        &[
            "--from",
            "http://127.0.0.1:1/hf",
            "--legacy-from",
            "http://127.0.0.1:1/old",
        ],
    );
    let text = assert_fails_with(&output, "host_unreachable");
    assert!(
        text.contains("http://127.0.0.1:1/old/hybrid_transformer/"),
        "{text}"
    );
    assert!(text.contains("msaas models import"), "{text}");
    assert!(!home.installed("tiny"));
}

#[test]
fn files_missing_on_both_hosts_are_an_http_error() {
    let hosts = Hosts::new();
    let server = hosts.serve(&[]);
    let home = Home::new();
    let catalogue = home.catalogue(&format!("{SIG}-00000000.th"));
    let output = home.pull(
        &catalogue,
        &[
            "--from",
            &server.url("a"),
            "--legacy-from",
            &server.url("b"),
        ],
    );
    let text = assert_fails_with(&output, "http_error");
    assert!(text.contains("404"), "{text}");
}

#[test]
fn a_checkpoint_that_imports_a_forbidden_global_is_refused_unexecuted() {
    let (home, output) = pull_legacy_only("forbidden_global.th", None);
    let text = assert_fails_with(&output, "forbidden_global");
    assert!(!home.installed("tiny"), "{text}");
    let cases: toml::Table = std::fs::read_to_string(fixture("cases.toml"))
        .expect("cases.toml")
        .parse()
        .expect("parse cases.toml");
    let marker = cases["payload_marker"]
        .as_str()
        .expect("the fixture names the file its payload would create");
    assert!(
        !Path::new(marker).exists(),
        "the payload ran: {marker} exists"
    );
}

#[test]
fn unknown_models_are_listed_and_v3_is_refused_with_the_reason() {
    let home = Home::new();
    let output = home
        .msaas()
        .args(["models", "pull", "htdemucs_8s"])
        .output()
        .expect("run");
    let text = assert_fails_with(&output, "unknown_model");
    for known in ["htdemucs", "htdemucs_ft", "htdemucs_6s"] {
        assert!(text.contains(known), "{text}");
    }
    let output = home
        .msaas()
        .args(["models", "pull", "hdemucs_mmi"])
        .output()
        .expect("run");
    let text = assert_fails_with(&output, "unsupported_model");
    assert!(text.contains("v3"), "{text}");
}

#[test]
fn import_reads_both_formats_offline_and_a_bad_file_keeps_the_previous_install() {
    let home = Home::new();
    // The tiny model, and the published configuration shrunk in width (dconv_mode 3,
    // bottom_channels, five transformer layers, the 7.8 s segment), each in both formats.
    for model in ["tiny", "published_small"] {
        for extension in ["safetensors", "th"] {
            let name = format!("{model}_{extension}");
            let output = home
                .msaas()
                .args(["models", "import", "--name", &name])
                .arg(fixture(&format!("{model}.{extension}")))
                .output()
                .expect("run import");
            assert!(
                output.status.success(),
                "import {name}: {}",
                stderr(&output)
            );
            assert_separates_like_the_reference(&home, &name, &format!("expected/{model}"));
        }
    }
    let output = home
        .msaas()
        .args(["models", "import"])
        .arg(fixture("hdemucs.safetensors"))
        .output()
        .expect("run import");
    let text = assert_fails_with(&output, "unsupported_model");
    assert!(text.contains("v3"), "{text}");
    let before = std::fs::read(home.models().join("tiny_th/manifest.toml")).unwrap();
    let output = home
        .msaas()
        .args(["models", "import", "--name", "tiny_th"])
        .arg(fixture("truncated.th"))
        .output()
        .expect("run import");
    assert_fails_with(&output, "corrupt_checkpoint");
    assert_eq!(
        std::fs::read(home.models().join("tiny_th/manifest.toml")).unwrap(),
        before,
        "the previous install is untouched"
    );
    let leftovers: Vec<String> = std::fs::read_dir(home.models())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no staging left behind: {leftovers:?}"
    );
}

#[test]
fn the_listing_shows_what_is_installed_and_what_can_be_pulled() {
    let home = Home::new();
    let output = home.msaas().arg("models").output().expect("run");
    assert!(!output.status.success(), "nothing installed: exit 1");
    let listing = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "htdemucs_ft",
        "htdemucs_6s",
        "guitar",
        "not supported",
        "research purposes",
    ] {
        assert!(listing.contains(needle), "{needle} missing: {listing}");
    }
}
