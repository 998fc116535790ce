//! The OTLP/HTTP metrics receiver: what a node's export turns into, from the request
//! body to the dashboard's figures.
//!
//! Input: an export body, OTLP JSON or, when it is not JSON, OTLP protobuf (read with
//! `otlp_proto::export_to_json`, as the receiver does for `application/x-protobuf`),
//! gzipped when it starts with the gzip magic (the receiver's `Content-Encoding: gzip`,
//! decoded here the way the handler does it: `receive_metrics` needs a store, so its few
//! lines are repeated rather than called).
//! The points are read with `points_from_otlp` and `usage_from_otlp`, then summarised
//! for every dashboard range as minute rollups, with the export's latest minute as now.
//!
//! Invariants: every range yields a summary with one series point per step; with
//! non-negative counts, the totals are the sum of the rows in range, and the latency
//! percentiles are ordered and within the buckets' bounds.

use std::io::Read as _;

use serde_json::Value;
use weir_management::domain::otlp_proto;
use weir_management::domain::traffic::{self, RANGES};
use weir_management::store::metrics::{Minute, Point};

/// The receiver's limit on an export, compressed or not (`MAX_EXPORT_BYTES`).
const MAX_EXPORT_BYTES: usize = 4 * 1024 * 1024;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Runs one input; panics where an invariant of this target does not hold.
pub fn run(data: &[u8]) {
    if data.len() > MAX_EXPORT_BYTES {
        return;
    }
    let mut inflated = Vec::new();
    let body = if data.starts_with(&GZIP_MAGIC) {
        let limit = u64::try_from(MAX_EXPORT_BYTES).unwrap_or(u64::MAX) + 1;
        if flate2::read::GzDecoder::new(data).take(limit).read_to_end(&mut inflated).is_err()
            || inflated.len() > MAX_EXPORT_BYTES
        {
            return;
        }
        &inflated[..]
    } else {
        data
    };
    let export = match serde_json::from_slice::<Value>(body) {
        Ok(export) => export,
        Err(_) => match otlp_proto::export_to_json(body) {
            Ok(export) => export,
            Err(_) => return,
        },
    };
    let _ = traffic::usage_from_otlp(&export, "node");
    let Ok(points) = traffic::points_from_otlp(&export, "node") else { return };
    if points.is_empty() {
        return;
    }

    let rows: Vec<Minute> = points.iter().map(minute).collect();
    let now = rows.iter().map(|r| r.minute).max().unwrap_or(0);
    let sane = rows.iter().all(|r| r.requests >= 0 && r.buckets.iter().all(|b| *b >= 0));
    for (range, minutes, step) in RANGES {
        let summary = traffic::summarize(&rows, range, now).expect("every listed range is summarised");
        assert_eq!(i64::try_from(summary.series.len()).ok(), Some(minutes / step), "one series point per step");
        if !sane {
            continue;
        }
        let from = now - minutes + 1;
        let in_range: Vec<&Minute> = rows.iter().filter(|r| r.minute >= from && r.minute <= now).collect();
        let requests = in_range.iter().try_fold(0i64, |sum, r| sum.checked_add(r.requests));
        if let Some(requests) = requests {
            assert_eq!(summary.totals.requests, requests, "totals are the sum of the rows in range");
        }
        let figures = &summary.totals;
        if let (Some(p50), Some(p95), Some(p99)) = (figures.p50_ms, figures.p95_ms, figures.p99_ms) {
            assert!(p50 <= p95 && p95 <= p99, "percentiles out of order: {p50} {p95} {p99}");
            assert!((0.0..=10_000.0).contains(&p50) && p99 <= 10_000.0, "percentiles out of bounds: {p50} {p99}");
        }
    }
}

/// The minute rollup a point adds to, as the store keys it.
fn minute(p: &Point) -> Minute {
    Minute {
        minute: p.time_ms / 60_000,
        node_id: p.node_id.clone(),
        route: p.route.clone(),
        method: p.method.clone(),
        status_class: p.status_class.clone(),
        requests: p.requests,
        sum_us: p.sum_us,
        buckets: p.buckets,
    }
}
