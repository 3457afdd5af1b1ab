//! The worker loop end to end on the embedded backends, with three small stage handlers that
//! stand in for decode / separate / encode: they read and write the store at the real keys,
//! report progress, and fail or block on cue.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backends::{LocalDirStore, LocalEvents, MemoryJobStore, MemoryQueue};
use bytes::Bytes;
use futures::StreamExt;
use pipeline::job::keys;
use pipeline::traits::{
    Delivery, EventKind, JobEvent, Progress, QueueDepth, StageMessage, StageQueue,
};
use pipeline::{
    BackendError, Backends, CodedError, ErrorCode, Job, JobOptions, JobState, Outcome, SourceInfo,
    Stage, StageContext, StageError, StageHandler, StageOutput, Worker, WorkerSettings,
};
use tokio_util::sync::CancellationToken;

/// What a fake stage does when it runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Work,
    /// Waits until its context is cancelled, then returns `cancelled`.
    BlockUntilCancelled,
    /// Works, but slowly.
    Slow(Duration),
    Panic,
}

struct FakeStage {
    stage: Stage,
    runs: AtomicU32,
    /// Errors returned by the first runs, in order; after them it works.
    failures: Mutex<VecDeque<StageError>>,
    /// Behaviour of the first runs, in order; after them `Work`.
    behaviours: Mutex<VecDeque<Behaviour>>,
    /// Set when a run noticed its cancellation.
    saw_cancel: AtomicU32,
}

impl FakeStage {
    fn new(stage: Stage) -> Arc<Self> {
        Arc::new(Self {
            stage,
            runs: AtomicU32::new(0),
            failures: Mutex::default(),
            behaviours: Mutex::default(),
            saw_cancel: AtomicU32::new(0),
        })
    }

    fn fail_with(&self, errors: impl IntoIterator<Item = StageError>) {
        self.failures.lock().unwrap().extend(errors);
    }

    fn behave(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.behaviours.lock().unwrap().extend(behaviours);
    }

    fn runs(&self) -> u32 {
        self.runs.load(Ordering::SeqCst)
    }
}

async fn read(ctx: &StageContext, key: &str) -> Result<Vec<u8>, StageError> {
    let mut stream = ctx.store.get_stream(key, None).await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[async_trait]
impl StageHandler for FakeStage {
    fn stage(&self) -> Stage {
        self.stage
    }

    async fn run(&self, job: &Job, ctx: &StageContext) -> Result<StageOutput, StageError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let behaviour = self
            .behaviours
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Behaviour::Work);
        match behaviour {
            Behaviour::Work => {}
            Behaviour::BlockUntilCancelled => {
                ctx.cancel.cancelled().await;
                self.saw_cancel.fetch_add(1, Ordering::SeqCst);
                return Err(StageError::cancelled());
            }
            Behaviour::Slow(duration) => tokio::time::sleep(duration).await,
            Behaviour::Panic => panic!("stage bug"),
        }
        ctx.progress.report(Progress { done: 1, total: 2 });
        if let Some(error) = self.failures.lock().unwrap().pop_front() {
            return Err(error);
        }
        ctx.progress.report(Progress { done: 2, total: 2 });
        match self.stage {
            Stage::Decode => {
                let source = read(ctx, &keys::source(&job.id)).await?;
                let mix: Vec<u8> = source.iter().map(u8::to_ascii_uppercase).collect();
                ctx.store
                    .put_bytes(&keys::mix(&job.id), Bytes::from(mix))
                    .await?;
                Ok(StageOutput {
                    source: Some(SourceInfo {
                        sample_rate: 44_100,
                        channels: 2,
                        duration_secs: 1.0,
                        codec: "fake".into(),
                        title: None,
                        artist: None,
                        album: None,
                        skipped_packets: 0,
                    }),
                    ..StageOutput::default()
                })
            }
            Stage::Separate => {
                let mix = read(ctx, &keys::mix(&job.id)).await?;
                let (first, second) = mix.split_at(mix.len() / 2);
                for (stem, part) in [("vocals", first), ("accompaniment", second)] {
                    ctx.store
                        .put_bytes(&keys::stem(&job.id, stem), Bytes::copy_from_slice(part))
                        .await?;
                }
                Ok(StageOutput {
                    stems: vec!["vocals".into(), "accompaniment".into()],
                    ..StageOutput::default()
                })
            }
            Stage::Encode => {
                let mut results = Vec::new();
                for stem in &job.stems {
                    let data = read(ctx, &keys::stem(&job.id, stem)).await?;
                    let key = keys::result(&job.id, stem, "txt");
                    ctx.store.put_bytes(&key, Bytes::from(data)).await?;
                    results.push((stem.clone(), key));
                }
                Ok(StageOutput {
                    results,
                    ..StageOutput::default()
                })
            }
        }
    }
}

