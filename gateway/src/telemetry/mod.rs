//! Request and policy metrics: counters resolved when the config is compiled
//! (one set per endpoint, plus the service-wide checks), updated with relaxed atomic
//! adds on the request path, and exposed in the Prometheus text format and as OTLP
//! (see [`otlp`]).

pub mod access;
pub mod otlp;
pub mod otlp_proto;
pub mod trace;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::policy::breaker::{BreakerState, CircuitBreaker};

/// Why a request was refused before reaching its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unauthorized,
    Forbidden,
    RateLimited,
    InvalidBody,
    TooLarge,
    Other,
}

impl Refusal {
    const ALL: [Refusal; 6] = [
        Refusal::Unauthorized,
        Refusal::Forbidden,
        Refusal::RateLimited,
        Refusal::InvalidBody,
        Refusal::TooLarge,
        Refusal::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::Forbidden => "forbidden",
            Refusal::RateLimited => "rate_limited",
            Refusal::InvalidBody => "invalid_body",
            Refusal::TooLarge => "too_large",
            Refusal::Other => "other",
        }
    }

    /// The refusal a policy status code stands for.
    pub fn from_status(status: u16) -> Self {
        match status {
            401 => Refusal::Unauthorized,
            403 => Refusal::Forbidden,
            429 | 503 => Refusal::RateLimited,
            400 => Refusal::InvalidBody,
            413 => Refusal::TooLarge,
            _ => Refusal::Other,
        }
    }
}

/// Upper bounds (milliseconds) of the request-duration buckets; one more bucket holds
/// everything slower. Chosen around gateway latencies: a few ms of own work, backend
/// calls from tens of ms to the default 2 s timeout and beyond.
pub const LATENCY_BOUNDS_MS: [u64; 11] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];
const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Request durations of one status class: a fixed-bucket histogram of atomics.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Latency {
    fn record(&self, elapsed: std::time::Duration) {
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_MS.iter().position(|b| ms <= *b).unwrap_or(BUCKETS - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// `(count, sum in seconds, bucket counts)`.
    pub fn snapshot(&self) -> (u64, f64, [u64; BUCKETS]) {
        let buckets: [u64; BUCKETS] = std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed));
        // The sum's microseconds fit an f64 exactly for 285 years of request time.
        #[allow(clippy::cast_precision_loss)]
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets.iter().sum(), sum, buckets)
    }
}

/// Counters of one endpoint.
#[derive(Debug)]
pub struct EndpointStats {
    route: Box<str>,
    method: Box<str>,
    /// Responses by status class: 1xx .. 5xx.
    responses: [AtomicU64; 5],
    /// Durations by status class: 1xx .. 5xx.
    latency: [Latency; 5],
    refusals: [AtomicU64; 6],
}

impl EndpointStats {
    pub fn new(route: &str, method: &str) -> Self {
        Self {
            route: route.into(),
            method: method.into(),
            responses: Default::default(),
            latency: Default::default(),
            refusals: Default::default(),
        }
    }

    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a response and its duration (until its headers were ready).
    pub fn record(&self, status: u16, elapsed: std::time::Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        self.latency[class].record(elapsed);
    }

    pub fn route(&self) -> &str {
        &self.route
    }

    pub fn method(&self) -> &str {
        &self.method
    }

    /// Durations of responses of status class `class` (1 to 5).
    pub fn latency(&self, class: usize) -> &Latency {
        &self.latency[class.clamp(1, 5) - 1]
    }

    pub fn refused(&self, why: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(5);
        self.refusals[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals so far by reason.
    pub fn refusals(&self) -> impl Iterator<Item = (&'static str, u64)> {
        refusal_counts(&self.refusals)
    }
}

fn refusal_counts(counters: &[AtomicU64; 6]) -> impl Iterator<Item = (&'static str, u64)> {
    Refusal::ALL.iter().zip(counters).map(|(r, n)| (r.label(), n.load(Ordering::Relaxed)))
}

/// Calls to one backend of one endpoint: the time until each answer's head by status
/// class, and calls that got no answer at all (refused, reset, timed out, abandoned).
#[derive(Debug)]
pub struct BackendStats {
    route: Box<str>,
    method: Box<str>,
    index: usize,
    url_pattern: Box<str>,
    host: Box<str>,
    /// 1xx .. 5xx, then calls without an answer.
    latency: [Latency; 6],
}

/// The outcome labels of [`BackendStats`], in the order of its histograms.
pub const BACKEND_OUTCOMES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

impl BackendStats {
    /// The counters of backend `index` of an endpoint; `host` is its first host.
    pub fn new(route: &str, method: &str, index: usize, url_pattern: &str, host: &str) -> Self {
        Self {
            route: route.into(),
            method: method.into(),
            index,
            url_pattern: url_pattern.into(),
            host: host.into(),
            latency: Default::default(),
        }
    }

    /// Whether `other` counts the same backend (for carrying counters over a reload).
    pub fn same_backend(&self, other: &BackendStats) -> bool {
        self.route == other.route
            && self.method == other.method
            && self.index == other.index
            && self.url_pattern == other.url_pattern
            && self.host == other.host
    }

    /// Starts timing one call: [`BackendTimer::answered`] records its status; a timer
    /// dropped before that (an error, a timeout, a client that went away) records a call
    /// without an answer.
    pub fn start(&self) -> BackendTimer<'_> {
        BackendTimer { stats: self, started: std::time::Instant::now(), answered: false }
    }

    pub fn route(&self) -> &str {
        &self.route
    }

    pub fn method(&self) -> &str {
        &self.method
    }

    pub fn url_pattern(&self) -> &str {
        &self.url_pattern
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Each outcome label with its durations.
    pub fn outcomes(&self) -> impl Iterator<Item = (&'static str, &Latency)> {
        BACKEND_OUTCOMES.into_iter().zip(&self.latency)
    }
}

/// One backend call being timed.
pub struct BackendTimer<'a> {
    stats: &'a BackendStats,
    started: std::time::Instant,
    answered: bool,
}

impl BackendTimer<'_> {
    pub fn answered(mut self, status: u16) {
        self.answered = true;
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.stats.latency[class].record(self.started.elapsed());
    }
}

