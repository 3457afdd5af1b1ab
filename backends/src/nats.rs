//! NATS core as the event bus (distributed mode): every transition is published on
//! `msaas.jobs.{job_id}.{kind}` with the [`JobEvent`] as JSON, so any NATS client can follow a
//! job (`msaas.jobs.{id}.*`) or all of them (`msaas.jobs.>`). Best effort like the trait asks:
//! no persistence, a subscriber sees what is published while it is subscribed. Reconnects
//! after a server restart are async-nats' job; publishes made while disconnected are buffered
//! by the client.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use pipeline::job::JobId;
use pipeline::traits::{BackendError, EventBus, EventStream, JobEvent};

/// Every subject starts with this.
pub const SUBJECT_ROOT: &str = "msaas.jobs";

/// How long the first connection may take before `connect` gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `subscribe` waits for the server to confirm the subscription.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(5);

/// The NATS [`EventBus`]. Cheap to clone (shared connection).
#[derive(Debug, Clone)]
pub struct NatsEvents {
    client: async_nats::Client,
}

impl NatsEvents {
    /// Connects to `url` (`nats://host:port`, several comma-separated for a cluster). Fails
    /// with `Events` when no server answers: a configured bus that is down is an error, not
    /// something to discover at the first publish.
    pub async fn connect(url: &str) -> Result<Self, BackendError> {
        let client = async_nats::ConnectOptions::new()
            .name("msaas")
            .connection_timeout(CONNECT_TIMEOUT)
            .connect(url)
            .await
            .map_err(|err| {
                BackendError::Events(format!("cannot connect to NATS at {url}: {err}"))
            })?;
        Ok(Self { client })
    }

    /// Wraps an existing connection.
    pub fn from_client(client: async_nats::Client) -> Self {
        Self { client }
    }

    /// Returns once the server has processed everything this connection sent before (its
    /// subscriptions included): a message to a private inbox makes the round trip, and the
    /// server handles one connection's operations in order. (`flush` only empties the
    /// client's write buffer.)
    pub async fn round_trip(&self) -> Result<(), BackendError> {
        let inbox = self.client.new_inbox();
        let mut probe = self.client.subscribe(inbox.clone()).await.map_err(|err| {
            BackendError::Events(format!("NATS subscribe to {inbox} failed: {err}"))
        })?;
        self.client
            .publish(inbox, bytes::Bytes::new())
            .await
            .map_err(|err| BackendError::Events(format!("NATS publish failed: {err}")))?;
        match tokio::time::timeout(ROUND_TRIP_TIMEOUT, probe.next()).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(BackendError::Events(
                "NATS connection closed during a round trip".to_owned(),
            )),
            Err(_) => Err(BackendError::Events(format!(
                "NATS server did not answer within {ROUND_TRIP_TIMEOUT:?}"
            ))),
        }
    }

    /// Waits until everything published so far has been written to the server.
    pub async fn flush(&self) -> Result<(), BackendError> {
        self.client
            .flush()
            .await
            .map_err(|err| BackendError::Events(format!("NATS flush failed: {err}")))
    }
}

/// The subject of one event: `msaas.jobs.{job_id}.{kind}`.
pub fn event_subject(event: &JobEvent) -> Result<String, BackendError> {
    let job = subject_token(&event.job_id)?;
    Ok(format!("{SUBJECT_ROOT}.{job}.{}", event.kind.as_str()))
}

/// The subject that matches every event of `job` (`Some`) or of all jobs (`None`).
pub fn subscription_subject(job: Option<&JobId>) -> Result<String, BackendError> {
    match job {
        Some(job) => Ok(format!("{SUBJECT_ROOT}.{}.*", subject_token(job)?)),
        None => Ok(format!("{SUBJECT_ROOT}.>")),
    }
}

/// A job id as one subject token. Ids are UUIDs, but one deserialized from elsewhere is not
/// checked: a `.`, a wildcard or whitespace would publish on (or listen to) other jobs'
/// subjects.
fn subject_token(job: &JobId) -> Result<&str, BackendError> {
    let token = job.as_str();
    let unsafe_token = token.is_empty()
        || token
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control());
    if unsafe_token {
        Err(BackendError::Events(format!(
            "job id {token:?} cannot be a NATS subject token"
        )))
    } else {
        Ok(token)
    }
}

#[async_trait]
impl EventBus for NatsEvents {
    async fn publish(&self, event: &JobEvent) -> Result<(), BackendError> {
        let subject = event_subject(event)?;
        let body = serde_json::to_vec(event)
            .map_err(|err| BackendError::Events(format!("cannot encode event: {err}")))?;
        self.client
            .publish(subject.clone(), body.into())
            .await
            .map_err(|err| BackendError::Events(format!("NATS publish on {subject} failed: {err}")))
    }

    /// Returns once the server has the subscription, so a caller that subscribes and then
    /// reads the job record misses no event published after that read.
    async fn subscribe(&self, job: Option<&JobId>) -> Result<EventStream, BackendError> {
        let subject = subscription_subject(job)?;
        let subscriber = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|err| {
                BackendError::Events(format!("NATS subscribe to {subject} failed: {err}"))
            })?;
        self.round_trip().await?;
        let events = subscriber.filter_map(|message| async move {
            match serde_json::from_slice::<JobEvent>(&message.payload) {
                Ok(event) => Some(event),
                Err(err) => {
                    // Someone else publishing on our subjects: not ours to fail on.
                    tracing::debug!(subject = %message.subject, %err, "skipping undecodable job event");
                    None
                }
            }
        });
        Ok(events.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::traits::EventKind;

    fn event(job: JobId, kind: EventKind) -> JobEvent {
        JobEvent {
            kind,
            job_id: job,
            stage: None,
            progress: None,
            job: None,
            at_ms: 1,
        }
    }

    #[test]
    fn subjects_name_the_job_and_the_event() {
        let job: JobId = "6f1c2a3e-8a57-4b7e-9d0c-1a2b3c4d5e6f".parse().unwrap();
        assert_eq!(
            event_subject(&event(job.clone(), EventKind::StageStarted)).unwrap(),
            "msaas.jobs.6f1c2a3e-8a57-4b7e-9d0c-1a2b3c4d5e6f.stage_started"
        );
        assert_eq!(
            subscription_subject(Some(&job)).unwrap(),
            "msaas.jobs.6f1c2a3e-8a57-4b7e-9d0c-1a2b3c4d5e6f.*"
        );
        assert_eq!(subscription_subject(None).unwrap(), "msaas.jobs.>");
    }

    #[test]
    fn ids_that_would_escape_their_subject_are_refused() {
        for bad in ["a.b", "*", ">", "a b", ""] {
            let job: JobId = serde_json::from_value(serde_json::json!(bad)).unwrap();
            let err = event_subject(&event(job.clone(), EventKind::Done)).unwrap_err();
            assert_eq!(
                err.code(),
                pipeline::ErrorCode::EventsUnavailable,
                "{bad:?}"
            );
            assert!(subscription_subject(Some(&job)).is_err(), "{bad:?}");
        }
    }
}
