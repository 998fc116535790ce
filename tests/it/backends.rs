//! What backends receive: URL, query, headers, method, body; and how the client
//! behaves toward them (round robin, redirects, concurrent calls, timeouts).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use tokio::net::TcpStream;

use crate::support::{Backend, Gateway, Reply, config, raw_backend};

#[tokio::test]
async fn url_pattern_params_and_pattern_query_come_before_client_query() {
    let b = Backend::json(json!({})).await;
    let gw = Gateway::start(config(json!([{
        "endpoint": "/users/{id}/posts/{post}",
        "input_query_strings": ["page", "sort"],
        "backend": [{"host": [b.url], "url_pattern": "/v1/u/{id}?include={post}&fixed=1"}]
    }])))
    .await;
    assert_eq!(gw.get("/users/42/posts/7?sort=asc&secret=x&page=2").await.status, 200);
    assert_eq!(b.last().uri, "/v1/u/42?include=7&fixed=1&page=2&sort=asc");
}

#[tokio::test]
async fn query_strings_are_dropped_by_default_and_all_pass_with_star() {
    let b = Backend::json(json!({})).await;
    let gw = Gateway::start(config(json!([
        {"endpoint": "/none", "backend": [{"host": [b.url], "url_pattern": "/n"}]},
        {"endpoint": "/all", "input_query_strings": ["*"], "backend": [{"host": [b.url], "url_pattern": "/a"}]}
    ])))
    .await;
    gw.get("/none?a=1").await;
    assert_eq!(b.last().uri, "/n");
    gw.get("/all?b=2&a=1").await;
    assert_eq!(b.last().uri, "/a?a=1&b=2");
}

#[tokio::test]
async fn headers_only_content_type_by_default_plus_forwarding_headers() {
    let b = Backend::json(json!({})).await;
    let gw = Gateway::start(config(json!([
        {"endpoint": "/d", "method": "POST", "backend": [{"host": [b.url], "url_pattern": "/d"}]},
        {"endpoint": "/h", "input_headers": ["x-tenant", "User-Agent"], "backend": [{"host": [b.url], "url_pattern": "/h"}]},
        {"endpoint": "/s", "input_headers": ["*"], "backend": [{"host": [b.url], "url_pattern": "/s", "input_headers": ["Authorization"]}]}
    ])))
    .await;
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", "Bearer t"),
        ("X-Tenant", "acme"),
        ("User-Agent", "curl/8"),
    ];
    gw.send(Method::POST, "/d", &headers, r#"{"a":1}"#).await;
    let seen = b.last();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.body, r#"{"a":1}"#);
    assert_eq!(seen.headers["content-type"], "application/json");
    assert!(seen.headers.get("authorization").is_none());
    assert!(seen.headers.get("x-tenant").is_none());
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-host"], gw.addr.to_string());
    assert!(seen.headers["user-agent"].to_str().unwrap().starts_with("Weir Version "));
    assert!(seen.headers.get("x-forwarded-via").is_none());

    gw.send(Method::GET, "/h", &headers, "").await;
    let seen = b.last();
    assert_eq!(seen.headers["x-tenant"], "acme");
    assert_eq!(seen.headers["user-agent"], "curl/8", "an allowed User-Agent is kept");
    assert!(seen.headers["x-forwarded-via"].to_str().unwrap().starts_with("Weir Version "));
    assert!(seen.headers.get("content-type").is_none());

    gw.send(Method::GET, "/s", &headers, "").await;
    let seen = b.last();
    assert_eq!(seen.headers["authorization"], "Bearer t", "backend list narrows the endpoint's *");
    assert!(seen.headers.get("x-tenant").is_none());
}

#[tokio::test]
async fn backend_method_and_round_robin_over_hosts() {
    let a = Backend::json(json!({"from": "a"})).await;
    let b = Backend::json(json!({"from": "b"})).await;
    let gw = Gateway::start(config(json!([{
        "endpoint": "/rr", "backend": [{"host": [a.url, b.url], "url_pattern": "/x", "method": "POST"}]
    }])))
    .await;
    for _ in 0..4 {
        assert_eq!(gw.get("/rr").await.status, 200);
    }
    assert_eq!((a.hits(), b.hits()), (2, 2));
    assert_eq!(a.last().method, Method::POST);
}

#[tokio::test]
async fn root_host_is_the_default_for_backends() {
    let b = Backend::json(json!({"v": 1})).await;
    let mut c = config(json!([{"endpoint": "/x", "backend": [{"url_pattern": "/x"}]}]));
    c["host"] = json!([b.url]);
    let gw = Gateway::start(c).await;
    assert_eq!(gw.get("/x").await.json(), json!({"v": 1}));
}

