//! In-process stage queues (embedded mode): FIFO per stage, at-least-once delivery with a
//! visibility timeout, delayed retries and a dead-letter list — the same semantics as the
//! Redis Streams backend, so the worker loop cannot tell them apart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use pipeline::CodedError;
use pipeline::job::{Stage, now_ms};
use pipeline::traits::{BackendError, Delivery, QueueDepth, StageMessage, StageQueue};

/// A message that exhausted its attempts (or was refused), kept for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub stage: Stage,
    pub message: StageMessage,
    /// The delivery attempt that gave up.
    pub attempt: u32,
    pub reason: CodedError,
    pub at_ms: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    id: u64,
    message: StageMessage,
    enqueued_at: Instant,
    /// Deliveries so far; the next claim is delivery `deliveries + 1`.
    deliveries: u32,
}

#[derive(Debug)]
struct Claimed {
    entry: Entry,
    consumer: String,
    /// When it becomes claimable again unless acked (or touched) before.
    visible_at: Instant,
}

#[derive(Debug, Default)]
struct StageState {
    ready: VecDeque<Entry>,
    /// Retried entries with the instant they become claimable.
    delayed: Vec<(Instant, Entry)>,
    pending: HashMap<u64, Claimed>,
}

#[derive(Debug, Default)]
struct Inner {
    stages: HashMap<Stage, StageState>,
    dead: Vec<DeadLetter>,
    next_id: u64,
}

/// The in-memory [`StageQueue`]. Cheap to clone (shared state).
#[derive(Clone)]
pub struct MemoryQueue {
    inner: Arc<Mutex<Inner>>,
    /// One per stage, so an enqueue wakes only that stage's claimers.
    notifiers: Arc<HashMap<Stage, Notify>>,
    visibility_timeout: Duration,
}

impl MemoryQueue {
    pub fn new(visibility_timeout: Duration) -> Self {
        Self {
            inner: Arc::default(),
            notifiers: Arc::new(Stage::ALL.into_iter().map(|s| (s, Notify::new())).collect()),
            visibility_timeout,
        }
    }

    pub fn visibility_timeout(&self) -> Duration {
        self.visibility_timeout
    }

