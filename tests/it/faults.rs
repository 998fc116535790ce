//! Fault injection against a real `weir` process: backends that stall, reset, flood or
//! trickle, and clients that do the same. Each fault gets KrakenD's status within the
//! configured timeout, the gateway keeps serving everyone else, and afterwards it holds
//! no more file descriptors or memory than before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Backend, Process, send};

/// What a misbehaving backend does once it has read the request head.
#[derive(Clone, Copy)]
enum Fault {
    /// Sends the status line and headers, then nothing.
    HeadersThenStall,
    /// Sends headers and part of the body, then resets the connection.
    ResetMidBody,
    /// Announces 2 GiB and streams zeros for as long as they are read.
    TwoGigabyteBody,
    /// A 1 MiB response header.
    HugeHeader,
    /// A valid JSON answer, one byte per write.
    OneByteWrites,
    /// 200 application/json with a truncated document.
    InvalidJson,
}

/// A raw TCP backend with one fault; counts the body bytes it managed to send.
async fn faulty(fault: Fault) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(misbehave(stream, fault, counter.clone()));
        }
    });
    (addr, sent)
}

async fn misbehave(mut s: TcpStream, fault: Fault, sent: Arc<AtomicU64>) {
    // Read the request head (the gateway sends GETs without bodies).
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let json =
        |len: usize| format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n");
    match fault {
        Fault::HeadersThenStall => {
            let _ = s.write_all(json(100).as_bytes()).await;
            let _ = s.write_all(b"{\"a\":").await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Fault::ResetMidBody => {
            let _ = s.write_all(json(1000).as_bytes()).await;
            let _ = s.write_all(b"{\"a\": \"0123456789").await;
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            drop(s); // RST, not FIN
        }
        Fault::TwoGigabyteBody => {
            let _ = s.write_all(json(2 << 30).as_bytes()).await;
            let _ = s.write_all(b"{\"a\": \"").await;
            let zeros = vec![b'0'; 64 * 1024];
            while s.write_all(&zeros).await.is_ok() {
                if sent.fetch_add(zeros.len() as u64, Ordering::Relaxed) > 2 << 30 {
                    break;
                }
            }
        }
        Fault::HugeHeader => {
            let big = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\n{{}}", "a".repeat(1 << 20));
            let _ = s.write_all(big.as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Fault::OneByteWrites => {
            let body = r#"{"trickled":true}"#;
            let answer = format!("{}{body}", json(body.len()));
            for b in answer.as_bytes() {
                if s.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Fault::InvalidJson => {
            let body = r#"{"a": [1, 2"#;
            let _ = s.write_all(format!("{}{body}", json(body.len())).as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Raw bytes to the gateway; what it answered (up to `wait`) and whether it closed.
async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (String, bool) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let closed = matches!(tokio::time::timeout(wait, tcp.read_to_end(&mut out)).await, Ok(Ok(_)));
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_and_client_faults_are_contained_and_leak_nothing() {
    let healthy = Backend::json(json!({"ok": true})).await;
    let faults = [
        ("stall", Fault::HeadersThenStall),
        ("reset", Fault::ResetMidBody),
        ("huge-body", Fault::TwoGigabyteBody),
        ("huge-header", Fault::HugeHeader),
        ("trickle", Fault::OneByteWrites),
        ("invalid-json", Fault::InvalidJson),
    ];
    let mut endpoints = vec![json!({"endpoint": "/ok", "backend": [{"host": [healthy.url], "url_pattern": "/"}]})];
    let mut sent = Vec::new();
    for (name, fault) in faults {
        let (addr, counter) = faulty(fault).await;
        sent.push((name, counter));
        endpoints.push(json!({"endpoint": format!("/{name}"), "backend": [{"host": [format!("http://{addr}")], "url_pattern": "/"}]}));
    }
    let config = json!({"version": 3, "timeout": "1s", "read_header_timeout": "1s", "use_h2c": true,
        "endpoints": endpoints});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("krakend.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let gw = Process::start(&["run", "-c", path.to_str().unwrap()], dir.path());
    let pid = gw.child.id();
    let addr: SocketAddr = format!("127.0.0.1:{}", gw.port).parse().unwrap();

    for _ in 0..20 {
        assert_eq!(send(http::Method::GET, &gw.url("/ok"), &[], bytes::Bytes::new()).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds_before, rss_before) = (open_fds(pid), rss_kb(pid));
    // Transparent huge pages are off for the gateway (2 MiB pages for small per-connection
    // buffers inflate its memory); kernels before 5.0 do not report the field.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    if let Some(thp) = status.lines().find_map(|l| l.strip_prefix("THP_enabled:")) {
        assert_eq!(thp.trim(), "0", "transparent huge pages are on for the gateway");
    }

    // Backend faults, three rounds each; the healthy endpoint answers between them. The
    // first round sets the allocator's high-water mark; later rounds must not add to it.
    let mut rss_first_round = 0;
    for round in 0..3 {
        if round == 1 {
            rss_first_round = rss_kb(pid);
        }
        for (name, fault) in faults {
            let started = Instant::now();
            let r = send(http::Method::GET, &gw.url(&format!("/{name}")), &[], bytes::Bytes::new()).await;
            let took = started.elapsed();
            match fault {
                Fault::OneByteWrites => assert_eq!((r.status, r.json()), (200, json!({"trickled": true}))),
                _ => assert_eq!(r.status, 500, "/{name}: {}", r.text()),
            }
            assert!(took < Duration::from_millis(2500), "/{name} took {took:?} with a 1 s timeout");
            assert_eq!(send(http::Method::GET, &gw.url("/ok"), &[], bytes::Bytes::new()).await.status, 200);
        }
    }
    let streamed = sent.iter().find(|(n, _)| *n == "huge-body").map(|(_, c)| c.load(Ordering::Relaxed)).unwrap();
    assert!(streamed < 512 << 20, "the gateway stopped reading the 2 GiB body early: {streamed} bytes were sent");

    // Client faults.
    // Slowloris: a header byte every 200 ms never completes the head; cut after 1 s.
    let slow = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let _ = tcp.write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\nx-slow: ").await;
        while started.elapsed() < Duration::from_secs(10) {
            if tcp.write_all(b"a").await.is_err() {
                break;
            }
            let mut byte = [0u8; 512];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut byte)).await {
                let _ = n;
                break; // the server answered (408) or closed
            }
        }
        started.elapsed()
    });
    assert_eq!(send(http::Method::GET, &gw.url("/ok"), &[], bytes::Bytes::new()).await.status, 200);
    let cut_after = slow.await.unwrap();
    assert!(cut_after < Duration::from_secs(3), "a slowloris client was cut after {cut_after:?}");

    // Invalid UTF-8 and encoded garbage in paths, oversized and malformed heads.
    let (answer, _) = raw(addr, b"GET /ok/\xff\xfe HTTP/1.1\r\nhost: x\r\n\r\n", Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 404"), "{answer:?}");
    let r = send(http::Method::GET, &gw.url("/ok/%FF%FE%00"), &[], bytes::Bytes::new()).await;
    assert_eq!(r.status, 404);
    let (answer, _) = raw(addr, b"GET /ok HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n", Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    let flood = format!("GET /ok HTTP/1.1\r\nhost: x\r\n{}\r\n", "x-h: 1\r\n".repeat(5000));
    let (answer, _) = raw(addr, flood.as_bytes(), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 431") || answer.starts_with("HTTP/1.1 400"), "{answer:.60}");

    // HTTP/2 rapid reset (CVE-2023-44487): open and cancel streams as fast as possible.
    let opened = rapid_reset(addr, 20_000).await;
    assert!(opened > 0, "the h2c connection was accepted");
    for _ in 0..20 {
        assert_eq!(send(http::Method::GET, &gw.url("/ok"), &[], bytes::Bytes::new()).await.status, 200);
    }

    // Nothing held on to: descriptors back to where they were, memory bounded.
    let mut fds_after = open_fds(pid);
    for _ in 0..50 {
        if fds_after <= fds_before + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        fds_after = open_fds(pid);
    }
    let rss_after = rss_kb(pid);
    assert!(fds_after <= fds_before + 2, "descriptors: {fds_before} before, {fds_after} after");
    assert!(
        rss_after < rss_first_round + 8 * 1024,
        "RSS: {rss_before} kB before, {rss_first_round} kB after one round of faults, {rss_after} kB at the end"
    );
    assert!(gw.log().lines().all(|l| !l.contains("panicked")), "{}", gw.log());
    println!(
        "faults: 6 backend faults x 3, 6 client faults; fds {fds_before} -> {fds_after}, \
         RSS {rss_before} -> {rss_first_round} (one round) -> {rss_after} kB, {opened} h2 streams reset, 2 GiB body cut after {} MiB",
        streamed >> 20
    );
}

/// Opens and immediately cancels up to `streams` h2c streams on one connection; how many
/// were opened before the server refused more.
async fn rapid_reset(addr: SocketAddr, streams: usize) -> usize {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let Ok((mut client, connection)) = h2::client::handshake(tcp).await else { return 0 };
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut opened = 0;
    for _ in 0..streams {
        let request = http::Request::get(format!("http://{addr}/ok")).body(()).unwrap();
        let ready = match tokio::time::timeout(Duration::from_secs(2), client.clone().ready()).await {
            Ok(Ok(ready)) => ready,
            _ => break, // GOAWAY or flow control: the server has had enough
        };
        client = ready;
        match client.send_request(request, true) {
            Ok((response, _)) => {
                opened += 1;
                drop(response); // cancels the stream: RST_STREAM(CANCEL)
            }
            Err(_) => break,
        }
    }
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
    opened
}

/// The endpoint's timeout covers a `no-op` body, which streams after the head: a backend
/// that sends its head and part of its body and then stalls loses the exchange, and the
/// client's connection ends, instead of both waiting for ever. On a plain and an h2c
/// listener (the gateway's own HTTP/1.1 server and hyper's).
#[tokio::test]
async fn a_no_op_body_that_stalls_is_cut_at_the_endpoint_timeout() {
    let (addr, _) = faulty(Fault::HeadersThenStall).await;
    for h2c in [false, true] {
        let mut c = crate::support::config(json!([{"endpoint": "/stall", "output_encoding": "no-op",
            "backend": [{"host": [format!("http://{addr}")], "url_pattern": "/", "encoding": "no-op"}]}]));
        c["timeout"] = json!("500ms");
        c["use_h2c"] = json!(h2c);
        let gw = crate::support::Gateway::start(c).await;
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        tcp.write_all(b"GET /stall HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&got);
        assert!(ended.is_ok(), "h2c {h2c}: the connection was still open after 10 s: {text}");
        assert!(text.starts_with("HTTP/1.1 200"), "h2c {h2c}: {text}");
        assert!(text.ends_with("{\"a\":"), "h2c {h2c}: the part that came is passed on: {text}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(400), "h2c {h2c}: cut after {took:?}, before the timeout");
        assert!(took < Duration::from_secs(3), "h2c {h2c}: cut after {took:?} with a 500 ms timeout");
    }
}
