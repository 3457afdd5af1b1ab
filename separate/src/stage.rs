//! The separate stage's adapter: job → mix from the store → [`Separator::run`] on a blocking
//! thread → stems back to the store. Loaded models are cached by name: loading is expensive.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pipeline::job::keys;
use pipeline::traits::Progress;
use pipeline::{
    ErrorCode, Job, ProgressSink, Stage, StageContext, StageError, StageHandler, StageOutput,
};
use tokio_util::sync::CancellationToken;

use crate::{Listener, RuntimeOptions, SeparateOptions, Separator};

impl SeparateOptions {
    /// The options of a pipeline job.
    pub fn from_job(options: &pipeline::JobOptions) -> Self {
        Self {
            segment: options.segment,
            overlap: options.overlap,
            shifts: options.shifts,
            seed: 0,
            stems: options.stems.clone(),
            two_stems: options.two_stems.clone(),
        }
    }
}

/// Runs the `separate` stage.
pub struct SeparateStage {
    models_dir: PathBuf,
    runtime: RuntimeOptions,
    loaded: Mutex<HashMap<String, Arc<Separator>>>,
}

impl SeparateStage {
    pub fn new(models_dir: PathBuf, runtime: RuntimeOptions) -> Self {
        crate::batch::set_observer(|run| {
            pipeline::telemetry::separate_batch(
                run.model,
                run.rows,
                run.capacity,
                run.busy.as_secs_f64(),
            );
        });
        Self {
            models_dir,
            runtime,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// Loads (or finds cached) the model `model` names, so that a caller can check a
    /// model and its stems before submitting work.
    pub async fn load_model(&self, model: &str) -> Result<Arc<Separator>, StageError> {
        self.separator(model).await
    }

    /// The model a job names, loaded once per stage (on a blocking thread: it reads and
    /// optimises graphs).
    async fn separator(&self, model: &str) -> Result<Arc<Separator>, StageError> {
        if let Some(found) = self.cached(model) {
            return Ok(found);
        }
        let (name, dir, runtime) = (
            model.to_string(),
            self.models_dir.clone(),
            self.runtime.clone(),
        );
        let span = tracing::Span::current();
        let separator = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            Separator::load(&name, &dir, &runtime)
        })
        .await
        .map_err(|e| StageError::new(ErrorCode::Internal, format!("model loading thread: {e}")))?
        .map_err(|e| StageError::from(pipeline::CodedError::from(e)))?;
        pipeline::telemetry::model_loaded(separator.name(), separator.load_seconds());
        let separator = Arc::new(separator);
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(loaded.entry(model.to_string()).or_insert(separator).clone())
    }

    fn cached(&self, model: &str) -> Option<Arc<Separator>> {
        let loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loaded.get(model).cloned()
    }
}

/// Forwards chunk progress to the worker and stops when the job is cancelled.
struct StageListener {
    progress: Arc<dyn ProgressSink>,
    cancel: CancellationToken,
}

impl Listener for StageListener {
    fn progress(&mut self, done: usize, total: usize) {
        self.progress.report(Progress {
            done: done as u64,
            total: total as u64,
        });
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

fn io_error(context: &str, err: impl std::fmt::Display) -> StageError {
    StageError::new(ErrorCode::Io, format!("{context}: {err}"))
}

#[async_trait]
impl StageHandler for SeparateStage {
    fn stage(&self) -> Stage {
        Stage::Separate
    }

    async fn run(&self, job: &Job, ctx: &StageContext) -> Result<StageOutput, StageError> {
        let separator = self.separator(&job.options.model).await?;
        let options = SeparateOptions::from_job(&job.options);
        // Refuse bad stem names before reading any audio.
        separator
            .output_stems(&options)
            .map_err(|e| StageError::from(pipeline::CodedError::from(e)))?;

        let scratch = tempfile::tempdir().map_err(|e| io_error("scratch directory", e))?;
        let mix_path = scratch.path().join("mix.wav");
        ctx.store
            .get_to_file(&keys::mix(&job.id), &mix_path)
            .await?;

        let listener = StageListener {
            progress: ctx.progress.clone(),
            cancel: ctx.cancel.clone(),
        };
        let out_dir = scratch.path().to_path_buf();
        let worker = separator.clone();
        // The model runs on a blocking thread: carry the stage's span there, so its spans
        // stay in the job's trace.
        let span = tracing::Span::current();
        let written =
            tokio::task::spawn_blocking(move || -> Result<Vec<(String, PathBuf)>, StageError> {
                let _entered = span.enter();
                let mut listener = listener;
                let file = std::fs::File::open(&mix_path).map_err(|e| io_error("mix", e))?;
                let mix = audio::read_wav_f32(BufReader::new(file)).map_err(|e| {
                    StageError::new(ErrorCode::CorruptAudio, format!("intermediate mix: {e}"))
                })?;
                let stems = worker
                    .run(&mix, &options, &mut listener)
                    .map_err(|e| StageError::from(pipeline::CodedError::from(e)))?;
                drop(mix);
                let mut written = Vec::with_capacity(stems.len());
                for (name, pcm) in stems {
                    let path = out_dir.join(format!("{name}.wav"));
                    let file = std::fs::File::create(&path).map_err(|e| io_error("stem", e))?;
                    audio::write_wav_f32(&pcm, BufWriter::new(file))
                        .map_err(|e| io_error("stem", e))?;
                    written.push((name, path));
                }
                Ok(written)
            })
            .await
            .map_err(|e| {
                StageError::new(ErrorCode::Internal, format!("separation thread: {e}"))
            })??;

        let mut stems = Vec::with_capacity(written.len());
        for (name, path) in written {
            ctx.store
                .put_file(&keys::stem(&job.id, &name), &path)
                .await?;
            stems.push(name);
        }
        tracing::info!(job = %job.id, model = %separator.name(), stems = ?stems, "separated");
        Ok(StageOutput {
            stems,
            ..StageOutput::default()
        })
    }
}
