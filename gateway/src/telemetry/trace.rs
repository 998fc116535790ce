//! Traces: a server span per endpoint request and a client span per backend call, W3C
//! `traceparent` propagated to backends, sampled at `trace_sample_rate`, and sent as
//! OTLP/HTTP JSON (`POST /v1/traces`) to the collectors that do not set `disable_traces`.
//!
//! The request path only draws ids from a thread-local generator and, for sampled
//! requests, pushes finished spans onto a bounded queue; an exporter task drains it.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

/// The W3C Trace Context header.
pub const TRACEPARENT: http::header::HeaderName = http::header::HeaderName::from_static("traceparent");

/// Finished spans waiting for the exporter beyond this are dropped (and counted).
const QUEUE_LIMIT: usize = 16_384;

/// OTLP span kinds.
const SERVER: u8 = 2;
const CLIENT: u8 = 3;

thread_local! {
    /// splitmix64 state, seeded from the OS once per thread.
    static RANDOM: Cell<u64> = Cell::new({
        let mut seed = [0u8; 8];
        // Without OS randomness the ids are still unique per thread, only predictable.
        let _ = getrandom::getrandom(&mut seed);
        u64::from_le_bytes(seed) ^ (std::ptr::from_ref(&seed) as u64)
    });
}

/// A random 64-bit number (splitmix64): trace and span ids need uniqueness, not secrecy.
fn random() -> u64 {
    RANDOM.with(|state| {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn nonzero_random() -> u64 {
    loop {
        let n = random();
        if n != 0 {
            return n;
        }
    }
}

/// A `traceparent` value: `(trace id, parent span id, sampled)`, or `None` when it is
/// malformed (then the request starts a new trace, as the specification asks).
pub fn parse_traceparent(value: &HeaderValue) -> Option<(u128, u64, bool)> {
    let text = value.to_str().ok()?;
    let mut fields = text.split('-');
    let (version, trace, parent, flags) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
        return None;
    }
    // Version 00 has exactly four fields; later versions may add more after them.
    if version == "00" && fields.next().is_some() {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let parent = u64::from_str_radix(parent, 16).ok().filter(|p| *p != 0)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace, parent, flags & 1 == 1))
}

fn traceparent(trace: u128, span: u64, sampled: bool) -> HeaderValue {
    let mut s = String::with_capacity(55);
    let _ = write!(s, "00-{trace:032x}-{span:016x}-{:02x}", u8::from(sampled));
    // Only hex digits and dashes: always a valid header value.
    HeaderValue::from_str(&s)
        .unwrap_or(HeaderValue::from_static("00-00000000000000000000000000000000-0000000000000000-00"))
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A finished span.
#[derive(Debug, Clone)]
struct Span {
    trace: u128,
    id: u64,
    parent: Option<u64>,
    kind: u8,
    name: String,
    start_ns: u64,
    end_ns: u64,
    attributes: Vec<(&'static str, String)>,
    error: bool,
}

/// Finished spans waiting for the exporter. It outlives config reloads.
#[derive(Debug, Default)]
pub struct SpanQueue {
    spans: std::sync::Mutex<Vec<Span>>,
    dropped: AtomicU64,
}

impl SpanQueue {
    fn push(&self, span: Span) {
        let mut spans = self.spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if spans.len() < QUEUE_LIMIT {
            spans.push(span);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn take(&self) -> Vec<Span> {
        std::mem::take(&mut *self.spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Spans dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// `telemetry/opentelemetry` tracing: the sample rate and where finished spans go.
#[derive(Debug)]
pub struct Tracer {
    rate: f64,
    queue: Arc<SpanQueue>,
}

impl Tracer {
    /// A tracer when the service exports traces to a collector: an `exporters.otlp[]`
    /// entry with `use_http` and without `disable_traces`. `trace_sample_rate` defaults
    /// to 1 (KrakenD's default). `previous` keeps the queue across reloads.
    pub fn from_service(extra: &serde_json::Map<String, Value>, previous: Option<&Arc<Tracer>>) -> Option<Arc<Tracer>> {
        let otel = extra.get("telemetry/opentelemetry")?;
        if super::otlp::collectors(extra).trace_urls.is_empty() {
            return None;
        }
        let rate = otel.get("trace_sample_rate").and_then(Value::as_f64).unwrap_or(1.0).clamp(0.0, 1.0);
        let queue = previous.map(|p| p.queue.clone()).unwrap_or_default();
        Some(Arc::new(Tracer { rate, queue }))
    }

    pub fn queue(&self) -> &Arc<SpanQueue> {
        &self.queue
    }

    /// The trace context of a request: continues the caller's trace (and its sampling
    /// decision) when it sent a valid `traceparent`, else starts one, sampled at the rate.
    pub fn start(&self, headers: &HeaderMap) -> TraceContext {
        let parent = headers.get(TRACEPARENT).and_then(parse_traceparent);
        let (trace, parent, sampled) = match parent {
            Some((trace, parent, sampled)) => (trace, Some(parent), sampled),
            None => {
                #[allow(clippy::cast_precision_loss)]
                let sampled = self.rate >= 1.0 || (random() as f64) < self.rate * (u64::MAX as f64);
                let trace = (u128::from(nonzero_random()) << 64) | u128::from(random());
                (trace, None, sampled)
            }
        };
        TraceContext {
            trace,
            span: nonzero_random(),
            parent,
            sampled,
            start: SystemTime::now(),
            queue: self.queue.clone(),
        }
    }
}

/// The trace of one request being served.
#[derive(Debug)]
pub struct TraceContext {
    trace: u128,
    /// The server span's id.
    span: u64,
    parent: Option<u64>,
    sampled: bool,
    start: SystemTime,
    queue: Arc<SpanQueue>,
}

impl TraceContext {
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// Starts a backend call: its span id goes to the backend in `traceparent`.
    pub fn client_span(&self) -> ClientSpan<'_> {
        ClientSpan { context: self, id: nonzero_random(), start: SystemTime::now() }
    }

    /// Ends the server span (only a sampled one is kept).
    pub fn finish(self, method: &http::Method, route: &str, status: u16) {
        if !self.sampled {
            return;
        }
        self.queue.push(Span {
            trace: self.trace,
            id: self.span,
            parent: self.parent,
            kind: SERVER,
            name: format!("{method} {route}"),
            start_ns: unix_nanos(self.start),
            end_ns: unix_nanos(SystemTime::now()),
            attributes: vec![
                ("http.request.method", method.to_string()),
                ("http.route", route.to_owned()),
                ("http.response.status_code", status.to_string()),
            ],
            error: status >= 500,
        });
    }
}

/// One backend call of a traced request.
pub struct ClientSpan<'a> {
    context: &'a TraceContext,
    id: u64,
    start: SystemTime,
}

impl ClientSpan<'_> {
    /// The `traceparent` to send to the backend: this call is the parent of its work.
    pub fn traceparent(&self) -> HeaderValue {
        traceparent(self.context.trace, self.id, self.context.sampled)
    }

    /// Ends the span: `status` is the backend's answer, `None` when it gave none.
    pub fn finish(self, method: &http::Method, url: &http::Uri, status: Option<u16>) {
        if !self.context.sampled {
            return;
        }
        let mut attributes = vec![("http.request.method", method.to_string()), ("url.full", url.to_string())];
        if let Some(host) = url.host() {
            attributes.push(("server.address", host.to_owned()));
        }
        if let Some(status) = status {
            attributes.push(("http.response.status_code", status.to_string()));
        }
        self.context.queue.push(Span {
            trace: self.context.trace,
            id: self.id,
            parent: Some(self.context.span),
            kind: CLIENT,
            name: method.to_string(),
            start_ns: unix_nanos(self.start),
            end_ns: unix_nanos(SystemTime::now()),
            attributes,
            error: status.is_none_or(|s| s >= 500),
        });
    }
}

/// The OTLP/HTTP JSON body (`ExportTraceServiceRequest`) of `spans`.
fn export_json(spans: &[Span], resource: &[(&str, String)]) -> String {
    let attribute = |k: &str, v: &str| json!({"key": k, "value": {"stringValue": v}});
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut span = json!({
                // OTLP's JSON encoding writes ids as hex, not base64.
                "traceId": format!("{:032x}", s.trace),
                "spanId": format!("{:016x}", s.id),
                "name": s.name,
                "kind": s.kind,
                "startTimeUnixNano": s.start_ns.to_string(),
                "endTimeUnixNano": s.end_ns.to_string(),
                "attributes": s.attributes.iter().map(|(k, v)| attribute(k, v)).collect::<Vec<_>>(),
                // 1 ok, 2 error.
                "status": {"code": if s.error { 2 } else { 1 }},
            });
            if let Some(parent) = s.parent {
                span["parentSpanId"] = json!(format!("{parent:016x}"));
            }
            span
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": resource.iter().map(|(k, v)| attribute(k, v)).collect::<Vec<_>>()},
        "scopeSpans": [{"scope": {"name": "weir", "version": crate::VERSION}, "spans": spans}],
    }]})
    .to_string()
}

/// How often finished spans are sent.
const EXPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends the current runtime's finished spans to each collector every second, forever.
pub async fn export_to_collectors(urls: Vec<http::Uri>, service_name: String, runtime: crate::runtime::Shared) {
    let Ok(client) = crate::proxy::client::build(1) else { return };
    let resource =
        [("service.name", service_name), ("service.instance.id", crate::node::hostname().unwrap_or_default())];
    let mut tick = tokio::time::interval(EXPORT_EVERY);
    loop {
        tick.tick().await;
        let Some(tracer) = runtime.load_full().tracer().cloned() else { continue };
        let spans = tracer.queue.take();
        if spans.is_empty() {
            continue;
        }
        let body = bytes::Bytes::from(export_json(&spans, &resource));
        for url in &urls {
            let mut request = http::Request::new(http_body_util::Full::new(body.clone()));
            *request.method_mut() = http::Method::POST;
            *request.uri_mut() = url.clone();
            request.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            match tokio::time::timeout(std::time::Duration::from_secs(10), client.request(request)).await {
                Ok(Ok(r)) if r.status().is_success() => {}
                Ok(Ok(r)) => tracing::warn!(%url, status = %r.status(), "OTLP collector refused the spans"),
                Ok(Err(e)) => tracing::warn!(%url, error = %e, "OTLP collector unreachable"),
                Err(_) => tracing::warn!(%url, "OTLP collector did not answer in 10 s"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(rate: f64) -> Tracer {
        Tracer { rate, queue: Arc::default() }
    }

    #[test]
    fn traceparent_is_parsed_strictly() {
        let ok = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(
            parse_traceparent(&ok),
            Some((0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736, 0x00f0_67aa_0ba9_02b7, true))
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(parse_traceparent(&HeaderValue::from_static(bad)), None, "{bad}");
        }
        // A later version may carry more fields.
        let v1 = HeaderValue::from_static("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more");
        assert_eq!(parse_traceparent(&v1).map(|p| p.2), Some(false));
    }

    #[test]
    fn a_caller_trace_is_continued_and_backends_see_the_client_span() {
        let t = tracer(0.0);
        let mut headers = HeaderMap::new();
        headers
            .insert(TRACEPARENT, HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        let ctx = t.start(&headers);
        assert!(ctx.sampled(), "the caller's sampling decision wins over the rate");
        let call = ctx.client_span();
        let sent = call.traceparent();
        let (trace, parent, sampled) = parse_traceparent(&sent).unwrap();
        assert_eq!(trace, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert!(sampled);
        assert_ne!(parent, 0x00f0_67aa_0ba9_02b7, "the backend's parent is the client span");
        call.finish(&http::Method::GET, &"http://db:8080/x".parse().unwrap(), Some(200));
        ctx.finish(&http::Method::GET, "/x", 200);
        let spans = t.queue.take();
        assert_eq!(spans.len(), 2);
        let (client, server) = (&spans[0], &spans[1]);
        assert_eq!(client.id, parent);
        assert_eq!(client.parent, Some(server.id));
        assert_eq!(server.parent, Some(0x00f0_67aa_0ba9_02b7));
        let body: Value = serde_json::from_str(&export_json(&spans, &[("service.name", "weir".into())])).unwrap();
        let exported = &body["resourceSpans"][0]["scopeSpans"][0]["spans"];
        assert_eq!(exported[1]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(exported[1]["kind"], 2);
        assert_eq!(exported[0]["parentSpanId"], exported[1]["spanId"]);
    }

    #[test]
    fn sampling_follows_the_rate_and_unsampled_traces_still_propagate() {
        let none = tracer(0.0);
        let ctx = none.start(&HeaderMap::new());
        assert!(!ctx.sampled());
        assert!(ctx.client_span().traceparent().to_str().unwrap().ends_with("-00"));
        ctx.finish(&http::Method::GET, "/", 200);
        assert!(none.queue.take().is_empty(), "unsampled spans are not kept");
        let half = tracer(0.5);
        let sampled = (0..10_000).filter(|_| half.start(&HeaderMap::new()).sampled()).count();
        assert!((4_000..6_000).contains(&sampled), "{sampled} of 10,000 at rate 0.5");
        let all = tracer(1.0);
        assert!((0..100).all(|_| all.start(&HeaderMap::new()).sampled()));
    }

    #[test]
    fn the_queue_is_bounded() {
        let t = tracer(1.0);
        for _ in 0..QUEUE_LIMIT + 10 {
            t.start(&HeaderMap::new()).finish(&http::Method::GET, "/", 200);
        }
        assert_eq!(t.queue.take().len(), QUEUE_LIMIT);
        assert_eq!(t.queue.dropped(), 10);
    }
}
