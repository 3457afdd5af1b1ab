//! The `/v1` routes, the health routes and the filter that joins every route.

use std::convert::Infallible;
use std::time::Duration;

use futures::StreamExt;
use pipeline::{ErrorCode, Job, JobState, Stage, job::keys};
use serde_json::{Value, json};
use tracing::Instrument;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::body::{SyncStream, byte_stream, collect_limited};
use crate::error::{ApiError, recover};
use crate::options::{OptionInput, valid_stem_name};
use crate::state::IngestState;
use crate::upload::{self, Accepted, Stored, clean_source_name};
use crate::view::job_view;

/// Default and largest `limit` of `GET /v1/jobs`.
const DEFAULT_LIST_LIMIT: usize = 50;
const MAX_LIST_LIMIT: usize = 1000;
/// Longest non-file multipart field.
const MAX_FORM_FIELD: u64 = 4096;
/// How long `/readyz` waits for the backends.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

fn with_state(
    state: IngestState,
) -> impl Filter<Extract = (IngestState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// `Authorization` header, if any (checked by the handler, so that a missing key is a 401
/// JSON error rather than a rejection).
fn authorization() -> impl Filter<Extract = (Option<String>,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization")
}

/// Query parameters as decoded pairs, in order (repeats kept, so they can be refused).
fn query_pairs() -> impl Filter<Extract = (Vec<(String, String)>,), Error = warp::Rejection> + Clone
{
    warp::query::<Vec<(String, String)>>()
}

pub(crate) async fn tenant(
    state: &IngestState,
    authorization: Option<String>,
) -> Result<String, ApiError> {
    state.inner.auth.tenant(authorization.as_deref()).await
}

/// Refuses any query parameter not in `allowed`.
fn only_parameters(pairs: &[(String, String)], allowed: &[&str]) -> Result<(), ApiError> {
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

/// Every route, with JSON errors for everything that does not match.
pub(crate) fn routes(state: IngestState) -> BoxedFilter<(Response,)> {
    let upload_multipart = warp::path!("v1" / "jobs")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authorization())
        .and(query_pairs())
        .and(warp::header::headers_cloned())
        .and(warp::multipart::form().max_length(None))
        .then(|state, auth, query, headers: HeaderMap, form| async move {
            let span = upload_span(&headers, "/v1/jobs");
            let result = upload_multipart(state, auth, query, headers, form)
                .instrument(span)
                .await;
            count_upload(&result);
            respond(result)
        });
    let upload_raw = warp::path!("v1" / "jobs")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authorization())
        .and(query_pairs())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(|state, auth, query, headers: HeaderMap, body| async move {
            let span = upload_span(&headers, "/v1/jobs");
            let result = upload_raw(state, auth, query, headers, byte_stream(body))
                .instrument(span)
                .await;
            count_upload(&result);
            respond(result)
        });
    let list = warp::path!("v1" / "jobs")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorization())
        .and(query_pairs())
        .then(|state, auth, query| async move { respond(list_jobs(state, auth, query).await) });
    let get = warp::path!("v1" / "jobs" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorization())
        .and(query_pairs())
        .then(
            |id, state, auth, query| async move { respond(get_job(state, auth, id, query).await) },
        );
    let delete =
        warp::path!("v1" / "jobs" / String)
            .and(warp::delete())
            .and(with_state(state.clone()))
            .and(authorization())
            .and(query_pairs())
            .then(|id, state, auth, query| async move {
                respond(delete_job(state, auth, id, query).await)
            });
    let stem = warp::path!("v1" / "jobs" / String / "stems" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorization())
        .and(warp::header::optional::<String>("range"))
        .and(query_pairs())
        .then(|id, stem: String, state, auth, range, query| async move {
            respond(download_stem(state, auth, id, stem, range, query).await)
        });
    let events = warp::path!("v1" / "jobs" / String / "events")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorization())
        .and(query_pairs())
        .then(|id, state, auth, query: Vec<(String, String)>| async move {
            let result = match only_parameters(&query, &[]) {
                Ok(()) => crate::events::events(state, auth, id).await,
                Err(err) => Err(err),
            };
            respond(result)
        });
    let models = warp::path!("v1" / "models")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorization())
        .then(|state, auth| async move { respond(list_models(state, auth).await) });
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| json_response(StatusCode::OK, &json!({"status": "ok"})));
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_state(state.clone()))
        .then(|state| async move { respond(ready(state).await) });
    let openapi = warp::path!("openapi.json")
        .and(warp::get())
        .map(|| json_response(StatusCode::OK, &crate::openapi::openapi()));
    let metrics = warp::path!("metrics").and(warp::get()).map(|| {
        let mut response = observe::metrics::render().into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    });

    upload_multipart
        .or(upload_raw)
        .unify()
        .boxed()
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(delete)
        .unify()
        .or(stem)
        .unify()
        .or(events)
        .unify()
        .boxed()
        .or(models)
        .unify()
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(openapi)
        .unify()
        .or(metrics)
        .unify()
        .or(crate::legacy::routes(state))
        .unify()
        .recover(recover)
        .unify()
        .with(warp::log::custom(|info| {
            observe::metrics::http_request(
                route_label(info.method().as_str(), info.path()),
                info.method().as_str(),
                info.status().as_u16(),
                info.elapsed().as_secs_f64(),
            );
        }))
        .map(Reply::into_response)
        .boxed()
}

