//! The process's Prometheus metrics: one registry per process, with the process collector
//! (CPU, memory, file descriptors), exposed by [`render`]. Every series is documented in
//! `observe/README.md`; label values are bounded (stages, error codes, models, routes) and a
//! job id is never a label.

use std::sync::LazyLock;

use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for stage durations: from a half-second decode of a short clip to a half-hour
/// separation of a long track on a CPU.
pub const STAGE_DURATION_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0,
];

/// Buckets for the separation real-time factor (seconds of compute per second of audio):
/// a GPU runs far below 1, a CPU around or above it.
pub const REALTIME_FACTOR_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
];

/// Buckets for model loads (a cached session is milliseconds, a cold GPU load seconds).
pub const MODEL_LOAD_BUCKETS: &[f64] =
    &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Buckets for HTTP request durations (uploads of large files take long).
pub const HTTP_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Every metric family the process defines.
pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    jobs_total: IntCounterVec,
    stage_duration: HistogramVec,
    stage_attempts: IntCounterVec,
    stage_retries: IntCounterVec,
    dead_letters: IntCounterVec,
    job_failures: IntCounterVec,
    stage_in_flight: IntGaugeVec,
    queue_waiting: IntGaugeVec,
    queue_pending: IntGaugeVec,
    queue_oldest_age: GaugeVec,
    queue_poll_errors: IntCounterVec,
    uploads_accepted: IntCounter,
    upload_bytes: IntCounter,
    uploads_rejected: IntCounterVec,
    connections_refused: IntCounter,
    tenant_limited: IntCounterVec,
    realtime_factor: HistogramVec,
    audio_seconds: CounterVec,
    model_load: HistogramVec,
    stage_queue_wait: HistogramVec,
    separate_batches: IntCounterVec,
    separate_batch_rows: IntCounterVec,
    separate_batch_slots: IntCounterVec,
    separate_busy: CounterVec,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
}

