//! Plain-HTTP backend connections driven by the request's own task.
//!
//! The request task writes the request and reads the response itself, over a pooled
//! keep-alive connection, with the HTTP/1.1 of [`super::h1`]: the request goes out as one
//! write of a buffer built in place, the response head is parsed where it was read, and
//! body bytes are handed on as slices of the read buffer, never copied. There is no task
//! per connection and no channel between the request and its connection (hyper's client
//! costs two task wake-ups, a dispatch channel and its own buffers per connection; it
//! still serves HTTPS backends). Idle connections wait in a per-host list, hold no
//! buffer, and are checked before reuse.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::uri::Authority;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::backend::Outgoing;
use super::h1::{self, Framing, Step};

/// Room for a response head (and, most often, the whole of a small response): one page,
/// as nginx's `proxy_buffer_size`. An idle connection keeps a buffer of this size (the
/// next response is read into it again once what was handed on from it is dropped, which
/// spares an allocation per call); bodies get room for their announced length, up to
/// [`MAX_READ`], and a buffer grown past this size goes when the connection idles.
const HEAD_READ: usize = 4 * 1024;
/// The most a body read asks room for at once.
const MAX_READ: usize = 64 * 1024;
/// Hosts that are not in the config (redirect targets) whose idle connections are kept,
/// at most.
const MAX_HOSTS: usize = 256;

/// One keep-alive connection and what has been read from it but not consumed. Boxed
/// wherever it goes ([`Pooled`]), so that moving it in and out of the pool is cheap.
struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// The buffer may have been given more than [`HEAD_READ`] bytes of storage.
    grown: bool,
    idle_since: Instant,
}

impl Conn {
    fn new(io: TcpStream) -> Self {
        Self { io, buf: BytesMut::new(), grown: false, idle_since: Instant::now() }
    }

    /// Makes room for `additional` more bytes in the buffer. Storage that nothing else
    /// refers to any more (what was handed on from it has been dropped) is reused.
    fn reserve(&mut self, additional: usize) {
        self.grown |= self.buf.len() + additional > HEAD_READ;
        self.buf.reserve(additional);
    }