impl Drop for BackendTimer<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.stats.latency[5].record(self.started.elapsed());
        }
    }
}

/// Client connections open right now, over every listener and runtime of the process.
static OPEN_CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// Counts a client connection as open until it is dropped.
pub struct OpenConnection(());

impl OpenConnection {
    pub fn open() -> Self {
        OPEN_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        Self(())
    }

    /// How many are open.
    pub fn count() -> u64 {
        OPEN_CONNECTIONS.load(Ordering::Relaxed)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Refusals by the service-wide checks (hosts, bots, client addresses).
#[derive(Default)]
pub struct FrontStats {
    refusals: [AtomicU64; 6],
}

impl FrontStats {
    pub fn refused(&self, why: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(5);
        self.refusals[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals so far by reason.
    pub fn refusals(&self) -> impl Iterator<Item = (&'static str, u64)> {
        refusal_counts(&self.refusals)
    }
}

/// Every counter of a runtime, for the exporters.
pub struct Registry {
    pub endpoints: Vec<Arc<EndpointStats>>,
    pub backends: Vec<Arc<BackendStats>>,
    pub front: FrontStats,
    pub breakers: Vec<(String, Arc<CircuitBreaker>)>,
    /// The finished spans' queue, when traces are exported (for its drop count).
    pub spans: Option<Arc<trace::SpanQueue>>,
    /// When the counters started (the runtime's compile time): cumulative series begin here.
    pub started: std::time::SystemTime,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            backends: Vec::new(),
            front: FrontStats::default(),
            breakers: Vec::new(),
            spans: None,
            started: std::time::SystemTime::now(),
        }
    }
}

/// The `_bucket`, `_sum` and `_count` lines of one Prometheus histogram series.
fn histogram_lines(out: &mut String, name: &str, labels: &str, count: u64, sum: f64, buckets: &[u64; BUCKETS]) {
    let mut cumulative = 0;
    for (bound, n) in LATENCY_BOUNDS_MS.iter().zip(buckets) {
        cumulative += n;
        #[allow(clippy::cast_precision_loss)]
        let le = *bound as f64 / 1000.0;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Registry {
    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(1024 + self.endpoints.len() * 512);
        out.push_str("# HELP weir_responses_total Responses by endpoint and status class.\n# TYPE weir_responses_total counter\n");
        for e in &self.endpoints {
            for (i, n) in e.responses.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "weir_responses_total{{route=\"{}\",method=\"{}\",status_class=\"{}xx\"}} {}",
                    escape(&e.route),
                    e.method,
                    i + 1,
                    n.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP weir_request_duration_seconds Time to response headers by endpoint and status class.\n# TYPE weir_request_duration_seconds histogram\n");
        for e in &self.endpoints {
            for class in 1..=5 {
                let (count, sum, buckets) = e.latency(class).snapshot();
                if count == 0 {
                    continue;
                }
                let labels =
                    format!("route=\"{}\",method=\"{}\",status_class=\"{class}xx\"", escape(&e.route), e.method);
                histogram_lines(&mut out, "weir_request_duration_seconds", &labels, count, sum, &buckets);
            }
        }
        out.push_str("# HELP weir_backend_request_duration_seconds Time to each backend answer's headers, by backend and status class (error: no answer).\n# TYPE weir_backend_request_duration_seconds histogram\n");
        for b in &self.backends {
            for (outcome, latency) in b.outcomes() {
                let (count, sum, buckets) = latency.snapshot();
                if count == 0 {
                    continue;
                }
                let labels = format!(
                    "route=\"{}\",method=\"{}\",backend=\"{}\",host=\"{}\",outcome=\"{outcome}\"",
                    escape(&b.route),
                    b.method,
                    escape(&b.url_pattern),
                    escape(&b.host)
                );
                histogram_lines(&mut out, "weir_backend_request_duration_seconds", &labels, count, sum, &buckets);
            }
        }
        let _ = writeln!(
            out,
            "# HELP weir_open_connections Client connections open now.\n# TYPE weir_open_connections gauge\nweir_open_connections {}",
            OpenConnection::count()
        );
        if let Some(spans) = &self.spans {
            let _ = writeln!(
                out,
                "# HELP weir_spans_dropped_total Finished spans dropped because the export queue was full.\n# TYPE weir_spans_dropped_total counter\nweir_spans_dropped_total {}",
                spans.dropped()
            );
        }
        out.push_str("# HELP weir_refusals_total Requests refused by a policy before reaching backends.\n# TYPE weir_refusals_total counter\n");
        for e in &self.endpoints {
            for (r, n) in Refusal::ALL.iter().zip(&e.refusals) {
                let _ = writeln!(
                    out,
                    "weir_refusals_total{{route=\"{}\",method=\"{}\",reason=\"{}\"}} {}",
                    escape(&e.route),
                    e.method,
                    r.label(),
                    n.load(Ordering::Relaxed)
                );
            }
        }
        for (r, n) in Refusal::ALL.iter().zip(&self.front.refusals) {
            let _ = writeln!(
                out,
                "weir_refusals_total{{route=\"\",method=\"\",reason=\"{}\"}} {}",
                r.label(),
                n.load(Ordering::Relaxed)
            );
        }
        if !self.breakers.is_empty() {
            out.push_str("# HELP weir_circuit_breaker_state 0 closed, 1 open, 2 half-open.\n# TYPE weir_circuit_breaker_state gauge\n");
            for (name, b) in &self.breakers {
                let state = match b.state() {
                    BreakerState::Closed => 0,
                    BreakerState::Open => 1,
                    BreakerState::HalfOpen => 2,
                };
                let _ = writeln!(out, "weir_circuit_breaker_state{{backend=\"{}\"}} {state}", escape(name));
            }
            out.push_str("# HELP weir_circuit_breaker_transitions_total State changes by new state.\n# TYPE weir_circuit_breaker_transitions_total counter\n");
            for (name, b) in &self.breakers {
                for (state, n) in ["closed", "open", "half-open"].iter().zip(b.transitions()) {
                    let _ = writeln!(
                        out,
                        "weir_circuit_breaker_transitions_total{{backend=\"{}\",to=\"{state}\"}} {n}",
                        escape(name)
                    );
                }
            }
        }
        out
    }
}

/// `telemetry/opentelemetry` `exporters.prometheus[]`: where to serve `/metrics`.
pub fn prometheus_addrs(extra: &serde_json::Map<String, serde_json::Value>) -> Vec<std::net::SocketAddr> {
    let exporters = extra
        .get("telemetry/opentelemetry")
        .and_then(|t| t.get("exporters"))
        .and_then(|e| e.get("prometheus"))
        .and_then(serde_json::Value::as_array);
    exporters
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p.get("port")?.as_u64()?).ok()?;
            let ip = p
                .get("listen_ip")
                .and_then(serde_json::Value::as_str)
                .and_then(|ip| ip.parse().ok())
                .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
            Some(std::net::SocketAddr::new(ip, port))
        })
        .collect()
}

/// Checks the exporter settings Weir uses (`exporters.prometheus[].port`).
pub fn validate(v: &serde_json::Value, path: &str) -> crate::policy::Problems {
    let mut p = crate::policy::Problems::new();
    let list = v.get("exporters").and_then(|e| e.get("prometheus"));
    match list {
        None => {}
        Some(serde_json::Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if item.get("port").and_then(serde_json::Value::as_u64).and_then(|n| u16::try_from(n).ok()).is_none() {
                    p.push(crate::policy::problem(
                        &format!("{path}.exporters.prometheus[{i}].port"),
                        "is required: the port to serve /metrics on",
                    ));
                }
            }
        }
        Some(_) => {
            p.push(crate::policy::problem(&format!("{path}.exporters.prometheus"), "must be a list of exporters"))
        }
    }
    p
}

/// Serves `GET /metrics` from whichever runtime is current, until the process ends.
pub async fn serve_prometheus(listener: tokio::net::TcpListener, runtime: crate::runtime::Shared) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let runtime = runtime.clone();
        let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let runtime = runtime.load_full();
            async move {
                let mut response = if request.uri().path() == "/metrics" {
                    let mut r =
                        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(runtime.metrics_text())));
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    r
                } else {
                    http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"404 page not found")))
                };
                if request.uri().path() != "/metrics" {
                    *response.status_mut() = http::StatusCode::NOT_FOUND;
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
