//! What every request handler shares: the backends, the settings taken from the config, the
//! models callers may ask for, and the authenticator.

use std::sync::Arc;

use pipeline::callback::TargetPolicy;
use pipeline::config::TenantsConfig;
use pipeline::{Backends, Config, Job, JobId};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, KeyDirectory};
use crate::error::{ApiError, IngestError};
use crate::serve::ServerLimits;

/// A model callers may name in `model`, as `GET /v1/models` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub family: String,
    /// The stems it produces, in order.
    pub sources: Vec<String>,
    pub description: String,
}

/// The shared state of the HTTP API. Cheap to clone.
#[derive(Clone)]
pub struct IngestState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub backends: Backends,
    pub models: Vec<ModelInfo>,
    pub default_model: String,
    pub max_input_bytes: u64,
    pub dedup: bool,
    /// Where `callback_url` may point.
    pub callbacks: TargetPolicy,
    pub auth: Auth,
    /// What one listener lets its clients hold.
    pub server_limits: ServerLimits,
    /// Per-tenant caps.
    pub tenants: TenantsConfig,
    /// Which other origins may call the API from a browser (`server.cors_origins`).
    pub cors: crate::cors::CorsPolicy,
    /// Cancelled when the server shuts down: ends event streams so the graceful shutdown
    /// does not wait for them.
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for IngestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestState")
            .field("models", &self.inner.models.len())
            .field("max_input_bytes", &self.inner.max_input_bytes)
            .field("dedup", &self.inner.dedup)
            .finish_non_exhaustive()
    }
}

impl IngestState {
    /// `models` is what callers may ask for (an empty list accepts any model name: the
    /// separate stage then judges it). `keys` is the optional external key directory
    /// (`auth.redis_keys`); the keys file and `auth.anonymous` come from `config`.
    pub fn new(
        backends: Backends,
        config: &Config,
        models: Vec<ModelInfo>,
        keys: Option<Arc<dyn KeyDirectory>>,
    ) -> Result<Self, IngestError> {
        let auth = Auth::new(
            config.auth.keys_file.as_deref(),
            keys,
            config.auth.anonymous,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                backends,
                models,
                default_model: config.models.default_model.clone(),
                max_input_bytes: config.limits.max_input_bytes,
                dedup: config.jobs.dedup,
                callbacks: TargetPolicy::for_config(config),
                auth,
                server_limits: ServerLimits::from_config(&config.server),
                tenants: config.tenants.clone(),
                cors: crate::cors::CorsPolicy::new(&config.server.cors_origins),
                shutdown: CancellationToken::new(),
            }),
        })
    }

    /// Ends this state's event streams when `shutdown` is cancelled (a graceful shutdown
    /// waits for open responses, and an event stream would otherwise hold it up).
    pub(crate) fn stop_streams_on(&self, shutdown: CancellationToken) {
        let streams = self.inner.shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            streams.cancel();
        });
    }

    pub fn backends(&self) -> &Backends {
        &self.inner.backends
    }

    pub(crate) fn model(&self, name: &str) -> Option<&ModelInfo> {
        self.inner.models.iter().find(|model| model.name == name)
    }

    /// The record of `id` if it belongs to `tenant`; another tenant's job is as absent as
    /// a job that never existed.
    pub(crate) async fn job_of(&self, tenant: &str, id: &str) -> Result<Job, ApiError> {
        let id: JobId = id
            .parse()
            .map_err(|_| ApiError::not_found(format!("no job {id:?}")))?;
        match self.inner.backends.jobs.get(&id).await? {
            Some(job) if job.tenant == tenant => Ok(job),
            _ => Err(ApiError::not_found(format!("no job {id}"))),
        }
    }
}
