//! HTTP/1.1 on the wire, client side, without I/O: request heads written straight into
//! a buffer, response heads parsed in place, and bodies delimited as RFC 9112 §6 says.
//!
//! [`super::upstream`] drives these over its pooled connections. Keeping the protocol
//! here, as functions over byte buffers, lets it be tested byte for byte without sockets.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// A response head larger than this is refused (the backend is misbehaving).
pub const MAX_HEAD_BYTES: usize = 256 * 1024;
/// Response headers beyond this many are refused.
const MAX_HEADERS: usize = 128;
/// Room left in a passed-on response's map for the fields the gateway adds to it
/// (`X-Krakend-Completed` and the version header), so that the map is not grown (its
/// entries moved, its index rebuilt) for them.
const GATEWAY_FIELDS: usize = 2;
/// Kept response fields are noted on the stack up to this many (a list beyond).
const FEW_FIELDS: usize = 24;
/// [`RawFields`] holds up to this many runs of adjacent kept lines; a head whose kept
/// lines are more scattered gets a map.
const RAW_RUNS: usize = 4;
/// A chunk-size line (with extensions) or a trailer line longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// Chunk extensions and trailers of one body, together, may not exceed this: they carry
/// no data, and no body limit would count them otherwise.
const MAX_CHUNK_OVERHEAD: u32 = 16 * 1024;

/// Why a response could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("invalid response head: {0}")]
    Head(&'static str),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid chunked body: {0}")]
    Chunk(&'static str),
}

/// Writes `method target HTTP/1.1`, `Host` (unless `headers` carry one), the headers,
/// and the framing of `body`, then the body. Framing headers in `headers` are dropped:
/// the length written is the body's own.
pub fn encode_request(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    host: &str,
    headers: &[(HeaderName, HeaderValue)],
    body: &[u8],
) {
    let fields: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    out.reserve(64 + target.len() + host.len() + fields + body.len());
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(if target.is_empty() { b"/" } else { target.as_bytes() });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n == header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // Methods that define a body announce even an empty one, so the backend does not
    // wait for one (as Go's and hyper's clients do).
    if !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    /// The kept fields; empty when they are in `raw`.
    pub headers: HeaderMap,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection can carry another request once the body is read.
    pub keep_alive: bool,
    /// The kept fields as the backend wrote them ([`Keep::Forward`]), instead of `headers`.
    /// Boxed: a response is moved through every layer of the request path.
    pub raw: Option<Box<RawFields>>,
}

/// Which response header fields go into the head's map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Every field (a response a cache stores).
    All,
    /// Every field a proxy passes on (a `no-op` response): all but the hop-by-hop ones
    /// ([`is_hop_by_hop`]), and but a `Content-Length` that delimits the body, whose
    /// length the server announces again from the body itself. A bodiless response (to
    /// HEAD, 204, 304) keeps its `Content-Length`: it tells the length a GET would get.
    ///
    /// The kept fields stay lines of the head ([`Head::raw`]), so that no map is built for
    /// a response passed on as it is. They go into the map instead for a response without
    /// a body or a redirect, and when a kept line would not go out as it came: an empty
    /// value, a line not ended by CRLF (or by whitespace first), a field the gateway sets
    /// itself ([`gateway_sets`]), lines in more than [`RAW_RUNS`] runs.
    Forward,
    /// `Content-Type` and `Location`: all a decoded response is read for.
    TypeAndLocation,
}

