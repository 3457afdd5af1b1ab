//! The metrics move when jobs run through an embedded pipeline with `MetricsHook`, and the
//! worker roles' listener serves them over HTTP. The registry is per process and the tests
//! of this file share it, so each asserts on differences (or on series only it touches).

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod embedded_pipeline;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use embedded_pipeline::{BAD_INPUT_MODEL, FLAKY_MODEL, HELD_MODEL, MODEL, Pipeline, sample};
use pipeline::JobState;
use pipeline::telemetry::spawn_queue_poller;
use tokio_util::sync::CancellationToken;

fn scrape() -> String {
    observe::metrics::render()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_moves_job_stage_and_model_series() {
    let pipeline = Pipeline::start();
    let before = scrape();
    let job = pipeline.run(MODEL, None).await;
    assert_eq!(job.state, JobState::Done, "{job:?}");
    // The record turns done before the `done` event (and its hook) goes out: wait for it.
    let done_before = sample(&before, "msaas_jobs_total", &[("state", "done")]);
    wait_for(|| sample(&scrape(), "msaas_jobs_total", &[("state", "done")]) >= done_before + 1.0)
        .await;
    let after = scrape();
    let moved = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };

    for stage in ["decode", "separate", "encode"] {
        assert!(
            moved("msaas_stage_attempts_total", &[("stage", stage)]) >= 1.0,
            "attempts of {stage}: {after}"
        );
        assert!(
            moved("msaas_stage_duration_seconds_count", &[("stage", stage)]) >= 1.0,
            "duration of {stage}: {after}"
        );
        // The 30-minute bucket holds every run of these trivial stages.
        assert!(
            moved(
                "msaas_stage_duration_seconds_bucket",
                &[("stage", stage), ("le", "1800")]
            ) >= 1.0,
            "buckets of {stage}: {after}"
        );
    }
    // 2 s of audio separated: the real-time factor and the audio seconds counter move.
    assert!(
        moved(
            "msaas_separation_realtime_factor_count",
            &[("model", MODEL)]
        ) >= 1.0
    );
    assert!(moved("msaas_separated_audio_seconds_total", &[("model", MODEL)]) >= 2.0);
    // No job id anywhere in the exposition.
    assert!(
        !after.contains(job.id.as_str()),
        "a job id leaked into a label"
    );
    // The process collector is registered.
    assert!(after.contains("process_resident_memory_bytes"), "{after}");
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retries_and_dead_letters_are_counted_by_code() {
    let pipeline = Pipeline::start();
    let before = scrape();
    let bad = pipeline.run(BAD_INPUT_MODEL, None).await;
    assert_eq!(bad.state, JobState::Failed);
    let flaky = pipeline.run(FLAKY_MODEL, None).await;
    assert_eq!(flaky.state, JobState::Failed);
    let after = scrape();
    let moved = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };

    assert!(
        moved("msaas_jobs_total", &[("state", "failed")]) >= 2.0,
        "{after}"
    );
    assert!(
        moved(
            "msaas_job_failures_total",
            &[("stage", "separate"), ("code", "corrupt_audio")]
        ) >= 1.0,
        "{after}"
    );
    // flaky: encode fails transiently; attempt 1 is retried, attempt 2 (the last) fails the
    // job with attempts_exhausted and dead-letters the message, counted by the real cause.
    assert!(
        moved(
            "msaas_stage_retries_total",
            &[("stage", "encode"), ("code", "io")]
        ) >= 1.0,
        "{after}"
    );
    // The job is failed first, then its message dead-lettered: wait for the second step.
    let dead = [("stage", "encode"), ("code", "io")];
    let dead_before = sample(&before, "msaas_dead_letters_total", &dead);
    wait_for(|| sample(&scrape(), "msaas_dead_letters_total", &dead) >= dead_before + 1.0).await;
    assert!(
        moved(
            "msaas_job_failures_total",
            &[("stage", "encode"), ("code", "attempts_exhausted")]
        ) >= 1.0,
        "{after}"
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_and_queue_gauges_follow_the_work() {
    let pipeline = Pipeline::start();
    let poller_stop = CancellationToken::new();
    let poller = spawn_queue_poller(
        pipeline.backends.clone(),
        Duration::from_millis(20),
        poller_stop.clone(),
    );

    let job = pipeline.submit(HELD_MODEL, None).await;
    // Wait until separate holds the job: one run of separate is in flight, and its message
    // is pending (claimed, not acked) on the separate queue.
    wait_for(|| pipeline.held.load(Ordering::SeqCst) >= 1).await;
    wait_for(|| {
        let text = scrape();
        sample(&text, "msaas_queue_pending", &[("stage", "separate")]) >= 1.0
    })
    .await;
    let text = scrape();
    assert!(
        sample(&text, "msaas_stage_in_flight", &[("stage", "separate")]) >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "msaas_queue_waiting", &[("stage", "separate")]),
        0.0,
        "{text}"
    );

    pipeline.release();
    let job = pipeline.wait(&job).await;
    assert_eq!(job.state, JobState::Done);
    wait_for(|| {
        let text = scrape();
        sample(&text, "msaas_queue_pending", &[("stage", "separate")]) == 0.0
            && sample(
                &text,
                "msaas_queue_oldest_age_seconds",
                &[("stage", "separate")],
            ) == 0.0
    })
    .await;
    poller_stop.cancel();
    poller.await.expect("poller task");
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_listener_serves_metrics_health_and_readiness() {
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    let check = {
        let ready = ready.clone();
        Arc::new(move || ready.load(Ordering::SeqCst))
    };
    let addr = observe::serve_metrics("127.0.0.1:0".parse().unwrap(), check, shutdown.clone())
        .await
        .expect("listener bound");

    let pipeline = Pipeline::start();
    pipeline.run(MODEL, None).await;
    wait_for(|| sample(&scrape(), "msaas_jobs_total", &[("state", "done")]) >= 1.0).await;
    observe::metrics::upload_accepted(1234);
    observe::metrics::upload_rejected("payload_too_large");

    let client = reqwest::Client::new();
    let get = |path: &'static str| {
        let client = client.clone();
        async move {
            let response = client
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .expect("request");
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (status, content_type, response.text().await.expect("body"))
        }
    };

    let (status, content_type, body) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(
        sample(&body, "msaas_jobs_total", &[("state", "done")]) >= 1.0,
        "{body}"
    );
    assert!(
        sample(&body, "msaas_upload_bytes_total", &[]) >= 1234.0,
        "{body}"
    );
    assert!(
        sample(&body, "msaas_uploads_accepted_total", &[]) >= 1.0,
        "{body}"
    );
    assert!(
        sample(
            &body,
            "msaas_uploads_rejected_total",
            &[("code", "payload_too_large")]
        ) >= 1.0,
        "{body}"
    );
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 503);
    ready.store(true, Ordering::SeqCst);
    assert_eq!(get("/readyz").await.0, 200);
    assert_eq!(get("/nope").await.0, 404);

    shutdown.cancel();
    pipeline.stop().await;
}

/// Polls `condition` every 10 ms for up to 10 s; panics if it never holds.
async fn wait_for(mut condition: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 10 s");
}
