//! The worker loop (DESIGN.md "The flow"): claim → run the stage → write outputs → move the
//! record (compare-and-set) → enqueue the next stage → ack. Plus the two record moves that
//! start and stop jobs from outside a stage: [`submit`] and [`cancel`].
//!
//! How the record says where a job is: a job waiting for stage S is in S's
//! [`Stage::entry_state`] — `queued` for decode, else the previous stage's running state with
//! that stage's `finished_ms` set. While S runs (or after it crashed mid-way) the job is in
//! S's running state with `finished_ms` unset and `attempt` = the delivery that runs it. So
//! every delivery can tell, from the record alone, whether to start, resume, skip a duplicate,
//! or re-enqueue the next stage because the process died between the record move and the
//! enqueue — any step may be the last before a crash and the job still finishes once.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backends::Backends;
use crate::job::{Job, JobId, JobState, Stage, keys, now_ms};
use crate::stage::{ProgressSink, StageContext, StageError, StageHandler, StageOutput};
use crate::traits::{
    BackendError, ByteStream, Delivery, EventKind, JobEvent, Progress, PutOutcome, StageMessage,
    Submitted,
};
use audio::error::{CodedError, ErrorCode};

/// How a worker claims, retries and gives up. [`crate::config::WorkerConfig`] builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Deliveries of one stage of one job before it is dead-lettered and the job failed.
    pub max_attempts: u32,
    /// Must match the queue's: the worker touches its claim every third of it.
    pub visibility_timeout: Duration,
    /// Delay before the first retry; doubled per attempt (with jitter) up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long one claim call waits for a message.
    pub claim_wait: Duration,
    /// How long an outage of a dependency (storage, queue, events) is waited out in place
    /// during a delivery before the job fails with the outage's code; not counted as
    /// attempts.
    pub outage_budget: Duration,
    /// This worker's name on the queue (Redis consumer name).
    pub consumer: String,
    /// How often the record is re-read while a stage runs, to notice a cancelled job even
    /// when its event was missed.
    pub cancel_poll: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            visibility_timeout: Duration::from_secs(300),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            claim_wait: Duration::from_secs(5),
            outage_budget: Duration::from_secs(300),
            consumer: default_consumer_name(),
            cancel_poll: Duration::from_secs(1),
        }
    }
}

/// `{hostname}-{pid}`: unique per process, stable for its life.
pub fn default_consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "msaas".to_owned());
    format!("{host}-{}", std::process::id())
}

impl WorkerSettings {
    /// Delay before delivery `attempt + 1`: `base * 2^(attempt-1)` capped at `max`, then
    /// between half and all of it at random, so failed jobs do not retry in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let capped = self
            .backoff_base
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max);
        let jitter = (RandomState::new().build_hasher().finish() % 1_000) as f64 / 1_000.0;
        capped.mul_f64(0.5 + 0.5 * jitter)
    }
}

/// What one delivery came to.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// The stage ran and the next stage was enqueued.
    Advanced { next: Stage },
    /// The last stage ran: the job is done.
    Done,
    /// The stage failed permanently, or ran out of attempts: the job failed.
    Failed(CodedError),
    /// Transient failure: delivered again after `delay`.
    Retrying { delay: Duration, error: CodedError },
    /// The job was cancelled; the message is acked.
    Cancelled,
    /// Shutdown while the stage ran: the message is given back for another worker.
    Released,
    /// Nothing to do (acked): no record, a finished job, a duplicate or stale delivery.
    Skipped(&'static str),
    /// Another delivery of the same message owns the record now; this one leaves it alone.
    Superseded,
}

/// What a delivery should do, judged from the record alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    /// Run the stage (first time, or again after a crash / transient failure).
    Start,
    Terminal,
    /// The record has not reached this stage (a stray message).
    NotReached,
    /// A later stage already picked the job up.
    AlreadyPast,
    /// This stage finished but the next has not started: the process may have died between
    /// the record move and enqueueing the next stage, so enqueue it again.
    AlreadyDone,
    /// Another delivery at least as recent runs (or ran) this stage.
    Duplicate,
}

fn position(state: JobState) -> u8 {
    match state {
        JobState::Queued => 0,
        JobState::Decoding => 1,
        JobState::Separating => 2,
        JobState::Encoding => 3,
        JobState::Done | JobState::Failed | JobState::Cancelled => 4,
    }
}

fn stage_finished(job: &Job, stage: Stage) -> bool {
    job.stages
        .get(&stage)
        .is_some_and(|times| times.finished_ms.is_some())
}

fn disposition(job: &Job, stage: Stage, attempt: u32) -> Disposition {
    if job.state.is_terminal() {
        return Disposition::Terminal;
    }
    let here = position(stage.running_state());
    let now = position(job.state);
    if now > here {
        Disposition::AlreadyPast
    } else if now == here {
        if stage_finished(job, stage) {
            Disposition::AlreadyDone
        } else if attempt <= job.attempt {
            Disposition::Duplicate
        } else {
            Disposition::Start
        }
    } else if job.state == stage.entry_state()
        && stage
            .previous()
            .is_none_or(|prev| stage_finished(job, prev))
    {
        Disposition::Start
    } else {
        Disposition::NotReached
    }
}