#[tokio::test]
async fn redirects_are_followed_unless_disabled() {
    let target =
        Backend::start(|s| Reply::json(json!({"method": s.method.as_str(), "body": String::from_utf8_lossy(&s.body)})))
            .await;
    let t = target.url.clone();
    let redirector = Backend::start(move |s| {
        let code = if s.uri.starts_with("/temp") { 307 } else { 301 };
        Reply::status(code).header("location", format!("{t}/final"))
    })
    .await;
    let gw = Gateway::start(config(json!([
        {"endpoint": "/moved", "backend": [{"host": [redirector.url], "url_pattern": "/moved"}]},
        {"endpoint": "/temp", "method": "POST", "backend": [{"host": [redirector.url], "url_pattern": "/temp"}]},
        {"endpoint": "/stay", "backend": [{"host": [redirector.url], "url_pattern": "/moved",
            "extra_config": {"backend/http/client": {"no_redirect": true}}}]}
    ])))
    .await;
    assert_eq!(gw.get("/moved").await.json(), json!({"method": "GET", "body": ""}));
    assert_eq!(
        gw.send(Method::POST, "/temp", &[], "keep me").await.json(),
        json!({"method": "POST", "body": "keep me"})
    );
    assert_eq!(gw.get("/stay").await.status, 500, "a 301 is not a success when not followed");
}

#[tokio::test]
async fn concurrent_calls_use_the_first_success() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let b = Backend::start(move |_| {
        // The first call of each request fails fast; the others succeed a bit later.
        if n2.fetch_add(1, Ordering::SeqCst).is_multiple_of(3) {
            Reply::status(503)
        } else {
            Reply::json(json!({"ok": 1})).after(Duration::from_millis(20))
        }
    })
    .await;
    let gw = Gateway::start(config(json!([{
        "endpoint": "/c", "concurrent_calls": 3, "backend": [{"host": [b.url], "url_pattern": "/"}]
    }])))
    .await;
    let r = gw.get("/c").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"ok": 1}));
    assert_eq!(b.hits(), 3);
}

#[tokio::test]
async fn slow_refused_and_garbage_backends_give_500_within_the_timeout() {
    let slow = Backend::start(|_| Reply::json(json!({})).after(Duration::from_secs(5))).await;
    let garbage = raw_backend(b"this is not HTTP\r\n\r\n").await;
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let gw = Gateway::start(config(json!([
        {"endpoint": "/slow", "timeout": "300ms", "backend": [{"host": [slow.url], "url_pattern": "/"}]},
        {"endpoint": "/garbage", "backend": [{"host": [garbage], "url_pattern": "/"}]},
        {"endpoint": "/refused", "backend": [{"host": [refused], "url_pattern": "/"}]}
    ])))
    .await;
    let started = Instant::now();
    let r = gw.get("/slow").await;
    assert_eq!(r.status, 500);
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(r.header("x-krakend-completed"), Some("false"));
    assert_eq!(gw.get("/garbage").await.status, 500);
    assert_eq!(gw.get("/refused").await.status, 500);
    assert_eq!(gw.get("/slow").await.body.len(), 0, "no error text unless return_error_msg");
}

#[tokio::test]
async fn oversized_backend_response_fails_the_backend() {
    let big =
        Backend::start(|_| Reply::raw(200, "application/json", format!("{{\"a\":\"{}\"}}", "x".repeat(4096)))).await;
    let mut c = config(json!([{"endpoint": "/big", "backend": [{"host": [big.url], "url_pattern": "/"}]}]));
    c["extra_config"] = json!({"weir/limits": {"max_backend_response_bytes": 1024}});
    let gw = Gateway::start(c).await;
    assert_eq!(gw.get("/big").await.status, 500);
}

#[tokio::test]
async fn backend_connections_are_kept_alive_unless_the_backend_closes_them() {
    let keep = Backend::json(json!({"k": 1})).await;
    let close = Backend::start(|_| Reply::json(json!({"c": 1})).header("connection", "close")).await;
    let gw = Gateway::start(config(json!([
        {"endpoint": "/keep", "backend": [{"host": [keep.url], "url_pattern": "/"}]},
        {"endpoint": "/close", "backend": [{"host": [close.url], "url_pattern": "/"}]},
        {"endpoint": "/raw", "output_encoding": "no-op", "backend": [{"host": [keep.url], "url_pattern": "/"}]}
    ])))
    .await;
    for _ in 0..20 {
        assert_eq!(gw.get("/keep").await.status, 200);
        assert_eq!(gw.get("/close").await.status, 200);
    }
    assert_eq!(keep.connections(), 1, "one connection serves every sequential call");
    assert_eq!(close.connections(), 20, "Connection: close is honoured");
    for _ in 0..5 {
        assert_eq!(gw.get("/raw").await.status, 200);
    }
    assert_eq!(keep.hits(), 25);
    assert!(keep.connections() <= 2, "streamed (no-op) calls reuse connections too: {}", keep.connections());
}