/// Whether a field concerns one connection only (RFC 9110 §7.6.1, and the fields proxies
/// have always dropped): `Connection`, `Keep-Alive`, `Proxy-Connection`,
/// `Proxy-Authenticate`, `Proxy-Authorization`, `TE`, `Trailer`, `Transfer-Encoding`,
/// `Upgrade`, in any case. Compared by length first: most names are ruled out by that.
pub fn is_hop_by_hop(name: &str) -> bool {
    let is = |known: &str| field_is(name, known);
    match name.len() {
        2 => is("te"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        18 => is("proxy-authenticate"),
        19 => is("proxy-authorization"),
        _ => false,
    }
}

/// Parses a complete response head at the start of `buf` and removes it. `Ok(None)`: the
/// head is not complete yet; read more. Interim (1xx) responses are consumed and skipped.
/// `request_method` decides whether a body follows (never after HEAD).
pub fn parse_head(buf: &mut BytesMut, request_method: &Method, keep: Keep) -> Result<Option<Head>, Invalid> {
    loop {
        // Left uninitialised: filling 128 header slots cost more than parsing a head.
        let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => return Err(Invalid::HeadTooLarge),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Invalid::Head("too many headers")),
            Err(_) => return Err(Invalid::Head("malformed")),
        };
        if parsed > MAX_HEAD_BYTES {
            return Err(Invalid::HeadTooLarge);
        }
        let code = response.code.ok_or(Invalid::Head("no status"))?;
        let status = StatusCode::from_u16(code).map_err(|_| Invalid::Head("status out of range"))?;
        let http11 = response.version == Some(1);
        if status.is_informational() {
            // 100 Continue, 103 Early Hints: the real answer follows. 101 would switch
            // protocols, which is never asked for.
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Invalid::Head("unrequested protocol switch"));
            }
            buf.advance(parsed);
            continue;
        }
        let bodiless = bodiless(status, request_method);
        let framing = framing(bodiless, response.headers)?;
        let keep_alive = connection_persists(http11, response.headers) && !matches!(framing, Framing::Close);
        // A length that delimits a body: passed on, the body announces it again.
        let length_delimits = matches!(framing, Framing::Length(_)) && !bodiless;
        // Names and values are taken out of the head once it leaves the buffer (values
        // are slices of it, not copies): record where each kept field is, on the stack.
        let base = buf.as_ptr() as usize;
        let mut few = [Spot::default(); FEW_FIELDS];
        let mut many = Vec::new();
        let mut kept = 0;
        for h in response.headers.iter() {
            let name = match keep {
                Keep::All => Name::Parse,
                Keep::Forward if is_hop_by_hop(h.name) => continue,
                Keep::Forward if length_delimits && field_is(h.name, "content-length") => continue,
                Keep::Forward => Name::Parse,
                Keep::TypeAndLocation if field_is(h.name, "content-type") => Name::ContentType,
                Keep::TypeAndLocation if field_is(h.name, "location") => Name::Location,
                Keep::TypeAndLocation => continue,
            };
            // Every offset is within the head, which is at most MAX_HEAD_BYTES long.
            let at = |field: &[u8]| (field.as_ptr() as usize - base) as u32;
            let spot = Spot {
                name,
                name_at: at(h.name.as_bytes()),
                name_len: h.name.len() as u32,
                value_at: at(h.value),
                value_len: h.value.len() as u32,
            };
            if kept < FEW_FIELDS {
                few[kept] = spot;
            } else {
                if many.is_empty() {
                    many.extend_from_slice(&few);
                }
                many.push(spot);
            }
            kept += 1;
        }
        let spots = if kept <= FEW_FIELDS { &few[..kept] } else { &many[..] };
        let head = buf.split_to(parsed).freeze();
        if keep == Keep::Forward
            && !bodiless
            && !status.is_redirection()
            && let Some(raw) = RawFields::gather(&head, spots)
        {
            let raw = Some(Box::new(raw));
            return Ok(Some(Head { status, headers: HeaderMap::new(), framing, keep_alive, raw }));
        }
        let room = if keep == Keep::Forward { GATEWAY_FIELDS } else { 0 };
        let mut headers = HeaderMap::with_capacity(kept + room);
        for spot in spots {
            let name = spot.name(&head)?;
            let (at, len) = (spot.value_at as usize, spot.value_len as usize);
            let value = HeaderValue::from_maybe_shared(head.slice(at..at + len))
                .map_err(|_| Invalid::Head("invalid header value"))?;
            headers.append(name, value);
        }
        return Ok(Some(Head { status, headers, framing, keep_alive, raw: None }));
    }
}

