//! Plain-HTTP backend connections driven by the request's own task.
//!
//! hyper's pooled client runs every connection as a task of its own and hands each
//! request to it over channels, which costs two task wake-ups per backend call. For
//! buffered calls (everything but `no-op` streaming) the request task can poll the
//! connection itself while it waits for the response and reads the body: one task,
//! no hand-off. Idle connections wait in a per-host list and are checked before reuse.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::{Pin, pin};
use std::sync::Mutex;
use std::sync::{Arc, Weak};
use std::task::Context;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One keep-alive connection: the handle to send on and the I/O state machine. Boxed
/// wherever it goes ([`Pooled`]): it is large, and moves in and out of the pool and
/// the request's futures on every call.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    conn: Connection<TokioIo<TcpStream>, Full<Bytes>>,
    idle_since: Instant,
}

impl Conn {
    /// Whether an idle connection can still carry a request: not idle for too long,
    /// and the backend has not closed it meanwhile (polling an idle connection reads
    /// the backend's FIN, if one came, without waiting).
    fn reusable(&mut self, idle_timeout: Duration) -> bool {
        if self.idle_since.elapsed() >= idle_timeout || self.sender.is_closed() {
            return false;
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        self.conn.poll_without_shutdown(&mut cx).is_pending() && !self.sender.is_closed()
    }
}

type Pooled = Box<Conn>;

/// A backend's answer, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body, or why it could not be read (too large, broken off).
    pub body: Result<Bytes, BodyError>,
}

#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Broken(String),
}

/// Why a call got no answer at all.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect: timed out")]
    ConnectTimeout,
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("connection closed before the response")]
    Closed,
}

/// The pool's hasher: a multiply-rotate hash (as rustc's `FxHasher`). `Authority` hashes
/// byte by byte, and SipHash spent ~1,600 instructions a request on two lookups; the keys
/// are backend hosts from the config, never chosen by clients, so flooding resistance buys
/// nothing here.
#[derive(Default)]
struct HostHasher(u64);