/// A raw TCP backend on loopback: every connection it accepts is counted and handed to
/// `serve`, on a task of its own. Returns its URL and the count.
async fn raw_server<F, Fut>(serve: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(s));
        }
    });
    (url, accepted)
}

/// Reads until `pending` holds a whole request head: where the head ends (after its blank
/// line), or `None` when the connection ends first.
async fn read_head(s: &mut TcpStream, pending: &mut Vec<u8>) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end + 4);
        }
        let mut buf = [0u8; 4096];
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// The `content-length` of a request head (0 without one).
fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .to_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length: ").map(|n| n.trim().parse().unwrap()))
        .unwrap_or(0)
}

/// A backend that answers one request per connection with keep-alive, then closes the
/// connection after a moment of idleness, as servers with short keep-alive timeouts do.
async fn short_keep_alive_backend() -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw_server(|mut s| async move {
        let mut buf = [0u8; 4096];
        if s.read(&mut buf).await.unwrap_or(0) == 0 {
            return;
        }
        let body = r#"{"ok":true}"#;
        let head =
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
        let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = s.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn connections_the_backend_closed_while_idle_are_not_reused() {
    let (url, accepted) = short_keep_alive_backend().await;
    let gw = Gateway::start(config(json!([
        {"endpoint": "/get", "backend": [{"host": [url], "url_pattern": "/"}]},
        {"endpoint": "/post", "method": "POST", "backend": [{"host": [url], "url_pattern": "/"}]}
    ])))
    .await;
    for path in ["/get", "/get", "/get"] {
        assert_eq!(gw.get(path).await.status, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(gw.send(Method::POST, "/post", &[], "x").await.status, 200, "a POST is not lost to a stale connection");
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

/// A reused connection that breaks while a request body is being written is tried again
/// on a fresh one only for idempotent methods: the backend may have seen part of a `POST`.
#[tokio::test]
async fn a_body_cut_off_on_a_reused_connection_is_resent_only_when_idempotent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Every connection answers its first request (small) and keeps the connection; on
    // the second, it reads the head and resets the connection (SO_LINGER 0) while the
    // large body is still being written.
    let (url, accepted) = raw_server(|mut s| async move {
        for request in 0.. {
            let mut seen = Vec::new();
            let Some(end) = read_head(&mut s, &mut seen).await else { return };
            let length = content_length(&seen[..end]);
            if length > 1 << 20 && request > 0 {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                return;
            }
            let mut left = (end + length).saturating_sub(seen.len());
            while left > 0 {
                let mut buf = vec![0u8; 64 * 1024];
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
            let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
            if s.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    let big = "x".repeat(8 << 20);
    for (method, idempotent) in [(Method::POST, false), (Method::PUT, true)] {
        let path = format!("/{}", method.as_str().to_lowercase());
        let mut c = config(json!([{"endpoint": path, "method": method.as_str(),
            "backend": [{"host": [url], "url_pattern": "/", "method": method.as_str()}]}]));
        c["max_idle_connections_per_host"] = json!(1);
        let gw = Gateway::start(c).await;
        let before = accepted.load(Ordering::SeqCst);
        assert_eq!(gw.send(method.clone(), &path, &[], "small").await.status, 200, "{method}");
        let status = gw.send(method.clone(), &path, &[], big.clone()).await.status;
        let connections = accepted.load(Ordering::SeqCst) - before;
        if idempotent {
            assert_eq!((status, connections), (200, 2), "{method}: sent again on a fresh connection");
        } else {
            assert_eq!((status, connections), (500, 1), "{method}: not sent again");
        }
    }
}

/// A backend that answers before it has read the whole request (413 to a body it will
/// not take, without reading it) gets its answer passed on, instead of the gateway
/// waiting to finish writing until the endpoint times out.
#[tokio::test]
async fn an_answer_that_comes_before_the_whole_request_is_passed_on() {
    use tokio::io::AsyncWriteExt;
    let (url, _) = raw_server(|mut s| async move {
        if read_head(&mut s, &mut Vec::new()).await.is_none() {
            return;
        }
        let body = br#"{"error":"too large"}"#;
        let head = format!(
            "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(body).await;
        // Reads nothing more, and keeps the connection open for longer than the
        // endpoint's timeout.
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let mut c = config(json!([
        {"endpoint": "/upload", "method": "POST", "output_encoding": "no-op",
         "backend": [{"host": [url], "url_pattern": "/", "method": "POST", "encoding": "no-op"}]},
        {"endpoint": "/upload-json", "method": "POST",
         "backend": [{"host": [url], "url_pattern": "/", "method": "POST",
             "extra_config": {"backend/http": {"return_error_code": true}}}]}
    ]));
    c["timeout"] = json!("2s");
    let gw = Gateway::start(c).await;
    let big = "x".repeat(8 << 20);
    for path in ["/upload", "/upload-json"] {
        let started = Instant::now();
        let r = gw.send(Method::POST, path, &[], big.clone()).await;
        assert_eq!(r.status, 413, "{path}: {}", r.text());
        assert!(started.elapsed() < Duration::from_millis(1500), "{path}: took {:?}", started.elapsed());
    }
}

/// A backend speaking raw HTTP/1.1 on keep-alive connections: for each request it writes
/// the bytes scripted for its path, in two pieces a moment apart (so that heads and
/// bodies arrive split), and closes the connection after a close-delimited answer.
/// Returns its URL, the connections it accepted and the requests it read.
async fn scripted_backend() -> (String, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = requests.clone();
    let (url, accepted) = raw_server(move |mut s| {
        let seen = seen.clone();
        async move {
            let mut pending = Vec::new();
            while let Some(end) = read_head(&mut s, &mut pending).await {
                let length = content_length(&pending[..end]);
                while pending.len() < end + length {
                    let mut buf = [0u8; 4096];
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                pending.drain(..end + length);
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                seen.lock().unwrap().push(head);
                let answer: &[u8] = match path.as_str() {
                    "/chunked" => b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\n{\"a\":\r\n2\r\n1}\r\n0\r\nx-trailer: t\r\n\r\n",
                    "/interim" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"b\":2}",
                    "/http10" => b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{\"c\":3}",
                    _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
                };
                let (first, rest) = answer.split_at(answer.len() / 2);
                if s.write_all(first).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                if s.write_all(rest).await.is_err() {
                    return;
                }
                if path == "/http10" {
                    let _ = s.shutdown().await;
                    return;
                }
            }
        }
    })
    .await;
    (url, accepted, requests)
}

#[tokio::test]
async fn backend_responses_are_framed_as_http_1_1_says() {
    let (url, accepted, requests) = scripted_backend().await;
    let gw = Gateway::start(config(json!([
        {"endpoint": "/json/{what}", "backend": [{"host": [url], "url_pattern": "/{what}"}]},
        {"endpoint": "/raw/{what}", "output_encoding": "no-op", "backend": [{"host": [url], "url_pattern": "/{what}", "encoding": "no-op"}]},
        {"endpoint": "/post", "method": "POST", "backend": [{"host": [url], "url_pattern": "/interim", "method": "POST"}]}
    ])))
    .await;
    // Chunked (with an extension and a trailer), and an interim 100 before the answer,
    // read whole and streamed, all over one kept-alive connection.
    for _ in 0..2 {
        assert_eq!(gw.get("/json/chunked").await.json(), json!({"a": 1}));
        let raw = gw.get("/raw/chunked").await;
        assert_eq!((raw.status, raw.text().as_str()), (200, r#"{"a":1}"#));
        assert_eq!(gw.get("/json/interim").await.json(), json!({"b": 2}));
        let raw = gw.get("/raw/interim").await;
        assert_eq!((raw.status, raw.text().as_str(), raw.header("content-length")), (200, r#"{"b":2}"#, Some("7")));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "every answer left the connection reusable");
    // A request body goes with its length.
    assert_eq!(gw.send(Method::POST, "/post", &[], "hello").await.json(), json!({"b": 2}));
    let post = requests.lock().unwrap().last().cloned().unwrap();
    assert!(post.starts_with("POST /interim HTTP/1.1\r\n") && post.contains("content-length: 5\r\n"), "{post}");
    // HTTP/1.0 without a length: the body runs to the end of the connection, which is
    // not reused.
    assert_eq!(gw.get("/json/http10").await.json(), json!({"c": 3}));
    assert_eq!(gw.get("/raw/http10").await.text(), r#"{"c":3}"#);
    assert_eq!(gw.get("/json/chunked").await.json(), json!({"a": 1}));
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "each close-delimited answer used up its connection");
}
