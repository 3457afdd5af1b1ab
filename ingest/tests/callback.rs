//! `callback_url` webhooks: the job JSON is POSTed when it is done, signed with
//! HMAC-SHA256, and delivered again after the receiver answered 500.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hmac::{KeyInit, Mac};
use pipeline::config::CallbacksConfig;
use warp::Filter;

const SECRET: &str = "webhook-secret";

#[derive(Debug, Clone)]
struct Delivery {
    event: String,
    attempt: String,
    signature: String,
    body: bytes::Bytes,
}

/// A receiver that answers 500 to the first delivery and 204 afterwards.
async fn receiver() -> (
    String,
    Arc<Mutex<Vec<Delivery>>>,
    tokio_util::sync::CancellationToken,
) {
    let received = Arc::new(Mutex::new(Vec::<Delivery>::new()));
    let log = received.clone();
    let route = warp::path!("hook")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .map(move |headers: warp::http::HeaderMap, body: bytes::Bytes| {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let mut log = log.lock().unwrap();
            log.push(Delivery {
                event: header("x-msaas-event"),
                attempt: header("x-msaas-delivery-attempt"),
                signature: header("x-msaas-signature"),
                body,
            });
            let status = if log.len() == 1 {
                warp::http::StatusCode::INTERNAL_SERVER_ERROR
            } else {
                warp::http::StatusCode::NO_CONTENT
            };
            warp::reply::with_status("", status)
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = warp::serve(route)
        .incoming(listener)
        .graceful(stop.clone().cancelled_owned());
    tokio::spawn(server.run());
    (format!("http://{addr}/hook"), received, stop)
}

#[tokio::test]
async fn done_job_is_posted_signed_and_retried_after_a_500() {
    let (url, received, stop) = receiver().await;
    let config = CallbacksConfig {
        secret: Some(SECRET.into()),
        max_attempts: 3,
        timeout_ms: 2_000,
        backoff_base_ms: 50,
        ..CallbacksConfig::default()
    };
    let server = start_with_webhooks(&config).await;
    server.run_workers();
    let query = format!(
        "?callback_url={}",
        url.replace(':', "%3A").replace('/', "%2F")
    );
    let (status, job) = upload(&server, &query, wav_body(1000)).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    server.wait_terminal(&id).await;

    let deliveries = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let deliveries = received.lock().unwrap().clone();
            if deliveries.len() >= 2 {
                return deliveries;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the webhook was delivered again after the 500");
    assert_eq!(deliveries.len(), 2, "no delivery after the success");
    for (index, delivery) in deliveries.iter().enumerate() {
        assert_eq!(delivery.event, "done");
        assert_eq!(delivery.attempt, (index + 1).to_string());
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&delivery.body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(
            delivery.signature, expected,
            "signature of delivery {index}"
        );
        let posted: pipeline::Job = serde_json::from_slice(&delivery.body).expect("job JSON");
        assert_eq!(posted.id.as_str(), id);
        assert_eq!(posted.state, pipeline::JobState::Done);
        assert_eq!(posted.results.len(), 2);
    }
    stop.cancel();
    server.stop().await;
}
