//! The typed error of the encode stage, each variant mapped to a stable [`ErrorCode`].

use audio::AudioError;
use audio::ErrorCode;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The requested output cannot be produced (bad bit rate, float FLAC, `none` clipping
    /// on integer output, …). Retrying cannot help.
    #[error("{0}")]
    InvalidOption(String),
    /// The PCM handed to the encoder breaks its invariants (no channels, ragged channels).
    #[error("invalid PCM: {0}")]
    InvalidPcm(String),
    #[error("i/o while writing the encoded stem: {0}")]
    Io(#[from] std::io::Error),
    #[error("WAV writer: {0}")]
    Wav(#[source] hound::Error),
    #[error("FLAC encoder: {0}")]
    Flac(String),
    #[error("MP3 encoder (LAME): {0}")]
    Mp3(String),
    #[error("ID3 tag: {0}")]
    Id3(#[source] id3::Error),
    /// An intermediate stem WAV (written by separate) could not be read.
    #[error("intermediate stem {stem:?}: {source}")]
    Intermediate {
        stem: String,
        #[source]
        source: AudioError,
    },
    #[error("resampling to the source rate: {0}")]
    Resample(String),
    /// `--output-rate source` was asked for but the job record has no source rate.
    #[error("the job record has no source sample rate / channel count to restore")]
    MissingSourceInfo,
    /// A worker thread panicked (a bug): reported, never propagated as a panic.
    #[error("encoder thread panicked: {0}")]
    Panicked(String),
    #[error("cancelled")]
    Cancelled,
}

impl EncodeError {
    /// The stable code users and dashboards key on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidOption(_) => ErrorCode::InvalidOption,
            Self::Io(_) => ErrorCode::Io,
            Self::Wav(hound::Error::IoError(_)) => ErrorCode::Io,
            Self::Id3(err) if matches!(err.kind, id3::ErrorKind::Io(_)) => ErrorCode::Io,
            Self::Cancelled => ErrorCode::Cancelled,
            // What remains are faults of this service (an encoder refusing data we produced,
            // a corrupt intermediate): retried, then dead-lettered for an operator.
            Self::InvalidPcm(_)
            | Self::Wav(_)
            | Self::Flac(_)
            | Self::Mp3(_)
            | Self::Id3(_)
            | Self::Intermediate { .. }
            | Self::Resample(_)
            | Self::MissingSourceInfo
            | Self::Panicked(_) => ErrorCode::Internal,
        }
    }

    pub(crate) fn invalid_option(message: impl Into<String>) -> Self {
        Self::InvalidOption(message.into())
    }
}

impl From<hound::Error> for EncodeError {
    fn from(err: hound::Error) -> Self {
        match err {
            hound::Error::IoError(io) => Self::Io(io),
            other => Self::Wav(other),
        }
    }
}

impl From<EncodeError> for audio::CodedError {
    fn from(err: EncodeError) -> Self {
        audio::CodedError::new(err.code(), err.to_string())
    }
}
