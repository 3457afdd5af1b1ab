//! The embedded backends: everything in one process, no servers. The distributed backends
//! implement the same traits elsewhere.

mod local_dir;
mod local_events;
mod memory_jobs;
mod memory_queue;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use local_dir::{LocalDirStore, validate_key};
pub use local_events::LocalEvents;
pub use memory_jobs::MemoryJobStore;
pub use memory_queue::{DeadLetter, MemoryQueue};

use crate::traits::{BackendError, BlobStore, EventBus, JobStore, StageQueue};

/// The four seams a worker, ingest and `msaas run` share.
#[derive(Clone)]
pub struct Backends {
    pub queue: Arc<dyn StageQueue>,
    pub jobs: Arc<dyn JobStore>,
    pub store: Arc<dyn BlobStore>,
    pub events: Arc<dyn EventBus>,
}

impl Backends {
    /// In-memory queue and job records, a local directory store, in-process events.
    pub fn embedded(
        store_dir: impl Into<PathBuf>,
        visibility_timeout: Duration,
    ) -> Result<Self, BackendError> {
        Ok(Self {
            queue: Arc::new(MemoryQueue::new(visibility_timeout)),
            jobs: Arc::new(MemoryJobStore::new()),
            store: Arc::new(LocalDirStore::new(store_dir)?),
            events: Arc::new(LocalEvents::default()),
        })
    }
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}
