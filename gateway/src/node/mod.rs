//! Keeping a node's runtime current: managed mode (signed bundles fetched from the
//! control plane) and standalone hot reload (the config file, on change or SIGHUP).
//!
//! Either way a new runtime is compiled off the request path and swapped in whole;
//! requests in flight finish on the runtime they started with, and anything invalid
//! leaves the running runtime in place.

pub mod cache;
pub mod control;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderValue;

use crate::bundle::{self, Expect, TrustList};
use crate::config::{self, Service};
use crate::runtime::{Flags, Runtime, Shared};
use control::{ControlError, ControlPlane, Fetched, Status};

/// How often a managed node tells the control plane it is alive.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// Longest wait between fetch attempts while the control plane is failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A managed node's settings (`weir run --control ...`).
pub struct Managed {
    pub control: String,
    pub gateway: String,
    pub environment: String,
    pub token: String,
    pub trust: TrustList,
    pub cache_dir: PathBuf,
    pub poll_interval: Duration,
    pub node_id: String,
    pub flags: Flags,
    /// How often request metrics go to the control plane as OTLP (none: never).
    pub metrics_interval: Option<Duration>,
}

/// What the node runs now and what happened last.
#[derive(Default)]
struct State {
    serial: Option<u64>,
    digest: Option<String>,
    etag: Option<HeaderValue>,
    last_fetch_at: Option<String>,
    last_result: String,
}

/// A managed node after boot: serving a verified bundle and able to follow updates.
pub struct Node {
    settings: Managed,
    control: ControlPlane,
    state: State,
    hostname: String,
    /// The running serial, shared with the metrics exporter.
    serial: Arc<std::sync::atomic::AtomicU64>,
}

/// Why a managed node could not start.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{0}")]
    Control(#[from] ControlError),
    #[error("no bundle to start from: the control plane gave none ({fetch}) and the cache has none ({cache})")]
    NothingToRun { fetch: String, cache: String },
}

