//! RedisQueue against a real Redis (MSAAS_TEST_REDIS_URL, default redis://127.0.0.1:6379):
//! delivery, reclaim, touch, retries, dead letters, depth, and the worker loop end to end on
//! Redis queues and records, including a worker that dies mid-stage.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod redis_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use backends::RedisQueue;
use bytes::Bytes;
use futures::StreamExt;
use pipeline::job::keys;
use pipeline::traits::{StageMessage, StageQueue};
use pipeline::{
    BackendError, CodedError, ErrorCode, Job, JobId, JobOptions, JobState, Stage, StageContext,
    StageError, StageHandler, StageOutput, Worker,
};
use redis_common::{TestNamespace, redis_backends, settings, spawn_trivial_workers, trivial_run};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const NO_WAIT: Duration = Duration::ZERO;
const VISIBILITY: Duration = Duration::from_secs(1);

fn message() -> StageMessage {
    StageMessage {
        job_id: JobId::new_random(),
        traceparent: None,
    }
}

async fn claim(
    queue: &RedisQueue,
    stage: Stage,
    consumer: &str,
    wait: Duration,
) -> Option<pipeline::traits::Delivery> {
    queue.claim(stage, consumer, wait).await.expect("claim")
}

#[tokio::test]
async fn enqueue_claim_ack_in_order() {
    let ns = TestNamespace::new();
    let queue = ns.queue(VISIBILITY).await;
    let a = StageMessage {
        job_id: JobId::new_random(),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    };
    let b = message();
    queue.enqueue(Stage::Decode, a.clone()).await.unwrap();
    queue.enqueue(Stage::Decode, b.clone()).await.unwrap();
    let first = claim(&queue, Stage::Decode, "w1", NO_WAIT).await.unwrap();
    let second = claim(&queue, Stage::Decode, "w1", NO_WAIT).await.unwrap();
    assert_eq!((&first.message, &second.message), (&a, &b));
    assert_eq!((first.attempt, second.attempt), (1, 1));
    // Other stages are separate queues.
    assert!(
        claim(&queue, Stage::Separate, "w1", NO_WAIT)
            .await
            .is_none()
    );
    queue.ack(Stage::Decode, &first).await.unwrap();
    queue.ack(Stage::Decode, &second).await.unwrap();
    // Acked: never delivered again, not even after the visibility timeout.
    assert!(
        claim(&queue, Stage::Decode, "w2", Duration::from_millis(1500))
            .await
            .is_none()
    );
    let depth = queue.depth(Stage::Decode).await.unwrap();
    assert_eq!(
        (depth.waiting, depth.pending, depth.oldest_age_ms),
        (0, 0, 0)
    );
    // Acked entries are deleted, so the stream does not grow without bound.
    let len: u64 = redis::cmd("XLEN")
        .arg(ns.key("stage:decode"))
        .query(&mut ns.raw())
        .unwrap();
    assert_eq!(len, 0);
}

