//! Observability set-up shared by every role of the binary: logging and OTLP trace export
//! ([`init_telemetry`] / [`init_logging`]), Prometheus metrics ([`metrics`]) and the worker
//! roles' listener ([`serve_metrics`]), W3C trace-context carry ([`trace`]).

mod error;
mod logging;
pub mod metrics;
mod server;
pub mod trace;

pub use error::ObserveError;
pub use logging::{
    LogFormat, OtlpProtocol, OtlpSettings, TelemetryGuard, init_logging, init_telemetry,
    init_tracing, json_log_layer, shutdown_tracing,
};
pub use server::{ReadyCheck, serve_metrics};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_filter_is_a_clear_error() {
        let err = logging::parse_filter("info,=[").map(|_| ()).unwrap_err();
        assert!(matches!(err, ObserveError::BadFilter { ref filter, .. } if filter == "info,=["));
        assert!(logging::parse_filter("info,msaas=debug").is_ok());
    }
}
