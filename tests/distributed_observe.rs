//! Issue 6, "How it will be checked", against real processes in distributed mode (private Redis,
//! SeaweedFS and NATS; `msaas ingest` and one `msaas worker` per stage, each its own process):
//! one job is one trace across the four processes, exported over OTLP/gRPC to a receiver in
//! this test; and after a job, the `/metrics` of ingest and of every worker show its series
//! moved, with no job id (nor tenant) in any label.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_opentelemetry_collector::{ExportedSpan, FakeCollectorServer};
use pipeline::Stage;
use serde_json::Value;
use support::{Cluster, Msaas, require_default_model, write_song};

const TENANT: &str = "tenant-observed";
const CLIP_SECONDS: f32 = 1.0;

/// The two tests each run a whole cluster; one at a time keeps them fast on two cores.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The processes of one distributed deployment.
struct Deployment {
    ingest: Msaas,
    api: String,
    /// Stage → (worker process, its metrics base URL).
    workers: BTreeMap<Stage, (Msaas, String)>,
}

impl Deployment {
    /// `msaas ingest` plus `msaas worker <stage>` for each stage, `extra` added to the
    /// environment of each (with `OTEL_SERVICE_NAME` per role); returns once all are ready.
    fn start(cluster: &mut Cluster, extra: &[(&str, &str)]) -> Self {
        cluster.set("MSAAS_OBSERVE__METRICS_LISTEN", "127.0.0.1:0");
        // Small, so the workers' queue gauges are fresh when scraped.
        cluster.set("MSAAS_OBSERVE__QUEUE_POLL_MS", "200");
        let env_of = |role: &str| {
            let mut env = cluster.env();
            env.extend(
                extra
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            );
            env.push(("OTEL_SERVICE_NAME".to_owned(), format!("msaas-{role}")));
            env
        };
        let mut ingest = Msaas::spawn(&["ingest"], &env_of("ingest"));
        let api = ingest.api_url();
        let workers = Stage::ALL
            .into_iter()
            .map(|stage| {
                let mut worker = Msaas::spawn(&["worker", stage.as_str()], &env_of(stage.as_str()));
                let metrics = worker.wait_for_line("metrics ", Duration::from_secs(30));
                let deadline = Instant::now() + Duration::from_secs(30);
                while support::http_get_status(&format!("{metrics}/readyz")) != Some(200) {
                    assert!(
                        Instant::now() < deadline,
                        "{stage} worker never ready; log:\n{}",
                        worker.log_text()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                (stage, (worker, metrics))
            })
            .collect();
        Self {
            ingest,
            api,
            workers,
        }
    }

    /// Every process stopped with SIGTERM (which flushes span export); each must exit 0.
    fn stop(&mut self) {
        let processes = std::iter::once(("ingest", &mut self.ingest)).chain(
            self.workers
                .iter_mut()
                .map(|(stage, (worker, _))| (stage.as_str(), worker)),
        );
        for (role, process) in processes {
            let status = process.terminate(Duration::from_secs(30));
            assert_eq!(status.code(), Some(0), "{role}: {}", process.log_text());
        }
    }

    fn logs(&self) -> String {
        std::iter::once(self.ingest.log_text())
            .chain(self.workers.values().map(|(worker, _)| worker.log_text()))
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

/// Uploads `body` through `POST /v1/jobs` (with `traceparent` when given); returns the job id.
async fn upload(
    http: &reqwest::Client,
    api: &str,
    key: &str,
    body: Vec<u8>,
    traceparent: Option<&str>,
) -> String {
    let mut request = http
        .post(format!("{api}/v1/jobs?filename=song.wav"))
        .bearer_auth(key)
        .header("content-type", "application/octet-stream")
        .body(body);
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().await.expect("POST /v1/jobs");
    let status = response.status();
    let answer: Value = response.json().await.expect("upload answer JSON");
    assert_eq!(status, 202, "upload: {answer}");
    answer["id"]
        .as_str()
        .or_else(|| answer["job"]["id"].as_str())
        .unwrap_or_else(|| panic!("no job id in {answer}"))
        .to_owned()
}

/// Polls `GET /v1/jobs/{id}` until the job is terminal; it must be `done`.
async fn wait_done(http: &reqwest::Client, deployment: &Deployment, key: &str, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job: Value = http
            .get(format!("{}/v1/jobs/{id}", deployment.api))
            .bearer_auth(key)
            .send()
            .await
            .expect("GET job")
            .json()
            .await
            .expect("job JSON");
        match job["state"].as_str() {
            Some("done") => return,
            Some("failed" | "cancelled") => {
                panic!("job {id} ended {job}; logs:\n{}", deployment.logs())
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "job {id} not done in 120 s: {job}; logs:\n{}",
            deployment.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A short song's bytes.
fn song() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("song.wav");
    write_song(&path, CLIP_SECONDS, 7);
    std::fs::read(&path).expect("read song")
}

/// A span attribute's string value (the receiver renders values as `Some(AnyValue { value:
/// Some(StringValue("…")) })`); other kinds as rendered.
fn attribute<'a>(span: &'a ExportedSpan, key: &str) -> &'a str {
    let rendered = span.attributes.get(key).map_or("", String::as_str);
    rendered
        .split_once("StringValue(\"")
        .and_then(|(_, rest)| rest.split_once("\")"))
        .map_or(rendered, |(value, _)| value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_is_one_trace_across_the_ingest_and_worker_processes() {
    require_default_model();
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut collector = FakeCollectorServer::start()
        .await
        .expect("OTLP receiver started");
    let mut cluster = Cluster::start(&[TENANT]);
    let endpoint = collector.endpoint();
    let mut deployment = tokio::task::block_in_place(|| {
        Deployment::start(
            &mut cluster,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("MSAAS_LOG", "info"),
            ],
        )
    });
    let http = reqwest::Client::new();
    let key = cluster.key_of(TENANT).to_owned();

    // The client's own trace: the job must join it.
    let client_trace = format!(
        "{:016x}{:016x}",
        support::random_u64(),
        support::random_u64()
    );
    let client_span = format!("{:016x}", support::random_u64() | 1);
    let traceparent = format!("00-{client_trace}-{client_span}-01");
    // Spans are taken off the receiver as they come: its channel holds 64, and a full one
    // would stall the exporters.
    let received: Arc<Mutex<Vec<ExportedSpan>>> = Arc::default();
    let receiving = {
        let received = received.clone();
        tokio::spawn(async move {
            loop {
                let batch = collector
                    .exported_spans(usize::MAX, Duration::from_millis(100))
                    .await;
                received.lock().expect("spans lock").extend(batch);
            }
        })
    };
    let id = upload(&http, &deployment.api, &key, song(), Some(&traceparent)).await;
    wait_done(&http, &deployment, &key, &id).await;
    // SIGTERM flushes each process's exporter before it exits.
    tokio::task::block_in_place(|| deployment.stop());
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiving.abort();
    let spans = std::mem::take(&mut *received.lock().expect("spans lock"));

    let of_job: Vec<&ExportedSpan> = spans
        .iter()
        .filter(|span| attribute(span, "msaas.job_id").contains(&id))
        .collect();
    let named = |name: &str| -> &ExportedSpan {
        let found: Vec<&ExportedSpan> = spans
            .iter()
            .filter(|span| span.name == name && span.trace_id == client_trace)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one {name} span in the job's trace expected; the job's spans: {of_job:#?}\nall span names: {:?}",
            spans
                .iter()
                .map(|s| (&s.name, &s.trace_id))
                .collect::<Vec<_>>()
        );
        found[0]
    };
    let upload = named("ingest.upload");
    let decode = named("stage.decode");
    let separate = named("stage.separate");
    let encode = named("stage.encode");

    // One trace: the client's. Every span carrying the job id is in it (no stray second trace).
    for span in &of_job {
        assert_eq!(
            span.trace_id, client_trace,
            "{} of the job is in another trace",
            span.name
        );
    }
    // The chain, across four processes.
    assert_eq!(
        upload.parent_span_id, client_span,
        "upload under the client"
    );
    assert_eq!(decode.parent_span_id, upload.span_id, "decode under upload");
    assert_eq!(
        separate.parent_span_id, decode.span_id,
        "separate under decode"
    );
    assert_eq!(
        encode.parent_span_id, separate.span_id,
        "encode under separate"
    );
    let ids: HashSet<&str> = [upload, decode, separate, encode]
        .iter()
        .map(|span| span.span_id.as_str())
        .collect();
    assert_eq!(ids.len(), 4, "four distinct spans");

    // The model's run is a child of the separate stage's span.
    let model_runs: Vec<&ExportedSpan> = spans
        .iter()
        .filter(|span| span.name == "separate.model_run")
        .collect();
    assert_eq!(model_runs.len(), 1, "one model run: {model_runs:#?}");
    assert_eq!(model_runs[0].trace_id, client_trace, "{:#?}", model_runs[0]);
    assert_eq!(
        model_runs[0].parent_span_id, separate.span_id,
        "model run under stage.separate"
    );

    for (span, stage) in [
        (decode, "decode"),
        (separate, "separate"),
        (encode, "encode"),
    ] {
        assert_eq!(attribute(span, "msaas.job_id"), id, "{span:#?}");
        assert_eq!(attribute(span, "msaas.stage"), stage, "{span:#?}");
        assert_eq!(attribute(span, "msaas.tenant"), TENANT, "{span:#?}");
        assert_eq!(
            attribute(span, "msaas.model"),
            "spleeter-2stems",
            "{span:#?}"
        );
    }
    assert_eq!(
        attribute(upload, "job"),
        id,
        "the upload names its job: {upload:#?}"
    );
    assert_eq!(attribute(encode, "msaas.outcome"), "done", "{encode:#?}");
}

/// One sample of a scrape: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a Prometheus text exposition (label values without escapes, as ours are).
fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample line: {line}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label in {line}"));
                    (
                        key.to_owned(),
                        value.trim_matches('"').trim_end_matches('"').to_owned(),
                    )
                })
                .collect();
            Sample {
                name: name.to_owned(),
                labels,
                value,
            }
        })
        .collect()
}

