//! The janitor: the chores no single delivery takes care of.
//!
//! - Retention: a finished job's objects (every prefix of [`keys::prefixes`]) and then its
//!   record (with its aliases) are deleted `jobs.retention_secs` after it ended. Objects go
//!   first, so a crash in between leaves a record that is found again on the next run.
//! - Sweep: a job whose record has not moved for `jobs.sweep_after_secs` (a crash between
//!   creating the record and queueing it, a message lost with a queue server's data) is
//!   handed to its stage again. What the worker does with a delivery depends on the record
//!   alone (see [`crate::worker`]), so a message sent to a job that is in fact fine is
//!   skipped, and the sweep is always safe.
//! - Orphans: an object under a job's prefixes whose job has no record, written more than
//!   `jobs.orphan_after_secs` ago (a crash between storing an upload and creating its record,
//!   a refused upload whose copy could not be deleted, a stem written after its job was
//!   deleted), is deleted. The store is paged through [`MAX_BATCHES`] pages per run, resuming
//!   where the last run stopped.
//!
//! A job in a stage's running state whose record has not moved for `sweep_after_secs` is
//! taken for lost (its worker died and the queue lost the message with it) and goes back to
//! waiting for that stage. The worker does not move the record while a stage runs, so
//! `sweep_after_secs` must stay above the longest stage run, or a live run is redone.
//!
//! Several janitors (one per process) may run at once: every step is idempotent, and at worst
//! a job gets a duplicate message, which its worker skips.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backends::Backends;
use crate::config::JobsConfig;
use crate::job::{Job, JobId, JobState, Stage, keys, now_ms};
use crate::traits::{BackendError, StageMessage};

/// Jobs handled per index read.
const BATCH: usize = 100;
/// Batches per chore per run, so one run stays short even with a large backlog.
const MAX_BATCHES: usize = 50;

/// What one run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JanitorReport {
    /// Finished jobs whose objects and record were deleted.
    pub deleted: usize,
    /// Stale jobs handed to their stage again.
    pub requeued: usize,
    /// Orphaned objects deleted.
    pub orphans: usize,
}

/// Runs retention and the sweep over any backends (Redis or embedded).
#[derive(Debug, Clone)]
pub struct Janitor {
    backends: Backends,
    jobs: JobsConfig,
    visibility_timeout: Duration,
    /// The last key the orphan chore looked at: the next run goes on from there.
    orphan_cursor: Arc<Mutex<Option<String>>>,
}

/// The stage a stale job waits for or runs in, and the record that lets a fresh message of
/// that stage start it (see the record semantics in [`crate::worker`]).
fn resume_point(job: &Job, now: u64) -> Option<(Stage, Job)> {
    let mut next = job.clone();
    next.updated_ms = now;
    let stage = match job.state {
        JobState::Queued => Stage::Decode,
        JobState::Decoding | JobState::Separating | JobState::Encoding => {
            let running = Stage::ALL
                .into_iter()
                .find(|stage| stage.running_state() == job.state)?;
            let finished = job
                .stages
                .get(&running)
                .is_some_and(|times| times.finished_ms.is_some());
            match (finished, running.next()) {
                // Finished, the next stage never started: the record already says "waiting
                // for the next stage".
                (true, Some(next_stage)) => next_stage,
                _ => {
                    // Mid-stage with no live claim: a fresh message (delivery 1) would be
                    // taken for a duplicate of the delivery recorded in `attempt`, so the
                    // record goes back to waiting for this stage. A worker still running it
                    // loses its compare-and-set and leaves the job to the new message.
                    next.state = running.entry_state();
                    next.attempt = 0;
                    running
                }
            }
        }
        JobState::Done | JobState::Failed | JobState::Cancelled => return None,
    };
    Some((stage, next))
}

impl Janitor {
    /// `visibility_timeout` is the queue's: a job is never swept sooner than that, so a
    /// message a dead worker holds is reclaimed by the queue, not duplicated by the sweep.
    pub fn new(backends: Backends, jobs: JobsConfig, visibility_timeout: Duration) -> Self {
        Self {
            backends,
            jobs,
            visibility_timeout,
            orphan_cursor: Arc::default(),
        }
    }

    fn sweep_after(&self) -> Duration {
        Duration::from_secs(self.jobs.sweep_after_secs).max(self.visibility_timeout)
    }

    /// One pass of retention, sweep and orphan collection.
    pub async fn run_once(&self) -> Result<JanitorReport, BackendError> {
        let deleted = self.delete_expired().await?;
        let requeued = self.sweep_stale().await?;
        let orphans = self.delete_orphans().await?;
        if deleted > 0 || requeued > 0 || orphans > 0 {
            tracing::info!(deleted, requeued, orphans, "janitor run");
        }
        Ok(JanitorReport {
            deleted,
            requeued,
            orphans,
        })
    }