/// A queue that forgets to ack a number of times: the process "dies" right before the ack.
struct CrashBeforeAck {
    inner: MemoryQueue,
    lost_acks: AtomicU32,
}

#[async_trait]
impl StageQueue for CrashBeforeAck {
    async fn enqueue(&self, stage: Stage, message: StageMessage) -> Result<(), BackendError> {
        self.inner.enqueue(stage, message).await
    }
    async fn claim(
        &self,
        stage: Stage,
        consumer: &str,
        wait: Duration,
    ) -> Result<Option<Delivery>, BackendError> {
        self.inner.claim(stage, consumer, wait).await
    }
    async fn ack(&self, stage: Stage, delivery: &Delivery) -> Result<(), BackendError> {
        let lost = self
            .lost_acks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lost {
            // Not an outage code: the worker would wait an outage out and ack again.
            return Err(BackendError::Io(std::io::Error::other(
                "process died before the ack",
            )));
        }
        self.inner.ack(stage, delivery).await
    }
    async fn retry(
        &self,
        stage: Stage,
        delivery: &Delivery,
        delay: Duration,
    ) -> Result<(), BackendError> {
        self.inner.retry(stage, delivery, delay).await
    }
    async fn dead_letter(
        &self,
        stage: Stage,
        delivery: &Delivery,
        reason: &CodedError,
    ) -> Result<(), BackendError> {
        self.inner.dead_letter(stage, delivery, reason).await
    }
    async fn depth(&self, stage: Stage) -> Result<QueueDepth, BackendError> {
        self.inner.depth(stage).await
    }
    async fn touch(&self, stage: Stage, delivery: &Delivery) -> Result<(), BackendError> {
        self.inner.touch(stage, delivery).await
    }
}

struct Harness {
    backends: Backends,
    queue: MemoryQueue,
    handlers: [Arc<FakeStage>; 3],
    settings: WorkerSettings,
    events: Arc<Mutex<Vec<JobEvent>>>,
    _dir: tempfile::TempDir,
}

fn settings(max_attempts: u32, visibility_timeout: Duration) -> WorkerSettings {
    WorkerSettings {
        max_attempts,
        visibility_timeout,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        claim_wait: Duration::from_millis(50),
        outage_budget: Duration::from_millis(300),
        consumer: "test".into(),
        cancel_poll: Duration::from_millis(20),
    }
}

impl Harness {
    async fn new(max_attempts: u32, visibility_timeout: Duration) -> Self {
        Self::with_queue(max_attempts, visibility_timeout, None).await
    }

