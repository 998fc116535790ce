//! OTLP's protobuf encoding, for exporters that speak OTLP over gRPC (KrakenD's default
//! when `use_http` is not set).
//!
//! The exporters build each request in the OTLP/JSON form; this module writes the same
//! request as protobuf, led by a table of the OTLP messages Weir sends (field names as
//! OTLP/JSON spells them, field numbers and types from the `opentelemetry-proto`
//! definitions). OTLP/JSON differs from protobuf's canonical JSON in two ways, both
//! handled here: trace and span ids are hex, not base64, and enums are numbers.

use serde_json::{Map, Value};

/// How a field is written on the wire.
#[derive(Clone, Copy)]
enum Kind {
    /// `string`.
    Str,
    /// `bool`, `enum` and `uint32`: a varint from a JSON bool or number.
    Varint,
    /// `int64` as a varint; a decimal string (or a number) in JSON.
    Int64,
    /// `fixed64`; a decimal string (or a number) in JSON.
    Fixed64,
    /// `sfixed64`; a decimal string (or a number) in JSON.
    SFixed64,
    /// `fixed32`.
    Fixed32,
    /// `double`.
    Double,
    /// `bytes` written as hex in OTLP/JSON: trace and span ids.
    HexBytes,
    /// A nested message.
    Message(&'static [Field]),
}

impl Kind {
    /// Repeated fields of these kinds are packed, as proto3 writes them.
    fn packed(self) -> bool {
        matches!(self, Kind::Varint | Kind::Int64 | Kind::Fixed64 | Kind::SFixed64 | Kind::Fixed32 | Kind::Double)
    }
}

struct Field {
    json: &'static str,
    number: u32,
    kind: Kind,
}

const fn f(json: &'static str, number: u32, kind: Kind) -> Field {
    Field { json, number, kind }
}

// opentelemetry/proto/common/v1/common.proto
static ANY_VALUE: [Field; 6] = [
    f("stringValue", 1, Kind::Str),
    f("boolValue", 2, Kind::Varint),
    f("intValue", 3, Kind::Int64),
    f("doubleValue", 4, Kind::Double),
    f("arrayValue", 5, Kind::Message(&ARRAY_VALUE)),
    f("kvlistValue", 6, Kind::Message(&KEY_VALUE_LIST)),
];
static ARRAY_VALUE: [Field; 1] = [f("values", 1, Kind::Message(&ANY_VALUE))];
static KEY_VALUE_LIST: [Field; 1] = [f("values", 1, Kind::Message(&KEY_VALUE))];
static KEY_VALUE: [Field; 2] = [f("key", 1, Kind::Str), f("value", 2, Kind::Message(&ANY_VALUE))];
static SCOPE: [Field; 4] = [
    f("name", 1, Kind::Str),
    f("version", 2, Kind::Str),
    f("attributes", 3, Kind::Message(&KEY_VALUE)),
    f("droppedAttributesCount", 4, Kind::Varint),
];
// opentelemetry/proto/resource/v1/resource.proto
static RESOURCE: [Field; 2] =
    [f("attributes", 1, Kind::Message(&KEY_VALUE)), f("droppedAttributesCount", 2, Kind::Varint)];

// opentelemetry/proto/metrics/v1/metrics.proto
static RESOURCE_METRICS: [Field; 3] = [
    f("resource", 1, Kind::Message(&RESOURCE)),
    f("scopeMetrics", 2, Kind::Message(&SCOPE_METRICS)),
    f("schemaUrl", 3, Kind::Str),
];
static SCOPE_METRICS: [Field; 3] =
    [f("scope", 1, Kind::Message(&SCOPE)), f("metrics", 2, Kind::Message(&METRIC)), f("schemaUrl", 3, Kind::Str)];
static METRIC: [Field; 6] = [
    f("name", 1, Kind::Str),
    f("description", 2, Kind::Str),
    f("unit", 3, Kind::Str),
    f("gauge", 5, Kind::Message(&GAUGE)),
    f("sum", 7, Kind::Message(&SUM)),
    f("histogram", 9, Kind::Message(&HISTOGRAM)),
];
static GAUGE: [Field; 1] = [f("dataPoints", 1, Kind::Message(&NUMBER_POINT))];
static SUM: [Field; 3] = [
    f("dataPoints", 1, Kind::Message(&NUMBER_POINT)),
    f("aggregationTemporality", 2, Kind::Varint),
    f("isMonotonic", 3, Kind::Varint),
];
static HISTOGRAM: [Field; 2] =
    [f("dataPoints", 1, Kind::Message(&HISTOGRAM_POINT)), f("aggregationTemporality", 2, Kind::Varint)];
static NUMBER_POINT: [Field; 6] = [
    f("startTimeUnixNano", 2, Kind::Fixed64),
    f("timeUnixNano", 3, Kind::Fixed64),
    f("asDouble", 4, Kind::Double),
    f("asInt", 6, Kind::SFixed64),
    f("attributes", 7, Kind::Message(&KEY_VALUE)),
    f("flags", 8, Kind::Varint),
];
static HISTOGRAM_POINT: [Field; 10] = [
    f("startTimeUnixNano", 2, Kind::Fixed64),
    f("timeUnixNano", 3, Kind::Fixed64),
    f("count", 4, Kind::Fixed64),
    f("sum", 5, Kind::Double),
    f("bucketCounts", 6, Kind::Fixed64),
    f("explicitBounds", 7, Kind::Double),
    f("attributes", 9, Kind::Message(&KEY_VALUE)),
    f("flags", 10, Kind::Varint),
    f("min", 11, Kind::Double),
    f("max", 12, Kind::Double),
];

// opentelemetry/proto/trace/v1/trace.proto
static RESOURCE_SPANS: [Field; 3] = [
    f("resource", 1, Kind::Message(&RESOURCE)),
    f("scopeSpans", 2, Kind::Message(&SCOPE_SPANS)),
    f("schemaUrl", 3, Kind::Str),
];
static SCOPE_SPANS: [Field; 3] =
    [f("scope", 1, Kind::Message(&SCOPE)), f("spans", 2, Kind::Message(&SPAN)), f("schemaUrl", 3, Kind::Str)];
static SPAN: [Field; 12] = [
    f("traceId", 1, Kind::HexBytes),
    f("spanId", 2, Kind::HexBytes),
    f("traceState", 3, Kind::Str),
    f("parentSpanId", 4, Kind::HexBytes),
    f("name", 5, Kind::Str),
    f("kind", 6, Kind::Varint),
    f("startTimeUnixNano", 7, Kind::Fixed64),
    f("endTimeUnixNano", 8, Kind::Fixed64),
    f("attributes", 9, Kind::Message(&KEY_VALUE)),
    f("droppedAttributesCount", 10, Kind::Varint),
    f("status", 15, Kind::Message(&STATUS)),
    f("flags", 16, Kind::Fixed32),
];
static STATUS: [Field; 2] = [f("message", 2, Kind::Str), f("code", 3, Kind::Varint)];

// opentelemetry/proto/collector/{metrics,trace}/v1/*_service.proto
static EXPORT_METRICS: [Field; 1] = [f("resourceMetrics", 1, Kind::Message(&RESOURCE_METRICS))];
static EXPORT_TRACES: [Field; 1] = [f("resourceSpans", 1, Kind::Message(&RESOURCE_SPANS))];

/// The kind of data an export carries: it picks the request message and the gRPC method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Metrics,
    Traces,
}