    /// Whether an idle connection can still carry a request: not idle for too long, and
    /// the backend has neither closed it nor sent anything meanwhile. The check costs no
    /// system call unless the socket was reported readable.
    fn reusable(&mut self, idle_timeout: Duration) -> bool {
        if self.idle_since.elapsed() >= idle_timeout || !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness can be stale: a read tells whether there is a FIN or stray bytes.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads what the socket has into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<io::Result<usize>> {
        // A read into an empty buffer gets all the room asked for: the storage is taken
        // back whole when nothing else refers to it any more.
        let spare = self.buf.capacity() - self.buf.len();
        if spare < room.min(1024) || (self.buf.is_empty() && spare < room) {
            self.reserve(room);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self, room: usize) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx, room)).await
    }

    /// Writes a whole request, then reads the response head. While the backend takes no
    /// more of the request (a large body it does not want), what it sends is read too:
    /// an answer that comes before the request is all out (413, 401) is returned as it
    /// is, with the rest of the request unsent and the connection not reused after it.
    /// [`CallError::Unsent`]: not a byte of the request got out; [`CallError::PartlySent`]:
    /// some did, and the backend may have seen a part.
    async fn send(&mut self, wire: &[u8], method: &Method, keep: h1::Keep) -> Result<h1::Head, CallError> {
        let mut sent = 0;
        let failed =
            |sent: usize, e: io::Error| if sent == 0 { CallError::Unsent(e) } else { CallError::PartlySent(e) };
        let early = std::future::poll_fn(|cx| {
            while sent < wire.len() {
                match Pin::new(&mut self.io).poll_write(cx, &wire[sent..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(failed(sent, io::ErrorKind::WriteZero.into()))),
                    Poll::Ready(Ok(n)) => sent += n,
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(failed(sent, e))),
                    Poll::Pending => match ready!(self.poll_fill(cx, HEAD_READ)) {
                        Ok(0) => return Poll::Ready(Err(failed(sent, io::ErrorKind::BrokenPipe.into()))),
                        Ok(_) => {
                            if let Some(mut head) =
                                h1::parse_head(&mut self.buf, method, keep).map_err(CallError::Invalid)?
                            {
                                head.keep_alive = false;
                                return Poll::Ready(Ok(Some(head)));
                            }
                        }
                        Err(e) => return Poll::Ready(Err(failed(sent, e))),
                    },
                }
            }
            Poll::Ready(Ok(None))
        })
        .await?;
        match early {
            Some(head) => Ok(head),
            None => self.read_head(method, keep).await,
        }
    }

    /// Reads the response head. The backend closing (or resetting) the connection before
    /// sending a byte is [`CallError::Closed`]: a reused connection it had just dropped.
    async fn read_head(&mut self, method: &Method, keep: h1::Keep) -> Result<h1::Head, CallError> {
        loop {
            if !self.buf.is_empty()
                && let Some(head) = h1::parse_head(&mut self.buf, method, keep).map_err(CallError::Invalid)?
            {
                return Ok(head);
            }
            let started = !self.buf.is_empty();
            match self.fill(HEAD_READ).await {
                Ok(0) if started => return Err(CallError::Truncated),
                Ok(0) => return Err(CallError::Closed),
                Ok(_) => {}
                Err(e) if !started && e.kind() == io::ErrorKind::ConnectionReset => return Err(CallError::Closed),
                Err(e) => return Err(CallError::Io(e)),
            }
        }
    }

    /// The next piece of the body; `None` at its end.
    fn poll_data(&mut self, framing: &mut Framing, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            match framing.step(&mut self.buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))? {
                Step::Data(data) => return Poll::Ready(Ok(Some(data))),
                Step::End => return Poll::Ready(Ok(None)),
                Step::More => {}
            }
            // Room for what is announced, or, without a length, as much as the last read
            // filled (a body arriving faster than it is read gets larger reads).
            let room = match framing.remaining() {
                Some(n) => usize::try_from(n).unwrap_or(MAX_READ),
                None => self.buf.capacity().max(HEAD_READ),
            };
            if ready!(self.poll_fill(cx, room.clamp(1, MAX_READ)))? == 0 {
                framing.at_eof().map_err(|e| io::Error::new(io::ErrorKind::UnexpectedEof, e))?;
            }
        }
    }

    /// Reads the whole body, up to `max` bytes. A body with a length is read into one
    /// buffer and handed on without a copy.
    async fn read_body(&mut self, framing: &mut Framing, max: usize) -> Result<Bytes, BodyError> {
        let broken = |e: io::Error| BodyError::Broken(e.to_string());
        if let Some(len) = framing.remaining() {
            let len = usize::try_from(len).ok().filter(|l| *l <= max).ok_or(BodyError::TooLarge)?;
            if self.buf.len() < len {
                self.reserve(len - self.buf.len());
            }
            while self.buf.len() < len {
                if self.fill(len - self.buf.len()).await.map_err(broken)? == 0 {
                    return Err(BodyError::Broken("the backend closed the connection mid-body".into()));
                }
            }
            *framing = Framing::Length(0);
            return Ok(self.buf.split_to(len).freeze());
        }
        let mut whole = BytesMut::new();
        while let Some(data) = std::future::poll_fn(|cx| self.poll_data(framing, cx)).await.map_err(broken)? {
            if whole.len() + data.len() > max {
                return Err(BodyError::TooLarge);
            }
            whole.extend_from_slice(&data);
        }
        Ok(whole.freeze())
    }

    /// Readies an idle connection for the pool (its buffer is empty, or it would not be
    /// reused): a buffer that may have grown past [`HEAD_READ`] is given back.
    fn park(&mut self) {
        if self.grown {
            self.buf = BytesMut::new();
            self.grown = false;
        }
        self.idle_since = Instant::now();
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
    Connect(io::Error),
    #[error("connect: timed out")]
    ConnectTimeout,
    #[error("sending the request: {0}")]
    Unsent(io::Error),
    #[error("sending the request: {0}")]
    PartlySent(io::Error),
    #[error("reading the response: {0}")]
    Io(io::Error),
    #[error("{0}")]
    Invalid(h1::Invalid),
    #[error("connection closed before the response")]
    Closed,
    #[error("connection closed in the middle of the response head")]
    Truncated,
}

/// The pool's hasher: a multiply-rotate hash (as rustc's `FxHasher`), eight bytes at a
/// time. SipHash spent ~1,600 instructions a request on two lookups; the keys are backend
/// hosts from the config, never chosen by clients, so flooding resistance buys nothing.
#[derive(Default)]
struct HostHasher(u64);

