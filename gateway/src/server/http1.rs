//! Plain HTTP/1.1 connections, served without hyper.
//!
//! One task per connection reads a request head into its buffer, parses it in place
//! (httparse; header values are slices of the head, never copied), and hands the request
//! to the runtime with a body that reads from the same connection when, and only if, the
//! runtime asks for it. The response head is written straight into one buffer, and a
//! body that is already there (a built response, or the first bytes a backend sent with
//! its head) goes out in the same write. Between requests a connection holds no buffer.
//!
//! TLS and h2c connections keep hyper's server. On plain ones, hyper held two 8 KiB read
//! buffers and a write buffer for every busy connection (peak RSS with 1,000 connections
//! went from 43 to 31 MB without them), and the no-op proxy went from 27,100 to 24,500
//! instructions a request with this server.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::proxy::Body;
use crate::proxy::h1::{self, Framing, Step};
use crate::runtime::Shared;

/// A request with more header fields than this is refused with 431 (as hyper's limit).
const MAX_HEADERS: usize = 100;
/// Room for a request head: one page holds nearly every one.
const HEAD_READ: usize = 4 * 1024;
/// The most a body read asks room for at once.
const MAX_READ: usize = 64 * 1024;
/// A response body chunk up to this size is copied into the write that carries the head
/// (or its chunk framing); larger ones are written from where they are.
const COALESCE: usize = 16 * 1024;
/// Room reserved for a response head: most heads fit.
const HEAD_ROOM: usize = 512;
/// A request body the runtime did not read is read and dropped, up to this much and for
/// at most [`DRAIN_FOR`], so that the connection can carry the next request; beyond
/// that the connection is closed.
const DRAIN_BYTES: u64 = 256 * 1024;
const DRAIN_FOR: Duration = Duration::from_secs(1);
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How plain connections are served; fixed for the life of a listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request head must arrive within this, counted from when the connection is
    /// ready for it (so it also bounds how long a keep-alive connection may idle).
    pub header_timeout: Duration,
    /// The most a request head (request line and header fields) may take: 431 above.
    pub max_header_bytes: usize,
    /// Writing a response (head and body) must finish within this, when set.
    pub write_timeout: Option<Duration>,
}

/// Serves one connection until the client closes it, it idles past the header timeout,
/// a request asks to close, or `stop` changes (then the request in flight is answered
/// first).
pub async fn serve(io: TcpStream, remote: SocketAddr, runtime: Shared, limits: Limits, mut stop: watch::Receiver<()>) {
    let mut conn =
        Conn { io, buf: BytesMut::new(), body: Framing::Length(0), body_broken: false, expect_continue: None };
    // One timer for the connection's life, moved forward for each request head: pushing
    // a deadline later costs an atomic store, where a new timer takes the wheel's lock.
    let timer = tokio::time::sleep(limits.header_timeout);
    tokio::pin!(timer);
    // One wait for the stop signal for the connection's life, polled while it idles: a
    // wait made for each request would join and leave the signal's waiter list each time.
    let watched = stop.clone();
    let stopped = async move {
        let _ = stop.changed().await;
    };
    tokio::pin!(stopped);
    loop {
        let head = match conn.read_head(&limits, timer.as_mut(), stopped.as_mut()).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(status) => {
                let _ = conn.refuse(status).await;
                return;
            }
        };
        let exchange = Exchange {
            head: head.parts.method == Method::HEAD,
            http11: head.parts.version == Version::HTTP_11,
            keep_alive: head.keep_alive,
        };
        conn.body = head.framing;
        conn.body_broken = false;
        conn.expect_continue = head.expect_continue.then_some(0);
        let runtime = runtime.load_full();
        // Boxed: the request path's future is large, and inline it would be part of
        // every connection's task, idle or not.
        let response = if conn.body.is_done() {
            // Nothing more to read for this request: while it is answered, the socket is
            // watched for the client going away, which drops the work (backend calls
            // included), as hyper did.
            let request = Request::from_parts(head.parts, RequestBody { conn: None });
            match unless_closed(&conn.io, Box::pin(runtime.handle(request, remote))).await {
                Some(response) => response,
                None => return,
            }
        } else {
            let request = Request::from_parts(head.parts, RequestBody { conn: Some(&mut conn) });
            Box::pin(runtime.handle(request, remote)).await
        };
        let unread = conn.unread_body();
        let stopping = !matches!(watched.has_changed(), Ok(false));
        let keep_alive = exchange.keep_alive && !stopping && unread.drainable();
        let written = match limits.write_timeout {
            Some(limit) => tokio::time::timeout(limit, conn.respond(response, &exchange, keep_alive))
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
            None => conn.respond(response, &exchange, keep_alive).await,
        };
        match written {
            Ok(true) if keep_alive => {}
            Ok(_) => {
                conn.linger(unread).await;
                return;
            }
            Err(_) => return,
        }
        if unread == Unread::Some && !conn.drain().await {
            conn.linger(Unread::Some).await;
            return;
        }
        if conn.buf.is_empty() {
            // Idle: the buffer goes back, for whichever connection reads a request next.
            spare::give(std::mem::take(&mut conn.buf));
        }
    }
}

