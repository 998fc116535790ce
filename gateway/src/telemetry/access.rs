//! The access log: one line per request on stdout, when the service has
//! `telemetry/logging` and its `router` does not set `disable_access_log`.
//!
//! `format: "default"` writes text, `"logstash"` one JSON object per line; `prefix` starts
//! every line. Lines go to a writer thread through a bounded queue, so a slow stdout (a
//! full pipe, a stalled terminal) never holds up requests: when the queue is full the
//! line is dropped and counted, and the count is written when the queue drains.

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::policy::{Problems, problem};

/// Lines waiting for the writer at most; more are dropped.
const QUEUE: usize = 16 * 1024;

/// `telemetry/logging` as the access log uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    prefix: String,
    json: bool,
    /// `router.logger_skip_paths`: request paths not logged.
    skip: Vec<String>,
}

/// `telemetry/logging.level`, as a `tracing` filter directive.
pub fn level(logging: &Value) -> Option<&'static str> {
    match logging.get("level").and_then(Value::as_str)?.to_ascii_uppercase().as_str() {
        "DEBUG" => Some("debug"),
        "INFO" => Some("info"),
        "WARNING" | "WARN" => Some("warn"),
        "ERROR" | "CRITICAL" => Some("error"),
        _ => None,
    }
}

/// Checks `telemetry/logging` without starting anything: what `weir check` reports.
pub fn validate(v: &Value, path: &str) -> Problems {
    let mut p = Problems::new();
    if !v.is_object() {
        p.push(problem(path, "must be an object"));
        return p;
    }
    if v.get("level").is_some() && level(v).is_none() {
        p.push(problem(&format!("{path}.level"), "must be DEBUG, INFO, WARNING, ERROR or CRITICAL"));
    }
    match v.get("format").map(|f| f.as_str()) {
        None | Some(Some("default" | "logstash")) => {}
        Some(Some("custom")) => {
            p.push(problem(&format!("{path}.format"), "\"custom\" is not supported yet; use default or logstash"))
        }
        Some(_) => p.push(problem(&format!("{path}.format"), "must be \"default\" or \"logstash\"")),
    }
    for key in ["prefix"] {
        if v.get(key).is_some_and(|x| !x.is_string()) {
            p.push(problem(&format!("{path}.{key}"), "must be a string"));
        }
    }
    for key in ["stdout", "syslog"] {
        if v.get(key).is_some_and(|x| !x.is_boolean()) {
            p.push(problem(&format!("{path}.{key}"), "must be true or false"));
        }
    }
    p
}

impl AccessLog {
    /// The access log of a service, if it has one: `telemetry/logging` present and
    /// `router.disable_access_log` not set.
    pub fn from_service(service: &crate::config::Service) -> Option<Self> {
        let logging = service.extra_config.get("telemetry/logging")?;
        if service.router.disable_access_log {
            return None;
        }
        let skip = service.router.logger_skip_paths.clone();
        Some(Self {
            prefix: logging.get("prefix").and_then(Value::as_str).unwrap_or_default().to_owned(),
            json: logging.get("format").and_then(Value::as_str) == Some("logstash"),
            skip,
        })
    }

    /// Logs one answered request.
    pub fn record(&self, method: &http::Method, path: &str, status: u16, took: Duration, client: IpAddr) {
        if self.skip.iter().any(|s| s == path) {
            return;
        }
        let line = self.line(SystemTime::now(), method, path, status, took, client);
        match writer().try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn line(
        &self,
        at: SystemTime,
        method: &http::Method,
        path: &str,
        status: u16,
        took: Duration,
        client: IpAddr,
    ) -> String {
        let time = rfc3339_utc(at);
        let micros = took.as_micros();
        if self.json {
            let mut object = serde_json::json!({
                "@timestamp": time, "status": status, "latency_us": micros, "client_ip": client.to_string(),
                "method": method.as_str(), "path": path,
            });
            if !self.prefix.is_empty() {
                object["prefix"] = Value::String(self.prefix.clone());
            }
            let mut line = object.to_string();
            line.push('\n');
            line
        } else {
            let prefix = if self.prefix.is_empty() { String::new() } else { format!("{} ", self.prefix) };
            // The path is quoted as JSON, so a path cannot forge a line or a field.
            let quoted = Value::String(path.to_owned());
            format!("{prefix}{time} | {status} | {micros}us | {client} | {method} {quoted}\n")
        }
    }
}

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The queue of the process's one writer thread, started on first use.
fn writer() -> &'static SyncSender<String> {
    static WRITER: OnceLock<SyncSender<String>> = OnceLock::new();
    WRITER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let spawned = std::thread::Builder::new().name("weir-access-log".into()).spawn(move || write_lines(&rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log writer; access lines are dropped");
        }
        tx
    })
}

/// Writes lines as they come, in batches: everything queued goes out in one write.
fn write_lines(rx: &Receiver<String>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(more.as_bytes());
        }
        let dropped = DROPPED.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = writeln!(out, "weir: {dropped} access log lines dropped (stdout too slow)");
        }
        let _ = out.flush();
    }
}

/// `2026-11-28T04:50:00.123Z`.
fn rfc3339_utc(at: SystemTime) -> String {
    let since = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, u32::try_from(m).unwrap_or(1), u32::try_from(d).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(rfc3339_utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_millis(951_782_400_250); // 2000-02-29
        assert_eq!(rfc3339_utc(leap), "2000-02-29T00:00:00.250Z");
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_746_600); // 2026-11-27T02:30:00Z (date -u -d)
        assert_eq!(rfc3339_utc(later), "2026-11-27T02:30:00.000Z");
    }

    #[test]
    fn lines_in_both_formats_quote_the_path() {
        let log = |json| AccessLog { prefix: "[GW]".into(), json, skip: Vec::new() };
        let at = SystemTime::UNIX_EPOCH;
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let path = "/a\"b\nforged";
        let text = log(false).line(at, &http::Method::GET, path, 200, Duration::from_micros(1234), ip);
        assert_eq!(text, "[GW] 1970-01-01T00:00:00.000Z | 200 | 1234us | 10.0.0.1 | GET \"/a\\\"b\\nforged\"\n");
        let json = log(true).line(at, &http::Method::POST, path, 502, Duration::from_micros(7), ip);
        assert_eq!(json.matches('\n').count(), 1);
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (v["status"].as_u64(), v["path"].as_str(), v["prefix"].as_str()),
            (Some(502), Some(path), Some("[GW]"))
        );
    }

    #[test]
    fn settings_are_checked() {
        assert!(validate(&serde_json::json!({"level": "INFO", "format": "logstash", "stdout": true}), "t").is_empty());
        let bad = validate(&serde_json::json!({"level": "LOUD", "format": "custom", "prefix": 1}), "t");
        let paths: Vec<&str> = bad.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["t.level", "t.format", "t.prefix"]);
    }
}
