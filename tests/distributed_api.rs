//! Issue 5 against `msaas serve` on private Redis + SeaweedFS + NATS: many tenants at once with
//! no cross-tenant visibility, and the two clients of "How it will be checked" (the old
//! service's base64 JSON routes, and `/v1` upload → events → download).

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::Value;
use support::{Cluster, Msaas, require_default_model, wav_frames, write_song};

const TENANTS: [&str; 3] = ["alpha", "beta", "gamma"];

struct Api {
    http: reqwest::Client,
    url: String,
}

impl Api {
    fn new(url: String) -> Self {
        Self {
            http: reqwest::Client::new(),
            url,
        }
    }

    fn get(&self, key: &str, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(key)
    }

    async fn job(&self, key: &str, id: &str) -> Value {
        let response = self
            .get(key, &format!("/v1/jobs/{id}"))
            .send()
            .await
            .expect("GET job");
        assert_eq!(response.status(), 200, "GET /v1/jobs/{id}");
        response.json().await.expect("job JSON")
    }

    async fn upload(&self, key: &str, name: &str, body: Vec<u8>) -> String {
        let response = self
            .http
            .post(format!("{}/v1/jobs?filename={name}", self.url))
            .bearer_auth(key)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .expect("POST /v1/jobs");
        let status = response.status();
        let body: Value = response.json().await.expect("upload answer JSON");
        assert_eq!(status, 202, "upload: {body}");
        body["id"]
            .as_str()
            .or_else(|| body["job"]["id"].as_str())
            .unwrap_or_else(|| panic!("no job id in {body}"))
            .to_owned()
    }
}