impl HostHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for HostHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.add(u64::from_le_bytes(word.try_into().unwrap_or_default()));
        }
        let mut tail = [0u8; 8];
        tail[..words.remainder().len()].copy_from_slice(words.remainder());
        self.add(u64::from_le_bytes(tail));
    }

    fn write_u8(&mut self, b: u8) {
        self.add(u64::from(b));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Idle connections by host.
pub struct Upstreams {
    /// Keyed by the authority as written (`host:port`).
    hosts: Mutex<HashMap<Box<str>, Arc<HostPool>, BuildHasherDefault<HostHasher>>>,
    max_idle_per_host: usize,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

/// The idle connections to one host. A backend keeps its host's ([`Upstreams::pool`]), so
/// that a call takes a connection from it and gives it back without a lookup by name.
pub struct HostPool {
    idle: Mutex<Vec<Pooled>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// The [`Upstreams`] it belongs to, for telling whether a backend's pool is this one's.
    owner: Weak<Upstreams>,
}

impl std::fmt::Debug for HostPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.idle.lock().map_or(0, |idle| idle.len());
        f.debug_struct("HostPool").field("idle", &idle).field("max_idle", &self.max_idle).finish()
    }
}

impl HostPool {
    fn checkout(&self) -> Option<Pooled> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(mut c) = idle.pop() {
            if c.reusable(self.idle_timeout) {
                return Some(c);
            }
        }
        None
    }

    fn checkin(&self, mut c: Pooled) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            c.park();
            idle.push(c);
        }
    }
}

impl Upstreams {
    pub fn new(max_idle_per_host: usize, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self { hosts: Mutex::new(HashMap::default()), max_idle_per_host, connect_timeout, idle_timeout }
    }

    /// The pool of `authority`'s connections. `kept`: a backend's slot for its host's pool,
    /// filled by the first call and used by every call after it (a pool another
    /// [`Upstreams`] made is not used).
    pub fn pool(self: &Arc<Self>, authority: &Authority, kept: Option<&OnceLock<Arc<HostPool>>>) -> Arc<HostPool> {
        if let Some(pool) = kept.and_then(OnceLock::get)
            && std::ptr::eq(pool.owner.as_ptr(), Arc::as_ptr(self))
        {
            return pool.clone();
        }
        let pool = self.lookup(authority, kept.is_some());
        if let Some(kept) = kept {
            let _ = kept.set(pool.clone());
        }
        pool
    }

