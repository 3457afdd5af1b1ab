//! The janitor on Redis records + a local store (MSAAS_TEST_REDIS_URL, default
//! redis://127.0.0.1:6379) and on the embedded backends: retention deletes a finished job's
//! objects and record; the sweep hands a stale job back to its stage, and a worker finishes it;
//! objects of jobs that have no record are deleted once past their grace.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod redis_common;

use std::time::Duration;

use bytes::Bytes;
use pipeline::config::JobsConfig;
use pipeline::janitor::{Janitor, JanitorReport};
use pipeline::job::{StageTimes, keys, now_ms};
use pipeline::{Backends, Job, JobOptions, JobState, Stage};
use redis_common::{TestNamespace, redis_backends, spawn_trivial_workers};
use tokio_util::sync::CancellationToken;

const VISIBILITY: Duration = Duration::from_secs(1);

fn jobs_config(retention_secs: u64, sweep_after_secs: u64) -> JobsConfig {
    JobsConfig {
        retention_secs,
        sweep_after_secs,
        ..JobsConfig::default()
    }
}

fn new_job() -> Job {
    Job::new(
        "acme",
        "song.wav",
        JobOptions {
            model: "test".into(),
            ..JobOptions::default()
        },
    )
}

/// Stores an object under each of the job's prefixes.
async fn store_objects(backends: &Backends, job: &Job) -> Vec<String> {
    let objects = vec![
        keys::source(&job.id),
        keys::mix(&job.id),
        keys::stem(&job.id, "vocals"),
        keys::result(&job.id, "vocals", "mp3"),
    ];
    for key in &objects {
        backends
            .store
            .put_bytes(key, Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    objects
}

async fn retention_deletes_objects_then_records(backends: Backends) {
    let now = now_ms();
    let mut ended_long_ago = new_job();
    ended_long_ago.state = JobState::Done;
    ended_long_ago.updated_ms = now - 10_000;
    let mut ended_just_now = new_job();
    ended_just_now.state = JobState::Failed;
    let mut running = new_job();
    running.state = JobState::Separating;
    running.updated_ms = now - 10_000;
    let mut objects = Vec::new();
    for job in [&ended_long_ago, &ended_just_now, &running] {
        backends.jobs.create(job).await.unwrap();
        objects.push(store_objects(&backends, job).await);
    }
    backends
        .jobs
        .bind_alias("idem:acme:old", &ended_long_ago.id)
        .await
        .unwrap();

    // Retention 5 s; sweeping far off so only retention acts.
    let janitor = Janitor::new(backends.clone(), jobs_config(5, 3600), VISIBILITY);
    let report = janitor.run_once().await.unwrap();
    assert_eq!(
        report,
        JanitorReport {
            deleted: 1,
            requeued: 0,
            orphans: 0,
        }
    );
    assert_eq!(backends.jobs.get(&ended_long_ago.id).await.unwrap(), None);
    assert_eq!(
        backends.jobs.resolve_alias("idem:acme:old").await.unwrap(),
        None
    );
    for key in &objects[0] {
        assert_eq!(backends.store.size(key).await.unwrap(), None, "{key}");
    }
    for (job, keys) in [(&ended_just_now, &objects[1]), (&running, &objects[2])] {
        assert!(backends.jobs.get(&job.id).await.unwrap().is_some());
        for key in keys {
            assert_eq!(backends.store.size(key).await.unwrap(), Some(1), "{key}");
        }
    }
    // Nothing left to do.
    assert_eq!(janitor.run_once().await.unwrap(), JanitorReport::default());
}

#[tokio::test]
async fn retention_on_redis() {
    let ns = TestNamespace::new();
    let dir = tempfile::tempdir().unwrap();
    retention_deletes_objects_then_records(redis_backends(&ns, dir.path(), VISIBILITY).await).await;
}

#[tokio::test]
async fn retention_on_embedded_backends() {
    let dir = tempfile::tempdir().unwrap();
    retention_deletes_objects_then_records(backends::embedded(dir.path(), VISIBILITY).unwrap())
        .await;
}

/// Objects of jobs without a record (more than a page of them) go once past the grace;
/// a live job's objects and keys outside any job's prefixes stay.
async fn orphans_are_deleted_past_their_grace(backends: Backends) {
    let alive = new_job();
    backends.jobs.create(&alive).await.unwrap();
    let alive_objects = store_objects(&backends, &alive).await;
    let mut orphaned = Vec::new();
    for _ in 0..30 {
        orphaned.extend(store_objects(&backends, &new_job()).await);
    }
    let unrelated = [
        "uploads/not-a-job/source",
        "exports/report.txt",
        "results/x",
    ];
    for key in unrelated {
        backends
            .store
            .put_bytes(key, Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    let with_grace = |orphan_after_secs| JobsConfig {
        orphan_after_secs,
        ..jobs_config(3600, 3600)
    };

    // Within the grace (an upload being committed looks like this): nothing goes.
    let patient = Janitor::new(backends.clone(), with_grace(3600), VISIBILITY);
    assert_eq!(patient.run_once().await.unwrap(), JanitorReport::default());
    assert_eq!(backends.store.size(&orphaned[0]).await.unwrap(), Some(1));

    tokio::time::sleep(Duration::from_millis(20)).await;
    let janitor = Janitor::new(backends.clone(), with_grace(0), VISIBILITY);
    let report = janitor.run_once().await.unwrap();
    assert_eq!(report.orphans, orphaned.len(), "{report:?}");
    for key in &orphaned {
        assert_eq!(backends.store.size(key).await.unwrap(), None, "{key}");
    }
    for key in alive_objects.iter().map(String::as_str).chain(unrelated) {
        assert_eq!(backends.store.size(key).await.unwrap(), Some(1), "{key}");
    }
    assert!(backends.jobs.get(&alive.id).await.unwrap().is_some());
    assert_eq!(janitor.run_once().await.unwrap(), JanitorReport::default());
}

#[tokio::test]
async fn orphans_on_redis() {
    let ns = TestNamespace::new();
    let dir = tempfile::tempdir().unwrap();
    orphans_are_deleted_past_their_grace(redis_backends(&ns, dir.path(), VISIBILITY).await).await;
}

#[tokio::test]
async fn orphans_on_embedded_backends() {
    let dir = tempfile::tempdir().unwrap();
    orphans_are_deleted_past_their_grace(backends::embedded(dir.path(), VISIBILITY).unwrap()).await;
}

/// A job whose record was created but never queued, and one that died mid-decode with its
/// message lost: the sweep hands both to decode, and the workers finish them.
async fn sweep_revives_stale_jobs(backends: Backends) {
    let now = now_ms();
    let mut never_queued = new_job();
    never_queued.updated_ms = now - 5_000;
    let mut lost_mid_stage = new_job();
    lost_mid_stage.state = JobState::Decoding;
    lost_mid_stage.attempt = 1;
    lost_mid_stage.updated_ms = now - 5_000;
    lost_mid_stage.stages.insert(
        Stage::Decode,
        StageTimes {
            started_ms: Some(now - 5_000),
            finished_ms: None,
        },
    );
    let mut lost_between_stages = new_job();
    lost_between_stages.state = JobState::Separating;
    lost_between_stages.attempt = 2;
    lost_between_stages.updated_ms = now - 5_000;
    for stage in [Stage::Decode, Stage::Separate] {
        lost_between_stages.stages.insert(
            stage,
            StageTimes {
                started_ms: Some(now - 6_000),
                finished_ms: Some(now - 5_000),
            },
        );
    }
    let stale = [&never_queued, &lost_mid_stage, &lost_between_stages];
    for job in stale {
        backends.jobs.create(job).await.unwrap();
        store_objects(&backends, job).await;
    }
    // A job that moved recently is left alone.
    let fresh = new_job();
    backends.jobs.create(&fresh).await.unwrap();

    // Sweep after 0 s: still never sooner than the 1 s visibility timeout.
    let janitor = Janitor::new(backends.clone(), jobs_config(3600, 0), VISIBILITY);
    let report = janitor.run_once().await.unwrap();
    assert_eq!(report.requeued, 3, "{report:?}");
    // Their records moved, so an immediate second run leaves them be.
    assert_eq!(janitor.run_once().await.unwrap().requeued, 0);

    let shutdown = CancellationToken::new();
    let tasks = spawn_trivial_workers(&backends, &Stage::ALL, VISIBILITY, &shutdown);
    for job in stale {
        let done = tokio::time::timeout(
            Duration::from_secs(20),
            pipeline::wait_until_finished(&backends, &job.id, Duration::from_millis(100)),
        )
        .await
        .expect("job finished in time")
        .unwrap();
        assert_eq!(done.state, JobState::Done, "{done:?}");
    }
    // The fresh one was never queued and the sweep did not touch it yet.
    let fresh_now = backends.jobs.get(&fresh.id).await.unwrap().unwrap();
    assert_eq!(fresh_now.state, JobState::Queued);
    shutdown.cancel();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn sweep_on_redis() {
    let ns = TestNamespace::new();
    let dir = tempfile::tempdir().unwrap();
    sweep_revives_stale_jobs(redis_backends(&ns, dir.path(), VISIBILITY).await).await;
}

#[tokio::test]
async fn sweep_on_embedded_backends() {
    let dir = tempfile::tempdir().unwrap();
    sweep_revives_stale_jobs(backends::embedded(dir.path(), VISIBILITY).unwrap()).await;
}

#[tokio::test]
async fn run_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let backends = backends::embedded(dir.path(), VISIBILITY).unwrap();
    let mut job = new_job();
    job.state = JobState::Cancelled;
    job.updated_ms = 0;
    backends.jobs.create(&job).await.unwrap();
    let config = JobsConfig {
        janitor_interval_secs: 1,
        ..jobs_config(1, 3600)
    };
    let janitor = Janitor::new(backends.clone(), config, VISIBILITY);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { janitor.run(shutdown).await }
    });
    // The first run happens at once.
    tokio::time::timeout(Duration::from_secs(5), async {
        while backends.jobs.get(&job.id).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the janitor deleted the expired job");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("janitor stopped")
        .unwrap();
}