    async fn with_queue(
        max_attempts: u32,
        visibility_timeout: Duration,
        lost_acks: Option<u32>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let queue = MemoryQueue::new(visibility_timeout);
        let stage_queue: Arc<dyn StageQueue> = match lost_acks {
            Some(n) => Arc::new(CrashBeforeAck {
                inner: queue.clone(),
                lost_acks: AtomicU32::new(n),
            }),
            None => Arc::new(queue.clone()),
        };
        let backends = Backends {
            queue: stage_queue,
            jobs: Arc::new(MemoryJobStore::new()),
            store: Arc::new(LocalDirStore::new(dir.path()).unwrap()),
            events: Arc::new(LocalEvents::default()),
            hooks: Vec::new(),
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut stream = backends.events.subscribe(None).await.unwrap();
        let sink = events.clone();
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                sink.lock().unwrap().push(event);
            }
        });
        Self {
            backends,
            queue,
            handlers: Stage::ALL.map(FakeStage::new),
            settings: settings(max_attempts, visibility_timeout),
            events,
            _dir: dir,
        }
    }

    /// One job through workers whose `stage` fails first with `errors`: the record it ends
    /// with.
    async fn run_failing(&self, stage: Stage, errors: impl IntoIterator<Item = StageError>) -> Job {
        self.handler(stage).fail_with(errors);
        let (shutdown, tasks) = self.start_workers();
        let job = self.submit(b"abcd").await;
        let ended = self.wait_finished(&job).await;
        stop(shutdown, tasks).await;
        ended
    }

    /// One job through one worker per stage plus a second separate worker, which takes the
    /// message over if the first lets its claim lapse: the record it ends with.
    async fn run_with_two_separate_workers(&self, source: &'static [u8]) -> Job {
        let (shutdown, mut tasks) = self.start_workers();
        let second_separate = self.worker(Stage::Separate);
        let second_shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            second_separate.run(second_shutdown).await;
        }));
        let job = self.submit(source).await;
        let ended = self.wait_finished(&job).await;
        stop(shutdown, tasks).await;
        ended
    }

    fn handler(&self, stage: Stage) -> &Arc<FakeStage> {
        &self.handlers[stage as usize]
    }

    fn worker(&self, stage: Stage) -> Worker {
        Worker::new(
            self.backends.clone(),
            self.handler(stage).clone(),
            self.settings.clone(),
        )
    }

    /// Starts one worker per stage; cancel the token to stop them.
    fn start_workers(&self) -> (CancellationToken, Vec<tokio::task::JoinHandle<()>>) {
        let shutdown = CancellationToken::new();
        let tasks = Stage::ALL
            .into_iter()
            .map(|stage| {
                let worker = self.worker(stage);
                let shutdown = shutdown.clone();
                tokio::spawn(async move { worker.run(shutdown).await })
            })
            .collect();
        (shutdown, tasks)
    }

    async fn submit(&self, source: &'static [u8]) -> Job {
        let job = Job::new(
            "tenant",
            "song.txt",
            JobOptions {
                model: "fake".into(),
                ..JobOptions::default()
            },
        );
        let body = futures::stream::iter([Ok(Bytes::from_static(source))]).boxed();
        pipeline::submit(&self.backends, job, body, Some(1 << 20), None)
            .await
            .unwrap()
    }

    async fn wait_finished(&self, job: &Job) -> Job {
        tokio::time::timeout(
            Duration::from_secs(10),
            pipeline::wait_until_finished(&self.backends, &job.id, Duration::from_millis(20)),
        )
        .await
        .expect("job finishes in time")
        .unwrap()
    }

    async fn record(&self, job: &Job) -> Job {
        self.backends.jobs.get(&job.id).await.unwrap().unwrap()
    }

    async fn read(&self, key: &str) -> Vec<u8> {
        let mut stream = self.backends.store.get_stream(key, None).await.unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    async fn assert_queues_empty(&self) {
        for stage in Stage::ALL {
            let depth = self.queue.depth(stage).await.unwrap();
            assert_eq!(
                (depth.waiting, depth.pending),
                (0, 0),
                "{stage} queue: {depth:?}"
            );
        }
    }

    fn event_kinds(&self) -> Vec<(EventKind, Option<Stage>)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e.kind, e.stage))
            .collect()
    }

    async fn claim(&self, stage: Stage, consumer: &str, wait: Duration) -> Option<Delivery> {
        self.backends
            .queue
            .claim(stage, consumer, wait)
            .await
            .unwrap()
    }
}

async fn stop(shutdown: CancellationToken, tasks: Vec<tokio::task::JoinHandle<()>>) {
    shutdown.cancel();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("worker stops on shutdown")
            .unwrap();
    }
}

fn transient(message: &str) -> StageError {
    StageError::new(ErrorCode::Io, message)
}

