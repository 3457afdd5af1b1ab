//! The seams of the pipeline. Each trait has an embedded backend in this crate; the
//! distributed backends (Redis Streams, S3, NATS) implement the same traits, so a stage
//! never knows which it runs on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::job::{Job, JobId, JobState, Stage};
use audio::error::{CodedError, ErrorCode};

/// Errors of the backends: which backend failed and why, mapped to a stable code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    #[error("not found: {0}")]
    NotFound(String),
    /// The record was not in the expected state (compare-and-set lost a race).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("queue: {0}")]
    Queue(String),
    #[error("events: {0}")]
    Events(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A storage key (or prefix) that is not a safe relative path: empty, absolute, with
    /// `..` / `.` or empty segments.
    #[error("invalid storage key {0:?}")]
    InvalidKey(String),
    /// The client's request body broke off: cut short, a malformed chunk, a truncated
    /// multipart. A client error (400), never a fault of the service.
    #[error("the request body could not be read: {0}")]
    ClientBody(String),
    /// The server is set up in a way this backend cannot work with (Redis in cluster
    /// mode): a configuration error, not an outage.
    #[error("unsupported server: {0}")]
    Unsupported(String),
    /// A byte range that does not fit the object.
    #[error("byte range {start}..{end} does not fit object {key:?} of {size} bytes")]
    InvalidRange {
        key: String,
        start: u64,
        end: u64,
        size: u64,
    },
}

impl BackendError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::Storage(_) => ErrorCode::StorageUnavailable,
            Self::Queue(_) => ErrorCode::QueueUnavailable,
            Self::Events(_) => ErrorCode::EventsUnavailable,
            Self::Io(_) => ErrorCode::Io,
            Self::Unsupported(_) => ErrorCode::InvalidOption,
            Self::InvalidKey(_) | Self::InvalidRange { .. } | Self::ClientBody(_) => {
                ErrorCode::BadRequest
            }
        }
    }
}

impl From<BackendError> for CodedError {
    fn from(err: BackendError) -> Self {
        CodedError::new(err.code(), err.to_string())
    }
}

/// A message on a stage queue: only a pointer, the job record is the truth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageMessage {
    pub job_id: JobId,
    /// W3C `traceparent` of the job's trace, when tracing is on.
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// A claimed message: the payload plus what the queue needs to ack / retry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message: StageMessage,
    /// Backend-specific receipt (stream entry id, in-memory sequence).
    pub receipt: String,
    /// How many times this message has been delivered, 1 on the first claim.
    pub attempt: u32,
}

/// One queue per stage; at-least-once delivery with a visibility timeout.
#[async_trait]
pub trait StageQueue: Send + Sync {
    async fn enqueue(&self, stage: Stage, message: StageMessage) -> Result<(), BackendError>;
    /// Claims the next message of `stage` for `consumer`, waiting up to `wait`. Messages
    /// claimed by anyone and not acked within the visibility timeout are claimed again,
    /// with `attempt` counted up.
    async fn claim(
        &self,
        stage: Stage,
        consumer: &str,
        wait: Duration,
    ) -> Result<Option<Delivery>, BackendError>;
    /// Done with it: it will not be delivered again.
    async fn ack(&self, stage: Stage, delivery: &Delivery) -> Result<(), BackendError>;
    /// Give it back to be delivered again after `delay` (transient failure, or a graceful
    /// shutdown releasing work it will not finish).
    async fn retry(
        &self,
        stage: Stage,
        delivery: &Delivery,
        delay: Duration,
    ) -> Result<(), BackendError>;
    /// Moves it to the dead-letter queue with the reason; it is not delivered again.
    async fn dead_letter(
        &self,
        stage: Stage,
        delivery: &Delivery,
        reason: &CodedError,
    ) -> Result<(), BackendError>;
    /// Depth of a stage (waiting + claimed-but-not-acked), for metrics and autoscaling.
    async fn depth(&self, stage: Stage) -> Result<QueueDepth, BackendError>;
    /// Still working on it: restarts the visibility timeout of this claim, so a stage that
    /// runs longer than the timeout is not claimed again by another consumer. The worker
    /// calls it every third of the timeout. Returns `Conflict` if the delivery is no longer
    /// this claimer's (it was reclaimed, acked or retried). Backends must override it (Redis:
    /// `XCLAIM` of the entry to the same consumer with min-idle 0); the default does
    /// nothing, which is only right for a queue without a visibility timeout.
    async fn touch(&self, stage: Stage, delivery: &Delivery) -> Result<(), BackendError> {
        let _ = (stage, delivery);
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueDepth {
    /// Not yet delivered.
    pub waiting: u64,
    /// Delivered, not acked.
    pub pending: u64,
    /// Age of the oldest waiting or pending message, in milliseconds.
    pub oldest_age_ms: u64,
}

/// Where a stored object can be read from by someone outside the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local file (embedded mode).
    Path(PathBuf),
    /// A presigned URL (object storage).
    Url(String),
}

pub type ByteStream = BoxStream<'static, Result<Bytes, BackendError>>;

/// Object storage for audio. Writes are atomic: a reader sees the old object, or the whole
/// new one, never a part.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Stores a stream under `key`. With a `limit` (bytes), a body longer than it is not
    /// stored: the store stops reading as soon as it is passed and returns `OverLimit`.
    async fn put_stream(
        &self,
        key: &str,
        body: ByteStream,
        limit: Option<u64>,
    ) -> Result<PutOutcome, BackendError>;
    /// Stores a local file under `key` (streamed, never read whole into memory).
    async fn put_file(&self, key: &str, path: &Path) -> Result<u64, BackendError>;
    async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), BackendError>;
    /// Streams an object, optionally a byte range `start..end` (end exclusive).
    async fn get_stream(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, BackendError>;
    /// Copies an object into a local file (written atomically).
    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64, BackendError>;
    /// Size of an object, `None` if absent.
    async fn size(&self, key: &str) -> Result<Option<u64>, BackendError>;
    /// Deletes an object; absent objects are not an error.
    async fn delete(&self, key: &str) -> Result<(), BackendError>;
    /// Deletes every object under a prefix.
    async fn delete_prefix(&self, prefix: &str) -> Result<(), BackendError>;
    /// A path or presigned URL valid for `expires`.
    async fn locate(&self, key: &str, expires: Duration) -> Result<Location, BackendError>;
    /// Objects whose keys start with `prefix` and sort after `start_after`, in key order, at
    /// most `limit` (the janitor pages through them looking for orphans).
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ObjectInfo>, BackendError>;
}

