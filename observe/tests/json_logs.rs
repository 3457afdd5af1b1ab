//! JSON log lines carry the OpenTelemetry trace and span ids of the span they were logged in.
//! Its own test binary: it installs the global subscriber.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

use std::sync::{Arc, Mutex};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

/// Collects what the log layer writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[test]
fn json_lines_carry_the_trace_and_span_ids() {
    // A provider without an exporter: spans get real ids and go nowhere.
    let provider = SdkTracerProvider::builder().build();
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .with(observe::json_log_layer(captured.clone()));
    tracing::subscriber::set_global_default(subscriber).expect("first subscriber");

    tracing::info!(outside = true, "no span");
    let span = tracing::info_span!("work", msaas.stage = "decode");
    let traceparent = span.in_scope(|| {
        tracing::info!("inside");
        observe::trace::current_traceparent().expect("a traced span")
    });

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].get("trace_id").is_none(), "{text}");
    assert_eq!(lines[0]["outside"], true, "{text}");
    assert_eq!(lines[0]["message"], "no span", "{text}");

    // traceparent = 00-{trace id}-{span id}-{flags}
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(lines[1]["trace_id"], parts[1], "{text}");
    assert_eq!(lines[1]["span_id"], parts[2], "{text}");
    assert_eq!(lines[1]["message"], "inside", "{text}");
    assert_eq!(lines[1]["span"]["msaas.stage"], "decode", "{text}");
}
