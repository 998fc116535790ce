//! The listener: TLS with HTTP/2 by ALPN, h2c, limits and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Backend, Gateway, Reply, config};

#[tokio::test]
async fn tls_serves_http2_by_alpn_and_http1() {
    let b = Backend::json(json!({"secure": true})).await;
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, key.cert.pem()).unwrap();
    std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
    let mut c = config(json!([{"endpoint": "/s", "backend": [{"host": [b.url], "url_pattern": "/"}]}]));
    c["tls"] = json!({"public_key": cert_path, "private_key": key_path});
    let gw = Gateway::start(c).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(key.cert.der().to_vec())).unwrap();
    for (alpn, want_h2) in [(vec![b"h2".to_vec(), b"http/1.1".to_vec()], true), (vec![b"http/1.1".to_vec()], false)] {
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        tls.alpn_protocols = alpn;
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol() == Some(b"h2"), want_h2);
        let req = Request::get("https://localhost/s").body(Empty::<Bytes>::new()).unwrap();
        let resp = if want_h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        };
        assert_eq!(resp.version(), if want_h2 { http::Version::HTTP_2 } else { http::Version::HTTP_11 });
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"secure":true}"#);
    }
}

#[tokio::test]
async fn h2c_only_when_enabled() {
    let b = Backend::json(json!({"v": 2})).await;
    let mut c = config(json!([{"endpoint": "/h", "backend": [{"host": [b.url], "url_pattern": "/"}]}]));
    let h2c = |addr| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.ok()?;
        tokio::spawn(conn);
        let req = Request::get("http://localhost/h").body(Empty::<Bytes>::new()).unwrap();
        let resp = sender.send_request(req).await.ok()?;
        Some(resp.into_body().collect().await.ok()?.to_bytes())
    };
    let gw = Gateway::start(c.clone()).await;
    assert!(h2c(gw.addr).await.is_none(), "prior-knowledge h2 is refused without use_h2c");
    c["use_h2c"] = json!(true);
    let gw = Gateway::start(c).await;
    assert_eq!(&h2c(gw.addr).await.unwrap()[..], br#"{"v":2}"#);
}

#[tokio::test]
async fn oversized_bodies_and_headers_are_refused() {
    let b = Backend::json(json!({})).await;
    let mut c =
        config(json!([{"endpoint": "/p", "method": "POST", "backend": [{"host": [b.url], "url_pattern": "/"}]}]));
    c["max_header_bytes"] = json!(16384);
    c["extra_config"] = json!({"weir/limits": {"max_body_bytes": 1000}});
    let gw = Gateway::start(c).await;
    assert_eq!(gw.send(Method::POST, "/p", &[], vec![b'x'; 1000]).await.status, 200);
    assert_eq!(gw.send(Method::POST, "/p", &[], vec![b'x'; 1001]).await.status, 413);
    assert_eq!(b.hits(), 1, "a refused body never reaches the backend");

    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let huge = format!("GET /p HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(40_000));
    tcp.write_all(huge.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    let head = String::from_utf8_lossy(&out);
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let b = Backend::json(json!({})).await;
    let gw =
        Gateway::start(config(json!([{"endpoint": "/p", "backend": [{"host": [b.url], "url_pattern": "/"}]}]))).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"NOT A REQUEST\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"));
    assert_eq!(gw.get("/p").await.status, 200, "the gateway keeps serving");
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight() {
    let slow = Backend::start(|_| Reply::json(json!({"done": true})).after(Duration::from_millis(1500))).await;
    let gw =
        Gateway::start(config(json!([{"endpoint": "/slow", "backend": [{"host": [slow.url], "url_pattern": "/"}]}])))
            .await;
    let url = format!("{}/slow", gw.url);
    let addr = gw.addr;
    let in_flight = tokio::spawn(async move { crate::support::send(Method::GET, &url, &[], Bytes::new()).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    gw.shutdown().await;
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"done": true}));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

#[tokio::test]
async fn idle_keep_alive_connections_and_slow_bodies_are_cut() {
    let b = Backend::json(json!({})).await;
    let mut c =
        config(json!([{"endpoint": "/p", "method": "POST", "backend": [{"host": [b.url], "url_pattern": "/"}]}]));
    c["idle_timeout"] = json!("300ms");
    c["read_timeout"] = json!("300ms");
    let gw = Gateway::start(c).await;

    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf)).await;
    assert!(matches!(idle, Ok(Ok(0))), "an idle keep-alive connection is closed: {idle:?}");

    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n{").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&buf[..n]));
}