impl Signal {
    /// The gRPC method that takes this signal's export request.
    pub fn grpc_path(self) -> &'static str {
        match self {
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        }
    }

    /// The OTLP/HTTP path.
    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Metrics => "/v1/metrics",
            Signal::Traces => "/v1/traces",
        }
    }
}

/// Writes an `ExportMetricsServiceRequest` or `ExportTraceServiceRequest`, given in its
/// OTLP/JSON form, as protobuf. An error names the JSON path that does not fit the message.
pub fn encode(signal: Signal, export: &Value) -> Result<Vec<u8>, String> {
    let fields: &[Field] = match signal {
        Signal::Metrics => &EXPORT_METRICS,
        Signal::Traces => &EXPORT_TRACES,
    };
    let object = export.as_object().ok_or("the export is not a JSON object")?;
    let mut out = Vec::with_capacity(1024);
    message(&mut out, fields, object, "")?;
    Ok(out)
}

/// Writes the fields of `object` in field-number order (the tables' order), as protobuf
/// encoders do; a key the message does not have is an error.
fn message(out: &mut Vec<u8>, fields: &[Field], object: &Map<String, Value>, path: &str) -> Result<(), String> {
    if let Some(key) = object.keys().find(|k| !fields.iter().any(|f| f.json == k.as_str())) {
        return Err(format!("{path}.{key}: not an OTLP field here"));
    }
    for field in fields {
        let Some(value) = object.get(field.json) else { continue };
        let at = || format!("{path}.{}", field.json);
        match value {
            Value::Null => {}
            Value::Array(items) if field.kind.packed() => {
                let mut packed = Vec::with_capacity(items.len() * 8);
                for (i, item) in items.iter().enumerate() {
                    scalar(&mut packed, field.kind, item).map_err(|e| format!("{}[{i}]: {e}", at()))?;
                }
                tag(out, field.number, LENGTH_DELIMITED);
                length_delimited(out, &packed);
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    one(out, field, item, &format!("{}[{i}]", at()))?;
                }
            }
            value => one(out, field, value, &at())?,
        }
    }
    Ok(())
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LENGTH_DELIMITED: u8 = 2;
const FIXED32: u8 = 5;

