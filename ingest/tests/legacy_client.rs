//! A client of the replaced service, sending what its documented contract says: base64 audio in
//! JSON with its own `songhash` and a `callback: {url, data}` object, then fetching and
//! removing tracks by that songhash. Also the small page at `/` and the auth header details.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::*;
use pipeline::config::CallbacksConfig;
use warp::Filter;

/// A webhook receiver on loopback that keeps every body it gets.
async fn receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let log = bodies.clone();
    let route = warp::path!("done")
        .and(warp::post())
        .and(warp::body::json())
        .map(move |body: serde_json::Value| {
            log.lock().unwrap().push(body);
            warp::reply()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (format!("http://{addr}/done"), bodies)
}

async fn separate(server: &Server, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response = server
        .client
        .post(server.url("/apiv1/separate"))
        .header("authorization", bearer(ACME_KEY))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn an_old_client_gets_its_songhash_its_callback_and_its_stems() {
    let (url, bodies) = receiver().await;
    let config = CallbacksConfig {
        max_attempts: 2,
        timeout_ms: 2_000,
        backoff_base_ms: 50,
        ..CallbacksConfig::default()
    };
    let server = start_with_webhooks(&config).await;
    let audio = base64::engine::general_purpose::STANDARD.encode(wav_body(1000));
    let request = serde_json::json!({
        "mp3": audio,
        "songhash": "a1b2c3d4e5",
        "callback": {"url": url, "data": {"user": 7, "tags": ["x"]}},
    });
    let (status, answer) = separate(&server, request.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["hash"], "a1b2c3d4e5",
        "the client's handle comes back"
    );

    // The same songhash again: the same job, nothing stored twice.
    let objects = server.objects().len();
    let (status, again) = separate(&server, request).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["hash"], "a1b2c3d4e5");
    assert_eq!(
        server.objects().len(),
        objects,
        "the second body was not stored"
    );
    let queue: serde_json::Value = get(&server, "/apiv1/queue", ACME_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(queue["jobs"].as_array().unwrap().len(), 1, "{queue}");
    assert_eq!(queue["queue"][0], "a1b2c3d4e5");

    server.run_workers();
    let job_id = server.backends.jobs.list("acme", 10).await.unwrap()[0]
        .id
        .clone();
    let done = server.wait_terminal(job_id.as_str()).await;
    assert_eq!(done.state, pipeline::JobState::Done);

    let track = get(&server, "/apiv1/track/a1b2c3d4e5/vocals.wav", ACME_KEY).await;
    assert_eq!(track.status(), 200);
    assert_eq!(
        track.bytes().await.unwrap().to_vec(),
        fake_stem_bytes(&done, "vocals")
    );
    // Another tenant cannot use the handle.
    let other = get(&server, "/apiv1/track/a1b2c3d4e5/vocals", BETA_KEY).await;
    assert_eq!(other.status(), 404);

    let delivered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(body) = bodies.lock().unwrap().first().cloned() {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the callback was delivered");
    assert_eq!(
        delivered["data"],
        serde_json::json!({"user": 7, "tags": ["x"]})
    );
    assert_eq!(delivered["hash"], "a1b2c3d4e5");
    assert_eq!(delivered["status"], "done");
    assert_eq!(
        delivered["id"],
        job_id.as_str(),
        "plus what MSaaS adds: the job"
    );

    let removed = server
        .client
        .delete(server.url("/apiv1/remove/a1b2c3d4e5/all"))
        .header("authorization", bearer(ACME_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    let gone = get(&server, "/apiv1/track/a1b2c3d4e5/vocals", ACME_KEY).await;
    assert_eq!(gone.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn bad_songhashes_and_oversized_callback_data_are_refused() {
    let server = start().await;
    let audio = base64::engine::general_purpose::STANDARD.encode(wav_body(100));
    for body in [
        serde_json::json!({"mp3": audio, "songhash": "../../etc"}),
        serde_json::json!({"mp3": audio, "songhash": ""}),
        serde_json::json!({"mp3": audio, "songhash": "x".repeat(129)}),
        serde_json::json!({"mp3": audio, "callback": {"url": "https://e.example/h", "data": "y".repeat(20_000)}}),
        serde_json::json!({"mp3": audio, "callback": {"data": {}}}),
    ] {
        let (status, answer) = separate(&server, body).await;
        assert!(status == 422 || status == 400, "{status}: {answer}");
    }
    assert!(
        server.objects().is_empty(),
        "nothing stored: {:?}",
        server.objects()
    );
    server.stop().await;
}

#[tokio::test]
async fn the_root_page_and_the_authorization_header() {
    let server = start().await;
    let page = server.client.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.headers().contains_key("content-security-policy"));
    assert!(page.text().await.unwrap().contains("/openapi.json"));

    let upper = server
        .client
        .get(server.url("/v1/jobs"))
        .header("authorization", format!("BEARER {ACME_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(upper.status(), 200, "the scheme is case-insensitive");
    let non_ascii = server
        .client
        .get(server.url("/v1/jobs"))
        .header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xe9t\xe9").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(non_ascii.status(), 401);
    let body: serde_json::Value = non_ascii.json().await.unwrap();
    assert_eq!(code(&body), "unauthorized");

    let bad_key = server
        .client
        .post(server.url("/apiv1/separate"))
        .header("authorization", bearer(ACME_KEY))
        .header("idempotency-key", "has space")
        .json(&serde_json::json!({"mp3": "UklGRg=="}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        bad_key.status(),
        400,
        "the legacy route checks Idempotency-Key too"
    );
    server.stop().await;
}