fn start_serve(cluster: &Cluster) -> (Msaas, Api) {
    let mut serve = cluster.spawn(&["serve"]);
    let url = serve.api_url();
    (serve, Api::new(url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_jobs_of_three_tenants_finish_and_stay_apart() {
    require_default_model();
    let mut cluster = Cluster::start(&TENANTS);
    cluster.set("MSAAS_MODELS__THREADS", "2");
    let (serve, api) = start_serve(&cluster);
    let audio = tempfile::tempdir().expect("tempdir");
    let songs: Vec<Vec<u8>> = TENANTS
        .iter()
        .enumerate()
        .map(|(n, tenant)| {
            let path = audio.path().join(format!("{tenant}.wav"));
            write_song(&path, 1.0, n as u32);
            std::fs::read(&path).expect("read song")
        })
        .collect();

    let started = Instant::now();
    let uploads = (0..100).map(|n| {
        let tenant = TENANTS[n % 3];
        let key = cluster.key_of(tenant).to_owned();
        let body = songs[n % 3].clone();
        let api = &api;
        async move {
            let id = api.upload(&key, &format!("song-{n}.wav"), body).await;
            (tenant, id)
        }
    });
    let submitted: Vec<(&str, String)> = futures::stream::iter(uploads)
        .buffer_unordered(16)
        .collect()
        .await;
    let uploaded_in = started.elapsed();

    let deadline = Instant::now() + Duration::from_secs(300);
    let mut finished: BTreeMap<String, Value> = BTreeMap::new();
    while finished.len() < submitted.len() {
        for (tenant, id) in &submitted {
            if finished.contains_key(id) {
                continue;
            }
            let job = api.job(cluster.key_of(tenant), id).await;
            if matches!(job["state"].as_str(), Some("done" | "failed" | "cancelled")) {
                finished.insert(id.clone(), job);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} of 100 jobs finished in 300 s; serve log:\n{}",
            finished.len(),
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed();
    for (id, job) in &finished {
        assert_eq!(job["state"], "done", "{id}: {job}");
    }

    for tenant in TENANTS {
        let key = cluster.key_of(tenant);
        let listing: Value = api
            .get(key, "/v1/jobs?limit=100")
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("list JSON");
        let listed: BTreeSet<&str> = listing["jobs"]
            .as_array()
            .expect("jobs array")
            .iter()
            .filter_map(|job| job["id"].as_str())
            .collect();
        let own: BTreeSet<&str> = submitted
            .iter()
            .filter(|(t, _)| *t == tenant)
            .map(|(_, id)| id.as_str())
            .collect();
        assert_eq!(listed, own, "{tenant} must list exactly its own jobs");

        // Another tenant's job is as absent as one that never existed.
        let (_, foreign) = submitted
            .iter()
            .find(|(t, _)| *t != tenant)
            .expect("a foreign job");
        for path in [
            format!("/v1/jobs/{foreign}"),
            format!("/v1/jobs/{foreign}/stems/vocals"),
            format!("/v1/jobs/{foreign}/events"),
            format!("/apiv1/track/{foreign}/vocals.wav"),
        ] {
            let status = api.get(key, &path).send().await.expect("GET").status();
            assert_eq!(status, 404, "{tenant} GET {path}");
        }
        let status = api
            .http
            .delete(format!("{}/v1/jobs/{foreign}", api.url))
            .bearer_auth(key)
            .send()
            .await
            .expect("DELETE")
            .status();
        assert_eq!(status, 404, "{tenant} DELETE another tenant's job");
    }
    // The foreign DELETEs removed nothing.
    for (tenant, id) in &submitted {
        assert_eq!(api.job(cluster.key_of(tenant), id).await["state"], "done");
    }
    eprintln!(
        "100 jobs / 3 tenants through msaas serve (Redis + SeaweedFS + NATS): uploaded in {uploaded_in:.1?}, all done in {elapsed:.1?}"
    );
}

/// Reads `GET /v1/jobs/{id}/events` until a terminal event; returns the event names seen.
async fn follow_events(api: &Api, key: &str, id: &str) -> Vec<String> {
    let response = api
        .get(key, &format!("/v1/jobs/{id}/events"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET events");
    assert_eq!(response.status(), 200);
    let mut names = Vec::new();
    let mut text = String::new();
    let mut body = response.bytes_stream();
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Ok(Some(chunk)) = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        body.next(),
    )
    .await
    {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("event bytes")));
        while let Some(end) = text.find('\n') {
            let line: String = text.drain(..=end).collect();
            if let Some(name) = line.trim_end().strip_prefix("event:") {
                let name = name.trim().to_owned();
                let terminal = matches!(name.as_str(), "done" | "failed" | "cancelled");
                names.push(name);
                if terminal {
                    return names;
                }
            }
        }
    }
    panic!("the event stream of {id} ended without a terminal event: {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_clients_and_the_v1_clients_get_their_stems() {
    require_default_model();
    let cluster = Cluster::start(&["legacy", "modern"]);
    let (serve, api) = start_serve(&cluster);
    let audio = tempfile::tempdir().expect("tempdir");
    let path = audio.path().join("song.wav");
    write_song(&path, 2.0, 7);
    let song = std::fs::read(&path).expect("read song");
    let source_frames = hound::WavReader::open(&path).expect("wav").duration();

    // The old service's client: base64 JSON in, poll the queue, fetch each track.
    let key = cluster.key_of("legacy");
    let answer: Value = api
        .http
        .post(format!("{}/apiv1/separate", api.url))
        .bearer_auth(key)
        .json(&serde_json::json!({
            "mp3": support::base64(&song),
            "model": "spleeter-2stems",
        }))
        .send()
        .await
        .expect("POST /apiv1/separate")
        .json()
        .await
        .expect("separate answer JSON");
    let hash = answer["hash"]
        .as_str()
        .unwrap_or_else(|| panic!("no hash in {answer}"))
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    let tracks: Vec<String> = loop {
        let queue: Value = api
            .get(key, "/apiv1/queue")
            .send()
            .await
            .expect("GET /apiv1/queue")
            .json()
            .await
            .expect("queue JSON");
        let entry = queue["jobs"]
            .as_array()
            .and_then(|jobs| jobs.iter().find(|job| job["hash"] == hash.as_str()))
            .unwrap_or_else(|| panic!("{hash} missing from {queue}"))
            .clone();
        match entry["status"].as_str() {
            Some("done") => {
                break entry["tracks"]
                    .as_array()
                    .expect("tracks")
                    .iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect();
            }
            Some("failed" | "cancelled") => panic!("legacy job ended: {entry}"),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "legacy job not done; log:\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let track_set: BTreeSet<&str> = tracks.iter().map(String::as_str).collect();
    assert_eq!(track_set, BTreeSet::from(["accompaniment", "vocals"]));
    for track in &tracks {
        let response = api
            .get(key, &format!("/apiv1/track/{hash}/{track}.wav"))
            .send()
            .await
            .expect("GET track");
        assert_eq!(response.status(), 200, "track {track}");
        let bytes = response.bytes().await.expect("track bytes");
        assert_eq!(wav_frames(&bytes), source_frames, "legacy track {track}");
    }

    // The /v1 client: raw upload, follow the events, download every stem.
    let key = cluster.key_of("modern");
    let id = api.upload(key, "song.wav", song.clone()).await;
    let events = follow_events(&api, key, &id).await;
    assert_eq!(
        events.last().map(String::as_str),
        Some("done"),
        "{events:?}"
    );
    let job = api.job(key, &id).await;
    let stems: Vec<&str> = job["stems"]
        .as_array()
        .expect("stems")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(stems, ["vocals", "accompaniment"], "{job}");
    for stem in stems {
        let response = api
            .get(key, &format!("/v1/jobs/{id}/stems/{stem}"))
            .send()
            .await
            .expect("GET stem");
        assert_eq!(response.status(), 200, "stem {stem}");
        let bytes = response.bytes().await.expect("stem bytes");
        assert_eq!(wav_frames(&bytes), source_frames, "v1 stem {stem}");
    }
    // Each client sees only its own job.
    let status = api
        .get(cluster.key_of("legacy"), &format!("/v1/jobs/{id}"))
        .send()
        .await
        .expect("GET")
        .status();
    assert_eq!(status, 404);
    eprintln!("legacy and /v1 clients: events seen {events:?}");
}