/// Whether the connection stays open after this response: HTTP/1.1 unless it says
/// `close`, HTTP/1.0 only when it says `keep-alive`. Both `Transfer-Encoding` and
/// `Content-Length` on one response is a smuggling pattern: never reuse after it. Read
/// from the parsed fields, as [`framing`] is: byte comparisons, no hashed lookups.
fn connection_persists(http11: bool, fields: &[httparse::Header<'_>]) -> bool {
    let has = |name: &str| fields.iter().any(|h| field_is(h.name, name));
    if has("transfer-encoding") && has("content-length") {
        return false;
    }
    let (close, keep_alive) = connection_says(fields);
    !close && (http11 || keep_alive)
}

/// Whether the field name `name` is `lower` in any case, where `lower` is a name in lower
/// case made of letters and `-` (every name this module looks for). Setting bit 5 of each
/// byte folds `A`-`Z` onto `a`-`z` and leaves `a`-`z` and `-` as they are; the only other
/// byte it folds onto one of them is CR (onto `-`), which no parsed field name holds. So
/// the names are compared eight bytes at a time, with that bit set on both sides.
pub fn field_is(name: &str, lower: &str) -> bool {
    bytes_are(name.as_bytes(), lower)
}

/// [`field_is`] for a name as bytes.
fn bytes_are(name: &[u8], lower: &str) -> bool {
    debug_assert!(lower.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'), "{lower}");
    let lower = lower.as_bytes();
    let folded = |part: &[u8]| {
        let mut word = [0u8; 8];
        word[..part.len()].copy_from_slice(part);
        u64::from_le_bytes(word) | 0x2020_2020_2020_2020
    };
    name.len() == lower.len() && name.chunks(8).zip(lower.chunks(8)).all(|(a, b)| folded(a) == folded(b))
}

/// The parsed fields called `name`, in order.
pub fn named<'f, 'h>(
    fields: &'f [httparse::Header<'h>],
    name: &'static str,
) -> impl DoubleEndedIterator<Item = &'f httparse::Header<'h>> {
    fields.iter().filter(move |h| field_is(h.name, name))
}

/// Whether `Connection` fields say `close`, and whether they say `keep-alive`.
pub fn connection_says(fields: &[httparse::Header<'_>]) -> (bool, bool) {
    let mut close = false;
    let mut keep_alive = false;
    for h in named(fields, "connection") {
        for token in h.value.split(|b| *b == b',') {
            let token = token.trim_ascii();
            close |= token.eq_ignore_ascii_case(b"close");
            keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    (close, keep_alive)
}

/// The length `Content-Length` fields give, if any: decimal digits only, and a repeated or
/// comma-listed length only when every copy agrees (a request and a response are
/// delimited by the same rule, so both sides read it here).
pub fn content_length(fields: &[httparse::Header<'_>]) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    let mut agree = |n: u64| match length {
        Some(l) if l != n => Err("conflicting content-length"),
        _ => {
            length = Some(n);
            Ok(())
        }
    };
    for h in named(fields, "content-length") {
        // Nearly always one plain number, read without splitting.
        match plain_length(h.value) {
            Some(n) => agree(n)?,
            None => {
                for part in h.value.split(|b| *b == b',') {
                    agree(plain_length(part.trim_ascii()).ok_or("invalid content-length")?)?;
                }
            }
        }
    }
    Ok(length)
}

/// A value of 1 to 19 decimal digits and nothing else, as a number.
fn plain_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// How the body is delimited (RFC 9112 §6.3); `bodiless`: a response that never has one ([`bodiless`]).
fn framing(bodiless: bool, fields: &[httparse::Header<'_>]) -> Result<Framing, Invalid> {
    if bodiless {
        return Ok(Framing::Length(0));
    }
    if let Some(last) = named(fields, "transfer-encoding").next_back() {
        let chunked =
            last.value.rsplit(|b| *b == b',').next().is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        // Any other final coding leaves the length to the end of the connection.
        return Ok(if chunked { Framing::chunked() } else { Framing::Close });
    }
    Ok(content_length(fields).map_err(Invalid::Head)?.map_or(Framing::Close, Framing::Length))
}

/// A response that never has a body, whatever its fields say: to HEAD, 204 and 304.
fn bodiless(status: StatusCode, request_method: &Method) -> bool {
    *request_method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

/// A passed-on response's fields as its backend wrote them: the kept lines of the head,
/// in runs of adjacent lines, each written out with one copy; then the lines the gateway
/// adds of its own ([`RawFields::add_own`]). No map is built for them unless something
/// must read or change them ([`RawFields::into_map`]).
#[derive(Debug, Clone)]
pub struct RawFields {
    head: Bytes,
    /// `start..end` of each run in `head`, each line ended by CRLF.
    runs: [(u32, u32); RAW_RUNS],
    count: u8,
    has_date: bool,
    /// Field lines the gateway adds, each ended by CRLF.
    own: Bytes,
}

/// Fields the gateway sets on a passed-on response, replacing the backend's: the framing
/// (a `Content-Length` kept beside a chunked coding, which the server leaves out when it
/// writes a map), `X-Krakend-Completed` and the version header. A head with one of them
/// gets a map.
fn gateway_sets(name: &[u8]) -> bool {
    match name.len() {
        6 => bytes_are(name, "x-weir"),
        14 => bytes_are(name, "content-length"),
        19 => bytes_are(name, "x-krakend-completed"),
        _ => false,
    }
}

/// Whether a field value is one [`HeaderValue`] takes: visible ASCII, spaces and tabs, and
/// bytes above ASCII; no other control byte. (A value that is not is refused, with the map
/// the head then gets.)
fn value_is_sendable(value: &[u8]) -> bool {
    value.iter().fold(true, |ok, &b| ok & ((b >= b' ' && b != 0x7f) | (b == b'\t')))
}

impl RawFields {
    /// The kept lines at `spots` of `head`, if every one can go out as it is.
    fn gather(head: &Bytes, spots: &[Spot]) -> Option<Self> {
        let mut raw =
            Self { head: head.clone(), runs: [(0, 0); RAW_RUNS], count: 0, has_date: false, own: Bytes::new() };
        for spot in spots {
            let name = head.get(spot.name_at as usize..)?.get(..spot.name_len as usize)?;
            let value_end = spot.value_at as usize + spot.value_len as usize;
            let value = head.get(spot.value_at as usize..value_end)?;
            if value.is_empty()
                || head.get(value_end..value_end + 2) != Some(b"\r\n")
                || gateway_sets(name)
                || !value_is_sendable(value)
            {
                return None;
            }
            raw.has_date |= bytes_are(name, "date");
            let (start, end) = (spot.name_at, value_end as u32 + 2);
            let n = usize::from(raw.count);
            if n > 0 && raw.runs[n - 1].1 == start {
                raw.runs[n - 1].1 = end;
            } else if n < RAW_RUNS {
                raw.runs[n] = (start, end);
                raw.count += 1;
            } else {
                return None;
            }
        }
        Some(raw)
    }

    /// Whether the backend sent a `Date`.
    pub fn has_date(&self) -> bool {
        self.has_date
    }

    /// Adds the gateway's own field lines (`name: value\r\n` each), written after the
    /// backend's. They must not name a field the backend's lines have ([`gateway_sets`]).
    pub fn add_own(&mut self, lines: Bytes) {
        debug_assert!(lines.is_empty() || lines.ends_with(b"\r\n"));
        self.own = lines;
    }

    /// Writes every line, each ended by CRLF.
    pub fn write(&self, out: &mut Vec<u8>) {
        for &(start, end) in &self.runs[..usize::from(self.count)] {
            out.extend_from_slice(&self.head[start as usize..end as usize]);
        }
        out.extend_from_slice(&self.own);
    }

    /// The fields in a map, the backend's first, then the gateway's own, then `later`
    /// (fields set since), which replace any of the same name.
    pub fn into_map(self, later: HeaderMap) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(8 + later.len());
        let backend =
            self.runs[..usize::from(self.count)].iter().map(|&(s, e)| self.head.slice(s as usize..e as usize));
        for run in backend.chain(std::iter::once(self.own.clone())) {
            for line in run.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
                let value = line[colon + 1..].trim_ascii();
                if let (Ok(name), Ok(value)) =
                    (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_maybe_shared(run.slice_ref(value)))
                {
                    map.append(name, value);
                }
            }
        }
        map.extend(later);
        map
    }
}

/// Where a kept field's name and value are in a response head (which is at most
/// [`MAX_HEAD_BYTES`] long).
#[derive(Clone, Copy, Default)]
struct Spot {
    name: Name,
    name_at: u32,
    name_len: u32,
    value_at: u32,
    value_len: u32,
}

impl Spot {
    fn name(self, head: &[u8]) -> Result<HeaderName, Invalid> {
        match self.name {
            Name::ContentType => Ok(header::CONTENT_TYPE),
            Name::Location => Ok(header::LOCATION),
            Name::Parse => HeaderName::from_bytes(&head[self.name_at as usize..][..self.name_len as usize])
                .map_err(|_| Invalid::Head("invalid header name")),
        }
    }
}

/// A kept field's name: known already, or to be parsed from the head.
#[derive(Clone, Copy, Default)]
enum Name {
    #[default]
    Parse,
    ContentType,
    Location,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk with this many bytes left.
    Data(u64),
    /// After a chunk's data, expecting its CRLF.
    DataEnd,
    /// After the last chunk, in the trailer section (which is read and dropped).
    Trailers,
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// After this many more bytes (0: the body is complete).
    Length(u64),
    /// Chunked transfer coding, and the bytes of extensions and trailers read so far.
    Chunked(Chunked, u32),
    /// When the backend closes the connection.
    Close,
}

/// The next step of reading a body out of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Body bytes, taken out of the buffer without copying.
    Data(Bytes),
    /// The buffer holds no more of the body: read more.
    More,
    /// The body is complete.
    End,
}

impl Framing {
    /// A chunked body, before its first chunk.
    pub const fn chunked() -> Self {
        Framing::Chunked(Chunked::Size, 0)
    }

    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        *self == Framing::Length(0)
    }

    /// Bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Framing::Length(n) => Some(*n),
            _ => None,
        }
    }

    /// Takes the next piece of body out of `buf`.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Invalid> {
        loop {
            match self {
                Framing::Length(0) => return Ok(Step::End),
                Framing::Length(n) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let take = usize::try_from(*n).unwrap_or(usize::MAX).min(buf.len());
                    *n -= take as u64;
                    return Ok(Step::Data(buf.split_to(take).freeze()));
                }
                Framing::Close => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                Framing::Chunked(state, overhead) => match *state {
                    Chunked::Size => {
                        let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else { return Ok(Step::More) };
                        let (size, extensions) = chunk_size(&line)?;
                        *overhead = add_overhead(*overhead, extensions)?;
                        *state = if size == 0 { Chunked::Trailers } else { Chunked::Data(size) };
                    }
                    Chunked::Data(n) => {
                        if buf.is_empty() {
                            return Ok(Step::More);
                        }
                        let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                        let left = n - take as u64;
                        *state = if left == 0 { Chunked::DataEnd } else { Chunked::Data(left) };
                        return Ok(Step::Data(buf.split_to(take).freeze()));
                    }
                    Chunked::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Step::More);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(Invalid::Chunk("chunk data not followed by CRLF"));
                        }
                        buf.advance(2);
                        *state = Chunked::Size;
                    }
                    Chunked::Trailers => {
                        let Some(line) = take_line(buf, MAX_TRAILERS)? else { return Ok(Step::More) };
                        if line.is_empty() {
                            *self = Framing::Length(0);
                        } else if line.iter().any(|&b| is_control(b)) {
                            // A bare CR or LF would end the line for a reader that
                            // accepts them: the two would disagree on where the body ends.
                            return Err(Invalid::Chunk("control character in a trailer"));
                        } else {
                            *overhead = add_overhead(*overhead, line.len())?;
                        }
                    }
                },
            }
        }
    }

    /// The connection ended: whether that completes the body.
    pub fn at_eof(&mut self) -> Result<(), &'static str> {
        match self {
            Framing::Close => {
                *self = Framing::Length(0);
                Ok(())
            }
            Framing::Length(0) => Ok(()),
            _ => Err("the backend closed the connection mid-body"),
        }
    }
}