impl Node {
    /// Fetches and verifies the first bundle, falling back to the cached one when the
    /// control plane is unreachable or sends something unacceptable.
    pub async fn boot(settings: Managed) -> Result<(Self, Runtime, Service), BootError> {
        let control = ControlPlane::new(
            &settings.control,
            &settings.gateway,
            &settings.environment,
            &settings.node_id,
            &settings.token,
        )?;
        let hostname = hostname().unwrap_or_else(|| "unknown".into());
        let mut node = Self { settings, control, state: State::default(), hostname, serial: Arc::default() };
        let cache_file = node.cache_file();
        let fetch_problem = match node.control.fetch(None).await {
            Ok(Fetched::Bundle { bytes, etag, .. }) => {
                node.state.last_fetch_at = Some(bundle::now_rfc3339());
                match node.accept(&bytes, None) {
                    Ok(Some((runtime, service))) => {
                        node.state.etag = etag;
                        if let Err(e) = cache::store(&cache_file, &bytes) {
                            tracing::warn!(error = %e, file = %cache_file.display(), "cannot cache the bundle");
                        }
                        node.report().await;
                        return Ok((node, runtime, service));
                    }
                    // Nothing runs yet, so nothing can be "unchanged"; treated as a refusal.
                    Ok(None) => "it sent the bundle already running".to_owned(),
                    Err(reason) => {
                        node.reject(&reason);
                        node.report().await;
                        format!("its bundle was rejected: {reason}")
                    }
                }
            }
            Ok(Fetched::NotModified { .. }) => "it answered 304 to a request without ETag".to_owned(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(problem = %fetch_problem, "starting from the cached bundle");
        let cache_problem = match cache::load(&cache_file) {
            None => format!("{} does not exist", cache_file.display()),
            Some(bytes) => match node.accept(&bytes, None) {
                Ok(Some((runtime, service))) => {
                    node.state.last_result = "applied from cache".into();
                    return Ok((node, runtime, service));
                }
                Ok(None) => format!("{} holds the bundle already running", cache_file.display()),
                Err(reason) => format!("{} was rejected: {reason}", cache_file.display()),
            },
        };
        Err(BootError::NothingToRun { fetch: fetch_problem, cache: cache_problem })
    }

    fn cache_file(&self) -> PathBuf {
        cache::path(&self.settings.cache_dir, &self.settings.gateway, &self.settings.environment)
    }

    /// Verifies bundle bytes and compiles their config; the state records the result.
    /// `Ok(None)`: the bundle is the one running (a control plane without ETags).
    fn accept(&mut self, bytes: &[u8], previous: Option<&Runtime>) -> Result<Option<(Runtime, Service)>, String> {
        let jws = bundle::parse(bytes).map_err(|e| e.to_string())?;
        let expect = Expect {
            gateway: Some(&self.settings.gateway),
            environment: Some(&self.settings.environment),
            running_serial: self.state.serial,
        };
        let verified = bundle::verify(&jws, &self.settings.trust, &expect).map_err(|e| e.to_string())?;
        let m = &verified.payload.metadata;
        if self.state.serial == Some(m.serial) && self.state.digest.as_ref() == Some(&m.config_digest) {
            self.state.last_result = "unchanged".into();
            return Ok(None);
        }
        let runtime =
            Runtime::compile_after(&verified.service, self.settings.flags, previous).map_err(|e| e.to_string())?;
        let payload = &verified.payload;
        if !runtime.install_keyring(&payload.keyring, &payload.plans, previous) {
            tracing::warn!(
                keys = payload.keyring.len(),
                "the bundle has API keys but its config declares no \"auth/api-keys\" to check them"
            );
        }
        let m = verified.payload.metadata;
        tracing::info!(serial = m.serial, digest = %m.config_digest, kid = %verified.kid, "bundle accepted");
        self.state.serial = Some(m.serial);
        self.serial.store(m.serial, std::sync::atomic::Ordering::Relaxed);
        self.state.digest = Some(m.config_digest);
        self.state.last_result = "applied".into();
        Ok(Some((runtime, verified.service)))
    }

    fn reject(&mut self, reason: &str) {
        tracing::error!(%reason, "bundle rejected; still serving the running one");
        self.state.last_result = format!("rejected: {reason}");
    }

    async fn report(&self) {
        let status = Status {
            node_id: self.settings.node_id.clone(),
            hostname: self.hostname.clone(),
            version: crate::VERSION.to_owned(),
            serial: self.state.serial,
            config_digest: self.state.digest.clone(),
            last_fetch_at: self.state.last_fetch_at.clone(),
            last_result: self.state.last_result.clone(),
            reported_at: bundle::now_rfc3339(),
        };
        if let Err(e) = self.control.report(&status).await {
            tracing::warn!(error = %e, "status report failed");
        }
    }

    /// Polls for new bundles and reports status, forever. Runs beside the server, with
    /// the metrics exporter beside it when the settings ask for one.
    pub async fn follow(mut self, shared: Shared) {
        if let Some(every) = self.settings.metrics_interval {
            let resource = vec![
                ("service.name", "weir".to_owned()),
                ("service.instance.id", self.settings.node_id.clone()),
                ("weir.gateway", self.settings.gateway.clone()),
                ("weir.environment", self.settings.environment.clone()),
            ];
            tokio::spawn(export_metrics(self.control.clone(), shared.clone(), every, resource, self.serial.clone()));
        }
        let mut wait = self.settings.poll_interval;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                () = tokio::time::sleep(jitter(wait)) => {}
                _ = heartbeat.tick() => {
                    self.report().await;
                    continue;
                }
            }
            wait = match self.poll(&shared).await {
                // A control plane that held the request (long poll) already waited for
                // us: ask again at once, so the next bundle finds us waiting.
                Ok(true) => Duration::from_millis(50),
                Ok(false) => self.settings.poll_interval,
                Err(e) => {
                    tracing::warn!(error = %e, "bundle fetch failed; serving the running bundle");
                    (wait * 2).min(MAX_BACKOFF).max(self.settings.poll_interval)
                }
            };
        }
    }

    /// One fetch; returns whether the control plane held it (long poll).
    async fn poll(&mut self, shared: &Shared) -> Result<bool, ControlError> {
        let fetched = self.control.fetch(self.state.etag.as_ref()).await?;
        self.state.last_fetch_at = Some(bundle::now_rfc3339());
        let (bytes, etag, long_poll) = match fetched {
            Fetched::NotModified { held } => return Ok(held),
            Fetched::Bundle { bytes, etag, long_poll } => (bytes, etag, long_poll),
        };
        let running = shared.load_full();
        match self.accept(&bytes, Some(&running)) {
            Ok(None) => self.state.etag = etag,
            Ok(Some((runtime, _))) => {
                shared.store(Arc::new(runtime));
                self.state.etag = etag;
                let file = self.cache_file();
                if let Err(e) = cache::store(&file, &bytes) {
                    tracing::warn!(error = %e, file = %file.display(), "cannot cache the bundle");
                }
            }
            Err(reason) => {
                // Ask with the refused bundle's ETag from now on: the same bad bundle is not
                // fetched (and refused) again, and the next one arrives as soon as it is signed.
                self.reject(&reason);
                self.state.etag = etag;
            }
        }
        self.report().await;
        Ok(long_poll)
    }
}

