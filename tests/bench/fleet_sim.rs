//! A simulated fleet for the scale-out benchmark (`tests/bench/scale-out.sh`): many
//! lightweight nodes against one control plane, each doing what a real `weir` node does
//! and at the same intervals (it uses the node's own control-plane client):
//!
//! * fetch the bundle at boot, then long-poll it (`If-None-Match`, `?wait=20`);
//! * report its status after every new bundle and every 30 s;
//! * export its request metrics as OTLP/HTTP JSON every 10 s.
//!
//! Bundles are not verified (that costs the node, not the control plane). While the fleet
//! runs, the simulator promotes versions of the environment one after another and times
//! how long every node takes to hold the new serial. It prints one JSON object of figures.
//!
//! ```text
//! weir-fleet-sim --control http://127.0.0.1:9100 --gateway shop --env prod \
//!     --node-token-file node-token --admin-token-file admin-token \
//!     --nodes 500 --ramp 10s --steady 60s --promote 2,1,2,1,2
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::Full;
use serde_json::json;
use tokio::sync::{Mutex, watch};
use weir_gateway::node::control::{ControlPlane, Fetched, Status};
use weir_gateway::telemetry::{EndpointStats, Registry, otlp};

/// A node's report interval and metrics interval in production (`weir run` defaults).
const HEARTBEAT: Duration = Duration::from_secs(30);
const METRICS_EVERY: Duration = Duration::from_secs(10);
/// Routes each simulated node reports metrics for.
const ROUTES: usize = 20;

struct Args {
    control: String,
    gateway: String,
    env: String,
    node_token: String,
    admin_token: String,
    nodes: usize,
    ramp: Duration,
    steady: Duration,
    promote: Vec<u64>,
}