/// The answer to an accepted upload: the job, `Location` of its record.
pub(crate) fn accepted_response(accepted: &Accepted) -> Response {
    let mut response = json_response(accepted.status, &job_view(&accepted.job));
    if let Ok(location) = HeaderValue::from_str(&crate::view::job_path(&accepted.job)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(value) => {
            let key = value
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be ASCII"))?;
            upload::check_idempotency_key(key)?;
            Ok(Some(key.to_owned()))
        }
    }
}

/// 413 at once when the declared length is over the limit, before reading the body.
fn check_content_length(state: &IngestState, headers: &HeaderMap) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    match declared {
        Some(0) => Err(ApiError::new(ErrorCode::EmptyInput, "the upload is empty")),
        // Multipart framing adds a little; the stored file is still held to the limit.
        Some(length) if length > state.inner.max_input_bytes.saturating_add(64 * 1024) => {
            Err(upload::too_large(state.inner.max_input_bytes))
        }
        _ => Ok(()),
    }
}

/// The route template a request path matched (a metrics label: never the raw path, which
/// holds job ids).
pub(crate) fn route_label(method: &str, path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    crate::ROUTES
        .iter()
        .filter(|(route_method, _)| *route_method == method)
        .map(|(_, template)| *template)
        .find(|template| {
            let parts: Vec<&str> = template.trim_matches('/').split('/').collect();
            parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(part, segment)| part.starts_with('{') || part == segment)
        })
        .unwrap_or("other")
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

async fn upload_raw(
    state: IngestState,
    authorization: Option<String>,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    body: pipeline::traits::ByteStream,
) -> Result<Response, ApiError> {
    let tenant = tenant(&state, authorization).await?;
    let input = OptionInput::from_pairs(query)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match content_type.as_deref() {
        None | Some("application/octet-stream") => {}
        Some(audio) if audio.starts_with("audio/") => {}
        Some(multipart) if multipart.starts_with("multipart/") => {
            return Err(ApiError::bad_request(
                "multipart uploads must be multipart/form-data with a boundary",
            ));
        }
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!(
                    "Content-Type {other} is not accepted: send audio/* or application/octet-stream, or multipart/form-data with a file field"
                ),
            ));
        }
    }
    let options = input.build(&state)?;
    check_content_length(&state, &headers)?;
    let idempotency = idempotency_key(&headers)?;
    if let Some(accepted) = upload::replay(&state, &tenant, idempotency.as_deref()).await? {
        return Ok(accepted_response(&accepted));
    }
    let name = clean_source_name(input.filename());
    let stored = upload::store(&state, &tenant, options, name, body).await?;
    let accepted = upload::commit(&state, stored, idempotency.as_deref()).await?;
    Ok(accepted_response(&accepted))
}

async fn upload_multipart(
    state: IngestState,
    authorization: Option<String>,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    mut form: warp::multipart::FormData,
) -> Result<Response, ApiError> {
    let tenant = tenant(&state, authorization).await?;
    let mut input = OptionInput::from_pairs(query)?;
    input.build(&state)?;
    check_content_length(&state, &headers)?;
    let idempotency = idempotency_key(&headers)?;
    if let Some(accepted) = upload::replay(&state, &tenant, idempotency.as_deref()).await? {
        return Ok(accepted_response(&accepted));
    }
    let mut stored: Option<Stored> = None;
    let read = read_form(&state, &tenant, &mut input, &mut form, &mut stored).await;
    let stored = match (read, stored) {
        (Ok(()), Some(mut stored)) => match input.build(&state) {
            // Fields after the file part count too; they are checked before anything is queued.
            Ok(options) => {
                stored.job_mut().options = options;
                stored
            }
            Err(err) => {
                upload::discard(&state, stored).await;
                return Err(err);
            }
        },
        (Ok(()), None) => {
            return Err(ApiError::bad_request(
                "the multipart form has no file field",
            ));
        }
        (Err(err), stored) => {
            if let Some(stored) = stored {
                upload::discard(&state, stored).await;
            }
            return Err(err);
        }
    };
    let accepted = upload::commit(&state, stored, idempotency.as_deref()).await?;
    Ok(accepted_response(&accepted))
}

