//! Metrics fed by the pipeline (series documented in `observe/README.md`): [`MetricsHook`]
//! turns job transitions into counters and histograms, [`spawn_queue_poller`] keeps the
//! queue-depth gauges current. The worker itself counts what no event tells: runs in flight,
//! retries and dead letters with their error code.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backends::Backends;
use crate::job::{Job, Stage};
use crate::traits::{EventKind, JobEvent, TransitionHook};

/// Counts jobs by terminal state, failures by stage and code, stage attempts and durations,
/// and the separation real-time factor. Install it in every role (`Backends::with_hook`):
/// each transition is counted by the process that makes it, so sums over pods are exact.
#[derive(Debug, Default, Clone, Copy)]
pub struct MetricsHook;

impl MetricsHook {
    pub fn new() -> Self {
        Self
    }
}

impl TransitionHook for MetricsHook {
    fn on_event(&self, event: &JobEvent) {
        let stage = event.stage.map(Stage::as_str);
        match event.kind {
            EventKind::StageStarted => {
                if let Some(stage) = stage {
                    observe::metrics::stage_attempt(stage);
                }
                if let (Some(stage), Some(job)) = (event.stage, event.job.as_ref()) {
                    stage_started(stage, job);
                }
            }
            EventKind::StageFinished => {
                if let (Some(stage), Some(job)) = (event.stage, event.job.as_ref()) {
                    stage_finished(stage, job);
                }
            }
            EventKind::Done => observe::metrics::job_finished("done"),
            EventKind::Cancelled => observe::metrics::job_finished("cancelled"),
            EventKind::Failed => {
                observe::metrics::job_finished("failed");
                let code = event
                    .job
                    .as_ref()
                    .and_then(|job| job.error.as_ref())
                    .map_or("unknown", |error| error.code.as_str());
                observe::metrics::job_failed(stage.unwrap_or("none"), code);
            }
            EventKind::Queued | EventKind::Progress | EventKind::Retrying => {}
        }
    }
}

/// How long the job waited for this stage: from the previous stage's end (or the job's
/// creation, for the first) to this start, from the record's own timestamps.
fn stage_started(stage: Stage, job: &Job) {
    let Some(started) = job.stages.get(&stage).and_then(|t| t.started_ms) else {
        return;
    };
    let ready = match stage.previous() {
        None => Some(job.created_ms),
        Some(previous) => job.stages.get(&previous).and_then(|t| t.finished_ms),
    };
    if let Some(ready) = ready {
        observe::metrics::stage_queue_wait(
            stage.as_str(),
            started.saturating_sub(ready) as f64 / 1000.0,
        );
    }
}

/// One model run of the separate stage (chunks of one or more jobs), for the batch fill and
/// device busy series; stage crates reach `observe` through here.
pub fn separate_batch(model: &str, rows: usize, capacity: usize, busy_seconds: f64) {
    observe::metrics::separate_batch(model, rows, capacity, busy_seconds);
}

/// Duration of the stage run from the record's own timestamps; for separation also the
/// real-time factor (seconds of compute per second of audio).
fn stage_finished(stage: Stage, job: &Job) {
    let Some(times) = job.stages.get(&stage) else {
        return;
    };
    let (Some(started), Some(finished)) = (times.started_ms, times.finished_ms) else {
        return;
    };
    let seconds = finished.saturating_sub(started) as f64 / 1000.0;
    observe::metrics::stage_duration(stage.as_str(), seconds);
    if stage == Stage::Separate
        && let Some(source) = job.source.as_ref()
    {
        observe::metrics::separation_finished(&job.options.model, source.duration_secs, seconds);
    }
}

/// Reads every stage queue's depth each `every` into `msaas_queue_waiting`,
/// `msaas_queue_pending` and `msaas_queue_oldest_age_seconds`, until `shutdown`. Run one per
/// process that serves `/metrics` (the values are the shared queue's, the same from any pod).
pub fn spawn_queue_poller(
    backends: Backends,
    every: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let every = every.max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => poll_queues(&backends).await,
            }
        }
    })
}

/// One read of every stage's depth into the gauges (what the poller does each tick).
pub async fn poll_queues(backends: &Backends) {
    for stage in Stage::ALL {
        match backends.queue.depth(stage).await {
            Ok(depth) => observe::metrics::queue_depth(
                stage.as_str(),
                depth.waiting,
                depth.pending,
                depth.oldest_age_ms as f64 / 1000.0,
            ),
            Err(err) => {
                observe::metrics::queue_poll_failed(stage.as_str());
                tracing::debug!(%stage, %err, "queue depth not read");
            }
        }
    }
}

/// A model was loaded in `seconds` (`msaas_model_load_seconds{model}`); for stage crates,
/// which reach `observe` through the pipeline.
pub fn model_loaded(model: &str, seconds: f64) {
    observe::metrics::model_loaded(model, seconds);
}
