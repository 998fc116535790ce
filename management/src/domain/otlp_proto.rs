//! OTLP/HTTP exports in protobuf (`application/x-protobuf`, the OpenTelemetry Collector's
//! default), read into the OTLP/JSON shape the receiver already understands, so both
//! encodings go through the same checks and rollups.
//!
//! Only what the receiver uses is read: resource attributes, and the histogram and sum
//! metrics with their data points. Everything else (gauges, summaries, exemplars, scope
//! details, nested attribute values) is skipped by its wire type, as protobuf readers do
//! with fields they do not know. Field numbers are those of
//! `opentelemetry/proto/collector/metrics/v1/metrics_service.proto` and the messages it
//! includes.

use serde_json::{Map, Value, json};

/// One field's value as it is on the wire.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

/// The fields of one message, in order.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(message: &'a [u8]) -> Self {
        Self { rest: message }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self.rest.split_first().ok_or("protobuf: a number runs past the end")?;
            self.rest = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("protobuf: a number is longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.rest.len() < n {
            return Err("protobuf: a field runs past the end".into());
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    /// The next field number and value, or `None` at the end of the message.
    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>, String> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "protobuf: short field")?)),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "protobuf: a field is too long")?;
                Wire::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            other => return Err(format!("protobuf: wire type {other} is not used by OTLP")),
        };
        Ok(Some((key >> 3, value)))
    }
}

/// Reads every field of `message` with `field`, which sees each number and value.
fn each<'a>(message: &'a [u8], mut field: impl FnMut(u64, Wire<'a>) -> Result<(), String>) -> Result<(), String> {
    let mut fields = Fields::new(message);
    while let Some((number, value)) = fields.next()? {
        field(number, value)?;
    }
    Ok(())
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "protobuf: a string is not UTF-8".into())
}

/// A repeated fixed64 field: packed (one length-delimited run) or one value at a time.
fn fixed64s(value: Wire<'_>, out: &mut Vec<u64>) -> Result<(), String> {
    match value {
        Wire::Fixed64(v) => out.push(v),
        Wire::Bytes(run) if run.len() % 8 == 0 => {
            out.extend(run.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))));
        }
        _ => return Err("protobuf: a repeated fixed64 field is malformed".into()),
    }
    Ok(())
}

/// Reads an `ExportMetricsServiceRequest` into its OTLP/JSON form.
pub fn export_to_json(body: &[u8]) -> Result<Value, String> {
    let mut resources = Vec::new();
    each(body, |number, value| {
        if let (1, Wire::Bytes(m)) = (number, value) {
            resources.push(resource_metrics(m)?);
        }
        Ok(())
    })?;
    Ok(json!({ "resourceMetrics": resources }))
}

fn resource_metrics(message: &[u8]) -> Result<Value, String> {
    let mut attributes = Vec::new();
    let mut scopes = Vec::new();
    each(message, |number, value| {
        match (number, value) {
            // Resource { repeated KeyValue attributes = 1 }
            (1, Wire::Bytes(resource)) => each(resource, |n, v| {
                if let (1, Wire::Bytes(kv)) = (n, v) {
                    attributes.push(key_value(kv)?);
                }
                Ok(())
            })?,
            (2, Wire::Bytes(scope)) => scopes.push(scope_metrics(scope)?),
            _ => {}
        }
        Ok(())
    })?;
    Ok(json!({ "resource": { "attributes": attributes }, "scopeMetrics": scopes }))
}

fn scope_metrics(message: &[u8]) -> Result<Value, String> {
    let mut metrics = Vec::new();
    each(message, |number, value| {
        if let (2, Wire::Bytes(m)) = (number, value) {
            metrics.push(metric(m)?);
        }
        Ok(())
    })?;
    Ok(json!({ "metrics": metrics }))
}