/// Reads the form's parts: option fields into `input`, the `file` part into storage.
async fn read_form(
    state: &IngestState,
    tenant: &str,
    input: &mut OptionInput,
    form: &mut warp::multipart::FormData,
    stored: &mut Option<Stored>,
) -> Result<(), ApiError> {
    while let Some(part) = form.next().await {
        let part =
            part.map_err(|err| ApiError::bad_request(format!("malformed multipart body: {err}")))?;
        let name = part.name().to_owned();
        if name == "file" {
            if stored.is_some() {
                return Err(ApiError::bad_request("only one file field is accepted"));
            }
            let options = input.build(state)?;
            let source_name = clean_source_name(part.filename().or(input.filename()));
            *stored = Some(
                upload::store(
                    state,
                    tenant,
                    options,
                    source_name,
                    byte_stream(part.stream()),
                )
                .await?,
            );
        } else {
            let value = collect_limited(byte_stream(part.stream()), MAX_FORM_FIELD)
                .await
                .map_err(|err| ApiError::bad_request(format!("malformed multipart body: {err}")))?
                .ok_or_else(|| ApiError::bad_request(format!("form field {name} is too long")))?;
            let value = String::from_utf8(value.to_vec())
                .map_err(|_| ApiError::bad_request(format!("form field {name} is not UTF-8")))?;
            input.add(&name, value)?;
        }
    }
    Ok(())
}

async fn list_jobs(
    state: IngestState,
    authorization: Option<String>,
    query: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    let tenant = tenant(&state, authorization).await?;
    only_parameters(&query, &["limit"])?;
    let limit = match query.iter().find(|(name, _)| name == "limit") {
        None => DEFAULT_LIST_LIMIT,
        Some((_, value)) => value
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=MAX_LIST_LIMIT).contains(limit))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit must be 1..={MAX_LIST_LIMIT}, got {value:?}"))
            })?,
    };
    let jobs = state.backends().jobs.list(&tenant, limit).await?;
    let views: Vec<Value> = jobs.iter().map(job_view).collect();
    Ok(json_response(StatusCode::OK, &json!({"jobs": views})))
}

async fn get_job(
    state: IngestState,
    authorization: Option<String>,
    id: String,
    query: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    let tenant = tenant(&state, authorization).await?;
    only_parameters(&query, &[])?;
    let job = state.job_of(&tenant, &id).await?;
    Ok(json_response(StatusCode::OK, &job_view(&job)))
}

async fn delete_job(
    state: IngestState,
    authorization: Option<String>,
    id: String,
    query: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    let tenant = tenant(&state, authorization).await?;
    only_parameters(&query, &[])?;
    let job = state.job_of(&tenant, &id).await?;
    remove_job(&state, &job).await?;
    Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
}

/// Cancels a running job, then deletes its objects and its record.
pub(crate) async fn remove_job(state: &IngestState, job: &Job) -> Result<(), ApiError> {
    let backends = state.backends();
    if !job.state.is_terminal() {
        pipeline::worker::cancel(backends, &job.id).await?;
    }
    for prefix in keys::prefixes(&job.id) {
        backends.store.delete_prefix(&prefix).await?;
    }
    backends.jobs.delete(&job.id).await?;
    tracing::info!(job = %job.id, "job deleted");
    Ok(())
}

async fn download_stem(
    state: IngestState,
    authorization: Option<String>,
    id: String,
    stem: String,
    range: Option<String>,
    query: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    let tenant = tenant(&state, authorization).await?;
    only_parameters(&query, &[])?;
    if !valid_stem_name(&stem) {
        return Err(ApiError::bad_request(format!(
            "invalid stem name {stem:?} (lower-case letters, digits and _)"
        )));
    }
    let job = state.job_of(&tenant, &id).await?;
    serve_stem(&state, &job, &stem, range.as_deref()).await
}

