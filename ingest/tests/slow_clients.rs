//! A client cannot hold the server: a request head that never ends (or never starts) is closed, a body that
//! stops arriving fails its request (400, nothing stored), and past `server.max_connections`
//! a new connection is answered 503 `overloaded` at once. The server serves normally after.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the test waits for the server to act on a timeout of one second: a server that
/// never acts fails the test here instead of hanging the suite.
const PATIENCE: Duration = Duration::from_secs(30);

fn short_timeouts(config: &mut pipeline::Config) {
    config.server.header_timeout_secs = 1;
    config.server.body_idle_timeout_secs = 1;
}

fn three_connections(config: &mut pipeline::Config) {
    config.server.max_connections = 3;
}

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Everything the server sends until it closes the connection.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut reply = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection");
    String::from_utf8_lossy(&reply).into_owned()
}

async fn still_serves(server: &Server) {
    let (status, body) = upload(server, "", wav_body(2000)).await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn half_a_request_head_is_closed() {
    let server = start_with(Options {
        tune: short_timeouts,
        ..Options::default()
    })
    .await;
    let mut stream = connect(&server).await;
    stream
        .write_all(b"POST /v1/jobs HTTP/1.1\r\nHost: msaas\r\nContent-Type: audio/wav\r\n")
        .await
        .unwrap();
    let reply = read_until_closed(&mut stream).await;
    assert!(!reply.contains(" 202 "), "{reply}");
    assert!(server.objects().is_empty(), "{:?}", server.objects());
    // A client that sends nothing at all, or only the start of HTTP/2's preface, too.
    for sent in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut silent = connect(&server).await;
        silent.write_all(sent).await.unwrap();
        read_until_closed(&mut silent).await;
    }
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_body_that_stops_arriving_fails_its_request() {
    let server = start_with(Options {
        tune: short_timeouts,
        ..Options::default()
    })
    .await;
    let audio = wav_body(4000);
    let legacy_start = br#"{"model": "tiny", "mp3": "UklGR"#;
    let cases: [(&str, &str, &[u8]); 2] = [
        ("/v1/jobs", "audio/wav", &audio[..2000]),
        ("/apiv1/separate", "application/json", legacy_start),
    ];
    for (path, content_type, sent) in cases {
        let mut stream = connect(&server).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: msaas\r\nAuthorization: Bearer {ACME_KEY}\r\n\
             Content-Type: {content_type}\r\nContent-Length: 100000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let reply = read_until_closed(&mut stream).await;
        assert!(reply.starts_with("HTTP/1.1 400 "), "{path}: {reply}");
        assert!(reply.contains("\"bad_request\""), "{path}: {reply}");
        assert!(reply.contains("stopped arriving"), "{path}: {reply}");
        assert!(
            server.objects().is_empty(),
            "{path}: {:?}",
            server.objects()
        );
        assert_eq!(server.depth().await.waiting, 0, "{path}");
    }
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn connections_past_the_cap_are_answered_503() {
    let server = start_with(Options {
        tune: three_connections,
        ..Options::default()
    })
    .await;
    // Three idle connections hold every slot (each is accepted before the next).
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&server).await);
    }
    let mut refused = connect(&server).await;
    refused
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: msaas\r\n\r\n")
        .await
        .unwrap();
    let reply = read_until_closed(&mut refused).await;
    assert!(reply.starts_with("HTTP/1.1 503 "), "{reply}");
    assert!(reply.contains("retry-after: 1"), "{reply}");
    assert!(reply.contains("\"overloaded\""), "{reply}");
    let metrics = observe::metrics::render();
    assert!(
        metrics.lines().any(
            |line| line.starts_with("msaas_http_connections_refused_total ")
                && !line.ends_with(" 0")
        ),
        "{metrics}"
    );

    // A slot comes back when a connection closes.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match server.client.get(server.url("/healthz")).send().await {
            Ok(response) if response.status() == 200 => break,
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no slot came back: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(held);
    server.stop().await;
}
