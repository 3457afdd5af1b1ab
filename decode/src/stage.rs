//! The thin adapter that plugs [`crate::decode_file`] into the worker loop: source from the
//! store, decode on a blocking thread, `mix.wav` back to the store. It knows nothing of audio.

use std::io::BufWriter;
use std::path::PathBuf;

use async_trait::async_trait;
use pipeline::job::keys;
use pipeline::{ErrorCode, Job, Stage, StageContext, StageError, StageHandler, StageOutput};
use tracing::info;

use crate::decoder::{DecodeOptions, Target, decode_with};
use crate::error::DecodeError;
use crate::limits::Limits;

impl From<DecodeError> for StageError {
    fn from(err: DecodeError) -> Self {
        StageError::new(err.code(), err.to_string())
    }
}

/// Stage `decode`: `uploads/{job}/source` → `work/{job}/mix.wav` (44.1 kHz stereo f32).
#[derive(Debug, Clone, Default)]
pub struct DecodeStage {
    limits: Limits,
}

impl DecodeStage {
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

fn io_error(what: &str, err: std::io::Error) -> StageError {
    StageError::new(ErrorCode::Io, format!("{what}: {err}"))
}

#[async_trait]
impl StageHandler for DecodeStage {
    fn stage(&self) -> Stage {
        Stage::Decode
    }

    async fn run(&self, job: &Job, ctx: &StageContext) -> Result<StageOutput, StageError> {
        let source_key = keys::source(&job.id);
        // Refuse an oversized upload before copying it anywhere.
        if let Some(size) = ctx.store.size(&source_key).await?
            && size > self.limits.max_input_bytes
        {
            return Err(DecodeError::TooLarge {
                limit: self.limits.max_input_bytes,
                measured: size,
            }
            .into());
        }
        let dir = tempfile::tempdir().map_err(|err| io_error("temporary directory", err))?;
        let source_path = dir.path().join("source");
        ctx.store.get_to_file(&source_key, &source_path).await?;
        if ctx.cancel.is_cancelled() {
            return Err(StageError::cancelled());
        }
        let mix_path = dir.path().join("mix.wav");
        let limits = self.limits.clone();
        let extension = PathBuf::from(&job.source_name)
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let blocking_mix_path = mix_path.clone();
        let info = tokio::task::spawn_blocking(move || -> Result<_, StageError> {
            let file = std::fs::File::open(&source_path)
                .map_err(|err| io_error("opening the downloaded source", err))?;
            let options = DecodeOptions {
                target: Target::Model,
                extension,
            };
            let decoded = decode_with(file, &limits, &options)?;
            let out = std::fs::File::create(&blocking_mix_path)
                .map_err(|err| io_error("creating mix.wav", err))?;
            audio::write_wav_f32(&decoded.pcm, BufWriter::new(out))
                .map_err(|err| StageError::new(ErrorCode::Io, format!("writing mix.wav: {err}")))?;
            Ok(decoded.info)
        })
        .await
        .map_err(|err| {
            StageError::new(ErrorCode::Internal, format!("decode task failed: {err}"))
        })??;
        if ctx.cancel.is_cancelled() {
            return Err(StageError::cancelled());
        }
        ctx.store.put_file(&keys::mix(&job.id), &mix_path).await?;
        info!(
            job = %job.id,
            codec = %info.codec,
            duration_secs = info.duration_secs,
            skipped_packets = info.skipped_packets,
            "decoded source"
        );
        Ok(StageOutput {
            source: Some(info),
            ..StageOutput::default()
        })
    }
}