/// One stored object, as [`BlobStore::list`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    /// When it was last written (ms since the Unix epoch).
    pub modified_ms: u64,
}

/// What [`JobStore::create_queued`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// The record was created and the job queued.
    Created,
    /// One of the aliases names this earlier job; nothing was created.
    Existing(JobId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Stored {
        bytes: u64,
    },
    /// The body was longer than the limit; nothing was stored.
    OverLimit {
        limit: u64,
    },
}

/// The system of record for jobs.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Creates a record; fails with `Conflict` if the id exists.
    async fn create(&self, job: &Job) -> Result<(), BackendError>;
    async fn get(&self, id: &JobId) -> Result<Option<Job>, BackendError>;
    /// Replaces the record with `next` only if it is still in `expected` state with
    /// `expected_attempt`; returns `Conflict` otherwise. This is how stages move jobs.
    async fn compare_and_set(
        &self,
        expected: JobState,
        expected_attempt: u32,
        next: &Job,
    ) -> Result<(), BackendError>;
    /// A tenant's jobs, newest first.
    async fn list(&self, tenant: &str, limit: usize) -> Result<Vec<Job>, BackendError>;
    /// Deletes the record and every alias bound to it (not its objects: see
    /// [`crate::janitor`]).
    async fn delete(&self, id: &JobId) -> Result<(), BackendError>;
    /// Terminal jobs whose last move (`updated_ms`) was before `ended_before_ms`, oldest
    /// first: the retention sweep deletes their objects and then the record.
    async fn expired(&self, ended_before_ms: u64, limit: usize)
    -> Result<Vec<JobId>, BackendError>;
    /// Jobs not in a terminal state whose record last moved before `updated_before_ms`,
    /// oldest first: the sweeper hands them to their stage again (a crash between creating
    /// the record and queueing it, a message lost with a queue server's data).
    async fn stale(&self, updated_before_ms: u64, limit: usize) -> Result<Vec<Job>, BackendError>;
    /// Binds `alias` (an idempotency key or a content fingerprint; the caller namespaces it,
    /// e.g. `idem:{tenant}:{key}`) to job `id` unless it is bound already, atomically.
    /// Returns the job it is bound to afterwards: `id`, or the earlier one. The binding lives
    /// as long as the job's record.
    async fn bind_alias(&self, alias: &str, id: &JobId) -> Result<JobId, BackendError>;
    /// The job `alias` is bound to, if any (and if that record still exists).
    async fn resolve_alias(&self, alias: &str) -> Result<Option<JobId>, BackendError>;
    /// Creates the record of a new job, binds `aliases` (idempotency keys, songhashes) to it
    /// and hands it to `stage` with `message`, as one step: a client told its job was not
    /// accepted has nothing in flight, one told it was has a job a worker will get. When one
    /// of `aliases` is bound to a job whose record exists, nothing is created and that job is
    /// named ([`Submitted::Existing`]). Safe to repeat after an error whose outcome is unknown
    /// (a connection that broke mid-command): a repeat of a call that did happen answers
    /// [`Submitted::Created`] again.
    ///
    /// The default creates, binds, then enqueues on `queue`, and deletes the record again if
    /// the enqueue fails. A store that lives beside its queue overrides it with one atomic
    /// step (Redis: one script writes the record, the aliases and the stream entry).
    async fn create_queued(
        &self,
        job: &Job,
        aliases: &[String],
        queue: &dyn StageQueue,
        stage: Stage,
        message: &StageMessage,
    ) -> Result<Submitted, BackendError> {
        create_then_enqueue(self, job, aliases, queue, stage, message).await
    }
    /// Takes the lease `name` for `holder` for `ttl`, or renews it if `holder` has it: true
    /// when `holder` holds it afterwards, false while someone else does. A lease nobody renews
    /// lapses after `ttl`. Ingest leases an Idempotency-Key while its upload streams, so a
    /// second request with the key waits instead of uploading the body again, and a holder
    /// that died frees the key within `ttl`.
    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, BackendError>;
    /// Gives the lease `name` back if `holder` still has it.
    async fn release(&self, name: &str, holder: &str) -> Result<(), BackendError>;
    /// How many of the tenant's jobs are not in a terminal state (what a per-tenant cap on
    /// unfinished jobs counts). Kept with the records, so every ingest replica sees it.
    async fn active_count(&self, tenant: &str) -> Result<u64, BackendError>;
    /// Counts one upload of `tenant` in the fixed window of `window_ms` that holds `now_ms`
    /// and returns that window's count, this one included (a per-tenant upload rate).
    async fn count_upload(
        &self,
        tenant: &str,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<u64, BackendError>;
}

