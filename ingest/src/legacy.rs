//! The routes of the service MSaaS replaces, kept for its clients:
//! - `POST /apiv1/separate` — JSON `{"mp3": "<base64 audio>", "model"?: str, "songhash"?: str,
//!   "callback"?: {"url": str, "data": {...}} | "<url>"}` → `200 {"hash", "status", "reason"}`:
//!   `hash` is the client's `songhash` when it sent one, else the job id. A second upload with a
//!   songhash the tenant already uses is answered with that job (200, its status), as an
//!   idempotent replay: its body is not stored again. Remove the job (`/apiv1/remove/<hash>/all`)
//!   to separate it anew. When the job ends, the callback URL gets the job JSON plus `data` (what
//!   the client sent), `hash` and `status`;
//! - `GET /apiv1/queue` — `{"queue": [ids of unfinished jobs], "jobs": [{"hash", "status", "model", "tracks"}]}`;
//! - `GET /apiv1/track/{hash}/{track}` — the stem file (`track` = stem name, with or without
//!   extension; `hash` = songhash or job id);
//! - `GET|DELETE /apiv1/remove/{hash}/{track}` — deletes one stem, or the whole job for `all`.
//!
//! Same authentication, same JSON errors, same tenant isolation as `/v1`.

mod json_body;

use serde::Deserialize;
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::body::byte_stream;
use crate::error::ApiError;
use crate::options::{OptionInput, valid_stem_name};
use crate::reply::{
    authorization, count_upload, json_response, no_parameters, respond, tenant, upload_span,
};
use crate::state::IngestState;
use crate::stems::{remove_job, serve_stem};
use crate::upload::{self, clean_source_name};
use json_body::BodyError;
use tracing::Instrument;

/// The fields of the body other than the audio (`mp3`, read as it streams).
#[derive(Debug, Deserialize)]
struct SeparateFields {
    /// Only here when it is not a string (refused; `null` is taken as absent).
    #[serde(default)]
    mp3: Option<serde_json::Value>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    callback: Option<LegacyCallback>,
    /// The client's handle for the song.
    #[serde(default)]
    songhash: Option<String>,
    /// Name of the song (optional; some clients sent it).
    #[serde(default)]
    name: Option<String>,
}

/// The callback as the old service documented it (an object), or a bare URL.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum LegacyCallback {
    Url(String),
    Object {
        url: String,
        #[serde(default)]
        data: Option<serde_json::Value>,
    },
}

/// Longest `callback.data`, serialized: it is kept in the job record.
const MAX_CALLBACK_DATA: usize = 16 * 1024;

/// A songhash names keys and URL paths: 1-128 of letters, digits, `_`, `-`, `.` (not only dots).
fn check_songhash(songhash: &str) -> Result<(), ApiError> {
    let valid = (1..=128).contains(&songhash.len())
        && songhash
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && songhash.bytes().any(|b| b != b'.');
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid_option(
            "songhash must be 1-128 letters, digits, '_', '-' or '.'",
        ))
    }
}

