//! The parts of a role that other crates provide: the HTTP API (ingest), the janitor, the
//! queue-depth poller, the worker metrics listener and the transition hooks. One place, so the
//! roles read as a list of what runs.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context as _;
use backends::RedisJobStore;
use pipeline::Backends;
use pipeline::config::Config;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Adds the hooks every role runs (webhooks, metrics).
pub fn install_hooks(backends: Backends, config: &Config) -> Backends {
    backends
        .with_hook(Arc::new(backends::CallbackHook::new(
            &config.callbacks,
            pipeline::callback::TargetPolicy::for_config(config),
        )))
        .with_hook(Arc::new(pipeline::telemetry::MetricsHook::new()))
}

/// Retention (deletes expired jobs and their objects) and the sweep of stale jobs.
pub fn spawn_janitor(
    tasks: &mut JoinSet<()>,
    backends: &Backends,
    config: &Config,
    shutdown: &CancellationToken,
) {
    let janitor = pipeline::janitor::Janitor::new(
        backends.clone(),
        config.jobs.clone(),
        config.worker.visibility_timeout(),
    );
    let shutdown = shutdown.clone();
    tasks.spawn(async move { janitor.run(shutdown).await });
}

/// Reads the queue depths into the `msaas_queue_*` gauges every `observe.queue_poll_ms`.
pub fn spawn_queue_poller(backends: &Backends, config: &Config, shutdown: &CancellationToken) {
    // Detached: it ends on `shutdown` by itself and holds nothing that must be flushed.
    drop(pipeline::telemetry::spawn_queue_poller(
        backends.clone(),
        Duration::from_millis(config.observe.queue_poll_ms.max(100)),
        shutdown.clone(),
    ));
}

/// Binds the HTTP API and prints `listening http://ADDR` on stdout (scripts and tests read
/// the port there when it was 0); returns the future that serves it until `shutdown`.
pub async fn start_api(
    backends: &Backends,
    config: &Config,
    addr: SocketAddr,
    shutdown: &CancellationToken,
) -> anyhow::Result<Pin<Box<dyn Future<Output = ()> + Send>>> {
    let keys: Option<Arc<dyn ingest::KeyDirectory>> = if config.auth.redis_keys {
        let url = config
            .queue
            .url
            .as_deref()
            .context("auth.redis_keys needs queue.kind = \"redis\" and queue.url")?;
        let store = RedisJobStore::connect(
            url,
            backends::REDIS_NAMESPACE,
            Duration::from_secs(config.jobs.retention_secs),
        )
        .await
        .with_context(|| format!("cannot read API keys from Redis at {url}"))?;
        Some(Arc::new(RedisKeys(store)))
    } else {
        None
    };
    let state = ingest::IngestState::new(backends.clone(), config, installed_models(config), keys)?;
    // A stand-in that held the address while dependencies were down lets go of it as its
    // task ends: wait for that briefly rather than fail.
    let mut tries = 0;
    let (bound, serving) = loop {
        match ingest::bind(state.clone(), addr, shutdown.clone()).await {
            Err(ingest::IngestError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && tries < 50 =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bound => break bound?,
        }
    };
    println!("listening http://{bound}");
    println!("web UI: open http://{bound}/ in a browser");
    Ok(Box::pin(serving))
}

/// The models callers may ask for: those installed, as their manifests describe them.
fn installed_models(config: &Config) -> Vec<ingest::ModelInfo> {
    let dir = config.models_dir();
    separate::installed_models(&dir)
        .into_iter()
        .filter_map(|name| {
            match separate::Manifest::load(&dir.join(&name).join("manifest.toml")) {
                Ok(manifest) => Some(ingest::ModelInfo {
                    family: format!("{:?}", manifest.family).to_ascii_lowercase(),
                    sources: manifest.sources.clone(),
                    description: manifest.description.clone().unwrap_or_default(),
                    name,
                }),
                Err(err) => {
                    tracing::warn!(model = %name, %err, "model not offered: its manifest does not load");
                    None
                }
            }
        })
        .collect()
}

/// API keys kept in Redis (`auth.redis_keys`).
struct RedisKeys(RedisJobStore);

type KeyLookup<'a> =
    Pin<Box<dyn Future<Output = Result<Option<String>, pipeline::BackendError>> + Send + 'a>>;

// Written out as `#[async_trait]` would expand it: this crate does not depend on async-trait.
impl ingest::KeyDirectory for RedisKeys {
    fn tenant_of<'this, 'key, 'lookup>(&'this self, key_sha256_hex: &'key str) -> KeyLookup<'lookup>
    where
        'this: 'lookup,
        'key: 'lookup,
        Self: 'lookup,
    {
        Box::pin(self.0.api_key_tenant(key_sha256_hex))
    }
}

/// A worker's `/metrics`, `/healthz` and `/readyz` on `addr`; returns the bound address.
pub async fn serve_metrics(
    addr: SocketAddr,
    ready: observe::ReadyCheck,
    shutdown: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    observe::serve_metrics(addr, ready, shutdown.clone())
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))
}