/// The default [`JobStore::create_queued`], in steps: for a store that has no atomic one, and
/// for one that is not beside the queue it is given.
pub async fn create_then_enqueue<S: JobStore + ?Sized>(
    store: &S,
    job: &Job,
    aliases: &[String],
    queue: &dyn StageQueue,
    stage: Stage,
    message: &StageMessage,
) -> Result<Submitted, BackendError> {
    for alias in aliases {
        if let Some(bound) = store.resolve_alias(alias).await?
            && bound != job.id
        {
            return Ok(Submitted::Existing(bound));
        }
    }
    match store.create(job).await {
        Ok(()) => {}
        // A repeat of this very call.
        Err(BackendError::Conflict(_)) if store.get(&job.id).await?.as_ref() == Some(job) => {}
        Err(err) => return Err(err),
    }
    for alias in aliases {
        let bound = store.bind_alias(alias, &job.id).await?;
        if bound != job.id {
            // Bound meanwhile by a request that did not hold the key's lease.
            store.delete(&job.id).await?;
            return Ok(Submitted::Existing(bound));
        }
    }
    if let Err(err) = queue.enqueue(stage, message.clone()).await {
        if let Err(undo) = store.delete(&job.id).await {
            tracing::warn!(job = %job.id, %undo, "record of an unqueued job left for the janitor's sweep");
        }
        return Err(err);
    }
    Ok(Submitted::Created)
}

/// Reacts to a job's transitions in the process that makes them (metrics, webhooks). Called
/// inline by the worker, `submit` and `cancel` before the event is published, so it must not
/// block or fail: anything slow is spawned.
pub trait TransitionHook: Send + Sync {
    fn on_event(&self, event: &JobEvent);
}

/// What happened to a job, as published on the event bus (`msaas.jobs.{id}.{kind}` on NATS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub kind: EventKind,
    pub job_id: JobId,
    #[serde(default)]
    pub stage: Option<Stage>,
    /// Progress within the stage: done / total units (separation chunks).
    #[serde(default)]
    pub progress: Option<Progress>,
    /// The record after the transition (absent on progress events).
    #[serde(default)]
    pub job: Option<Job>,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Queued,
    StageStarted,
    StageFinished,
    Progress,
    Retrying,
    Done,
    Failed,
    Cancelled,
}

impl EventKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::StageStarted => "stage_started",
            Self::StageFinished => "stage_finished",
            Self::Progress => "progress",
            Self::Retrying => "retrying",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

pub type EventStream = BoxStream<'static, JobEvent>;

/// Job events. Publishing is best effort (the record is the truth); subscribers may miss
/// events and must re-read the record when they need certainty.
#[async_trait]
pub trait EventBus: Send + Sync {
    async fn publish(&self, event: &JobEvent) -> Result<(), BackendError>;
    /// Events of one job (`Some`) or of all jobs (`None`), from now on.
    async fn subscribe(&self, job: Option<&JobId>) -> Result<EventStream, BackendError>;
}
