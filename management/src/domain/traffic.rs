//! Traffic figures: reading OTLP exports into points, and turning minute rollups into
//! what the dashboard shows (rates, error rates, latency percentiles, top routes).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::store::metrics::{BUCKETS, Minute, Point};

/// Upper bounds of the buckets in milliseconds (the gateway's), the last one open.
const BOUNDS_MS: [f64; BUCKETS - 1] = [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];

/// The metric the gateway exports request durations as.
const DURATION_METRIC: &str = "http.server.request.duration";

fn attributes(v: &Value) -> BTreeMap<String, String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let key = a.get("key")?.as_str()?.to_owned();
            let value = a.get("value")?;
            let text =
                value.get("stringValue").and_then(Value::as_str).map(str::to_owned).or_else(|| {
                    value.get("intValue").map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                })?;
            Some((key, text))
        })
        .collect()
}

/// OTLP JSON writes 64-bit integers as strings; accept numbers too.
fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// The largest request count one point may carry: a node serving a million requests a
/// second reaches it after about 30 years. Larger (or negative) counts are refused, so
/// the sums over many points and minutes stay far inside `i64`.
pub const MAX_COUNT: i64 = 1_000_000_000_000_000;

/// A count from an export, or why it cannot be one.
fn count(v: Option<&Value>, what: &str) -> Result<i64, String> {
    match v {
        None => Ok(0),
        Some(v) => match int(Some(v)) {
            Some(n) if (0..=MAX_COUNT).contains(&n) => Ok(n),
            _ => Err(format!("{what} must be a whole number from 0 to {MAX_COUNT}, found {v}")),
        },
    }
}

/// Milliseconds since the epoch from an OTLP nanosecond timestamp; 0 when absent or
/// out of range.
fn time_ms(v: Option<&Value>) -> i64 {
    let ns: i128 = v.and_then(Value::as_str).and_then(|s| s.parse().ok()).unwrap_or(0);
    i64::try_from(ns.max(0) / 1_000_000).unwrap_or(0)
}

/// The request-duration points of an OTLP/HTTP JSON export. `node_fallback` names
/// the node when the export does not (`service.instance.id`).
pub fn points_from_otlp(body: &Value, node_fallback: &str) -> Result<Vec<Point>, String> {
    let resources = body.get("resourceMetrics").and_then(Value::as_array).ok_or("no resourceMetrics")?;
    let mut points = Vec::new();
    for rm in resources {
        let resource = attributes(rm.pointer("/resource/attributes").unwrap_or(&Value::Null));
        let node_id = resource.get("service.instance.id").cloned().unwrap_or_else(|| node_fallback.to_owned());
        let serial = resource.get("weir.config_serial").and_then(|s| s.parse().ok()).unwrap_or(0);
        for sm in rm.get("scopeMetrics").and_then(Value::as_array).into_iter().flatten() {
            for metric in sm.get("metrics").and_then(Value::as_array).into_iter().flatten() {
                if metric.get("name").and_then(Value::as_str) != Some(DURATION_METRIC) {
                    continue;
                }
                let Some(histogram) = metric.get("histogram") else { continue };
                let cumulative = int(histogram.get("aggregationTemporality")) != Some(1);
                for dp in histogram.get("dataPoints").and_then(Value::as_array).into_iter().flatten() {
                    let attrs = attributes(dp.get("attributes").unwrap_or(&Value::Null));
                    let counts: Vec<i64> = dp
                        .get("bucketCounts")
                        .and_then(Value::as_array)
                        .map(|b| b.iter().map(|c| count(Some(c), "bucketCounts")).collect::<Result<_, _>>())
                        .transpose()?
                        .unwrap_or_default();
                    let bounds_ok = dp.get("explicitBounds").and_then(Value::as_array).is_some_and(|b| {
                        b.len() == BOUNDS_MS.len()
                            && b.iter()
                                .zip(BOUNDS_MS)
                                .all(|(x, ms)| x.as_f64().is_some_and(|x| (x * 1000.0 - ms).abs() < 1e-6))
                    });
                    if !bounds_ok || counts.len() != BUCKETS {
                        return Err("histogram buckets differ from the gateway's (5 ms ... 10 s)".into());
                    }
                    let mut buckets = [0i64; BUCKETS];
                    buckets.copy_from_slice(&counts);
                    // Seconds in OTLP, microseconds here; NaN becomes 0 and the rest saturates.
                    let sum_s = dp.get("sum").and_then(Value::as_f64).unwrap_or(0.0);
                    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
                    let sum_us = (sum_s * 1e6).round().clamp(0.0, MAX_COUNT as f64 * 1e6) as i64;
                    points.push(Point {
                        node_id: node_id.clone(),
                        route: attrs.get("http.route").cloned().unwrap_or_default(),
                        method: attrs.get("http.request.method").cloned().unwrap_or_default(),
                        status_class: attrs.get("weir.status_class").cloned().unwrap_or_else(|| "?".into()),
                        serial,
                        start_ns: dp.get("startTimeUnixNano").and_then(Value::as_str).unwrap_or("0").to_owned(),
                        time_ms: time_ms(dp.get("timeUnixNano")),
                        cumulative,
                        requests: count(dp.get("count"), "count")?,
                        sum_us,
                        buckets,
                    });
                }
            }
        }
    }
    Ok(points)
}

