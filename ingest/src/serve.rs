//! The HTTP/1.1 server around the routes, bounded against slow and greedy clients: a request
//! head must arrive within `server.header_timeout_secs` (a client that sends nothing at all
//! included), a request body that stops arriving
//! for `server.body_idle_timeout_secs` fails its request (400), and past
//! `server.max_connections` open connections a new one is answered 503 `overloaded` and
//! closed. Connection errors are the clients' doing (resets, bad heads, timeouts): they are
//! logged at debug, never as the service's faults.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// What one listener lets its clients hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Longest wait for a whole request head (from the connection's start, or the end of the
    /// previous response on a kept-alive connection).
    pub header_timeout: Duration,
    /// Longest wait for the next bytes of a request body that is being read.
    pub body_idle_timeout: Duration,
    /// Open connections at most; more are answered 503 and closed.
    pub max_connections: usize,
}

impl ServerLimits {
    pub fn from_config(config: &pipeline::config::ServerConfig) -> Self {
        Self {
            header_timeout: Duration::from_secs(config.header_timeout_secs.max(1)),
            body_idle_timeout: Duration::from_secs(config.body_idle_timeout_secs.max(1)),
            max_connections: config.max_connections.max(1),
        }
    }
}

/// Connections refused at a time (each for at most [`REFUSAL_TIME`]); past that, dropped.
const MAX_REFUSALS: usize = 64;
const REFUSAL_TIME: Duration = Duration::from_secs(2);

/// Serves `routes` on `listener` until `shutdown`, then finishes the requests in flight.
pub(crate) async fn serve(
    listener: TcpListener,
    routes: BoxedFilter<(Response,)>,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            observe::metrics::connection_refused();
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REFUSAL_TIME, refuse(stream)).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let watcher = graceful.watcher();
        let routes = routes.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let request =
                    request.map(|body| IdleTimeoutBody::new(body, limits.body_idle_timeout));
                let mut service = warp::service(routes.clone());
                service.call(request)
            });
            // HTTP/1 only: detecting HTTP/2 first would wait for the client's first bytes
            // with no timeout, so a silent connection could hold its slot for ever.
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(connection).await {
                tracing::debug!(%err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// An accept that failed: out of file descriptors (wait a little, as hyper did) or a
/// connection that went away before it was accepted (nothing to do).
async fn accept_failed(err: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        tracing::debug!(%err, "connection lost before accept");
        return;
    }
    tracing::warn!(%err, "accept failed; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Answers a connection over the cap: 503 `overloaded`, then a clean close (the request, if
/// sent, is read and dropped so that the client sees the answer rather than a reset).
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"error":{"code":"overloaded","message":"the server has too many open connections; retry shortly"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while drained < 64 * 1024 {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// A request body that fails once no bytes came for `idle` while it was being read. Time
/// spent by the handler elsewhere (the store taking a chunk) does not count.
struct IdleTimeoutBody {
    inner: Incoming,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    armed: bool,
}

impl IdleTimeoutBody {
    fn new(inner: Incoming, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            armed: false,
        }
    }
}

/// Why an [`IdleTimeoutBody`] failed.
#[derive(Debug, thiserror::Error)]
#[error("the request body stopped arriving (nothing for {0:?})")]
struct BodyIdle(Duration);

impl Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.armed {
                    this.armed = true;
                    this.timer.as_mut().reset(Instant::now() + this.idle);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyIdle(this.idle))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
