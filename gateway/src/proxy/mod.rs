//! Calling backends and shaping what they return.

pub mod backend;
pub mod client;
pub mod decode;
pub mod flatmap;
pub mod h1;
pub mod pipeline;
pub mod render;
pub mod shape;
pub mod spans;
pub mod upstream;
pub mod url;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// A backend body streamed through (`no-op`): from hyper's pooled client (HTTPS), or
/// from a connection the request drives itself (plain HTTP); bounded by the endpoint's
/// timeout once [`Deadline::end_by`] has set it.
pub type Streaming = Deadline<Either<Incoming, upstream::Streamed>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body that fails if it has not ended by a deadline: the endpoint's `timeout` covers
/// the whole response, so a backend that sends a head and then stalls cannot hold the
/// client's connection and its own for ever. The timer is made only when the body has
/// to wait, which a body that came whole with its head never does.
pub struct Deadline<B> {
    body: B,
    at: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> Deadline<B> {
    /// Not bounded until [`Deadline::end_by`].
    pub fn new(body: B) -> Self {
        Self { body, at: None, timer: None }
    }

    /// Bounds the body: it fails if it has not ended by `at`.
    pub fn end_by(&mut self, at: Instant) {
        self.at = Some(at);
    }
}

impl<B> http_body::Body for Deadline<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let Some(at) = this.at else { return Poll::Pending };
        let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the backend's body did not end within the endpoint's timeout",
            ))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body: built in memory, or a backend body streamed through (`no-op`).
pub type Body = Either<Full<Bytes>, Streaming>;

/// The fields of a passed-on response that are still lines of its backend's head
/// ([`h1::RawFields`]) rather than in its header map.
pub fn raw_fields(body: &mut Body) -> Option<&mut Option<Box<h1::RawFields>>> {
    match body {
        Either::Right(Deadline { body: Either::Right(streamed), .. }) => Some(streamed.raw_fields()),
        _ => None,
    }
}

/// Puts the fields a passed-on response still holds as lines of its backend's head into
/// its header map, ahead of those set since: for whatever reads or changes the map
/// (policies that decorate responses, the HTTP/2 and TLS server). The gateway's own
/// HTTP/1.1 server writes the lines as they are instead.
pub fn settle(response: &mut http::Response<Body>) {
    if let Some(raw) = raw_fields(response.body_mut()).and_then(Option::take) {
        let later = std::mem::take(response.headers_mut());
        *response.headers_mut() = (*raw).into_map(later);
    }
}

/// A body held in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Left(Full::new(bytes.into()))
}
