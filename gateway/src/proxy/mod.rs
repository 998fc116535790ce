//! Calling backends and shaping what they return.

pub mod backend;
pub mod client;
pub mod decode;
pub mod flatmap;
pub mod h1;
pub mod pipeline;
pub mod render;
pub mod shape;
pub mod spans;
pub mod upstream;
pub mod url;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// A backend body streamed through (`no-op`): from hyper's pooled client (HTTPS), or
/// from a connection the request drives itself (plain HTTP).
pub type Streaming = Either<Incoming, upstream::Streamed>;

/// A response body: built in memory, or a backend body streamed through (`no-op`).
pub type Body = Either<Full<Bytes>, Streaming>;

/// A body held in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Left(Full::new(bytes.into()))
}