/// Publishes an event; publishing is best effort (the record is the truth).
async fn publish(backends: &Backends, kind: EventKind, job: &Job, stage: Option<Stage>) {
    let event = JobEvent {
        kind,
        job_id: job.id.clone(),
        stage,
        progress: None,
        job: Some(job.clone()),
        at_ms: now_ms(),
    };
    for hook in &backends.hooks {
        hook.on_event(&event);
    }
    if let Err(err) = backends.events.publish(&event).await {
        tracing::warn!(job = %job.id, kind = kind.as_str(), %err, "event not published");
    }
}

/// Turns a stage's progress reports into `progress` events without blocking the stage.
struct EventProgress {
    sender: mpsc::UnboundedSender<Progress>,
}

impl ProgressSink for EventProgress {
    fn report(&self, progress: Progress) {
        // The receiver only goes away after the stage returned; a late report is moot.
        let _ = self.sender.send(progress);
    }
}

/// Runs one stage: claims its messages and drives the records. Cheap to clone; run several
/// for parallelism.
#[derive(Clone)]
pub struct Worker {
    backends: Backends,
    handler: Arc<dyn StageHandler>,
    settings: WorkerSettings,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("stage", &self.handler.stage())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub fn new(
        backends: Backends,
        handler: Arc<dyn StageHandler>,
        settings: WorkerSettings,
    ) -> Self {
        Self {
            backends,
            handler,
            settings,
        }
    }

    pub fn stage(&self) -> Stage {
        self.handler.stage()
    }

    pub fn settings(&self) -> &WorkerSettings {
        &self.settings
    }

