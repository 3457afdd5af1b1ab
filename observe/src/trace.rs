//! W3C trace-context carry: the `traceparent` that travels in queue messages and webhooks,
//! so that one job is one trace across processes.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header / message field name of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` of the current tracing span (`00-{trace id}-{span id}-{flags}`), or
/// `None` when no OpenTelemetry layer is installed (export off) or no span is current.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The `traceparent` of `span`, as [`current_traceparent`].
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes the remote span named by `traceparent` the parent of `span`. Must be called before
/// `span` is first entered; a malformed `traceparent` is ignored (the span starts a new
/// trace), as is a call without an OpenTelemetry layer.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    if !context.span().span_context().is_valid() {
        tracing::debug!(traceparent, "ignoring a malformed traceparent");
        return;
    }
    if let Err(err) = span.set_parent(context) {
        tracing::debug!(error = %err, "could not set a span's remote parent");
    }
}

/// The trace id (32 hex digits) of a `traceparent`, if it is well-formed.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_layer_there_is_no_traceparent() {
        let span = tracing::info_span!("no_layer");
        let _entered = span.enter();
        assert_eq!(current_traceparent(), None);
        // Harmless without a layer, and with garbage.
        set_parent(&span, "not-a-traceparent");
    }

    #[test]
    fn trace_id_is_read_from_a_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id_of(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id_of("00-xyz-1-01"), None);
    }
}