impl Metrics {
    fn build() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(metric.clone()))?;
            Ok::<_, prometheus::Error>(metric)
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(metric.clone()))?;
            Ok::<_, prometheus::Error>(metric)
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let metric = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )?;
            registry.register(Box::new(metric.clone()))?;
            Ok::<_, prometheus::Error>(metric)
        };

        let jobs_total = counter_vec(
            "msaas_jobs_total",
            "Jobs that reached a terminal state (done, failed, cancelled).",
            &["state"],
        )?;
        let stage_duration = histogram_vec(
            "msaas_stage_duration_seconds",
            "Wall time of one successful stage run, from claim to the next stage queued.",
            &["stage"],
            STAGE_DURATION_BUCKETS,
        )?;
        let stage_attempts = counter_vec(
            "msaas_stage_attempts_total",
            "Stage runs started (every delivery, first tries and retries).",
            &["stage"],
        )?;
        let stage_retries = counter_vec(
            "msaas_stage_retries_total",
            "Stage runs that failed transiently and were queued again, by error code.",
            &["stage", "code"],
        )?;
        let dead_letters = counter_vec(
            "msaas_dead_letters_total",
            "Stage messages moved to the dead-letter queue, by error code.",
            &["stage", "code"],
        )?;
        let job_failures = counter_vec(
            "msaas_job_failures_total",
            "Jobs that failed, by the stage they failed in and error code.",
            &["stage", "code"],
        )?;
        let stage_in_flight = gauge_vec(
            "msaas_stage_in_flight",
            "Stage runs in progress in this process.",
            &["stage"],
        )?;
        let queue_waiting = gauge_vec(
            "msaas_queue_waiting",
            "Messages of a stage queue not yet delivered to any worker.",
            &["stage"],
        )?;
        let queue_pending = gauge_vec(
            "msaas_queue_pending",
            "Messages of a stage queue delivered to a worker and not yet acknowledged.",
            &["stage"],
        )?;
        let queue_oldest_age = GaugeVec::new(
            Opts::new(
                "msaas_queue_oldest_age_seconds",
                "Age of the oldest waiting or pending message of a stage queue.",
            ),
            &["stage"],
        )?;
        registry.register(Box::new(queue_oldest_age.clone()))?;
        let queue_poll_errors = counter_vec(
            "msaas_queue_poll_errors_total",
            "Failed reads of a stage queue's depth by the queue poller.",
            &["stage"],
        )?;
        let uploads_accepted = IntCounter::new(
            "msaas_uploads_accepted_total",
            "Uploads stored and turned into jobs.",
        )?;
        registry.register(Box::new(uploads_accepted.clone()))?;
        let upload_bytes =
            IntCounter::new("msaas_upload_bytes_total", "Bytes of accepted uploads.")?;
        registry.register(Box::new(upload_bytes.clone()))?;
        let uploads_rejected = counter_vec(
            "msaas_uploads_rejected_total",
            "Uploads refused, by error code.",
            &["code"],
        )?;
        let connections_refused = IntCounter::new(
            "msaas_http_connections_refused_total",
            "Connections answered 503 overloaded: server.max_connections were open.",
        )?;
        registry.register(Box::new(connections_refused.clone()))?;
        let tenant_limited = counter_vec(
            "msaas_tenant_limited_total",
            "Requests answered 429 because a tenant reached a cap, by cap (active_jobs, uploads_per_minute).",
            &["limit"],
        )?;
        let realtime_factor = histogram_vec(
            "msaas_separation_realtime_factor",
            "Seconds of separation compute per second of audio, per model.",
            &["model"],
            REALTIME_FACTOR_BUCKETS,
        )?;
        let audio_seconds = CounterVec::new(
            Opts::new(
                "msaas_separated_audio_seconds_total",
                "Seconds of audio separated, per model.",
            ),
            &["model"],
        )?;
        registry.register(Box::new(audio_seconds.clone()))?;
        let model_load = histogram_vec(
            "msaas_model_load_seconds",
            "Time to load a model (ONNX session) into memory, per model.",
            &["model"],
            MODEL_LOAD_BUCKETS,
        )?;
        let stage_queue_wait = histogram_vec(
            "msaas_stage_queue_wait_seconds",
            "Time a job waited for a stage: from the previous stage done (or the upload) to a worker starting it.",
            &["stage"],
            STAGE_DURATION_BUCKETS,
        )?;
        let separate_batches = counter_vec(
            "msaas_separate_batches_total",
            "Model runs of the separate stage (each a batch of chunks, possibly of several jobs).",
            &["model"],
        )?;
        let separate_batch_rows = counter_vec(
            "msaas_separate_batch_rows_total",
            "Chunks run in those batches; divided by msaas_separate_batch_slots_total: the batch fill ratio.",
            &["model"],
        )?;
        let separate_batch_slots = counter_vec(
            "msaas_separate_batch_slots_total",
            "Chunks those batches could have held (the batch size of each run).",
            &["model"],
        )?;
        let separate_busy = CounterVec::new(
            Opts::new(
                "msaas_separate_device_busy_seconds_total",
                "Seconds inside the model runtime; its rate is the device busy ratio of a pod.",
            ),
            &["model"],
        )?;
        registry.register(Box::new(separate_busy.clone()))?;
        let http_requests = counter_vec(
            "msaas_http_requests_total",
            "HTTP requests served, by route template, method and status code.",
            &["route", "method", "status"],
        )?;
        let http_duration = histogram_vec(
            "msaas_http_request_duration_seconds",
            "HTTP request durations, by route template and method.",
            &["route", "method"],
            HTTP_DURATION_BUCKETS,
        )?;
        let build_info = Gauge::with_opts(
            Opts::new(
                "msaas_build_info",
                "Always 1; the labels say which build runs.",
            )
            .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info.set(1.0);

        Ok(Self {
            registry,
            jobs_total,
            stage_duration,
            stage_attempts,
            stage_retries,
            dead_letters,
            job_failures,
            stage_in_flight,
            queue_waiting,
            queue_pending,
            queue_oldest_age,
            queue_poll_errors,
            uploads_accepted,
            upload_bytes,
            uploads_rejected,
            connections_refused,
            tenant_limited,
            realtime_factor,
            audio_seconds,
            model_load,
            stage_queue_wait,
            separate_batches,
            separate_batch_rows,
            separate_batch_slots,
            separate_busy,
            http_requests,
            http_duration,
        })
    }
}