    /// Runs [`Self::run_once`] every `jobs.janitor_interval_secs` until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        let every = Duration::from_secs(self.jobs.janitor_interval_secs.max(1));
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(err) = self.run_once().await {
                tracing::warn!(%err, "janitor run failed; trying again next interval");
            }
        }
    }

    async fn delete_expired(&self) -> Result<usize, BackendError> {
        let retention_ms = self.jobs.retention_secs.saturating_mul(1000);
        let ended_before = now_ms().saturating_sub(retention_ms);
        let mut deleted = 0;
        for _ in 0..MAX_BATCHES {
            let ids = self.backends.jobs.expired(ended_before, BATCH).await?;
            for id in &ids {
                for prefix in keys::prefixes(id) {
                    self.backends.store.delete_prefix(&prefix).await?;
                }
                self.backends.jobs.delete(id).await?;
                tracing::debug!(job = %id, "retention: job deleted");
            }
            deleted += ids.len();
            if ids.len() < BATCH {
                break;
            }
        }
        Ok(deleted)
    }

    async fn sweep_stale(&self) -> Result<usize, BackendError> {
        let sweep_after_ms = u64::try_from(self.sweep_after().as_millis()).unwrap_or(u64::MAX);
        let updated_before = now_ms().saturating_sub(sweep_after_ms);
        let mut requeued = 0;
        for _ in 0..MAX_BATCHES {
            let stale = self.backends.jobs.stale(updated_before, BATCH).await?;
            for job in &stale {
                if self.requeue(job).await? {
                    requeued += 1;
                }
            }
            // Every job handled got a fresh `updated_ms` and left the window; one that lost
            // its compare-and-set moved on by itself. Either way the next read sees new ones.
            if stale.len() < BATCH {
                break;
            }
        }
        Ok(requeued)
    }

    async fn delete_orphans(&self) -> Result<usize, BackendError> {
        let grace_ms = self.jobs.orphan_after_secs.saturating_mul(1000);
        let written_before = now_ms().saturating_sub(grace_ms);
        let mut cursor = self
            .orphan_cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // Whether each job met has a record, asked once per run.
        let mut has_record: HashMap<JobId, bool> = HashMap::new();
        let mut deleted = 0;
        for _ in 0..MAX_BATCHES {
            let page = self
                .backends
                .store
                .list("", cursor.as_deref(), BATCH)
                .await?;
            for object in &page {
                let Some(id) = keys::job_of(&object.key) else {
                    continue;
                };
                if object.modified_ms > written_before {
                    continue;
                }
                let exists = match has_record.get(&id) {
                    Some(exists) => *exists,
                    None => {
                        let exists = self.backends.jobs.get(&id).await?.is_some();
                        has_record.insert(id.clone(), exists);
                        exists
                    }
                };
                if exists {
                    continue;
                }
                match self.backends.store.delete(&object.key).await {
                    Ok(()) => {
                        deleted += 1;
                        tracing::debug!(key = %object.key, "orphaned object deleted");
                    }
                    // One object that cannot go does not hold up the rest.
                    Err(err) => {
                        tracing::warn!(key = %object.key, %err, "orphaned object not deleted")
                    }
                }
            }
            cursor = page.last().map(|object| object.key.clone());
            if page.len() < BATCH {
                // The end of the store: the next run starts from its beginning.
                cursor = None;
                break;
            }
        }
        *self
            .orphan_cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = cursor;
        Ok(deleted)
    }

    /// Moves the record (fresh `updated_ms`, so it is not swept again at once) and then
    /// enqueues; `false` if the record moved meanwhile (it is alive).
    async fn requeue(&self, job: &Job) -> Result<bool, BackendError> {
        let Some((stage, next)) = resume_point(job, now_ms()) else {
            return Ok(false);
        };
        match self
            .backends
            .jobs
            .compare_and_set(job.state, job.attempt, &next)
            .await
        {
            Ok(()) => {}
            Err(BackendError::Conflict(_) | BackendError::NotFound(_)) => return Ok(false),
            Err(err) => return Err(err),
        }
        self.backends
            .queue
            .enqueue(
                stage,
                StageMessage {
                    job_id: job.id.clone(),
                    traceparent: None,
                },
            )
            .await?;
        tracing::warn!(job = %job.id, state = %job.state, %stage, "sweep: stale job handed to its stage again");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobOptions, StageTimes};

    fn job(state: JobState, attempt: u32, finished: &[Stage]) -> Job {
        let mut job = Job::new("t", "a.wav", JobOptions::default());
        job.state = state;
        job.attempt = attempt;
        for stage in finished {
            job.stages.insert(
                *stage,
                StageTimes {
                    started_ms: Some(1),
                    finished_ms: Some(2),
                },
            );
        }
        job
    }

    #[test]
    fn resume_point_follows_the_record() {
        use JobState::*;
        let cases = [
            (Queued, 0, vec![], Some((Stage::Decode, Queued, 0))),
            (Decoding, 2, vec![], Some((Stage::Decode, Queued, 0))),
            (
                Decoding,
                1,
                vec![Stage::Decode],
                Some((Stage::Separate, Decoding, 1)),
            ),
            (
                Separating,
                1,
                vec![Stage::Decode],
                Some((Stage::Separate, Decoding, 0)),
            ),
            (
                Separating,
                3,
                vec![Stage::Decode, Stage::Separate],
                Some((Stage::Encode, Separating, 3)),
            ),
            (
                Encoding,
                1,
                vec![Stage::Decode, Stage::Separate],
                Some((Stage::Encode, Separating, 0)),
            ),
            (Done, 1, vec![], None),
            (Cancelled, 1, vec![], None),
        ];
        for (state, attempt, finished, expected) in cases {
            let stale = job(state, attempt, &finished);
            let got = resume_point(&stale, 42).map(|(stage, next)| {
                assert_eq!(next.updated_ms, 42);
                (stage, next.state, next.attempt)
            });
            assert_eq!(
                got, expected,
                "{state} attempt {attempt} finished {finished:?}"
            );
        }
    }
}
