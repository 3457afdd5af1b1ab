//! The MSaaS spine (DESIGN.md "The flow"): the job record, the stages, the seams
//! (queue, blob store, job store, event bus) with their embedded backends, and the worker loop.

pub mod audio;
pub mod backends;
pub mod callback;
pub mod config;
pub mod error;
pub mod janitor;
pub mod job;
pub mod resample;
pub mod stage;
pub mod telemetry;
pub mod traits;
pub mod worker;

pub use audio::{Pcm, SourceInfo};
pub use backends::{Backends, DeadLetter, LocalDirStore, LocalEvents, MemoryJobStore, MemoryQueue};
pub use config::{Config, ConfigError};
pub use error::{CodedError, ErrorCode};
pub use job::{Job, JobId, JobOptions, JobState, OutputFormat, Stage};
pub use stage::{ProgressSink, StageContext, StageError, StageHandler, StageOutput};
pub use traits::{BackendError, BlobStore, EventBus, JobStore, StageQueue, TransitionHook};
pub use worker::{
    Outcome, Worker, WorkerSettings, cancel, submit, submit_file, wait_until_finished,
};
