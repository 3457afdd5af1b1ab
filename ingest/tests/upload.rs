//! Uploads over real HTTP: raw and multipart bodies become queued jobs with their source
//! stored byte for byte; idempotency keys and dedup return the earlier job.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use common::*;
use std::time::Duration;

use pipeline::JobState;

#[tokio::test]
async fn raw_upload_is_queued_with_its_source_stored_exactly() {
    let server = start().await;
    let body = wav_body(200_000);
    let (status, job) = upload(
        &server,
        "?model=duo&format=mp3&bitrate=192&filename=My%20Song.wav",
        body.clone(),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().expect("id");
    assert_eq!(job["state"], "queued");
    assert_eq!(job["model"], "duo");
    assert_eq!(job["tenant"], "acme");
    assert_eq!(job["source_name"], "My Song.wav");
    assert_eq!(job["options"]["output"]["format"], "mp3");
    assert_eq!(job["links"]["self"], format!("/v1/jobs/{id}"));
    assert_eq!(job["links"]["events"], format!("/v1/jobs/{id}/events"));

    let record = server.job(id).await.expect("record");
    assert_eq!(record.state, JobState::Queued);
    assert_eq!(record.tenant, "acme");
    assert_eq!(server.source_bytes(id).await, body);
    assert_eq!(server.depth().await.waiting, 1);

    // The record through the API, and in the tenant's list.
    let fetched: serde_json::Value = server
        .client
        .get(server.url(&format!("/v1/jobs/{id}")))
        .header("authorization", bearer(ACME_KEY))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["id"], id);
    let list: serde_json::Value = server
        .client
        .get(server.url("/v1/jobs?limit=10"))
        .header("authorization", bearer(ACME_KEY))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["jobs"][0]["id"], id);
    server.stop().await;
}

#[tokio::test]
async fn multipart_upload_takes_options_from_fields() {
    let server = start().await;
    let body = wav_body(50_000);
    let form = reqwest::multipart::Form::new()
        .text("model", "tiny")
        .text("stems", "vocals,drums")
        .part(
            "file",
            reqwest::multipart::Part::bytes(body.clone())
                .file_name("track01.wav")
                .mime_str("audio/wav")
                .unwrap(),
        )
        .text("format", "flac");
    let response = server
        .client
        .post(server.url("/v1/jobs"))
        .header("authorization", bearer(ACME_KEY))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let job: serde_json::Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    assert_eq!(job["source_name"], "track01.wav");
    assert_eq!(
        job["options"]["stems"],
        serde_json::json!(["vocals", "drums"])
    );
    // A field after the file part still counts.
    assert_eq!(job["options"]["output"]["format"], "flac");
    assert_eq!(server.source_bytes(id).await, body);
    assert_eq!(server.depth().await.waiting, 1);

    // A form without a file is refused, and nothing more is queued.
    let form = reqwest::multipart::Form::new().text("model", "tiny");
    let response = server
        .client
        .post(server.url("/v1/jobs"))
        .header("authorization", bearer(ACME_KEY))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // An unknown stem in a field after the file: refused, the stored copy removed.
    let objects_before = server.objects().len();
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(body.clone()).file_name("x.wav"),
        )
        .text("stems", "kazoo");
    let response = server
        .client
        .post(server.url("/v1/jobs"))
        .header("authorization", bearer(ACME_KEY))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(code(&error), "invalid_option");
    assert_eq!(server.objects().len(), objects_before);
    assert_eq!(server.depth().await.waiting, 1);
    server.stop().await;
}