pub(crate) fn routes(state: IngestState) -> BoxedFilter<(Response,)> {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let separate = warp::path!("apiv1" / "separate")
        .and(warp::post())
        .and(with_state.clone())
        .and(authorization())
        .and(no_parameters())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            |state, auth, query: Result<(), ApiError>, headers: warp::http::HeaderMap, body| async move {
                let span = upload_span(&headers, "/apiv1/separate");
                let result = match query {
                    Ok(()) => {
                        separate(state, auth, headers, byte_stream(body))
                            .instrument(span)
                            .await
                    }
                    Err(err) => Err(err),
                };
                count_upload(&result);
                respond(result)
            },
        );
    let queue = warp::path!("apiv1" / "queue")
        .and(warp::get())
        .and(with_state.clone())
        .and(authorization())
        .and(no_parameters())
        .then(|state, auth, query: Result<(), ApiError>| async move {
            respond(match query {
                Ok(()) => queue(state, auth).await,
                Err(err) => Err(err),
            })
        });
    let track = warp::path!("apiv1" / "track" / String / String)
        .and(warp::get())
        .and(with_state.clone())
        .and(authorization())
        .and(warp::header::optional::<String>("range"))
        .and(no_parameters())
        .then(
            |hash, track, state, auth, range, query: Result<(), ApiError>| async move {
                respond(match query {
                    Ok(()) => track_file(state, auth, hash, track, range).await,
                    Err(err) => Err(err),
                })
            },
        );
    let remove = warp::path!("apiv1" / "remove" / String / String)
        .and(warp::get().or(warp::delete()).unify())
        .and(with_state)
        .and(authorization())
        .and(no_parameters())
        .then(
            |hash, track, state, auth, query: Result<(), ApiError>| async move {
                respond(match query {
                    Ok(()) => remove(state, auth, hash, track).await,
                    Err(err) => Err(err),
                })
            },
        );
    separate
        .or(queue)
        .unify()
        .or(track)
        .unify()
        .or(remove)
        .unify()
        .boxed()
}

async fn separate(
    state: IngestState,
    authorization: Option<String>,
    headers: warp::http::HeaderMap,
    body: pipeline::traits::ByteStream,
) -> Result<Response, ApiError> {
    let tenant = tenant(&state, authorization).await?;
    let max_input = state.inner.max_input_bytes;
    // Base64 is 4/3 of the audio, plus the JSON around it.
    let limit = max_input.saturating_mul(4) / 3 + json_body::MAX_OTHER_FIELDS as u64 + 1024;
    let declared = headers
        .get(warp::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(upload::too_large(max_input));
    }
    let header_aliases = upload::idempotency_aliases(&tenant, &headers)?;
    let (state, tenant, header_aliases) = (&state, tenant.as_str(), header_aliases.as_slice());

    // The fields before `mp3` are checked before anything is stored; the song streams into
    // the store while the body is read.
    let on_audio = |fields, audio| async move {
        let prepared = match prepare(state, tenant, header_aliases, fields) {
            Ok(prepared) => prepared,
            Err(err) => return AudioOutcome::Refused(err),
        };
        let lease = match upload::replay_or_admit(state, tenant, &prepared.aliases).await {
            Ok(upload::Start::Replay(accepted)) => return AudioOutcome::Replayed(*accepted),
            Ok(upload::Start::Fresh(lease)) => lease,
            Err(err) => return AudioOutcome::Refused(err),
        };
        let checked_aliases = prepared.aliases;
        match upload::store(state, tenant, prepared.options, prepared.name, audio, lease).await {
            Ok(stored) => AudioOutcome::Stored(stored, checked_aliases),
            Err(err) => AudioOutcome::Refused(err),
        }
    };
    let (fields, outcome) = match json_body::read(body, limit, on_audio).await {
        (Ok(fields), outcome) => (fields, outcome),
        (Err(BodyError::Abandoned), Some(AudioOutcome::Refused(refusal))) => return Err(refusal),
        (Err(BodyError::Abandoned), Some(AudioOutcome::Replayed(accepted))) => {
            return Ok(separate_response(&accepted.job));
        }
        (Err(err), outcome) => {
            if let Some(AudioOutcome::Stored(stored, _)) = outcome {
                upload::discard(state, stored).await;
            }
            return Err(body_error(err, max_input));
        }
    };
    let prepared = prepare(state, tenant, header_aliases, fields);
    match outcome {
        None => {
            prepared?;
            Err(ApiError::bad_request(
                "the JSON has no \"mp3\" field (base64 audio)",
            ))
        }
        // Read to its end: a bad field is the answer, as when the fields came first.
        Some(AudioOutcome::Refused(err)) => {
            prepared?;
            Err(err)
        }
        Some(AudioOutcome::Replayed(accepted)) => Ok(separate_response(&accepted.job)),
        Some(AudioOutcome::Stored(stored, checked_aliases)) => {
            commit_stored(state, stored, prepared, &checked_aliases).await
        }
    }
}

