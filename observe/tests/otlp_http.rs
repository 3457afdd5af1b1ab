//! OTLP over HTTP/protobuf: spans reach `POST {endpoint}/v1/traces` as protobuf. The
//! receiver is a plain HTTP server that keeps what it is sent. Its own test binary: the
//! tracing subscriber is global to the process.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use observe::{LogFormat, OtlpProtocol, OtlpSettings};
use tokio::sync::mpsc;
use warp::Filter;

struct Received {
    path: String,
    content_type: String,
    body: Bytes,
}

async fn start_receiver() -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let route = warp::post()
        .and(warp::path::full())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::body::bytes())
        .map(
            move |path: warp::path::FullPath, content_type: Option<String>, body: Bytes| {
                let _ = sender.send(Received {
                    path: path.as_str().to_owned(),
                    content_type: content_type.unwrap_or_default(),
                    body,
                });
                // An empty ExportTraceServiceResponse: all accepted.
                warp::reply::with_header(Vec::<u8>::new(), "content-type", "application/x-protobuf")
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (addr, receiver)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_http_protobuf() {
    let (addr, mut received) = start_receiver().await;
    let telemetry = observe::init_tracing(
        LogFormat::Json,
        "info",
        Some(OtlpSettings {
            endpoint: Some(format!("http://{addr}")),
            protocol: OtlpProtocol::HttpProtobuf,
            service_name: "msaas-http-test".into(),
        }),
    )
    .expect("tracing installed");

    let span = tracing::info_span!("http.export.check", msaas.stage = "decode");
    let traceparent = span
        .in_scope(|| {
            tracing::info!("inside the exported span");
            observe::trace::current_traceparent()
        })
        .expect("a traced span has a traceparent");
    drop(span);
    // Flushes the batch to the receiver.
    drop(telemetry);

    let request = tokio::time::timeout(Duration::from_secs(20), received.recv())
        .await
        .expect("the exporter posts within 20 s")
        .expect("a request");
    assert_eq!(request.path, "/v1/traces");
    assert!(
        request.content_type.starts_with("application/x-protobuf"),
        "{}",
        request.content_type
    );
    // Protobuf keeps strings and the 16 trace-id bytes verbatim.
    assert!(contains(&request.body, b"http.export.check"));
    assert!(contains(&request.body, b"msaas-http-test"));
    let trace_id = observe::trace::trace_id_of(&traceparent).unwrap();
    let trace_id_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(
        contains(&request.body, &trace_id_bytes),
        "trace id not in the export"
    );
}