#[tokio::test]
async fn job_runs_through_every_stage_to_done() {
    let h = Harness::new(3, Duration::from_secs(30)).await;
    let (shutdown, tasks) = h.start_workers();
    let job = h.submit(b"hello world!").await;
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(
        job.sha256.as_deref(),
        // sha256("hello world!")
        Some("7509e5bda0c762d2bac7f90d758b5b2263fa01ccbc542ab5e3df163be08e6ca9")
    );
    let done = h.wait_finished(&job).await;
    stop(shutdown, tasks).await;

    assert_eq!(done.state, JobState::Done, "{:?}", done.error);
    assert_eq!(done.error, None);
    assert_eq!(done.source.as_ref().map(|s| s.codec.as_str()), Some("fake"));
    assert_eq!(done.stems, vec!["vocals", "accompaniment"]);
    assert_eq!(done.results.len(), 2);
    assert_eq!(h.read(&done.results["vocals"]).await, b"HELLO ");
    assert_eq!(h.read(&done.results["accompaniment"]).await, b"WORLD!");
    for stage in Stage::ALL {
        let times = done.stages[&stage];
        let (started, finished) = (times.started_ms.unwrap(), times.finished_ms.unwrap());
        assert!(started <= finished, "{stage}");
        assert_eq!(h.handler(stage).runs(), 1, "{stage} ran once");
    }
    h.assert_queues_empty().await;
    assert!(h.queue.dead_letters().is_empty());

    // Give the event collector a moment to drain, then check the story the events tell.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let kinds = h.event_kinds();
    let without_progress: Vec<_> = kinds
        .iter()
        .copied()
        .filter(|(kind, _)| *kind != EventKind::Progress)
        .collect();
    assert_eq!(
        without_progress,
        vec![
            (EventKind::Queued, None),
            (EventKind::StageStarted, Some(Stage::Decode)),
            (EventKind::StageFinished, Some(Stage::Decode)),
            (EventKind::StageStarted, Some(Stage::Separate)),
            (EventKind::StageFinished, Some(Stage::Separate)),
            (EventKind::StageStarted, Some(Stage::Encode)),
            (EventKind::StageFinished, Some(Stage::Encode)),
            (EventKind::Done, None),
        ]
    );
    let progress = h
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind == EventKind::Progress && e.stage == Some(Stage::Separate))
        .filter_map(|e| e.progress)
        .collect::<Vec<_>>();
    assert_eq!(
        progress,
        vec![
            Progress { done: 1, total: 2 },
            Progress { done: 2, total: 2 }
        ]
    );
}

#[tokio::test]
async fn submit_refuses_empty_oversized_and_invalid_jobs() {
    let h = Harness::new(3, Duration::from_secs(30)).await;
    let submit = |source: &'static [u8], limit: u64, model: &str| {
        let job = Job::new(
            "tenant",
            "x",
            JobOptions {
                model: model.into(),
                ..JobOptions::default()
            },
        );
        let body = futures::stream::iter([Ok(Bytes::from_static(source))]).boxed();
        let backends = h.backends.clone();
        async move { pipeline::submit(&backends, job, body, Some(limit), None).await }
    };
    assert_eq!(
        submit(b"", 10, "m").await.unwrap_err().code,
        ErrorCode::EmptyInput
    );
    assert_eq!(
        submit(b"0123456789+", 10, "m").await.unwrap_err().code,
        ErrorCode::TooLarge
    );
    assert_eq!(
        submit(b"ok", 10, "").await.unwrap_err().code,
        ErrorCode::InvalidOption
    );
    assert!(h.backends.jobs.list("tenant", 10).await.unwrap().is_empty());
    h.assert_queues_empty().await;
}

#[tokio::test]
async fn permanent_failure_fails_the_job_at_once() {
    let h = Harness::new(3, Duration::from_secs(30)).await;
    h.handler(Stage::Separate)
        .fail_with([StageError::new(ErrorCode::UnknownStem, "no stem \"flute\"")]);
    let (shutdown, tasks) = h.start_workers();
    let job = h.submit(b"abc").await;
    let failed = h.wait_finished(&job).await;
    stop(shutdown, tasks).await;

    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(
        failed.error,
        Some(CodedError::new(ErrorCode::UnknownStem, "no stem \"flute\""))
    );
    assert_eq!(h.handler(Stage::Separate).runs(), 1, "not retried");
    assert_eq!(h.handler(Stage::Encode).runs(), 0);
    assert!(failed.results.is_empty());
    h.assert_queues_empty().await;
    assert!(h.queue.dead_letters().is_empty());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        h.event_kinds()
            .contains(&(EventKind::Failed, Some(Stage::Separate)))
    );
}

#[tokio::test]
async fn transient_failure_is_retried_then_succeeds() {
    let h = Harness::new(3, Duration::from_secs(30)).await;
    h.handler(Stage::Decode).fail_with([
        transient("disk hiccup"),
        StageError::new(ErrorCode::ModelRuntime, "oom"),
    ]);
    let (shutdown, tasks) = h.start_workers();
    let job = h.submit(b"abcd").await;
    let done = h.wait_finished(&job).await;
    stop(shutdown, tasks).await;

    assert_eq!(done.state, JobState::Done, "{:?}", done.error);
    assert_eq!(h.handler(Stage::Decode).runs(), 3);
    assert_eq!(h.handler(Stage::Separate).runs(), 1);
    assert_eq!(h.handler(Stage::Encode).runs(), 1);
    h.assert_queues_empty().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let retries = h
        .event_kinds()
        .into_iter()
        .filter(|k| *k == (EventKind::Retrying, Some(Stage::Decode)))
        .count();
    assert_eq!(retries, 2);
}

