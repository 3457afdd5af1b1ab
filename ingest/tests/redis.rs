//! The API over Redis job records and Redis Streams queues (MSAAS_TEST_REDIS_URL, default
//! redis://127.0.0.1:6379; `make test` starts it): idempotency, the tenant wall, a job run
//! to done by workers on the same queues, download and delete. Keys live under a random
//! namespace, removed at the end.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use std::sync::Arc;
use std::time::Duration;

use backends::{RedisJobStore, RedisQueue};
use common::*;

fn redis_url() -> String {
    std::env::var("MSAAS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn remove_namespace(url: &str, namespace: &str) {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }
}

#[tokio::test]
async fn api_on_redis_records_and_queues() {
    let url = redis_url();
    let namespace = format!("ingest-test-{}", uuid::Uuid::new_v4().simple());
    let queue = RedisQueue::connect(&url, &namespace, Duration::from_secs(30))
        .await
        .unwrap_or_else(|err| panic!("Redis at {url} is needed (make test starts it): {err}"));
    let jobs = RedisJobStore::connect(&url, &namespace, Duration::from_secs(3600))
        .await
        .unwrap_or_else(|err| panic!("Redis at {url} is needed (make test starts it): {err}"));
    let server = start_with(Options {
        queue_and_jobs: Some((Arc::new(queue), Arc::new(jobs))),
        ..Options::default()
    })
    .await;

    let send = || {
        server
            .client
            .post(server.url("/v1/jobs?model=duo"))
            .header("authorization", bearer(ACME_KEY))
            .header("idempotency-key", "redis-key-1")
            .body(wav_body(4000))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await.unwrap();
    let id = first["id"].as_str().unwrap().to_owned();
    let again = send().await.unwrap();
    assert_eq!(again.status(), 200);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["id"], id.as_str());
    assert_eq!(server.depth().await.waiting, 1);
    assert_eq!(server.source_bytes(&id).await, wav_body(4000));

    let foreign = server
        .client
        .get(server.url(&format!("/v1/jobs/{id}")))
        .header("authorization", bearer(BETA_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 404);

    server.run_workers();
    let done = server.wait_terminal(&id).await;
    assert_eq!(done.state, pipeline::JobState::Done);
    let stem = server
        .client
        .get(server.url(&format!("/v1/jobs/{id}/stems/vocals")))
        .header("authorization", bearer(ACME_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(stem.status(), 200);
    assert_eq!(
        stem.bytes().await.unwrap().to_vec(),
        fake_stem_bytes(&done, "vocals")
    );

    let deleted = server
        .client
        .delete(server.url(&format!("/v1/jobs/{id}")))
        .header("authorization", bearer(ACME_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(server.job(&id).await.is_none());
    assert!(server.objects().is_empty());
    // The key is free again once its job is gone.
    let fresh = send().await.unwrap();
    assert_eq!(fresh.status(), 202);
    server.stop().await;
    remove_namespace(&url, &namespace).await;
}
