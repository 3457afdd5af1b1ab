//! Stable error codes: what users, dashboards and alerts key on. Adding a code is fine;
//! renaming one is a breaking change of the API.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    // The input itself is bad: retrying cannot help.
    EmptyInput,
    UnsupportedFormat,
    NoAudioTrack,
    CorruptAudio,
    TooLarge,
    TooLong,
    TooShort,
    TooManyChannels,
    InvalidOption,
    UnknownModel,
    UnknownStem,
    // The service cannot do it as configured: permanent until an operator acts.
    ModelLoadFailed,
    DeviceUnavailable,
    // Faults of the moment: retried with backoff, then dead-lettered.
    ModelRuntime,
    /// The accelerator had no memory left even for one chunk (batches had already shrunk).
    DeviceOutOfMemory,
    StorageUnavailable,
    QueueUnavailable,
    EventsUnavailable,
    Io,
    // Outcomes.
    AttemptsExhausted,
    Cancelled,
    Internal,
    // API-level.
    NotFound,
    Unauthorized,
    PayloadTooLarge,
    UnsupportedMediaType,
    BadRequest,
    Conflict,
    /// A tenant's cap (jobs not finished, uploads per minute) reached: retry later.
    RateLimited,
    /// The server has too many open connections: retry shortly.
    Overloaded,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::EmptyInput => "empty_input",
            Self::UnsupportedFormat => "unsupported_format",
            Self::NoAudioTrack => "no_audio_track",
            Self::CorruptAudio => "corrupt_audio",
            Self::TooLarge => "too_large",
            Self::TooLong => "too_long",
            Self::TooShort => "too_short",
            Self::TooManyChannels => "too_many_channels",
            Self::InvalidOption => "invalid_option",
            Self::UnknownModel => "unknown_model",
            Self::UnknownStem => "unknown_stem",
            Self::ModelLoadFailed => "model_load_failed",
            Self::DeviceUnavailable => "device_unavailable",
            Self::ModelRuntime => "model_runtime",
            Self::DeviceOutOfMemory => "device_out_of_memory",
            Self::StorageUnavailable => "storage_unavailable",
            Self::QueueUnavailable => "queue_unavailable",
            Self::EventsUnavailable => "events_unavailable",
            Self::Io => "io",
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::Cancelled => "cancelled",
            Self::Internal => "internal",
            Self::NotFound => "not_found",
            Self::Unauthorized => "unauthorized",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BadRequest => "bad_request",
            Self::Conflict => "conflict",
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
        }
    }

    /// Whether this code means a dependency of the service (object storage, the queue, the
    /// event bus) did not answer: an outage, waited out by the worker without counting it
    /// against the job's attempts (`worker.outage_budget_secs`).
    pub const fn is_outage(self) -> bool {
        matches!(
            self,
            Self::StorageUnavailable | Self::QueueUnavailable | Self::EventsUnavailable
        )
    }

    /// Whether a stage failing with this code should be retried (a fault of the moment)
    /// rather than fail the job at once.
    pub const fn is_transient(self) -> bool {
        matches!(
            self,
            Self::ModelRuntime
                | Self::DeviceOutOfMemory
                | Self::StorageUnavailable
                | Self::QueueUnavailable
                | Self::EventsUnavailable
                | Self::Io
                | Self::Internal
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error code with its human message, as stored in the job record and shown by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CodedError {
    pub code: ErrorCode,
    pub message: String,
}

impl CodedError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_is_the_stable_code() {
        for code in [
            ErrorCode::CorruptAudio,
            ErrorCode::TooLong,
            ErrorCode::UnknownStem,
        ] {
            let json = serde_json::to_string(&code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
