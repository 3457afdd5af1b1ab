//! Per-tenant caps (`tenants.*`): over a cap an upload is answered 429 `rate_limited` with
//! `Retry-After`, nothing is stored for it, and other tenants are not affected.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use common::*;

fn two_unfinished(config: &mut pipeline::Config) {
    config.tenants.max_active_jobs = 2;
}

fn two_a_minute(config: &mut pipeline::Config) {
    config.tenants.uploads_per_minute = 2;
}

async fn upload_as(server: &Server, key: &str) -> reqwest::Response {
    server
        .client
        .post(server.url("/v1/jobs"))
        .header("authorization", bearer(key))
        .header("content-type", "audio/wav")
        .body(wav_body(2000))
        .send()
        .await
        .unwrap()
}

async fn assert_rate_limited(
    response: reqwest::Response,
    retry_range: std::ops::RangeInclusive<u64>,
) {
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_range.contains(&retry), "Retry-After {retry}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(code(&body), "rate_limited", "{body}");
}

#[tokio::test]
async fn unfinished_jobs_are_capped_per_tenant() {
    let server = start_with(Options {
        tune: two_unfinished,
        ..Options::default()
    })
    .await;
    // No workers run: both jobs stay queued.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = upload_as(&server, ACME_KEY).await;
        assert_eq!(response.status(), 202);
        let body: serde_json::Value = response.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let objects = server.objects().len();
    assert_rate_limited(upload_as(&server, ACME_KEY).await, 30..=30).await;
    let legacy = server
        .client
        .post(server.url("/apiv1/separate"))
        .header("authorization", bearer(ACME_KEY))
        .body(r#"{"mp3": "UklGRiQAAABXQVZF"}"#)
        .send()
        .await
        .unwrap();
    assert_rate_limited(legacy, 30..=30).await;
    assert_eq!(
        server.objects().len(),
        objects,
        "nothing stored when refused"
    );
    assert_eq!(server.depth().await.waiting, 2);

    // Another tenant is not held back.
    assert_eq!(upload_as(&server, BETA_KEY).await.status(), 202);
    // A job that ends frees its place.
    let deleted = server
        .client
        .delete(server.url(&format!("/v1/jobs/{}", ids[0])))
        .header("authorization", bearer(ACME_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(upload_as(&server, ACME_KEY).await.status(), 202);
    server.stop().await;
}

#[tokio::test]
async fn uploads_per_minute_are_capped_per_tenant() {
    let server = start_with(Options {
        tune: two_a_minute,
        ..Options::default()
    })
    .await;
    // The window is a wall-clock minute: the three uploads are judged only when they fell
    // in one window (tried again, at most once more, if a minute boundary fell between).
    let minute = || pipeline::job::now_ms() / 60_000;
    for attempt in 0.. {
        let started = minute();
        let mut statuses = Vec::new();
        let mut third = None;
        for _ in 0..3 {
            let response = upload_as(&server, ACME_KEY).await;
            statuses.push(response.status().as_u16());
            third = Some(response);
        }
        if minute() != started {
            assert!(attempt < 1, "two minute boundaries in a row");
            continue;
        }
        if attempt == 0 {
            assert_eq!(statuses[..2], [202, 202]);
        }
        assert_rate_limited(third.unwrap(), 1..=60).await;
        break;
    }
    assert_eq!(upload_as(&server, BETA_KEY).await.status(), 202);
    let metrics = observe::metrics::render();
    assert!(
        metrics.lines().any(
            |line| line.starts_with("msaas_tenant_limited_total{limit=\"uploads_per_minute\"}")
        ),
        "{metrics}"
    );
    server.stop().await;
}
