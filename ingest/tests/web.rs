//! The web UI's files and headers, and cross-origin access (`server.cors_origins`): off by
//! default (a preflight is a 405 as before, no CORS header anywhere), on for listed origins only.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod common;

use common::{ACME_KEY, Options, bearer, start, start_with};

#[tokio::test]
async fn the_page_and_its_files_come_with_a_strict_policy() {
    let server = start().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/player.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let policy = headers["content-security-policy"].to_str().unwrap();
        for rule in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(rule), "{path}: {policy}");
        }
        assert!(!policy.contains("unsafe-inline"), "{path}: {policy}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
    }
    let missing = server
        .client
        .get(server.url("/ui/secret.rs"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    server.stop().await;
}

const APP: &str = "https://app.example.com";

/// A browser's call from `origin`: a preflight (`OPTIONS`), or `GET /v1/jobs` with or without
/// the key.
async fn from_origin(
    server: &common::Server,
    method: reqwest::Method,
    origin: &str,
    key: Option<&str>,
) -> reqwest::Response {
    let mut request = server
        .client
        .request(method.clone(), server.url("/v1/jobs"))
        .header("origin", origin);
    if method == reqwest::Method::OPTIONS {
        request = request
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            );
    }
    if let Some(key) = key {
        request = request.header("authorization", bearer(key));
    }
    request.send().await.unwrap()
}

fn allowed_origin(response: &reqwest::Response) -> Option<&str> {
    response
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn cross_origin_calls_are_refused_unless_the_origin_is_listed() {
    use reqwest::Method;
    let off = start().await;
    let preflight = from_origin(&off, Method::OPTIONS, APP, None).await;
    assert_eq!(preflight.status(), 405, "off: OPTIONS is not a route");
    let listed = from_origin(&off, Method::GET, APP, Some(ACME_KEY)).await;
    assert_eq!(listed.status(), 200);
    assert_eq!(allowed_origin(&listed), None);
    off.stop().await;

    let on = start_with(Options {
        tune: |config| config.server.cors_origins = vec![APP.into()],
        ..Options::default()
    })
    .await;
    let preflight = from_origin(&on, Method::OPTIONS, APP, None).await;
    assert_eq!(preflight.status(), 204);
    assert_eq!(allowed_origin(&preflight), Some(APP));
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(allowed.contains("authorization"), "{allowed}");
    let listed = from_origin(&on, Method::GET, APP, Some(ACME_KEY)).await;
    assert_eq!(listed.status(), 200);
    assert_eq!(allowed_origin(&listed), Some(APP));
    // An error answer carries the permission too, so the page can read why it failed.
    let refused = from_origin(&on, Method::GET, APP, None).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(allowed_origin(&refused), Some(APP));
    let other = from_origin(&on, Method::GET, "https://evil.example", Some(ACME_KEY)).await;
    assert_eq!(other.status(), 200);
    assert_eq!(allowed_origin(&other), None);
    let preflight = from_origin(&on, Method::OPTIONS, "https://evil.example", None).await;
    assert_eq!(
        allowed_origin(&preflight),
        None,
        "no permission for another site"
    );
    on.stop().await;
}
