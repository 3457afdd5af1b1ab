//! The embedded backends: everything in one process, no servers. The distributed backends
//! implement the same traits elsewhere.

mod connect;
mod local_dir;
mod local_events;
mod memory_jobs;
mod memory_queue;
mod nats;
mod redis;
mod s3;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use self::redis::{RedisJobStore, RedisQueue};
pub use local_dir::{LocalDirStore, validate_key};
pub use local_events::LocalEvents;
pub use memory_jobs::MemoryJobStore;
pub use memory_queue::{DeadLetter, MemoryQueue};
pub use nats::NatsEvents;
pub use s3::{S3Options, S3Store};

use crate::config::{Config, QueueKind, StorageKind};
use crate::error::{CodedError, ErrorCode};
use crate::traits::{BackendError, BlobStore, EventBus, JobStore, StageQueue, TransitionHook};

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
            hooks: Vec::new(),
        })
    }

    /// The embedded backends as `config` places them (store under [`Config::storage_dir`],
    /// the configured visibility timeout). Refuses a configuration that asks for servers:
    /// silently running in-process instead would lose jobs the operator expects to persist.
    pub fn embedded_from_config(config: &Config) -> Result<Self, CodedError> {
        let mut not_embedded = Vec::new();
        if config.queue.kind != QueueKind::Memory {
            not_embedded.push("queue.kind = \"redis\"");
        }
        if config.storage.kind != StorageKind::Local {
            not_embedded.push("storage.kind = \"s3\"");
        }
        if config.events.nats_url.is_some() {
            not_embedded.push("events.nats_url");
        }
        if !not_embedded.is_empty() {
            return Err(CodedError::new(
                ErrorCode::InvalidOption,
                format!(
                    "embedded mode runs without servers, but the configuration sets {}",
                    not_embedded.join(", ")
                ),
            ));
        }
        let dir = config.storage_dir();
        Self::embedded(&dir, config.worker.visibility_timeout()).map_err(|err| {
            CodedError::new(
                err.code(),
                format!("cannot use {} as the local store: {err}", dir.display()),
            )
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_from_config_refuses_server_backends() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.storage.dir = dir.path().join("store");
        Backends::embedded_from_config(&config).unwrap();
        assert!(dir.path().join("store").is_dir());

        config.queue.kind = QueueKind::Redis;
        config.events.nats_url = Some("nats://127.0.0.1:4222".into());
        let err = Backends::embedded_from_config(&config).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidOption);
        assert!(
            err.message
                .contains("queue.kind = \"redis\", events.nats_url"),
            "{err}"
        );
    }
}