#[tokio::test]
async fn transient_failures_exhaust_attempts_then_dead_letter() {
    let h = Harness::new(3, Duration::from_secs(30)).await;
    let failed = h
        .run_failing(
            Stage::Encode,
            [
                transient("first"),
                transient("second"),
                transient("third: disk full"),
                // Would succeed on a fourth attempt, which must not happen.
            ],
        )
        .await;

    assert_eq!(failed.state, JobState::Failed);
    let error = failed.error.unwrap();
    assert_eq!(error.code, ErrorCode::AttemptsExhausted);
    assert!(
        error.message.contains("third: disk full"),
        "{}",
        error.message
    );
    assert!(error.message.contains("3 times"), "{}", error.message);
    assert_eq!(h.handler(Stage::Encode).runs(), 3);
    let dead = h.queue.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].stage, &dead[0].message.job_id, dead[0].attempt),
        (Stage::Encode, &failed.id, 3)
    );
    assert_eq!(dead[0].reason.code, ErrorCode::AttemptsExhausted);
    h.assert_queues_empty().await;
}

fn outage(message: &str) -> StageError {
    StageError::new(ErrorCode::StorageUnavailable, message)
}

/// Storage down for more runs than the job has attempts, but within the outage budget: the
/// worker waits it out in place (one delivery, no retry through the queue) and the job ends
/// done, its attempts untouched.
#[tokio::test]
async fn an_outage_within_the_budget_costs_no_attempts() {
    let h = Harness::new(2, Duration::from_secs(30)).await;
    let done = h
        .run_failing(
            Stage::Separate,
            (0..4).map(|n| outage(&format!("storage down ({n})"))),
        )
        .await;

    assert_eq!(done.state, JobState::Done, "{:?}", done.error);
    assert_eq!(h.handler(Stage::Separate).runs(), 5);
    // Still the first delivery: the outage was not an attempt.
    assert_eq!(done.attempt, 1);
    assert!(h.queue.dead_letters().is_empty());
    h.assert_queues_empty().await;
}

/// Waits between the outage's runs longer than the visibility timeout, with a second worker
/// on the stage: the claim is kept through the waits, so the other worker never takes the
/// message over (each takeover would be an attempt, and with 2 attempts fail the job).
#[tokio::test]
async fn an_outage_keeps_the_claim_through_waits_longer_than_the_visibility_timeout() {
    let mut h = Harness::new(2, Duration::from_millis(300)).await;
    h.settings.backoff_base = Duration::from_millis(400);
    h.settings.backoff_max = Duration::from_millis(800);
    h.settings.outage_budget = Duration::from_secs(8);
    h.handler(Stage::Separate)
        .fail_with((0..3).map(|n| outage(&format!("storage down ({n})"))));
    let done = h.run_with_two_separate_workers(b"patient").await;

    assert_eq!(done.state, JobState::Done, "{:?}", done.error);
    assert_eq!(done.attempt, 1, "no takeover during the waits");
    assert_eq!(h.handler(Stage::Separate).runs(), 4);
    h.assert_queues_empty().await;
}

/// An outage longer than the budget fails the job with the outage's own code (not
/// `attempts_exhausted`) and a message that names the budget.
#[tokio::test]
async fn an_outage_past_the_budget_fails_with_its_code() {
    let h = Harness::new(3, Duration::from_secs(30)).await;
    let failed = h
        .run_failing(
            Stage::Encode,
            (0..1000).map(|_| outage("storage down for good")),
        )
        .await;

    assert_eq!(failed.state, JobState::Failed);
    let error = failed.error.unwrap();
    assert_eq!(error.code, ErrorCode::StorageUnavailable);
    assert!(
        error.message.contains("outage budget") && error.message.contains("storage down for good"),
        "{}",
        error.message
    );
    assert_eq!(failed.attempt, 1, "one delivery, waited in place");
    assert!(h.handler(Stage::Encode).runs() >= 2);
    let dead = h.queue.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason.code, ErrorCode::StorageUnavailable);
    h.assert_queues_empty().await;
}