/// Takes one CRLF-terminated line (without the CRLF) out of `buf`; `None` until the
/// whole line is there.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, Invalid> {
    match find_crlf(buf) {
        Some(end) => {
            let line = buf.split_to(end);
            buf.advance(2);
            Ok(Some(line))
        }
        None if buf.len() > max => Err(Invalid::Chunk("line too long")),
        None => Ok(None),
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Whether a byte may not appear in a chunk-size or trailer line: controls but HTAB.
fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

fn add_overhead(so_far: u32, more: usize) -> Result<u32, Invalid> {
    u32::try_from(more)
        .ok()
        .and_then(|m| so_far.checked_add(m))
        .filter(|total| *total <= MAX_CHUNK_OVERHEAD)
        .ok_or(Invalid::Chunk("chunk extensions and trailers too large"))
}

/// The size of a chunk-size line (hex digits, then optional SP/HTAB and extensions)
/// and how many bytes its extensions take. Nothing but SP and HTAB may follow the
/// digits before `;`, and extensions hold no control characters (a bare LF in them
/// would end the line for a lenient reader).
fn chunk_size(line: &[u8]) -> Result<(u64, usize), Invalid> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Invalid::Chunk("missing chunk size"));
    }
    if digits > 15 {
        return Err(Invalid::Chunk("chunk size too large"));
    }
    let rest = &line[digits..];
    let rest = &rest[rest.iter().take_while(|b| matches!(b, b' ' | b'\t')).count()..];
    if !rest.is_empty() && rest[0] != b';' {
        return Err(Invalid::Chunk("invalid chunk size"));
    }
    if rest.iter().any(|&b| is_control(b)) {
        return Err(Invalid::Chunk("control character in a chunk extension"));
    }
    Ok((line[..digits].iter().fold(0u64, |n, d| n * 16 + u64::from(hex(*d))), rest.len()))
}

