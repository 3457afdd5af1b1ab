//! On demand (`cargo test -p ingest --test upload_memory -- --ignored`): a 500 MB upload is
//! streamed to storage, so the process's peak memory grows by far less than the body.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use common::*;

/// Peak resident set (VmHWM) of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM value");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes 500 MB; run on demand"]
async fn a_500_mb_upload_is_streamed_in_bounded_memory() {
    const TOTAL: usize = 500 * 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    let server = start_with(Options {
        max_input_bytes: 1 << 30,
        ..Options::default()
    })
    .await;
    // Warm up the paths once so the baseline includes their one-off allocations.
    let (status, _) = upload(&server, "", wav_body(CHUNK)).await;
    assert_eq!(status, 202);
    let idle = peak_rss();

    let header = wav_body(0);
    let chunks = (0..TOTAL / CHUNK).map(move |index| {
        let mut chunk = vec![(index % 251) as u8; CHUNK];
        if index == 0 {
            chunk[..header.len()].copy_from_slice(&header);
        }
        Ok::<Vec<u8>, std::io::Error>(chunk)
    });
    let started = std::time::Instant::now();
    let response = server
        .client
        .post(server.url("/v1/jobs"))
        .header("authorization", bearer(ACME_KEY))
        .header("content-type", "audio/wav")
        .header("content-length", TOTAL.to_string())
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 202);
    let elapsed = started.elapsed();
    let job: serde_json::Value = response.json().await.unwrap();
    let grown = peak_rss().saturating_sub(idle);
    eprintln!(
        "500 MB upload: {:.1} s ({:.0} MB/s), peak RSS +{:.1} MB over idle {:.1} MB (client and server in one process)",
        elapsed.as_secs_f64(),
        TOTAL as f64 / 1e6 / elapsed.as_secs_f64(),
        grown as f64 / 1e6,
        idle as f64 / 1e6
    );
    let id: pipeline::JobId = job["id"].as_str().unwrap().parse().unwrap();
    let stored = server
        .backends
        .store
        .size(&pipeline::job::keys::source(&id))
        .await
        .unwrap();
    assert_eq!(stored, Some(TOTAL as u64));
    assert!(grown < 64 * 1024 * 1024, "peak RSS grew by {grown} bytes");
    server.stop().await;
}
