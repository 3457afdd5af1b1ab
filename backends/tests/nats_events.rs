//! `NatsEvents` against a real NATS server on loopback (`tools/dev-services start`;
//! `MSAAS_TEST_NATS_URL` overrides the URL). Subjects are checked with a plain async-nats
//! subscriber, as any outside client would see them. Job ids are random, so tests running at
//! the same time (or other users of the server) do not see each other's events.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

use std::time::Duration;

use backends::NatsEvents;
use futures::StreamExt;
use pipeline::ErrorCode;
use pipeline::job::{JobId, Stage};
use pipeline::traits::{EventBus, EventKind, EventStream, JobEvent, Progress};

/// How long to wait for an event that must arrive (a guard against hanging, not a timing
/// assertion).
const ARRIVES: Duration = Duration::from_secs(10);

fn nats_url() -> String {
    std::env::var("MSAAS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

async fn connect() -> NatsEvents {
    NatsEvents::connect(&nats_url())
        .await
        .unwrap_or_else(|err| {
            panic!(
                "no NATS server at {} ({err}); start one with `tools/dev-services start` or set \
             MSAAS_TEST_NATS_URL",
                nats_url()
            )
        })
}

async fn raw_client() -> async_nats::Client {
    async_nats::connect(nats_url()).await.unwrap()
}

/// Waits until the server has processed `client`'s earlier operations (its subscriptions):
/// a message to its own inbox comes back only after them.
async fn round_trip(client: &async_nats::Client) {
    let inbox = client.new_inbox();
    let mut probe = client.subscribe(inbox.clone()).await.unwrap();
    client.publish(inbox, "".into()).await.unwrap();
    tokio::time::timeout(ARRIVES, probe.next())
        .await
        .expect("no round trip")
        .unwrap();
}

fn event(job: &JobId, kind: EventKind) -> JobEvent {
    JobEvent {
        kind,
        job_id: job.clone(),
        stage: Some(Stage::Separate),
        progress: (kind == EventKind::Progress).then_some(Progress { done: 3, total: 8 }),
        job: None,
        at_ms: 1_700_000_000_000,
    }
}

async fn next_event(events: &mut EventStream) -> JobEvent {
    tokio::time::timeout(ARRIVES, events.next())
        .await
        .expect("no event arrived")
        .expect("the event stream ended")
}

/// Next event of `events` that belongs to one of `jobs` (a `msaas.jobs.>` subscriber also
/// sees other tests' jobs).
async fn next_event_of(events: &mut EventStream, jobs: &[&JobId]) -> JobEvent {
    loop {
        let event = next_event(events).await;
        if jobs.contains(&&event.job_id) {
            return event;
        }
    }
}

#[tokio::test]
async fn events_go_out_on_per_job_subjects_as_json() {
    let bus = connect().await;
    let raw = raw_client().await;
    let job = JobId::new_random();
    let mut raw_messages = raw.subscribe(format!("msaas.jobs.{job}.>")).await.unwrap();
    round_trip(&raw).await;

    let sent = [
        event(&job, EventKind::Queued),
        event(&job, EventKind::StageStarted),
        event(&job, EventKind::Progress),
        event(&job, EventKind::Done),
    ];
    for event in &sent {
        bus.publish(event).await.unwrap();
    }
    bus.flush().await.unwrap();
    for expected in &sent {
        let message = tokio::time::timeout(ARRIVES, raw_messages.next())
            .await
            .unwrap_or_else(|_| panic!("no message for {:?}", expected.kind))
            .unwrap();
        assert_eq!(
            message.subject.as_str(),
            format!("msaas.jobs.{job}.{}", expected.kind.as_str())
        );
        let decoded: JobEvent = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(&decoded, expected);
        let json: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(json["job_id"], job.as_str());
    }
}

#[tokio::test]
async fn subscribers_get_one_job_or_all_jobs() {
    let bus = connect().await;
    let (a, b) = (JobId::new_random(), JobId::new_random());
    let mut only_a = bus.subscribe(Some(&a)).await.unwrap();
    let mut all = bus.subscribe(None).await.unwrap();
    // Another connection publishes, as another pod would.
    let publisher = connect().await;
    publisher
        .publish(&event(&b, EventKind::Queued))
        .await
        .unwrap();
    publisher
        .publish(&event(&a, EventKind::Queued))
        .await
        .unwrap();
    publisher
        .publish(&event(&b, EventKind::Failed))
        .await
        .unwrap();
    publisher
        .publish(&event(&a, EventKind::Done))
        .await
        .unwrap();
    publisher.flush().await.unwrap();

    let first = next_event(&mut only_a).await;
    let second = next_event(&mut only_a).await;
    assert_eq!(
        [(first.job_id, first.kind), (second.job_id, second.kind)],
        [(a.clone(), EventKind::Queued), (a.clone(), EventKind::Done)]
    );
    let mut seen = Vec::new();
    for _ in 0..4 {
        let event = next_event_of(&mut all, &[&a, &b]).await;
        seen.push((event.job_id, event.kind));
    }
    assert_eq!(
        seen,
        vec![
            (b.clone(), EventKind::Queued),
            (a.clone(), EventKind::Queued),
            (b.clone(), EventKind::Failed),
            (a.clone(), EventKind::Done),
        ]
    );
    // Nothing of b reaches a's subscriber.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), only_a.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn undecodable_messages_on_job_subjects_are_skipped() {
    let bus = connect().await;
    let raw = raw_client().await;
    let job = JobId::new_random();
    // `subscribe` returns once the server has the subscription.
    let mut events = bus.subscribe(Some(&job)).await.unwrap();
    raw.publish(format!("msaas.jobs.{job}.queued"), "not json".into())
        .await
        .unwrap();
    raw.publish(
        format!("msaas.jobs.{job}.queued"),
        "{\"kind\":\"nope\"}".into(),
    )
    .await
    .unwrap();
    let good = serde_json::to_vec(&event(&job, EventKind::Cancelled)).unwrap();
    raw.publish(format!("msaas.jobs.{job}.cancelled"), good.into())
        .await
        .unwrap();
    raw.flush().await.unwrap();
    let received = next_event(&mut events).await;
    assert_eq!(received.kind, EventKind::Cancelled);
    assert_eq!(received.job_id, job);
}

#[tokio::test]
async fn no_server_is_an_events_unavailable_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("nats://127.0.0.1:{port}");
    let connecting = NatsEvents::connect(&url);
    let err = tokio::time::timeout(Duration::from_secs(20), connecting)
        .await
        .expect("connect hung")
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::EventsUnavailable);
    assert!(err.to_string().contains(&port.to_string()), "{err}");

    let err = NatsEvents::connect("not a url").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::EventsUnavailable);
}
