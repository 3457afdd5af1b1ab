//! The global `tracing` subscriber: log lines to stderr (JSON with trace and span ids when
//! not on a terminal) and, when the standard `OTEL_EXPORTER_OTLP_*` variables say so, spans
//! exported over OTLP (gRPC or HTTP/protobuf).

use std::fmt;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::error::ObserveError;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Text,
    /// One JSON object per line, for log collectors, with `trace_id` and `span_id`.
    Json,
    /// Text on a terminal, JSON otherwise.
    Auto,
}

/// The OTLP transport (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `grpc` (port 4317 by convention).
    Grpc,
    /// `http/protobuf` (port 4318 by convention), the specification's default.
    HttpProtobuf,
}

/// Where spans go. Built from the environment by [`OtlpSettings::from_env`], or by hand
/// (tests, a config file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The collector's URL; `None` lets the exporter read the `OTEL_EXPORTER_OTLP_*ENDPOINT`
    /// variables (which, when set, also win over a value given here).
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    /// `service.name` of every span (`OTEL_SERVICE_NAME`, default `msaas`).
    pub service_name: String,
}

impl OtlpSettings {
    /// Export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// is set (and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says no).
    pub fn from_env() -> Result<Option<Self>, ObserveError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let endpoint_set = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        if disabled || !endpoint_set {
            return Ok(None);
        }
        let protocol_text = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".to_owned());
        let protocol = match protocol_text.trim().to_ascii_lowercase().as_str() {
            "grpc" => OtlpProtocol::Grpc,
            "http/protobuf" => OtlpProtocol::HttpProtobuf,
            _ => return Err(ObserveError::BadOtlpProtocol(protocol_text)),
        };
        Ok(Some(Self {
            endpoint: None,
            protocol,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| "msaas".to_owned()),
        }))
    }
}

/// Keeps span export alive; dropping it flushes the spans still buffered and stops the
/// exporter. Hold it for the life of the process (in `main`).
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("exporting", &self.exporting())
            .finish()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            shutdown_provider(provider);
        }
    }
}

/// Flushes and stops the exporter. The batch processor runs on the tokio runtime and the
/// shutdown waits for it, so on a runtime worker thread the wait must let the runtime go on.
fn shutdown_provider(provider: SdkTracerProvider) {
    let shutdown = move || {
        if let Err(err) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %err, "trace export: shutdown failed");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(shutdown);
        }
        // A current-thread runtime cannot run the processor while this thread waits: wait on
        // another thread for the timeout at most, then give up on the last spans.
        Ok(_) => {
            let waiter = std::thread::spawn(shutdown);
            let _ = waiter.join();
        }
        Err(_) => shutdown(),
    }
}

/// The provider kept by [`init_logging`] (which returns no guard), flushed by
/// [`shutdown_tracing`].
static KEPT_PROVIDER: Mutex<Option<SdkTracerProvider>> = Mutex::new(None);

/// Installs the global subscriber writing to stderr, with OTLP export when the environment
/// asks for it (see [`OtlpSettings::from_env`]). The log filter comes from `MSAAS_LOG` (or
/// `RUST_LOG`), else `default_filter`. The exporter lives until [`shutdown_tracing`]; prefer
/// [`init_telemetry`], whose guard flushes on drop.
pub fn init_logging(format: LogFormat, default_filter: &str) -> Result<(), ObserveError> {
    let mut guard = init_telemetry(format, default_filter)?;
    if let Some(provider) = guard.provider.take()
        && let Ok(mut kept) = KEPT_PROVIDER.lock()
    {
        *kept = Some(provider);
    }
    Ok(())
}

/// Flushes and stops the exporter installed by [`init_logging`] (call before exiting).
pub fn shutdown_tracing() {
    let provider = KEPT_PROVIDER.lock().ok().and_then(|mut kept| kept.take());
    if let Some(provider) = provider {
        shutdown_provider(provider);
    }
}

/// [`init_logging`] returning the guard that keeps span export alive.
pub fn init_telemetry(
    format: LogFormat,
    default_filter: &str,
) -> Result<TelemetryGuard, ObserveError> {
    init_tracing(format, default_filter, OtlpSettings::from_env()?)
}

/// Installs the global subscriber with explicit export settings (`None`: logs only).
/// Export needs a tokio runtime: call it from inside one.
pub fn init_tracing(
    format: LogFormat,
    default_filter: &str,
    otlp: Option<OtlpSettings>,
) -> Result<TelemetryGuard, ObserveError> {
    let filter_text = std::env::var("MSAAS_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_filter.to_owned());
    let filter = parse_filter(&filter_text)?;
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };

    let provider = otlp.map(|settings| build_provider(&settings)).transpose()?;

    let fmt_layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt_layer = if json {
        json_log_layer(std::io::stderr).boxed()
    } else {
        fmt_layer.boxed()
    };
    let otel_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("msaas"))
            .with_error_records_to_exceptions(true)
    });

    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(otel_layer)
        .with(fmt_layer)
        .try_init()
        .map_err(|_| ObserveError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}

fn build_provider(settings: &OtlpSettings) -> Result<SdkTracerProvider, ObserveError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(ObserveError::NoRuntime);
    }
    let exporter = match settings.protocol {
        OtlpProtocol::Grpc => {
            let builder = SpanExporter::builder()
                .with_tonic()
                .with_protocol(Protocol::Grpc);
            match &settings.endpoint {
                Some(endpoint) => builder.with_endpoint(endpoint).build(),
                None => builder.build(),
            }
        }
        OtlpProtocol::HttpProtobuf => {
            let builder = SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary);
            match &settings.endpoint {
                // The HTTP exporter takes the full traces URL.
                Some(endpoint) => builder
                    .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                    .build(),
                None => builder.build(),
            }
        }
    }
    .map_err(|err| ObserveError::Exporter(err.to_string()))?;
    // The batch processor on the tokio runtime: the async HTTP client and tonic need it.
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .build())
}

/// The JSON log layer [`init_tracing`] installs, writing to `writer`: `tracing-subscriber`'s
/// JSON lines plus `trace_id` and `span_id` of the current span when it is traced. The ids are
/// looked up through the global dispatcher (a scoped one, `with_default`, hides them).
pub fn json_log_layer<S, W>(writer: W) -> impl Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'writer> tracing_subscriber::fmt::MakeWriter<'writer> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .fmt_fields(JsonFields::new())
        .event_format(JsonWithTraceIds::new())
        .with_writer(writer)
}

pub(crate) fn parse_filter(text: &str) -> Result<EnvFilter, ObserveError> {
    EnvFilter::try_new(text).map_err(|e| ObserveError::BadFilter {
        filter: text.to_owned(),
        reason: e.to_string(),
    })
}

/// JSON lines as `tracing-subscriber` writes them, plus the OpenTelemetry `trace_id` and
/// `span_id` of the current span, so a log collector can jump from a line to its trace.
struct JsonWithTraceIds {
    inner: Format<Json>,
}

impl JsonWithTraceIds {
    fn new() -> Self {
        Self {
            inner: Format::default().json().flatten_event(true),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonWithTraceIds
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'writer> FormatFields<'writer> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let ids = current_trace_ids();
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&line) {
            Ok(mut object) => {
                object.insert("trace_id".to_owned(), trace_id.into());
                object.insert("span_id".to_owned(), span_id.into());
                let text = serde_json::to_string(&object).map_err(|_| fmt::Error)?;
                writeln!(writer, "{text}")
            }
            // Not an object (cannot happen with the JSON format): write it as it was.
            Err(_) => writer.write_str(&line),
        }
    }
}

fn current_trace_ids() -> Option<(String, String)> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}
