//! Listeners: TCP, optional TLS (rustls, HTTP/2 by ALPN), HTTP/1.1 and h2c, limits,
//! and graceful shutdown that stops accepting and lets requests in flight finish.
//!
//! Plain HTTP/1.1 connections are served by `http1`; TLS and h2c ones by hyper, over a
//! stream that enforces `write_timeout` (`stall`).

mod http1;
mod stall;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::{Service, Tls, TlsVersion};
use crate::runtime::Shared;

/// Slow clients get this long for a TLS handshake before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// When a config sets no header timeout, headers must still arrive within this, so
/// that a slowloris client cannot hold connections open forever (hyper's default).
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How the listener serves connections; fixed for the life of a listener.
#[derive(Clone)]
pub struct Settings {
    tls: Option<TlsAcceptor>,
    h2c: bool,
    header_timeout: Duration,
    max_header_bytes: usize,
    write_timeout: Option<Duration>,
    shutdown_wait: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("tls: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

impl Settings {
    pub fn from_service(service: &Service) -> Result<Self, SetupError> {
        let limits = &service.server;
        let tls = service.tls.as_ref().map(tls_acceptor).transpose()?;
        Ok(Self {
            tls,
            h2c: service.use_h2c,
            // hyper's header timer also runs while a keep-alive connection waits for its
            // next request, so it enforces idle_timeout too: the tightest setting wins.
            header_timeout: [limits.read_header_timeout, limits.idle_timeout, limits.read_timeout]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(DEFAULT_HEADER_TIMEOUT),
            max_header_bytes: limits.max_header_bytes,
            write_timeout: limits.write_timeout,
            shutdown_wait: limits.shutdown_wait,
        })
    }
}

/// The address a service listens on; `port` overrides the config's (`run -p`).
pub fn listen_addr(service: &Service, port: Option<u16>) -> SocketAddr {
    let ip = service.listen_ip.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    SocketAddr::new(ip, port.unwrap_or(service.port))
}

/// Binds with `SO_REUSEADDR` (quick restarts) and a deep backlog for bursts. An
/// unspecified IPv6 address also accepts IPv4, falling back to IPv4 only where IPv6
/// is unavailable.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, SetupError> {
    let attempt = |addr: SocketAddr| -> io::Result<TcpListener> {
        let domain = if addr.is_ipv6() { socket2::Domain::IPV6 } else { socket2::Domain::IPV4 };
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    };
    attempt(addr)
        .or_else(|e| {
            if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
                attempt(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), addr.port()))
            } else {
                Err(e)
            }
        })
        .map_err(|source| SetupError::Bind { addr, source })
}

