//! Observability set-up shared by every role of the binary: logging and OTLP trace export
//! ([`init_logging`]), Prometheus metrics ([`metrics`]), W3C trace-context carry ([`trace`]).

pub mod metrics;
pub mod trace;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObserveError {
    #[error("invalid log filter {filter:?}: {reason}")]
    BadFilter { filter: String, reason: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
    /// Text on a terminal, JSON otherwise.
    Auto,
}

/// Installs the global subscriber writing to stderr. The filter comes from `MSAAS_LOG`
/// (or `RUST_LOG`), else `default_filter`.
pub fn init_logging(format: LogFormat, default_filter: &str) -> Result<(), ObserveError> {
    let filter_text = std::env::var("MSAAS_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_filter.to_owned());
    let filter = parse_filter(&filter_text)?;
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|_| ObserveError::AlreadyInstalled)
}

fn parse_filter(text: &str) -> Result<EnvFilter, ObserveError> {
    EnvFilter::try_new(text).map_err(|e| ObserveError::BadFilter {
        filter: text.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_filter_is_a_clear_error() {
        let err = parse_filter("info,=[").map(|_| ()).unwrap_err();
        assert!(matches!(err, ObserveError::BadFilter { ref filter, .. } if filter == "info,=["));
        assert!(parse_filter("info,msaas=debug").is_ok());
    }
}