/// How a test reaches the gateway: plain HTTP/1.1 (the gateway's own server), HTTP/1.1
/// on a listener that also takes h2c, or HTTP/1.1 over TLS (both served by hyper).
#[derive(Clone, Copy, Debug)]
enum Listener {
    Plain,
    H2c,
    Tls,
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A gateway serving `size` bytes at /big through a no-op endpoint, with `write_timeout`,
/// and a connection to it that has sent `GET /big`.
async fn big_response(listener: Listener, size: usize, write_timeout: &str) -> (Gateway, Backend, Box<dyn Stream>) {
    let body = Bytes::from(vec![b'x'; size]);
    let b = Backend::start(move |_| Reply::raw(200, "application/octet-stream", body.clone())).await;
    let mut c = config(json!([{"endpoint": "/big", "output_encoding": "no-op",
        "backend": [{"host": [b.url], "url_pattern": "/", "encoding": "no-op"}]}]));
    c["write_timeout"] = json!(write_timeout);
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    match listener {
        Listener::Plain => {}
        Listener::H2c => c["use_h2c"] = json!(true),
        Listener::Tls => {
            let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&cert_path, key.cert.pem()).unwrap();
            std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
            c["tls"] = json!({"public_key": cert_path, "private_key": key_path});
        }
    }
    let gw = Gateway::start(c).await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut stream: Box<dyn Stream> = match listener {
        Listener::Plain | Listener::H2c => Box::new(tcp),
        Listener::Tls => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from(key.cert.der().to_vec())).unwrap();
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
            Box::new(connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap())
        }
    };
    stream.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    (gw, b, stream)
}

/// Reads until the connection ends (or 20 s pass): the bytes received.
async fn read_to_end(stream: &mut Box<dyn Stream>) -> Option<usize> {
    let mut received = 0;
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return received,
                Ok(n) => received += n,
            }
        }
    })
    .await
    .ok()
}

/// `write_timeout`: a response the client does not read is given up on, and its connection
/// closed, instead of holding the connection (and the backend's body) forever; on every
/// kind of listener.
#[tokio::test]
async fn a_response_the_client_does_not_read_is_cut_after_the_write_timeout() {
    // Far more than the socket buffers on both ends hold.
    let size = 32 * 1024 * 1024;
    for listener in [Listener::Plain, Listener::H2c, Listener::Tls] {
        let (_gw, _b, mut stream) = big_response(listener, size, "300ms").await;
        // Not reading for well past the limit.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let received = read_to_end(&mut stream).await;
        let received = received.unwrap_or_else(|| panic!("{listener:?}: the connection stayed open"));
        assert!(received < size, "{listener:?}: the whole response arrived ({received} bytes): it was not cut");
    }
}

/// On the listeners hyper serves, the limit is on each stall (as nginx's `send_timeout`),
/// not on the whole response: a client that keeps reading gets all of a response that
/// takes longer than the limit to send.
#[tokio::test]
async fn on_tls_and_h2c_a_client_that_keeps_reading_gets_the_whole_response() {
    let size = 8 * 1024 * 1024;
    for listener in [Listener::H2c, Listener::Tls] {
        let (_gw, _b, mut stream) = big_response(listener, size, "1s").await;
        let mut buf = vec![0u8; 256 * 1024];
        let (mut received, mut head, mut paused) = (0, Vec::new(), 0);
        let started = std::time::Instant::now();
        let whole = loop {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "{listener:?}: the connection ended after {received} bytes");
            received += n;
            if head.len() < 256 {
                head.extend_from_slice(&buf[..n.min(256)]);
            }
            let header_len = String::from_utf8_lossy(&head).find("\r\n\r\n").map(|i| i + 4);
            if header_len.is_some_and(|len| received >= len + size) {
                break received - header_len.unwrap_or(0);
            }
            // A pause well under the limit after every MiB: eight of them, longer in all.
            if received / (1024 * 1024) > paused {
                paused = received / (1024 * 1024);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        assert_eq!(whole, size, "{listener:?}");
        assert!(started.elapsed() > Duration::from_secs(1), "{listener:?}: sent within the limit, proving nothing");
        // hyper writes the head from the map: the backend's fields were put in it.
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.contains("content-type: application/octet-stream"), "{listener:?}: {head}");
    }
}