fn tls_acceptor(tls: &Tls) -> Result<TlsAcceptor, SetupError> {
    let err = |what: &str, e: &dyn std::fmt::Display| SetupError::Tls(format!("{what}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if tls.min_version <= TlsVersion::Tls12 && tls.max_version >= TlsVersion::Tls12 {
        versions.push(&rustls::version::TLS12);
    }
    if tls.max_version >= TlsVersion::Tls13 {
        versions.push(&rustls::version::TLS13);
    }
    // Several key pairs would need SNI selection; the first pair is served for now.
    let pair = tls.keys.first().ok_or_else(|| SetupError::Tls("no certificate configured".into()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.public_key)
        .map_err(|e| err(&pair.public_key.display().to_string(), &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(&pair.public_key.display().to_string(), &e))?;
    let key = PrivateKeyDer::from_pem_file(&pair.private_key)
        .map_err(|e| err(&pair.private_key.display().to_string(), &e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| err("protocol versions", &e))?;
    let builder = if tls.enable_mtls {
        let mut roots = rustls::RootCertStore::empty();
        for path in &tls.client_ca_certs {
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(&path.display().to_string(), &e))? {
                let cert = cert.map_err(|e| err(&path.display().to_string(), &e))?;
                roots.add(cert).map_err(|e| err(&path.display().to_string(), &e))?;
            }
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| err("ca_certs", &e))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| err("certificate", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Binds the service's listener and its metric exporters (Prometheus, OTLP collectors),
/// then serves `shared` until `shutdown`: what `weir run` does, standalone or managed.
pub async fn run(
    service: &Service,
    port: Option<u16>,
    shared: Shared,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SetupError> {
    let settings = Settings::from_service(service)?;
    let listener = bind(listen_addr(service, port))?;
    let collectors = crate::telemetry::otlp::collectors(&service.extra_config);
    if !collectors.traces.is_empty() {
        tracing::info!(collectors = collectors.traces.len(), "exporting traces over OTLP");
        tokio::spawn(crate::telemetry::trace::export_to_collectors(
            collectors.traces.clone(),
            collectors.service_name.clone(),
            shared.clone(),
        ));
    }
    for target in collectors.metrics {
        tracing::info!(url = %target.uri, protocol = ?target.protocol, every = ?target.period, "exporting metrics over OTLP");
        tokio::spawn(crate::telemetry::otlp::export_metrics(target, collectors.service_name.clone(), shared.clone()));
    }
    for addr in crate::telemetry::prometheus_addrs(&service.extra_config) {
        let metrics = bind(addr)?;
        tracing::info!(%addr, "prometheus metrics on /metrics");
        tokio::spawn(crate::telemetry::serve_prometheus(metrics, shared.clone()));
    }
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(addr = %local, endpoints = service.endpoints.len(), tls = service.tls.is_some(), "weir listening");
    serve(listener, settings, shared, shutdown).await;
    tracing::info!("stopped");
    Ok(())
}

/// Serves connections until `shutdown` completes, then stops accepting and waits (up
/// to the configured bound) for requests in flight.
pub async fn serve(listener: TcpListener, settings: Settings, runtime: Shared, shutdown: impl Future<Output = ()>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    let plain = http1::Limits {
        header_timeout: settings.header_timeout,
        max_header_bytes: settings.max_header_bytes,
        write_timeout: settings.write_timeout,
    };
    // hyper's connections are watched by `graceful`; plain ones hold a receiver of
    // `stop`, and are all gone when its sender sees no receivers left.
    let graceful = GracefulShutdown::new();
    let (stop, _) = tokio::sync::watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept:
                    // pause briefly instead of spinning, then keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let open = crate::telemetry::OpenConnection::open();
        if settings.tls.is_none() && !settings.h2c {
            let (runtime, stop) = (runtime.clone(), stop.subscribe());
            tokio::spawn(async move {
                http1::serve(stream, remote, runtime, plain, stop).await;
                drop(open);
            });
            continue;
        }
        let runtime = runtime.clone();
        let service = service_fn(move |request| {
            let runtime = runtime.load_full();
            // Boxed: hyper keeps room for the service future in every connection, and the
            // request path's future is large; boxing spends that memory only while a
            // request is in flight instead of on every idle keep-alive connection.
            let response: Pin<Box<dyn Future<Output = Result<_, Infallible>> + Send>> = Box::pin(async move {
                // hyper writes the head from the map alone.
                let mut response = runtime.handle(request, remote).await;
                crate::proxy::settle(&mut response);
                Ok(response)
            });
            response
        });
        let watcher = graceful.watcher();
        let stream = stall::WriteStall::new(stream, settings.write_timeout);
        match &settings.tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                tokio::spawn(async move {
                    let _ = watcher.watch(conn).await;
                    drop(open);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let builder = builder.clone();
                tokio::spawn(async move {
                    let _open = open;
                    let Ok(Ok(tls)) = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(tls), service).into_owned();
                    let _ = watcher.watch(conn).await;
                });
            }
        }
    }
    drop(listener);
    stop.send_replace(());
    let finished = async { tokio::join!(graceful.shutdown(), stop.closed()) };
    tokio::select! {
        _ = finished => {}
        () = tokio::time::sleep(settings.shutdown_wait) => {
            tracing::warn!(wait = ?settings.shutdown_wait, "requests still in flight at the shutdown deadline");
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
