//! Accepting an upload: sniff, stream into storage under the size limit, then dedup /
//! idempotency, then queue. Nothing is queued for a refused upload, and a refused upload
//! leaves no object behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use pipeline::traits::ByteStream;
use pipeline::worker::{Enqueued, enqueue_new, store_source};
use pipeline::{ErrorCode, Job, JobOptions, JobState, job::keys};
use sha2::{Digest, Sha256};
use warp::http::StatusCode;

use crate::error::ApiError;
use crate::lease::{self, KeyLease};
use crate::sniff::{SNIFF_LEN, sniff};
use crate::state::IngestState;

/// Longest source name kept (it names the downloads).
const MAX_SOURCE_NAME: usize = 200;

/// A source stored but not yet queued, with the leases of its aliases (given back when it
/// is committed or discarded).
pub(crate) struct Stored {
    job: Job,
    bytes: u64,
    _lease: KeyLease,
}

/// What an accepted upload came to.
pub(crate) struct Accepted {
    /// 202 for a new job; 200 when an earlier job is returned (idempotency key, dedup).
    pub status: StatusCode,
    pub job: Job,
}

pub(crate) fn idempotency_alias(tenant: &str, key: &str) -> String {
    format!("idem:{tenant}:{key}")
}

/// The alias of the request's `Idempotency-Key` header, checked, as a list for [`replay`] and
/// [`commit`] (empty without the header).
pub(crate) fn idempotency_aliases(
    tenant: &str,
    headers: &warp::http::HeaderMap,
) -> Result<Vec<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(Vec::new()),
        Some(value) => {
            let key = value
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be ASCII"))?;
            check_idempotency_key(key)?;
            Ok(vec![idempotency_alias(tenant, key)])
        }
    }
}

/// Checks an `Idempotency-Key` header value: printable ASCII, at most 255 bytes.
pub(crate) fn check_idempotency_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "Idempotency-Key must be 1-255 printable ASCII characters",
        ));
    }
    Ok(())
}

/// The alias a legacy client's `songhash` binds (per tenant, like idempotency keys).
pub(crate) fn songhash_alias(tenant: &str, songhash: &str) -> String {
    format!("song:{tenant}:{songhash}")
}

/// The first job one of `aliases` (idempotency key, songhash) already names, if any still
/// exists: the request is answered with it and its body not stored again.
pub(crate) async fn replay(
    state: &IngestState,
    aliases: &[String],
) -> Result<Option<Accepted>, ApiError> {
    let backends = state.backends();
    for alias in aliases {
        if let Some(id) = backends.jobs.resolve_alias(alias).await?
            && let Some(job) = backends.jobs.get(&id).await?
        {
            return Ok(Some(Accepted {
                status: StatusCode::OK,
                job,
            }));
        }
    }
    Ok(None)
}

/// How an upload starts: [`replay_or_admit`] either answers it with an earlier job, or lets it
/// store its body holding the leases of its aliases.
pub(crate) enum Start {
    Replay(Box<Accepted>),
    Fresh(KeyLease),
}

/// Where every upload starts: the earlier job one of `aliases` names (answered without
/// storing the body again); else the aliases are leased ([`crate::lease`]: a request holding
/// one is waited for, and its job returned) and a new upload admitted under the tenant's caps
/// ([`crate::quota`]) — a replay is not a new upload and does not count against them.
pub(crate) async fn replay_or_admit(
    state: &IngestState,
    tenant: &str,
    aliases: &[String],
) -> Result<Start, ApiError> {
    // The wait looks for an earlier job first, so that look is not repeated here.
    let lease =
        match lease::take_or_wait(&state.backends().jobs, aliases, || replay(state, aliases))
            .await?
        {
            Ok(lease) => lease,
            Err(accepted) => return Ok(Start::Replay(Box::new(accepted))),
        };
    crate::quota::admit_upload(state, tenant).await?;
    Ok(Start::Fresh(lease))
}

/// `name` cut to something safe to show and to put in a download name.
pub(crate) fn clean_source_name(name: Option<&str>) -> String {
    let name = name
        .map(|name| name.rsplit(['/', '\\']).next().unwrap_or(name).trim())
        .filter(|name| !name.is_empty())
        .unwrap_or("upload");
    name.chars()
        .filter(|c| !c.is_control())
        .take(MAX_SOURCE_NAME)
        .collect()
}

