//! The MSaaS HTTP API (DESIGN.md "The contract users see"): uploads streamed into storage,
//! job status, server-sent events, stem downloads, API-key auth per tenant, the routes of
//! the service MSaaS replaces (`/apiv1/...`), and the OpenAPI document. Works on any
//! [`pipeline::Backends`]: embedded, or Redis + S3 + NATS.

mod api;
mod auth;
mod body;
mod cors;
mod error;
mod events;
mod lease;
mod legacy;
mod openapi;
mod options;
mod quota;
mod reply;
mod routes;
mod serve;
mod sniff;
mod state;
mod stems;
mod upload;
mod view;
mod web;

use std::future::Future;
use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

pub use auth::{ANONYMOUS_TENANT, KeyDirectory, key_hash};
pub use error::{ApiError, IngestError, status_for};
pub use openapi::openapi;
pub use options::UPLOAD_PARAMETERS;
pub use routes::ROUTES;
pub use serve::ServerLimits;
pub use sniff::sniff;
pub use state::{IngestState, ModelInfo};

/// The routes as a warp filter (for embedding in another server, or `warp::test`).
pub fn routes(state: IngestState) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    routes::all(state)
}

/// Listens on `addr` (port 0: any free port) and returns the bound address with the future
/// that serves until `shutdown` is cancelled, under the state's [`ServerLimits`]. Shutdown
/// is graceful: no new connections, requests in flight finish, event streams end.
pub async fn bind(
    state: IngestState,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = ()> + Send), IngestError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| IngestError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| IngestError::Bind { addr, source })?;
    state.stop_streams_on(shutdown.clone());
    let limits = state.inner.server_limits;
    tracing::info!(addr = %local, ?limits, "ingest listening");
    Ok((
        local,
        serve::serve(listener, routes::all(state), limits, shutdown),
    ))
}
