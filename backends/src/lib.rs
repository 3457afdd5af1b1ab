//! The implementations of pipeline's seams: in one process with no servers (in-memory queue
//! and job records, a local directory store, in-process events), or distributed (Redis Streams
//! and records, S3, NATS), webhook delivery over HTTP, and [`connect`], which builds the
//! [`Backends`] bundle a configuration names.

mod connect;
mod local_dir;
mod local_events;
mod memory_jobs;
mod memory_queue;
mod nats;
mod redis;
mod s3;
mod webhook;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use self::redis::{RedisJobStore, RedisQueue};
pub use connect::{REDIS_NAMESPACE, connect};
pub use local_dir::{LocalDirStore, validate_key};
pub use local_events::LocalEvents;
pub use memory_jobs::MemoryJobStore;
pub use memory_queue::{DeadLetter, MemoryQueue};
pub use nats::NatsEvents;
pub use s3::{S3Options, S3Store};
pub use webhook::CallbackHook;

use pipeline::Backends;
use pipeline::config::{Config, QueueKind, StorageKind};
use pipeline::traits::BackendError;
use pipeline::{CodedError, ErrorCode};

/// In-memory queue and job records, a local directory store, in-process events.
pub fn embedded(
    store_dir: impl Into<PathBuf>,
    visibility_timeout: Duration,
) -> Result<Backends, BackendError> {
    Ok(Backends {
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
pub fn embedded_from_config(config: &Config) -> Result<Backends, CodedError> {
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
    embedded(&dir, config.worker.visibility_timeout()).map_err(|err| {
        CodedError::new(
            err.code(),
            format!("cannot use {} as the local store: {err}", dir.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_from_config_refuses_server_backends() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.storage.dir = dir.path().join("store");
        embedded_from_config(&config).unwrap();
        assert!(dir.path().join("store").is_dir());

        config.queue.kind = QueueKind::Redis;
        config.events.nats_url = Some("nats://127.0.0.1:4222".into());
        let err = embedded_from_config(&config).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidOption);
        assert!(
            err.message
                .contains("queue.kind = \"redis\", events.nats_url"),
            "{err}"
        );
    }
}