impl Hasher for HostHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u8(*b);
        }
    }

    fn write_u8(&mut self, b: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Idle connections by host.
pub struct Upstreams {
    idle: Mutex<HashMap<Authority, Vec<Pooled>, BuildHasherDefault<HostHasher>>>,
    max_idle_per_host: usize,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl Upstreams {
    pub fn new(max_idle_per_host: usize, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self { idle: Mutex::new(HashMap::default()), max_idle_per_host, connect_timeout, idle_timeout }
    }

    fn checkout(&self, authority: &Authority) -> Option<Pooled> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(authority)?;
        while let Some(mut c) = list.pop() {
            if c.reusable(self.idle_timeout) {
                return Some(c);
            }
        }
        None
    }

    fn checkin(&self, authority: &Authority, mut c: Pooled) {
        if let Ok(mut idle) = self.idle.lock() {
            let list = match idle.get_mut(authority) {
                Some(list) => list,
                None => idle.entry(authority.clone()).or_default(),
            };
            if list.len() < self.max_idle_per_host {
                c.idle_since = Instant::now();
                list.push(c);
            }
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Pooled, CallError> {
        let port = authority.port_u16().unwrap_or(80);
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect((authority.host(), port)))
            .await
            .map_err(|_| CallError::ConnectTimeout)?
            .map_err(CallError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(tcp)).await?;
        Ok(Box::new(Conn { sender, conn, idle_since: Instant::now() }))
    }

    /// Sends `request` to `authority` and reads the answer, keeping the connection
    /// for reuse when it stays good.
    pub async fn call(
        &self,
        authority: &Authority,
        request: Request<Full<Bytes>>,
        max_body: usize,
    ) -> Result<Answer, CallError> {
        self.attempt(authority, request, |c, r| self.exchange(authority, c, r, max_body)).await
    }

    /// Like [`Upstreams::call`], but returns as soon as the response head arrived; the
    /// body streams through [`Streamed`], which keeps driving the connection and hands
    /// it back to the pool when the body ends.
    pub async fn call_streaming(
        self: &Arc<Self>,
        authority: &Authority,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Streamed>, CallError> {
        self.attempt(authority, request, |c, r| self.head(authority, c, r)).await
    }

    /// Runs `exchange` on an idle connection, or a new one. When a reused connection
    /// turns out closed, the call is made again on a fresh one if that is safe: the
    /// request never left, or its method is idempotent.
    async fn attempt<T, F, Fut>(
        &self,
        authority: &Authority,
        request: Request<Full<Bytes>>,
        exchange: F,
    ) -> Result<T, CallError>
    where
        F: Fn(Pooled, Request<Full<Bytes>>) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let (parts, body) = origin_form(authority, request);
        let rebuild = || {
            let mut r = Request::new(body.clone());
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = parts.uri.clone();
            *r.headers_mut() = parts.headers.clone();
            r
        };
        if let Some(c) = self.checkout(authority) {
            let idempotent = parts.method.is_idempotent();
            match exchange(c, rebuild()).await {
                Err(CallError::Http(e)) if e.is_canceled() || (idempotent && e.is_incomplete_message()) => {}
                Err(CallError::Closed) if idempotent => {}
                other => return other,
            }
        }
        let fresh = self.connect(authority).await?;
        exchange(fresh, rebuild()).await
    }

    async fn head(
        self: &Arc<Self>,
        authority: &Authority,
        mut c: Pooled,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Streamed>, CallError> {
        let pending = c.sender.send_request(request);
        let response = drive(&mut c.conn, pending).await??;
        let keep = !response
            .headers()
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        Ok(response.map(|body| Streamed {
            body,
            conn: Some(c),
            home: keep.then(|| (Arc::downgrade(self), authority.clone())),
        }))
    }

    async fn exchange(
        &self,
        authority: &Authority,
        mut c: Pooled,
        request: Request<Full<Bytes>>,
        max_body: usize,
    ) -> Result<Answer, CallError> {
        let pending = c.sender.send_request(request);
        let response = drive(&mut c.conn, pending).await??;
        let (parts, incoming) = response.into_parts();
        let body = match drive(&mut c.conn, Limited::new(incoming, max_body).collect()).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
            Ok(Err(e)) => Err(BodyError::Broken(e.to_string())),
            Err(e) => Err(BodyError::Broken(e.to_string())),
        };
        let keep = body.is_ok()
            && !parts
                .headers
                .get(http::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if keep && settle(&mut c).await {
            self.checkin(authority, c);
        }
        Ok(Answer { status: parts.status, headers: parts.headers, body })
    }
}

/// A backend body streamed to the client while its connection is driven alongside;
/// at the end of the body the connection goes back to its pool.
pub struct Streamed {
    body: Incoming,
    conn: Option<Pooled>,
    /// Where the connection returns when the body ends, if it may be reused.
    home: Option<(Weak<Upstreams>, Authority)>,
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(c) = &mut this.conn {
            match c.conn.poll_without_shutdown(cx) {
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
                // The connection is done; whatever it delivered is still in the body.
                Poll::Ready(Ok(())) => this.conn = None,
                Poll::Pending => {}
            }
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || this.body.is_end_stream() {
            this.release(cx);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Streamed {
    /// Returns the connection to its pool once it is idle again.
    fn release(&mut self, cx: &mut Context<'_>) {
        let Some(mut c) = self.conn.take() else { return };
        let Some((home, authority)) = self.home.take() else { return };
        if c.conn.poll_without_shutdown(cx).is_ready() {
            return;
        }
        if matches!(c.sender.poll_ready(cx), Poll::Ready(Ok(())))
            && let Some(pool) = home.upgrade()
        {
            pool.checkin(&authority, c);
        }
    }
}

/// The request as it goes on the wire: the path in the request line, the host in `Host`.
fn origin_form(authority: &Authority, request: Request<Full<Bytes>>) -> (http::request::Parts, Full<Bytes>) {
    let (mut parts, body) = request.into_parts();
    // On the wire an HTTP/1.1 request names its path and the host goes in `Host`.
    if !parts.headers.contains_key(http::header::HOST)
        && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(http::header::HOST, host);
    }
    parts.uri = match parts.uri.path_and_query() {
        Some(pq) => {
            let mut only_path = http::uri::Parts::default();
            only_path.path_and_query = Some(pq.clone());
            http::Uri::from_parts(only_path).unwrap_or_else(|_| http::Uri::from_static("/"))
        }
        None => http::Uri::from_static("/"),
    };
    (parts, body)
}

/// Polls the connection alongside `fut` until `fut` completes.
async fn drive<F: Future>(
    conn: &mut Connection<TokioIo<TcpStream>, Full<Bytes>>,
    fut: F,
) -> Result<F::Output, CallError> {
    let mut fut = pin!(fut);
    let mut finished = false;
    std::future::poll_fn(|cx| {
        if !finished {
            match conn.poll_without_shutdown(cx) {
                Poll::Ready(Ok(())) => finished = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(CallError::Http(e))),
                Poll::Pending => {}
            }
        }
        match fut.as_mut().poll(cx) {
            Poll::Ready(v) => Poll::Ready(Ok(v)),
            Poll::Pending if finished => Poll::Ready(Err(CallError::Closed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// After a response, lets the connection return to idle; whether it can be reused.
async fn settle(c: &mut Conn) -> bool {
    std::future::poll_fn(|cx| {
        if c.conn.poll_without_shutdown(cx).is_ready() {
            return Poll::Ready(false);
        }
        Poll::Ready(matches!(c.sender.poll_ready(cx), Poll::Ready(Ok(()))))
    })
    .await
}
