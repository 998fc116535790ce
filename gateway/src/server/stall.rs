//! `write_timeout` for the connections hyper serves (TLS, h2c): a stream whose writes
//! give up once the peer has made no room for them for the limit.
//!
//! hyper has no write timeout, and on these connections responses are framed by hyper,
//! out of the gateway's sight, so the limit applies where the bytes go: to each stall.
//! That is nginx's `send_timeout`: a client that reads nothing for the limit loses the
//! connection; one that keeps reading keeps it, however large the response.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A stream whose writes fail with `TimedOut` once one has waited the limit for room.
pub struct WriteStall<T> {
    io: T,
    /// No limit: writes wait as long as the stream makes them.
    limit: Option<Duration>,
    /// Set while a write waits for room: fires at the end of the allowed stall. Made at
    /// the first stall and moved for later ones.
    timer: Option<Pin<Box<Sleep>>>,
    stalled: bool,
}

impl<T> WriteStall<T> {
    pub fn new(io: T, limit: Option<Duration>) -> Self {
        Self { io, limit, timer: None, stalled: false }
    }

    /// What a write that got `Pending` from the stream returns: `Pending` again until
    /// the stall has lasted the limit, then `TimedOut`.
    fn wait<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let Some(limit) = self.limit else { return Poll::Pending };
        if !self.stalled {
            self.stalled = true;
            let deadline = Instant::now() + limit;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        match self.timer.as_mut().map(|timer| timer.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client read nothing for write_timeout")))
            }
            _ => Poll::Pending,
        }
    }

    /// A write's outcome: progress (or an error) ends the stall.
    fn settle<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled = false;
                Poll::Ready(result)
            }
            Poll::Pending => self.wait(cx),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStall<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStall<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.settle(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.settle(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.settle(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_shutdown(cx);
        this.settle(cx, poll)
    }
}
