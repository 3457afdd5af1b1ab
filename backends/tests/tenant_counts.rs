//! The per-tenant counts behind `tenants.*` caps, on both job stores (in memory; a real
//! Redis at MSAAS_TEST_REDIS_URL, default redis://127.0.0.1:6379): unfinished jobs follow
//! every move of a record, and upload windows count per tenant and start afresh.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod redis_common;

use std::time::Duration;

use backends::MemoryJobStore;
use pipeline::traits::JobStore;
use pipeline::{Job, JobOptions, JobState};
use redis_common::{TestNamespace, moved};

async fn unfinished_jobs_are_counted_per_tenant(store: &dyn JobStore) {
    let first = Job::new("acme", "a.mp3", JobOptions::default());
    let second = Job::new("acme", "b.mp3", JobOptions::default());
    let other = Job::new("beta", "c.mp3", JobOptions::default());
    for job in [&first, &second, &other] {
        store.create(job).await.unwrap();
    }
    assert_eq!(store.active_count("acme").await.unwrap(), 2);
    assert_eq!(store.active_count("beta").await.unwrap(), 1);
    assert_eq!(store.active_count("nobody").await.unwrap(), 0);

    // A move between working states keeps it counted; a terminal one ends it.
    let decoding = moved(&first, JobState::Decoding, 1);
    store
        .compare_and_set(JobState::Queued, 0, &decoding)
        .await
        .unwrap();
    assert_eq!(store.active_count("acme").await.unwrap(), 2);
    let done = moved(&decoding, JobState::Done, 1);
    store
        .compare_and_set(JobState::Decoding, 1, &done)
        .await
        .unwrap();
    assert_eq!(store.active_count("acme").await.unwrap(), 1);
    // A refused compare-and-set changes nothing.
    assert!(
        store
            .compare_and_set(JobState::Decoding, 1, &moved(&done, JobState::Queued, 2))
            .await
            .is_err()
    );
    assert_eq!(store.active_count("acme").await.unwrap(), 1);

    // Deleting an unfinished record ends it too; a record created terminal never counts.
    store.delete(&second.id).await.unwrap();
    assert_eq!(store.active_count("acme").await.unwrap(), 0);
    let mut cancelled = Job::new("acme", "d.mp3", JobOptions::default());
    cancelled.state = JobState::Cancelled;
    store.create(&cancelled).await.unwrap();
    assert_eq!(store.active_count("acme").await.unwrap(), 0);
    assert_eq!(store.active_count("beta").await.unwrap(), 1);
}

async fn uploads_are_counted_per_tenant_and_window(store: &dyn JobStore) {
    const WINDOW: u64 = 60_000;
    let start = 1_000 * WINDOW;
    for expected in 1..=3 {
        let count = store
            .count_upload("acme", start + expected * 100, WINDOW)
            .await
            .unwrap();
        assert_eq!(count, expected);
    }
    assert_eq!(store.count_upload("beta", start, WINDOW).await.unwrap(), 1);
    // The next window starts at one.
    assert_eq!(
        store
            .count_upload("acme", start + WINDOW, WINDOW)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn memory_store_counts() {
    let store = MemoryJobStore::new();
    unfinished_jobs_are_counted_per_tenant(&store).await;
    uploads_are_counted_per_tenant_and_window(&store).await;
}

#[tokio::test]
async fn redis_store_counts() {
    let ns = TestNamespace::new();
    let store = ns.store(Duration::from_secs(3600)).await;
    unfinished_jobs_are_counted_per_tenant(&store).await;
    uploads_are_counted_per_tenant_and_window(&store).await;
    // A window's counter does not outlive it for long.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(ns.key(&format!("tenant:acme:uploads:{}", 1_001)))
        .query(&mut ns.raw())
        .unwrap();
    assert!(ttl > 0 && ttl <= 120_000, "{ttl}");
}