fn usage(problem: &str) -> ! {
    eprintln!("weir-fleet-sim: {problem}");
    eprintln!(
        "usage: weir-fleet-sim --control URL --gateway G --env E --node-token-file F --admin-token-file F \
         [--nodes 500] [--ramp 10s] [--steady 60s] [--promote 2,1,2]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = std::env::args().skip(1);
    let mut get = std::collections::HashMap::new();
    while let Some(flag) = args.next() {
        let Some(name) = flag.strip_prefix("--") else { usage(&format!("unexpected argument {flag}")) };
        let Some(value) = args.next() else { usage(&format!("{flag} needs a value")) };
        get.insert(name.to_owned(), value);
    }
    let text = |name: &str| get.get(name).cloned().unwrap_or_else(|| usage(&format!("--{name} is required")));
    let read = |name: &str| {
        let file = text(name);
        std::fs::read_to_string(&file).map(|t| t.trim().to_owned()).unwrap_or_else(|e| usage(&format!("{file}: {e}")))
    };
    let duration = |name: &str, default: &str| {
        let v = get.get(name).map_or(default, String::as_str);
        weir_gateway::config::parse_duration(v).unwrap_or_else(|e| usage(&format!("--{name}: {e}")))
    };
    Args {
        control: text("control"),
        gateway: text("gateway"),
        env: text("env"),
        node_token: read("node-token-file"),
        admin_token: read("admin-token-file"),
        nodes: get.get("nodes").map_or(Ok(500), |n| n.parse()).unwrap_or_else(|_| usage("--nodes: a number")),
        ramp: duration("ramp", "10s"),
        steady: duration("steady", "60s"),
        promote: get.get("promote").map_or_else(Vec::new, |list| {
            list.split(',').map(|v| v.trim().parse().unwrap_or_else(|_| usage("--promote: version numbers"))).collect()
        }),
    }
}

/// Latencies of one kind of call, in microseconds, and its failures.
#[derive(Default)]
struct Calls {
    micros: Vec<u64>,
    failed: u64,
}

impl Calls {
    fn record(&mut self, started: Instant, ok: bool) {
        if ok {
            self.micros.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        } else {
            self.failed += 1;
        }
    }

    fn summary(&mut self) -> serde_json::Value {
        self.micros.sort_unstable();
        let ms = |q: f64| percentile(&self.micros, q) as f64 / 1000.0;
        json!({"count": self.micros.len(), "failed": self.failed, "p50_ms": ms(0.5), "p95_ms": ms(0.95),
               "p99_ms": ms(0.99), "max_ms": ms(1.0)})
    }
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[derive(Default)]
struct Figures {
    boot_fetch: Calls,
    long_poll: Calls,
    status: Calls,
    export: Calls,
}

fn serial_of(etag: Option<&http::HeaderValue>) -> u64 {
    etag.and_then(|v| v.to_str().ok()).and_then(|v| v.trim_matches('"').parse().ok()).unwrap_or(0)
}

fn iso_now() -> String {
    weir_gateway::time::rfc3339(SystemTime::now())
}

/// One simulated node, until `stop` turns true.
async fn node(
    index: usize,
    args: Arc<Args>,
    figures: Arc<Mutex<Figures>>,
    serials: Arc<Vec<AtomicU64>>,
    mut stop: watch::Receiver<bool>,
) {
    let node_id = format!("sim-{index:04}");
    let control = match ControlPlane::new(&args.control, &args.gateway, &args.env, &node_id, &args.node_token) {
        Ok(c) => c,
        Err(e) => usage(&e.to_string()),
    };
    let status = |serial: u64, result: &str| Status {
        node_id: node_id.clone(),
        hostname: "fleet-sim".into(),
        version: weir_gateway::VERSION.into(),
        serial: Some(serial),
        config_digest: None,
        last_fetch_at: Some(iso_now()),
        last_result: result.into(),
        reported_at: iso_now(),
    };
    // Boot: the full bundle, retried like a node that waits for its control plane.
    let mut etag = loop {
        let started = Instant::now();
        let fetched = control.fetch(None).await;
        let ok = matches!(fetched, Ok(Fetched::Bundle { .. }));
        figures.lock().await.boot_fetch.record(started, ok);
        if let Ok(Fetched::Bundle { etag, .. }) = fetched {
            break etag;
        }
        if *stop.borrow() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    serials[index].store(serial_of(etag.as_ref()), Ordering::Release);
    let report = |serial, result: &'static str| {
        let (control, figures, status) = (control.clone(), figures.clone(), status(serial, result));
        async move {
            let started = Instant::now();
            let ok = control.report(&status).await.is_ok();
            figures.lock().await.status.record(started, ok);
        }
    };
    report(serial_of(etag.as_ref()), "applied").await;

    // Heartbeat and metrics run beside the long poll, at production intervals, with their
    // phase spread over the fleet as real nodes' start times would spread them.
    let offset = |every: Duration| every.mul_f64(index as f64 / args.nodes.max(1) as f64);
    let beats = {
        let (serials, report, mut stop) = (serials.clone(), report, stop.clone());
        async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset(HEARTBEAT), HEARTBEAT);
            loop {
                tokio::select! {
                    _ = tick.tick() => report(serials[index].load(Ordering::Acquire), "unchanged").await,
                    _ = stop.changed() => return,
                }
            }
        }
    };
    let exports = {
        let (control, figures, node_id, mut stop) = (control.clone(), figures.clone(), node_id.clone(), stop.clone());
        async move {
            let registry = Registry {
                endpoints: (0..ROUTES)
                    .map(|r| Arc::new(EndpointStats::new(&format!("/api/r{r}/{{id}}"), "GET")))
                    .collect(),
                ..Registry::default()
            };
            let resource = [("service.name", "weir".to_owned()), ("service.instance.id", node_id)];
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset(METRICS_EVERY), METRICS_EVERY);
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                // About 100 requests a second per node, spread over the routes.
                for (r, stats) in registry.endpoints.iter().enumerate() {
                    for i in 0..50 {
                        n += 1;
                        let status = if n.is_multiple_of(97) { 502 } else { 200 };
                        stats.record(status, Duration::from_micros(300 + 40 * (i + r as u64)));
                    }
                }
                let body = otlp::export_json(&registry, &resource, SystemTime::now());
                let started = Instant::now();
                let ok = control.export_metrics(body).await.is_ok();
                figures.lock().await.export.record(started, ok);
            }
        }
    };
    let polls = async {
        loop {
            let started = Instant::now();
            let fetched = tokio::select! {
                f = control.fetch(etag.as_ref()) => f,
                _ = stop.changed() => return,
            };
            match fetched {
                Ok(Fetched::NotModified { .. }) => figures.lock().await.long_poll.record(started, true),
                Ok(Fetched::Bundle { etag: new, .. }) => {
                    etag = new;
                    let serial = serial_of(etag.as_ref());
                    serials[index].store(serial, Ordering::Release);
                    report(serial, "applied").await;
                }
                Err(_) => {
                    figures.lock().await.long_poll.record(started, false);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    };
    tokio::join!(beats, exports, polls);
}

/// Promotes `version` with the admin token; the new serial.
async fn promote(client: &weir_gateway::proxy::client::Client, args: &Args, version: u64) -> Result<u64, String> {
    let url = format!("{}/api/v1/gateways/{}/environments/{}/promote", args.control, args.gateway, args.env);
    let mut request = Request::new(Full::new(Bytes::from(json!({ "version": version }).to_string())));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let headers = request.headers_mut();
    headers.insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    headers.insert(
        header::AUTHORIZATION,
        http::HeaderValue::try_from(format!("Bearer {}", args.admin_token)).map_err(|e| e.to_string())?,
    );
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body()).await.map_err(|e| e.to_string())?.to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if !status.is_success() {
        return Err(format!("promote answered {status}: {}", String::from_utf8_lossy(&body)));
    }
    value.get("serial").and_then(serde_json::Value::as_u64).ok_or_else(|| format!("no serial in {value}"))
}

#[tokio::main]
async fn main() {
    let args = Arc::new(parse_args());
    let figures = Arc::new(Mutex::new(Figures::default()));
    let serials: Arc<Vec<AtomicU64>> = Arc::new((0..args.nodes).map(|_| AtomicU64::new(0)).collect());
    let (stop_tx, stop) = watch::channel(false);

    // Nodes start evenly over the ramp, as a rolling deployment would bring them up.
    let boot = Instant::now();
    let mut tasks = Vec::with_capacity(args.nodes);
    for index in 0..args.nodes {
        let at = args.ramp.mul_f64(index as f64 / args.nodes.max(1) as f64);
        let (args, figures, serials, stop) = (args.clone(), figures.clone(), serials.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(at).await;
            node(index, args, figures, serials, stop).await;
        }));
    }
    let all_hold = |serial: u64| serials.iter().all(|s| s.load(Ordering::Acquire) >= serial);
    while !all_hold(1) && boot.elapsed() < args.ramp + Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let booted_in = boot.elapsed();
    eprintln!("fleet-sim: {} nodes hold a bundle after {:.1} s", args.nodes, booted_in.as_secs_f64());

    // Steady state; promotions spread over it.
    let steady_started = Instant::now();
    let client = weir_gateway::proxy::client::build(1).unwrap_or_else(|e| usage(&e.to_string()));
    let mut promotions = Vec::new();
    let gap = args.steady / u32::try_from(args.promote.len() + 1).unwrap_or(1);
    for &version in &args.promote {
        tokio::time::sleep(gap).await;
        let started = Instant::now();
        let serial = match promote(&client, &args, version).await {
            Ok(s) => s,
            Err(e) => usage(&e),
        };
        let promoted_ms = started.elapsed().as_secs_f64() * 1000.0;
        // Per node, when it first held the serial: sample every millisecond.
        let mut updated_ms: Vec<u64> = Vec::with_capacity(args.nodes);
        let mut seen = vec![false; args.nodes];
        while updated_ms.len() < args.nodes && started.elapsed() < Duration::from_secs(60) {
            for (i, s) in serials.iter().enumerate() {
                if !seen[i] && s.load(Ordering::Acquire) >= serial {
                    seen[i] = true;
                    updated_ms.push(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        updated_ms.sort_unstable();
        let all = (updated_ms.len() == args.nodes).then(|| updated_ms.last().copied().unwrap_or(0));
        eprintln!(
            "fleet-sim: version {version} (serial {serial}) on {}/{} nodes, all after {all:?} ms",
            updated_ms.len(),
            args.nodes
        );
        promotions.push(json!({"version": version, "serial": serial, "promote_call_ms": promoted_ms,
            "nodes_updated": updated_ms.len(), "p50_ms": percentile(&updated_ms, 0.5),
            "p95_ms": percentile(&updated_ms, 0.95), "all_nodes_ms": all}));
    }
    let left = args.steady.saturating_sub(steady_started.elapsed());
    tokio::time::sleep(left).await;
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(35), task).await;
    }
    let mut f = figures.lock().await;
    let report = json!({
        "nodes": args.nodes,
        "booted_s": booted_in.as_secs_f64(),
        "steady_s": args.steady.as_secs_f64(),
        "boot_fetch": f.boot_fetch.summary(),
        "long_poll": f.long_poll.summary(),
        "status": f.status.summary(),
        "otlp_export": f.export.summary(),
        "promotions": promotions,
    });
    println!("{report}");
}
