//! Shared by the Redis test files: a random key namespace per test on the shared server,
//! removed again when the test ends (even when it fails), and trivial stage handlers.

#![allow(dead_code)] // each test file uses a different part

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backends::{LocalDirStore, LocalEvents};
use backends::{RedisJobStore, RedisQueue};
use bytes::Bytes;
use pipeline::job::keys;
use pipeline::{
    Backends, Job, Stage, StageContext, StageError, StageHandler, StageOutput, WorkerSettings,
};

pub fn redis_url() -> String {
    std::env::var("MSAAS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key namespace of its own on the shared server; its keys are deleted on drop.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub fn new() -> Self {
        Self {
            name: format!("msaas-test-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    pub async fn queue(&self, visibility_timeout: Duration) -> RedisQueue {
        RedisQueue::connect(&redis_url(), &self.name, visibility_timeout)
            .await
            .unwrap_or_else(|err| panic!("{}", unreachable_message(&err)))
    }

    pub async fn store(&self, retention: Duration) -> RedisJobStore {
        RedisJobStore::connect(&redis_url(), &self.name, retention)
            .await
            .unwrap_or_else(|err| panic!("{}", unreachable_message(&err)))
    }

    /// A raw connection, to look at keys the way an operator would.
    pub fn raw(&self) -> redis::Connection {
        redis::Client::open(redis_url())
            .and_then(|client| client.get_connection())
            .unwrap_or_else(|err| panic!("{}", unreachable_message(&err)))
    }

    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.name)
    }
}

fn unreachable_message(err: &dyn std::fmt::Display) -> String {
    format!(
        "Redis is not reachable at {} ({err}); start it (`make test` or tools/dev-services start) \
         or point MSAAS_TEST_REDIS_URL at one",
        redis_url()
    )
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(redis_url()).and_then(|c| c.get_connection()) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.name))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query(&mut conn);
        }
    }
}

/// Redis queue and records, a local directory store, in-process events.
pub async fn redis_backends(
    namespace: &TestNamespace,
    store_dir: &std::path::Path,
    visibility_timeout: Duration,
) -> Backends {
    // Paired as `connect` pairs them: new jobs are created and queued in one script.
    let queue = namespace.queue(visibility_timeout).await;
    let jobs = namespace
        .store(Duration::from_secs(3600))
        .await
        .beside(&queue);
    Backends {
        queue: Arc::new(queue),
        jobs: Arc::new(jobs),
        store: Arc::new(LocalDirStore::new(store_dir).expect("store dir")),
        events: Arc::new(LocalEvents::default()),
        hooks: Vec::new(),
    }
}

pub fn settings(consumer: &str, visibility_timeout: Duration) -> WorkerSettings {
    WorkerSettings {
        max_attempts: 4,
        visibility_timeout,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        claim_wait: Duration::from_millis(300),
        outage_budget: Duration::from_secs(30),
        consumer: consumer.to_owned(),
        cancel_poll: Duration::from_millis(200),
    }
}

/// A stage that writes a small object at its real key and returns what the record needs.
pub struct TrivialStage(pub Stage);

#[async_trait]
impl StageHandler for TrivialStage {
    fn stage(&self) -> Stage {
        self.0
    }

    async fn run(&self, job: &Job, ctx: &StageContext) -> Result<StageOutput, StageError> {
        trivial_run(self.0, job, ctx).await
    }
}

pub async fn trivial_run(
    stage: Stage,
    job: &Job,
    ctx: &StageContext,
) -> Result<StageOutput, StageError> {
    match stage {
        Stage::Decode => {
            ctx.store
                .put_bytes(&keys::mix(&job.id), Bytes::from_static(b"mix"))
                .await?;
            Ok(StageOutput::default())
        }
        Stage::Separate => {
            ctx.store
                .put_bytes(
                    &keys::stem(&job.id, "vocals"),
                    Bytes::from_static(b"vocals"),
                )
                .await?;
            Ok(StageOutput {
                stems: vec!["vocals".to_owned()],
                ..StageOutput::default()
            })
        }
        Stage::Encode => {
            let key = keys::result(&job.id, "vocals", "wav");
            ctx.store
                .put_bytes(&key, Bytes::from_static(b"encoded"))
                .await?;
            Ok(StageOutput {
                results: vec![("vocals".to_owned(), key)],
                ..StageOutput::default()
            })
        }
    }
}

/// `job` as a stage moves it: `state`, `attempt`, a fresh `updated_ms`.
pub fn moved(job: &Job, state: pipeline::JobState, attempt: u32) -> Job {
    let mut next = job.clone();
    next.state = state;
    next.attempt = attempt;
    next.updated_ms = pipeline::job::now_ms();
    next
}

/// Runs a [`TrivialStage`] worker (consumer `<stage>-1`) for each of `stages` until `shutdown`.
pub fn spawn_trivial_workers(
    backends: &Backends,
    stages: &[Stage],
    visibility_timeout: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    stages
        .iter()
        .map(|&stage| {
            let worker = pipeline::Worker::new(
                backends.clone(),
                Arc::new(TrivialStage(stage)),
                settings(&format!("{stage}-1"), visibility_timeout),
            );
            let shutdown = shutdown.clone();
            tokio::spawn(async move { worker.run(shutdown).await })
        })
        .collect()
}