/// Claimers that die (never ack) let the visibility timeout pass: the message is claimed
/// again with the attempt counted up, and past `max_attempts` it is dead-lettered and the
/// job failed without running the stage again.
#[tokio::test]
async fn unacked_claims_come_back_until_attempts_are_exhausted() {
    let timeout = Duration::from_millis(300);
    let h = Harness::new(2, timeout).await;
    let job = h.submit(b"abc").await;

    let first = h
        .claim(Stage::Decode, "dies-1", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(first.attempt, 1);
    assert!(
        h.claim(Stage::Decode, "other", Duration::ZERO)
            .await
            .is_none()
    );
    let second = h
        .claim(Stage::Decode, "dies-2", Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!((second.attempt, &second.message.job_id), (2, &job.id));
    let third = h
        .claim(Stage::Decode, "worker", Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(third.attempt, 3);

    let outcome = h
        .worker(Stage::Decode)
        .process_one(&third, &CancellationToken::new())
        .await
        .unwrap();
    let Outcome::Failed(error) = outcome else {
        panic!("expected failure, got {outcome:?}");
    };
    assert_eq!(error.code, ErrorCode::AttemptsExhausted);
    assert_eq!(h.handler(Stage::Decode).runs(), 0);
    let record = h.record(&job).await;
    assert_eq!(record.state, JobState::Failed);
    assert_eq!(
        record.error.map(|e| e.code),
        Some(ErrorCode::AttemptsExhausted)
    );
    let dead = h.queue.dead_letters();
    assert_eq!((dead.len(), dead[0].attempt), (1, 3));
    h.assert_queues_empty().await;
}

/// A worker dies after moving the record into `decoding`: the next claim, after the
/// visibility timeout, resumes the stage and the job finishes.
#[tokio::test]
async fn crash_mid_stage_is_resumed_after_the_visibility_timeout() {
    let h = Harness::new(3, Duration::from_millis(100)).await;
    let job = h.submit(b"resume me").await;
    let claimed = h
        .claim(Stage::Decode, "dies", Duration::ZERO)
        .await
        .unwrap();
    // What the dead worker got done: the record move into the running state.
    let mut running = h.record(&job).await;
    running.state = JobState::Decoding;
    running.attempt = claimed.attempt;
    h.backends
        .jobs
        .compare_and_set(JobState::Queued, 0, &running)
        .await
        .unwrap();

    let (shutdown, tasks) = h.start_workers();
    let done = h.wait_finished(&job).await;
    stop(shutdown, tasks).await;
    assert_eq!(done.state, JobState::Done, "{:?}", done.error);
    assert_eq!(h.handler(Stage::Decode).runs(), 1);
    h.assert_queues_empty().await;
}

/// The process dies after decode moved the record and enqueued separate, before the ack.
/// The redelivered decode message is acked without running decode again, and the job still
/// runs each later stage exactly once.
#[tokio::test]
async fn redelivery_of_a_processed_message_is_acked_without_rerunning() {
    let h = Harness::with_queue(3, Duration::from_millis(100), Some(1)).await;
    let job = h.submit(b"once only").await;
    let decode = h.worker(Stage::Decode);
    let no_shutdown = CancellationToken::new();

    let first = h
        .claim(Stage::Decode, "dies", Duration::ZERO)
        .await
        .unwrap();
    assert!(
        decode.process_one(&first, &no_shutdown).await.is_err(),
        "the ack is lost"
    );
    assert_eq!(h.handler(Stage::Decode).runs(), 1);
    let record = h.record(&job).await;
    assert_eq!(record.state, JobState::Decoding);
    assert!(record.stages[&Stage::Decode].finished_ms.is_some());

    let again = h
        .claim(Stage::Decode, "next", Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(again.attempt, 2);
    let outcome = decode.process_one(&again, &no_shutdown).await.unwrap();
    assert!(matches!(outcome, Outcome::Skipped(_)), "{outcome:?}");
    assert_eq!(
        h.handler(Stage::Decode).runs(),
        1,
        "decode did not run again"
    );
    assert_eq!(h.record(&job).await, record, "the record is untouched");
    // Separate was enqueued by the first delivery and again by the redelivery.
    assert_eq!(h.queue.depth(Stage::Separate).await.unwrap().waiting, 2);

    let (shutdown, tasks) = h.start_workers();
    let done = h.wait_finished(&job).await;
    // Let the duplicate separate message be seen and acked.
    tokio::time::timeout(Duration::from_secs(5), async {
        while h.queue.depth(Stage::Separate).await.unwrap() != QueueDepth::default() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the duplicate is acked");
    stop(shutdown, tasks).await;
    assert_eq!(done.state, JobState::Done, "{:?}", done.error);
    assert_eq!(h.handler(Stage::Separate).runs(), 1);
    assert_eq!(h.handler(Stage::Encode).runs(), 1);
    h.assert_queues_empty().await;
}

#[tokio::test]
async fn cancel_stops_a_running_stage() {
    let h = Harness::new(3, Duration::from_secs(30)).await;
    h.handler(Stage::Separate)
        .behave([Behaviour::BlockUntilCancelled]);
    let (shutdown, tasks) = h.start_workers();
    let job = h.submit(b"cancel me").await;
    tokio::time::timeout(Duration::from_secs(5), async {
        while h.handler(Stage::Separate).runs() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("separate starts");

    let cancelled = pipeline::cancel(&h.backends, &job.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    tokio::time::timeout(Duration::from_secs(5), async {
        while h.queue.depth(Stage::Separate).await.unwrap().pending > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the separate message is acked");
    stop(shutdown, tasks).await;

    assert_eq!(
        h.handler(Stage::Separate).saw_cancel.load(Ordering::SeqCst),
        1
    );
    assert_eq!(h.handler(Stage::Encode).runs(), 0);
    let record = h.record(&job).await;
    assert_eq!(record.state, JobState::Cancelled);
    assert_eq!(record.error.map(|e| e.code), Some(ErrorCode::Cancelled));
    h.assert_queues_empty().await;
    // Cancelling a finished job changes nothing.
    assert_eq!(
        pipeline::cancel(&h.backends, &job.id).await.unwrap().state,
        JobState::Cancelled
    );
}

#[tokio::test]
async fn cancelled_job_waiting_in_a_queue_is_dropped() {
    let h = Harness::new(3, Duration::from_secs(30)).await;
    let job = h.submit(b"never runs").await;
    pipeline::cancel(&h.backends, &job.id).await.unwrap();
    let delivery = h.claim(Stage::Decode, "w", Duration::ZERO).await.unwrap();
    let outcome = h
        .worker(Stage::Decode)
        .process_one(&delivery, &CancellationToken::new())
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Skipped(_)), "{outcome:?}");
    assert_eq!(h.handler(Stage::Decode).runs(), 0);
    h.assert_queues_empty().await;
}

#[tokio::test]
async fn shutdown_gives_the_running_stage_back() {
    let h = Harness::new(3, Duration::from_secs(30)).await;
    h.handler(Stage::Separate)
        .behave([Behaviour::BlockUntilCancelled]);
    let (shutdown, tasks) = h.start_workers();
    let job = h.submit(b"interrupted").await;
    tokio::time::timeout(Duration::from_secs(5), async {
        while h.handler(Stage::Separate).runs() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("separate starts");
    stop(shutdown, tasks).await;

    let record = h.record(&job).await;
    assert_eq!((record.state, record.attempt), (JobState::Separating, 1));
    let depth = h.queue.depth(Stage::Separate).await.unwrap();
    assert_eq!(
        (depth.waiting, depth.pending),
        (1, 0),
        "given back, not lost"
    );

    // A new set of workers (the next process) finishes it.
    let (shutdown, tasks) = h.start_workers();
    let done = h.wait_finished(&job).await;
    stop(shutdown, tasks).await;
    assert_eq!(done.state, JobState::Done, "{:?}", done.error);
    assert_eq!(done.attempt, 1, "encode's first delivery");
    assert_eq!(h.handler(Stage::Separate).runs(), 2);
    h.assert_queues_empty().await;
}

/// A stage that runs several visibility timeouts long keeps its claim: a second worker on
/// the same stage never gets the message.
#[tokio::test]
async fn long_stage_keeps_its_claim() {
    let h = Harness::new(3, Duration::from_millis(600)).await;
    h.handler(Stage::Separate)
        .behave([Behaviour::Slow(Duration::from_millis(1500))]);
    let done = h.run_with_two_separate_workers(b"slow one").await;
    assert_eq!(done.state, JobState::Done, "{:?}", done.error);
    assert_eq!(h.handler(Stage::Separate).runs(), 1);
    assert!(done.stages[&Stage::Separate].started_ms.is_some());
    h.assert_queues_empty().await;
}

#[tokio::test]
async fn a_running_stage_moves_its_record_so_the_sweep_leaves_it_alone() {
    let h = Harness::new(3, Duration::from_millis(300)).await;
    h.handler(Stage::Separate)
        .behave([Behaviour::Slow(Duration::from_millis(1500))]);
    let (shutdown, tasks) = h.start_workers();
    let job = h.submit(b"heartbeat").await;
    let running = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let record = h.backends.jobs.get(&job.id).await.unwrap().unwrap();
            if record.state == JobState::Separating {
                return record;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("separate starts");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = h.backends.jobs.get(&job.id).await.unwrap().unwrap();
    assert_eq!(later.state, JobState::Separating);
    assert!(
        later.updated_ms > running.updated_ms,
        "record not moved while the stage ran: {} -> {}",
        running.updated_ms,
        later.updated_ms
    );
    let done = h.wait_finished(&job).await;
    stop(shutdown, tasks).await;
    assert_eq!(done.state, JobState::Done, "{:?}", done.error);
    assert_eq!(h.handler(Stage::Separate).runs(), 1);
}

#[tokio::test]
async fn a_worker_task_dropped_mid_stage_lets_another_take_the_message_over() {
    let h = Harness::new(3, Duration::from_millis(300)).await;
    h.handler(Stage::Decode)
        .behave([Behaviour::BlockUntilCancelled]);
    let doomed = h.worker(Stage::Decode);
    let doomed_task = tokio::spawn(async move { doomed.run(CancellationToken::new()).await });
    let job = h.submit(b"orphaned").await;
    tokio::time::timeout(Duration::from_secs(5), async {
        while h.handler(Stage::Decode).runs() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the doomed worker starts decode");
    // Killed without a shutdown: its claim watcher must die with it, or it would keep the
    // message claimed for ever.
    doomed_task.abort();
    let _ = doomed_task.await;
    let (shutdown, tasks) = h.start_workers();
    let done = h.wait_finished(&job).await;
    stop(shutdown, tasks).await;
    assert_eq!(done.state, JobState::Done, "{:?}", done.error);
    assert_eq!(h.handler(Stage::Decode).runs(), 2);
}

#[tokio::test]
async fn a_panicking_stage_is_retried_like_an_internal_error() {
    let h = Harness::new(3, Duration::from_secs(30)).await;
    h.handler(Stage::Decode).behave([Behaviour::Panic]);
    let (shutdown, tasks) = h.start_workers();
    let job = h.submit(b"panic once").await;
    let done = h.wait_finished(&job).await;
    stop(shutdown, tasks).await;
    assert_eq!(done.state, JobState::Done, "{:?}", done.error);
    assert_eq!(h.handler(Stage::Decode).runs(), 2);
    h.assert_queues_empty().await;
}

#[tokio::test]
async fn submit_file_streams_a_local_file_and_refuses_bad_paths() {
    let h = Harness::new(3, Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("song.txt");
    std::fs::write(&path, b"from a file").unwrap();
    let new_job = || {
        Job::new(
            "local",
            "song",
            JobOptions {
                model: "fake".into(),
                ..JobOptions::default()
            },
        )
    };
    let job = pipeline::submit_file(&h.backends, new_job(), &path, None)
        .await
        .unwrap();
    assert_eq!(h.read(&keys::source(&job.id)).await, b"from a file");
    assert_eq!(h.queue.depth(Stage::Decode).await.unwrap().waiting, 1);

    let missing = pipeline::submit_file(&h.backends, new_job(), &dir.path().join("nope"), None)
        .await
        .unwrap_err();
    assert_eq!(missing.code, ErrorCode::NotFound);
    let directory = pipeline::submit_file(&h.backends, new_job(), dir.path(), None)
        .await
        .unwrap_err();
    assert_eq!(directory.code, ErrorCode::BadRequest);
    assert!(directory.message.contains("directory"), "{directory}");
    let too_big = pipeline::submit_file(&h.backends, new_job(), &path, Some(4))
        .await
        .unwrap_err();
    assert_eq!(too_big.code, ErrorCode::TooLarge);
    assert_eq!(h.backends.jobs.list("local", 10).await.unwrap().len(), 1);
}
