//! Issue 17 against `msaas ingest` on private Redis + SeaweedFS + NATS: a Redis restart costs
//! no upload a 503; an Idempotency-Key is leased while its upload streams, so a second request
//! waits for the first instead of uploading its body again, and a key held by an ingest that
//! died is free again within the lease (not after 300 s of 409s).

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Cluster, Msaas, wait_for, write_song};

const TENANT: &str = "faults";

/// A song of `seconds` as WAV bytes.
fn song(seconds: f32, variant: u32) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("song.wav");
    write_song(&path, seconds, variant);
    std::fs::read(path).unwrap()
}

/// An upload written by hand, so the test decides how much of the body is sent and when.
struct RawUpload {
    stream: TcpStream,
    body: Vec<u8>,
    sent: usize,
}

impl RawUpload {
    /// Sends the request head and the first `first` bytes of `body`.
    fn start(api: &str, key: &str, idempotency_key: &str, body: Vec<u8>, first: usize) -> Self {
        let authority = api.strip_prefix("http://").unwrap();
        let mut stream = TcpStream::connect(authority).unwrap();
        write!(
            stream,
            "POST /v1/jobs?filename=song.wav HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {key}\r\nIdempotency-Key: {idempotency_key}\r\nContent-Type: audio/wav\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        stream.write_all(&body[..first]).unwrap();
        stream.flush().unwrap();
        Self {
            stream,
            body,
            sent: first,
        }
    }

    fn finish_body(&mut self) {
        self.stream.write_all(&self.body[self.sent..]).unwrap();
        self.sent = self.body.len();
    }

    /// Whether an answer arrived within `wait` (without consuming it).
    fn answered_within(&self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0u8; 1];
        matches!(self.stream.peek(&mut byte), Ok(n) if n > 0)
    }

    /// Status and JSON body of the answer.
    fn answer(mut self) -> (u16, Value) {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut text = Vec::new();
        let _ = self.stream.read_to_end(&mut text);
        let text = String::from_utf8_lossy(&text).into_owned();
        let status = text
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
        let (_, body) = text.split_once("\r\n\r\n").unwrap_or(("", ""));
        // `Connection: close` answers are not chunked by warp for JSON; tolerate a chunk size
        // line anyway.
        let json = body
            .find('{')
            .and_then(|start| body.rfind('}').map(|end| &body[start..=end]))
            .unwrap_or("null");
        (status, serde_json::from_str(json).unwrap_or(Value::Null))
    }
}

fn job_id(answer: &Value) -> String {
    answer["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job id in {answer}"))
        .to_owned()
}

fn lease_exists(cluster: &Cluster, idempotency_key: &str) -> bool {
    let client = redis::Client::open(cluster.redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("EXISTS")
        .arg(format!("msaas:lease:idem:{TENANT}:{idempotency_key}"))
        .query::<bool>(&mut conn)
        .unwrap()
}

fn start_ingest(cluster: &Cluster) -> (Msaas, String) {
    let mut ingest = cluster.spawn(&["ingest", "--no-janitor"]);
    let url = ingest.api_url();
    (ingest, url)
}

async fn upload(
    api: &str,
    key: &str,
    idempotency_key: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{api}/v1/jobs?filename=song.wav"))
        .bearer_auth(key)
        .header("content-type", "audio/wav")
        .body(body);
    if let Some(idempotency_key) = idempotency_key {
        request = request.header("idempotency-key", idempotency_key);
    }
    let response = request.send().await.expect("POST /v1/jobs");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_upload_after_a_redis_restart_is_accepted_and_queued() {
    let mut cluster = Cluster::start(&[TENANT]);
    let key = cluster.key_of(TENANT).to_owned();
    let (_ingest, api) = start_ingest(&cluster);
    let (status, first) = upload(&api, &key, None, song(0.5, 1)).await;
    assert_eq!(status, 202, "{first}");

    cluster.redis.restart();
    // Right away: the ingest's pooled connection is the dead one.
    let (status, second) = upload(&api, &key, None, song(0.5, 2)).await;
    assert_eq!(status, 202, "the first upload after the restart: {second}");

    // Both are records and both wait in decode's stream (nothing for the sweep to find).
    let backends = cluster.backends().await;
    for answer in [&first, &second] {
        let id: pipeline::JobId = job_id(answer).parse().unwrap();
        assert!(backends.jobs.get(&id).await.unwrap().is_some(), "{id}");
    }
    let depth = backends.queue.depth(pipeline::Stage::Decode).await.unwrap();
    assert_eq!(depth.waiting, 2, "{depth:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_with_the_key_waits_for_the_first_and_sends_no_body() {
    let cluster = Cluster::start(&[TENANT]);
    let key = cluster.key_of(TENANT).to_owned();
    let (_ingest, api) = start_ingest(&cluster);
    let body = song(2.0, 3);
    let half = body.len() / 2;

    let mut first = RawUpload::start(&api, &key, "retry-me", body.clone(), half);
    wait_for(
        "the first request leases its key",
        Duration::from_secs(10),
        || lease_exists(&cluster, "retry-me"),
    );
    // The retry sends its head and a few bytes only: it must be answered without the rest.
    let second = RawUpload::start(&api, &key, "retry-me", body, 64);
    assert!(
        !second.answered_within(Duration::from_secs(1)),
        "the retry was answered while the first request still uploads"
    );
    first.finish_body();
    let (status, created) = first.answer();
    assert_eq!(status, 202, "{created}");
    let (status, replayed) = second.answer();
    assert_eq!(
        status, 200,
        "the retry gets the first one's job: {replayed}"
    );
    let id = job_id(&created);
    assert_eq!(job_id(&replayed), id);
    // One copy of the body was stored, the first request's.
    let uploads = cluster.weed.list(&cluster.bucket, "uploads/");
    assert!(
        !uploads.is_empty() && uploads.iter().all(|k| k.contains(&id)),
        "{uploads:?}"
    );
    wait_for("the lease is given back", Duration::from_secs(5), || {
        !lease_exists(&cluster, "retry-me")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_held_by_a_killed_ingest_is_free_again_within_its_lease() {
    let cluster = Cluster::start(&[TENANT]);
    let key = cluster.key_of(TENANT).to_owned();
    let (mut dying, dying_api) = start_ingest(&cluster);
    let body = song(1.0, 4);
    let upload_in_flight = RawUpload::start(&dying_api, &key, "crash-key", body.clone(), 1000);
    wait_for("the upload leases its key", Duration::from_secs(10), || {
        lease_exists(&cluster, "crash-key")
    });
    dying.kill9();
    drop(upload_in_flight);

    // The client retries against another replica.
    let (_ingest, api) = start_ingest(&cluster);
    let retried = Instant::now();
    let (status, answer) = upload(&api, &key, Some("crash-key"), body).await;
    let waited = retried.elapsed();
    assert_eq!(status, 202, "the retry after the crash proceeds: {answer}");
    assert!(
        waited < Duration::from_secs(25),
        "the dead holder's lease blocked the key for {waited:?}"
    );
    // And the key now names that job.
    let (status, again) = upload(&api, &key, Some("crash-key"), song(1.0, 5)).await;
    assert_eq!((status, job_id(&again)), (200, job_id(&answer)));
}