fn wire_type(kind: Kind) -> u8 {
    match kind {
        Kind::Varint | Kind::Int64 => VARINT,
        Kind::Fixed64 | Kind::SFixed64 | Kind::Double => FIXED64,
        Kind::Fixed32 => FIXED32,
        Kind::Str | Kind::HexBytes | Kind::Message(_) => LENGTH_DELIMITED,
    }
}

/// One (non-packed) occurrence of `field`.
fn one(out: &mut Vec<u8>, field: &Field, value: &Value, path: &str) -> Result<(), String> {
    tag(out, field.number, wire_type(field.kind));
    match field.kind {
        Kind::Str => {
            let s = value.as_str().ok_or_else(|| format!("{path}: expected a string"))?;
            length_delimited(out, s.as_bytes());
        }
        Kind::HexBytes => {
            let s = value.as_str().ok_or_else(|| format!("{path}: expected a hex string"))?;
            length_delimited(out, &hex(s).ok_or_else(|| format!("{path}: not hex"))?);
        }
        Kind::Message(fields) => {
            let object = value.as_object().ok_or_else(|| format!("{path}: expected an object"))?;
            let mut inner = Vec::new();
            message(&mut inner, fields, object, path)?;
            length_delimited(out, &inner);
        }
        kind => scalar(out, kind, value).map_err(|e| format!("{path}: {e}"))?,
    }
    Ok(())
}

/// A number's bytes, without the tag.
fn scalar(out: &mut Vec<u8>, kind: Kind, value: &Value) -> Result<(), &'static str> {
    match kind {
        Kind::Varint => varint(
            out,
            value.as_bool().map(u64::from).or_else(|| value.as_u64()).ok_or("expected a bool or an unsigned number")?,
        ),
        Kind::Int64 => varint(out, u64::from_ne_bytes(signed(value)?.to_ne_bytes())),
        Kind::Fixed64 => out.extend_from_slice(&unsigned(value)?.to_le_bytes()),
        Kind::SFixed64 => out.extend_from_slice(&signed(value)?.to_le_bytes()),
        Kind::Fixed32 => out.extend_from_slice(
            &u32::try_from(value.as_u64().ok_or("expected an unsigned number")?)
                .map_err(|_| "out of range for fixed32")?
                .to_le_bytes(),
        ),
        Kind::Double => out.extend_from_slice(&double(value)?.to_le_bytes()),
        Kind::Str | Kind::HexBytes | Kind::Message(_) => return Err("not a number field"),
    }
    Ok(())
}

