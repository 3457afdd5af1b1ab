//! Webhook delivery (policy in `pipeline::callback`): the job JSON POSTed to the job's
//! `callback_url` when it ends, retried with exponential backoff; always spawned, so a slow or
//! dead receiver never holds up the pipeline. Targets are held to the
//! [`TargetPolicy`] again at delivery: a literal address before sending, and every address a
//! name resolves to when connecting (so a name re-pointed inward after submit is refused).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pipeline::callback::{
    ATTEMPT_HEADER, EVENT_HEADER, JOB_ID_HEADER, SIGNATURE_HEADER, TargetPolicy, signature,
    terminal_event_name,
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
    policy: TargetPolicy,
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
    pub fn new(config: &CallbacksConfig, policy: TargetPolicy) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms.max(1)))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect on our behalf to addresses the resolver never sees.
            .no_proxy()
            .dns_resolver(PolicyResolver {
                policy: policy.clone(),
            })
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
                policy,
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
        let body = match pipeline::callback::body(job) {
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
        // The job was checked at submit; the policy may have changed since, and an address
        // literal never reaches the resolver.
        if let Err(reason) = self.inner.policy.check_url(&delivery.url) {
            tracing::warn!(job = %delivery.job_id, %reason, "callback refused by the target policy");
            return;
        }
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

/// Resolves a webhook's host and keeps only the addresses the [`TargetPolicy`] allows; the
/// connection is made to one of those, never to an address resolved again later.
struct PolicyResolver {
    policy: TargetPolicy,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let allowed = resolve_allowed(&policy, &host).await?;
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The addresses `host` resolves to that `policy` allows; an error when there are none.
async fn resolve_allowed(
    policy: &TargetPolicy,
    host: &str,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
    let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
        .into_iter()
        .partition(|addr| policy.allows_address(host, addr.ip()));
    if allowed.is_empty() {
        let refused: Vec<String> = refused.iter().map(|a| a.ip().to_string()).collect();
        return Err(format!(
            "{host} resolves only to addresses webhooks may not reach ({})",
            refused.join(", ")
        )
        .into());
    }
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let hook = CallbackHook::new(
            &CallbacksConfig {
                backoff_base_ms: 100,
                ..CallbacksConfig::default()
            },
            TargetPolicy::default(),
        );
        assert_eq!(hook.backoff(1), Duration::from_millis(100));
        assert_eq!(hook.backoff(3), Duration::from_millis(400));
        assert_eq!(hook.backoff(40), MAX_BACKOFF);
    }

    #[tokio::test]
    async fn names_are_held_to_the_policy_on_every_resolved_address() {
        let strict = TargetPolicy::default();
        let err = resolve_allowed(&strict, "localhost").await.unwrap_err();
        assert!(
            err.to_string().contains("127.0.0.1") || err.to_string().contains("::1"),
            "{err}"
        );
        let laptop = TargetPolicy {
            allow_loopback: true,
            ..TargetPolicy::default()
        };
        let allowed = resolve_allowed(&laptop, "localhost").await.unwrap();
        assert!(allowed.iter().all(|a| a.ip().is_loopback()), "{allowed:?}");
        let listed = TargetPolicy {
            allow_hosts: vec!["localhost".into()],
            ..TargetPolicy::default()
        };
        assert!(
            !resolve_allowed(&listed, "localhost")
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// A receiver on loopback that counts requests.
    async fn counting_receiver() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                use tokio::io::AsyncWriteExt;
                let _ = stream
                    .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                    .await;
            }
        });
        (format!("localhost:{port}"), hits)
    }

    #[tokio::test]
    async fn a_delivery_never_connects_where_the_policy_forbids() {
        let (authority, hits) = counting_receiver().await;
        let config = CallbacksConfig {
            max_attempts: 1,
            timeout_ms: 2_000,
            ..CallbacksConfig::default()
        };
        let delivery = |url: String| Delivery {
            url,
            event: "done",
            job_id: "j".into(),
            signature: None,
            traceparent: None,
            body: bytes::Bytes::from_static(b"{}"),
        };
        // By name (as if re-pointed inward after submit) and by literal: refused, no connection.
        let strict = CallbackHook::new(&config, TargetPolicy::default());
        strict
            .deliver(delivery(format!("http://{authority}/h")))
            .await;
        let port = authority.rsplit(':').next().unwrap();
        strict
            .deliver(delivery(format!("http://127.0.0.1:{port}/h")))
            .await;
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
        // Allowed: delivered.
        let listed = CallbackHook::new(
            &config,
            TargetPolicy {
                allow_hosts: vec!["localhost".into()],
                ..TargetPolicy::default()
            },
        );
        listed
            .deliver(delivery(format!("http://{authority}/h")))
            .await;
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
