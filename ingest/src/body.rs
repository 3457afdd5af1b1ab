//! Request and response body plumbing between warp and the pipeline's byte streams.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};
use pipeline::BackendError;
use pipeline::traits::ByteStream;

/// A warp body (or multipart part) as a pipeline [`ByteStream`]. A body that breaks off is
/// the client's doing: [`BackendError::ClientBody`] (400), not an I/O fault of the service.
pub(crate) fn byte_stream<S, B>(body: S) -> ByteStream
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf,
{
    body.map(|chunk| {
        chunk
            .map(|mut buf| buf.copy_to_bytes(buf.remaining()))
            .map_err(|err| BackendError::ClientBody(err.to_string()))
    })
    .boxed()
}

/// Makes a `Send` stream `Sync`, as warp's streaming replies ask, without locking: the
/// mutex is only ever reached through `&mut`.
pub(crate) struct SyncStream<S>(Mutex<S>);

impl<S> SyncStream<S> {
    pub(crate) fn new(stream: S) -> Self {
        Self(Mutex::new(stream))
    }
}

impl<S: Stream + Unpin> Stream for SyncStream<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .0
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .poll_next_unpin(cx)
    }
}

/// Reads a whole (small) body, refusing it past `limit` bytes.
pub(crate) async fn collect_limited(
    mut body: ByteStream,
    limit: u64,
) -> Result<Option<Bytes>, BackendError> {
    let mut collected = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if (collected.len() + chunk.len()) as u64 > limit {
            return Ok(None);
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(Some(collected.freeze()))
}