/// OTLP/JSON writes 64-bit integers as decimal strings; numbers are read too.
fn unsigned(value: &Value) -> Result<u64, &'static str> {
    match value {
        Value::String(s) => s.parse().map_err(|_| "expected an unsigned integer"),
        v => v.as_u64().ok_or("expected an unsigned integer"),
    }
}

fn signed(value: &Value) -> Result<i64, &'static str> {
    match value {
        Value::String(s) => s.parse().map_err(|_| "expected an integer"),
        v => v.as_i64().ok_or("expected an integer"),
    }
}

/// Doubles are numbers, or the strings protobuf's JSON uses for the non-finite ones.
fn double(value: &Value) -> Result<f64, &'static str> {
    match value {
        Value::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            s => s.parse().map_err(|_| "expected a number"),
        },
        v => v.as_f64().ok_or("expected a number"),
    }
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn tag(out: &mut Vec<u8>, number: u32, wire: u8) {
    varint(out, (u64::from(number) << 3) | u64::from(wire));
}

fn length_delimited(out: &mut Vec<u8>, bytes: &[u8]) {
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        // Truncation intended: the low seven bits, with the continuation bit.
        #[allow(clippy::cast_possible_truncation)]
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    #[allow(clippy::cast_possible_truncation)]
    out.push(n as u8);
}