/// What the response depends on from its request.
struct Exchange {
    /// A HEAD request: the response has headers only.
    head: bool,
    http11: bool,
    /// The client wants the connection kept.
    keep_alive: bool,
}

/// The request body the runtime left unread, when the response is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unread {
    Nothing,
    /// A small or unknown amount, worth reading and dropping to keep the connection.
    Some,
    /// Too much to read for nothing, or a client that waits for `100 Continue` before
    /// sending it: the connection closes after the response.
    TooMuch,
}

impl Unread {
    fn drainable(self) -> bool {
        self != Unread::TooMuch
    }
}

struct Conn {
    io: TcpStream,
    /// What has been read and not consumed; no capacity while the connection idles.
    buf: BytesMut,
    /// How the current request's body ends, and how much of it is left.
    body: Framing,
    /// Reading the body failed (bad chunking, the client closed): its end is unknown.
    body_broken: bool,
    /// A client waiting for `100 Continue`: how much of it has been written.
    expect_continue: Option<usize>,
}

/// A parsed request head and what it says about its body and connection.
#[derive(Debug)]
struct Head {
    parts: http::request::Parts,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

impl Conn {
    /// Reads until a whole request head is in the buffer and parses it. `Ok(None)`: the
    /// connection ends quietly (closed by the client, idle too long, or shutting down
    /// between requests). `Err`: the status to refuse the request with.
    async fn read_head(
        &mut self,
        limits: &Limits,
        mut timer: Pin<&mut Sleep>,
        mut stopped: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Option<Head>, StatusCode> {
        let mut armed = false;
        loop {
            if !self.buf.is_empty()
                && let Some(head) = parse_head(&mut self.buf, limits.max_header_bytes)?
            {
                return Ok(Some(head));
            }
            if !armed {
                timer.as_mut().reset(Instant::now() + limits.header_timeout);
                armed = true;
            }
            let idle = self.buf.is_empty();
            tokio::select! {
                biased;
                read = std::future::poll_fn(|cx| self.poll_fill(cx, HEAD_READ)) => match read {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(_) => {}
                },
                () = timer.as_mut() => {
                    // Idle past the limit: close. Part of a head and no more: 408.
                    return if idle { Ok(None) } else { Err(StatusCode::REQUEST_TIMEOUT) };
                }
                () = stopped.as_mut(), if idle => return Ok(None),
            }
        }
    }

    /// Reads what the socket has into the buffer; `Ok(0)` at the end of the stream. An
    /// idle connection's buffer is allocated only once there is something to read.
    fn poll_fill(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            ready!(self.io.poll_read_ready(cx))?;
            self.buf = spare::take();
        }
        if self.buf.capacity() - self.buf.len() < room.min(1024) {
            self.buf.reserve(room);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Answers a request that could not be parsed, then closes.
    async fn refuse(&mut self, status: StatusCode) -> io::Result<()> {
        let mut out = Vec::with_capacity(160);
        status_line(&mut out, status);
        out.extend_from_slice(b"content-length: 0\r\nconnection: close\r\n");
        field(&mut out, header::DATE.as_str(), &date());
        out.extend_from_slice(b"\r\n");
        self.io.write_all(&out).await?;
        self.linger(Unread::TooMuch).await;
        Ok(())
    }

    /// What is left of the request body now that the runtime is done with it. What
    /// is already in the buffer is dropped here.
    fn unread_body(&mut self) -> Unread {
        if let Framing::Length(n) = self.body
            && n > 0
            && self.buf.len() as u64 >= n
        {
            self.buf.advance(n as usize);
            self.body = Framing::Length(0);
        }
        match self.body {
            Framing::Length(0) => Unread::Nothing,
            _ if self.body_broken => Unread::TooMuch,
            // The client never sent the body it announced, and will not without a 100
            // (or it got part of one: the stream is no longer clean).
            _ if self.expect_continue.is_some() => Unread::TooMuch,
            Framing::Length(n) if n <= DRAIN_BYTES => Unread::Some,
            // Chunked bodies are not drained: their length is unknown until read.
            _ => Unread::TooMuch,
        }
    }

    /// Reads and drops the rest of the request body (a known length of at most
    /// [`DRAIN_BYTES`], as [`Conn::unread_body`] decided), so that the connection can
    /// carry the next request. False: it was too slow, and the connection is done.
    async fn drain(&mut self) -> bool {
        let deadline = Instant::now() + DRAIN_FOR;
        loop {
            match self.body.step(&mut self.buf) {
                Ok(Step::Data(_)) => {}
                Ok(Step::End) => return true,
                Ok(Step::More) => {
                    let read = std::future::poll_fn(|cx| self.poll_fill(cx, HEAD_READ));
                    match tokio::time::timeout_at(deadline, read).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return false,
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Closes after a response while the client may still be sending: the write side is
    /// shut first and what arrives meanwhile is dropped for a moment, so that unread
    /// request bytes do not make the kernel reset the connection before the client has
    /// read the response.
    async fn linger(&mut self, unread: Unread) {
        if unread == Unread::Nothing {
            return;
        }
        let _ = self.io.shutdown().await;
        let mut sink = [0u8; 4096];
        let mut dropped = 0u64;
        let deadline = Instant::now() + DRAIN_FOR;
        while dropped <= DRAIN_BYTES {
            match tokio::time::timeout_at(deadline, self.io.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => dropped += n as u64,
                _ => return,
            }
        }
    }

    /// Writes the response. `Ok(false)`: it was delimited by closing the connection.
    async fn respond(&mut self, response: Response<Body>, exchange: &Exchange, keep_alive: bool) -> io::Result<bool> {
        let (mut parts, mut body) = response.into_parts();
        if parts.status.is_informational() {
            // An interim status cannot end an exchange: the client would wait for more.
            parts.status = StatusCode::BAD_GATEWAY;
            body = crate::proxy::full(Bytes::new());
        }
        let status = parts.status;
        let bodiless = exchange.head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let framing = if bodiless {
            // HEAD: the length a GET would get, when the handler knows it: a body it built
            // (a streamed backend answer to HEAD is empty, and says its length itself if it
            // does). Never on 204 or 304, which carry no length of their own.
            match body.size_hint().exact() {
                Some(n)
                    if exchange.head
                        && n > 0
                        && !matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
                        && !parts.headers.contains_key(header::CONTENT_LENGTH) =>
                {
                    Out::Omitted(n)
                }
                _ => Out::None,
            }
        } else {
            match body.size_hint().exact() {
                Some(n) => Out::Length(n),
                None if exchange.http11 => Out::Chunked,
                None => Out::Close,
            }
        };
        let keep_alive = keep_alive && framing != Out::Close;
        // Room for the head and for a body of known length that goes out with it, so
        // that the buffer is not grown (copied) on the way.
        let body_room = match framing {
            Out::Length(n) if n <= COALESCE as u64 => n as usize,
            _ => 0,
        };
        let mut out = Vec::with_capacity(HEAD_ROOM + body_room);
        let raw = crate::proxy::raw_fields(&mut body).and_then(Option::take);
        let head = HeadOut { status, headers: &parts.headers, raw: raw.as_deref(), framing, keep_alive, bodiless };
        encode_head(&mut out, &head, exchange.http11);
        drop(raw);
        if bodiless {
            self.io.write_all(&out).await?;
            return Ok(keep_alive);
        }
        let mut left = match framing {
            Out::Length(n) => Some(n),
            _ => None,
        };
        // What the body has ready goes out with the head: a built body whole, a
        // streamed one as far as its backend already sent it.
        let mut ended = false;
        while out.len() < COALESCE {
            let polled = Pin::new(&mut body).poll_frame(&mut Context::from_waker(Waker::noop()));
            match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.put(&mut out, data, framing, &mut left).await?;
                    }
                }
                Poll::Ready(Some(Err(_))) => return Err(io::ErrorKind::BrokenPipe.into()),
                Poll::Ready(None) => {
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if !ended {
            self.io.write_all(&out).await?;
            out.clear();
            while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                let Ok(data) = frame.map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?.into_data() else {
                    continue;
                };
                self.put(&mut out, data, framing, &mut left).await?;
                self.io.write_all(&out).await?;
                out.clear();
            }
        }
        if left.is_some_and(|n| n > 0) {
            // The body ended short of its announced length: the client can only tell
            // by the connection closing.
            self.io.write_all(&out).await?;
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if framing == Out::Chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        self.io.write_all(&out).await?;
        Ok(keep_alive)
    }

    /// Adds a piece of body to `out` in `framing`, writing out what is pending first when
    /// the piece is large (it is then written from where it is, not copied).
    async fn put(&mut self, out: &mut Vec<u8>, data: Bytes, framing: Out, left: &mut Option<u64>) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if let Some(n) = left {
            // Never more than announced: that would be read as the next response.
            if data.len() as u64 > *n {
                return Err(io::ErrorKind::InvalidData.into());
            }
            *n -= data.len() as u64;
        }
        if framing == Out::Chunked {
            let mut size = [0u8; 16];
            out.extend_from_slice(hex(&mut size, data.len()));
            out.extend_from_slice(b"\r\n");
        }
        if data.len() <= COALESCE {
            out.extend_from_slice(&data);
        } else {
            self.io.write_all(out).await?;
            out.clear();
            self.io.write_all(&data).await?;
        }
        if framing == Out::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        Ok(())
    }
}

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// No body (HEAD, 204, 304).
    None,
    /// No body, for a HEAD request whose GET would get this many bytes.
    Omitted(u64),
    Length(u64),
    Chunked,
    /// By closing the connection: an HTTP/1.0 client and a body of unknown length.
    Close,
}

/// The request body, read from the connection when the runtime polls it. Reading it
/// sends `100 Continue` first to a client that waits for one.
pub struct RequestBody<'c> {
    /// `None` when the request has no body left to read.
    conn: Option<&'c mut Conn>,
}

impl http_body::Body for RequestBody<'_> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let Some(c) = self.get_mut().conn.as_deref_mut() else { return Poll::Ready(None) };
        if c.body.is_done() {
            return Poll::Ready(None);
        }
        if let Some(sent) = c.expect_continue {
            // A client that already started sending needs no invitation.
            if c.buf.is_empty() && sent < CONTINUE.len() {
                let n = ready!(Pin::new(&mut c.io).poll_write(cx, &CONTINUE[sent..]))?;
                if n == 0 {
                    return Poll::Ready(Some(Err(io::ErrorKind::WriteZero.into())));
                }
                c.expect_continue = Some(sent + n);
                if sent + n < CONTINUE.len() {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            c.expect_continue = None;
        }
        loop {
            match c.body.step(&mut c.buf) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::More) => {}
                Err(e) => {
                    c.body_broken = true;
                    return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, e))));
                }
            }
            let room = c.body.remaining().map_or(HEAD_READ, |n| usize::try_from(n).unwrap_or(MAX_READ));
            match ready!(c.poll_fill(cx, room.clamp(1, MAX_READ))) {
                Ok(n) if n > 0 => {}
                Ok(_) => {
                    c.body_broken = true;
                    let closed =
                        io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed the connection mid-body");
                    return Poll::Ready(Some(Err(closed)));
                }
                Err(e) => {
                    c.body_broken = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.as_ref().is_none_or(|c| c.body.is_done())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.conn {
            Some(c) => c.body.remaining().map_or_else(SizeHint::default, SizeHint::with_exact),
            None => SizeHint::with_exact(0),
        }
    }
}

/// Runs `work` unless the client closes the connection first (`None`). Bytes the
/// client sends meanwhile (a pipelined request) end the watch: they are left for later.
async fn unless_closed<F: std::future::Future>(io: &TcpStream, work: F) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
    let mut watching = true;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if watching {
            let mut probe = [std::mem::MaybeUninit::uninit(); 1];
            match io.poll_peek(cx, &mut tokio::io::ReadBuf::uninit(&mut probe)) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => watching = false,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// Parses a complete request head at the start of `buf` and takes it out. `Ok(None)`:
/// not complete yet. `Err`: the status to refuse the request with.
fn parse_head(buf: &mut BytesMut, max_bytes: usize) -> Result<Option<Head>, StatusCode> {
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut request, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len <= max_bytes => len,
        Ok(httparse::Status::Complete(_)) => return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Ok(httparse::Status::Partial) if buf.len() >= max_bytes => {
            return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(_) => return Err(StatusCode::BAD_REQUEST),
    };
    let bad = StatusCode::BAD_REQUEST;
    let method = Method::from_bytes(request.method.unwrap_or_default().as_bytes()).map_err(|_| bad)?;
    let version = if request.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
    // Where the target and each value are in the head, so that they can be sliced out of
    // it once it is taken from the buffer.
    let base = buf.as_ptr() as usize;
    let target = request.path.unwrap_or_default();
    let target = (target.as_ptr() as usize - base, target.len());
    let framing = body_framing(version, request.headers)?;
    let (keep_alive, expect_continue) = connection_options(version, request.headers);
    // RFC 9112 §3.2: an HTTP/1.1 request names its host exactly once (Go's server, and so
    // KrakenD, refuse it otherwise too).
    if version == Version::HTTP_11 && h1::named(request.headers, "host").count() != 1 {
        return Err(bad);
    }
    let mut fields = Vec::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad)?;
        fields.push((name, h.value.as_ptr() as usize - base, h.value.len()));
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1)).map_err(|_| bad)?;
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, at, len) in fields {
        headers.append(name, HeaderValue::from_maybe_shared(head.slice(at..at + len)).map_err(|_| bad)?);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    let (parts, ()) = request.into_parts();
    Ok(Some(Head { parts, framing, keep_alive, expect_continue: expect_continue && !framing.is_done() }))
}