fn metric(message: &[u8]) -> Result<Value, String> {
    let mut out = Map::new();
    each(message, |number, value| {
        match (number, value) {
            (1, Wire::Bytes(name)) => {
                out.insert("name".into(), Value::String(text(name)?));
            }
            (7, Wire::Bytes(sum)) => {
                out.insert("sum".into(), points(sum, number_point)?);
            }
            (9, Wire::Bytes(histogram)) => {
                out.insert("histogram".into(), points(histogram, histogram_point)?);
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(Value::Object(out))
}

/// A `Sum` or `Histogram`: data points (1) and aggregation temporality (2).
fn points(message: &[u8], point: fn(&[u8]) -> Result<Value, String>) -> Result<Value, String> {
    let mut data_points = Vec::new();
    let mut temporality = 0;
    each(message, |number, value| {
        match (number, value) {
            (1, Wire::Bytes(p)) => data_points.push(point(p)?),
            (2, Wire::Varint(t)) => temporality = t,
            _ => {}
        }
        Ok(())
    })?;
    Ok(json!({ "aggregationTemporality": temporality, "dataPoints": data_points }))
}

/// Start and end times, fixed64 fields 2 and 3 of every data point.
fn times(out: &mut Map<String, Value>, number: u64, value: &Wire<'_>) {
    if let Wire::Fixed64(ns) = value {
        match number {
            2 => {
                out.insert("startTimeUnixNano".into(), Value::String(ns.to_string()));
            }
            3 => {
                out.insert("timeUnixNano".into(), Value::String(ns.to_string()));
            }
            _ => {}
        }
    }
}

fn histogram_point(message: &[u8]) -> Result<Value, String> {
    let mut out = Map::new();
    let (mut attributes, mut counts, mut bounds) = (Vec::new(), Vec::new(), Vec::new());
    each(message, |number, value| {
        times(&mut out, number, &value);
        match (number, value) {
            (9, Wire::Bytes(kv)) => attributes.push(key_value(kv)?),
            (4, Wire::Fixed64(count)) => {
                out.insert("count".into(), Value::String(count.to_string()));
            }
            (5, Wire::Fixed64(sum)) => {
                out.insert("sum".into(), json!(f64::from_bits(sum)));
            }
            (6, value) => fixed64s(value, &mut counts)?,
            (7, value) => fixed64s(value, &mut bounds)?,
            _ => {}
        }
        Ok(())
    })?;
    out.insert("attributes".into(), Value::Array(attributes));
    out.insert("bucketCounts".into(), counts.iter().map(|c| Value::String(c.to_string())).collect());
    out.insert("explicitBounds".into(), bounds.iter().map(|b| json!(f64::from_bits(*b))).collect());
    Ok(Value::Object(out))
}

fn number_point(message: &[u8]) -> Result<Value, String> {
    let mut out = Map::new();
    let mut attributes = Vec::new();
    each(message, |number, value| {
        times(&mut out, number, &value);
        match (number, value) {
            (7, Wire::Bytes(kv)) => attributes.push(key_value(kv)?),
            (4, Wire::Fixed64(d)) => {
                out.insert("asDouble".into(), json!(f64::from_bits(d)));
            }
            // sfixed64: the same bits, read as signed.
            (6, Wire::Fixed64(i)) => {
                out.insert("asInt".into(), Value::String(i64::from_ne_bytes(i.to_ne_bytes()).to_string()));
            }
            _ => {}
        }
        Ok(())
    })?;
    out.insert("attributes".into(), Value::Array(attributes));
    Ok(Value::Object(out))
}

/// `KeyValue { string key = 1; AnyValue value = 2 }` with the scalar kinds of `AnyValue`;
/// arrays, maps and bytes read as an empty value.
fn key_value(message: &[u8]) -> Result<Value, String> {
    let mut key = String::new();
    let mut any = Map::new();
    each(message, |number, value| {
        match (number, value) {
            (1, Wire::Bytes(k)) => key = text(k)?,
            (2, Wire::Bytes(v)) => each(v, |n, v| {
                match (n, v) {
                    (1, Wire::Bytes(s)) => {
                        any.insert("stringValue".into(), Value::String(text(s)?));
                    }
                    (2, Wire::Varint(b)) => {
                        any.insert("boolValue".into(), Value::Bool(b != 0));
                    }
                    (3, Wire::Varint(i)) => {
                        let i = i64::from_ne_bytes(i.to_ne_bytes());
                        {
                            any.insert("intValue".into(), Value::String(i.to_string()));
                        }
                    }
                    (4, Wire::Fixed64(d)) => {
                        any.insert("doubleValue".into(), json!(f64::from_bits(d)));
                    }
                    _ => {}
                }
                Ok(())
            })?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(json!({ "key": key, "value": any }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `export.pb` was written by the OpenTelemetry project's own protobuf classes from
    /// `export.json`, a real node's export (see `make-protobuf.py` beside them).
    #[test]
    fn reads_what_the_reference_encoder_wrote_as_the_json_reads() {
        let pb = include_bytes!("../../tests/fixtures/otlp/export.pb");
        let json: Value = serde_json::from_str(include_str!("../../tests/fixtures/otlp/export.json")).unwrap();
        let decoded = export_to_json(pb).unwrap();
        let points = |v: &Value| format!("{:?}", crate::domain::traffic::points_from_otlp(v, "fallback").unwrap());
        let usage = |v: &Value| format!("{:?}", crate::domain::traffic::usage_from_otlp(v, "fallback").unwrap());
        assert_eq!(points(&decoded), points(&json));
        assert_eq!(usage(&decoded), usage(&json));
        let read = crate::domain::traffic::points_from_otlp(&decoded, "fallback").unwrap();
        assert!(read.len() >= 3, "{read:?}");
        assert!(read.iter().all(|p| p.node_id != "fallback" && p.cumulative && p.requests > 0 && p.time_ms > 0));
        assert_eq!(crate::domain::traffic::usage_from_otlp(&decoded, "n").unwrap()[0].requests, 17);
    }

    /// The gateway's encoder (OTLP over gRPC) against the same reference: written from
    /// `export.json`, it gives the very bytes of the OpenTelemetry project's encoder.
    #[test]
    fn the_gateways_protobuf_reads_as_the_reference_encoding() {
        let json: Value = serde_json::from_str(include_str!("../../tests/fixtures/otlp/export.json")).unwrap();
        let ours =
            weir_gateway::telemetry::otlp_proto::encode(weir_gateway::telemetry::otlp_proto::Signal::Metrics, &json)
                .unwrap();
        let reference = include_bytes!("../../tests/fixtures/otlp/export.pb");
        assert_eq!(export_to_json(&ours).unwrap(), export_to_json(reference).unwrap());
        assert_eq!(ours, reference, "byte for byte: fields in number order, repeated numbers packed");
    }

    #[test]
    fn truncated_and_malformed_messages_are_errors() {
        // A length that runs past the end, a varint of 11 bytes, a group (wire type 3).
        for bad in [
            &[0x0a, 0x05, 0x0a][..],
            &[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            &[0x0b],
        ] {
            assert!(export_to_json(bad).is_err(), "{bad:?}");
        }
        assert_eq!(export_to_json(&[]).unwrap(), json!({"resourceMetrics": []}));
        // Unknown fields of every wire type are skipped.
        let unknown = [0x10, 0x01, 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0x22, 0x01, 0x00, 0x2d, 0, 0, 0, 0];
        assert_eq!(export_to_json(&unknown).unwrap(), json!({"resourceMetrics": []}));
    }
}
