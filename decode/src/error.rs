//! Why a file could not be decoded, each with a stable [`ErrorCode`].

use audio::ErrorCode;
use audio::resample::ResampleError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("the input is empty (0 bytes)")]
    EmptyInput,
    #[error("unsupported or unrecognised audio format: {0}")]
    UnsupportedFormat(String),
    #[error("the file has no audio track")]
    NoAudioTrack,
    /// Undecodable: nothing decoded, too many corrupt packets, or a broken container.
    #[error("corrupt audio: {0}")]
    CorruptAudio(String),
    #[error("input is {measured} bytes, over the limit of {limit} bytes")]
    TooLarge { limit: u64, measured: u64 },
    /// `measured` is the header's duration, or how far decoding got before it passed the limit
    /// (`partial`): the rest of the file was not decoded.
    #[error(
        "audio is {}{measured:.1} s long, over the limit of {limit:.1} s",
        if *partial { "at least " } else { "" }
    )]
    TooLong {
        limit: f64,
        measured: f64,
        partial: bool,
    },
    #[error("audio is {measured:.3} s long, under the minimum of {limit:.3} s")]
    TooShort { limit: f64, measured: f64 },
    #[error("audio has {measured} channels, over the limit of {limit}")]
    TooManyChannels { limit: u16, measured: usize },
    #[error("i/o error while reading the input: {0}")]
    Io(#[from] std::io::Error),
    /// A fault of this service, not of the input.
    #[error("resampling failed: {0}")]
    Resample(#[from] ResampleError),
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::EmptyInput => ErrorCode::EmptyInput,
            Self::UnsupportedFormat(_) => ErrorCode::UnsupportedFormat,
            Self::NoAudioTrack => ErrorCode::NoAudioTrack,
            Self::CorruptAudio(_) => ErrorCode::CorruptAudio,
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::TooLong { .. } => ErrorCode::TooLong,
            Self::TooShort { .. } => ErrorCode::TooShort,
            Self::TooManyChannels { .. } => ErrorCode::TooManyChannels,
            Self::Io(_) => ErrorCode::Io,
            Self::Resample(_) => ErrorCode::Internal,
        }
    }
}
