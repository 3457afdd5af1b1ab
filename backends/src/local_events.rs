//! In-process job events (embedded mode): a tokio broadcast channel. Best effort like NATS
//! core: a subscriber that falls too far behind skips what it missed.

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::broadcast;

use pipeline::job::JobId;
use pipeline::traits::{BackendError, EventBus, EventStream, JobEvent};

/// Events buffered per subscriber before a slow one starts missing them.
const DEFAULT_CAPACITY: usize = 4096;

/// The in-process [`EventBus`]. Cheap to clone (shared channel).
#[derive(Debug, Clone)]
pub struct LocalEvents {
    sender: broadcast::Sender<JobEvent>,
}

impl Default for LocalEvents {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalEvents {
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// `capacity` (at least 1) is how many events a subscriber may lag behind.
    pub fn with_capacity(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self { sender }
    }
}

#[async_trait]
impl EventBus for LocalEvents {
    async fn publish(&self, event: &JobEvent) -> Result<(), BackendError> {
        // No subscriber is not an error: nobody is listening right now.
        let _ = self.sender.send(event.clone());
        Ok(())
    }

    async fn subscribe(&self, job: Option<&JobId>) -> Result<EventStream, BackendError> {
        let receiver = self.sender.subscribe();
        let job = job.cloned();
        let stream = futures::stream::unfold(receiver, move |mut receiver| {
            let job = job.clone();
            async move {
                loop {
                    match receiver.recv().await {
                        Ok(event) if job.as_ref().is_none_or(|id| *id == event.job_id) => {
                            return Some((event, receiver));
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::debug!(missed, "event subscriber lagged; events skipped");
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(stream.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::job::now_ms;
    use pipeline::traits::EventKind;
    use std::time::Duration;

    fn event(job: &JobId, kind: EventKind) -> JobEvent {
        JobEvent {
            kind,
            job_id: job.clone(),
            stage: None,
            progress: None,
            job: None,
            at_ms: now_ms(),
        }
    }

    #[tokio::test]
    async fn subscribers_see_events_filtered_by_job() {
        let bus = LocalEvents::default();
        let (a, b) = (JobId::new_random(), JobId::new_random());
        // Publishing with no subscriber is fine.
        bus.publish(&event(&a, EventKind::Queued)).await.unwrap();

        let mut only_a = bus.subscribe(Some(&a)).await.unwrap();
        let mut all = bus.subscribe(None).await.unwrap();
        bus.publish(&event(&b, EventKind::Queued)).await.unwrap();
        bus.publish(&event(&a, EventKind::Done)).await.unwrap();

        let first = only_a.next().await.unwrap();
        assert_eq!((first.job_id, first.kind), (a.clone(), EventKind::Done));
        let kinds: Vec<(JobId, EventKind)> = all
            .by_ref()
            .take(2)
            .map(|e| (e.job_id, e.kind))
            .collect()
            .await;
        assert_eq!(kinds, vec![(b, EventKind::Queued), (a, EventKind::Done)]);
        // Nothing else arrives.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), only_a.next())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_lagging_subscriber_skips_but_keeps_going() {
        let bus = LocalEvents::with_capacity(2);
        let job = JobId::new_random();
        let mut events = bus.subscribe(Some(&job)).await.unwrap();
        for kind in [
            EventKind::Queued,
            EventKind::StageStarted,
            EventKind::Progress,
            EventKind::Done,
        ] {
            bus.publish(&event(&job, kind)).await.unwrap();
        }
        let seen: Vec<EventKind> = events.by_ref().take(2).map(|e| e.kind).collect().await;
        assert_eq!(seen, vec![EventKind::Progress, EventKind::Done]);
    }
}
