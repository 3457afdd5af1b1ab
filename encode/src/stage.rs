//! The adapter that plugs the encoder into the worker loop: stems in from the blob store,
//! encoded stems out to it. It knows nothing of audio beyond calling [`crate::encode_stem_files`].

use std::path::PathBuf;

use async_trait::async_trait;
use pipeline::job::keys;
use pipeline::{ErrorCode, Job, Stage, StageContext, StageError, StageHandler, StageOutput};

use crate::error::EncodeError;
use crate::song::{Song, encode_stem_files};

impl From<EncodeError> for StageError {
    fn from(err: EncodeError) -> Self {
        StageError(err.into())
    }
}

/// The encode stage: for every stem in `job.stems`, reads `work/{job}/stems/{stem}.wav`,
/// encodes as `job.options.output` asks, and stores `results/{job}/{stem}.{ext}`.
#[derive(Debug, Clone, Default)]
pub struct EncodeStage {
    /// Where the temporary copies of stems go; the system temp dir when `None`.
    scratch_dir: Option<PathBuf>,
}

impl EncodeStage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Temporary files in `dir` (e.g. a volume sized for a song's stems) instead of the
    /// system temp dir.
    pub fn with_scratch_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            scratch_dir: Some(dir.into()),
        }
    }

    fn scratch(&self) -> Result<tempfile::TempDir, StageError> {
        let builder = {
            let mut builder = tempfile::Builder::new();
            builder.prefix("msaas-encode-");
            builder
        };
        match &self.scratch_dir {
            Some(dir) => builder.tempdir_in(dir),
            None => builder.tempdir(),
        }
        .map_err(|err| StageError::new(ErrorCode::Io, format!("encode scratch directory: {err}")))
    }
}

#[async_trait]
impl StageHandler for EncodeStage {
    fn stage(&self) -> Stage {
        Stage::Encode
    }

    async fn run(&self, job: &Job, ctx: &StageContext) -> Result<StageOutput, StageError> {
        if job.stems.is_empty() {
            return Err(StageError::new(
                ErrorCode::Internal,
                format!("job {} reached encode with no stems recorded", job.id),
            ));
        }
        let format = job.options.output.clone();
        crate::options::validate(&format)?;
        let scratch = self.scratch()?;
        let out_dir = scratch.path().join("out");
        std::fs::create_dir(&out_dir)
            .map_err(|err| StageError::new(ErrorCode::Io, format!("encode scratch: {err}")))?;

        let mut inputs = Vec::with_capacity(job.stems.len());
        for (index, stem) in job.stems.iter().enumerate() {
            if ctx.cancel.is_cancelled() {
                return Err(StageError::cancelled());
            }
            // Local names by index: a stem name is never used as a path.
            let path = scratch.path().join(format!("{index}.wav"));
            ctx.store
                .get_to_file(&keys::stem(&job.id, stem), &path)
                .await?;
            inputs.push((stem.clone(), path));
        }

        let source_name = job.source_name.clone();
        let source = job.source.clone();
        let cancel = ctx.cancel.clone();
        let span = tracing::Span::current();
        let encoded = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let song = Song {
                source_name: &source_name,
                source: source.as_ref(),
            };
            encode_stem_files(inputs, &format, song, &out_dir, &|| cancel.is_cancelled())
        })
        .await
        .map_err(|err| StageError::new(ErrorCode::Internal, format!("encode task: {err}")))?
        .map_err(|err| match err {
            EncodeError::Cancelled => StageError::cancelled(),
            other => other.into(),
        })?;

        let extension = job.options.output.format.extension();
        let mut results = Vec::with_capacity(encoded.len());
        for stem in encoded {
            let key = keys::result(&job.id, &stem.stem, extension);
            ctx.store.put_file(&key, &stem.path).await?;
            tracing::info!(stem = stem.stem, key, bytes = stem.bytes, "stem stored");
            results.push((stem.stem, key));
        }
        Ok(StageOutput {
            results,
            ..StageOutput::default()
        })
    }
}
