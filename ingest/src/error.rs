//! API errors: a stable [`ErrorCode`], a human message and the HTTP status the code maps to.
//!
//! Status mapping (one code, one status, everywhere):
//!
//! | status | codes |
//! |---|---|
//! | 400 | `bad_request` (malformed request, unknown or repeated parameter, bad JSON / base64, bad stem name), `empty_input` |
//! | 401 | `unauthorized` (with `WWW-Authenticate: Bearer`) |
//! | 404 | `not_found` (unknown job, another tenant's job, malformed job id, unknown route) |
//! | 405 | `bad_request` (a known path with another method) |
//! | 409 | `conflict` (stems of a job that is not done, concurrent change) |
//! | 413 | `payload_too_large` (upload over `limits.max_input_bytes`; the pipeline's `too_large`) |
//! | 415 | `unsupported_media_type` (the body is not audio, or a non-audio `Content-Type`) |
//! | 416 | `bad_request` (unsatisfiable `Range`) |
//! | 422 | `invalid_option` (unknown model / stem / format, inconsistent options) |
//! | 429 | `rate_limited` (a tenant cap: jobs not finished, uploads per minute; with `Retry-After`) |
//! | 431 | hyper's own answer to a request head over its buffer (no JSON body) |
//! | 503 | `storage_unavailable`, `queue_unavailable`, `events_unavailable`, `overloaded` (too many open connections; answered before the request is read) |
//! | 500 | anything else (`io`, `internal`) |

use pipeline::{CodedError, ErrorCode};
use warp::Reply;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

/// Why [`crate::IngestState::new`] or [`crate::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    #[error("cannot read the API keys file {path}: {source}")]
    KeysFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("API keys file {path}, line {line}: {reason}")]
    KeysFileLine {
        path: std::path::PathBuf,
        line: usize,
        reason: String,
    },
    #[error(
        "no way to authenticate callers: set auth.keys_file, auth.redis_keys (with a key directory) or auth.anonymous"
    )]
    NoAuth,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// An error answered to a client: `{"error":{"code":"…","message":"…"}}` with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Seconds after which a retry may succeed (`Retry-After`), for 429 and 503 answers.
    pub retry_after_secs: Option<u64>,
}

/// The HTTP status of an error code (see the module docs).
pub fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::PayloadTooLarge | ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType | ErrorCode::UnsupportedFormat => {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        }
        ErrorCode::BadRequest | ErrorCode::EmptyInput => StatusCode::BAD_REQUEST,
        ErrorCode::InvalidOption | ErrorCode::UnknownModel | ErrorCode::UnknownStem => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::StorageUnavailable
        | ErrorCode::Overloaded
        | ErrorCode::QueueUnavailable
        | ErrorCode::EventsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: status_for(code),
            code,
            message: message.into(),
            // A dependency that is down now may be back in a moment.
            retry_after_secs: (status_for(code) == StatusCode::SERVICE_UNAVAILABLE).then_some(5),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn invalid_option(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidOption, message)
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_secs = Some(seconds);
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
    }

    /// The reply. Every 5xx is logged here with its cause (and counted with its status in
    /// `msaas_http_requests_total`), whichever handler made it.
    pub fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = self.code.as_str(), message = %self.message, "server error answered to a client");
        }
        let mut response =
            warp::reply::with_status(warp::reply::json(&self.body()), self.status).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"msaas\""),
            );
        }
        if let Some(seconds) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<CodedError> for ApiError {
    fn from(err: CodedError) -> Self {
        // The pipeline's `too_large` is the upload limit: the API calls that 413
        // `payload_too_large`; unknown model / stem are option errors to an API client.
        let code = match err.code {
            ErrorCode::TooLarge => ErrorCode::PayloadTooLarge,
            ErrorCode::UnknownModel | ErrorCode::UnknownStem => ErrorCode::InvalidOption,
            code => code,
        };
        Self::new(code, err.message)
    }
}

impl From<pipeline::BackendError> for ApiError {
    fn from(err: pipeline::BackendError) -> Self {
        Self::new(err.code(), err.to_string())
    }
}

/// Turns warp's rejections (no route, wrong method, bad query string, …) into JSON errors.
pub(crate) async fn recover(
    rejection: warp::Rejection,
) -> Result<Response, std::convert::Infallible> {
    let error = if rejection.is_not_found() {
        ApiError::not_found("no such route")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::bad_request("method not allowed on this route")
            .with_status(StatusCode::METHOD_NOT_ALLOWED)
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::bad_request("malformed query string")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(ErrorCode::PayloadTooLarge, "request body too large")
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        ApiError::new(ErrorCode::UnsupportedMediaType, "unsupported content type")
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::bad_request("Content-Length required").with_status(StatusCode::LENGTH_REQUIRED)
    } else if let Some(missing) = rejection.find::<warp::reject::MissingHeader>() {
        ApiError::bad_request(format!("missing header {}", missing.name()))
    } else if let Some(invalid) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::bad_request(format!("invalid header {}", invalid.name()))
    } else {
        tracing::debug!(?rejection, "unhandled rejection");
        ApiError::bad_request(format!("bad request: {rejection:?}"))
    };
    Ok(error.into_response())
}
