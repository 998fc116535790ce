//! The gateway's own HTTP/1.1 server on plain connections, spoken to byte by byte:
//! pipelining, request bodies sized and chunked, `100 Continue`, unread bodies, HTTP/1.0,
//! streamed responses, HEAD, header timeouts and shutdown.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Backend, Gateway, Reply, config, raw_backend};

/// A client connection that writes raw bytes and reads responses off the wire.
struct Wire {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// A response as it came over the wire; the body with its chunk framing removed.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

impl Wire {
    async fn to(gw: &Gateway) -> Self {
        Self { tcp: TcpStream::connect(gw.addr).await.unwrap(), buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// Reads more into the buffer; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(5), self.tcp.read(&mut chunk))
            .await
            .expect("the gateway answers within 5 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn until(&mut self, what: &[u8]) -> usize {
        loop {
            if let Some(at) = self.buf.windows(what.len()).position(|w| w == what) {
                return at;
            }
            assert!(self.fill().await, "the connection closed before {:?}", String::from_utf8_lossy(what));
        }
    }

    /// Reads one response, delimited as its head says. `head_request`: no body follows.
    async fn response(&mut self, head_request: bool) -> Answer {
        let end = self.until(b"\r\n\r\n").await;
        let head = String::from_utf8(self.buf.drain(..end + 4).collect()).unwrap();
        let status = head[9..12].parse().unwrap();
        let mut answer = Answer { status, head, body: Vec::new() };
        if head_request || status == 204 || status == 304 || status < 200 {
            return answer;
        }
        if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let line = self.until(b"\r\n").await;
                let size = usize::from_str_radix(std::str::from_utf8(&self.buf[..line]).unwrap(), 16).unwrap();
                self.buf.drain(..line + 2);
                while self.buf.len() < size + 2 {
                    assert!(self.fill().await, "the connection closed mid-chunk");
                }
                answer.body.extend(self.buf.drain(..size));
                assert_eq!(self.buf.drain(..2).collect::<Vec<_>>(), b"\r\n");
                if size == 0 {
                    return answer;
                }
            }
        }
        match answer.header("content-length").map(|l| l.parse::<usize>().unwrap()) {
            Some(len) => {
                while self.buf.len() < len {
                    assert!(self.fill().await, "the connection closed mid-body");
                }
                answer.body = self.buf.drain(..len).collect();
            }
            None => {
                while self.fill().await {}
                answer.body = std::mem::take(&mut self.buf);
            }
        }
        answer
    }