/// Streams a finished stem: `Content-Type` from its extension, a download name made of the
/// song's name and the stem, single byte ranges.
pub(crate) async fn serve_stem(
    state: &IngestState,
    job: &Job,
    stem: &str,
    range: Option<&str>,
) -> Result<Response, ApiError> {
    if job.state != JobState::Done {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "job {} is {}; its stems are ready when it is done",
                job.id, job.state
            ),
        ));
    }
    let Some(key) = job.results.get(stem) else {
        let known: Vec<&str> = job.results.keys().map(String::as_str).collect();
        return Err(ApiError::not_found(format!(
            "job {} has no stem {stem:?} (it has: {})",
            job.id,
            known.join(", ")
        )));
    };
    let store = &state.backends().store;
    let size = store
        .size(key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("stem {stem} of job {} is gone", job.id)))?;
    let extension = key.rsplit_once('.').map_or("", |(_, ext)| ext);
    let content_type = match extension {
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "mp3" => "audio/mpeg",
        _ => "application/octet-stream",
    };
    let span = match range {
        Some(range) => Some(parse_range(range, size).ok_or_else(|| {
            ApiError::bad_request(format!("unsatisfiable range {range:?} for {size} bytes"))
                .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
        })?),
        None => None,
    };
    let body = store.get_stream(key, span).await?;
    let mut response = warp::reply::stream(SyncStream::new(body)).into_response();
    let headers = response.headers_mut();
    let insert = |headers: &mut HeaderMap, name: header::HeaderName, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    insert(headers, header::CONTENT_TYPE, content_type.to_owned());
    insert(headers, header::ACCEPT_RANGES, "bytes".to_owned());
    insert(
        headers,
        header::CONTENT_DISPOSITION,
        format!(
            "attachment; filename=\"{}\"",
            download_name(&job.source_name, stem, extension)
        ),
    );
    match span {
        Some((start, end)) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let headers = response.headers_mut();
            insert(headers, header::CONTENT_LENGTH, (end - start).to_string());
            insert(
                headers,
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", end - 1),
            );
        }
        None => insert(
            response.headers_mut(),
            header::CONTENT_LENGTH,
            size.to_string(),
        ),
    }
    Ok(response)
}

/// `song - vocals.mp3` from `song.mp3`, in characters safe inside a quoted header value.
pub(crate) fn download_name(source_name: &str, stem: &str, extension: &str) -> String {
    let base = source_name
        .rsplit_once('.')
        .map_or(source_name, |(base, _)| base);
    let safe: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " ._()-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.trim();
    let base = if safe.is_empty() { "stems" } else { safe };
    format!("{base} - {stem}.{extension}")
}

/// One range of `bytes=a-b`, `bytes=a-` or `bytes=-n` as `start..end` (end exclusive).
fn parse_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let suffix: u64 = suffix.parse().ok()?;
            (size.saturating_sub(suffix), size)
        }
        (start, "") => (start.parse().ok()?, size),
        (start, end) => (
            start.parse().ok()?,
            end.parse::<u64>().ok()?.saturating_add(1).min(size),
        ),
    };
    (start < end).then_some((start, end))
}

async fn list_models(
    state: IngestState,
    authorization: Option<String>,
) -> Result<Response, ApiError> {
    tenant(&state, authorization).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"models": state.inner.models, "default": state.inner.default_model}),
    ))
}

async fn ready(state: IngestState) -> Result<Response, ApiError> {
    let backends = state.backends();
    let probe = async {
        backends.queue.depth(Stage::Decode).await?;
        backends.store.size("readyz/probe").await?;
        Ok::<(), pipeline::BackendError>(())
    };
    match tokio::time::timeout(READY_TIMEOUT, probe).await {
        Ok(Ok(())) => Ok(json_response(StatusCode::OK, &json!({"status": "ready"}))),
        Ok(Err(err)) => Err(ApiError::new(err.code(), format!("not ready: {err}"))
            .with_status(StatusCode::SERVICE_UNAVAILABLE)),
        Err(_) => Err(ApiError::new(
            ErrorCode::QueueUnavailable,
            "not ready: the backends did not answer in time",
        )
        .with_status(StatusCode::SERVICE_UNAVAILABLE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_templates() {
        assert_eq!(
            route_label("GET", "/v1/jobs/0b6c/stems/vocals"),
            "/v1/jobs/{id}/stems/{stem}"
        );
        assert_eq!(route_label("DELETE", "/v1/jobs/x"), "/v1/jobs/{id}");
        assert_eq!(route_label("POST", "/v1/jobs"), "/v1/jobs");
        assert_eq!(route_label("GET", "/nope"), "other");
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 100)));
        for bad in [
            "bytes=100-",
            "bytes=5-1",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=x-",
        ] {
            assert_eq!(parse_range(bad, 100), None, "{bad}");
        }
    }

    #[test]
    fn download_names_are_header_safe() {
        assert_eq!(
            download_name("My Song.mp3", "vocals", "wav"),
            "My Song - vocals.wav"
        );
        assert_eq!(
            download_name("a\"b;c.flac", "drums", "mp3"),
            "a_b_c - drums.mp3"
        );
        assert_eq!(download_name("", "bass", "wav"), "stems - bass.wav");
    }
}