/// How a request body is delimited (RFC 9112 §6.3). Only `chunked` is accepted as a
/// transfer coding, and never beside `Content-Length` or from an HTTP/1.0 client: those
/// are the shapes of request smuggling. Read from the parsed fields, before any map is
/// built: a pass of byte comparisons instead of a hashed lookup per name.
fn body_framing(version: Version, fields: &[httparse::Header<'_>]) -> Result<Framing, StatusCode> {
    let mut codings = h1::named(fields, "transfer-encoding").peekable();
    if codings.peek().is_some() {
        if version != Version::HTTP_11 || h1::named(fields, "content-length").next().is_some() {
            return Err(StatusCode::BAD_REQUEST);
        }
        let mut tokens = codings.flat_map(|h| h.value.split(|b| *b == b',')).map(<[u8]>::trim_ascii);
        return match (tokens.next(), tokens.next()) {
            (Some(t), None) if t.eq_ignore_ascii_case(b"chunked") => Ok(Framing::chunked()),
            // gzip and the like would have to be decoded, which the gateway does not do.
            (Some(t), None) if !t.is_empty() => Err(StatusCode::NOT_IMPLEMENTED),
            _ => Err(StatusCode::BAD_REQUEST),
        };
    }
    let length = h1::content_length(fields).map_err(|_| StatusCode::BAD_REQUEST)?;
    Ok(Framing::Length(length.unwrap_or(0)))
}

/// Whether the client wants the connection kept (HTTP/1.1 unless it says `close`,
/// HTTP/1.0 only when it says `keep-alive`) and whether it waits for `100 Continue`.
fn connection_options(version: Version, fields: &[httparse::Header<'_>]) -> (bool, bool) {
    let http11 = version == Version::HTTP_11;
    let (close, keep_alive) = h1::connection_says(fields);
    let expect =
        http11 && h1::named(fields, "expect").any(|h| h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
    (!close && (http11 || keep_alive), expect)
}

/// A response head to write.
struct HeadOut<'r> {
    status: StatusCode,
    headers: &'r HeaderMap,
    /// Fields passed on as their backend wrote them, written before `headers`.
    raw: Option<&'r crate::proxy::h1::RawFields>,
    framing: Out,
    keep_alive: bool,
    bodiless: bool,
}

/// Writes the status line and header fields. The framing fields are the gateway's own
/// (what it announces is what it sends), except that a HEAD or 304 response keeps the
/// `Content-Length` its handler gave, which describes the body it does not carry.
fn encode_head(out: &mut Vec<u8>, head: &HeadOut<'_>, http11: bool) {
    // Whatever sets a field on a response whose backend lines are still raw puts them in
    // the map first (`proxy::settle`), or a field of the same name would go out twice.
    debug_assert!(head.raw.is_none() || head.headers.is_empty(), "fields set beside raw lines");
    status_line(out, head.status);
    let keep_length = head.bodiless && head.status != StatusCode::NO_CONTENT;
    if let Some(raw) = head.raw {
        raw.write(out);
    }
    for (name, value) in head.headers {
        if name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || (name == header::CONTENT_LENGTH && !keep_length)
        {
            continue;
        }
        field(out, name.as_str(), value.as_bytes());
    }
    if !head.raw.is_some_and(crate::proxy::h1::RawFields::has_date) && !head.headers.contains_key(header::DATE) {
        field(out, header::DATE.as_str(), &date());
    }
    match head.framing {
        Out::Length(n) | Out::Omitted(n) => {
            field(out, header::CONTENT_LENGTH.as_str(), itoa::Buffer::new().format(n).as_bytes());
        }
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Out::None | Out::Close => {}
    }
    if !head.keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if !http11 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in lower-case hex, for a chunk-size line.
fn hex(out: &mut [u8; 16], mut n: usize) -> &[u8] {
    let mut at = out.len();
    loop {
        at -= 1;
        out[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &out[at..];
        }
    }
}

/// The `Date` field's value for now, formatted once a second per thread.
fn date() -> [u8; 29] {
    thread_local! {
        static CACHE: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((u64::MAX, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|cache| {
        let (at, text) = cache.get();
        if at == secs {
            return text;
        }
        let mut fresh = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        if formatted.len() == fresh.len() {
            fresh.copy_from_slice(formatted.as_bytes());
        }
        cache.set((secs, fresh));
        fresh
    })
}

/// Read buffers of finished requests, kept per worker thread for the next request to
/// read into: a connection holds no buffer while it idles, and taking one that is ready
/// spares the allocator a page-sized allocation and a free per request.
mod spare {
    use std::cell::RefCell;

    use bytes::BytesMut;

    /// Buffers kept per thread; more are freed.
    const KEPT: usize = 64;
    /// The largest storage kept: a buffer grown for a large head or body is freed.
    const LARGEST: usize = 2 * super::HEAD_READ;

    thread_local! {
        static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    /// A kept buffer, or a new one without storage.
    pub(super) fn take() -> BytesMut {
        FREE.with_borrow_mut(Vec::pop).unwrap_or_default()
    }

    /// Keeps an empty buffer whose storage nothing else refers to any more and is no
    /// larger than [`LARGEST`]. Asking for one byte more than it has left takes the
    /// storage back whole when it can be (nothing else refers to it), and then its
    /// capacity is all of it; otherwise the buffer is freed.
    pub(super) fn give(mut buf: BytesMut) {
        if buf.is_empty() && buf.try_reclaim(buf.capacity() + 1) && buf.capacity() <= LARGEST {
            FREE.with_borrow_mut(|free| {
                if free.len() < KEPT {
                    free.push(buf);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn spare_buffers_are_kept_only_when_free_and_small() {
        // Whatever earlier tests on this thread left.
        while spare::take().capacity() > 0 {}
        let mut buf = BytesMut::with_capacity(HEAD_READ);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = buf.split().freeze();
        // The head still refers to the storage: not kept.
        spare::give(buf.split_off(0));
        assert_eq!(spare::take().capacity(), 0);
        let mut buf = BytesMut::with_capacity(HEAD_READ);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        drop(buf.split().freeze());
        drop(head);
        // Free: kept, with all of its storage.
        spare::give(buf);
        assert!(spare::take().capacity() >= HEAD_READ);
        // Grown past what a head needs: freed.
        let mut big = BytesMut::with_capacity(4 * HEAD_READ);
        big.extend_from_slice(b"x");
        drop(big.split().freeze());
        spare::give(big);
        assert_eq!(spare::take().capacity(), 0);
    }

    use super::*;

    fn parse(text: &[u8]) -> Result<Option<Head>, StatusCode> {
        parse_head(&mut BytesMut::from(text), 8192)
    }

    #[test]
    fn a_head_is_parsed_in_place_and_taken_out_of_the_buffer() {
        let mut buf = BytesMut::from(&b"GET /a/b?x=1 HTTP/1.1\r\nHost: gw\r\nX-Two: 1\r\nx-two: 2\r\n\r\nNEXT"[..]);
        let head = parse_head(&mut buf, 8192).unwrap().unwrap();
        assert_eq!(head.parts.method, Method::GET);
        assert_eq!(head.parts.uri.path(), "/a/b");
        assert_eq!(head.parts.uri.query(), Some("x=1"));
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["host"], "gw");
        let twos: Vec<_> = head.parts.headers.get_all("x-two").iter().collect();
        assert_eq!(twos, ["1", "2"]);
        assert_eq!(head.framing, Framing::Length(0));
        assert!(head.keep_alive && !head.expect_continue);
        assert_eq!(&buf[..], b"NEXT", "what follows the head stays for the body or the next request");
    }

    #[test]
    fn an_incomplete_head_waits_and_an_oversized_one_is_refused() {
        assert!(parse(b"GET / HTTP/1.1\r\nhost: x\r\n").unwrap().is_none());
        let long = format!("GET / HTTP/1.1\r\nhost: x\r\nx: {}\r\n", "a".repeat(9000));
        assert_eq!(parse(long.as_bytes()).unwrap_err(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let complete = format!("GET / HTTP/1.1\r\nhost: x\r\nx: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(parse(complete.as_bytes()).unwrap_err(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let many = format!("GET / HTTP/1.1\r\nhost: x\r\n{}\r\n", "x: 1\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(parse(many.as_bytes()).unwrap_err(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn malformed_heads_are_bad_requests() {
        for text in [
            &b"NOT A REQUEST\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\nhost: x\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: x\r\nfolded: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\nHost: b\r\n\r\n",
        ] {
            assert_eq!(parse(text).unwrap_err(), StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn bodies_are_delimited_and_smuggling_shapes_refused() {
        let framing = |text: &str| parse(text.as_bytes()).map(|h| h.unwrap().framing);
        assert_eq!(framing("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 12\r\n\r\n"), Ok(Framing::Length(12)));
        assert_eq!(framing("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3, 3\r\n\r\n"), Ok(Framing::Length(3)));
        assert_eq!(framing("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: Chunked\r\n\r\n"), Ok(Framing::chunked()));
        for refused in [
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1e3\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(framing(refused), Err(StatusCode::BAD_REQUEST), "{refused}");
        }
        assert_eq!(
            framing("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n"),
            Err(StatusCode::NOT_IMPLEMENTED)
        );
    }

    #[test]
    fn keep_alive_and_expect_follow_the_version_and_connection_options() {
        let options = |text: &str| {
            let head = parse(text.as_bytes()).unwrap().unwrap();
            (head.keep_alive, head.expect_continue)
        };
        assert_eq!(options("GET / HTTP/1.1\r\nhost: x\r\n\r\n"), (true, false));
        assert_eq!(options("GET / HTTP/1.1\r\nhost: x\r\nconnection: foo, Close\r\n\r\n"), (false, false));
        assert_eq!(options("GET / HTTP/1.0\r\n\r\n"), (false, false));
        assert_eq!(options("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), (true, false));
        let expect = "POST / HTTP/1.1\r\nhost: x\r\nexpect: 100-Continue\r\ncontent-length: 2\r\n\r\n";
        assert_eq!(options(expect), (true, true));
        let nothing_to_send = "POST / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(options(nothing_to_send), (true, false), "no body, nothing to wait for");
        assert_eq!(options("POST / HTTP/1.0\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n"), (false, false));
    }

    fn head_of(status: StatusCode, headers: &[(&str, &str)], framing: Out, keep_alive: bool, http11: bool) -> String {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        let mut out = Vec::new();
        let bodiless = matches!(framing, Out::None | Out::Omitted(_));
        encode_head(&mut out, &HeadOut { status, headers: &map, raw: None, framing, keep_alive, bodiless }, http11);
        let text = String::from_utf8(out).unwrap();
        // The date changes; everything else is checked byte for byte.
        text.lines().filter(|l| !l.starts_with("date: ")).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn response_heads_announce_what_is_sent() {
        let ok = head_of(
            StatusCode::OK,
            &[("content-type", "application/json"), ("content-length", "999"), ("transfer-encoding", "chunked")],
            Out::Length(7),
            true,
            true,
        );
        assert_eq!(ok, "HTTP/1.1 200 OK\ncontent-type: application/json\ncontent-length: 7\n");
        let chunked = head_of(StatusCode::BAD_GATEWAY, &[("connection", "keep-alive")], Out::Chunked, false, true);
        assert_eq!(chunked, "HTTP/1.1 502 Bad Gateway\ntransfer-encoding: chunked\nconnection: close\n");
        let old = head_of(StatusCode::OK, &[], Out::Length(0), true, false);
        assert_eq!(old, "HTTP/1.1 200 OK\ncontent-length: 0\nconnection: keep-alive\n");
        let head = head_of(StatusCode::OK, &[("content-length", "42")], Out::None, true, true);
        assert_eq!(head, "HTTP/1.1 200 OK\ncontent-length: 42\n", "HEAD keeps the length of the body it omits");
        let no_content = head_of(StatusCode::NO_CONTENT, &[("content-length", "0")], Out::None, true, true);
        assert_eq!(no_content, "HTTP/1.1 204 No Content\n");
        let mut out = Vec::new();
        let head = HeadOut {
            status: StatusCode::OK,
            headers: &HeaderMap::new(),
            raw: None,
            framing: Out::Length(0),
            keep_alive: true,
            bodiless: false,
        };
        encode_head(&mut out, &head, true);
        let text = String::from_utf8(out).unwrap();
        let date = text.lines().find_map(|l| l.strip_prefix("date: ")).expect("a date field");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
    }

    /// What a parse produced, comparable across runs.
    fn summary(head: &Head) -> String {
        let p = &head.parts;
        format!(
            "{} {} {:?} {:?} {:?} {} {}",
            p.method, p.uri, p.version, p.headers, head.framing, head.keep_alive, head.expect_continue
        )
    }

    proptest::proptest! {
        /// A head parses the same however it is split across reads, and what follows it
        /// stays in the buffer.
        #[test]
        fn a_head_parses_the_same_however_it_arrives(
            method in "(GET|POST|PUT|DELETE|OPTIONS)",
            path in "/[a-z0-9/%?=&]{0,40}",
            fields in proptest::collection::vec(("x-[a-z]{1,8}", "[ -~]{0,30}"), 0..8),
            length in proptest::option::of(0u32..100_000),
            http10 in proptest::bool::ANY,
            cut in 0usize..400,
        ) {
            let mut text = format!("{method} {path} HTTP/1.{}\r\nhost: gw\r\n", if http10 { 0 } else { 1 });
            for (name, value) in &fields {
                text.push_str(&format!("{name}: {}\r\n", value.trim()));
            }
            if let Some(n) = length {
                text.push_str(&format!("content-length: {n}\r\n"));
            }
            text.push_str("\r\nrest");
            let whole = parse_head(&mut BytesMut::from(text.as_bytes()), 8192).unwrap().unwrap();
            proptest::prop_assert_eq!(whole.framing, Framing::Length(u64::from(length.unwrap_or(0))));
            let cut = cut.min(text.len());
            let mut buf = BytesMut::from(&text.as_bytes()[..cut]);
            let first = parse_head(&mut buf, 8192).unwrap();
            buf.extend_from_slice(&text.as_bytes()[cut..]);
            let head = match first {
                Some(head) => head,
                None => parse_head(&mut buf, 8192).unwrap().unwrap(),
            };
            proptest::prop_assert_eq!(summary(&head), summary(&whole));
            proptest::prop_assert_eq!(&buf[..], &b"rest"[..]);
        }

        /// Whatever arrives, parsing answers (a head, more please, or a status) and never
        /// panics; a refusal is a 4xx or 501.
        #[test]
        fn any_bytes_get_an_answer(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut buf = BytesMut::from(&bytes[..]);
            if let Err(status) = parse_head(&mut buf, 512) {
                proptest::prop_assert!(status.is_client_error() || status == StatusCode::NOT_IMPLEMENTED, "{status}");
            }
        }
    }

    #[test]
    fn chunk_sizes_are_hex() {
        let mut buf = [0u8; 16];
        assert_eq!(hex(&mut buf, 0), b"0");
        assert_eq!(hex(&mut buf, 255), b"ff");
        assert_eq!(hex(&mut buf, 0x10000), b"10000");
        assert_eq!(hex(&mut buf, usize::MAX), b"ffffffffffffffff");
    }
}
