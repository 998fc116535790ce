//! Traces: a server span per endpoint request and a client span per backend call, W3C
//! `traceparent` propagated to backends, sampled at `trace_sample_rate`, and sent as
//! OTLP/HTTP JSON (`POST /v1/traces`) or over gRPC to the collectors that do not set
//! `disable_traces`.
//!
//! The request path only draws ids from a thread-local generator and, for sampled
//! requests, pushes finished spans onto a bounded queue; an exporter task drains it.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use serde_json::Value;

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
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // `00-<32 hex trace>-<16 hex span>-<2 hex flags>`, written without the formatter: this
    // runs for every backend call of a traced service.
    let mut out = [b'-'; 55];
    out[..2].copy_from_slice(b"00");
    for i in 0..32 {
        out[3 + i] = HEX[((trace >> (124 - 4 * i)) & 0xf) as usize];
    }
    for i in 0..16 {
        out[36 + i] = HEX[((span >> (60 - 4 * i)) & 0xf) as usize];
    }
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
    // Only hex digits and dashes: always a valid header value.
    HeaderValue::from_bytes(&out)
        .unwrap_or(HeaderValue::from_static("00-00000000000000000000000000000000-0000000000000000-00"))
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A finished span, kept as plain values: the exporter writes the JSON.
#[derive(Debug, Clone)]
struct Span {
    trace: u128,
    id: u64,
    parent: Option<u64>,
    kind: u8,
    method: http::Method,
    /// The endpoint (server spans).
    endpoint: Option<Arc<super::EndpointStats>>,
    /// The backend URL (client spans).
    url: Option<http::Uri>,
    /// The answer's status; none when the backend gave none.
    status: Option<u16>,
    start_ns: u64,
    end_ns: u64,
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
    /// entry without `disable_traces`. `trace_sample_rate` defaults
    /// to 1 (KrakenD's default). `previous` keeps the queue across reloads.
    pub fn from_service(extra: &serde_json::Map<String, Value>, previous: Option<&Arc<Tracer>>) -> Option<Arc<Tracer>> {
        let otel = extra.get("telemetry/opentelemetry")?;
        if super::otlp::collectors(extra).traces.is_empty() {
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
    pub fn start(&self, headers: &HeaderMap) -> TraceContext<'_> {
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
            // Only a sampled span needs its start time.
            start: if sampled { SystemTime::now() } else { UNIX_EPOCH },
            queue: &self.queue,
        }
    }
}

/// The trace of one request being served (it borrows the runtime's tracer).
#[derive(Debug)]
pub struct TraceContext<'a> {
    trace: u128,
    /// The server span's id.
    span: u64,
    parent: Option<u64>,
    sampled: bool,
    start: SystemTime,
    queue: &'a SpanQueue,
}

impl TraceContext<'_> {
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// Starts a backend call: its span id goes to the backend in `traceparent`.
    pub fn client_span(&self) -> ClientSpan<'_> {
        let start = if self.sampled { SystemTime::now() } else { UNIX_EPOCH };
        ClientSpan { context: self, id: nonzero_random(), start }
    }

    /// Ends the server span of `endpoint` (only a sampled one is kept).
    pub fn finish(self, method: &http::Method, endpoint: &Arc<super::EndpointStats>, status: u16) {
        if !self.sampled {
            return;
        }
        self.queue.push(Span {
            trace: self.trace,
            id: self.span,
            parent: self.parent,
            kind: SERVER,
            method: method.clone(),
            endpoint: Some(endpoint.clone()),
            url: None,
            status: Some(status),
            start_ns: unix_nanos(self.start),
            end_ns: unix_nanos(SystemTime::now()),
        });
    }
}

/// One backend call of a traced request.
pub struct ClientSpan<'a> {
    context: &'a TraceContext<'a>,
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
        self.context.queue.push(Span {
            trace: self.context.trace,
            id: self.id,
            parent: Some(self.context.span),
            kind: CLIENT,
            method: method.clone(),
            endpoint: None,
            url: Some(url.clone()),
            status,
            start_ns: unix_nanos(self.start),
            end_ns: unix_nanos(SystemTime::now()),
        });
    }
}

/// Writes `s` as a JSON string.
fn json_string(out: &mut String, s: &str) {
    // Serializing a string cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned()));
}

fn json_attribute(out: &mut String, first: &mut bool, key: &str, value: &str) {
    if !std::mem::take(first) {
        out.push(',');
    }
    let _ = write!(out, "{{\"key\":\"{key}\",\"value\":{{\"stringValue\":");
    json_string(out, value);
    out.push_str("}}");
}

