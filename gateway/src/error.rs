//! The gateway's one error type: what failed, on which side, and whether a retry
//! could help. Context strings are static so that creating an error allocates only
//! when there is a detail worth keeping.

use std::fmt;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No connection to the backend (refused, reset, DNS, TLS).
    Connect,
    /// A deadline passed: the endpoint timeout or a server limit.
    Timeout,
    /// The backend answered with a status that does not count as success.
    Status,
    /// The backend body could not be decoded with the configured encoding.
    Decode,
    /// A body was larger than its configured limit.
    TooLarge,
    /// Reading or writing a body failed half-way.
    Io,
    /// Too many redirects, or a redirect to somewhere unusable.
    Redirect,
    /// The backend was not called: its circuit breaker is open or its rate limit spent.
    Unavailable,
}

/// Which peer the failure concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A backend.
    Upstream,
    /// The client.
    Downstream,
}

/// A failure on the request path.
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub side: Side,
    pub context: &'static str,
    pub detail: Option<Box<str>>,
}

impl Error {
    pub fn upstream(kind: ErrorKind, context: &'static str) -> Self {
        Self { kind, side: Side::Upstream, context, detail: None }
    }

    pub fn with_detail(mut self, detail: impl fmt::Display) -> Self {
        self.detail = Some(detail.to_string().into());
        self
    }

    /// Whether sending the same request again could succeed (nothing reached the backend).
    pub fn retryable(&self) -> bool {
        self.kind == ErrorKind::Connect
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{}: {d}", self.context),
            None => f.write_str(self.context),
        }
    }
}

impl std::error::Error for Error {}