    /// Whether the gateway closes the connection (within 3 s) without sending more.
    async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(Duration::from_secs(3), self.tcp.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
    }
}

/// A gateway whose `POST /p` passes the request body to a backend that sends it back.
async fn echoing_post() -> (Backend, Gateway) {
    let b = Backend::start(|seen| Reply::raw(200, "application/json", seen.body.clone())).await;
    let gw = Gateway::start(config(json!([
        {"endpoint": "/p", "method": "POST", "output_encoding": "no-op",
         "backend": [{"host": [b.url], "url_pattern": "/"}]},
    ])))
    .await;
    (b, gw)
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let b = Backend::start(|seen| Reply::json(json!({"path": seen.uri}))).await;
    let gw = Gateway::start(config(json!([
        {"endpoint": "/a", "backend": [{"host": [b.url], "url_pattern": "/first"}]},
        {"endpoint": "/b", "backend": [{"host": [b.url], "url_pattern": "/second"}]},
    ])))
    .await;
    let mut wire = Wire::to(&gw).await;
    wire.send(
        b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\nGET /nope HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    let first = wire.response(false).await;
    assert_eq!((first.status, &first.body[..]), (200, &br#"{"path":"/first"}"#[..]));
    assert!(first.header("date").is_some(), "{}", first.head);
    assert_eq!(first.header("x-krakend-completed"), Some("true"));
    let second = wire.response(false).await;
    assert_eq!((second.status, &second.body[..]), (200, &br#"{"path":"/second"}"#[..]));
    assert_eq!(wire.response(false).await.status, 404);
    // Still open for more.
    wire.send(b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    let last = wire.response(false).await;
    assert_eq!((last.status, last.header("connection")), (200, Some("close")));
    assert!(wire.closed().await, "closed after the request that asked for it");
}

#[tokio::test]
async fn request_bodies_arrive_sized_chunked_or_after_100_continue() {
    let (b, gw) = echoing_post().await;
    let mut wire = Wire::to(&gw).await;
    // Sized, with the body split across writes.
    wire.send(b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 7\r\n\r\n{\"a\"").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    wire.send(b":1}").await;
    let sized = wire.response(false).await;
    assert_eq!((sized.status, &sized.body[..]), (200, &br#"{"a":1}"#[..]));
    // Chunked, with an extension and a trailer.
    wire.send(b"POST /p HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\n{\"b\r\n").await;
    wire.send(b"4\r\n\":2}\r\n0\r\nx-trailer: 1\r\n\r\n").await;
    let chunked = wire.response(false).await;
    assert_eq!((chunked.status, &chunked.body[..]), (200, &br#"{"b":2}"#[..]));
    assert_eq!(b.last().headers.get("content-length").map(|v| v.to_str().unwrap()), Some("7"));
    // Expect: 100-continue: the body is sent only once the gateway asks for it.
    wire.send(b"POST /p HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 7\r\n\r\n").await;
    let interim = wire.response(false).await;
    assert_eq!(interim.status, 100);
    wire.send(br#"{"c":3}"#).await;
    let continued = wire.response(false).await;
    assert_eq!((continued.status, &continued.body[..]), (200, &br#"{"c":3}"#[..]));
    assert_eq!(b.connections(), 1, "one backend connection carried all three");
}

#[tokio::test]
async fn unread_bodies_are_drained_small_and_cut_large() {
    let b = Backend::json(json!({"ok": true})).await;
    let gw = Gateway::start(config(json!([
        {"endpoint": "/g", "backend": [{"host": [b.url], "url_pattern": "/"}]},
    ])))
    .await;
    let mut wire = Wire::to(&gw).await;
    // A 404 for a POST whose body is still on its way: the body is read and dropped,
    // and the next request on the connection is answered.
    wire.send(b"POST /nowhere HTTP/1.1\r\nhost: x\r\ncontent-length: 2000\r\n\r\n").await;
    wire.send(&[b'x'; 1000]).await;
    assert_eq!(wire.response(false).await.status, 404);
    wire.send(&[b'x'; 1000]).await;
    wire.send(b"GET /g HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let next = wire.response(false).await;
    assert_eq!((next.status, &next.body[..]), (200, &br#"{"ok":true}"#[..]));

    // Too large to read for nothing: answered, then the connection closes.
    wire.send(b"POST /nowhere HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n").await;
    let cut = wire.response(false).await;
    assert_eq!((cut.status, cut.header("connection")), (404, Some("close")));
    assert!(wire.closed().await);

    // A client waiting for 100 Continue that is refused never sends its body.
    let mut wire = Wire::to(&gw).await;
    wire.send(b"POST /nowhere HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n").await;
    let refused = wire.response(false).await;
    assert_eq!((refused.status, refused.header("connection")), (404, Some("close")));
    assert!(wire.closed().await);
    assert_eq!(b.hits(), 1);
}

#[tokio::test]
async fn http_1_0_clients_close_unless_they_ask_to_keep_alive() {
    let b = Backend::json(json!({"v": 1})).await;
    let gw =
        Gateway::start(config(json!([{"endpoint": "/g", "backend": [{"host": [b.url], "url_pattern": "/"}]}]))).await;
    let mut wire = Wire::to(&gw).await;
    wire.send(b"GET /g HTTP/1.0\r\n\r\n").await;
    let once = wire.response(false).await;
    assert_eq!((once.status, once.header("connection")), (200, Some("close")));
    assert!(wire.closed().await);

    let mut wire = Wire::to(&gw).await;
    for _ in 0..2 {
        wire.send(b"GET /g HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").await;
        let kept = wire.response(false).await;
        assert_eq!((kept.status, kept.header("connection")), (200, Some("keep-alive")));
        assert_eq!(kept.body, br#"{"v":1}"#);
    }
}

#[tokio::test]
async fn streamed_bodies_of_unknown_length_are_chunked_or_close_delimited() {
    let chunked_backend = raw_backend(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let gw = Gateway::start(config(json!([
        {"endpoint": "/s", "output_encoding": "no-op", "backend": [{"host": [chunked_backend], "url_pattern": "/"}]},
    ])))
    .await;
    let mut wire = Wire::to(&gw).await;
    wire.send(b"GET /s HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let chunked = wire.response(false).await;
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"), "{}", chunked.head);
    assert_eq!((chunked.status, &chunked.body[..]), (200, &b"hello world"[..]));
    wire.send(b"GET /s HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(wire.response(false).await.body, b"hello world", "the connection carried on after the last chunk");

    let mut wire = Wire::to(&gw).await;
    wire.send(b"GET /s HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").await;
    let old = wire.response(false).await;
    assert_eq!((old.header("transfer-encoding"), old.header("content-length")), (None, None), "{}", old.head);
    assert_eq!(old.header("connection"), Some("close"), "an HTTP/1.0 body of unknown length ends with the connection");
    assert_eq!(old.body, b"hello world");
}

#[tokio::test]
async fn head_responses_carry_headers_only() {
    let b = Backend::start(|_| Reply::raw(200, "text/plain", "twelve bytes")).await;
    let gw = Gateway::start(config(json!([
        {"endpoint": "/h", "method": "HEAD", "output_encoding": "no-op",
         "backend": [{"host": [b.url], "url_pattern": "/"}]},
        {"endpoint": "/g", "output_encoding": "no-op", "backend": [{"host": [b.url], "url_pattern": "/"}]},
    ])))
    .await;
    let mut wire = Wire::to(&gw).await;
    wire.send(b"HEAD /h HTTP/1.1\r\nhost: x\r\n\r\nGET /g HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let head = wire.response(true).await;
    assert_eq!(head.status, 200, "{}", head.head);
    assert_eq!(head.header("content-length"), Some("12"), "the length of the body a GET would get: {}", head.head);
    // The next response starts right after the head: no body bytes came between.
    assert_eq!(wire.response(false).await.body, b"twelve bytes");
    assert_eq!(b.seen()[0].method, http::Method::HEAD);
}

/// A HEAD answer gets a length only when one is known: never a made-up zero for a
/// backend's HEAD answer that gave none (its GET would be chunked), nor on a 204.
#[tokio::test]
async fn head_responses_get_no_made_up_length() {
    let no_length =
        raw_backend(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n").await;
    let empty = raw_backend(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let gw = Gateway::start(config(json!([
        {"endpoint": "/unsized", "method": "HEAD", "output_encoding": "no-op", "backend": [{"host": [no_length], "url_pattern": "/"}]},
        {"endpoint": "/empty", "method": "HEAD", "output_encoding": "no-op", "backend": [{"host": [empty], "url_pattern": "/"}]},
    ])))
    .await;
    for (path, status) in [("/unsized", 200), ("/empty", 204)] {
        let mut wire = Wire::to(&gw).await;
        wire.send(format!("HEAD {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await;
        let head = wire.response(true).await;
        assert_eq!(head.status, status, "{}", head.head);
        assert_eq!(head.header("content-length"), None, "{path}: {}", head.head);
        assert_eq!(head.header("transfer-encoding"), None, "{path}: {}", head.head);
    }
}

/// A `no-op` answer's header lines go out as the backend wrote them, in order, each once,
/// with the gateway's own after them; the framing is the gateway's alone, and `Date` is
/// not doubled. A policy that sets a field the backend sent replaces it.
#[tokio::test]
async fn passed_on_header_lines_keep_their_case_and_are_never_doubled() {
    let plain = raw_backend(
        b"HTTP/1.1 200 OK\r\nX-Mixed-Case: Value\r\nDate: Mon, 30 Nov 2026 00:00:00 GMT\r\nContent-Length: 2\r\n\
          Set-Cookie: a=1\r\nConnection: keep-alive\r\nSet-Cookie: b=2\r\nX-Frame-Options: SAMEORIGIN\r\n\r\n{}",
    )
    .await;
    let both = raw_backend(
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    let endpoints = json!([
        {"endpoint": "/plain", "output_encoding": "no-op", "backend": [{"host": [plain], "url_pattern": "/"}]},
        {"endpoint": "/both", "output_encoding": "no-op", "backend": [{"host": [both], "url_pattern": "/"}]},
    ]);
    let gw = Gateway::start(config(endpoints.clone())).await;
    let lines = |answer: &Answer| -> Vec<String> {
        answer.head.lines().skip(1).filter(|l| !l.is_empty()).map(str::to_owned).collect()
    };
    let count = |lines: &[String], name: &str| {
        lines.iter().filter(|l| l.split(':').next().is_some_and(|n| n.eq_ignore_ascii_case(name))).count()
    };
    let mut wire = Wire::to(&gw).await;
    wire.send(b"GET /plain HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let plain = wire.response(false).await;
    let got = lines(&plain);
    assert_eq!(
        got[..6],
        [
            "X-Mixed-Case: Value",
            "Date: Mon, 30 Nov 2026 00:00:00 GMT",
            "Set-Cookie: a=1",
            "Set-Cookie: b=2",
            "X-Frame-Options: SAMEORIGIN",
            "x-krakend-completed: false",
        ],
        "{}",
        plain.head
    );
    for (name, once) in [("date", 1), ("content-length", 1), ("connection", 0), ("x-weir", 1)] {
        assert_eq!(count(&got, name), once, "{name}: {}", plain.head);
    }
    assert_eq!(plain.body, b"{}");

    let mut wire = Wire::to(&gw).await;
    wire.send(b"GET /both HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let both = wire.response(false).await;
    let got = lines(&both);
    assert_eq!((count(&got, "content-length"), count(&got, "transfer-encoding")), (0, 1), "{}", both.head);
    assert_eq!((count(&got, "x-a"), count(&got, "date")), (1, 1), "{}", both.head);
    assert_eq!(both.body, b"{}");

    // A policy that sets the backend's field replaces it.
    let mut secured = config(endpoints);
    secured["extra_config"] = json!({"security/http": {"frame_deny": true}});
    let gw = Gateway::start(secured).await;
    let mut wire = Wire::to(&gw).await;
    wire.send(b"GET /plain HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let secured = wire.response(false).await;
    let got = lines(&secured);
    assert_eq!(count(&got, "x-frame-options"), 1, "{}", secured.head);
    assert_eq!(secured.header("x-frame-options"), Some("DENY"), "{}", secured.head);
    assert_eq!((count(&got, "set-cookie"), count(&got, "x-mixed-case")), (2, 1), "{}", secured.head);
}

#[tokio::test]
async fn slow_heads_are_cut_and_shutdown_closes_idle_connections() {
    let b = Backend::json(json!({})).await;
    let mut c = config(json!([{"endpoint": "/g", "backend": [{"host": [b.url], "url_pattern": "/"}]}]));
    c["read_header_timeout"] = json!("1s");
    let gw = Gateway::start(c).await;

    let mut slow = Wire::to(&gw).await;
    slow.send(b"GET /g HTTP/1.1\r\nhost: x\r\nx-slow: ").await;
    let started = std::time::Instant::now();
    let cut = slow.response(false).await;
    assert_eq!(cut.status, 408);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "cut after {took:?}");
    assert!(slow.closed().await);

    let mut idle = Wire::to(&gw).await;
    idle.send(b"GET /g HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(idle.response(false).await.status, 200);
    // A request whose head is on its way when shutdown starts is still answered.
    let mut mid_request = Wire::to(&gw).await;
    mid_request.send(b"GET /g HTTP/1.1\r\nhost: x\r\n").await;
    let stopping = tokio::spawn(gw.shutdown());
    assert!(idle.closed().await, "an idle keep-alive connection is closed at shutdown");
    mid_request.send(b"\r\n").await;
    let answered = mid_request.response(false).await;
    assert_eq!((answered.status, answered.header("connection")), (200, Some("close")));
    tokio::time::timeout(Duration::from_secs(2), stopping).await.expect("shutdown ends with the last request").unwrap();
}

#[tokio::test]
async fn chunked_bodies_that_could_smuggle_a_request_are_refused_and_the_connection_closed() {
    let (b, gw) = echoing_post().await;
    for wire_bytes in [
        &b"POST /p HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2;\nxx\r\n2f\r\n0\r\n\r\nGET /p HTTP/1.1\r\nhost: x\r\n\r\n\r\n0\r\n\r\n"[..],
        b"POST /p HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx: y\n\nGET /p HTTP/1.1\r\nhost: x\r\n\r\n",
        b"POST /p HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let mut wire = Wire::to(&gw).await;
        wire.send(wire_bytes).await;
        let refused = wire.response(false).await;
        assert_eq!((refused.status, refused.header("connection")), (400, Some("close")), "{}", refused.head);
        assert!(wire.closed().await, "nothing after the refused body is read as a request");
    }
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_backend_call() {
    // A backend that reads the request, never answers, and reports when the gateway
    // drops the connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = format!("http://{}", listener.local_addr().unwrap());
    let (dropped_tx, dropped) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let started = std::time::Instant::now();
        let _ = s.read(&mut buf).await;
        let _ = dropped_tx.send(started.elapsed());
    });
    let gw = Gateway::start(config(json!([
        {"endpoint": "/hang", "timeout": "10s", "backend": [{"host": [backend], "url_pattern": "/"}]},
    ])))
    .await;
    let mut wire = Wire::to(&gw).await;
    wire.send(b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(wire);
    let after =
        tokio::time::timeout(Duration::from_secs(3), dropped).await.expect("the backend call was dropped").unwrap();
    assert!(after < Duration::from_secs(2), "dropped after {after:?}");
}

#[tokio::test]
async fn head_requests_learn_the_length_a_get_would_get() {
    let b = Backend::json(json!({"a": 1})).await;
    let gw =
        Gateway::start(config(json!([{"endpoint": "/g", "backend": [{"host": [b.url], "url_pattern": "/"}]}]))).await;
    let mut wire = Wire::to(&gw).await;
    wire.send(b"GET /nope HTTP/1.1\r\nhost: x\r\n\r\nHEAD /nope HTTP/1.1\r\nhost: x\r\n\r\nGET /g HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let get = wire.response(false).await;
    let head = wire.response(true).await;
    assert_eq!(head.status, 404, "{}", head.head);
    assert_eq!(head.header("content-length"), Some(get.body.len().to_string().as_str()), "{}", head.head);
    // No body came between: the next answer starts right after the head.
    assert_eq!(wire.response(false).await.body, br#"{"a":1}"#);
}

#[tokio::test]
async fn unread_chunked_bodies_close_the_connection_after_the_answer() {
    let b = Backend::json(json!({})).await;
    let gw =
        Gateway::start(config(json!([{"endpoint": "/g", "backend": [{"host": [b.url], "url_pattern": "/"}]}]))).await;
    let mut wire = Wire::to(&gw).await;
    wire.send(b"POST /nowhere HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n").await;
    let answer = wire.response(false).await;
    assert_eq!((answer.status, answer.header("connection")), (404, Some("close")));
    wire.send(b"0\r\n\r\n").await;
    assert!(wire.closed().await);
}