// Building can only fail on a malformed or duplicate metric name, and every name above is a
// constant that the unit test `registry_builds_and_renders` builds: a failure is a bug caught
// by `cargo test`, never a runtime condition.
static METRICS: LazyLock<Metrics> =
    LazyLock::new(|| Metrics::build().expect("metric definitions are valid (unit-tested)"));

fn metrics() -> &'static Metrics {
    &METRICS
}

/// The process registry (to register more collectors, or to gather in tests).
pub fn registry() -> &'static Registry {
    &metrics().registry
}

/// Text exposition (Prometheus format 0.0.4) of every metric of the process.
pub fn render() -> String {
    let families = metrics().registry.gather();
    let mut buffer = Vec::new();
    // Encoding into a Vec only fails on a malformed family, which the registry cannot hold.
    if let Err(err) = TextEncoder::new().encode(&families, &mut buffer) {
        tracing::warn!(error = %err, "could not encode metrics");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value that stays bounded: a code-like token (`[a-z0-9_]`, at most 48 bytes) is kept,
/// anything else becomes `other`, so a caller passing free text cannot blow up cardinality.
fn bounded_code(code: &str) -> &str {
    let code_like = !code.is_empty()
        && code.len() <= 48
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if code_like { code } else { "other" }
}

/// One HTTP request served. `route` is the route template (`/v1/jobs/{id}`), never the path.
pub fn http_request(route: &'static str, method: &str, status: u16, seconds: f64) {
    let m = metrics();
    let method = match method {
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => method,
        _ => "OTHER",
    };
    let status = status.to_string();
    m.http_requests
        .with_label_values(&[route, method, status.as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[route, method])
        .observe(seconds.max(0.0));
}

/// An upload stored and turned into a job.
pub fn upload_accepted(bytes: u64) {
    let m = metrics();
    m.uploads_accepted.inc();
    m.upload_bytes.inc_by(bytes);
}

/// An upload refused; `code` is the stable error code (`payload_too_large`, `unsupported_format`).
pub fn upload_rejected(code: &str) {
    metrics()
        .uploads_rejected
        .with_label_values(&[bounded_code(code)])
        .inc();
}

/// A connection refused at the open-connection cap.
pub fn connection_refused() {
    metrics().connections_refused.inc();
}

/// A request refused at a tenant cap (`active_jobs`, `uploads_per_minute`).
pub fn tenant_limited(limit: &'static str) {
    metrics().tenant_limited.with_label_values(&[limit]).inc();
}

/// A job reached a terminal state (`done`, `failed`, `cancelled`).
pub fn job_finished(state: &'static str) {
    metrics().jobs_total.with_label_values(&[state]).inc();
}

/// A stage run started (a delivery accepted by the worker: first tries and retries).
pub fn stage_attempt(stage: &'static str) {
    metrics().stage_attempts.with_label_values(&[stage]).inc();
}

/// A stage run succeeded after `seconds` (claim to record moved on).
pub fn stage_duration(stage: &'static str, seconds: f64) {
    metrics()
        .stage_duration
        .with_label_values(&[stage])
        .observe(seconds.max(0.0));
}

/// Counts a stage run in `msaas_stage_in_flight` for as long as it lives.
#[derive(Debug)]
#[must_use = "the run counts as in flight only while the guard lives"]
pub struct InFlight {
    stage: &'static str,
}

impl InFlight {
    pub fn start(stage: &'static str) -> Self {
        metrics().stage_in_flight.with_label_values(&[stage]).inc();
        Self { stage }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics()
            .stage_in_flight
            .with_label_values(&[self.stage])
            .dec();
    }
}

/// A stage run failed transiently and its message was queued again.
pub fn stage_retried(stage: &'static str, code: &str) {
    metrics()
        .stage_retries
        .with_label_values(&[stage, bounded_code(code)])
        .inc();
}

/// A stage message was dead-lettered.
pub fn dead_lettered(stage: &'static str, code: &str) {
    metrics()
        .dead_letters
        .with_label_values(&[stage, bounded_code(code)])
        .inc();
}

/// A job failed in `stage` with `code` (counted besides `msaas_jobs_total{state="failed"}`).
pub fn job_failed(stage: &'static str, code: &str) {
    metrics()
        .job_failures
        .with_label_values(&[stage, bounded_code(code)])
        .inc();
}

/// The depth of a stage queue, as read by the queue poller.
pub fn queue_depth(stage: &'static str, waiting: u64, pending: u64, oldest_age_seconds: f64) {
    let m = metrics();
    m.queue_waiting
        .with_label_values(&[stage])
        .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    m.queue_pending
        .with_label_values(&[stage])
        .set(i64::try_from(pending).unwrap_or(i64::MAX));
    m.queue_oldest_age
        .with_label_values(&[stage])
        .set(oldest_age_seconds.max(0.0));
}

/// A failed read of a stage queue's depth.
pub fn queue_poll_failed(stage: &'static str) {
    metrics()
        .queue_poll_errors
        .with_label_values(&[stage])
        .inc();
}

/// A separation of `audio_seconds` of audio took `compute_seconds` with `model`.
pub fn separation_finished(model: &str, audio_seconds: f64, compute_seconds: f64) {
    let audio_is_positive = audio_seconds.is_finite() && audio_seconds > 0.0;
    if !audio_is_positive || !compute_seconds.is_finite() {
        return;
    }
    let m = metrics();
    let model = bounded_model(model);
    m.realtime_factor
        .with_label_values(&[model])
        .observe(compute_seconds.max(0.0) / audio_seconds);
    m.audio_seconds
        .with_label_values(&[model])
        .inc_by(audio_seconds);
}

/// A job waited `seconds` for a worker of `stage` to start it.
pub fn stage_queue_wait(stage: &'static str, seconds: f64) {
    metrics()
        .stage_queue_wait
        .with_label_values(&[stage])
        .observe(seconds.max(0.0));
}

/// One model run of the separate stage: `rows` chunks in a batch of `capacity`, `busy_seconds`
/// inside the runtime.
pub fn separate_batch(model: &str, rows: usize, capacity: usize, busy_seconds: f64) {
    let m = metrics();
    let model = bounded_model(model);
    m.separate_batches.with_label_values(&[model]).inc();
    m.separate_batch_rows
        .with_label_values(&[model])
        .inc_by(rows as u64);
    m.separate_batch_slots
        .with_label_values(&[model])
        .inc_by(capacity.max(rows) as u64);
    if busy_seconds.is_finite() {
        m.separate_busy
            .with_label_values(&[model])
            .inc_by(busy_seconds.max(0.0));
    }
}

/// A model was loaded in `seconds`.
pub fn model_loaded(model: &str, seconds: f64) {
    metrics()
        .model_load
        .with_label_values(&[bounded_model(model)])
        .observe(seconds.max(0.0));
}

/// Model names come from configuration (a handful); anything that does not look like one
/// (`[A-Za-z0-9_.-]`, at most 64 bytes) is `other`.
fn bounded_model(model: &str) -> &str {
    let name_like = !model.is_empty()
        && model.len() <= 64
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if name_like { model } else { "other" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_builds_and_renders() {
        let built = Metrics::build();
        assert!(built.is_ok(), "{:?}", built.err());
        upload_accepted(10);
        let text = render();
        assert!(text.contains("msaas_uploads_accepted_total"), "{text}");
        assert!(text.contains("msaas_build_info"), "{text}");
    }

    #[test]
    fn free_text_labels_are_bounded() {
        assert_eq!(bounded_code("payload_too_large"), "payload_too_large");
        assert_eq!(bounded_code("Something went wrong: /etc"), "other");
        assert_eq!(bounded_code(""), "other");
        assert_eq!(bounded_model("htdemucs_ft"), "htdemucs_ft");
        assert_eq!(bounded_model("../../x y"), "other");
    }
}