/// One gRPC message as it goes in a request body: uncompressed flag, big-endian length,
/// then the message.
pub fn grpc_frame(message: &[u8]) -> Result<Vec<u8>, String> {
    let len = u32::try_from(message.len()).map_err(|_| "an export larger than 4 GiB".to_owned())?;
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    Ok(framed)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn varints_and_tags_follow_the_wire_format() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        out.clear();
        varint(&mut out, u64::MAX);
        assert_eq!(out.len(), 10);
        out.clear();
        // Field 9, length-delimited.
        tag(&mut out, 9, LENGTH_DELIMITED);
        assert_eq!(out, [0x4a]);
        out.clear();
        // Field 16 needs two bytes.
        tag(&mut out, 16, FIXED32);
        assert_eq!(out, [0x85, 0x01]);
    }

    #[test]
    fn a_span_is_written_field_by_field() {
        let export = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
            "traceId": "0102", "spanId": "ff", "name": "GET /x", "kind": 2,
            "startTimeUnixNano": "1", "status": {"code": 1}}]}]}]});
        let bytes = encode(Signal::Traces, &export).unwrap();
        let span = [
            0x0a, 2, 0x01, 0x02, // traceId
            0x12, 1, 0xff, // spanId
            0x2a, 6, b'G', b'E', b'T', b' ', b'/', b'x', // name
            0x30, 2, // kind
            0x39, 1, 0, 0, 0, 0, 0, 0, 0, // startTimeUnixNano, fixed64
            0x7a, 2, 0x18, 1, // status { code }
        ];
        let mut expected = vec![0x0a, 0, 0x12, 0, 0x12];
        expected.push(u8::try_from(span.len()).unwrap());
        expected.extend_from_slice(&span);
        // The lengths of the enclosing messages.
        expected[3] = u8::try_from(expected.len() - 4).unwrap();
        expected[1] = u8::try_from(expected.len() - 2).unwrap();
        assert_eq!(bytes, expected);
    }

    #[test]
    fn repeated_numbers_are_packed_and_64_bit_strings_read() {
        let export = json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"histogram": {"dataPoints": [{
            "count": "3", "bucketCounts": ["1", "2"], "explicitBounds": [0.5]}]}}]}]}]});
        let bytes = encode(Signal::Metrics, &export).unwrap();
        let tail = [
            0x21, 3, 0, 0, 0, 0, 0, 0, 0, // count
            0x32, 16, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, // bucketCounts, packed
            0x3a, 8, 0, 0, 0, 0, 0, 0, 0xe0, 0x3f, // explicitBounds: 0.5
        ];
        assert!(bytes.ends_with(&tail), "{bytes:02x?}");
    }

    /// Any JSON value, for the places where a field holds the wrong kind of thing.
    fn any_leaf() -> proptest::strategy::BoxedStrategy<Value> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            "[0-9a-fA-F]{0,6}|-?[0-9]{1,25}|NaN|-Infinity|\\PC{0,8}".prop_map(Value::String),
            Just(Value::Array(vec![Value::from(1)])),
            Just(serde_json::json!({"unknown": 1})),
        ]
        .boxed()
    }

    /// A value for `kind`: mostly of the right form, sometimes anything at all.
    fn value_of(kind: Kind, depth: u32) -> proptest::strategy::BoxedStrategy<Value> {
        use proptest::prelude::*;
        let right = match kind {
            Kind::Str => "\\PC{0,12}".prop_map(Value::String).boxed(),
            Kind::HexBytes => "([0-9a-f]{2}){0,16}|[0-9a-z]{0,5}".prop_map(Value::String).boxed(),
            Kind::Varint | Kind::Fixed32 => any::<u32>().prop_map(Value::from).boxed(),
            Kind::Int64 | Kind::Fixed64 | Kind::SFixed64 => {
                any::<i64>().prop_map(|n| Value::String(n.to_string())).boxed()
            }
            Kind::Double => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from).boxed(),
            Kind::Message(fields) if depth < 5 => message_of(fields, depth + 1),
            Kind::Message(_) => Just(serde_json::json!({})).boxed(),
        };
        let repeated = prop::collection::vec(right.clone(), 0..3).prop_map(Value::Array);
        prop_oneof![6 => right, 2 => repeated, 1 => any_leaf()].boxed()
    }

    /// An object with a random subset of `fields`.
    fn message_of(fields: &'static [Field], depth: u32) -> proptest::strategy::BoxedStrategy<Value> {
        use proptest::prelude::*;
        let parts: Vec<_> = fields
            .iter()
            .map(|f| proptest::option::weighted(0.6, value_of(f.kind, depth)).prop_map(move |v| (f.json, v)))
            .collect();
        parts
            .prop_map(|chosen| {
                Value::Object(chosen.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v))).collect())
            })
            .boxed()
    }

    proptest::proptest! {
        /// Whatever an export holds, encoding gives bytes or an error naming a path, never
        /// a panic.
        #[test]
        fn any_export_encodes_or_is_refused(
            metrics in message_of(&EXPORT_METRICS, 0),
            traces in message_of(&EXPORT_TRACES, 0),
        ) {
            for (signal, export) in [(Signal::Metrics, &metrics), (Signal::Traces, &traces)] {
                if let Err(e) = encode(signal, export) {
                    proptest::prop_assert!(e.starts_with('.'), "{e}");
                }
            }
        }
    }

    #[test]
    fn fields_outside_the_messages_are_refused_with_their_path() {
        let err =
            encode(Signal::Metrics, &json!({"resourceMetrics": [{"scopeMetrics": [{"metricz": []}]}]})).unwrap_err();
        assert_eq!(err, ".resourceMetrics[0].scopeMetrics[0].metricz: not an OTLP field here");
        let err =
            encode(Signal::Traces, &json!({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}))
                .unwrap_err();
        assert!(err.ends_with("traceId: not hex"), "{err}");
    }
}