/// Queues a stored song once the whole body is read: the fields after `mp3` count too (a
/// bad one, or a songhash naming an earlier job, and the stored copy is deleted). Aliases
/// already looked up before the song was stored are not looked up again.
async fn commit_stored(
    state: &IngestState,
    mut stored: upload::Stored,
    prepared: Result<Prepared, ApiError>,
    checked_aliases: &[String],
) -> Result<Response, ApiError> {
    let checked = match prepared {
        Ok(prepared) if prepared.aliases == checked_aliases => Ok((prepared, None)),
        Ok(prepared) => upload::replay(state, &prepared.aliases)
            .await
            .map(|earlier| (prepared, earlier)),
        Err(err) => Err(err),
    };
    let prepared = match checked {
        Ok((prepared, None)) => prepared,
        Ok((_, Some(earlier))) => {
            upload::discard(state, stored).await;
            return Ok(separate_response(&earlier.job));
        }
        Err(err) => {
            upload::discard(state, stored).await;
            return Err(err);
        }
    };
    let job = stored.job_mut();
    job.options = prepared.options;
    job.source_name = prepared.name;
    let accepted = upload::commit(state, stored, &prepared.aliases).await?;
    Ok(separate_response(&accepted.job))
}

/// What became of the song while the body was read.
enum AudioOutcome {
    /// With the aliases looked up before it was stored.
    Stored(upload::Stored, Vec<String>),
    /// A songhash (or Idempotency-Key) among the fields before `mp3` names an earlier job.
    Replayed(upload::Accepted),
    Refused(ApiError),
}

/// What a legacy upload's fields ask for, checked.
struct Prepared {
    options: pipeline::JobOptions,
    aliases: Vec<String>,
    name: String,
}

fn prepare(
    state: &IngestState,
    tenant: &str,
    header_aliases: &[String],
    fields: serde_json::Map<String, serde_json::Value>,
) -> Result<Prepared, ApiError> {
    let request: SeparateFields = serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|err| {
            ApiError::bad_request(format!("the body is not the expected JSON: {err}"))
        })?;
    if request.mp3.as_ref().is_some_and(|mp3| !mp3.is_null()) {
        return Err(ApiError::bad_request(
            "\"mp3\" must be a string of base64 audio",
        ));
    }
    let mut input = OptionInput::default();
    if let Some(model) = request.model {
        input.add("model", model)?;
    }
    let callback_data = match request.callback {
        None => None,
        Some(LegacyCallback::Url(url)) => {
            input.add("callback_url", url)?;
            None
        }
        Some(LegacyCallback::Object { url, data }) => {
            input.add("callback_url", url)?;
            let size = data.as_ref().map_or(0, |d| d.to_string().len());
            if size > MAX_CALLBACK_DATA {
                return Err(ApiError::invalid_option(format!(
                    "callback.data is {size} bytes as JSON; at most {MAX_CALLBACK_DATA}"
                )));
            }
            Some(data.unwrap_or(serde_json::Value::Null))
        }
    };
    let mut options = input.build(state)?;
    options.callback_data = callback_data;
    let mut aliases = header_aliases.to_vec();
    if let Some(songhash) = request.songhash {
        check_songhash(&songhash)?;
        aliases.push(upload::songhash_alias(tenant, &songhash));
        options.songhash = Some(songhash);
    }
    let name = clean_source_name(request.name.as_deref().or(Some("song.mp3")));
    Ok(Prepared {
        options,
        aliases,
        name,
    })
}

