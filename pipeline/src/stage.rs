//! What a stage is to the worker loop. A stage crate implements [`StageHandler`] in a thin
//! adapter around its pure core; the worker loop does claiming, record moves and retries.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::job::{Job, Stage};
use crate::traits::{BlobStore, Progress};
use audio::SourceInfo;
use audio::error::{CodedError, ErrorCode};

/// Reports progress within a stage (e.g. separation chunks). Cheap and non-blocking: the
/// worker turns it into `progress` events.
pub trait ProgressSink: Send + Sync {
    fn report(&self, progress: Progress);
}

/// A sink that drops every report.
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn report(&self, _progress: Progress) {}
}

/// What a stage may use while it runs one job.
#[derive(Clone)]
pub struct StageContext {
    pub store: Arc<dyn BlobStore>,
    pub progress: Arc<dyn ProgressSink>,
    /// Cancelled on shutdown or when the job is cancelled; long stages check it between units
    /// of work and return [`StageError::cancelled`].
    pub cancel: CancellationToken,
}

/// What a finished stage changes in the job record (the worker applies it in its
/// compare-and-set move).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageOutput {
    /// Set by decode.
    pub source: Option<SourceInfo>,
    /// Set by separate: the stems it wrote, in order.
    pub stems: Vec<String>,
    /// Set by encode: stem name → storage key.
    pub results: Vec<(String, String)>,
}

/// A stage failure: its stable code decides whether it is retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StageError(pub CodedError);

impl StageError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(CodedError::new(code, message))
    }

    pub fn cancelled() -> Self {
        Self::new(ErrorCode::Cancelled, "cancelled")
    }

    pub fn code(&self) -> ErrorCode {
        self.0.code
    }

    pub fn is_transient(&self) -> bool {
        self.0.code.is_transient()
    }
}

impl From<CodedError> for StageError {
    fn from(err: CodedError) -> Self {
        Self(err)
    }
}

impl From<crate::traits::BackendError> for StageError {
    fn from(err: crate::traits::BackendError) -> Self {
        Self(err.into())
    }
}

#[async_trait]
pub trait StageHandler: Send + Sync {
    fn stage(&self) -> Stage;

    /// Runs this stage for `job`: reads its input from the store, writes its outputs at the
    /// deterministic keys of [`crate::job::keys`] (overwriting on a retry), and returns what
    /// changes in the record. Must be idempotent: it may run again for the same job after a crash.
    async fn run(&self, job: &Job, ctx: &StageContext) -> Result<StageOutput, StageError>;
}
