//! Cross-origin access to the API (`server.cors_origins`), off by default: the web UI is served
//! by the API itself (same origin) and needs none. An operator who hosts another front end lists
//! its origins; `*` allows any. Credentials are a Bearer header, never cookies, so no
//! `Access-Control-Allow-Credentials`: another site cannot act with a user's ambient rights.

use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};

/// Headers a cross-origin caller may send, and response headers it may read.
const ALLOW_HEADERS: &str = "authorization, content-type, idempotency-key, range";
const ALLOW_METHODS: &str = "GET, POST, DELETE, OPTIONS";
const EXPOSE_HEADERS: &str = "content-disposition, content-range, retry-after, location";

#[derive(Debug, Clone, Default)]
pub(crate) struct CorsPolicy {
    /// Exact origins (`https://app.example.com`), or `*`.
    origins: Vec<String>,
}

impl CorsPolicy {
    pub(crate) fn new(origins: &[String]) -> Self {
        Self {
            origins: origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_owned())
                .collect(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        !self.origins.is_empty()
    }

    fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o == "*" || o == origin)
    }

    /// The allowed origin to answer with, or `None` (no CORS headers: the browser refuses).
    fn answer(&self, origin: Option<&str>) -> Option<HeaderValue> {
        let origin = origin?;
        if !self.allows(origin) {
            return None;
        }
        HeaderValue::from_str(origin).ok()
    }

    fn vary(headers: &mut HeaderMap) {
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }

    /// Adds the CORS headers of an allowed origin to an API response.
    pub(crate) fn decorate(&self, origin: Option<&str>, mut response: Response) -> Response {
        if !self.enabled() {
            return response;
        }
        let headers = response.headers_mut();
        Self::vary(headers);
        if let Some(allowed) = self.answer(origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
        }
        response
    }

    /// The answer to a preflight `OPTIONS` request: 204, with the permissions when the origin
    /// is allowed and without them (so the browser stops) when it is not.
    pub(crate) fn preflight(&self, origin: Option<&str>) -> Response {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        Self::vary(headers);
        if let Some(allowed) = self.answer(origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_get_permissions_and_off_changes_nothing() {
        let off = CorsPolicy::new(&[]);
        let plain = off.decorate(Some("https://evil.example"), StatusCode::OK.into_response());
        assert!(plain.headers().is_empty());

        let on = CorsPolicy::new(&["https://app.example.com/".to_owned()]);
        let allowed = on.decorate(
            Some("https://app.example.com"),
            StatusCode::OK.into_response(),
        );
        assert_eq!(
            allowed.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        let refused = on.preflight(Some("https://evil.example"));
        assert_eq!(refused.status(), StatusCode::NO_CONTENT);
        assert!(
            !refused
                .headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        );
        let granted = on.preflight(Some("https://app.example.com"));
        assert!(
            granted.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
                .to_str()
                .unwrap_or_default()
                .contains("authorization")
        );
        assert!(
            !granted
                .headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
        );

        let any = CorsPolicy::new(&["*".to_owned()]);
        let echoed = any.decorate(
            Some("http://localhost:5173"),
            StatusCode::OK.into_response(),
        );
        assert_eq!(
            echoed.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "http://localhost:5173"
        );
    }
}
