//! `GET /v1/jobs/{id}/events`: snapshot first, then the transitions, ending at the terminal
//! state — from the event bus, and from polling the record when the bus delivers nothing.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use pipeline::JobId;
use pipeline::traits::{BackendError, EventBus, EventStream, JobEvent};

fn position(state: &str) -> u8 {
    match state {
        "queued" => 0,
        "decoding" => 1,
        "separating" => 2,
        "encoding" => 3,
        _ => 4,
    }
}

async fn follow_a_job(server: &Server) -> Vec<(String, serde_json::Value)> {
    let (status, job) = upload(server, "?model=duo", wav_body(1000)).await;
    assert_eq!(status, 202);
    let id = job["id"].as_str().unwrap().to_owned();
    let response = server
        .client
        .get(server.url(&format!("/v1/jobs/{id}/events")))
        .header("authorization", bearer(ACME_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let events = read_events(response, || async { server.run_workers() }).await;
    for (_, data) in &events {
        assert_eq!(data["job_id"], id.as_str());
    }
    events
}

fn check_sequence(events: &[(String, serde_json::Value)]) {
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names.first(), Some(&"snapshot"), "{names:?}");
    assert_eq!(events[0].1["job"]["state"], "queued");
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    assert_eq!(events.last().unwrap().1["job"]["state"], "done");
    // States never go back.
    let states: Vec<u8> = events
        .iter()
        .filter_map(|(_, data)| data["job"]["state"].as_str())
        .map(position)
        .collect();
    assert!(states.windows(2).all(|w| w[0] <= w[1]), "{names:?}");
}

#[tokio::test]
async fn events_follow_the_bus_to_the_end() {
    let server = start().await;
    let events = follow_a_job(&server).await;
    check_sequence(&events);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    for expected in ["stage_started", "stage_finished", "progress"] {
        assert!(names.contains(&expected), "{expected} missing in {names:?}");
    }
    let progress = events.iter().find(|(name, _)| name == "progress").unwrap();
    assert_eq!(progress.1["stage"], "separate");
    assert_eq!(progress.1["progress"]["total"], 2);
    server.stop().await;
}

/// A bus that accepts events and never delivers any (another process's events without NATS).
struct DeafBus;

#[async_trait]
impl EventBus for DeafBus {
    async fn publish(&self, _event: &JobEvent) -> Result<(), BackendError> {
        Ok(())
    }

    async fn subscribe(&self, _job: Option<&JobId>) -> Result<EventStream, BackendError> {
        Ok(Box::pin(futures::stream::pending()))
    }
}

#[tokio::test]
async fn events_follow_the_record_when_the_bus_is_silent() {
    let server = start_with(Options {
        events: Some(Arc::new(DeafBus)),
        ..Options::default()
    })
    .await;
    let events = follow_a_job(&server).await;
    check_sequence(&events);
    server.stop().await;
}

#[tokio::test]
async fn events_of_a_finished_job_end_at_once() {
    let server = start().await;
    server.run_workers();
    let (_, job) = upload(&server, "", wav_body(1000)).await;
    let id = job["id"].as_str().unwrap();
    server.wait_terminal(id).await;
    let response = server
        .client
        .get(server.url(&format!("/v1/jobs/{id}/events")))
        .header("authorization", bearer(ACME_KEY))
        .send()
        .await
        .unwrap();
    let events = read_events(response, || async {}).await;
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["snapshot", "done"]);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_event_streams() {
    let server = start().await;
    let (_, job) = upload(&server, "", wav_body(1000)).await;
    let id = job["id"].as_str().unwrap();
    let response = server
        .client
        .get(server.url(&format!("/v1/jobs/{id}/events")))
        .header("authorization", bearer(ACME_KEY))
        .send()
        .await
        .unwrap();
    let shutdown = server.shutdown.clone();
    let events = read_events(response, || async move { shutdown.cancel() }).await;
    assert_eq!(events[0].0, "snapshot");
    server.stop().await;
}