    /// Claims and processes messages until `shutdown` is cancelled. A stage running at
    /// shutdown is cancelled and its message given back, to be resumed by another worker
    /// (the interrupted delivery counts as one of the job's attempts).
    pub async fn run(&self, shutdown: CancellationToken) {
        let stage = self.stage();
        tracing::info!(%stage, consumer = %self.settings.consumer, "worker started");
        let mut consecutive_errors: u32 = 0;
        while !shutdown.is_cancelled() {
            let claimed = tokio::select! {
                () = shutdown.cancelled() => break,
                claimed = self.backends.queue.claim(stage, &self.settings.consumer, self.settings.claim_wait) => claimed,
            };
            let delivery = match claimed {
                Ok(Some(delivery)) => delivery,
                Ok(None) => continue,
                Err(err) => {
                    consecutive_errors = consecutive_errors.saturating_add(1);
                    let delay = self.settings.backoff(consecutive_errors);
                    tracing::warn!(%stage, %err, ?delay, "claim failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            consecutive_errors = 0;
            let job = delivery.message.job_id.clone();
            match self.process_one(&delivery, &shutdown).await {
                Ok(outcome) => tracing::debug!(%stage, %job, ?outcome, "delivery processed"),
                Err(err) => {
                    // The bookkeeping failed (record or queue unreachable): give the message
                    // back; if even that fails, the visibility timeout brings it back.
                    let delay = self.settings.backoff(delivery.attempt);
                    tracing::warn!(%stage, %job, %err, ?delay, "delivery failed; will retry");
                    if let Err(err) = self.backends.queue.retry(stage, &delivery, delay).await {
                        tracing::warn!(%stage, %job, %err, "could not give the message back");
                    }
                }
            }
        }
        tracing::info!(%stage, consumer = %self.settings.consumer, "worker stopped");
    }

    /// Processes one claimed delivery to the end (ack, retry, dead-letter or release).
    /// `Err` means a backend failed on the way; the message is then neither acked nor
    /// given back, and every step taken so far is safe to repeat.
    ///
    /// Runs in a span `stage.{stage}` whose parent is the message's `traceparent`, so every
    /// stage of a job lands in the job's trace.
    pub async fn process_one(
        &self,
        delivery: &Delivery,
        shutdown: &CancellationToken,
    ) -> Result<Outcome, BackendError> {
        let stage = self.stage();
        let span = tracing::info_span!(
            "stage",
            otel.name = %format_args!("stage.{stage}"),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            msaas.stage = stage.as_str(),
            msaas.job_id = %delivery.message.job_id,
            msaas.attempt = delivery.attempt,
            msaas.tenant = tracing::field::Empty,
            msaas.model = tracing::field::Empty,
            msaas.audio_duration_secs = tracing::field::Empty,
            msaas.outcome = tracing::field::Empty,
            msaas.error_code = tracing::field::Empty,
        );
        if let Some(traceparent) = &delivery.message.traceparent {
            observe::trace::set_parent(&span, traceparent);
        }
        let result = self
            .process_delivery(delivery, shutdown)
            .instrument(span.clone())
            .await;
        let (outcome, error_code) = match &result {
            Ok(Outcome::Advanced { .. }) => ("advanced", None),
            Ok(Outcome::Done) => ("done", None),
            Ok(Outcome::Failed(error)) => ("failed", Some(error.code)),
            Ok(Outcome::Retrying { error, .. }) => ("retrying", Some(error.code)),
            Ok(Outcome::Cancelled) => ("cancelled", None),
            Ok(Outcome::Released) => ("released", None),
            Ok(Outcome::Skipped(_)) => ("skipped", None),
            Ok(Outcome::Superseded) => ("superseded", None),
            Err(err) => ("backend_error", Some(err.code())),
        };
        span.record("msaas.outcome", outcome);
        if let Some(code) = error_code {
            span.record("msaas.error_code", code.as_str());
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    async fn process_delivery(
        &self,
        delivery: &Delivery,
        shutdown: &CancellationToken,
    ) -> Result<Outcome, BackendError> {
        let stage = self.stage();
        let queue = &self.backends.queue;
        let jobs = &self.backends.jobs;
        let id = &delivery.message.job_id;

        // Find out what to do, and move the record into this stage's running state.
        let mut attempts_left = 3;
        let running = loop {
            let Some(job) = self
                .patiently("read the record", shutdown, || jobs.get(id))
                .await?
            else {
                tracing::warn!(%stage, job = %id, "message for a job without a record dropped");
                queue.ack(stage, delivery).await?;
                return Ok(Outcome::Skipped("no record"));
            };
            let skipped = match disposition(&job, stage, delivery.attempt) {
                Disposition::Start => None,
                Disposition::Terminal => Some("job already finished"),
                Disposition::AlreadyPast => Some("a later stage has the job"),
                Disposition::Duplicate => Some("duplicate delivery"),
                Disposition::NotReached => {
                    tracing::warn!(%stage, job = %id, state = %job.state, "message for a job not at this stage dropped");
                    Some("job not at this stage")
                }
                Disposition::AlreadyDone => {
                    if let Some(next) = stage.next() {
                        queue.enqueue(next, self.next_message(delivery)).await?;
                    }
                    Some("stage already done; next stage enqueued again")
                }
            };
            if let Some(reason) = skipped {
                queue.ack(stage, delivery).await?;
                return Ok(Outcome::Skipped(reason));
            }
            if delivery.attempt > self.settings.max_attempts {
                // Delivered that often without ever finishing: each claimer died or hung.
                let error = CodedError::new(
                    ErrorCode::AttemptsExhausted,
                    format!(
                        "{stage} was claimed {} times without finishing (worker died or exceeded the visibility timeout)",
                        delivery.attempt - 1
                    ),
                );
                return self
                    .exhaust(job, delivery, error, ErrorCode::AttemptsExhausted)
                    .await;
            }
            let mut running = job.clone();
            running.state = stage.running_state();
            running.attempt = delivery.attempt;
            running.updated_ms = now_ms();
            let times = running.stages.entry(stage).or_default();
            times.started_ms = Some(running.updated_ms);
            times.finished_ms = None;
            let moved = self
                .patiently("start the stage", shutdown, || {
                    jobs.compare_and_set(job.state, job.attempt, &running)
                })
                .await;
            match moved {
                Ok(()) => break running,
                Err(BackendError::Conflict(conflict)) => {
                    // A move repeated after its reply was lost finds its own write.
                    if self.is_record(id, &running, shutdown).await? {
                        break running;
                    }
                    if attempts_left <= 1 {
                        return Err(BackendError::Conflict(conflict));
                    }
                    attempts_left -= 1;
                }
                Err(err) => return Err(err),
            }
        };
        publish(
            &self.backends,
            EventKind::StageStarted,
            &running,
            Some(stage),
        )
        .await;
        tracing::info!(%stage, job = %id, attempt = delivery.attempt, "stage started");
        let span = tracing::Span::current();
        span.record("msaas.tenant", running.tenant.as_str());
        span.record("msaas.model", running.options.model.as_str());
        if let Some(source) = &running.source {
            span.record("msaas.audio_duration_secs", source.duration_secs);
        }

        let (result, outage_over) = self.run_through_outages(&running, delivery, shutdown).await;

        // The job may have been cancelled while the stage ran: then nothing it did counts.
        let current = self
            .patiently("read the record", shutdown, || jobs.get(id))
            .await?;
        let Some(current) = current else {
            queue.ack(stage, delivery).await?;
            return Ok(Outcome::Skipped("record deleted while the stage ran"));
        };
        if current.state == JobState::Cancelled {
            queue.ack(stage, delivery).await?;
            tracing::info!(%stage, job = %id, "job cancelled while the stage ran");
            return Ok(Outcome::Cancelled);
        }
        if current.state != running.state || current.attempt != running.attempt {
            return Ok(Outcome::Superseded);
        }

        match result {
            Ok(output) => self.finish(running, delivery, output, shutdown).await,
            Err(_) if shutdown.is_cancelled() => {
                queue.retry(stage, delivery, Duration::ZERO).await?;
                tracing::info!(%stage, job = %id, "shutdown: stage interrupted, message given back");
                Ok(Outcome::Released)
            }
            Err(StageError(error)) if outage_over => {
                let code = error.code;
                let failed = CodedError::new(
                    code,
                    format!(
                        "{stage}: a dependency stayed unreachable for longer than the outage budget ({} s, worker.outage_budget_secs); last error: {error}",
                        self.settings.outage_budget.as_secs()
                    ),
                );
                self.exhaust(running, delivery, failed, code).await
            }
            Err(StageError(error)) if error.code.is_transient() => {
                if delivery.attempt >= self.settings.max_attempts {
                    let exhausted = CodedError::new(
                        ErrorCode::AttemptsExhausted,
                        format!(
                            "{stage} failed {} times; last error: {error}",
                            delivery.attempt
                        ),
                    );
                    return self.exhaust(running, delivery, exhausted, error.code).await;
                }
                observe::metrics::stage_retried(stage.as_str(), error.code.as_str());
                let delay = self.settings.backoff(delivery.attempt);
                tracing::warn!(%stage, job = %id, attempt = delivery.attempt, %error, ?delay, "stage failed; retrying");
                publish(&self.backends, EventKind::Retrying, &running, Some(stage)).await;
                queue.retry(stage, delivery, delay).await?;
                Ok(Outcome::Retrying { delay, error })
            }
            Err(StageError(error)) => {
                tracing::warn!(%stage, job = %id, %error, "stage failed permanently");
                match self.fail(running, error.clone()).await? {
                    Some(_) => {
                        queue.ack(stage, delivery).await?;
                        Ok(Outcome::Failed(error))
                    }
                    None => self.after_lost_race(delivery).await,
                }
            }
        }
    }

    /// Runs the handler, and again in place while it fails because a dependency is down
    /// (storage, queue, events: [`ErrorCode::is_outage`]), with the backoff between runs, for
    /// up to the outage budget: an outage costs the job time, not attempts. The flag says the
    /// budget ran out (the job then fails with the outage's code).
    ///
    /// One claim watcher ([`watch_claim`]) spans every run and the waits between them: a wait
    /// longer than the visibility timeout must not let another worker take the message over
    /// (each takeover is an attempt, and enough of them fail the job `attempts_exhausted`).
    async fn run_through_outages(
        &self,
        running: &Job,
        delivery: &Delivery,
        shutdown: &CancellationToken,
    ) -> (Result<StageOutput, StageError>, bool) {
        let stage = self.stage();
        // Fires on shutdown or when the job is cancelled.
        let cancel = shutdown.child_token();
        let watcher_stop = CancellationToken::new();
        // Aborted if this future is dropped (the worker's task killed): a watcher left
        // running would keep extending the claim and no other worker could take it over.
        let mut watcher = AbortOnDrop(tokio::spawn(watch_claim(
            self.backends.clone(),
            self.settings.clone(),
            stage,
            delivery.clone(),
            running.id.clone(),
            cancel.clone(),
            watcher_stop.clone(),
        )));
        let ended = self.run_until_no_outage(running, &cancel).await;
        watcher_stop.cancel();
        if let Err(err) = (&mut watcher.0).await {
            tracing::warn!(%stage, job = %running.id, %err, "claim watcher ended abnormally");
        }
        ended
    }

    /// The loop of [`Self::run_through_outages`], while its watcher keeps the claim.
    async fn run_until_no_outage(
        &self,
        running: &Job,
        cancel: &CancellationToken,
    ) -> (Result<StageOutput, StageError>, bool) {
        let stage = self.stage();
        let mut outage: Option<(std::time::Instant, u32)> = None;
        loop {
            let in_flight = observe::metrics::InFlight::start(stage.as_str());
            let result = self.run_handler(running, cancel).await;
            drop(in_flight);
            let waits = !self.settings.outage_budget.is_zero() && !cancel.is_cancelled();
            let error = match &result {
                // Without a budget an outage is an ordinary transient failure (an attempt).
                Err(StageError(error)) if error.code.is_outage() && waits => error,
                _ => {
                    if outage.is_some() && result.is_ok() {
                        tracing::info!(%stage, job = %running.id, "dependency back: stage ran");
                    }
                    return (result, false);
                }
            };
            let (since, failures) = outage.get_or_insert((std::time::Instant::now(), 0));
            *failures += 1;
            let waited = since.elapsed();
            if waited >= self.settings.outage_budget {
                return (result, true);
            }
            if *failures == 1 {
                tracing::warn!(%stage, job = %running.id, %error, budget = ?self.settings.outage_budget,
                    "a dependency is down; waiting it out (not counted as an attempt)");
            }
            let delay = self
                .settings
                .backoff(*failures)
                .min(self.settings.outage_budget.saturating_sub(waited));
            tokio::select! {
                () = cancel.cancelled() => return (result, false),
                () = tokio::time::sleep(delay) => {}
            }
            // Cancelled or deleted meanwhile: the caller's look at the record settles it.
            if let Ok(Some(current)) = self.backends.jobs.get(&running.id).await
                && (current.state != running.state || current.attempt != running.attempt)
            {
                return (result, false);
            }
        }
    }

    /// Whether the record of `id` is exactly `expected` (a move of ours already applied).
    async fn is_record(
        &self,
        id: &JobId,
        expected: &Job,
        shutdown: &CancellationToken,
    ) -> Result<bool, BackendError> {
        let current = self
            .patiently("read the record", shutdown, || self.backends.jobs.get(id))
            .await?;
        Ok(current.as_ref() == Some(expected))
    }

    /// Runs a bookkeeping step (a record move, an enqueue, an ack) again while it fails
    /// because the queue or the store is down, with the backoff between tries, for up to the
    /// outage budget or until shutdown; then its last error is returned. Every such step is
    /// safe to repeat (see the record semantics above).
    async fn patiently<T, F, Fut>(
        &self,
        what: &'static str,
        shutdown: &CancellationToken,
        mut step: F,
    ) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        let stage = self.stage();
        let started = std::time::Instant::now();
        let mut failures: u32 = 0;
        loop {
            let result = step().await;
            match &result {
                Err(err)
                    if err.code().is_outage()
                        && started.elapsed() < self.settings.outage_budget
                        && !shutdown.is_cancelled() =>
                {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(%stage, step = what, %err, "a dependency is down; waiting for it");
                    }
                    let delay = self.settings.backoff(failures).min(
                        self.settings
                            .outage_budget
                            .saturating_sub(started.elapsed()),
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => return result,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                _ => {
                    if failures > 0 && result.is_ok() {
                        tracing::info!(%stage, step = what, "dependency back");
                    }
                    return result;
                }
            }
        }
    }

    /// Runs the handler with a progress sink and `cancel` (shutdown or the job cancelled).
    async fn run_handler(
        &self,
        job: &Job,
        cancel: &CancellationToken,
    ) -> Result<StageOutput, StageError> {
        let stage = self.stage();
        let (sender, mut receiver) = mpsc::unbounded_channel::<Progress>();
        let ctx = StageContext {
            store: self.backends.store.clone(),
            progress: Arc::new(EventProgress { sender }),
            cancel: cancel.clone(),
        };

        let forwarder = {
            let events = self.backends.events.clone();
            let id = job.id.clone();
            tokio::spawn(async move {
                while let Some(progress) = receiver.recv().await {
                    let event = JobEvent {
                        kind: EventKind::Progress,
                        job_id: id.clone(),
                        stage: Some(stage),
                        progress: Some(progress),
                        job: None,
                        at_ms: now_ms(),
                    };
                    if let Err(err) = events.publish(&event).await {
                        tracing::debug!(job = %id, %err, "progress event not published");
                    }
                }
            })
        };

        // A panicking stage must not take the worker down with the message still claimed:
        // it becomes an `internal` error, retried and then dead-lettered like any other.
        let result = std::panic::AssertUnwindSafe(self.handler.run(job, &ctx))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                tracing::error!(%stage, job = %job.id, panic = %what, "stage panicked");
                Err(StageError::new(
                    ErrorCode::Internal,
                    format!("{stage} stage panicked: {what}"),
                ))
            });

        drop(ctx);
        // Let queued progress out before the stage's finish event; a handler that kept a
        // copy of its context alive must not hold the worker up.
        let _ = tokio::time::timeout(Duration::from_secs(1), forwarder).await;
        result
    }

    /// Applies the stage's output, moves the record on, enqueues the next stage, acks.
    async fn finish(
        &self,
        running: Job,
        delivery: &Delivery,
        output: StageOutput,
        shutdown: &CancellationToken,
    ) -> Result<Outcome, BackendError> {
        let stage = self.stage();
        let mut finished = running.clone();
        if let Some(source) = output.source {
            finished.source = Some(source);
        }
        if !output.stems.is_empty() {
            finished.stems = output.stems;
        }
        finished.results.extend(output.results);
        finished.updated_ms = now_ms();
        finished.stages.entry(stage).or_default().finished_ms = Some(finished.updated_ms);
        let next = stage.next();
        if next.is_none() {
            finished.state = JobState::Done;
        }
        let moved = self
            .patiently("finish the stage", shutdown, || {
                self.backends
                    .jobs
                    .compare_and_set(running.state, running.attempt, &finished)
            })
            .await;
        match moved {
            Ok(()) => {}
            // A move repeated after its reply was lost finds its own write.
            Err(BackendError::Conflict(_))
                if self.is_record(&finished.id, &finished, shutdown).await? => {}
            Err(BackendError::Conflict(_)) => return self.after_lost_race(delivery).await,
            Err(err) => return Err(err),
        }
        tracing::info!(%stage, job = %finished.id, "stage finished");
        publish(
            &self.backends,
            EventKind::StageFinished,
            &finished,
            Some(stage),
        )
        .await;
        let outcome = match next {
            Some(next) => {
                let message = self.next_message(delivery);
                self.patiently("queue the next stage", shutdown, || {
                    self.backends.queue.enqueue(next, message.clone())
                })
                .await?;
                Outcome::Advanced { next }
            }
            None => {
                publish(&self.backends, EventKind::Done, &finished, None).await;
                Outcome::Done
            }
        };
        self.patiently("ack", shutdown, || self.backends.queue.ack(stage, delivery))
            .await?;
        Ok(outcome)
    }

    /// Fails the job with `error` and dead-letters the message — in that order, so a crash
    /// in between leaves a failed job whose redelivered message is simply acked. `cause` is
    /// the code of the last failure, what the dead-letter metric counts.
    async fn exhaust(
        &self,
        job: Job,
        delivery: &Delivery,
        error: CodedError,
        cause: ErrorCode,
    ) -> Result<Outcome, BackendError> {
        let stage = self.stage();
        tracing::warn!(%stage, job = %job.id, %error, "attempts exhausted; dead-lettering");
        if self.fail(job, error.clone()).await?.is_none() {
            return self.after_lost_race(delivery).await;
        }
        self.backends
            .queue
            .dead_letter(stage, delivery, &error)
            .await?;
        observe::metrics::dead_lettered(stage.as_str(), cause.as_str());
        Ok(Outcome::Failed(error))
    }

    /// Moves `job` (as last read) to `failed`; `None` if the record moved meanwhile.
    async fn fail(&self, job: Job, error: CodedError) -> Result<Option<Job>, BackendError> {
        let mut failed = job.clone();
        failed.state = JobState::Failed;
        failed.error = Some(error);
        failed.updated_ms = now_ms();
        match self
            .backends
            .jobs
            .compare_and_set(job.state, job.attempt, &failed)
            .await
        {
            Ok(()) => {
                publish(
                    &self.backends,
                    EventKind::Failed,
                    &failed,
                    Some(self.stage()),
                )
                .await;
                Ok(Some(failed))
            }
            Err(BackendError::Conflict(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The record moved under us: cancelled or finished (ack), or taken over by a newer
    /// delivery of this message (leave the message to it).
    async fn after_lost_race(&self, delivery: &Delivery) -> Result<Outcome, BackendError> {
        let stage = self.stage();
        match self.backends.jobs.get(&delivery.message.job_id).await? {
            Some(job) if job.state == JobState::Cancelled => {
                self.backends.queue.ack(stage, delivery).await?;
                Ok(Outcome::Cancelled)
            }
            Some(job) if !job.state.is_terminal() => Ok(Outcome::Superseded),
            _ => {
                self.backends.queue.ack(stage, delivery).await?;
                Ok(Outcome::Skipped("job already finished"))
            }
        }
    }

    /// The next stage's message. Its `traceparent` names this stage's span (same trace, so
    /// the next stage becomes its child); without trace export the incoming one is passed on.
    fn next_message(&self, delivery: &Delivery) -> StageMessage {
        StageMessage {
            job_id: delivery.message.job_id.clone(),
            traceparent: observe::trace::current_traceparent()
                .or_else(|| delivery.message.traceparent.clone()),
        }
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// While a stage runs or waits out an outage: keeps the claim alive (touch every third of
/// the visibility timeout), shows the job is alive by moving the record's `updated_ms` at the
/// same pace (so the janitor's sweep never takes a long stage for a lost one), and cancels the
/// stage when the job is cancelled (its event, or the record when polled).
async fn watch_claim(
    backends: Backends,
    settings: WorkerSettings,
    stage: Stage,
    delivery: Delivery,
    job: JobId,
    cancel: CancellationToken,
    stop: CancellationToken,
) {
    let touch_every = (settings.visibility_timeout / 3).max(Duration::from_millis(1));
    let poll_every = settings.cancel_poll.max(Duration::from_millis(1));
    let mut touch = tokio::time::interval(touch_every);
    let mut poll = tokio::time::interval(poll_every);
    touch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Both fire at once on the first tick; the claim and record are fresh then.
    touch.tick().await;
    poll.tick().await;
    let mut events = match backends.events.subscribe(Some(&job)).await {
        Ok(events) => Some(events),
        Err(err) => {
            tracing::debug!(%job, %err, "no cancel events; polling the record only");
            None
        }
    };
    loop {
        let cancelled_event = async {
            match events.as_mut() {
                Some(events) => loop {
                    match events.next().await {
                        Some(event) if event.kind == EventKind::Cancelled => return,
                        Some(_) => {}
                        None => std::future::pending::<()>().await,
                    }
                },
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = cancelled_event => {
                cancel.cancel();
            }
            _ = touch.tick() => {
                if let Err(err) = backends.queue.touch(stage, &delivery).await {
                    tracing::warn!(%stage, %job, %err, "could not extend the claim");
                }
                heartbeat(&backends, stage, &delivery, &job).await;
            }
            _ = poll.tick() => {
                match backends.jobs.get(&job).await {
                    Ok(Some(record)) if record.state == JobState::Cancelled => cancel.cancel(),
                    Ok(_) => {}
                    Err(err) => tracing::debug!(%job, %err, "record poll failed"),
                }
            }
        }
    }
}

/// Moves `updated_ms` of a record this delivery still runs (same state and attempt); a
/// record that moved on (cancelled, taken over) is left alone.
async fn heartbeat(backends: &Backends, stage: Stage, delivery: &Delivery, job: &JobId) {
    let running = stage.running_state();
    match backends.jobs.get(job).await {
        Ok(Some(mut record)) if record.state == running && record.attempt == delivery.attempt => {
            record.updated_ms = now_ms();
            if let Err(err) = backends
                .jobs
                .compare_and_set(running, delivery.attempt, &record)
                .await
            {
                tracing::debug!(%stage, %job, %err, "heartbeat lost a race; the record moved on");
            }
        }
        Ok(_) => {}
        Err(err) => tracing::debug!(%stage, %job, %err, "heartbeat could not read the record"),
    }
}

/// Stores the source, creates the record, enqueues decode and publishes `queued`. The body
/// is hashed while it is stored; `limit` bounds it (`too_large`). Options are validated first.
pub async fn submit(
    backends: &Backends,
    mut job: Job,
    source: ByteStream,
    limit: Option<u64>,
    traceparent: Option<String>,
) -> Result<Job, CodedError> {
    job.options.validate()?;
    store_source(backends, &mut job, source, limit).await?;
    match enqueue_new(backends, job, &[], traceparent).await? {
        Enqueued::New(job) => Ok(*job),
        // Without aliases no earlier job can be named.
        Enqueued::Existing(earlier) => Err(CodedError::new(
            ErrorCode::Conflict,
            format!("job {earlier} was returned for a submission without aliases"),
        )),
    }
}

/// The first half of [`submit`]: streams the source to [`keys::source`] and sets
/// `job.sha256`. Nothing is queued yet, so a caller can still look at the bytes' hash
/// (dedup) and drop the job with [`BlobStore::delete`] of the source.
///
/// [`BlobStore::delete`]: crate::traits::BlobStore::delete
pub async fn store_source(
    backends: &Backends,
    job: &mut Job,
    source: ByteStream,
    limit: Option<u64>,
) -> Result<(), CodedError> {
    let key = keys::source(&job.id);
    let hasher = Arc::new(std::sync::Mutex::new(Sha256::new()));
    let hashing = {
        let hasher = hasher.clone();
        source
            .inspect(move |chunk| {
                if let Ok(bytes) = chunk {
                    hasher
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .update(bytes);
                }
            })
            .boxed()
    };
    match backends.store.put_stream(&key, hashing, limit).await? {
        PutOutcome::Stored { bytes: 0 } => {
            backends.store.delete(&key).await?;
            return Err(CodedError::new(
                ErrorCode::EmptyInput,
                "the upload is empty",
            ));
        }
        PutOutcome::Stored { .. } => {}
        PutOutcome::OverLimit { limit } => {
            return Err(CodedError::new(
                ErrorCode::TooLarge,
                format!("the upload is larger than the limit of {limit} bytes"),
            ));
        }
    }
    let digest = hasher
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .finalize();
    job.sha256 = Some(hex::encode(digest));
    Ok(())
}

/// What [`enqueue_new`] came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Enqueued {
    /// The job was created and queued.
    New(Box<Job>),
    /// One of the aliases names this earlier job: nothing was created, the stored source of
    /// the new one is deleted.
    Existing(JobId),
}

/// The second half of [`submit`]: publishes `queued`, then creates the record (state
/// `queued`), binds `aliases` to it and enqueues decode in one step
/// ([`JobStore::create_queued`]).
/// When it fails, nothing was accepted and the stored source is deleted — unless the record
/// turns out to exist after all (the connection broke after the step ran): then the job is
/// accepted. Without a `traceparent`, the current span's (if traced) starts the job's trace.
///
/// [`JobStore::create_queued`]: crate::traits::JobStore::create_queued
pub async fn enqueue_new(
    backends: &Backends,
    mut job: Job,
    aliases: &[String],
    traceparent: Option<String>,
) -> Result<Enqueued, CodedError> {
    let traceparent = traceparent.or_else(observe::trace::current_traceparent);
    let key = keys::source(&job.id);
    job.state = JobState::Queued;
    job.attempt = 0;
    let message = StageMessage {
        job_id: job.id.clone(),
        traceparent,
    };
    // Published first so that `queued` always precedes decode's `stage_started` (a worker may
    // claim the job the moment it is queued). If the step then fails, the event names a job
    // that does not exist: events are hints, the record is the truth.
    publish(backends, EventKind::Queued, &job, None).await;
    let created = backends
        .jobs
        .create_queued(
            &job,
            aliases,
            backends.queue.as_ref(),
            Stage::Decode,
            &message,
        )
        .await;
    match created {
        Ok(Submitted::Created) => {}
        Ok(Submitted::Existing(earlier)) => {
            delete_source(backends, &job.id, &key).await;
            return Ok(Enqueued::Existing(earlier));
        }
        Err(err) => match backends.jobs.get(&job.id).await {
            Ok(Some(record)) if record == job => {
                tracing::info!(job = %job.id, %err, "job accepted although the reply was lost");
            }
            Ok(_) => {
                delete_source(backends, &job.id, &key).await;
                return Err(err.into());
            }
            // Whether it was accepted is unknown: the source stays, for the job if it exists,
            // else for the janitor's orphan collection.
            Err(_) => return Err(err.into()),
        },
    }
    tracing::info!(job = %job.id, tenant = %job.tenant, "job queued");
    Ok(Enqueued::New(Box::new(job)))
}

async fn delete_source(backends: &Backends, job: &JobId, key: &str) {
    if let Err(cleanup) = backends.store.delete(key).await {
        tracing::warn!(%job, %cleanup, "source of a job not created not removed");
    }
}

/// [`submit`] of a local file (`msaas run`), streamed, never read whole into memory. A
/// missing file is `not_found`; a directory or an unreadable file is `bad_request`.
pub async fn submit_file(
    backends: &Backends,
    job: Job,
    path: &Path,
    limit: Option<u64>,
) -> Result<Job, CodedError> {
    let unreadable = |err: std::io::Error| {
        let code = if err.kind() == std::io::ErrorKind::NotFound {
            ErrorCode::NotFound
        } else {
            ErrorCode::BadRequest
        };
        CodedError::new(code, format!("cannot read {}: {err}", path.display()))
    };
    let file = tokio::fs::File::open(path).await.map_err(unreadable)?;
    if file.metadata().await.map_err(unreadable)?.is_dir() {
        return Err(CodedError::new(
            ErrorCode::BadRequest,
            format!("{} is a directory, not an audio file", path.display()),
        ));
    }
    let body = tokio_util::io::ReaderStream::new(file)
        .map(|chunk| chunk.map_err(BackendError::from))
        .boxed();
    submit(
        backends,
        job,
        body,
        limit,
        observe::trace::current_traceparent(),
    )
    .await
}

/// The record of `id`, or `not_found`.
async fn existing_job(backends: &Backends, id: &JobId) -> Result<Job, CodedError> {
    backends
        .jobs
        .get(id)
        .await?
        .ok_or_else(|| CodedError::new(ErrorCode::NotFound, format!("no job {id}")))
}

/// Cancels a job that has not finished: the record moves to `cancelled` (a running stage
/// notices and stops; its worker acks). A finished job is returned unchanged.
pub async fn cancel(backends: &Backends, id: &JobId) -> Result<Job, CodedError> {
    for _ in 0..5 {
        let job = existing_job(backends, id).await?;
        if job.state.is_terminal() {
            return Ok(job);
        }
        let mut cancelled = job.clone();
        cancelled.state = JobState::Cancelled;
        cancelled.error = Some(CodedError::new(
            ErrorCode::Cancelled,
            "cancelled by request",
        ));
        cancelled.updated_ms = now_ms();
        match backends
            .jobs
            .compare_and_set(job.state, job.attempt, &cancelled)
            .await
        {
            Ok(()) => {
                publish(backends, EventKind::Cancelled, &cancelled, None).await;
                tracing::info!(job = %id, "job cancelled");
                return Ok(cancelled);
            }
            Err(BackendError::Conflict(_)) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Err(CodedError::new(
        ErrorCode::Conflict,
        format!("job {id} kept changing; try again"),
    ))
}

/// Waits until the job is done, failed or cancelled, and returns its final record. Follows
/// events, and re-reads the record every `poll` in case one was missed.
pub async fn wait_until_finished(
    backends: &Backends,
    id: &JobId,
    poll: Duration,
) -> Result<Job, CodedError> {
    let mut events = backends.events.subscribe(Some(id)).await.ok();
    loop {
        let job = existing_job(backends, id).await?;
        if job.state.is_terminal() {
            return Ok(job);
        }
        let next_event = async {
            match events.as_mut() {
                Some(events) => {
                    if events.next().await.is_none() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = next_event => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobOptions, StageTimes};

    fn job_in(state: JobState, attempt: u32, finished: &[Stage]) -> Job {
        let mut job = Job::new("t", "a.wav", JobOptions::default());
        job.state = state;
        job.attempt = attempt;
        for stage in finished {
            job.stages.insert(
                *stage,
                StageTimes {
                    started_ms: Some(1),
                    finished_ms: Some(2),
                },
            );
        }
        job
    }

    #[test]
    fn disposition_reads_the_record() {
        use Disposition::*;
        use JobState::*;
        let cases = [
            // (state, record attempt, finished stages, stage, delivery attempt, expected)
            (Queued, 0, vec![], Stage::Decode, 1, Start),
            (Queued, 0, vec![], Stage::Separate, 1, NotReached),
            (Decoding, 1, vec![], Stage::Decode, 2, Start),
            (Decoding, 1, vec![], Stage::Decode, 1, Duplicate),
            (Decoding, 2, vec![], Stage::Decode, 1, Duplicate),
            (
                Decoding,
                1,
                vec![Stage::Decode],
                Stage::Decode,
                2,
                AlreadyDone,
            ),
            (Decoding, 1, vec![], Stage::Separate, 1, NotReached),
            (Decoding, 1, vec![Stage::Decode], Stage::Separate, 1, Start),
            (
                Separating,
                1,
                vec![Stage::Decode],
                Stage::Decode,
                3,
                AlreadyPast,
            ),
            (
                Separating,
                1,
                vec![Stage::Decode],
                Stage::Separate,
                1,
                Duplicate,
            ),
            (
                Separating,
                1,
                vec![Stage::Decode],
                Stage::Separate,
                2,
                Start,
            ),
            (
                Separating,
                2,
                vec![Stage::Decode, Stage::Separate],
                Stage::Encode,
                1,
                Start,
            ),
            (
                Encoding,
                1,
                vec![Stage::Decode, Stage::Separate],
                Stage::Separate,
                2,
                AlreadyPast,
            ),
            (Done, 1, vec![], Stage::Encode, 2, Terminal),
            (Cancelled, 1, vec![], Stage::Decode, 1, Terminal),
            (Failed, 1, vec![], Stage::Separate, 1, Terminal),
        ];
        for (state, record_attempt, finished, stage, attempt, expected) in cases {
            let job = job_in(state, record_attempt, &finished);
            assert_eq!(
                disposition(&job, stage, attempt),
                expected,
                "{state} attempt {record_attempt} finished {finished:?}, {stage} delivery {attempt}"
            );
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let settings = WorkerSettings {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..WorkerSettings::default()
        };
        for (attempt, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            for _ in 0..20 {
                let delay = settings.backoff(attempt);
                let full = Duration::from_millis(full);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "attempt {attempt}: {delay:?}"
                );
            }
        }
    }
}
