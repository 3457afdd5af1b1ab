//! A job's stored objects as the API hands them out: a finished stem streamed with its
//! type, name and byte ranges, and a job removed with everything it stored. Shared by the
//! `/v1` and the legacy routes.

use pipeline::{ErrorCode, Job, JobState, job::keys};
use warp::Reply;
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::Response;

use crate::body::SyncStream;
use crate::error::ApiError;
use crate::state::IngestState;

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

#[cfg(test)]
mod tests {
    use super::*;

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
