//! An embedded pipeline (memory queue, local dir store, in-process events) with the metrics
//! hook and three trivial stages, for the metrics and tracing tests.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pipeline::telemetry::MetricsHook;
use pipeline::{
    Backends, ErrorCode, Job, JobOptions, SourceInfo, Stage, StageContext, StageError,
    StageHandler, StageOutput, Worker, WorkerSettings,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Model names that make the trivial stages misbehave.
pub const BAD_INPUT_MODEL: &str = "bad-input";
pub const FLAKY_MODEL: &str = "flaky";
pub const HELD_MODEL: &str = "held";
pub const MODEL: &str = "fake-model";

/// Stands in for a real stage: decode reports 2 s of audio, separate names one stem,
/// encode one result. `bad-input` fails separate permanently, `flaky` fails encode
/// transiently every time, `held` makes separate wait for [`Pipeline::release`].
pub struct TrivialStage {
    stage: Stage,
    hold: Arc<Notify>,
    pub held: Arc<AtomicU32>,
}

#[async_trait]
impl StageHandler for TrivialStage {
    fn stage(&self) -> Stage {
        self.stage
    }

    async fn run(&self, job: &Job, _ctx: &StageContext) -> Result<StageOutput, StageError> {
        let model = job.options.model.as_str();
        match self.stage {
            Stage::Decode => Ok(StageOutput {
                source: Some(SourceInfo {
                    sample_rate: 44_100,
                    channels: 2,
                    duration_secs: 2.0,
                    codec: "fake".into(),
                    title: None,
                    artist: None,
                    album: None,
                    skipped_packets: 0,
                }),
                ..StageOutput::default()
            }),
            Stage::Separate => {
                if model == BAD_INPUT_MODEL {
                    return Err(StageError::new(
                        ErrorCode::CorruptAudio,
                        "not audio (on purpose)",
                    ));
                }
                if model == HELD_MODEL {
                    self.held.fetch_add(1, Ordering::SeqCst);
                    self.hold.notified().await;
                }
                Ok(StageOutput {
                    stems: vec!["vocals".into()],
                    ..StageOutput::default()
                })
            }
            Stage::Encode => {
                if model == FLAKY_MODEL {
                    return Err(StageError::new(ErrorCode::Io, "disk hiccup (on purpose)"));
                }
                Ok(StageOutput {
                    results: vec![("vocals".into(), format!("results/{}/vocals.wav", job.id))],
                    ..StageOutput::default()
                })
            }
        }
    }
}

pub struct Pipeline {
    pub backends: Backends,
    pub shutdown: CancellationToken,
    hold: Arc<Notify>,
    pub held: Arc<AtomicU32>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Pipeline {
    /// Embedded backends with [`MetricsHook`] and one worker per stage.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let backends = backends::embedded(dir.path(), Duration::from_secs(30))
            .expect("embedded backends")
            .with_hook(Arc::new(MetricsHook::new()));
        let shutdown = CancellationToken::new();
        let hold = Arc::new(Notify::new());
        let held = Arc::new(AtomicU32::new(0));
        let settings = WorkerSettings {
            max_attempts: 2,
            backoff_base: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
            claim_wait: Duration::from_millis(50),
            cancel_poll: Duration::from_millis(50),
            ..WorkerSettings::default()
        };
        let workers = Stage::ALL
            .into_iter()
            .map(|stage| {
                let handler = Arc::new(TrivialStage {
                    stage,
                    hold: hold.clone(),
                    held: held.clone(),
                });
                let worker = Worker::new(backends.clone(), handler, settings.clone());
                let shutdown = shutdown.clone();
                tokio::spawn(async move { worker.run(shutdown).await })
            })
            .collect();
        Self {
            backends,
            shutdown,
            hold,
            held,
            workers,
            _dir: dir,
        }
    }

    /// Submits a job with `model` (and the given trace context) and returns its record.
    pub async fn submit(&self, model: &str, traceparent: Option<String>) -> Job {
        let options = JobOptions {
            model: model.to_owned(),
            ..JobOptions::default()
        };
        let job = Job::new("tenant-a", "song.wav", options);
        let body = futures::stream::once(async { Ok(Bytes::from_static(b"not really audio")) });
        pipeline::submit(
            &self.backends,
            job,
            Box::pin(body),
            Some(1 << 20),
            traceparent,
        )
        .await
        .expect("submitted")
    }

    /// Runs a job to its end and returns the final record.
    pub async fn run(&self, model: &str, traceparent: Option<String>) -> Job {
        let job = self.submit(model, traceparent).await;
        self.wait(&job).await
    }

    pub async fn wait(&self, job: &Job) -> Job {
        tokio::time::timeout(
            Duration::from_secs(30),
            pipeline::wait_until_finished(&self.backends, &job.id, Duration::from_millis(20)),
        )
        .await
        .expect("the job finishes within 30 s")
        .expect("the job's record")
    }

    /// Lets every `held` separation go on.
    pub fn release(&self) {
        self.hold.notify_waiters();
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for worker in self.workers {
            worker.await.expect("worker task");
        }
    }
}

/// The value of one series in a text exposition: `name` with exactly these labels (in any
/// order); 0 when absent (a counter that never moved is not exposed).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let mut found: Vec<(String, String)> = series_labels
            .split(',')
            .filter(|pair| !pair.is_empty())
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        found.sort();
        wanted.sort();
        if found == wanted {
            return value.parse().expect("a sample value");
        }
    }
    0.0
}