/// One process's scrape.
struct Scrape {
    role: String,
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    async fn of(http: &reqwest::Client, role: &str, base: &str) -> Self {
        let response = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(response.status(), 200, "{role} /metrics");
        let text = response.text().await.expect("metrics text");
        Self {
            role: role.to_owned(),
            samples: parse_exposition(&text),
            text,
        }
    }

    /// Sum of the samples of `name` whose labels include all of `labels`; `None` when no
    /// sample matches.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|sample| {
                sample.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| sample.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|sample| sample.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sum(name, labels).unwrap_or_else(|| {
            panic!(
                "{}: no series {name}{labels:?} in:\n{}",
                self.role, self.text
            )
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_ingest_and_every_worker_move_after_a_job() {
    require_default_model();
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(&[TENANT]);
    let mut deployment = tokio::task::block_in_place(|| Deployment::start(&mut cluster, &[]));
    let http = reqwest::Client::new();
    let key = cluster.key_of(TENANT).to_owned();
    let body = song();
    let size = body.len() as f64;
    let id = upload(&http, &deployment.api, &key, body, None).await;
    wait_done(&http, &deployment, &key, &id).await;
    // The queue pollers (every 200 ms) see the queues after the job.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let mut scrapes = vec![Scrape::of(&http, "ingest", &deployment.api).await];
    for (stage, (_, metrics)) in &deployment.workers {
        scrapes.push(Scrape::of(&http, stage.as_str(), metrics).await);
    }

    let ingest = &scrapes[0];
    assert_eq!(ingest.value("msaas_uploads_accepted_total", &[]), 1.0);
    assert_eq!(ingest.value("msaas_upload_bytes_total", &[]), size);
    assert!(
        ingest.value(
            "msaas_http_requests_total",
            &[("method", "POST"), ("status", "202")]
        ) >= 1.0,
        "the upload is counted"
    );
    assert!(
        ingest.value(
            "msaas_http_requests_total",
            &[("method", "GET"), ("status", "200")]
        ) >= 1.0,
        "the status polls are counted"
    );
    assert!(
        ingest.value(
            "msaas_http_request_duration_seconds_count",
            &[("method", "POST")]
        ) >= 1.0
    );

    for (stage, scrape) in Stage::ALL.into_iter().zip(&scrapes[1..]) {
        let stage_label = [("stage", stage.as_str())];
        assert!(
            scrape.value("msaas_stage_duration_seconds_count", &stage_label) >= 1.0,
            "{stage}: {}",
            scrape.text
        );
        assert!(scrape.value("msaas_stage_attempts_total", &stage_label) >= 1.0);
        // The queue gauges the dashboards and alerts read, from every worker too.
        scrape.value("msaas_queue_waiting", &stage_label);
        scrape.value("msaas_queue_oldest_age_seconds", &stage_label);
        assert_eq!(
            scrape.value("msaas_stage_in_flight", &stage_label),
            0.0,
            "{stage}: nothing runs after the job"
        );
    }
    let separate = &scrapes[2];
    assert!(
        separate.value(
            "msaas_separation_realtime_factor_count",
            &[("model", "spleeter-2stems")]
        ) >= 1.0
    );
    assert!(
        separate.value(
            "msaas_separated_audio_seconds_total",
            &[("model", "spleeter-2stems")]
        ) >= f64::from(CLIP_SECONDS) * 0.99
    );
    // The terminal transition is counted once, by the process that made it (encode).
    let done: f64 = scrapes
        .iter()
        .filter_map(|scrape| scrape.sum("msaas_jobs_total", &[("state", "done")]))
        .sum();
    assert_eq!(done, 1.0, "one job done, counted once across the processes");
    assert_eq!(
        scrapes[3].value("msaas_jobs_total", &[("state", "done")]),
        1.0
    );

    for scrape in &scrapes {
        assert!(
            scrape.value("process_resident_memory_bytes", &[]) > 0.0,
            "{}",
            scrape.role
        );
        for sample in &scrape.samples {
            for (label, value) in &sample.labels {
                assert!(
                    !value.contains(&id) && !value.contains(TENANT),
                    "{}: {}{{{label}={value:?}}} names a job or tenant",
                    scrape.role,
                    sample.name
                );
            }
        }
        assert!(
            !scrape.text.contains(&id),
            "{}: the job id appears in /metrics",
            scrape.role
        );
    }
    tokio::task::block_in_place(|| deployment.stop());
}
