//! Issue 17: a minute without the S3 server, then a minute without Redis, each while jobs are
//! in flight. Workers wait the outages out (`worker.outage_budget_secs`, 300 s by default)
//! instead of spending attempts: with 3 attempts and a backoff of 0.2–2 s, counting the
//! outage's failures as attempts would fail jobs within seconds. Every job ends `done`.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pipeline::{Job, JobId, JobState, Stage};
use support::{Cluster, Msaas, require_default_model, submit_song};

const TENANT: &str = "outages";
const OUTAGE: Duration = Duration::from_secs(60);

/// The state of every job that could be read (reads fail while Redis is down).
async fn states(backends: &pipeline::Backends, ids: &[JobId]) -> BTreeMap<JobId, Job> {
    let mut seen = BTreeMap::new();
    for id in ids {
        if let Ok(Some(job)) = backends.jobs.get(id).await {
            seen.insert(id.clone(), job);
        }
    }
    seen
}

/// Waits until some job of `ids` is past decode and not finished: work is in flight.
async fn wait_in_flight(backends: &pipeline::Backends, ids: &[JobId], workers: &[Msaas]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = states(backends, ids).await;
        if seen
            .values()
            .any(|job| matches!(job.state, JobState::Separating | JobState::Encoding))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no job reached separate: {:?}; logs:\n{}",
            seen.values().map(|j| j.state).collect::<Vec<_>>(),
            logs(workers)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn logs(workers: &[Msaas]) -> String {
    workers
        .iter()
        .map(Msaas::log_text)
        .collect::<Vec<_>>()
        .join("\n----\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_without_s3_and_a_minute_without_redis_fail_no_job() {
    require_default_model();
    let mut cluster = Cluster::start(&[TENANT]);
    cluster.set("MSAAS_WORKER__MAX_ATTEMPTS", "3");
    let backends = cluster.backends().await;
    let audio = tempfile::tempdir().unwrap();
    let workers: Vec<Msaas> = Stage::ALL
        .into_iter()
        .map(|stage| cluster.spawn(&["worker", stage.as_str()]))
        .collect();

    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(submit_song(&backends, TENANT, audio.path(), n, 44_100).await);
    }
    wait_in_flight(&backends, &ids, &workers).await;
    cluster.weed.kill();
    tokio::time::sleep(OUTAGE).await;
    cluster.weed.restart();

    for n in 4..8 {
        ids.push(submit_song(&backends, TENANT, audio.path(), n, 44_100).await);
    }
    wait_in_flight(&backends, &ids[4..], &workers).await;
    cluster.redis.kill();
    tokio::time::sleep(OUTAGE).await;
    cluster.redis.restart();

    let deadline = Instant::now() + Duration::from_secs(240);
    let finished = loop {
        let seen = states(&backends, &ids).await;
        if seen.len() == ids.len() && seen.values().all(|job| job.state.is_terminal()) {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "jobs still open 240 s after the outages: {:?}; logs:\n{}",
            seen.values()
                .map(|j| (j.id.to_string(), j.state))
                .collect::<Vec<_>>(),
            logs(&workers)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for (id, job) in &finished {
        assert_eq!(
            job.state,
            JobState::Done,
            "{id} ended {} ({:?}); logs:\n{}",
            job.state,
            job.error,
            logs(&workers)
        );
        assert_eq!(job.results.len(), 2, "{id}");
    }
    let mut workers = workers;
    for worker in &mut workers {
        assert!(
            worker.child.try_wait().unwrap().is_none(),
            "a worker exited during the outages; log:\n{}",
            worker.log_text()
        );
    }
    // Jobs in flight waited in place (the line a worker logs once per outage).
    assert!(
        logs(&workers).contains("a dependency is down; waiting"),
        "no worker waited an outage out:\n{}",
        logs(&workers)
    );
}
