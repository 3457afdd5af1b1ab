//! [`connect`]: the backends a configuration names, servers included. Every role of
//! the binary (`serve`, `ingest`, `worker`) starts here.

use std::sync::Arc;

use pipeline::Backends;

use crate::{
    LocalDirStore, LocalEvents, MemoryJobStore, MemoryQueue, NatsEvents, RedisJobStore, RedisQueue,
    S3Store,
};
use pipeline::config::{Config, QueueKind, StorageKind};
use pipeline::traits::{BackendError, BlobStore, EventBus, JobStore, StageQueue};
use pipeline::{CodedError, ErrorCode};

/// Looked up (not expected to exist) to prove the object store answers.
const PROBE_KEY: &str = "health/connect-probe";

/// Key prefix of everything this service keeps in Redis (DESIGN.md "The flow").
pub const REDIS_NAMESPACE: &str = "msaas";

/// Connects what `config` asks for: the in-memory queue and job records or Redis
/// (`queue.kind`), a local directory or S3 (`storage.kind`), NATS when `events.nats_url`
/// is set, else in-process events. A server that cannot be reached is an error naming it,
/// so a misconfigured pod fails at start rather than on its first job.
pub async fn connect(config: &Config) -> Result<Backends, CodedError> {
    let (queue, jobs) = connect_queue(config).await?;
    let store = connect_store(config).await?;
    let events = connect_events(config).await?;
    Ok(Backends {
        queue,
        jobs,
        store,
        events,
        hooks: Vec::new(),
    })
}

type QueueAndJobs = (Arc<dyn StageQueue>, Arc<dyn JobStore>);

async fn connect_queue(config: &Config) -> Result<QueueAndJobs, CodedError> {
    match config.queue.kind {
        // The records live beside the queue: an in-memory queue with records in Redis would
        // lose its messages while the records wait for them forever.
        QueueKind::Memory => Ok((
            Arc::new(MemoryQueue::new(config.worker.visibility_timeout())),
            Arc::new(MemoryJobStore::new()),
        )),
        QueueKind::Redis => {
            let url = config.queue.url.as_deref().ok_or_else(|| {
                CodedError::new(
                    ErrorCode::InvalidOption,
                    "queue.kind = \"redis\" needs queue.url (redis://host:port)",
                )
            })?;
            let failed = |err: BackendError| {
                CodedError::new(
                    ErrorCode::QueueUnavailable,
                    format!("cannot use Redis at {}: {err}", redact(url)),
                )
            };
            let queue =
                RedisQueue::connect(url, REDIS_NAMESPACE, config.worker.visibility_timeout())
                    .await
                    .map_err(failed)?;
            let jobs = RedisJobStore::connect(
                url,
                REDIS_NAMESPACE,
                std::time::Duration::from_secs(config.jobs.retention_secs),
            )
            .await
            .map_err(failed)?
            .beside(&queue);
            Ok((Arc::new(queue), Arc::new(jobs)))
        }
    }
}

async fn connect_store(config: &Config) -> Result<Arc<dyn BlobStore>, CodedError> {
    match config.storage.kind {
        StorageKind::Local => {
            let dir = config.storage_dir();
            let store = LocalDirStore::new(&dir).map_err(|err| {
                CodedError::new(
                    err.code(),
                    format!("cannot use {} as the local store: {err}", dir.display()),
                )
            })?;
            Ok(Arc::new(store))
        }
        StorageKind::S3 => {
            let s3 = &config.storage.s3;
            let server = format!(
                "S3 bucket {:?} at {}",
                s3.bucket,
                s3.endpoint.as_deref().unwrap_or("AWS")
            );
            let failed = |err: BackendError| {
                CodedError::new(
                    ErrorCode::StorageUnavailable,
                    format!("cannot use {server}: {err}"),
                )
            };
            let store = S3Store::connect(s3).await.map_err(failed)?;
            store.size(PROBE_KEY).await.map_err(failed)?;
            Ok(Arc::new(store))
        }
    }
}

async fn connect_events(config: &Config) -> Result<Arc<dyn EventBus>, CodedError> {
    match &config.events.nats_url {
        None => Ok(Arc::new(LocalEvents::default())),
        Some(url) => {
            let events = NatsEvents::connect(url).await.map_err(|err| {
                CodedError::new(
                    ErrorCode::EventsUnavailable,
                    format!("cannot use NATS at {}: {err}", redact(url)),
                )
            })?;
            Ok(Arc::new(events))
        }
    }
}

/// A server URL without the password it may carry (`redis://user:secret@host`).
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) if at > scheme.len() => {
            let host = &url[at + 1..];
            let user = rest.split(['@', ':']).next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("redis://default:hunter2@redis:6379/0"),
            "redis://default:***@redis:6379/0"
        );
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_named() {
        let mut config = Config::default();
        config.queue.kind = QueueKind::Redis;
        // Port 1 on loopback: nothing listens there, the connection is refused at once.
        config.queue.url = Some("redis://127.0.0.1:1".to_owned());
        let err = connect(&config).await.map(|_| ()).unwrap_err();
        assert_eq!(err.code, ErrorCode::QueueUnavailable);
        assert!(
            err.message.contains("Redis at redis://127.0.0.1:1"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn redis_without_a_url_is_a_configuration_error() {
        let mut config = Config::default();
        config.queue.kind = QueueKind::Redis;
        let err = connect(&config).await.map(|_| ()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidOption);
    }

    #[tokio::test]
    async fn embedded_settings_connect_without_servers() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.storage.dir = dir.path().join("store");
        let backends = connect(&config).await.unwrap();
        assert_eq!(backends.store.size("results/x/y.wav").await.unwrap(), None);
        assert!(dir.path().join("store").is_dir());
    }
}