#[tokio::test]
async fn idempotency_key_returns_the_same_job() {
    let server = start().await;
    let send = |body: Vec<u8>| {
        server
            .client
            .post(server.url("/v1/jobs"))
            .header("authorization", bearer(ACME_KEY))
            .header("idempotency-key", "order-42")
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
    };
    let first = send(wav_body(1000)).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = send(wav_body(2000)).await.unwrap();
    assert_eq!(again.status(), 200);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(server.depth().await.waiting, 1);
    assert_eq!(server.objects().len(), 1, "the retry stored nothing");

    // The same key from another tenant is another job.
    let other = server
        .client
        .post(server.url("/v1/jobs"))
        .header("authorization", bearer(BETA_KEY))
        .header("idempotency-key", "order-42")
        .body(wav_body(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 202);
    let other: serde_json::Value = other.json().await.unwrap();
    assert_ne!(other["id"], first["id"]);
    server.stop().await;
}

#[tokio::test]
async fn dedup_returns_the_earlier_job_for_the_same_bytes_and_options() {
    let server = start_with(Options {
        dedup: true,
        ..Options::default()
    })
    .await;
    let body = wav_body(5000);
    let (status, first) = upload(&server, "?model=duo", body.clone()).await;
    assert_eq!(status, 202);
    let (status, again) = upload(&server, "?model=duo", body.clone()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(server.objects().len(), 1, "the duplicate's copy is deleted");
    // Other options: a new job.
    let (status, other) = upload(&server, "?model=tiny", body.clone()).await;
    assert_eq!(status, 202);
    assert_ne!(other["id"], first["id"]);
    assert_eq!(server.depth().await.waiting, 2);

    // A failed job is not reused.
    let id: pipeline::JobId = first["id"].as_str().unwrap().parse().unwrap();
    let job = server.backends.jobs.get(&id).await.unwrap().unwrap();
    let mut failed = job.clone();
    failed.state = JobState::Failed;
    server
        .backends
        .jobs
        .compare_and_set(job.state, job.attempt, &failed)
        .await
        .unwrap();
    let (status, retry) = upload(&server, "?model=duo", body).await;
    assert_eq!(status, 202);
    assert_ne!(retry["id"], first["id"]);
    server.stop().await;
}

#[tokio::test]
async fn delete_cancels_and_removes_everything() {
    let server = start().await;
    let (_, job) = upload(&server, "", wav_body(100)).await;
    let id = job["id"].as_str().unwrap();
    let response = server
        .client
        .delete(server.url(&format!("/v1/jobs/{id}")))
        .header("authorization", bearer(ACME_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert!(server.job(id).await.is_none());
    assert!(server.objects().is_empty());
    let response = server
        .client
        .get(server.url(&format!("/v1/jobs/{id}")))
        .header("authorization", bearer(ACME_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn models_health_and_readiness() {
    let server = start().await;
    let models: serde_json::Value = server
        .client
        .get(server.url("/v1/models"))
        .header("authorization", bearer(ACME_KEY))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["default"], "tiny");
    assert_eq!(
        models["models"][1]["sources"],
        serde_json::json!(["vocals", "accompaniment"])
    );
    for path in ["/healthz", "/readyz"] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    // Requests are counted by route template, never by raw path.
    let (status, _) = upload(&server, "", wav_body(100)).await;
    assert_eq!(status, 202);
    let metrics = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("msaas_http_requests_total")
                && line.contains("route=\"/v1/models\"")),
        "{metrics}"
    );
    assert!(
        metrics.contains("msaas_uploads_accepted_total"),
        "{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|line| line.contains("route=\"/v1/jobs/") && !line.contains("route=\"/v1/jobs/{")),
        "a raw path leaked into labels"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_from_two_tenants_stay_apart() {
    let server = start().await;
    let uploads = (0..20).map(|index| {
        let key = if index % 2 == 0 { ACME_KEY } else { BETA_KEY };
        let request = server
            .client
            .post(server.url("/v1/jobs"))
            .header("authorization", bearer(key))
            .body(wav_body(10_000 + index));
        async move {
            let response = request.send().await.expect("upload");
            assert_eq!(response.status(), 202);
            let job: serde_json::Value = response.json().await.expect("json");
            (key, job["id"].as_str().expect("id").to_owned())
        }
    });
    let created = futures::future::join_all(uploads).await;
    assert_eq!(server.depth().await.waiting, 20);
    for (key, tenant) in [(ACME_KEY, "acme"), (BETA_KEY, "beta")] {
        let list: serde_json::Value = server
            .client
            .get(server.url("/v1/jobs?limit=100"))
            .header("authorization", bearer(key))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut listed: Vec<&str> = list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|job| {
                assert_eq!(job["tenant"], tenant);
                job["id"].as_str().unwrap()
            })
            .collect();
        let mut expected: Vec<&str> = created
            .iter()
            .filter(|(owner, _)| *owner == key)
            .map(|(_, id)| id.as_str())
            .collect();
        listed.sort_unstable();
        expected.sort_unstable();
        assert_eq!(listed, expected, "{tenant}");
    }
    server.stop().await;
}

/// Sends a request head plus `body` on a raw connection, closes the sending side, and returns
/// what the server answered (empty when it closed without an answer).
async fn raw_request(server: &Server, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server
        .base
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(body).await.expect("body");
    stream.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers or closes, never hangs")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_body_cut_short_is_the_clients_error_and_leaves_nothing() {
    let server = start().await;
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: audio/wav\r\n\
         Content-Length: 200000\r\n\r\n",
        bearer(ACME_KEY)
    );
    let answer = raw_request(&server, &head, &wav_body(5000)).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "a 400 or a closed connection, never a 5xx: {answer}"
    );
    if !answer.is_empty() {
        assert!(answer.contains("bad_request"), "{answer}");
    }
    let chunked = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: audio/wav\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        bearer(ACME_KEY)
    );
    let mut body = b"1000\r\n".to_vec();
    body.extend_from_slice(&wav_body(4096));
    body.extend_from_slice(b"\r\nzz-not-a-chunk-size\r\n");
    let answer = raw_request(&server, &chunked, &body).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "a malformed chunk: {answer}"
    );
    // Nothing stored, not even the job's empty upload folder; nothing queued.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.objects().is_empty(), "{:?}", server.objects());
    assert!(
        server
            .backends
            .jobs
            .list("acme", 10)
            .await
            .unwrap()
            .is_empty()
    );
    server.stop().await;
}
