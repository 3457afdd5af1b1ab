//! `GET /v1/jobs/{id}/events`: server-sent events of one job. The job's current state comes
//! first (`snapshot`), then its transitions and progress until it ends (`done`, `failed`,
//! `cancelled`), then the stream closes. Events come from the event bus merged with a poll
//! of the record every second: the bus may drop events (it is best effort, and a process
//! without NATS never sees other processes' events), the record never lies.

use std::convert::Infallible;
use std::time::Duration;

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use pipeline::traits::{EventKind, EventStream, JobEvent};
use pipeline::{Job, JobState, job::now_ms};
use serde_json::{Value, json};
use warp::Reply;
use warp::reply::Response;
use warp::sse::Event;

use crate::body::SyncStream;
use crate::error::ApiError;
use crate::reply::tenant;
use crate::state::IngestState;
use crate::view::job_view;

/// How often the record is re-read.
const POLL: Duration = Duration::from_secs(1);
/// A comment line this often keeps proxies from closing an idle stream (and tells us when
/// the client went away).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(crate) async fn events(
    state: IngestState,
    authorization: Option<String>,
    id: String,
) -> Result<Response, ApiError> {
    let tenant = tenant(&state, authorization).await?;
    let job = state.job_of(&tenant, &id).await?;
    // Subscribe before reading the snapshot, so nothing falls between the two.
    let subscription = match state.backends().events.subscribe(Some(&job.id)).await {
        Ok(events) => Some(events),
        Err(err) => {
            tracing::warn!(job = %job.id, %err, "no event subscription; following the record only");
            None
        }
    };
    let job = state.job_of(&tenant, &id).await?;
    let (sender, receiver) = mpsc::channel::<Event>(16);
    tokio::spawn(follow(state, job, subscription, sender));
    let stream = SyncStream::new(receiver.map(Ok::<Event, Infallible>));
    Ok(warp::sse::reply(stream).into_response())
}

fn sse(kind: &str, data: &Value) -> Event {
    Event::default().event(kind).data(data.to_string())
}

fn transition(kind: &str, job: &Job, stage: Option<pipeline::Stage>, at_ms: u64) -> Event {
    sse(
        kind,
        &json!({"kind": kind, "job_id": job.id, "stage": stage, "at_ms": at_ms, "job": job_view(job)}),
    )
}

/// What a change seen by polling was, in the bus's words.
fn polled_kind(job: &Job) -> (&'static str, Option<pipeline::Stage>) {
    let stage = pipeline::Stage::ALL
        .into_iter()
        .find(|stage| stage.running_state() == job.state);
    match (job.state, stage) {
        (JobState::Done, _) => (EventKind::Done.as_str(), None),
        (JobState::Failed, _) => (EventKind::Failed.as_str(), None),
        (JobState::Cancelled, _) => (EventKind::Cancelled.as_str(), None),
        (_, Some(stage)) => {
            let finished = job
                .stages
                .get(&stage)
                .is_some_and(|times| times.finished_ms.is_some());
            let kind = if finished {
                EventKind::StageFinished
            } else {
                EventKind::StageStarted
            };
            (kind.as_str(), Some(stage))
        }
        (_, None) => (EventKind::Queued.as_str(), None),
    }
}

/// Whether `next` is newer than what the client has seen.
fn is_newer(seen: (u64, JobState), next: &Job) -> bool {
    next.updated_ms > seen.0 || (next.updated_ms == seen.0 && next.state != seen.1)
}

async fn follow(
    state: IngestState,
    job: Job,
    subscription: Option<EventStream>,
    mut sender: mpsc::Sender<Event>,
) {
    let id = job.id.clone();
    let mut seen = (job.updated_ms, job.state);
    if sender
        .send(transition("snapshot", &job, None, now_ms()))
        .await
        .is_err()
    {
        return;
    }
    if job.state.is_terminal() {
        let (kind, _) = polled_kind(&job);
        let _ = sender
            .send(transition(kind, &job, None, job.updated_ms))
            .await;
        return;
    }
    let mut bus = subscription;
    let mut poll = tokio::time::interval(POLL);
    poll.tick().await;
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.tick().await;
    let shutdown = state.inner.shutdown.clone();
    loop {
        let next_event = async {
            match bus.as_mut() {
                Some(events) => events.next().await,
                None => std::future::pending::<Option<JobEvent>>().await,
            }
        };
        let outgoing = tokio::select! {
            () = shutdown.cancelled() => return,
            event = next_event => match event {
                None => {
                    // The bus closed: the poll carries on alone.
                    bus = None;
                    continue;
                }
                Some(event) if event.kind == EventKind::Progress => match event.progress {
                    Some(progress) => sse(
                        EventKind::Progress.as_str(),
                        &json!({"kind": "progress", "job_id": id, "stage": event.stage, "progress": progress, "at_ms": event.at_ms}),
                    ),
                    None => continue,
                },
                Some(event) => match event.job {
                    Some(job) if is_newer(seen, &job) => {
                        seen = (job.updated_ms, job.state);
                        let outgoing = transition(event.kind.as_str(), &job, event.stage, event.at_ms);
                        if sender.send(outgoing).await.is_err() {
                            return;
                        }
                        if job.state.is_terminal() {
                            // The last stage's `stage_finished` already carries the final
                            // record, so the bus's own `done` would look old: end with it now.
                            let (terminal, _) = polled_kind(&job);
                            if terminal != event.kind.as_str() {
                                let _ = sender.send(transition(terminal, &job, None, event.at_ms)).await;
                            }
                            return;
                        }
                        continue;
                    }
                    _ => continue,
                },
            },
            _ = poll.tick() => match state.backends().jobs.get(&id).await {
                Ok(Some(job)) if is_newer(seen, &job) => {
                    seen = (job.updated_ms, job.state);
                    let (kind, stage) = polled_kind(&job);
                    let done = job.state.is_terminal();
                    if sender.send(transition(kind, &job, stage, job.updated_ms)).await.is_err() || done {
                        return;
                    }
                    continue;
                }
                Ok(Some(_)) => continue,
                Ok(None) => {
                    let _ = sender
                        .send(sse("deleted", &json!({"kind": "deleted", "job_id": id})))
                        .await;
                    return;
                }
                Err(err) => {
                    tracing::debug!(job = %id, %err, "record poll failed");
                    continue;
                }
            },
            _ = keep_alive.tick() => Event::default().comment("keep-alive"),
        };
        if sender.send(outgoing).await.is_err() {
            return;
        }
    }
}
