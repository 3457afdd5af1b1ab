//! The client commands (`submit --wait`, `status`, `fetch`) against `msaas serve --embedded`,
//! and a graceful SIGTERM (exit 0).

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use support::{Msaas, msaas_command, require_default_model, write_song};

const KEY: &str = "cli-test-key-0123456789";

fn start_embedded(dir: &Path) -> (Msaas, String) {
    std::fs::write(dir.join("keys"), format!("cli:{KEY}\n")).expect("keys file");
    let env: Vec<(String, String)> = [
        ("MSAAS_SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "MSAAS_STORAGE__DIR",
            dir.join("store").display().to_string(),
        ),
        (
            "MSAAS_AUTH__KEYS_FILE",
            dir.join("keys").display().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut serve = Msaas::spawn(&["serve", "--embedded"], &env);
    let url = serve.api_url();
    (serve, url)
}

fn client(args: &[&str], url: &str) -> Output {
    msaas_command()
        .args(args)
        .args(["--url", url])
        .output()
        .expect("run the msaas client")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn submit_wait_status_fetch_then_sigterm() {
    require_default_model();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut serve, url) = start_embedded(dir.path());
    let song = dir.path().join("song.wav");
    write_song(&song, 2.0, 1);
    let song = song.display().to_string();

    let submitted = client(&["submit", &song, "--key", KEY, "--wait"], &url);
    let stderr = text(&submitted.stderr);
    assert_eq!(submitted.status.code(), Some(0), "stderr: {stderr}");
    let id = text(&submitted.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    assert!(!id.is_empty(), "submit printed no id");
    // The transitions were followed to the end.
    assert!(stderr.contains("stage_started separate"), "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("done")), "{stderr}");

    let status = client(&["status", &id, "--key", KEY], &url);
    assert_eq!(text(&status.stdout).trim(), format!("{id} done"));
    let status = client(&["status", &id, "--key", KEY, "--json"], &url);
    let job: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(job["state"], "done");

    let out = dir.path().join("stems");
    let fetched = client(
        &[
            "fetch",
            &id,
            "--key",
            KEY,
            "--out",
            &out.display().to_string(),
        ],
        &url,
    );
    assert_eq!(fetched.status.code(), Some(0), "{}", text(&fetched.stderr));
    let source_frames = hound::WavReader::open(&song).expect("wav").duration();
    for stem in ["vocals", "accompaniment"] {
        let path = out.join(format!("{stem}.wav"));
        assert!(text(&fetched.stdout).contains(&path.display().to_string()));
        let frames = hound::WavReader::open(&path).expect("stem wav").duration();
        assert_eq!(frames, source_frames, "{stem}");
    }

    // The key may come from MSAAS_API_KEY; a job that fails says why and exits 1.
    let short = dir.path().join("short.wav");
    write_song(&short, 0.02, 2);
    let failed = msaas_command()
        .env("MSAAS_API_KEY", KEY)
        .args([
            "submit",
            &short.display().to_string(),
            "--wait",
            "--url",
            &url,
        ])
        .output()
        .expect("run submit");
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed.stderr));
    assert!(
        text(&failed.stderr).contains("too_short"),
        "{}",
        text(&failed.stderr)
    );

    // Refusals carry the API's code.
    let wrong_key = client(&["status", &id, "--key", "not-a-key"], &url);
    assert_ne!(wrong_key.status.code(), Some(0));
    assert!(
        text(&wrong_key.stderr).contains("unauthorized"),
        "{}",
        text(&wrong_key.stderr)
    );
    let unknown_model = client(
        &["submit", &song, "--key", KEY, "--model", "no-such-model"],
        &url,
    );
    assert_ne!(unknown_model.status.code(), Some(0));
    assert!(
        text(&unknown_model.stderr).contains("unknown_model"),
        "{}",
        text(&unknown_model.stderr)
    );
    let missing = client(&["status", "no-such-job", "--key", KEY], &url);
    assert!(
        text(&missing.stderr).contains("not_found"),
        "{}",
        text(&missing.stderr)
    );

    let exit = serve.terminate(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(0), "log:\n{}", serve.log_text());
}
