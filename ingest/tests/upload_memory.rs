//! On demand (`cargo test --release -p ingest --test upload_memory -- --ignored --nocapture
//! --test-threads 1`): a 500 MB upload, a 1 GB legacy base64 upload and a refused legacy
//! upload are streamed, so the process's peak memory grows by far less than the body.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use common::*;

/// Starts counting the peak resident set afresh (Linux: `5` to `clear_refs`).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("/proc/self/clear_refs");
}

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
    reset_peak_rss();
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

/// A legacy `/apiv1/separate` body: JSON around `audio` bytes of WAV-headed audio in base64,
/// made chunk by chunk as it is sent. Returns the body's length and its stream.
fn legacy_body(
    audio: usize,
    fields: &str,
) -> (
    u64,
    impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static,
) {
    use base64::Engine;
    // A multiple of 3: each chunk is whole base64 groups.
    const CHUNK: usize = 3 * 64 * 1024;
    assert_eq!(audio % CHUNK, 0);
    let prefix = format!("{{{fields}\"mp3\": \"").into_bytes();
    let suffix = b"\"}".to_vec();
    let length = (prefix.len() + audio / 3 * 4 + suffix.len()) as u64;
    let header = wav_body(0);
    let chunks = (0..audio / CHUNK).map(move |index| {
        let mut chunk = vec![(index % 251) as u8; CHUNK];
        if index == 0 {
            chunk[..header.len()].copy_from_slice(&header);
        }
        Ok(base64::engine::general_purpose::STANDARD
            .encode(&chunk)
            .into_bytes())
    });
    let stream = futures::stream::iter(
        std::iter::once(Ok(prefix))
            .chain(chunks)
            .chain(std::iter::once(Ok(suffix))),
    );
    (length, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes 1 GB; run on demand"]
async fn a_1_gb_legacy_upload_is_streamed_in_bounded_memory() {
    const AUDIO: usize = 5_086 * 3 * 64 * 1024; // 1.0 GB
    let server = start_with(Options {
        max_input_bytes: 1 << 30,
        ..Options::default()
    })
    .await;
    let (warm_length, warm) = legacy_body(3 * 64 * 1024, "");
    let response = server
        .client
        .post(server.url("/apiv1/separate"))
        .header("authorization", bearer(ACME_KEY))
        .header("content-length", warm_length.to_string())
        .body(reqwest::Body::wrap_stream(warm))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    reset_peak_rss();
    let idle = peak_rss();
    let (length, body) = legacy_body(AUDIO, r#""model": "tiny", "songhash": "big-one", "#);
    let started = std::time::Instant::now();
    let response = server
        .client
        .post(server.url("/apiv1/separate"))
        .header("authorization", bearer(ACME_KEY))
        .header("content-length", length.to_string())
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 200);
    let elapsed = started.elapsed();
    let reply: serde_json::Value = response.json().await.unwrap();
    assert_eq!(reply["hash"], "big-one");
    let grown = peak_rss().saturating_sub(idle);
    eprintln!(
        "1 GB legacy upload ({:.2} GB of JSON): {:.1} s ({:.0} MB/s of audio), peak RSS +{:.1} MB over idle {:.1} MB (client and server in one process)",
        length as f64 / 1e9,
        elapsed.as_secs_f64(),
        AUDIO as f64 / 1e6 / elapsed.as_secs_f64(),
        grown as f64 / 1e6,
        idle as f64 / 1e6
    );
    let jobs = server.backends.jobs.list("acme", 10).await.unwrap();
    let job = jobs
        .iter()
        .find(|job| job.options.songhash.as_deref() == Some("big-one"))
        .expect("the job");
    let stored = server
        .backends
        .store
        .size(&pipeline::job::keys::source(&job.id))
        .await
        .unwrap();
    assert_eq!(stored, Some(AUDIO as u64));
    assert!(grown < 64 * 1024 * 1024, "peak RSS grew by {grown} bytes");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "sends 400 MB; run on demand"]
async fn a_refused_legacy_upload_costs_bounded_memory() {
    const AUDIO: usize = 2_134 * 3 * 64 * 1024; // 420 MB, over the 256 MiB limit
    let server = start_with(Options {
        max_input_bytes: 256 << 20,
        ..Options::default()
    })
    .await;
    reset_peak_rss();
    let idle = peak_rss();
    // No Content-Length: the limit can only be found while streaming.
    let (_, body) = legacy_body(AUDIO, "");
    let outcome = server
        .client
        .post(server.url("/apiv1/separate"))
        .header("authorization", bearer(ACME_KEY))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    // The server answers 413 as soon as the limit is passed; a client still sending may see
    // the connection close before it reads the answer.
    if let Ok(response) = outcome {
        assert_eq!(response.status(), 413);
    }
    let grown = peak_rss().saturating_sub(idle);
    eprintln!(
        "refused 420 MB legacy upload: peak RSS +{:.1} MB over idle {:.1} MB",
        grown as f64 / 1e6,
        idle as f64 / 1e6
    );
    assert!(server.objects().is_empty(), "{:?}", server.objects());
    assert!(grown < 64 * 1024 * 1024, "peak RSS grew by {grown} bytes");
    server.stop().await;
}
