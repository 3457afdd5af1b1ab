//! The `/v1` routes, the health routes and the filter that joins every route.

use std::time::Duration;

use futures::StreamExt;
use pipeline::{ErrorCode, Stage};
use serde_json::{Value, json};
use tracing::Instrument;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::body::{byte_stream, collect_limited};
use crate::error::ApiError;
use crate::lease::KeyLease;
use crate::options::{OptionInput, valid_stem_name};
use crate::reply::{
    accepted_response, authorization, count_upload, json_response, no_parameters, only_parameters,
    query_pairs, respond, tenant, upload_span, with_state,
};
use crate::state::IngestState;
use crate::stems::{remove_job, serve_stem};
use crate::upload::{self, Start, Stored, clean_source_name};
use crate::view::job_view;

/// Default and largest `limit` of `GET /v1/jobs`.
const DEFAULT_LIST_LIMIT: usize = 50;
const MAX_LIST_LIMIT: usize = 1000;
/// Longest non-file multipart field.
const MAX_FORM_FIELD: u64 = 4096;
/// How long `/readyz` waits for the backends.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// The `/v1` routes and the operational ones (health, readiness, OpenAPI, metrics).
pub(crate) fn routes(state: IngestState) -> BoxedFilter<(Response,)> {
    let upload_multipart = warp::path!("v1" / "jobs")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authorization())
        .and(query_pairs())
        .and(warp::header::headers_cloned())
        .and(form_data_only())
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
        .and(no_parameters())
        .then(|state, auth, query: Result<(), ApiError>| async move {
            respond(match query {
                Ok(()) => list_models(state, auth).await,
                Err(err) => Err(err),
            })
        });
    // The web UI. The replaced service answered `/` with a page load balancers probed; `/`
    // still answers 200 without auth.
    let index = warp::path::end().and(warp::get()).map(crate::web::index);
    let ui = warp::path!("ui" / String)
        .and(warp::get())
        .map(|file: String| respond(crate::web::asset(&file)));
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
        .or(index)
        .unify()
        .or(ui)
        .unify()
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(openapi)
        .unify()
        .or(metrics)
        .unify()
        .boxed()
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
    let aliases = upload::idempotency_aliases(&tenant, &headers)?;
    let lease = match upload::replay_or_admit(&state, &tenant, &aliases).await? {
        Start::Replay(accepted) => return Ok(accepted_response(&accepted)),
        Start::Fresh(lease) => lease,
    };
    let name = clean_source_name(input.filename());
    let stored = upload::store(&state, &tenant, options, name, body, lease).await?;
    let accepted = upload::commit(&state, stored, &aliases).await?;
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
    let aliases = upload::idempotency_aliases(&tenant, &headers)?;
    let lease = match upload::replay_or_admit(&state, &tenant, &aliases).await? {
        Start::Replay(accepted) => return Ok(accepted_response(&accepted)),
        Start::Fresh(lease) => lease,
    };
    let mut stored: Option<Stored> = None;
    let read = read_form(&state, &tenant, &mut input, &mut form, &mut stored, lease).await;
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
    let accepted = upload::commit(&state, stored, &aliases).await?;
    Ok(accepted_response(&accepted))
}

/// Reads the form's parts: option fields into `input`, the `file` part into storage.
async fn read_form(
    state: &IngestState,
    tenant: &str,
    input: &mut OptionInput,
    form: &mut warp::multipart::FormData,
    stored: &mut Option<Stored>,
    lease: KeyLease,
) -> Result<(), ApiError> {
    // Goes with the one file part into its stored upload.
    let mut lease = Some(lease);
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
                    lease.take().unwrap_or_default(),
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

/// Passes only `multipart/form-data` bodies on to warp's form parser, which takes any
/// Content-Type with a `boundary` (`multipart/mixed`, even `audio/wav; boundary=x`); everything
/// else goes to the raw upload route, which refuses other multipart types by name.
fn form_data_only() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and_then(|content_type: Option<String>| async move {
            let essence = content_type
                .as_deref()
                .and_then(|value| value.split(';').next())
                .map(|essence| essence.trim().to_ascii_lowercase());
            if essence.as_deref() == Some("multipart/form-data") {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
}
