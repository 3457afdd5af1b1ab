//! Leases on the aliases of an upload (its Idempotency-Key, a legacy songhash) while its body
//! streams: a second request with the same key waits for the first instead of uploading the
//! body again, then gets the first one's job. The lease is renewed while the request lives and
//! given back when it ends, however it ends; a holder that died (a crashed ingest) stops
//! renewing, and its lease lapses within [`LEASE_TTL`], so the client's retry proceeds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pipeline::ErrorCode;
use pipeline::traits::{BackendError, JobStore};

use crate::error::ApiError;

/// How long a lease outlives its last renewal: how long a crashed holder blocks its key.
const LEASE_TTL: Duration = Duration::from_secs(10);
/// Renewed this often, well inside the TTL (a slow Redis round trip must not lose it).
const RENEW_EVERY: Duration = Duration::from_secs(3);
/// How long a request waits for another that holds its key before answering 409.
const WAIT_FOR_HOLDER: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

/// Held leases of one request; dropping it gives them back. Empty for a request without
/// aliases.
#[derive(Default)]
pub(crate) struct KeyLease {
    /// Kept for its `Drop`, which gives the leases back.
    _held: Option<Held>,
}

struct Held {
    jobs: Arc<dyn JobStore>,
    names: Vec<String>,
    holder: String,
    renewer: tokio::task::JoinHandle<()>,
}

/// What [`KeyLease::take`] came to.
pub(crate) enum Taken {
    Held(KeyLease),
    /// Another request holds one of the names.
    Busy,
}

impl KeyLease {
    /// Takes every one of `names` for a fresh holder, or none (`Busy`, the ones taken given
    /// back).
    pub(crate) async fn take(
        jobs: &Arc<dyn JobStore>,
        names: &[String],
    ) -> Result<Taken, BackendError> {
        if names.is_empty() {
            return Ok(Taken::Held(Self::default()));
        }
        let holder = uuid::Uuid::new_v4().to_string();
        for (taken, name) in names.iter().enumerate() {
            let held = match jobs.lease(name, &holder, LEASE_TTL).await {
                Ok(held) => held,
                Err(err) => {
                    release(jobs, &names[..taken], &holder).await;
                    return Err(err);
                }
            };
            if !held {
                release(jobs, &names[..taken], &holder).await;
                return Ok(Taken::Busy);
            }
        }
        let renewer = tokio::spawn(renew(jobs.clone(), names.to_vec(), holder.clone()));
        Ok(Taken::Held(Self {
            _held: Some(Held {
                jobs: jobs.clone(),
                names: names.to_vec(),
                holder,
                renewer,
            }),
        }))
    }
}

/// Polls until `names` can be leased or `replay` finds the job another request made with
/// them, for at most [`WAIT_FOR_HOLDER`]; then 409 `conflict` with `Retry-After`. The body
/// of the waiting request is not read meanwhile.
pub(crate) async fn take_or_wait<T, F, Fut>(
    jobs: &Arc<dyn JobStore>,
    names: &[String],
    replay: F,
) -> Result<Result<KeyLease, T>, ApiError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, ApiError>>,
{
    let deadline = Instant::now() + WAIT_FOR_HOLDER;
    loop {
        if let Some(earlier) = replay().await? {
            return Ok(Err(earlier));
        }
        if let Taken::Held(lease) = KeyLease::take(jobs, names).await? {
            // The holder may have finished between the look and the lease.
            return match replay().await? {
                Some(earlier) => Ok(Err(earlier)),
                None => Ok(Ok(lease)),
            };
        }
        if Instant::now() >= deadline {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "a request with this Idempotency-Key (or songhash) is still uploading; retry later",
            )
            .with_retry_after(5));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn renew(jobs: Arc<dyn JobStore>, names: Vec<String>, holder: String) {
    let mut ticks = tokio::time::interval(RENEW_EVERY);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        for name in &names {
            match jobs.lease(name, &holder, LEASE_TTL).await {
                Ok(true) => {}
                // Lapsed (a renewal failed for longer than the TTL) and taken by another
                // request: the atomic create still decides which job the key names.
                Ok(false) => tracing::warn!(lease = %name, "lease lost to another request"),
                Err(err) => tracing::debug!(lease = %name, %err, "lease not renewed"),
            }
        }
    }
}

async fn release(jobs: &Arc<dyn JobStore>, names: &[String], holder: &str) {
    for name in names {
        if let Err(err) = jobs.release(name, holder).await {
            tracing::debug!(lease = %name, %err, "lease not given back; it lapses by itself");
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewer.abort();
        let (jobs, names, holder) = (
            self.jobs.clone(),
            std::mem::take(&mut self.names),
            std::mem::take(&mut self.holder),
        );
        // Dropped inside the request's task (which may itself be dropped: a client that went
        // away); outside a runtime the lease simply lapses.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { release(&jobs, &names, &holder).await });
        }
    }
}