    /// The pool of `authority`, made and kept for later calls if there is none. `configured`:
    /// a host of the config. Other hosts (redirect targets, which a backend's answers choose)
    /// get a pool kept only while fewer than [`MAX_HOSTS`] are: past that, one that lasts
    /// for the call alone, so that answers pointing at ever new hosts cannot grow the map.
    fn lookup(self: &Arc<Self>, authority: &Authority, configured: bool) -> Arc<HostPool> {
        let fresh = || {
            Arc::new(HostPool {
                idle: Mutex::new(Vec::new()),
                max_idle: self.max_idle_per_host,
                idle_timeout: self.idle_timeout,
                owner: Arc::downgrade(self),
            })
        };
        let Ok(mut hosts) = self.hosts.lock() else { return fresh() };
        match hosts.get(authority.as_str()) {
            Some(pool) => pool.clone(),
            None if configured || hosts.len() < MAX_HOSTS => {
                hosts.entry(authority.as_str().into()).or_insert_with(fresh).clone()
            }
            None => fresh(),
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Pooled, CallError> {
        let port = authority.port_u16().unwrap_or(80);
        // An IPv6 literal comes bracketed in the authority.
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| CallError::ConnectTimeout)?
            .map_err(CallError::Connect)?;
        let _ = tcp.set_nodelay(true);
        Ok(Box::new(Conn::new(tcp)))
    }

    /// Sends `request` to `authority` and reads the answer, keeping the connection
    /// for reuse when it stays good. `keep` says which response header fields are wanted.
    ///
    /// The request is encoded before the future is made, so that the future holds the
    /// bytes to send and not the request too (every request's future is moved whole).
    pub fn call<'a>(
        &'a self,
        authority: &'a Authority,
        pool: Arc<HostPool>,
        request: Outgoing,
        max_body: usize,
        keep: h1::Keep,
    ) -> impl Future<Output = Result<Answer, CallError>> + 'a {
        let wire = Wire::encode(authority, request);
        async move { self.attempt(authority, &pool, &wire, |c| Self::exchange(&pool, c, &wire, max_body, keep)).await }
    }

    /// Like [`Upstreams::call`], but returns as soon as the response head arrived; the
    /// body streams through [`Streamed`], which hands the connection back to the pool
    /// when the body ends.
    pub fn call_streaming<'a>(
        &'a self,
        authority: &'a Authority,
        pool: Arc<HostPool>,
        request: Outgoing,
    ) -> impl Future<Output = Result<Response<Streamed>, CallError>> + 'a {
        let wire = Wire::encode(authority, request);
        async move { self.attempt(authority, &pool, &wire, |c| Self::head(&pool, c, &wire)).await }
    }

    /// Runs `exchange` on an idle connection, or a new one. When a reused connection
    /// turns out closed, the call is made again on a fresh one if that is safe: not a
    /// byte of the request got out, or its method is idempotent (a `POST` whose body was
    /// cut off part way is not sent again, as Go's transport does not either).
    async fn attempt<T, F, Fut>(
        &self,
        authority: &Authority,
        pool: &HostPool,
        wire: &Wire,
        exchange: F,
    ) -> Result<T, CallError>
    where
        F: Fn(Pooled) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        if let Some(c) = pool.checkout() {
            match exchange(c).await {
                Err(CallError::Unsent(_)) => {}
                Err(CallError::Closed | CallError::PartlySent(_)) if wire.method.is_idempotent() => {}
                other => return other,
            }
        }
        let fresh = self.connect(authority).await?;
        exchange(fresh).await
    }

    async fn head(pool: &Arc<HostPool>, mut c: Pooled, wire: &Wire) -> Result<Response<Streamed>, CallError> {
        let head = c.send(&wire.bytes, &wire.method, h1::Keep::Forward).await?;
        let mut body = Streamed {
            conn: Some(c),
            framing: head.framing,
            home: head.keep_alive.then(|| Arc::downgrade(pool)),
            raw: head.raw,
        };
        if body.framing.is_done() {
            body.release();
        }
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        Ok(response)
    }

    async fn exchange(
        pool: &HostPool,
        mut c: Pooled,
        wire: &Wire,
        max_body: usize,
        keep: h1::Keep,
    ) -> Result<Answer, CallError> {
        let head = c.send(&wire.bytes, &wire.method, keep).await?;
        let mut framing = head.framing;
        let body = c.read_body(&mut framing, max_body).await;
        if body.is_ok() && head.keep_alive && c.buf.is_empty() {
            pool.checkin(c);
        }
        Ok(Answer { status: head.status, headers: head.headers, body })
    }
}

