//! The web UI (DESIGN.md "The web UI"): static files embedded in the binary (no CDN, nothing
//! fetched at run time), served at `/` and `/ui/{file}`. The page only calls the public API;
//! it is held to a strict Content-Security-Policy: scripts and styles from this origin only,
//! no inline code, no framing, no requests to other hosts.

use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};

use crate::error::ApiError;
use pipeline::ErrorCode;

const INDEX: &str = include_str!("../web/index.html");

/// The files under `/ui/`: name, Content-Type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/app.js"),
    ),
    (
        "player.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/player.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../web/app.css"),
    ),
];

/// Everything the page needs and nothing more: its own scripts and styles, the API on the same
/// origin (`connect-src`), stems decoded from `blob:` URLs, waveforms drawn on canvases.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut response = warp::reply::with_status(body, StatusCode::OK).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The files change with the binary: always revalidate (they are small).
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /`: the page (load balancers probe it too: always 200, no auth).
pub(crate) fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/{file}`: a script or style sheet of the page.
pub(crate) fn asset(name: &str) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|(file, _, _)| *file == name)
        .map(|(_, content_type, body)| page(content_type, body))
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no file /ui/{name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_names_is_served() {
        for reference in ["/ui/app.js", "/ui/app.css"] {
            assert!(INDEX.contains(reference), "{reference}");
        }
        for (name, _, body) in ASSETS {
            assert!(!body.is_empty(), "{name}");
        }
        // The scripts import each other by these paths.
        assert!(
            ASSETS
                .iter()
                .any(|(_, _, body)| body.contains("/ui/player.js"))
        );
    }

    #[test]
    fn the_page_has_no_inline_code_the_policy_would_block() {
        assert!(!INDEX.contains("<script>"), "inline script");
        assert!(!INDEX.contains("style="), "inline style");
        assert!(!INDEX.contains("onclick"), "inline handler");
        assert!(asset("../lib.rs").is_err());
    }
}
