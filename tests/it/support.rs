//! Real servers on port 0: fake backends, the gateway in-process or as a process,
//! and a plain HTTP client that does not follow redirects.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use weir_gateway::config::{self, Format};
use weir_gateway::runtime::{Flags, Runtime};
use weir_gateway::server;

/// What a fake backend received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What a fake backend answers.
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    pub delay: Duration,
}

impl Reply {
    pub fn json(v: Value) -> Self {
        Self::raw(200, "application/json", v.to_string())
    }

    pub fn raw(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("status"),
            headers: vec![("content-type", content_type.to_owned())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn status(status: u16) -> Self {
        Self::raw(status, "text/plain", format!("status {status}"))
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A fake backend on 127.0.0.1:0 that records every request.
pub struct Backend {
    pub addr: SocketAddr,
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    hits: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl Backend {
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_at("127.0.0.1:0".parse().expect("addr"), handler).await
    }

    /// Like `start`, on a given address (to bring a stopped server back on its port).
    pub async fn start_at(at: SocketAddr, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let handler: Handler = Arc::new(handler);
        let listener = TcpListener::bind(at).await.expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (seen2, hits2) = (seen.clone(), hits.clone());
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (handler, seen, hits) = (handler.clone(), seen2.clone(), hits2.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (handler, seen, hits) = (handler.clone(), seen.clone(), hits.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                            let s =
                                Seen { method: parts.method, uri: parts.uri.to_string(), headers: parts.headers, body };
                            hits.fetch_add(1, Ordering::SeqCst);
                            seen.lock().expect("lock").push(s.clone());
                            let reply = handler(&s);
                            if !reply.delay.is_zero() {
                                tokio::time::sleep(reply.delay).await;
                            }
                            let mut resp = Response::new(Full::new(reply.body));
                            *resp.status_mut() = reply.status;
                            for (k, v) in reply.headers {
                                resp.headers_mut().append(k, HeaderValue::from_str(&v).expect("header"));
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Self { addr, url: format!("http://{addr}"), seen, hits, connections, _stop: stop }
    }

    /// A backend answering every request with the same JSON.
    pub async fn json(v: Value) -> Self {
        Self::start(move |_| Reply::json(v.clone())).await
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the backend was called")
    }
}

/// A TCP server that answers every connection with fixed bytes, then closes.
pub async fn raw_backend(bytes: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(bytes).await;
                let _ = s.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// A gateway serving `config` in this process, on 127.0.0.1 with an ephemeral port.
pub struct Gateway {
    pub addr: SocketAddr,
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    pub async fn start(config: Value) -> Self {
        Self::start_with(config, Flags::default()).await
    }

    pub async fn start_with(config: Value, flags: Flags) -> Self {
        let checked = config::parse(&config.to_string(), Format::Json, |_| None);
        let service = checked.service.unwrap_or_else(|| panic!("invalid test config: {:?}", checked.report.errors));
        let runtime = Runtime::compile(&service, flags).expect("compile");
        let settings = server::Settings::from_service(&service).expect("settings");
        let listener = server::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(arc_swap::ArcSwap::from_pointee(runtime));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, settings, shared, async move {
            let _ = stopped.await;
        }));
        Self { addr, url: format!("http://{addr}"), stop: Some(stop), task: Some(task) }
    }

    /// Stops accepting and waits until requests in flight are answered.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub async fn get(&self, path: &str) -> Reply2 {
        send(Method::GET, &format!("{}{path}", self.url), &[], Bytes::new()).await
    }

    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply2 {
        send(method, &format!("{}{path}", self.url), headers, body.into()).await
    }
}

/// A config with these endpoints and defaults suited to tests.
pub fn config(endpoints: Value) -> Value {
    json!({"version": 3, "port": 0, "timeout": "3s", "endpoints": endpoints})
}

/// A response as the tests see it.
#[derive(Debug)]
pub struct Reply2 {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply2 {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Reply2 {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = url.parse().expect("url");
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    let resp = tokio::time::timeout(Duration::from_secs(20), client().request(req))
        .await
        .expect("the gateway answered within 20 s")
        .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Reply2 { status, headers, body }
}

/// The `weir` binary built next to this test binary (`cargo build --bins` first).
pub fn weir_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("weir");
    assert!(bin.exists(), "{} is missing: run `cargo build --bins` before the tests", bin.display());
    bin
}

/// A `weir` process, killed when dropped.
pub struct Process {
    pub child: std::process::Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts `weir` with `args` (which must include `-p {port}` placeholder use via
    /// the returned port) and waits until it accepts connections.
    pub fn start(args: &[&str], dir: &std::path::Path) -> Self {
        let port = free_port();
        let log = dir.join(format!("weir-{port}.log"));
        let mut child = std::process::Command::new(weir_bin())
            .args(args)
            .args(["-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn weir");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("weir exited with {status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "weir did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Runs `weir` to completion.
pub fn weir(args: &[&str]) -> std::process::Output {
    std::process::Command::new(weir_bin()).args(args).output().expect("run weir")
}
