//! The MSaaS spine (DESIGN.md "The flow"): the job record, the stages, the seams (queue, blob
//! store, job store, event bus) and the bundle of them a worker is given, the worker loop, the
//! janitor, the webhook policy and the configuration. No backend code: the seams'
//! implementations are the `backends` crate.

pub mod backends;
pub mod callback;
pub mod config;
pub mod janitor;
pub mod job;
pub mod stage;
pub mod telemetry;
pub mod traits;
pub mod worker;

pub use audio::{CodedError, ErrorCode, Pcm, SourceInfo};
pub use backends::Backends;
pub use config::{Config, ConfigError};
pub use job::{Job, JobId, JobOptions, JobState, OutputFormat, Stage};
pub use stage::{ProgressSink, StageContext, StageError, StageHandler, StageOutput};
pub use traits::{BackendError, BlobStore, EventBus, JobStore, StageQueue, TransitionHook};
pub use worker::{
    Outcome, Worker, WorkerSettings, cancel, submit, submit_file, wait_until_finished,
};
