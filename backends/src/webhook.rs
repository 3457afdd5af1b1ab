//! Webhook delivery (policy in `pipeline::callback`): the job JSON POSTed to the job's
//! `callback_url` when it ends, retried with exponential backoff; always spawned, so a slow or
//! dead receiver never holds up the pipeline.

use std::sync::Arc;
use std::time::Duration;

use pipeline::callback::{
    ATTEMPT_HEADER, EVENT_HEADER, JOB_ID_HEADER, SIGNATURE_HEADER, signature, terminal_event_name,
};
use pipeline::config::CallbacksConfig;
use pipeline::traits::{JobEvent, TransitionHook};

/// Longest wait between two deliveries, whatever the attempt count.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The [`TransitionHook`] that delivers webhooks. Install it in every role that moves jobs
/// (ingest for cancellations, the workers for done / failed).
#[derive(Clone)]
pub struct CallbackHook {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` if the HTTP client could not be built (no TLS roots, …): callbacks are then
    /// logged and dropped rather than failing the process.
    client: Option<reqwest::Client>,
    secret: Option<Vec<u8>>,
    max_attempts: u32,
    backoff_base: Duration,
}

impl std::fmt::Debug for CallbackHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackHook")
            .field("signed", &self.inner.secret.is_some())
            .field("max_attempts", &self.inner.max_attempts)
            .finish_non_exhaustive()
    }
}

impl CallbackHook {
    pub fn new(config: &CallbacksConfig) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms.max(1)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("msaas-callback/", env!("CARGO_PKG_VERSION")))
            .build();
        let client = match client {
            Ok(client) => Some(client),
            Err(err) => {
                tracing::error!(%err, "webhook client unavailable; callbacks will be dropped");
                None
            }
        };
        Self {
            inner: Arc::new(Inner {
                client,
                secret: config
                    .secret
                    .as_ref()
                    .filter(|secret| !secret.is_empty())
                    .map(|secret| secret.as_bytes().to_vec()),
                max_attempts: config.max_attempts.max(1),
                backoff_base: Duration::from_millis(config.backoff_base_ms),
            }),
        }
    }

    /// Delay after failed delivery `attempt` (1-based): base · 2^(attempt-1), capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.inner
            .backoff_base
            .saturating_mul(1u32 << doublings)
            .min(MAX_BACKOFF)
    }
}

impl TransitionHook for CallbackHook {
    fn on_event(&self, event: &JobEvent) {
        let Some(name) = terminal_event_name(event.kind) else {
            return;
        };
        let Some(job) = event.job.as_ref() else {
            return;
        };
        let Some(url) = job.options.callback_url.clone() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(job = %job.id, "no async runtime: callback not delivered");
            return;
        };
        let body = match serde_json::to_vec(job) {
            Ok(body) => body,
            Err(err) => {
                tracing::warn!(job = %job.id, %err, "job not serializable: callback not delivered");
                return;
            }
        };
        let delivery = Delivery {
            url,
            event: name,
            job_id: job.id.to_string(),
            signature: self
                .inner
                .secret
                .as_deref()
                .map(|secret| signature(secret, &body)),
            traceparent: observe::trace::current_traceparent(),
            body: body.into(),
        };
        let hook = self.clone();
        runtime.spawn(async move { hook.deliver(delivery).await });
    }
}

struct Delivery {
    url: String,
    event: &'static str,
    job_id: String,
    signature: Option<String>,
    traceparent: Option<String>,
    body: bytes::Bytes,
}

impl CallbackHook {
    async fn deliver(&self, delivery: Delivery) {
        let Some(client) = &self.inner.client else {
            tracing::warn!(job = %delivery.job_id, "webhook client unavailable: callback dropped");
            return;
        };
        let max_attempts = self.inner.max_attempts;
        for attempt in 1..=max_attempts {
            let mut request = client
                .post(&delivery.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(EVENT_HEADER, delivery.event)
                .header(JOB_ID_HEADER, &delivery.job_id)
                .header(ATTEMPT_HEADER, attempt.to_string())
                .body(delivery.body.clone());
            if let Some(signature) = &delivery.signature {
                request = request.header(SIGNATURE_HEADER, signature);
            }
            if let Some(traceparent) = &delivery.traceparent {
                request = request.header("traceparent", traceparent);
            }
            let retryable = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    tracing::info!(job = %delivery.job_id, event = delivery.event, attempt, "callback delivered");
                    return;
                }
                Ok(response) => {
                    let status = response.status();
                    tracing::warn!(job = %delivery.job_id, attempt, %status, "callback refused");
                    // A 4xx other than timeout / rate limit will not change on retry.
                    status.is_server_error()
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                }
                Err(err) => {
                    tracing::warn!(job = %delivery.job_id, attempt, %err, "callback failed");
                    true
                }
            };
            if !retryable {
                break;
            }
            if attempt < max_attempts {
                tokio::time::sleep(self.backoff(attempt)).await;
            }
        }
        tracing::error!(job = %delivery.job_id, url = %delivery.url, event = delivery.event, "callback given up");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let hook = CallbackHook::new(&CallbacksConfig {
            backoff_base_ms: 100,
            ..CallbacksConfig::default()
        });
        assert_eq!(hook.backoff(1), Duration::from_millis(100));
        assert_eq!(hook.backoff(3), Duration::from_millis(400));
        assert_eq!(hook.backoff(40), MAX_BACKOFF);
    }
}
