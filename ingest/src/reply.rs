//! What the `/v1` routes and the legacy `/apiv1` routes share: JSON replies, the request
//! parts every handler takes (state, `Authorization`, query pairs), the caller's tenant, and
//! the span and count of an upload.

use std::convert::Infallible;

use serde_json::Value;
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::error::ApiError;
use crate::state::IngestState;
use crate::upload::Accepted;
use crate::view::job_view;

pub(crate) fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

pub(crate) fn with_state(
    state: IngestState,
) -> impl Filter<Extract = (IngestState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// `Authorization` header, if any (checked by the handler, so that a missing key is a 401
/// JSON error rather than a rejection). Bytes that are not text become U+FFFD: such a key
/// matches no tenant (401), where parsing it as a string would reject the route (405).
pub(crate) fn authorization() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone
{
    warp::header::headers_cloned().map(|headers: HeaderMap| {
        headers
            .get(header::AUTHORIZATION)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
    })
}

/// Query parameters as decoded pairs, in order (repeats kept, so they can be refused).
pub(crate) fn query_pairs()
-> impl Filter<Extract = (Vec<(String, String)>,), Error = warp::Rejection> + Clone {
    warp::query::<Vec<(String, String)>>()
}

pub(crate) async fn tenant(
    state: &IngestState,
    authorization: Option<String>,
) -> Result<String, ApiError> {
    state.inner.auth.tenant(authorization.as_deref()).await
}

/// For routes that take no query parameter: the check's outcome, for the handler to answer
/// (a refusal is the route's JSON 400, not a rejection that would read as another route's 405).
pub(crate) fn no_parameters()
-> impl Filter<Extract = (Result<(), ApiError>,), Error = warp::Rejection> + Clone {
    query_pairs().map(|pairs: Vec<(String, String)>| only_parameters(&pairs, &[]))
}

/// Refuses any query parameter not in `allowed`, and any given twice.
pub(crate) fn only_parameters(
    pairs: &[(String, String)],
    allowed: &[&str],
) -> Result<(), ApiError> {
    if let Some((_, (name, _))) = pairs
        .iter()
        .enumerate()
        .find(|(index, (name, _))| pairs[..*index].iter().any(|(seen, _)| seen == name))
    {
        return Err(ApiError::bad_request(format!(
            "parameter {name:?} is given more than once"
        )));
    }
    match pairs
        .iter()
        .find(|(name, _)| !allowed.contains(&name.as_str()))
    {
        Some((name, _)) => Err(ApiError::bad_request(format!(
            "unknown parameter {name:?}{}",
            if allowed.is_empty() {
                " (this route takes none)".to_owned()
            } else {
                format!(" (known: {})", allowed.join(", "))
            }
        ))),
        None => Ok(()),
    }
}

/// The answer to an accepted upload: the job, `Location` of its record.
pub(crate) fn accepted_response(accepted: &Accepted) -> Response {
    let mut response = json_response(accepted.status, &job_view(&accepted.job));
    if let Ok(location) = HeaderValue::from_str(&crate::view::job_path(&accepted.job)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// The span of one upload: a child of the caller's trace when it sent a `traceparent`.
/// Its own `traceparent` travels with the job (queue messages, webhooks).
pub(crate) fn upload_span(headers: &HeaderMap, route: &'static str) -> tracing::Span {
    let span = tracing::info_span!("ingest.upload", route, job = tracing::field::Empty);
    if let Some(parent) = headers
        .get(observe::trace::TRACEPARENT)
        .and_then(|value| value.to_str().ok())
    {
        observe::trace::set_parent(&span, parent);
    }
    span
}

/// Counts an upload's outcome.
pub(crate) fn count_upload(result: &Result<Response, ApiError>) {
    if let Err(err) = result {
        observe::metrics::upload_rejected(err.code.as_str());
    }
}
