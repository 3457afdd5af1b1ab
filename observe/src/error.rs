//! What can go wrong setting up logging, trace export or the metrics listener.

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObserveError {
    #[error("invalid log filter {filter:?}: {reason}")]
    BadFilter { filter: String, reason: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL {0:?} is not supported (use grpc or http/protobuf)")]
    BadOtlpProtocol(String),
    #[error("OTLP trace exporter: {0}")]
    Exporter(String),
    #[error("OTLP trace export needs a tokio runtime: set up tracing from inside one")]
    NoRuntime,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}
