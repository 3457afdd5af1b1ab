//! The whole route table: the `/v1` routes, the legacy `/apiv1` routes, JSON errors for
//! everything that matches neither, and the request metrics by route template.

use warp::Reply;
use warp::filters::BoxedFilter;
use warp::{Filter, reply::Response};

use crate::error::recover;
use crate::state::IngestState;

/// Every route the API serves, as (method, OpenAPI path template).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/ui/{file}"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}"),
    ("DELETE", "/v1/jobs/{id}"),
    ("GET", "/v1/jobs/{id}/stems/{stem}"),
    ("GET", "/v1/jobs/{id}/events"),
    ("GET", "/v1/models"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
    ("POST", "/apiv1/separate"),
    ("GET", "/apiv1/queue"),
    ("GET", "/apiv1/track/{hash}/{track}"),
    ("GET", "/apiv1/remove/{hash}/{track}"),
    ("DELETE", "/apiv1/remove/{hash}/{track}"),
];

/// Every route, with JSON errors for everything that does not match.
pub(crate) fn all(state: IngestState) -> BoxedFilter<(Response,)> {
    let cors = state.inner.cors.clone();
    let preflight_cors = cors.clone();
    // Preflights only when cross-origin access is on; otherwise OPTIONS is a 405 as before.
    let preflight = warp::options()
        .and(warp::header::optional::<String>("origin"))
        .and_then(move |origin: Option<String>| {
            let cors = preflight_cors.clone();
            async move {
                if cors.enabled() {
                    Ok(cors.preflight(origin.as_deref()))
                } else {
                    Err(warp::reject::not_found())
                }
            }
        });
    let routed = crate::api::routes(state.clone())
        .or(crate::legacy::routes(state))
        .unify()
        .recover(recover)
        .unify();
    preflight
        .or(warp::header::optional::<String>("origin").and(routed).map(
            move |origin: Option<String>, response: Response| {
                cors.decorate(origin.as_deref(), response)
            },
        ))
        .unify()
        .with(warp::log::custom(|info| {
            observe::metrics::http_request(
                route_label(info.method().as_str(), info.path()),
                info.method().as_str(),
                info.status().as_u16(),
                info.elapsed().as_secs_f64(),
            );
        }))
        .map(Reply::into_response)
        .boxed()
}

/// The route template a request path matched (a metrics label: never the raw path, which
/// holds job ids).
pub(crate) fn route_label(method: &str, path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    ROUTES
        .iter()
        .filter(|(route_method, _)| *route_method == method)
        .map(|(_, template)| *template)
        .find(|template| {
            let parts: Vec<&str> = template.trim_matches('/').split('/').collect();
            parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(part, segment)| part.starts_with('{') || part == segment)
        })
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_templates() {
        assert_eq!(
            route_label("GET", "/v1/jobs/0b6c/stems/vocals"),
            "/v1/jobs/{id}/stems/{stem}"
        );
        assert_eq!(route_label("DELETE", "/v1/jobs/x"), "/v1/jobs/{id}");
        assert_eq!(route_label("POST", "/v1/jobs"), "/v1/jobs");
        assert_eq!(route_label("GET", "/nope"), "other");
    }
}