/// The per-consumer request counts of an export (`weir.consumer.requests`).
pub fn usage_from_otlp(body: &Value, node_fallback: &str) -> Result<Vec<crate::store::metrics::Usage>, String> {
    let mut out = Vec::new();
    for rm in body.get("resourceMetrics").and_then(Value::as_array).into_iter().flatten() {
        let resource = attributes(rm.pointer("/resource/attributes").unwrap_or(&Value::Null));
        let node_id = resource.get("service.instance.id").cloned().unwrap_or_else(|| node_fallback.to_owned());
        for sm in rm.get("scopeMetrics").and_then(Value::as_array).into_iter().flatten() {
            for metric in sm.get("metrics").and_then(Value::as_array).into_iter().flatten() {
                if metric.get("name").and_then(Value::as_str) != Some("weir.consumer.requests") {
                    continue;
                }
                for dp in metric.pointer("/sum/dataPoints").and_then(Value::as_array).into_iter().flatten() {
                    let attrs = attributes(dp.get("attributes").unwrap_or(&Value::Null));
                    let Some(consumer) = attrs.get("weir.consumer") else { continue };
                    let requests = count(dp.get("asInt"), "asInt")?;
                    out.push(crate::store::metrics::Usage {
                        node_id: node_id.clone(),
                        consumer: consumer.clone(),
                        start_ns: dp.get("startTimeUnixNano").and_then(Value::as_str).unwrap_or("0").to_owned(),
                        time_ms: time_ms(dp.get("timeUnixNano")),
                        requests,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// A latency percentile (0..1) from bucket counts, interpolated inside its bucket.
pub fn percentile(buckets: &[i64; BUCKETS], q: f64) -> Option<f64> {
    let total = buckets.iter().fold(0i64, |sum, n| sum.saturating_add(*n));
    if total <= 0 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let rank = q * total as f64;
    let mut seen = 0i64;
    for (i, n) in buckets.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        if *n > 0 && seen.saturating_add(*n) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { BOUNDS_MS[i - 1] };
            let Some(upper) = BOUNDS_MS.get(i) else { return Some(BOUNDS_MS[BOUNDS_MS.len() - 1]) };
            #[allow(clippy::cast_precision_loss)]
            let within = ((rank - seen as f64) / *n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        seen = seen.saturating_add(*n);
    }
    Some(BOUNDS_MS[BOUNDS_MS.len() - 1])
}

/// Request count, errors and latency of a set of rows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub requests: i64,
    /// 5xx responses.
    pub errors: i64,
    pub rps: f64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Default)]
struct Acc {
    requests: i64,
    errors: i64,
    buckets: [i64; BUCKETS],
}

impl Acc {
    fn add(&mut self, m: &Minute) {
        // Saturating: rows summed by the database are not bounded by `MAX_COUNT`.
        self.requests = self.requests.saturating_add(m.requests);
        if m.status_class == "5xx" {
            self.errors = self.errors.saturating_add(m.requests);
        }
        for (a, b) in self.buckets.iter_mut().zip(m.buckets) {
            *a = a.saturating_add(b);
        }
    }

    #[allow(clippy::cast_precision_loss)]
    fn figures(&self, seconds: f64) -> Figures {
        Figures {
            requests: self.requests,
            errors: self.errors,
            rps: if seconds > 0.0 { self.requests as f64 / seconds } else { 0.0 },
            error_rate: if self.requests > 0 { self.errors as f64 / self.requests as f64 } else { 0.0 },
            p50_ms: percentile(&self.buckets, 0.50),
            p95_ms: percentile(&self.buckets, 0.95),
            p99_ms: percentile(&self.buckets, 0.99),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SeriesPoint {
    pub minute: i64,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Debug, Clone, Serialize)]
pub struct Named {
    pub name: String,
    #[serde(flatten)]
    pub figures: Figures,
}

/// What a dashboard shows for one environment and time range.
#[derive(Debug, Clone, Serialize)]
pub struct Traffic {
    pub range: String,
    pub step_minutes: i64,
    pub from_minute: i64,
    pub to_minute: i64,
    pub totals: Figures,
    pub status: BTreeMap<String, i64>,
    /// One point per step, oldest first, zero-filled.
    pub series: Vec<SeriesPoint>,
    /// The busiest routes (`METHOD route`).
    pub routes: Vec<Named>,
    pub nodes: Vec<Named>,
}

/// The ranges the dashboard offers: (name, minutes, step in minutes).
pub const RANGES: [(&str, i64, i64); 4] = [("15m", 15, 1), ("1h", 60, 1), ("24h", 1440, 30), ("7d", 10080, 360)];

/// Figures for `range` ending at `now_minute` (inclusive), from rows of any grouping.
pub fn summarize(rows: &[Minute], range: &str, now_minute: i64) -> Option<Traffic> {
    summarize_grouped(rows, rows, rows, range, now_minute)
}

fn ranked(map: BTreeMap<String, Acc>, seconds: f64, limit: usize) -> Vec<Named> {
    let mut v: Vec<Named> = map.into_iter().map(|(name, a)| Named { name, figures: a.figures(seconds) }).collect();
    v.sort_by(|a, b| b.figures.requests.cmp(&a.figures.requests).then_with(|| a.name.cmp(&b.name)));
    v.truncate(limit);
    v
}

/// Figures for `range` from rollups the database already summed: by time slot
/// (totals, status classes, series), by route, and by node.
pub fn summarize_grouped(
    slots: &[Minute],
    by_route: &[Minute],
    by_node: &[Minute],
    range: &str,
    now_minute: i64,
) -> Option<Traffic> {
    let (name, minutes, step) = RANGES.iter().find(|r| r.0 == range).copied()?;
    let from = now_minute.saturating_sub(minutes - 1);
    let in_range = |m: &&Minute| m.minute >= from && m.minute <= now_minute;
    let mut total = Acc::default();
    let mut status: BTreeMap<String, i64> = BTreeMap::new();
    let steps = usize::try_from(minutes / step).unwrap_or(1);
    let mut series: Vec<Acc> = (0..steps).map(|_| Acc::default()).collect();
    for m in slots.iter().filter(in_range) {
        total.add(m);
        let n = status.entry(m.status_class.clone()).or_default();
        *n = n.saturating_add(m.requests);
        if let Some(slot) = usize::try_from((m.minute - from) / step).ok().and_then(|i| series.get_mut(i)) {
            slot.add(m);
        }
    }
    let mut routes: BTreeMap<String, Acc> = BTreeMap::new();
    for m in by_route.iter().filter(in_range) {
        routes.entry(format!("{} {}", m.method, m.route)).or_default().add(m);
    }
    let mut nodes: BTreeMap<String, Acc> = BTreeMap::new();
    for m in by_node.iter().filter(in_range) {
        nodes.entry(m.node_id.clone()).or_default().add(m);
    }
    #[allow(clippy::cast_precision_loss)]
    let seconds = (minutes * 60) as f64;
    #[allow(clippy::cast_precision_loss)]
    let step_seconds = (step * 60) as f64;
    Some(Traffic {
        range: name.to_owned(),
        step_minutes: step,
        from_minute: from,
        to_minute: now_minute,
        totals: total.figures(seconds),
        status,
        series: series
            .iter()
            .enumerate()
            .map(|(i, a)| SeriesPoint {
                minute: from + i64::try_from(i).unwrap_or(0) * step,
                figures: a.figures(step_seconds),
            })
            .collect(),
        routes: ranked(routes, seconds, 10),
        nodes: ranked(nodes, seconds, 100),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_within_buckets() {
        let mut b = [0i64; BUCKETS];
        b[0] = 50; // <= 5 ms
        b[3] = 50; // 25..50 ms
        assert_eq!(percentile(&b, 0.5), Some(5.0));
        let p95 = percentile(&b, 0.95).unwrap();
        assert!((p95 - 47.5).abs() < 1e-9, "{p95}");
        assert_eq!(percentile(&[0; BUCKETS], 0.5), None);
        let mut slow = [0i64; BUCKETS];
        slow[BUCKETS - 1] = 1;
        assert_eq!(percentile(&slow, 0.99), Some(10000.0));
    }

    /// Found by fuzzing: sums over rows near `i64::MAX` overflowed. Such rows cannot come
    /// from one export any more, but the database sums many rows.
    #[test]
    fn huge_rows_saturate_instead_of_overflowing() {
        let mut buckets = [0i64; BUCKETS];
        buckets[0] = i64::MAX;
        buckets[1] = i64::MAX;
        let row = |minute| Minute {
            minute,
            node_id: "n".into(),
            route: "/a".into(),
            method: "GET".into(),
            status_class: "5xx".into(),
            requests: i64::MAX,
            sum_us: i64::MAX,
            buckets,
        };
        let t = summarize(&[row(5), row(6)], "15m", i64::MIN + 3).unwrap();
        assert_eq!(t.totals.requests, 0, "rows after now are out of range");
        let t = summarize(&[row(5), row(6)], "15m", 10).unwrap();
        assert_eq!((t.totals.requests, t.totals.errors), (i64::MAX, i64::MAX));
        assert_eq!(t.status.get("5xx"), Some(&i64::MAX));
        assert!(t.totals.p50_ms.is_some_and(|p| (0.0..=10.0).contains(&p)));
    }

    #[test]
    fn counts_outside_what_a_node_can_send_are_refused() {
        let export = |count: &str| {
            serde_json::json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [
                {"name": DURATION_METRIC, "histogram": {"dataPoints": [{"count": count, "timeUnixNano": "-1",
                    "bucketCounts": ["1", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0"],
                    "explicitBounds": [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]}]}},
                {"name": "weir.consumer.requests", "sum": {"dataPoints": [{"asInt": count,
                    "attributes": [{"key": "weir.consumer", "value": {"stringValue": "app"}}]}]}}]}]}]})
        };
        let ok = export(&MAX_COUNT.to_string());
        let points = points_from_otlp(&ok, "n").unwrap();
        assert_eq!((points[0].requests, points[0].time_ms), (MAX_COUNT, 0));
        assert_eq!(usage_from_otlp(&ok, "n").unwrap()[0].requests, MAX_COUNT);
        for bad in [(MAX_COUNT + 1).to_string(), "-1".into(), i64::MAX.to_string(), "1e3".into()] {
            let e = points_from_otlp(&export(&bad), "n").unwrap_err();
            assert!(e.starts_with("count must be a whole number from 0 to"), "{bad}: {e}");
            let e = usage_from_otlp(&export(&bad), "n").unwrap_err();
            assert!(e.starts_with("asInt must be"), "{bad}: {e}");
        }
    }

    #[test]
    fn summaries_zero_fill_and_rank_routes() {
        let row = |minute, route: &str, class: &str, n| Minute {
            minute,
            node_id: "n1".into(),
            route: route.into(),
            method: "GET".into(),
            status_class: class.into(),
            requests: n,
            sum_us: 0,
            buckets: {
                let mut b = [0; BUCKETS];
                b[1] = n;
                b
            },
        };
        let rows = vec![row(100, "/a", "2xx", 30), row(100, "/b", "5xx", 10), row(105, "/a", "2xx", 60)];
        let t = summarize(&rows, "15m", 110).unwrap();
        assert_eq!(t.series.len(), 15);
        assert_eq!(t.totals.requests, 100);
        assert_eq!(t.totals.errors, 10);
        assert!((t.totals.error_rate - 0.1).abs() < 1e-9);
        assert_eq!(t.series.iter().map(|s| s.figures.requests).sum::<i64>(), 100);
        assert_eq!(t.series[4].figures.requests, 40, "minute 100 is the 5th of 96..110");
        assert_eq!(t.series[9].figures.requests, 60);
        assert_eq!(t.routes[0].name, "GET /a");
        assert_eq!(t.status.get("5xx"), Some(&10));
        assert!(summarize(&rows, "2w", 110).is_none());
    }
}
