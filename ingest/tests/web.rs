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

#[tokio::test]
async fn cross_origin_calls_are_refused_unless_the_origin_is_listed() {
    let off = start().await;
    let preflight = off
        .client
        .request(reqwest::Method::OPTIONS, off.url("/v1/jobs"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 405, "off: OPTIONS is not a route");
    let listed = off
        .client
        .get(off.url("/v1/jobs"))
        .header("origin", "https://app.example.com")
        .header("authorization", bearer(ACME_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    assert!(!listed.headers().contains_key("access-control-allow-origin"));
    off.stop().await;

    let on = start_with(Options {
        tune: |config| config.server.cors_origins = vec!["https://app.example.com".into()],
        ..Options::default()
    })
    .await;
    let preflight = on
        .client
        .request(reqwest::Method::OPTIONS, on.url("/v1/jobs"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(allowed.contains("authorization"), "{allowed}");
    let listed = on
        .client
        .get(on.url("/v1/jobs"))
        .header("origin", "https://app.example.com")
        .header("authorization", bearer(ACME_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(
        listed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    // An error answer carries the permission too, so the page can read why it failed.
    let refused = on
        .client
        .get(on.url("/v1/jobs"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(
        refused
            .headers()
            .contains_key("access-control-allow-origin")
    );
    let other = on
        .client
        .get(on.url("/v1/jobs"))
        .header("origin", "https://evil.example")
        .header("authorization", bearer(ACME_KEY))
        .send()
        .await
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    on.stop().await;
}