fn hex(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        _ => d - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8], method: &Method) -> (Result<Option<Head>, Invalid>, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        (parse_head(&mut buf, method, Keep::All), buf)
    }

    /// Reads a whole body out of `wire`, fed in pieces of `piece` bytes.
    fn body(mut framing: Framing, wire: &[u8], piece: usize) -> Result<(Vec<u8>, BytesMut), Invalid> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match framing.step(&mut buf)? {
                Step::Data(d) => out.extend_from_slice(&d),
                Step::End => return Ok((out, buf)),
                Step::More if fed < wire.len() => {
                    let end = (fed + piece).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
                Step::More => {
                    framing.at_eof().map_err(Invalid::Chunk)?;
                }
            }
        }
    }

    #[test]
    fn requests_carry_host_headers_and_their_own_length() {
        let mut headers = vec![
            (HeaderName::from_static("x-a"), HeaderValue::from_static("1")),
            (header::CONTENT_LENGTH, HeaderValue::from_static("999")),
            (header::TRANSFER_ENCODING, HeaderValue::from_static("chunked")),
        ];
        let mut out = Vec::new();
        encode_request(&mut out, &Method::POST, "/a?b=1", "h:8080", &headers, b"hello");
        assert_eq!(out, b"POST /a?b=1 HTTP/1.1\r\nhost: h:8080\r\nx-a: 1\r\ncontent-length: 5\r\n\r\nhello");

        let mut out = Vec::new();
        headers.push((header::HOST, HeaderValue::from_static("given")));
        encode_request(&mut out, &Method::GET, "", "h:8080", &headers, b"");
        assert_eq!(out, b"GET / HTTP/1.1\r\nx-a: 1\r\nhost: given\r\n\r\n");

        let mut out = Vec::new();
        encode_request(&mut out, &Method::PUT, "/p", "h", &[], b"");
        assert_eq!(out, b"PUT /p HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn heads_are_parsed_and_removed_from_the_buffer() {
        let (h, rest) = head(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\nX-Multi: a\r\nx-multi: b\r\n\r\n{}", &Method::GET);
        let h = h.unwrap().unwrap();
        assert_eq!(h.status, 201);
        assert_eq!(h.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(h.headers.get_all("x-multi").iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(h.framing, Framing::Length(2));
        assert!(h.keep_alive);
        assert_eq!(&rest[..], b"{}");
    }

    /// The fields a head kept, whether as lines or in its map.
    fn kept_fields(head: Head) -> HeaderMap {
        match head.raw {
            Some(lines) => {
                assert!(head.headers.is_empty(), "fields set beside the lines");
                lines.into_map(HeaderMap::new())
            }
            None => head.headers,
        }
    }

    /// What a proxy passes on of the fields of a head parsed with `Keep::All` (the answer
    /// to `method`): all but the hop-by-hop ones and a length that delimits the body.
    fn passed_on(all: &Head, method: &Method) -> HeaderMap {
        let delimits = matches!(all.framing, Framing::Length(_)) && !bodiless(all.status, method);
        let mut map = HeaderMap::new();
        for (name, value) in &all.headers {
            if !is_hop_by_hop(name.as_str()) && (!delimits || *name != header::CONTENT_LENGTH) {
                map.append(name.clone(), value.clone());
            }
        }
        map
    }

    /// The fields each mode keeps, in order, with their values.
    fn kept(wire: &[u8], method: &Method, keep: Keep) -> Vec<(String, String)> {
        let mut buf = BytesMut::from(wire);
        let h = parse_head(&mut buf, method, keep).unwrap().unwrap();
        kept_fields(h).iter().map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned())).collect()
    }

    #[test]
    fn each_mode_keeps_its_fields() {
        let wire = b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
            Content-Type: application/json\r\nCONTENT-LENGTH: 2\r\nTE: trailers\r\nTrailer: x\r\nUpgrade: h2c\r\n\
            Proxy-Connection: close\r\nProxy-Authenticate: Basic\r\nProxy-Authorization: Basic x\r\n\
            Location: /next\r\nX-Other: 1\r\n\r\n{}";
        let names = |fields: Vec<(String, String)>| fields.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(names(kept(wire, &Method::GET, Keep::All)).len(), 13);
        // Passed on: no hop-by-hop field, and no length (the body announces its own).
        assert_eq!(
            kept(wire, &Method::GET, Keep::Forward),
            [("server", "up"), ("content-type", "application/json"), ("location", "/next"), ("x-other", "1")]
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        assert_eq!(
            kept(wire, &Method::GET, Keep::TypeAndLocation),
            [("content-type", "application/json"), ("location", "/next")].map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        // Without a body, the length is what a GET would get: passed on.
        let no_body = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(names(kept(no_body, &Method::HEAD, Keep::Forward)), ["content-length"]);
        let not_modified = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n";
        assert_eq!(names(kept(not_modified, &Method::GET, Keep::Forward)), ["content-length"]);
        // A length beside a chunked coding does not delimit the body: kept, as the server
        // drops it on its own when it writes the head.
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 7\r\n\r\n";
        assert_eq!(names(kept(chunked, &Method::GET, Keep::Forward)), ["content-length"]);
        // More fields than are noted on the stack: all kept, in order.
        let mut long = b"HTTP/1.1 200 OK\r\nconnection: close\r\n".to_vec();
        let many: Vec<(String, String)> = (0..40).map(|i| (format!("x-f{i}"), format!("v{i}"))).collect();
        for (n, v) in &many {
            long.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        long.extend_from_slice(b"\r\n");
        assert_eq!(kept(&long, &Method::GET, Keep::Forward), many);
        // A value with a control byte is refused, in every mode that keeps it.
        let invalid_value = b"HTTP/1.1 200 OK\r\nX-Bad: a\x7fb\r\n\r\n";
        for keep in [Keep::All, Keep::Forward] {
            let mut buf = BytesMut::from(&invalid_value[..]);
            assert!(parse_head(&mut buf, &Method::GET, keep).is_err());
        }
    }

    fn raw(wire: &[u8], method: &Method) -> Head {
        parse_head(&mut BytesMut::from(wire), method, Keep::Forward).unwrap().unwrap()
    }

    #[test]
    fn passed_on_lines_go_out_as_the_backend_wrote_them() {
        let wire = b"HTTP/1.1 200 OK\r\nServer: up\r\nDate: Sun, 29 Nov 2026 23:59:40 GMT\r\n\
            Content-Length: 2\r\nX-Two:  a, b\r\nConnection: keep-alive\r\nSet-Cookie: s=1\r\n\r\n{}";
        let head = raw(wire, &Method::GET);
        assert!(head.headers.is_empty(), "no map is built");
        let mut lines = head.raw.expect("the lines can go out as they are");
        assert!(lines.has_date());
        lines.add_own(Bytes::from_static(b"x-krakend-completed: false\r\n"));
        let mut out = Vec::new();
        lines.write(&mut out);
        // Two runs (the length and the connection fields go), and the gateway's own.
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Server: up\r\nDate: Sun, 29 Nov 2026 23:59:40 GMT\r\nX-Two:  a, b\r\nSet-Cookie: s=1\r\n\
             x-krakend-completed: false\r\n"
        );
        // In a map: the same fields, then those set since, which replace their namesakes.
        let mut later = HeaderMap::new();
        later.insert(header::SERVER, HeaderValue::from_static("weir"));
        later.insert(header::VARY, HeaderValue::from_static("Origin"));
        let map = lines.into_map(later);
        let fields: Vec<_> = map.iter().map(|(n, v)| format!("{n}={}", v.to_str().unwrap())).collect();
        assert_eq!(
            fields,
            [
                "server=weir",
                "date=Sun, 29 Nov 2026 23:59:40 GMT",
                "x-two=a, b",
                "set-cookie=s=1",
                "x-krakend-completed=false",
                "vary=Origin"
            ]
        );
    }

    #[test]
    fn lines_that_would_not_go_out_as_they_came_get_a_map() {
        let cases: [(&[u8], &Method); 11] = [
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 7\r\n\r\n", &Method::GET),
            (b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n", &Method::HEAD),
            (b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", &Method::GET),
            (b"HTTP/1.1 304 Not Modified\r\nX-A: 1\r\n\r\n", &Method::GET),
            (b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n", &Method::GET),
            (b"HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 0\r\n\r\n", &Method::GET),
            (b"HTTP/1.1 200 OK\r\nX-A: 1 \r\nContent-Length: 0\r\n\r\n", &Method::GET),
            (b"HTTP/1.1 200 OK\nX-A: 1\nContent-Length: 0\n\n", &Method::GET),
            (b"HTTP/1.1 200 OK\r\nX-Krakend-Completed: true\r\nContent-Length: 0\r\n\r\n", &Method::GET),
            (b"HTTP/1.1 200 OK\r\nx-weir: other\r\nContent-Length: 0\r\n\r\n", &Method::GET),
            (
                b"HTTP/1.1 200 OK\r\nA: 1\r\nTE: x\r\nB: 1\r\nTE: x\r\nC: 1\r\nTE: x\r\nD: 1\r\nTE: x\r\nE: 1\r\n\
                  Content-Length: 0\r\n\r\n",
                &Method::GET,
            ),
        ];
        for (wire, method) in cases {
            let head = raw(wire, method);
            assert!(head.raw.is_none(), "{}", String::from_utf8_lossy(wire));
            let all = parse_head(&mut BytesMut::from(wire), method, Keep::All).unwrap().unwrap();
            assert_eq!(head.headers, passed_on(&all, method), "{}", String::from_utf8_lossy(wire));
        }
        // A value the map refuses is refused where the lines would otherwise go out.
        let invalid_value = b"HTTP/1.1 200 OK\r\nX-Bad: a\x7fb\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_head(&mut BytesMut::from(&invalid_value[..]), &Method::GET, Keep::Forward).is_err());
    }

    #[test]
    fn field_names_compare_as_eq_ignore_ascii_case_does() {
        let known = ["te", "host", "expect", "trailer", "location", "connection", "content-type", "content-length"];
        let known = known.into_iter().chain(["transfer-encoding", "proxy-authorization", "x-a-very-long-field-name"]);
        // Every byte a field name may hold (RFC 9110 tchar), in every position of each name.
        let tchars: Vec<u8> = (0x21..0x7f).filter(|b| !b"\"(),/:;<=>?@[\\]{}".contains(b)).collect();
        for lower in known {
            let upper = lower.to_ascii_uppercase();
            for candidate in [lower.to_owned(), upper.clone(), format!("{lower}x"), lower[1..].to_owned()] {
                assert_eq!(field_is(&candidate, lower), candidate.eq_ignore_ascii_case(lower), "{candidate} / {lower}");
            }
            for at in 0..lower.len() {
                for &b in &tchars {
                    let mut name = upper.clone().into_bytes();
                    name[at] = b;
                    let name = String::from_utf8(name).unwrap();
                    assert_eq!(field_is(&name, lower), name.eq_ignore_ascii_case(lower), "{name} / {lower}");
                }
            }
        }
    }

    proptest::proptest! {
        /// A passed-on head keeps exactly the fields of the whole head that are neither
        /// hop-by-hop nor a length that delimits its body, in order, with their values;
        /// the framing and connection reuse are read the same in every mode.
        #[test]
        fn a_forwarded_head_is_the_whole_head_less_connection_fields(
            fields in proptest::collection::vec((
                "(x-[a-z]{1,6}|server|date|content-type|location|connection|keep-alive|te|trailer|upgrade|proxy-connection|content-length|x-weir)",
                proptest::bool::ANY,
                "[!-~]{1,12}( )?",
            ), 0..(3 * FEW_FIELDS / 2)),
            method in "(GET|HEAD)",
            status in "(200|204|302|304|404)",
        ) {
            let mut wire = format!("HTTP/1.1 {status} X\r\n");
            let mut length = false;
            for (name, upper, value) in &fields {
                // One length at most, and a number: several that disagree are refused.
                let value = if name == "content-length" {
                    if length { continue }
                    length = true;
                    "7".to_owned()
                } else {
                    value.clone()
                };
                let name = if *upper { name.to_ascii_uppercase() } else { name.clone() };
                wire.push_str(&format!("{name}: {value}\r\n"));
            }
            wire.push_str("\r\n");
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let parse = |keep| parse_head(&mut BytesMut::from(wire.as_bytes()), &method, keep).unwrap().unwrap();
            let (all, forward) = (parse(Keep::All), parse(Keep::Forward));
            proptest::prop_assert_eq!(all.framing, forward.framing);
            proptest::prop_assert_eq!(all.keep_alive, forward.keep_alive);
            // As lines or in the map, the same fields, in the same order.
            proptest::prop_assert_eq!(kept_fields(forward), passed_on(&all, &method));
        }
    }

    #[test]
    fn hop_by_hop_names_are_known_in_any_case() {
        for name in [
            "connection",
            "Keep-Alive",
            "PROXY-CONNECTION",
            "proxy-authenticate",
            "Proxy-Authorization",
            "te",
            "TE",
            "trailer",
            "Transfer-Encoding",
            "upgrade",
        ] {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in ["content-length", "tea", "trailers", "connections", "keep-alive2", "x-upgrade", ""] {
            assert!(!is_hop_by_hop(name), "{name}");
        }
    }

    #[test]
    fn a_partial_head_asks_for_more_and_keeps_the_buffer() {
        let (h, rest) = head(b"HTTP/1.1 200 OK\r\ncontent-le", &Method::GET);
        assert!(h.unwrap().is_none());
        assert_eq!(&rest[..], b"HTTP/1.1 200 OK\r\ncontent-le");
    }

    #[test]
    fn interim_responses_are_skipped() {
        let (h, rest) =
            head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx", &Method::POST);
        let h = h.unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert!(!h.headers.contains_key("link"));
        assert_eq!(&rest[..], b"x");
        let (h, _) = head(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n", &Method::GET);
        assert_eq!(h.unwrap_err(), Invalid::Head("unrequested protocol switch"));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |wire: &[u8], method: &Method| head(wire, method).0.map(|h| h.map(|h| (h.framing, h.keep_alive)));
        let ok = |f, k| Ok(Some((f, k)));
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", &Method::HEAD),
            ok(Framing::Length(0), true)
        );
        assert_eq!(framing(b"HTTP/1.1 204 No Content\r\n\r\n", &Method::GET), ok(Framing::Length(0), true));
        assert_eq!(
            framing(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n", &Method::GET),
            ok(Framing::Length(0), true)
        );
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\n\r\n", &Method::GET), ok(Framing::Close, false));
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n", &Method::GET),
            ok(Framing::chunked(), true)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", &Method::GET),
            ok(Framing::Close, false)
        );
        // Transfer-Encoding wins over Content-Length, and the connection is not reused.
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n", &Method::GET),
            ok(Framing::chunked(), false)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n", &Method::GET),
            ok(Framing::Length(3), true)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n", &Method::GET),
            Err(Invalid::Head("conflicting content-length"))
        );
        for bad in ["-1", "+3", "0x10", "", "99999999999999999999"] {
            let wire = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            assert_eq!(framing(wire.as_bytes(), &Method::GET), Err(Invalid::Head("invalid content-length")), "{bad}");
        }
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive, close\r\ncontent-length: 0\r\n\r\n", &Method::GET),
            ok(Framing::Length(0), false)
        );
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", &Method::GET),
            ok(Framing::Length(0), false)
        );
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n", &Method::GET),
            ok(Framing::Length(0), true)
        );
    }

    #[test]
    fn malformed_and_oversized_heads_are_refused() {
        assert_eq!(head(b"HTTP/1.1 abc OK\r\n\r\n", &Method::GET).0.unwrap_err(), Invalid::Head("malformed"));
        assert_eq!(head(b"garbage\r\n\r\n", &Method::GET).0.unwrap_err(), Invalid::Head("malformed"));
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "x: 1\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(head(many.as_bytes(), &Method::GET).0.unwrap_err(), Invalid::Head("too many headers"));
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(head(huge.as_bytes(), &Method::GET).0.unwrap_err(), Invalid::HeadTooLarge);
    }

    #[test]
    fn bodies_are_read_whatever_the_pieces() {
        let chunked = b"5;ext=1\r\nhello\r\n1 \r\n \r\n6\r\nworld!\r\n0\r\ntrailer: x\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, 1000] {
            let (data, rest) = body(Framing::chunked(), chunked, piece).unwrap();
            assert_eq!(data, b"hello world!", "pieces of {piece}");
            // What follows the body stays for the next response.
            assert!(b"NEXT".starts_with(&rest), "pieces of {piece}: {rest:?}");
            let (data, rest) = body(Framing::Length(5), b"abcdefg", piece).unwrap();
            assert_eq!((data.as_slice(), rest.len() <= 2), (&b"abcde"[..], true));
            let (data, _) = body(Framing::Close, b"to the end", piece).unwrap();
            assert_eq!(data, b"to the end");
        }
    }

    #[test]
    fn broken_bodies_are_errors() {
        let cases: [(&[u8], Invalid); 5] = [
            (b"x\r\n", Invalid::Chunk("missing chunk size")),
            (b"5 x\r\nhello\r\n0\r\n\r\n", Invalid::Chunk("invalid chunk size")),
            (b"1000000000000000\r\n", Invalid::Chunk("chunk size too large")),
            (b"2\r\nabX\r\n", Invalid::Chunk("chunk data not followed by CRLF")),
            (b"2\r\nab\r\n", Invalid::Chunk("the backend closed the connection mid-body")),
        ];
        for (wire, want) in cases {
            assert_eq!(body(Framing::chunked(), wire, 4).unwrap_err(), want, "{:?}", String::from_utf8_lossy(wire));
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert_eq!(body(Framing::chunked(), &long, 100).unwrap_err(), Invalid::Chunk("line too long"));
    }

    /// Lines a lenient reader would end at a bare CR or LF are refused, so that the
    /// gateway and anything in front of it never disagree on where a body ends.
    #[test]
    fn chunk_lines_and_trailers_that_smuggle_are_refused() {
        let cases: [(&[u8], Invalid); 4] = [
            (b"2;\nxx\r\n2f\r\n0\r\n\r\n", Invalid::Chunk("control character in a chunk extension")),
            (b"1\r;\x0c\x01\x7f\r\nx\r\n0\r\n\r\n", Invalid::Chunk("invalid chunk size")),
            (b"1\n\r\nx\r\n0\r\n\r\n", Invalid::Chunk("invalid chunk size")),
            (b"0\r\nx: y\n\nGET /next HTTP/1.1\r\n\r\n", Invalid::Chunk("control character in a trailer")),
        ];
        for (wire, want) in cases {
            assert_eq!(body(Framing::chunked(), wire, 3).unwrap_err(), want, "{:?}", String::from_utf8_lossy(wire));
        }
        // Extensions and trailers carry no data: together they are bounded per body.
        let mut padded = Vec::new();
        for _ in 0..8 {
            padded.extend_from_slice(format!("1;{}\r\nx\r\n", "e".repeat(3000)).as_bytes());
        }
        assert_eq!(
            body(Framing::chunked(), &padded, 4096).unwrap_err(),
            Invalid::Chunk("chunk extensions and trailers too large")
        );
        let (data, _) = body(Framing::chunked(), b"1\t ;a=b\r\nx\r\n0\r\nt: v\tw\r\n\r\n", 5).unwrap();
        assert_eq!(data, b"x", "whitespace before an extension and tabs in a trailer are fine");
        assert_eq!(
            body(Framing::Length(10), b"short", 100).unwrap_err(),
            Invalid::Chunk("the backend closed the connection mid-body")
        );
    }
}