/// A backend body streamed to the client as it arrives; at its end the connection goes
/// back to its pool.
pub struct Streamed {
    conn: Option<Pooled>,
    framing: Framing,
    /// Where the connection returns when the body ends, if it may be reused.
    home: Option<Weak<HostPool>>,
    /// The response's fields, when they were left as the backend wrote them
    /// ([`h1::Keep::Forward`]): the response's map is empty until they are put in it.
    raw: Option<Box<h1::RawFields>>,
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let Some(c) = &mut this.conn else { return Poll::Ready(None) };
        match ready!(c.poll_data(&mut this.framing, cx)) {
            Ok(Some(data)) => {
                if this.framing.is_done() {
                    this.release();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(None) => {
                this.release();
                Poll::Ready(None)
            }
            Err(e) => {
                this.conn = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.framing.remaining().map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl Streamed {
    /// The response's fields as the backend wrote them, when they are not in its map.
    pub fn raw_fields(&mut self) -> &mut Option<Box<h1::RawFields>> {
        &mut self.raw
    }

    /// Returns the connection to its pool, once the body is complete and nothing
    /// beyond it was sent.
    fn release(&mut self) {
        let Some(c) = self.conn.take() else { return };
        let Some(home) = self.home.take() else { return };
        if self.framing.is_done()
            && c.buf.is_empty()
            && let Some(pool) = home.upgrade()
        {
            pool.checkin(c);
        }
    }
}

/// A request as it goes on the wire, encoded once for however many attempts it takes.
struct Wire {
    method: Method,
    bytes: Vec<u8>,
}

impl Wire {
    fn encode(authority: &Authority, request: Outgoing) -> Self {
        let target = request.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut bytes = Vec::new();
        h1::encode_request(
            &mut bytes,
            &request.method,
            target,
            authority.as_str(),
            request.headers.as_slice(),
            &request.body,
        );
        Self { method: request.method, bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connection to a loopback peer, and the peer's end.
    async fn pair() -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Conn::new(client), server)
    }

    async fn answer(conn: &mut Conn, peer: &mut TcpStream, body: &[u8]) -> Bytes {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
        peer.write_all(&[head.as_bytes(), body].concat()).await.unwrap();
        let mut head = conn.read_head(&Method::GET, h1::Keep::TypeAndLocation).await.unwrap();
        conn.read_body(&mut head.framing, 1 << 20).await.unwrap()
    }

    #[test]
    fn a_backend_keeps_its_hosts_pool_but_not_one_of_other_upstreams() {
        let upstreams = || Arc::new(Upstreams::new(4, Duration::from_secs(1), Duration::from_secs(90)));
        let (a, b) = (upstreams(), upstreams());
        let host: Authority = "127.0.0.1:9".parse().unwrap();
        let kept = OnceLock::new();
        let first = a.pool(&host, Some(&kept));
        assert!(Arc::ptr_eq(kept.get().unwrap(), &first), "kept by the first call");
        assert!(Arc::ptr_eq(&a.pool(&host, None), &first), "one pool per host");
        assert!(Arc::ptr_eq(&a.pool(&host, Some(&kept)), &first));
        let theirs = b.pool(&host, Some(&kept));
        assert!(!Arc::ptr_eq(&theirs, &first), "another Upstreams has its own");
        assert!(Arc::ptr_eq(&theirs, &b.pool(&host, None)));
        let elsewhere: Authority = "127.0.0.1:10".parse().unwrap();
        assert!(!Arc::ptr_eq(&a.pool(&elsewhere, None), &first));
    }

    #[test]
    fn hosts_outside_the_config_cannot_grow_the_pools_without_bound() {
        let upstreams = Arc::new(Upstreams::new(4, Duration::from_secs(1), Duration::from_secs(90)));
        let host = |i: usize| -> Authority { format!("h{i}.invalid:80").parse().unwrap() };
        for i in 0..MAX_HOSTS + 10 {
            drop(upstreams.pool(&host(i), None));
        }
        let known = || upstreams.hosts.lock().unwrap().len();
        assert_eq!(known(), MAX_HOSTS);
        // Past the bound a redirect target's pool lasts for its call alone...
        let once = upstreams.pool(&host(MAX_HOSTS + 1), None);
        assert!(!Arc::ptr_eq(&once, &upstreams.pool(&host(MAX_HOSTS + 1), None)));
        // ...while one kept before it, and a host of the config, are kept.
        assert!(Arc::ptr_eq(&upstreams.pool(&host(0), None), &upstreams.pool(&host(0), None)));
        let configured = upstreams.pool(&host(MAX_HOSTS + 20), Some(&OnceLock::new()));
        assert!(Arc::ptr_eq(&configured, &upstreams.pool(&host(MAX_HOSTS + 20), None)));
        assert_eq!(known(), MAX_HOSTS + 1);
    }

    #[tokio::test]
    async fn an_idle_connection_reads_into_the_same_storage_once_it_is_free_again() {
        let (mut conn, mut peer) = pair().await;
        let first = answer(&mut conn, &mut peer, b"{\"a\":1}").await;
        conn.park();
        // The first body still refers to the storage: the next answer must not touch it.
        let second = answer(&mut conn, &mut peer, b"{\"b\":2}").await;
        assert_eq!((&first[..], &second[..]), (&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]));
        let storage = second.as_ptr();
        conn.park();
        assert!(conn.buf.capacity() > 0, "a page-sized buffer stays with the idle connection");
        drop((first, second));
        // Nothing refers to it any more: the third answer (a head of the same length)
        // is read into it from its start.
        let third = answer(&mut conn, &mut peer, b"{\"c\":3}").await;
        assert_eq!(third.as_ptr(), storage);
        assert_eq!(&third[..], b"{\"c\":3}");
    }

    #[tokio::test]
    async fn a_buffer_grown_for_a_large_body_goes_when_the_connection_idles() {
        let (mut conn, mut peer) = pair().await;
        let small = answer(&mut conn, &mut peer, b"{}").await;
        drop(small);
        conn.park();
        assert!(conn.buf.capacity() > 0, "a page-sized buffer stays");
        let large = vec![b'x'; 3 * HEAD_READ];
        let body = answer(&mut conn, &mut peer, &large).await;
        assert_eq!(body.len(), large.len());
        conn.park();
        assert_eq!(conn.buf.capacity(), 0, "a grown buffer is given back");
    }
}