/// Boots a managed node and serves traffic until `shutdown` resolves: what `weir run
/// --control` does, for embedding a node in another process (`weir-control dev`).
pub async fn serve_managed(
    settings: Managed,
    port: Option<u16>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let (node, runtime, service) = Node::boot(settings).await.map_err(|e| e.to_string())?;
    let shared = Arc::new(arc_swap::ArcSwap::from_pointee(runtime));
    let follower = tokio::spawn(node.follow(shared.clone()));
    let served = crate::server::run(&service, port, shared, shutdown).await;
    follower.abort();
    served.map_err(|e| e.to_string())
}

/// Sends the running runtime's request metrics to the control plane as OTLP, forever.
async fn export_metrics(
    control: ControlPlane,
    shared: Shared,
    every: Duration,
    resource: Vec<(&'static str, String)>,
    serial: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let mut attributes = resource.clone();
        attributes.push(("weir.config_serial", serial.load(std::sync::atomic::Ordering::Relaxed).to_string()));
        let runtime = shared.load_full();
        let usage = runtime.consumer_usage();
        let body = crate::telemetry::otlp::export_with_usage(runtime.metrics(), &usage, &attributes, SystemTime::now());
        if let Err(e) = control.export_metrics(body).await {
            tracing::debug!(error = %e, "metrics export failed");
        }
    }
}

/// Spreads polls of a fleet over ±10 % of the interval.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::getrandom(&mut b);
    let r = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX);
    d.mul_f64(0.9 + 0.2 * r)
}

/// Standalone hot reload: re-reads `path` when it changes (with `watch_file`) and on
/// SIGHUP, swapping in the new runtime only if the config is valid.
pub async fn reload_on_change(
    path: PathBuf,
    flags: Flags,
    allow_unsupported: bool,
    shared: Shared,
    watch_file: bool,
    listen: Service,
) {
    let mut hup = hangups();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last = fingerprint(&path);
    let mut pending = false;
    loop {
        tokio::select! {
            _ = tick.tick(), if watch_file => {
                let now = fingerprint(&path);
                if now != last {
                    // Editors write in several steps: wait for one quiet tick before reading.
                    last = now;
                    pending = true;
                    continue;
                }
                if !pending {
                    continue;
                }
                pending = false;
            }
            Some(()) = next_hangup(&mut hup) => {
                tracing::info!("SIGHUP: reloading");
            }
        }
        reload(&path, flags, allow_unsupported, &shared, &listen);
    }
}

/// Loads, validates and compiles the config; on success swaps it in. Returns whether it did.
pub fn reload(path: &Path, flags: Flags, allow_unsupported: bool, shared: &Shared, listen: &Service) -> bool {
    let checked = config::load(path);
    let report = &checked.report;
    if !report.is_runnable(false, allow_unsupported) {
        for e in &report.errors {
            tracing::error!(problem = %e, "config reload refused");
        }
        for u in report.unsupported.iter().filter(|u| u.blocking && !allow_unsupported) {
            tracing::error!(problem = %u, "config reload refused");
        }
        return false;
    }
    let Some(service) = checked.service else {
        return false;
    };
    let previous = shared.load_full();
    match Runtime::compile_after(&service, flags, Some(&previous)) {
        Ok(runtime) => {
            shared.store(Arc::new(runtime));
            if service.port != listen.port
                || service.listen_ip != listen.listen_ip
                || service.tls.is_some() != listen.tls.is_some()
            {
                tracing::warn!("listener settings (port, listen_ip, tls) changed: they take effect on restart");
            }
            tracing::info!(endpoints = service.endpoints.len(), "config reloaded");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload refused");
            false
        }
    }
}

fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

fn hangups() -> Hangups {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

async fn next_hangup(h: &mut Hangups) -> Option<()> {
    #[cfg(unix)]
    {
        match h {
            Some(s) => s.recv().await,
            None => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = h;
        std::future::pending().await
    }
}

/// This machine's host name (the kernel's, else `/etc/hostname`, else `$HOSTNAME`), which
/// names the node by default. Sandboxes such as systemd's `ProcSubset=pid` hide the first.
pub fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .into_iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .chain(std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .find(|h| !h.is_empty())
}