/// The OTLP/HTTP JSON body (`ExportTraceServiceRequest`) of `spans`, written directly
/// (a `serde_json::Value` tree of thousands of spans costs more than the spans).
fn export_json(spans: &[Span], resource: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(256 + spans.len() * 400);
    out.push_str("{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    let mut first = true;
    for (k, v) in resource {
        json_attribute(&mut out, &mut first, k, v);
    }
    let _ = write!(
        out,
        "]}},\"scopeSpans\":[{{\"scope\":{{\"name\":\"weir\",\"version\":\"{}\"}},\"spans\":[",
        crate::VERSION
    );
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // OTLP's JSON encoding writes ids as hex, not base64, and 64-bit integers as strings.
        let _ = write!(out, "{{\"traceId\":\"{:032x}\",\"spanId\":\"{:016x}\",", s.trace, s.id);
        if let Some(parent) = s.parent {
            let _ = write!(out, "\"parentSpanId\":\"{parent:016x}\",");
        }
        out.push_str("\"name\":");
        match &s.endpoint {
            Some(e) => json_string(&mut out, &format!("{} {}", s.method, e.route())),
            None => json_string(&mut out, s.method.as_str()),
        }
        let _ = write!(
            out,
            ",\"kind\":{},\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{}\",\"attributes\":[",
            s.kind, s.start_ns, s.end_ns
        );
        let mut first = true;
        json_attribute(&mut out, &mut first, "http.request.method", s.method.as_str());
        if let Some(e) = &s.endpoint {
            json_attribute(&mut out, &mut first, "http.route", e.route());
        }
        if let Some(url) = &s.url {
            json_attribute(&mut out, &mut first, "url.full", &url.to_string());
            if let Some(host) = url.host() {
                json_attribute(&mut out, &mut first, "server.address", host);
            }
        }
        if let Some(status) = s.status {
            json_attribute(&mut out, &mut first, "http.response.status_code", &status.to_string());
        }
        // 1 ok, 2 error: a 5xx, or no answer at all.
        let error = s.status.is_none_or(|status| status >= 500);
        let _ = write!(out, "],\"status\":{{\"code\":{}}}}}", if error { 2 } else { 1 });
    }
    out.push_str("]}]}]}");
    out
}

/// How often finished spans are sent, and at most how many in one request.
const EXPORT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
const SPANS_PER_EXPORT: usize = 2_048;

/// Sends the current runtime's finished spans to each collector, forever. Encoding runs on
/// a blocking thread, so a large batch never holds up the requests of this worker.
pub async fn export_to_collectors(
    targets: Vec<super::otlp::Target>,
    service_name: String,
    runtime: crate::runtime::Shared,
) {
    use super::otlp::{Payload, Protocol};
    use super::otlp_proto::Signal;
    let Some(sender) = super::otlp::Sender::new() else { return };
    let grpc = targets.iter().any(|t| t.protocol == Protocol::Grpc);
    let resource = Arc::new([
        ("service.name", service_name),
        ("service.instance.id", crate::node::hostname().unwrap_or_default()),
    ]);
    let mut tick = tokio::time::interval(EXPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(tracer) = runtime.load_full().tracer().cloned() else { continue };
        let spans = tracer.queue.take();
        for batch in spans.chunks(SPANS_PER_EXPORT) {
            let batch = batch.to_vec();
            let resource = resource.clone();
            let encode = move || Payload::new(Signal::Traces, export_json(&batch, &*resource), grpc);
            let Ok(payload) = tokio::task::spawn_blocking(encode).await else {
                continue;
            };
            for target in &targets {
                sender.send(target, Signal::Traces, &payload).await;
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

    fn endpoint(route: &str) -> Arc<crate::telemetry::EndpointStats> {
        Arc::new(crate::telemetry::EndpointStats::new(route, "GET"))
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
        ctx.finish(&http::Method::GET, &endpoint("/x"), 200);
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
        assert_eq!(exported[1]["name"], "GET /x");
        assert_eq!(exported[1]["status"]["code"], 1);
        assert_eq!(exported[0]["parentSpanId"], exported[1]["spanId"]);
        assert_eq!(exported[0]["attributes"][1]["value"]["stringValue"], "http://db:8080/x");
        assert_eq!(exported[0]["attributes"][2]["value"]["stringValue"], "db");
    }

    #[test]
    fn sampling_follows_the_rate_and_unsampled_traces_still_propagate() {
        let none = tracer(0.0);
        let ctx = none.start(&HeaderMap::new());
        assert!(!ctx.sampled());
        assert!(ctx.client_span().traceparent().to_str().unwrap().ends_with("-00"));
        ctx.finish(&http::Method::GET, &endpoint("/"), 200);
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
            t.start(&HeaderMap::new()).finish(&http::Method::GET, &endpoint("/"), 200);
        }
        assert_eq!(t.queue.take().len(), QUEUE_LIMIT);
        assert_eq!(t.queue.dropped(), 10);
        // The drop count is a metric, in OTLP and Prometheus.
        let registry = crate::telemetry::Registry { spans: Some(t.queue.clone()), ..Default::default() };
        assert!(registry.render().contains("\nweir_spans_dropped_total 10\n"));
        let body: Value =
            serde_json::from_str(&super::super::otlp::export_json(&registry, &[], SystemTime::now())).unwrap();
        let metrics = body["resourceMetrics"][0]["scopeMetrics"][0]["metrics"].as_array().unwrap();
        let dropped = metrics.iter().find(|m| m["name"] == super::super::otlp::SPANS_DROPPED_METRIC).unwrap();
        assert_eq!(dropped["sum"]["dataPoints"][0]["asInt"], "10");
    }
}