    /// Messages that were dead-lettered, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.lock().dead.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated in a way that
        // matters more than losing the queue, so a poisoned lock is used as is.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn notify(&self, stage: Stage) {
        if let Some(notify) = self.notifiers.get(&stage) {
            notify.notify_waiters();
        }
    }

    /// Takes the next claimable message, or says when one may become claimable.
    fn try_claim(&self, stage: Stage, consumer: &str) -> Result<Delivery, Option<Instant>> {
        let now = Instant::now();
        let timeout = self.visibility_timeout;
        let mut inner = self.lock();
        let state = inner.stages.entry(stage).or_default();

        // Due retries join the back of the line.
        if !state.delayed.is_empty() {
            let mut still_delayed = Vec::with_capacity(state.delayed.len());
            let mut due: Vec<(Instant, Entry)> = Vec::new();
            for (at, entry) in state.delayed.drain(..) {
                if at <= now {
                    due.push((at, entry));
                } else {
                    still_delayed.push((at, entry));
                }
            }
            due.sort_by_key(|(at, entry)| (*at, entry.id));
            state.ready.extend(due.into_iter().map(|(_, entry)| entry));
            state.delayed = still_delayed;
        }

        // A message whose claimer let the visibility timeout pass goes first: it is the oldest.
        let expired = state
            .pending
            .iter()
            .filter(|(_, claimed)| claimed.visible_at <= now)
            .min_by_key(|(id, claimed)| (claimed.visible_at, **id))
            .map(|(id, _)| *id);
        let entry = match expired.and_then(|id| state.pending.remove(&id)) {
            Some(claimed) => {
                tracing::debug!(
                    %stage,
                    from = %claimed.consumer,
                    to = consumer,
                    deliveries = claimed.entry.deliveries,
                    "visibility timeout passed; message claimed again"
                );
                Some(claimed.entry)
            }
            None => state.ready.pop_front(),
        };
        if let Some(mut entry) = entry {
            entry.deliveries = entry.deliveries.saturating_add(1);
            let delivery = Delivery {
                message: entry.message.clone(),
                receipt: receipt(entry.id, entry.deliveries),
                attempt: entry.deliveries,
            };
            state.pending.insert(
                entry.id,
                Claimed {
                    entry,
                    consumer: consumer.to_owned(),
                    visible_at: now + timeout,
                },
            );
            return Ok(delivery);
        }

        let next_visible = state.pending.values().map(|c| c.visible_at).min();
        let next_due = state.delayed.iter().map(|(at, _)| *at).min();
        Err(match (next_visible, next_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Removes the claimed entry this delivery refers to, if the delivery is still the
    /// current claim (a claimer whose message was reclaimed by someone else holds a stale
    /// receipt, and must not touch the new claim).
    fn take_claim(inner: &mut Inner, stage: Stage, delivery: &Delivery) -> Option<Claimed> {
        let (id, deliveries) = parse_receipt(&delivery.receipt)?;
        let state = inner.stages.get_mut(&stage)?;
        match state.pending.get(&id) {
            Some(claimed) if claimed.entry.deliveries == deliveries => state.pending.remove(&id),
            _ => None,
        }
    }
}

fn receipt(id: u64, deliveries: u32) -> String {
    format!("{id}:{deliveries}")
}

fn parse_receipt(receipt: &str) -> Option<(u64, u32)> {
    let (id, deliveries) = receipt.split_once(':')?;
    Some((id.parse().ok()?, deliveries.parse().ok()?))
}

#[async_trait]
impl StageQueue for MemoryQueue {
    async fn enqueue(&self, stage: Stage, message: StageMessage) -> Result<(), BackendError> {
        {
            let mut inner = self.lock();
            inner.next_id += 1;
            let id = inner.next_id;
            inner
                .stages
                .entry(stage)
                .or_default()
                .ready
                .push_back(Entry {
                    id,
                    message,
                    enqueued_at: Instant::now(),
                    deliveries: 0,
                });
        }
        self.notify(stage);
        Ok(())
    }

    async fn claim(
        &self,
        stage: Stage,
        consumer: &str,
        wait: Duration,
    ) -> Result<Option<Delivery>, BackendError> {
        let deadline = Instant::now() + wait;
        let notify = self
            .notifiers
            .get(&stage)
            .ok_or_else(|| BackendError::Queue(format!("no queue for stage {stage}")))?;
        loop {
            // Register interest before looking, so an enqueue between the look and the
            // wait is not missed.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let wake_at = match self.try_claim(stage, consumer) {
                Ok(delivery) => return Ok(Some(delivery)),
                Err(next) => next.map_or(deadline, |at| at.min(deadline)),
            };
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    async fn ack(&self, stage: Stage, delivery: &Delivery) -> Result<(), BackendError> {
        let mut inner = self.lock();
        if Self::take_claim(&mut inner, stage, delivery).is_none() {
            tracing::debug!(%stage, receipt = %delivery.receipt, "ack of a stale or unknown delivery ignored");
        }
        Ok(())
    }

    async fn retry(
        &self,
        stage: Stage,
        delivery: &Delivery,
        delay: Duration,
    ) -> Result<(), BackendError> {
        {
            let mut inner = self.lock();
            let Some(claimed) = Self::take_claim(&mut inner, stage, delivery) else {
                tracing::debug!(%stage, receipt = %delivery.receipt, "retry of a stale or unknown delivery ignored");
                return Ok(());
            };
            inner
                .stages
                .entry(stage)
                .or_default()
                .delayed
                .push((Instant::now() + delay, claimed.entry));
        }
        self.notify(stage);
        Ok(())
    }

    async fn dead_letter(
        &self,
        stage: Stage,
        delivery: &Delivery,
        reason: &CodedError,
    ) -> Result<(), BackendError> {
        let mut inner = self.lock();
        let Some(claimed) = Self::take_claim(&mut inner, stage, delivery) else {
            tracing::debug!(%stage, receipt = %delivery.receipt, "dead-letter of a stale or unknown delivery ignored");
            return Ok(());
        };
        inner.dead.push(DeadLetter {
            stage,
            message: claimed.entry.message,
            attempt: claimed.entry.deliveries,
            reason: reason.clone(),
            at_ms: now_ms(),
        });
        Ok(())
    }

    async fn depth(&self, stage: Stage) -> Result<QueueDepth, BackendError> {
        let now = Instant::now();
        let inner = self.lock();
        let Some(state) = inner.stages.get(&stage) else {
            return Ok(QueueDepth::default());
        };
        let oldest = state
            .ready
            .iter()
            .chain(state.delayed.iter().map(|(_, entry)| entry))
            .chain(state.pending.values().map(|claimed| &claimed.entry))
            .map(|entry| entry.enqueued_at)
            .min();
        let oldest_age_ms = oldest.map_or(0, |at| {
            u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX)
        });
        Ok(QueueDepth {
            waiting: (state.ready.len() + state.delayed.len()) as u64,
            pending: state.pending.len() as u64,
            oldest_age_ms,
        })
    }

    async fn touch(&self, stage: Stage, delivery: &Delivery) -> Result<(), BackendError> {
        let timeout = self.visibility_timeout;
        let mut inner = self.lock();
        let current = parse_receipt(&delivery.receipt).and_then(|(id, deliveries)| {
            let claimed = inner.stages.get_mut(&stage)?.pending.get_mut(&id)?;
            (claimed.entry.deliveries == deliveries).then_some(claimed)
        });
        match current {
            Some(claimed) => {
                claimed.visible_at = Instant::now() + timeout;
                Ok(())
            }
            None => Err(BackendError::Conflict(format!(
                "delivery {} of stage {stage} is no longer claimed by this consumer",
                delivery.receipt
            ))),
        }
    }
}

impl std::fmt::Debug for MemoryQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryQueue")
            .field("visibility_timeout", &self.visibility_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::ErrorCode;
    use pipeline::job::JobId;

    fn message() -> StageMessage {
        StageMessage {
            job_id: JobId::new_random(),
            traceparent: None,
        }
    }

    const NO_WAIT: Duration = Duration::ZERO;

    #[tokio::test]
    async fn fifo_per_stage() {
        let queue = MemoryQueue::new(Duration::from_secs(30));
        let (a, b, c) = (message(), message(), message());
        queue.enqueue(Stage::Decode, a.clone()).await.unwrap();
        queue.enqueue(Stage::Encode, c.clone()).await.unwrap();
        queue.enqueue(Stage::Decode, b.clone()).await.unwrap();
        let first = queue
            .claim(Stage::Decode, "w", NO_WAIT)
            .await
            .unwrap()
            .unwrap();
        let second = queue
            .claim(Stage::Decode, "w", NO_WAIT)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((first.message, second.message), (a, b));
        assert_eq!(first.attempt, 1);
        assert!(
            queue
                .claim(Stage::Decode, "w", NO_WAIT)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            queue
                .claim(Stage::Separate, "w", NO_WAIT)
                .await
                .unwrap()
                .is_none()
        );
        let third = queue
            .claim(Stage::Encode, "w", NO_WAIT)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(third.message, c);
    }

    #[tokio::test]
    async fn acked_message_is_not_delivered_again() {
        let queue = MemoryQueue::new(Duration::from_millis(50));
        queue.enqueue(Stage::Decode, message()).await.unwrap();
        let delivery = queue
            .claim(Stage::Decode, "w", NO_WAIT)
            .await
            .unwrap()
            .unwrap();
        queue.ack(Stage::Decode, &delivery).await.unwrap();
        let again = queue
            .claim(Stage::Decode, "w", Duration::from_millis(150))
            .await
            .unwrap();
        assert!(again.is_none());
        assert_eq!(
            queue.depth(Stage::Decode).await.unwrap(),
            QueueDepth::default()
        );
    }

    #[tokio::test]
    async fn unacked_message_is_claimed_again_after_visibility_timeout() {
        let queue = MemoryQueue::new(Duration::from_millis(300));
        let sent = message();
        queue.enqueue(Stage::Separate, sent.clone()).await.unwrap();
        let first = queue
            .claim(Stage::Separate, "a", NO_WAIT)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.attempt, 1);

        // Invisible while the claim is fresh...
        assert!(
            queue
                .claim(Stage::Separate, "b", NO_WAIT)
                .await
                .unwrap()
                .is_none()
        );
        // ...claimed again, by anyone, once the timeout passed; a waiting claimer wakes for it.
        let started = Instant::now();
        let second = queue
            .claim(Stage::Separate, "b", Duration::from_secs(2))
            .await
            .unwrap()
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(second.message, sent);
        assert_eq!(second.attempt, 2);

        // The first claimer's late ack must not remove the second claim.
        queue.ack(Stage::Separate, &first).await.unwrap();
        assert_eq!(queue.depth(Stage::Separate).await.unwrap().pending, 1);
        assert!(queue.touch(Stage::Separate, &first).await.is_err());

        let third = queue
            .claim(Stage::Separate, "c", Duration::from_secs(2))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(third.attempt, 3);
        queue.ack(Stage::Separate, &third).await.unwrap();
        assert_eq!(queue.depth(Stage::Separate).await.unwrap().pending, 0);
    }

    #[tokio::test]
    async fn touch_extends_the_claim() {
        let queue = MemoryQueue::new(Duration::from_millis(300));
        queue.enqueue(Stage::Decode, message()).await.unwrap();
        let delivery = queue
            .claim(Stage::Decode, "a", NO_WAIT)
            .await
            .unwrap()
            .unwrap();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            queue.touch(Stage::Decode, &delivery).await.unwrap();
        }
        // 500 ms after the claim, well past the 300 ms timeout, it is still ours.
        assert!(
            queue
                .claim(Stage::Decode, "b", NO_WAIT)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn retry_redelivers_after_the_delay_with_attempt_counted_up() {
        let queue = MemoryQueue::new(Duration::from_secs(30));
        queue.enqueue(Stage::Encode, message()).await.unwrap();
        let first = queue
            .claim(Stage::Encode, "a", NO_WAIT)
            .await
            .unwrap()
            .unwrap();
        queue
            .retry(Stage::Encode, &first, Duration::from_millis(300))
            .await
            .unwrap();
        let depth = queue.depth(Stage::Encode).await.unwrap();
        assert_eq!((depth.waiting, depth.pending), (1, 0));
        assert!(
            queue
                .claim(Stage::Encode, "a", NO_WAIT)
                .await
                .unwrap()
                .is_none()
        );
        let started = Instant::now();
        let second = queue
            .claim(Stage::Encode, "a", Duration::from_secs(2))
            .await
            .unwrap()
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(second.attempt, 2);
        assert_eq!(second.message, first.message);
    }

    #[tokio::test]
    async fn waiting_claim_wakes_on_enqueue() {
        let queue = MemoryQueue::new(Duration::from_secs(30));
        let claimer = {
            let queue = queue.clone();
            tokio::spawn(async move {
                queue
                    .claim(Stage::Decode, "a", Duration::from_secs(5))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        queue.enqueue(Stage::Decode, message()).await.unwrap();
        let delivery = claimer.await.unwrap().unwrap();
        assert!(delivery.is_some());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn dead_letter_removes_and_records() {
        let queue = MemoryQueue::new(Duration::from_millis(50));
        let sent = message();
        queue.enqueue(Stage::Decode, sent.clone()).await.unwrap();
        let delivery = queue
            .claim(Stage::Decode, "a", NO_WAIT)
            .await
            .unwrap()
            .unwrap();
        let reason = CodedError::new(ErrorCode::AttemptsExhausted, "gave up");
        queue
            .dead_letter(Stage::Decode, &delivery, &reason)
            .await
            .unwrap();
        let dead = queue.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].stage, &dead[0].message), (Stage::Decode, &sent));
        assert_eq!((dead[0].attempt, &dead[0].reason), (1, &reason));
        assert!(
            queue
                .claim(Stage::Decode, "a", Duration::from_millis(120))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn depth_counts_waiting_pending_and_oldest_age() {
        let queue = MemoryQueue::new(Duration::from_secs(30));
        assert_eq!(
            queue.depth(Stage::Decode).await.unwrap(),
            QueueDepth::default()
        );
        queue.enqueue(Stage::Decode, message()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        queue.enqueue(Stage::Decode, message()).await.unwrap();
        queue.enqueue(Stage::Decode, message()).await.unwrap();
        let _claimed = queue
            .claim(Stage::Decode, "a", NO_WAIT)
            .await
            .unwrap()
            .unwrap();
        let depth = queue.depth(Stage::Decode).await.unwrap();
        assert_eq!((depth.waiting, depth.pending), (2, 1));
        assert!(depth.oldest_age_ms >= 30, "{depth:?}");
    }
}
