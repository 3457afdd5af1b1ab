//! Everything that can stop a separation, each with its stable code.

use audio::ErrorCode;

use crate::manifest::ManifestError;
use crate::runtime::RuntimeError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeparateError {
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("unknown model {name:?}: {reason}")]
    UnknownModel { name: String, reason: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("unknown stem {stem:?}: model {model} has {}", available.join(", "))]
    UnknownStem {
        stem: String,
        model: String,
        available: Vec<String>,
    },
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The input cannot be separated (empty, wrong rate, …): retrying cannot help.
    #[error("{message}")]
    Input { code: ErrorCode, message: String },
    /// The model misbehaved (unexpected output shape, STFT failure): a bug or a bad model.
    #[error("model {model}: {message}")]
    Model { model: String, message: String },
    #[error("cancelled")]
    Cancelled,
}

impl SeparateError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Manifest(ManifestError::Missing { .. }) | Self::UnknownModel { .. } => {
                ErrorCode::UnknownModel
            }
            Self::Manifest(_) => ErrorCode::ModelLoadFailed,
            Self::Runtime(err) => err.code(),
            Self::UnknownStem { .. } => ErrorCode::UnknownStem,
            Self::InvalidOption(_) => ErrorCode::InvalidOption,
            Self::Input { code, .. } => *code,
            Self::Model { .. } => ErrorCode::ModelRuntime,
            Self::Cancelled => ErrorCode::Cancelled,
        }
    }
}

impl From<SeparateError> for audio::CodedError {
    fn from(err: SeparateError) -> Self {
        audio::CodedError::new(err.code(), err.to_string())
    }
}
