//! The small HTTP listener of worker roles: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use warp::Filter;
use warp::http::StatusCode;

use crate::error::ObserveError;

/// Whether the role can do its work now (its backends answer); `/readyz` asks it.
pub type ReadyCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// Serves `/metrics` ([`crate::metrics::render`]), `/healthz` (the process is up) and
/// `/readyz` (200 when `ready()` says so, else 503) on `addr` (port 0: any free port) until
/// `shutdown` is cancelled. Returns the bound address; the server runs on a spawned task.
pub async fn serve_metrics(
    addr: SocketAddr,
    ready: ReadyCheck,
    shutdown: CancellationToken,
) -> Result<SocketAddr, ObserveError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ObserveError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ObserveError::Bind { addr, source })?;

    let metrics = warp::path!("metrics").and(warp::get()).map(|| {
        warp::reply::with_header(
            crate::metrics::render(),
            "content-type",
            crate::metrics::CONTENT_TYPE,
        )
    });
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::with_status("ok\n", StatusCode::OK));
    let readyz = warp::path!("readyz").and(warp::get()).map(move || {
        if ready() {
            warp::reply::with_status("ready\n", StatusCode::OK)
        } else {
            warp::reply::with_status("not ready\n", StatusCode::SERVICE_UNAVAILABLE)
        }
    });
    let routes = metrics.or(healthz).or(readyz);

    let server = warp::serve(routes)
        .incoming(listener)
        .graceful(shutdown.cancelled_owned());
    tokio::spawn(server.run());
    tracing::info!(%bound, "metrics listener up");
    Ok(bound)
}