/// Sniffs the body's first bytes and streams it to the job's source key under the size
/// limit. A non-audio body is refused before anything is stored.
pub(crate) async fn store(
    state: &IngestState,
    tenant: &str,
    options: JobOptions,
    source_name: String,
    mut body: ByteStream,
    lease: KeyLease,
) -> Result<Stored, ApiError> {
    let mut head = BytesMut::new();
    while head.len() < SNIFF_LEN {
        match body.next().await {
            Some(Ok(chunk)) => head.extend_from_slice(&chunk),
            Some(Err(err)) => {
                return Err(ApiError::bad_request(format!(
                    "the upload could not be read: {err}"
                )));
            }
            None => break,
        }
    }
    if head.is_empty() {
        return Err(ApiError::new(ErrorCode::EmptyInput, "the upload is empty"));
    }
    let Some(container) = sniff(&head) else {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the upload is not an audio file we can read (expected WAV, MP3, FLAC, Ogg, AIFF or M4A)",
        ));
    };
    let head_len = head.len() as u64;
    let limit = state.inner.max_input_bytes;
    if head_len > limit {
        return Err(too_large(limit));
    }
    let counted = Arc::new(AtomicU64::new(0));
    let body = {
        let counted = counted.clone();
        futures::stream::once(futures::future::ready(Ok::<Bytes, _>(head.freeze())))
            .chain(body)
            .inspect(move |chunk| {
                if let Ok(chunk) = chunk {
                    counted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            })
            .boxed()
    };
    let mut job = Job::new(tenant, source_name, options);
    match store_source(state.backends(), &mut job, body, Some(limit)).await {
        Ok(()) => {}
        Err(err) if err.code == ErrorCode::TooLarge => return Err(too_large(limit)),
        Err(err) => return Err(err.into()),
    }
    let bytes = counted.load(Ordering::Relaxed);
    tracing::Span::current().record("job", tracing::field::display(&job.id));
    tracing::debug!(job = %job.id, container, bytes, "upload stored");
    Ok(Stored {
        job,
        bytes,
        _lease: lease,
    })
}

pub(crate) fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the upload is larger than the limit of {limit} bytes"),
    )
}

/// Deletes a stored source that will not become a job.
pub(crate) async fn discard(state: &IngestState, stored: Stored) {
    let key = keys::source(&stored.job.id);
    if let Err(err) = state.backends().store.delete(&key).await {
        tracing::warn!(job = %stored.job.id, %err, "discarded upload not deleted");
    }
}

impl Stored {
    pub(crate) fn job_mut(&mut self) -> &mut Job {
        &mut self.job
    }
}

/// Hex SHA-256 of the options as JSON: the options part of a dedup fingerprint.
fn options_hash(options: &JobOptions) -> String {
    let json = serde_json::to_vec(options).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

/// Turns a stored source into a queued job, binding `aliases` to it in the same step, unless
/// one of them or (with `jobs.dedup`) the same bytes with the same options name an earlier
/// job: then the stored copy is deleted and the earlier job returned. Runs inside the upload span, whose
/// traceparent `enqueue_new` gives the job (one trace per job).
pub(crate) async fn commit(
    state: &IngestState,
    stored: Stored,
    aliases: &[String],
) -> Result<Accepted, ApiError> {
    let backends = state.backends();
    let job = &stored.job;

    if state.inner.dedup
        && let Some(sha) = &job.sha256
    {
        let alias = format!("dedup:{}:{sha}:{}", job.tenant, options_hash(&job.options));
        let earlier = match backends.jobs.resolve_alias(&alias).await {
            Ok(Some(id)) => backends.jobs.get(&id).await.ok().flatten(),
            Ok(None) => None,
            Err(err) => {
                discard(state, stored).await;
                return Err(err.into());
            }
        };
        match earlier {
            Some(earlier) if !matches!(earlier.state, JobState::Failed | JobState::Cancelled) => {
                for alias in aliases {
                    if let Err(err) = backends.jobs.bind_alias(alias, &earlier.id).await {
                        tracing::warn!(%err, "alias not bound to the deduplicated job");
                    }
                }
                tracing::info!(job = %earlier.id, "duplicate upload: earlier job returned");
                discard(state, stored).await;
                return Ok(Accepted {
                    status: StatusCode::OK,
                    job: earlier,
                });
            }
            _ => {
                // Bound to nothing (or to a failed job, which keeps the binding): the new
                // job becomes the one later duplicates get, where the store allows.
                if let Err(err) = backends.jobs.bind_alias(&alias, &job.id).await {
                    tracing::warn!(job = %job.id, %err, "dedup fingerprint not bound");
                }
            }
        }
    }

    let bytes = stored.bytes;
    match enqueue_new(backends, stored.job, aliases, None).await? {
        Enqueued::New(job) => {
            observe::metrics::upload_accepted(bytes);
            Ok(Accepted {
                status: StatusCode::ACCEPTED,
                job: *job,
            })
        }
        // A request with the same key got there first (its copy of the body is the one kept).
        Enqueued::Existing(earlier) => match backends.jobs.get(&earlier).await? {
            Some(job) => Ok(Accepted {
                status: StatusCode::OK,
                job,
            }),
            None => Err(ApiError::new(
                ErrorCode::Conflict,
                "the job this Idempotency-Key (or songhash) named was deleted meanwhile; retry",
            )),
        },
    }
}
