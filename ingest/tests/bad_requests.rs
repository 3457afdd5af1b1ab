//! The corpus of bad requests: each gets the right status and a JSON error with a stable
//! code, and none of them queues a job or leaves an object in storage.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Case {
    name: &'static str,
    request: reqwest::RequestBuilder,
    status: u16,
    code: &'static str,
}

const LIMIT: u64 = 10_000;

#[tokio::test]
async fn every_bad_request_is_refused_with_its_code_and_queues_nothing() {
    let server = start_with(Options {
        max_input_bytes: LIMIT,
        ..Options::default()
    })
    .await;
    let client = &server.client;
    let auth = bearer(ACME_KEY);
    let post = |query: &str| {
        client
            .post(server.url(&format!("/v1/jobs{query}")))
            .header("authorization", auth.clone())
    };
    let chunked_oversize = {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..8).map(|_| Ok(wav_body(4000))).collect();
        reqwest::Body::wrap_stream(futures::stream::iter(chunks))
    };
    let random_id = uuid::Uuid::new_v4();
    let cases = vec![
        Case {
            name: "no auth",
            request: client.post(server.url("/v1/jobs")).body(wav_body(100)),
            status: 401,
            code: "unauthorized",
        },
        Case {
            name: "wrong key",
            request: client
                .post(server.url("/v1/jobs"))
                .header("authorization", "Bearer nope")
                .body(wav_body(100)),
            status: 401,
            code: "unauthorized",
        },
        Case {
            name: "not bearer",
            request: client
                .get(server.url("/v1/jobs"))
                .header("authorization", "Basic YTpi"),
            status: 401,
            code: "unauthorized",
        },
        Case {
            name: "oversize with content-length",
            request: post("").body(wav_body(50_000)),
            status: 413,
            code: "payload_too_large",
        },
        Case {
            name: "oversize chunked",
            request: post("").body(chunked_oversize),
            status: 413,
            code: "payload_too_large",
        },
        Case {
            name: "non-audio",
            request: post("")
                .header("content-type", "application/octet-stream")
                .body("<html><body>hello</body></html>"),
            status: 415,
            code: "unsupported_media_type",
        },
        Case {
            name: "text content type",
            request: post("")
                .header("content-type", "text/plain")
                .body(wav_body(100)),
            status: 415,
            code: "unsupported_media_type",
        },
        Case {
            name: "empty body",
            request: post("").body(Vec::new()),
            status: 400,
            code: "empty_input",
        },
        Case {
            name: "unknown model",
            request: post("?model=nope").body(wav_body(100)),
            status: 422,
            code: "invalid_option",
        },
        Case {
            name: "unknown stem",
            request: post("?model=duo&stems=vocals,drums").body(wav_body(100)),
            status: 422,
            code: "invalid_option",
        },
        Case {
            name: "unknown two_stems",
            request: post("?two_stems=kazoo").body(wav_body(100)),
            status: 422,
            code: "invalid_option",
        },
        Case {
            name: "unknown format",
            request: post("?format=ogg").body(wav_body(100)),
            status: 422,
            code: "invalid_option",
        },
        Case {
            name: "bad bitrate",
            request: post("?format=mp3&bitrate=100").body(wav_body(100)),
            status: 422,
            code: "invalid_option",
        },
        Case {
            name: "bad callback",
            request: post("?callback_url=ftp://x").body(wav_body(100)),
            status: 422,
            code: "invalid_option",
        },
        Case {
            name: "callback to cloud metadata",
            request: post("?callback_url=http%3A%2F%2F169.254.169.254%2Flatest%2Fmeta-data%2F")
                .body(wav_body(100)),
            status: 422,
            code: "invalid_option",
        },
        Case {
            name: "callback to metadata in decimal",
            request: post("?callback_url=http%3A%2F%2F2852039166%2F").body(wav_body(100)),
            status: 422,
            code: "invalid_option",
        },
        Case {
            name: "callback to metadata as mapped IPv6",
            request: post("?callback_url=http%3A%2F%2F%5B%3A%3Affff%3A169.254.169.254%5D%2F")
                .body(wav_body(100)),
            status: 422,
            code: "invalid_option",
        },
        Case {
            name: "callback to a private address",
            request: post("?callback_url=http%3A%2F%2F10.0.0.7%3A6379%2F").body(wav_body(100)),
            status: 422,
            code: "invalid_option",
        },
        Case {
            name: "callback without a host",
            request: post("?callback_url=http%3A%2F%2F").body(wav_body(100)),
            status: 422,
            code: "invalid_option",
        },
        Case {
            name: "callback with a space",
            request: post("?callback_url=http%3A%2F%2Fa%20b%2F").body(wav_body(100)),
            status: 422,
            code: "invalid_option",
        },
        Case {
            name: "callback with CR LF",
            request: post("?callback_url=http%3A%2F%2Fexample.com%2F%0D%0AX-Injected%3A%201")
                .body(wav_body(100)),
            status: 422,
            code: "invalid_option",
        },
        Case {
            name: "callback with credentials",
            request: post("?callback_url=http%3A%2F%2Fu%3Ap%40example.com%2F").body(wav_body(100)),
            status: 422,
            code: "invalid_option",
        },
        Case {
            name: "legacy callback to cloud metadata",
            request: client
                .post(server.url("/apiv1/separate"))
                .header("authorization", auth.clone())
                .body(r#"{"mp3":"UklGRg==","callback":"http://169.254.169.254/"}"#),
            status: 422,
            code: "invalid_option",
        },
        Case {
            name: "unknown parameter",
            request: post("?modle=tiny").body(wav_body(100)),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "repeated parameter",
            request: post("?model=tiny&model=duo").body(wav_body(100)),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "bad idempotency key",
            request: post("")
                .header("idempotency-key", "a b")
                .body(wav_body(100)),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "bad base64",
            request: client
                .post(server.url("/apiv1/separate"))
                .header("authorization", auth.clone())
                .body(r#"{"mp3":"!!!not base64!!!","model":"tiny"}"#),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "bad JSON",
            request: client
                .post(server.url("/apiv1/separate"))
                .header("authorization", auth.clone())
                .body(r#"{"mp3": "#),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "legacy unknown model",
            request: client
                .post(server.url("/apiv1/separate"))
                .header("authorization", auth.clone())
                .json(&serde_json::json!({"mp3": "UklGRiQAAABXQVZFZm10IA==", "model": "nope"})),
            status: 422,
            code: "invalid_option",
        },
        Case {
            name: "legacy no auth",
            request: client
                .post(server.url("/apiv1/separate"))
                .json(&serde_json::json!({"mp3": "UklGRiQAAABXQVZFZm10IA=="})),
            status: 401,
            code: "unauthorized",
        },
        Case {
            name: "legacy non-audio",
            request: client
                .post(server.url("/apiv1/separate"))
                .header("authorization", auth.clone())
                .json(&serde_json::json!({"mp3": "aGVsbG8gd29ybGQ="})),
            status: 415,
            code: "unsupported_media_type",
        },
        Case {
            name: "traversal job id",
            request: client
                .get(server.url("/v1/jobs/..%2F..%2Fetc%2Fpasswd"))
                .header("authorization", auth.clone()),
            status: 404,
            code: "not_found",
        },
        Case {
            name: "dotdot job id",
            request: client
                .get(server.url("/v1/jobs/%2e%2e"))
                .header("authorization", auth.clone()),
            status: 404,
            code: "not_found",
        },
        Case {
            name: "traversal stem",
            request: client
                .get(server.url(&format!("/v1/jobs/{random_id}/stems/..%2F..%2Fsecret")))
                .header("authorization", auth.clone()),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "traversal legacy track",
            request: client
                .get(server.url(&format!("/apiv1/track/{random_id}/..%2Fsource")))
                .header("authorization", auth.clone()),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "traversal legacy hash",
            request: client
                .get(server.url("/apiv1/track/..%2Fuploads/vocals"))
                .header("authorization", auth.clone()),
            status: 404,
            code: "not_found",
        },
        Case {
            name: "unknown job",
            request: client
                .get(server.url(&format!("/v1/jobs/{random_id}")))
                .header("authorization", auth.clone()),
            status: 404,
            code: "not_found",
        },
        Case {
            name: "unknown route",
            request: client
                .get(server.url("/v2/everything"))
                .header("authorization", auth.clone()),
            status: 404,
            code: "not_found",
        },
        Case {
            name: "wrong method",
            request: client
                .put(server.url("/v1/jobs"))
                .header("authorization", auth.clone()),
            status: 405,
            code: "bad_request",
        },
        Case {
            name: "bad list limit",
            request: client
                .get(server.url("/v1/jobs?limit=0"))
                .header("authorization", auth.clone()),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "unknown stem parameter",
            request: client
                .get(server.url(&format!("/v1/jobs/{random_id}/stems/vocals?as=zip")))
                .header("authorization", auth.clone()),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "unknown get parameter",
            request: client
                .get(server.url(&format!("/v1/jobs/{random_id}?x=1")))
                .header("authorization", auth.clone()),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "repeated list limit",
            request: client
                .get(server.url("/v1/jobs?limit=1&limit=2"))
                .header("authorization", auth.clone()),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "models with a parameter",
            request: client
                .get(server.url("/v1/models?x=1"))
                .header("authorization", auth.clone()),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "legacy queue with a parameter",
            request: client
                .get(server.url("/apiv1/queue?all=1"))
                .header("authorization", auth.clone()),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "legacy track with a parameter",
            request: client
                .get(server.url("/apiv1/track/abc/vocals?x=1"))
                .header("authorization", auth.clone()),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "legacy remove with a parameter",
            request: client
                .get(server.url("/apiv1/remove/abc/vocals?x=1"))
                .header("authorization", auth.clone()),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "multipart that is not form-data",
            request: client
                .post(server.url("/v1/jobs"))
                .header("authorization", auth.clone())
                .header("content-type", "multipart/mixed; boundary=b")
                .body(
                    [
                        &b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n"[..],
                        &wav_body(100),
                        &b"\r\n--b--\r\n"[..],
                    ]
                    .concat(),
                ),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "legacy upload with a parameter",
            request: client
                .post(server.url("/apiv1/separate?model=tiny"))
                .header("authorization", auth.clone())
                .body(r#"{"mp3":"UklGRg=="}"#),
            status: 400,
            code: "bad_request",
        },
    ];
    for case in cases {
        let response = tokio::time::timeout(Duration::from_secs(10), case.request.send())
            .await
            .unwrap_or_else(|_| panic!("{}: no answer", case.name))
            .unwrap_or_else(|err| panic!("{}: {err}", case.name));
        let status = response.status().as_u16();
        let www_authenticate = response.headers().get("www-authenticate").cloned();
        let body: serde_json::Value = response
            .json()
            .await
            .unwrap_or_else(|err| panic!("{}: error body is not JSON: {err}", case.name));
        assert_eq!(status, case.status, "{}: {body}", case.name);
        assert_eq!(code(&body), case.code, "{}: {body}", case.name);
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}: {body}",
            case.name
        );
        if status == 401 {
            assert!(
                www_authenticate.is_some(),
                "{}: no WWW-Authenticate",
                case.name
            );
        }
        let depth = server.depth().await;
        assert_eq!(
            (depth.waiting, depth.pending),
            (0, 0),
            "{}: something was queued",
            case.name
        );
        assert!(
            server.objects().is_empty(),
            "{}: left {:?}",
            case.name,
            server.objects()
        );
    }
    let jobs = server.backends.jobs.list("acme", 10).await.unwrap();
    assert!(jobs.is_empty(), "no job records: {jobs:?}");
    server.stop().await;
}

/// A request whose header is far beyond the server's header buffer gets a 4xx, promptly.
#[tokio::test]
async fn huge_header_gets_a_client_error_not_a_hang() {
    let server = start().await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "GET /v1/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ACME_KEY}\r\nX-Huge: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    // The server may stop reading (and close) before the whole head is sent.
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(head.as_bytes()).await;
        writer
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to a huge header");
    let status_line = String::from_utf8_lossy(&answer);
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {status_line:?}"));
    assert!((400..500).contains(&status), "{status_line}");
    drop(writing);
    assert_eq!(server.depth().await.waiting, 0);
    server.stop().await;
}