fn body_error(err: BodyError, max_input: u64) -> ApiError {
    match err {
        BodyError::Malformed(message) => ApiError::bad_request(message),
        BodyError::TooLarge => upload::too_large(max_input),
        BodyError::Read(_) => ApiError::bad_request(err.to_string()),
        BodyError::Abandoned => ApiError::new(pipeline::ErrorCode::Internal, err.to_string()),
    }
}

fn separate_response(job: &pipeline::Job) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "hash": handle(job),
            "status": job.state,
            "model": job.options.model,
            "reason": "Song enqueued for separation",
        }),
    )
}

async fn queue(state: IngestState, authorization: Option<String>) -> Result<Response, ApiError> {
    let tenant = tenant(&state, authorization).await?;
    let jobs = state.backends().jobs.list(&tenant, 1000).await?;
    let waiting: Vec<String> = jobs
        .iter()
        .filter(|job| !job.state.is_terminal())
        .map(handle)
        .collect();
    let all: Vec<serde_json::Value> = jobs
        .iter()
        .map(|job| {
            json!({
                "hash": handle(job),
                "status": job.state,
                "model": job.options.model,
                "tracks": job.results.keys().collect::<Vec<_>>(),
                "error": job.error,
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"queue": waiting, "jobs": all}),
    ))
}

/// `vocals` from `vocals` or `vocals.mp3`.
fn track_stem(track: &str) -> Result<&str, ApiError> {
    let stem = track.split_once('.').map_or(track, |(stem, _)| stem);
    if valid_stem_name(stem) {
        Ok(stem)
    } else {
        Err(ApiError::bad_request(format!(
            "invalid track name {track:?}"
        )))
    }
}

async fn track_file(
    state: IngestState,
    authorization: Option<String>,
    hash: String,
    track: String,
    range: Option<String>,
) -> Result<Response, ApiError> {
    let tenant = tenant(&state, authorization).await?;
    let stem = track_stem(&track)?;
    let job = job_by_hash(&state, &tenant, &hash).await?;
    serve_stem(&state, &job, stem, range.as_deref()).await
}

async fn remove(
    state: IngestState,
    authorization: Option<String>,
    hash: String,
    track: String,
) -> Result<Response, ApiError> {
    let tenant = tenant(&state, authorization).await?;
    let stem = track_stem(&track)?;
    let job = job_by_hash(&state, &tenant, &hash).await?;
    if stem == "all" {
        remove_job(&state, &job).await?;
        return Ok(json_response(
            StatusCode::OK,
            &json!({"hash": handle(&job), "removed": "all"}),
        ));
    }
    let Some(key) = job.results.get(stem).cloned() else {
        return Err(ApiError::not_found(format!(
            "job {} has no track {stem:?}",
            job.id
        )));
    };
    let backends = state.backends();
    let mut next = job.clone();
    next.results.remove(stem);
    next.updated_ms = pipeline::job::now_ms();
    backends
        .jobs
        .compare_and_set(job.state, job.attempt, &next)
        .await?;
    backends.store.delete(&key).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"hash": handle(&job), "removed": stem}),
    ))
}

/// What the legacy API calls a job: the client's songhash, else the job id.
fn handle(job: &pipeline::Job) -> String {
    job.options
        .songhash
        .clone()
        .unwrap_or_else(|| job.id.to_string())
}

/// The tenant's job a legacy `hash` names: its songhash first, else its id.
async fn job_by_hash(
    state: &IngestState,
    tenant: &str,
    hash: &str,
) -> Result<pipeline::Job, ApiError> {
    if check_songhash(hash).is_ok()
        && let Some(id) = state
            .backends()
            .jobs
            .resolve_alias(&upload::songhash_alias(tenant, hash))
            .await?
    {
        return state.job_of(tenant, id.as_str()).await;
    }
    state.job_of(tenant, hash).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_name_stems() {
        assert_eq!(track_stem("vocals.mp3").unwrap(), "vocals");
        assert_eq!(track_stem("drums").unwrap(), "drums");
        assert!(track_stem("../x").is_err());
    }
}