#[tokio::test]
async fn unacked_message_is_reclaimed_after_the_visibility_timeout() {
    let ns = TestNamespace::new();
    let queue = ns.queue(VISIBILITY).await;
    let sent = message();
    queue.enqueue(Stage::Separate, sent.clone()).await.unwrap();
    let first = claim(&queue, Stage::Separate, "a", NO_WAIT).await.unwrap();
    assert_eq!(first.attempt, 1);
    // Invisible while the claim is fresh...
    assert!(claim(&queue, Stage::Separate, "b", NO_WAIT).await.is_none());
    // ...taken over once the timeout passed, by a claimer that was waiting.
    let second = claim(&queue, Stage::Separate, "b", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(second.message, sent);
    assert_eq!(second.attempt, 2);

    // The first claimer's late ack / touch must not disturb the new claim.
    queue.ack(Stage::Separate, &first).await.unwrap();
    assert_eq!(queue.depth(Stage::Separate).await.unwrap().pending, 1);
    assert!(matches!(
        queue.touch(Stage::Separate, &first).await,
        Err(BackendError::Conflict(_))
    ));

    let third = claim(&queue, Stage::Separate, "c", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(third.attempt, 3);
    queue.ack(Stage::Separate, &third).await.unwrap();
    assert_eq!(queue.depth(Stage::Separate).await.unwrap().pending, 0);
}

#[tokio::test]
async fn touch_keeps_a_long_claim() {
    let ns = TestNamespace::new();
    let queue = ns.queue(VISIBILITY).await;
    queue.enqueue(Stage::Decode, message()).await.unwrap();
    let delivery = claim(&queue, Stage::Decode, "a", NO_WAIT).await.unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        queue.touch(Stage::Decode, &delivery).await.unwrap();
    }
    // 1.8 s after the claim, well past the 1 s timeout, it is still ours.
    assert!(claim(&queue, Stage::Decode, "b", NO_WAIT).await.is_none());
    // Touching did not count as a delivery: once it lapses, the next is attempt 2.
    let again = claim(&queue, Stage::Decode, "b", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(again.attempt, 2);
    assert_eq!(again.message, delivery.message);
}

#[tokio::test]
async fn retry_redelivers_after_the_delay_and_attempts_keep_counting() {
    let ns = TestNamespace::new();
    let queue = ns.queue(VISIBILITY).await;
    let sent = StageMessage {
        job_id: JobId::new_random(),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    };
    queue.enqueue(Stage::Encode, sent.clone()).await.unwrap();
    let first = claim(&queue, Stage::Encode, "a", NO_WAIT).await.unwrap();
    queue
        .retry(Stage::Encode, &first, Duration::from_millis(700))
        .await
        .unwrap();
    let depth = queue.depth(Stage::Encode).await.unwrap();
    assert_eq!((depth.waiting, depth.pending), (1, 0));
    assert!(claim(&queue, Stage::Encode, "a", NO_WAIT).await.is_none());

    let second = claim(&queue, Stage::Encode, "a", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(second.attempt, 2);
    assert_eq!(
        second.message, sent,
        "traceparent carried through the retry"
    );

    // A retry without delay goes straight back; then a reclaim: still counting.
    queue
        .retry(Stage::Encode, &second, Duration::ZERO)
        .await
        .unwrap();
    let third = claim(&queue, Stage::Encode, "b", NO_WAIT).await.unwrap();
    assert_eq!(third.attempt, 3);
    let fourth = claim(&queue, Stage::Encode, "c", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(fourth.attempt, 4);
    // A stale retry (the third delivery was reclaimed) changes nothing.
    queue
        .retry(Stage::Encode, &third, Duration::ZERO)
        .await
        .unwrap();
    let depth = queue.depth(Stage::Encode).await.unwrap();
    assert_eq!((depth.waiting, depth.pending), (0, 1));
}

#[tokio::test]
async fn dead_letter_removes_and_records() {
    let ns = TestNamespace::new();
    let queue = ns.queue(VISIBILITY).await;
    let sent = message();
    queue.enqueue(Stage::Decode, sent.clone()).await.unwrap();
    let delivery = claim(&queue, Stage::Decode, "a", NO_WAIT).await.unwrap();
    let reason = CodedError::new(ErrorCode::AttemptsExhausted, "gave up after 3 tries");
    queue
        .dead_letter(Stage::Decode, &delivery, &reason)
        .await
        .unwrap();
    assert_eq!(queue.dead_letters(10).await.unwrap(), vec![(sent, reason)]);
    assert!(
        claim(&queue, Stage::Decode, "b", Duration::from_millis(1500))
            .await
            .is_none()
    );
    let depth = queue.depth(Stage::Decode).await.unwrap();
    assert_eq!((depth.waiting, depth.pending), (0, 0));
}

#[tokio::test]
async fn depth_counts_waiting_pending_delayed_and_oldest_age() {
    let ns = TestNamespace::new();
    let queue = ns.queue(Duration::from_secs(30)).await;
    assert_eq!(
        queue.depth(Stage::Decode).await.unwrap(),
        pipeline::traits::QueueDepth::default()
    );
    for _ in 0..4 {
        queue.enqueue(Stage::Decode, message()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    let claimed = claim(&queue, Stage::Decode, "a", NO_WAIT).await.unwrap();
    let retried = claim(&queue, Stage::Decode, "a", NO_WAIT).await.unwrap();
    queue
        .retry(Stage::Decode, &retried, Duration::from_secs(60))
        .await
        .unwrap();
    let depth = queue.depth(Stage::Decode).await.unwrap();
    // 2 never delivered + 1 delayed retry waiting; 1 claimed.
    assert_eq!((depth.waiting, depth.pending), (3, 1), "{depth:?}");
    assert!(depth.oldest_age_ms >= 60, "{depth:?}");
    // Consumer group lag is what the autoscaler reads: it matches the stream part.
    let groups: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(ns.key("stage:decode"))
        .query(&mut ns.raw())
        .unwrap();
    assert!(format!("{groups:?}").contains("lag"), "{groups:?}");
    queue.ack(Stage::Decode, &claimed).await.unwrap();
    assert_eq!(queue.depth(Stage::Decode).await.unwrap().pending, 0);
}

#[tokio::test]
async fn a_blocked_claim_does_not_hold_up_other_commands() {
    let ns = TestNamespace::new();
    let queue = ns.queue(VISIBILITY).await;
    let waiting = {
        let queue = queue.clone();
        tokio::spawn(async move {
            queue
                .claim(Stage::Decode, "a", Duration::from_secs(8))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Other stages work while decode's claimer blocks...
    queue.enqueue(Stage::Encode, message()).await.unwrap();
    let other = claim(&queue, Stage::Encode, "b", NO_WAIT).await.unwrap();
    queue.ack(Stage::Encode, &other).await.unwrap();
    queue.depth(Stage::Separate).await.unwrap();
    assert!(!waiting.is_finished(), "the blocked claim ended early");
    // ...and the blocked one wakes on its own stage's message.
    let sent = message();
    queue.enqueue(Stage::Decode, sent.clone()).await.unwrap();
    let delivery = waiting
        .await
        .unwrap()
        .unwrap()
        .expect("woken by the enqueue");
    assert_eq!(delivery.message, sent);
}

#[tokio::test]
async fn unreadable_entries_are_dropped_not_delivered() {
    let ns = TestNamespace::new();
    let queue = ns.queue(VISIBILITY).await;
    let _: String = redis::cmd("XADD")
        .arg(ns.key("stage:decode"))
        .arg("*")
        .arg("job_id")
        .arg("../../etc/passwd")
        .query(&mut ns.raw())
        .unwrap();
    let sent = message();
    queue.enqueue(Stage::Decode, sent.clone()).await.unwrap();
    let delivery = claim(&queue, Stage::Decode, "a", Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(delivery.message, sent);
    assert_eq!(queue.depth(Stage::Decode).await.unwrap().pending, 1);
}

#[tokio::test]
async fn invalid_namespace_and_unreachable_server_are_clear_errors() {
    let err = RedisQueue::connect(&redis_common::redis_url(), "has space", VISIBILITY)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::QueueUnavailable);
    assert!(err.to_string().contains("namespace"), "{err}");
    // Port 1 on loopback: nothing listens there.
    let err = RedisQueue::connect("redis://127.0.0.1:1", "msaas", VISIBILITY)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::QueueUnavailable);
}

fn source() -> pipeline::traits::ByteStream {
    futures::stream::iter([Ok(Bytes::from_static(b"not really audio"))]).boxed()
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

#[tokio::test]
async fn worker_runs_a_job_end_to_end_on_redis() {
    let ns = TestNamespace::new();
    let dir = tempfile::tempdir().unwrap();
    let backends = redis_backends(&ns, dir.path(), VISIBILITY).await;
    let shutdown = CancellationToken::new();
    let tasks = spawn_trivial_workers(&backends, &Stage::ALL, VISIBILITY, &shutdown);
    let job = pipeline::submit(&backends, new_job(), source(), None, None)
        .await
        .unwrap();
    let done = tokio::time::timeout(
        Duration::from_secs(20),
        pipeline::wait_until_finished(&backends, &job.id, Duration::from_millis(100)),
    )
    .await
    .expect("job finished in time")
    .unwrap();
    assert_eq!(done.state, JobState::Done, "{done:?}");
    let result = keys::result(&job.id, "vocals", "wav");
    assert_eq!(done.results.get("vocals"), Some(&result));
    assert_eq!(backends.store.size(&result).await.unwrap(), Some(7));
    assert_eq!(done.stems, vec!["vocals".to_owned()]);
    shutdown.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    for stage in Stage::ALL {
        let depth = backends.queue.depth(stage).await.unwrap();
        assert_eq!((depth.waiting, depth.pending), (0, 0), "{stage}");
    }
}

/// Separate that hangs on its first run (the worker "dies" in it) and works afterwards.
struct HangsOnce {
    runs: AtomicU32,
    started: Notify,
}

#[async_trait]
impl StageHandler for HangsOnce {
    fn stage(&self) -> Stage {
        Stage::Separate
    }

    async fn run(&self, job: &Job, ctx: &StageContext) -> Result<StageOutput, StageError> {
        if self.runs.fetch_add(1, Ordering::SeqCst) == 0 {
            self.started.notify_one();
            std::future::pending::<()>().await;
        }
        trivial_run(Stage::Separate, job, ctx).await
    }
}

#[tokio::test]
async fn a_worker_killed_mid_stage_loses_its_message_to_another() {
    let ns = TestNamespace::new();
    let dir = tempfile::tempdir().unwrap();
    let backends = redis_backends(&ns, dir.path(), VISIBILITY).await;
    let hangs = Arc::new(HangsOnce {
        runs: AtomicU32::new(0),
        started: Notify::new(),
    });

    // The doomed separate worker lives in a runtime of its own, with its own connections,
    // so shutting that runtime down kills it the way a dead process goes: every task of it
    // (the claim keeper included) stops at once, nothing is acked or given back.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    {
        let mut doomed_backends = backends.clone();
        let namespace = ns.name.clone();
        let hangs = hangs.clone();
        doomed.spawn(async move {
            let queue = RedisQueue::connect(&redis_common::redis_url(), &namespace, VISIBILITY)
                .await
                .expect("connect");
            doomed_backends.queue = Arc::new(queue);
            let worker = Worker::new(
                doomed_backends,
                hangs,
                settings("separate-doomed", VISIBILITY),
            );
            worker.run(CancellationToken::new()).await;
        });
    }
    let shutdown = CancellationToken::new();
    let mut tasks = spawn_trivial_workers(
        &backends,
        &[Stage::Decode, Stage::Encode],
        VISIBILITY,
        &shutdown,
    );
    let job = pipeline::submit(&backends, new_job(), source(), None, None)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), hangs.started.notified())
        .await
        .expect("separate started");
    doomed.shutdown_background();
    let record = backends.jobs.get(&job.id).await.unwrap().unwrap();
    assert_eq!((record.state, record.attempt), (JobState::Separating, 1));

    // A second separate worker takes the message over after the visibility timeout.
    let survivor = Worker::new(
        backends.clone(),
        hangs.clone(),
        settings("separate-survivor", VISIBILITY),
    );
    tasks.push(tokio::spawn({
        let shutdown = shutdown.clone();
        async move { survivor.run(shutdown).await }
    }));
    let done = tokio::time::timeout(
        Duration::from_secs(20),
        pipeline::wait_until_finished(&backends, &job.id, Duration::from_millis(100)),
    )
    .await
    .expect("job finished in time")
    .unwrap();
    assert_eq!(done.state, JobState::Done, "{done:?}");
    assert_eq!(hangs.runs.load(Ordering::SeqCst), 2);
    shutdown.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    let depth = backends.queue.depth(Stage::Separate).await.unwrap();
    assert_eq!((depth.waiting, depth.pending), (0, 0));
}

/// A private redis-server on a free port (without persistence), killed on drop.
struct PrivateRedis {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--dir"])
            .arg(dir.path())
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self) {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("private redis-server on port {} did not start", self.port);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_queue_recovers_when_redis_restarts() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = PrivateRedis::start(port);
    server.wait_ready().await;
    let queue = RedisQueue::connect(&server.url(), "msaas", VISIBILITY)
        .await
        .unwrap();
    queue.enqueue(Stage::Decode, message()).await.unwrap();
    assert!(claim(&queue, Stage::Decode, "a", NO_WAIT).await.is_some());

    // The server dies with everything in it (no persistence) and comes back empty.
    drop(server);
    assert!(queue.claim(Stage::Decode, "a", NO_WAIT).await.is_err());
    let server = PrivateRedis::start(port);
    server.wait_ready().await;

    // Connections come back and the consumer groups are made again; callers only see
    // errors (which the worker retries with backoff) until then.
    let sent = message();
    let delivery = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if queue.enqueue(Stage::Decode, sent.clone()).await.is_ok()
                && let Ok(Some(delivery)) = queue
                    .claim(Stage::Decode, "a", Duration::from_millis(200))
                    .await
            {
                return delivery;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the queue works again after the restart");
    assert_eq!(delivery.message, sent);
    assert_eq!(delivery.attempt, 1);
}

/// On demand (`cargo test -p pipeline --test redis_queue -- --ignored --nocapture`): how many
/// enqueue → claim → ack round trips one claimer gets through per second.
#[tokio::test]
#[ignore = "measurement, not a check"]
async fn measure_round_trips() {
    let ns = TestNamespace::new();
    let queue = ns.queue(Duration::from_secs(30)).await;
    let count = 2_000;
    let started = std::time::Instant::now();
    for _ in 0..count {
        queue.enqueue(Stage::Decode, message()).await.unwrap();
    }
    let enqueued = started.elapsed();
    for _ in 0..count {
        let delivery = claim(&queue, Stage::Decode, "a", NO_WAIT).await.unwrap();
        queue.ack(Stage::Decode, &delivery).await.unwrap();
    }
    let total = started.elapsed();
    println!(
        "{count} enqueues in {enqueued:?} ({:.0}/s); {count} claim+ack in {:?} ({:.0}/s)",
        count as f64 / enqueued.as_secs_f64(),
        total - enqueued,
        count as f64 / (total - enqueued).as_secs_f64()
    );
}

/// What the chart's KEDA triggers read for a stage whose only work is running: the group's
/// lag (XINFO GROUPS `lag`) is 0 while its pending entries (XPENDING count) are the jobs in
/// progress. The "running" trigger scales on the latter, so N running jobs keep N workers.
#[tokio::test]
async fn running_work_shows_as_pending_entries_with_no_lag() {
    let ns = TestNamespace::new();
    let queue = ns.queue(Duration::from_secs(30)).await;
    const RUNNING: usize = 3;
    for _ in 0..RUNNING {
        queue.enqueue(Stage::Separate, message()).await.unwrap();
    }
    let mut held = Vec::new();
    for n in 0..RUNNING {
        held.push(
            claim(&queue, Stage::Separate, &format!("w{n}"), NO_WAIT)
                .await
                .unwrap(),
        );
    }
    let mut raw = ns.raw();
    let groups: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(ns.key("stage:separate"))
        .query(&mut raw)
        .unwrap();
    let text = format!("{groups:?}");
    let field = |name: &str| -> i64 {
        let redis::Value::Array(groups) = &groups else {
            panic!("XINFO GROUPS: {text}")
        };
        let redis::Value::Array(fields) = &groups[0] else {
            panic!("XINFO GROUPS entry: {text}")
        };
        let at = fields
            .iter()
            .position(|v| matches!(v, redis::Value::BulkString(b) if b == name.as_bytes()))
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        match &fields[at + 1] {
            redis::Value::Int(n) => *n,
            other => panic!("{name}: {other:?}"),
        }
    };
    assert_eq!(field("lag"), 0, "nothing waits: {text}");
    assert_eq!(field("pending"), RUNNING as i64, "{text}");
    let (count, ..): (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(ns.key("stage:separate"))
        .arg("separate")
        .query(&mut raw)
        .unwrap();
    assert_eq!(count, RUNNING as i64);
    assert_eq!(
        queue.depth(Stage::Separate).await.unwrap().pending,
        RUNNING as u64
    );
    for delivery in &held {
        queue.ack(Stage::Separate, delivery).await.unwrap();
    }
}

/// One primary is what MSaaS supports (its scripts touch a job's keys together, which Redis
/// Cluster spreads over slots): a cluster node is refused at connect with a configuration
/// error that says so, by the queue and the job store alike, rather than CROSSSLOT later.
#[tokio::test]
async fn a_redis_cluster_node_is_refused_at_connect_in_words() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = PrivateRedis::start_with(port, &["--cluster-enabled", "yes"]);
    server.wait_ready().await;
    let queue = RedisQueue::connect(&server.url(), "msaas", Duration::from_secs(30)).await;
    let jobs =
        backends::RedisJobStore::connect(&server.url(), "msaas", Duration::from_secs(60)).await;
    for err in [queue.err(), jobs.err()] {
        let err = err.expect("a cluster node is refused");
        assert_eq!(err.code(), ErrorCode::InvalidOption, "{err}");
        assert!(err.to_string().contains("cluster mode"), "{err}");
        assert!(err.to_string().contains("single primary"), "{err}");
    }
}
