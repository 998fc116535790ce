//! The validated config: KrakenD v3 keys, with every default applied.
//!
//! These types are what [`super::parse`] produces once every check passed; they
//! hold no raw JSON except the `extra_config` maps that later components read.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use serde_json::{Map, Value};

/// Default endpoint timeout: KrakenD's, so migrated configs time out alike.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// KrakenD's default backend pool size per host.
pub const DEFAULT_IDLE_PER_HOST: usize = 250;
/// Go's `http.DefaultMaxHeaderBytes` (1 MB), which KrakenD inherits.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 1_000_000;
/// Buffered request and backend bodies above this are refused: large enough for any
/// JSON API, small enough that a hostile peer cannot make a node swap.
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Graceful shutdown waits this long for requests in flight when the config sets no
/// `max_shutdown_wait_time`; a bound keeps a stuck client from blocking a deploy.
pub const DEFAULT_SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// A whole gateway config (the root of `krakend.json`).
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub port: u16,
    pub listen_ip: Option<IpAddr>,
    pub host: Vec<String>,
    pub timeout: Duration,
    pub cache_ttl: Duration,
    pub output_encoding: OutputEncoding,
    pub server: ServerLimits,
    pub max_idle_connections_per_host: usize,
    pub tls: Option<Tls>,
    pub use_h2c: bool,
    pub debug_endpoint: bool,
    pub echo_endpoint: bool,
    pub router: RouterOptions,
    pub endpoints: Vec<Endpoint>,
    pub extra_config: Map<String, Value>,
}

/// Server-side limits and timeouts (`read_timeout`, `max_header_bytes`, ...).
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub read_header_timeout: Option<Duration>,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub max_backend_response_bytes: usize,
    pub shutdown_wait: Duration,
}

/// Server TLS (`tls`).
#[derive(Debug, Clone)]
pub struct Tls {
    pub keys: Vec<KeyPair>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    pub client_ca_certs: Vec<PathBuf>,
    pub enable_mtls: bool,
}

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub public_key: PathBuf,
    pub private_key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// The `router` namespace of the service `extra_config`.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    pub return_error_msg: bool,
    pub health_path: String,
    pub disable_health: bool,
    pub hide_version_header: bool,
    pub auto_options: bool,
    pub disable_redirect_fixed_path: bool,
    pub disable_redirect_trailing_slash: bool,
    pub disable_handle_method_not_allowed: bool,
    pub error_body_404: Option<Value>,
    pub error_body_405: Option<Value>,
    /// No access log even with `telemetry/logging`.
    pub disable_access_log: bool,
    /// Request paths the access log leaves out.
    pub logger_skip_paths: Vec<String>,
}

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            return_error_msg: false,
            health_path: "/__health".into(),
            disable_health: false,
            hide_version_header: false,
            auto_options: false,
            disable_redirect_fixed_path: false,
            disable_redirect_trailing_slash: false,
            disable_handle_method_not_allowed: false,
            error_body_404: None,
            error_body_405: None,
            disable_access_log: false,
            logger_skip_paths: Vec::new(),
        }
    }
}

/// One `endpoints[]` entry: a path and method exposed to clients.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub path: String,
    pub method: Method,
    pub backends: Vec<Backend>,
    pub timeout: Duration,
    pub cache_ttl: Duration,
    pub output_encoding: OutputEncoding,
    pub concurrent_calls: usize,
    pub input_headers: NameFilter,
    pub input_query_strings: NameFilter,
    pub sequential: bool,
    pub static_response: Option<StaticResponse>,
    pub flatmap: Vec<FlatmapOp>,
    /// `proxy.max_payload`: request body limit for this endpoint, in bytes.
    pub max_payload: Option<usize>,
    pub extra_config: Map<String, Value>,
}

/// An allow-list of header or query-string names (`input_headers`, `input_query_strings`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameFilter {
    All,
    Only(Vec<String>),
}

impl NameFilter {
    /// Whether `name` passes; `case_insensitive` is true for headers.
    pub fn allows(&self, name: &str, case_insensitive: bool) -> bool {
        match self {
            NameFilter::All => true,
            NameFilter::Only(names) => {
                names.iter().any(|n| if case_insensitive { n.eq_ignore_ascii_case(name) } else { n == name })
            }
        }
    }
}

/// `proxy.static`: data merged into the response when `strategy` matches.
#[derive(Debug, Clone)]
pub struct StaticResponse {
    pub strategy: StaticStrategy,
    pub data: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticStrategy {
    Always,
    Success,
    Errored,
    Complete,
    Incomplete,
}

/// One `backend[]` entry.
#[derive(Debug, Clone)]
pub struct Backend {
    pub url_pattern: String,
    pub host: Vec<String>,
    pub method: Method,
    pub encoding: BackendEncoding,
    pub is_collection: bool,
    pub target: Option<String>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub mapping: Vec<(String, String)>,
    pub group: Option<String>,
    pub input_headers: Option<NameFilter>,
    pub input_query_strings: Option<NameFilter>,
    pub flatmap: Vec<FlatmapOp>,
    pub return_error_code: bool,
    pub return_error_details: Option<String>,
    pub follow_redirects: bool,
    pub extra_config: Map<String, Value>,
}

/// One `flatmap_filter` operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlatmapOp {
    Move { from: String, to: String },
    Del { path: String },
    Append { from: String, to: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendEncoding {
    Json,
    SafeJson,
    String,
    NoOp,
    Xml,
    Yaml,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputEncoding {
    Json,
    JsonCollection,
    String,
    Xml,
    Yaml,
    Negotiate,
    NoOp,
}
