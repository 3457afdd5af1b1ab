//! The bundle of seams a worker, ingest and `msaas run` are given. Their implementations
//! (in-memory, local directory, Redis, S3, NATS) and the function that connects them from a
//! [`Config`](crate::Config) live in the `backends` crate.

use std::sync::Arc;

use crate::traits::{BlobStore, EventBus, JobStore, StageQueue, TransitionHook};

/// The four seams a worker, ingest and `msaas run` share.
#[derive(Clone)]
pub struct Backends {
    pub queue: Arc<dyn StageQueue>,
    pub jobs: Arc<dyn JobStore>,
    pub store: Arc<dyn BlobStore>,
    pub events: Arc<dyn EventBus>,
    /// Called on every transition this process makes (metrics, webhooks).
    pub hooks: Vec<Arc<dyn TransitionHook>>,
}

impl Backends {
    /// Adds a hook called on every transition this process makes.
    pub fn with_hook(mut self, hook: Arc<dyn TransitionHook>) -> Self {
        self.hooks.push(hook);
        self
    }
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}
