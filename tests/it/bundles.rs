//! Signed bundles end to end: the CLI, an independent JOSE check, a managed node
//! following a control plane, and hot reload under load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use crate::support::{Backend, Process, Reply, send, weir};

fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let out = weir(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (key, dir.join(format!("{name}.pub")))
}

/// A config whose one endpoint answers with static data naming its version.
fn versioned_config(version: &str) -> Value {
    json!({"version": 3, "port": 1, "listen_ip": "127.0.0.1", "host": ["http://127.0.0.1:9"],
        "endpoints": [{"endpoint": "/v", "backend": [{"url_pattern": "/nowhere"}],
            "extra_config": {"proxy": {"static": {"strategy": "always", "data": {"version": version}}}}}]})
}

fn sign(dir: &Path, config: &Value, key: &Path, env: &str, serial: u64) -> Vec<u8> {
    let cfg = dir.join(format!("cfg-{serial}.json"));
    std::fs::write(&cfg, config.to_string()).unwrap();
    let out_path = dir.join(format!("bundle-{env}-{serial}.jws"));
    let out = weir(&[
        "bundle",
        "sign",
        "-c",
        cfg.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--gateway",
        "shop",
        "--env",
        env,
        "--serial",
        &serial.to_string(),
        "-o",
        out_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(out_path).unwrap()
}

#[test]
fn cli_sign_verify_and_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "signing");
    let (_, other_public) = keygen(dir.path(), "other");
    let private_mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(private_mode & 0o777, 0o600, "the private key is owner-only");

    let bytes = sign(dir.path(), &versioned_config("1"), &key, "prod", 7);
    let file = dir.path().join("bundle-prod-7.jws");
    let f = file.to_str().unwrap();
    let ok = weir(&["bundle", "verify", f, "--trust", public.to_str().unwrap(), "--gateway", "shop", "--env", "prod"]);
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("OK: shop/prod serial 7 sha256:"));

    let wrong_key = weir(&["bundle", "verify", f, "--trust", other_public.to_str().unwrap()]);
    assert_eq!(wrong_key.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong_key.stderr).contains("not in the trust list"));
    let wrong_env =
        weir(&["bundle", "verify", f, "--trust", public.to_str().unwrap(), "--gateway", "shop", "--env", "dev"]);
    assert!(String::from_utf8_lossy(&wrong_env.stderr).contains("bundle is for shop/prod, this node serves shop/dev"));

    let mut jws: Value = serde_json::from_slice(&bytes).unwrap();
    let mut payload: Value = serde_json::from_slice(&B64.decode(jws["payload"].as_str().unwrap()).unwrap()).unwrap();
    payload["serial"] = json!(8);
    jws["payload"] = json!(B64.encode(payload.to_string()));
    std::fs::write(&file, jws.to_string()).unwrap();
    let tampered = weir(&["bundle", "verify", f, "--trust", public.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&tampered.stderr).contains("signature does not verify"));

    let inspect = weir(&["bundle", "inspect", f]);
    assert!(String::from_utf8_lossy(&inspect.stdout).contains("serial:         8"), "inspect shows without verifying");
}

/// The format is plain JOSE: a Python script with only the standard library checks the
/// structure, and an independent JWT library verifies the EdDSA signature.
#[test]
fn bundles_are_standard_jws() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "signing");
    let bytes = sign(dir.path(), &versioned_config("1"), &key, "prod", 1);
    let file = dir.path().join("bundle.jws");
    std::fs::write(&file, &bytes).unwrap();
    let script = r#"
import base64, json, sys, hashlib
def b64(s): return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
jws = json.load(open(sys.argv[1]))
assert set(jws) == {"protected", "payload", "signature"}, jws.keys()
header = json.loads(b64(jws["protected"]))
assert header["alg"] == "EdDSA" and header["kid"], header
assert len(b64(jws["signature"])) == 64
payload = json.loads(b64(jws["payload"]))
assert payload["config_digest"] == "sha256:" + hashlib.sha256(payload["config"].encode()).hexdigest()
jwk = json.load(open(sys.argv[2]))
assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and jwk["kid"] == header["kid"]
print(header["kid"])
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, file.to_str().unwrap(), public.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let jws: Value = serde_json::from_slice(&bytes).unwrap();
    let compact = format!(
        "{}.{}.{}",
        jws["protected"].as_str().unwrap(),
        jws["payload"].as_str().unwrap(),
        jws["signature"].as_str().unwrap()
    );
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_str(&std::fs::read_to_string(&public).unwrap()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let decoded = jsonwebtoken::decode::<Value>(&compact, &key, &validation)
        .expect("an independent library verifies the signature");
    assert_eq!(decoded.claims["gateway"], "shop");
    let broken = format!(
        "{}.{}.{}",
        jws["protected"].as_str().unwrap(),
        B64.encode(b"{\"gateway\":\"evil\"}"),
        jws["signature"].as_str().unwrap()
    );
    assert!(jsonwebtoken::decode::<Value>(&broken, &key, &validation).is_err());
}

/// The bundle a test control plane serves, with its ETag.
type Published = Arc<Mutex<Option<(Vec<u8>, String)>>>;

/// A control plane reduced to what a node uses: the bundle (with ETag) and status reports.
struct ControlPlane {
    server: Backend,
    bundle: Published,
    fetches: Arc<AtomicUsize>,
}

impl ControlPlane {
    async fn start(at: Option<std::net::SocketAddr>) -> Self {
        let bundle: Published = Arc::new(Mutex::new(None));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (b, f) = (bundle.clone(), fetches.clone());
        let handler = move |s: &crate::support::Seen| {
            if s.headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer node-secret") {
                return Reply::status(401);
            }
            if s.method == Method::POST && s.uri.ends_with("/nodes/node-1/status") {
                return Reply::raw(204, "text/plain", "");
            }
            // Nodes ask with `?wait=` once they hold a bundle; this control plane does not long-poll.
            let path = s.uri.split('?').next().unwrap_or_default();
            if s.method != Method::GET || path != "/api/v1/gateways/shop/environments/prod/bundle" {
                return Reply::status(404);
            }
            f.fetch_add(1, Ordering::SeqCst);
            match &*b.lock().unwrap() {
                None => Reply::status(404),
                Some((_, etag)) if s.headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag) => {
                    Reply::raw(304, "text/plain", "")
                }
                Some((bytes, etag)) => {
                    Reply::raw(200, "application/jose+json", bytes.clone()).header("etag", etag.clone())
                }
            }
        };
        let server = match at {
            Some(addr) => Backend::start_at(addr, handler).await,
            None => Backend::start(handler).await,
        };
        Self { server, bundle, fetches }
    }

    fn publish(&self, bytes: Vec<u8>) {
        let etag = format!("\"{}\"", bytes.len() + self.fetches.load(Ordering::SeqCst) * 100_000);
        *self.bundle.lock().unwrap() = Some((bytes, etag));
    }

    fn statuses(&self) -> Vec<Value> {
        self.server
            .seen()
            .into_iter()
            .filter(|s| s.method == Method::POST)
            .map(|s| serde_json::from_slice(&s.body).unwrap())
            .collect()
    }
}

async fn version_of(node: &Process) -> Option<String> {
    let r = send(Method::GET, &node.url("/v"), &[], Bytes::new()).await;
    (r.status == 200).then(|| r.json()["version"].as_str().unwrap_or("").to_owned())
}

async fn wait_for_version(node: &Process, want: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if version_of(node).await.as_deref() == Some(want) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "node did not switch to {want}: {}", node.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_for_status(control: &ControlPlane, what: &str) -> Value {
    let started = Instant::now();
    loop {
        if let Some(s) =
            control.statuses().into_iter().rev().find(|s| s["last_result"].as_str().unwrap_or("").contains(what))
        {
            return s;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no status with {what}: {:?}", control.statuses());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_node_follows_the_control_plane_and_survives_its_outage() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = keygen(d, "signing");
    let (rogue, _) = keygen(d, "rogue");
    let token = d.join("token");
    std::fs::write(&token, "node-secret\n").unwrap();
    let cache = d.join("cache");
    let control = ControlPlane::start(None).await;
    let control_url = control.server.url.clone();
    let node_args = |url: &str| -> Vec<String> {
        [
            "run",
            "--control",
            url,
            "--gateway",
            "shop",
            "--env",
            "prod",
            "--token-file",
            token.to_str().unwrap(),
            "--trust",
            public.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--poll-interval",
            "200ms",
            "--node-id",
            "node-1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args = node_args(&control_url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // Boot on serial 1.
    control.publish(sign(d, &versioned_config("one"), &key, "prod", 1));
    let node = Process::start(&args, d);
    assert_eq!(version_of(&node).await.as_deref(), Some("one"));
    let status = wait_for_status(&control, "applied").await;
    assert_eq!(status["serial"], 1);
    assert_eq!(status["node_id"], "node-1");
    assert!(status["config_digest"].as_str().unwrap().starts_with("sha256:"));

    // A new bundle is applied; measure how long until the node serves it.
    control.publish(sign(d, &versioned_config("two"), &key, "prod", 2));
    let took = wait_for_version(&node, "two", Duration::from_secs(10)).await;
    eprintln!("new bundle served -> node answering with it: {took:?} (poll interval 200ms)");

    // Tampered, foreign-signed, replayed and wrong-environment bundles never replace it.
    let good = sign(d, &versioned_config("three"), &key, "prod", 3);
    let mut jws: Value = serde_json::from_slice(&good).unwrap();
    let mut payload: Value = serde_json::from_slice(&B64.decode(jws["payload"].as_str().unwrap()).unwrap()).unwrap();
    payload["config"] = json!(versioned_config("evil").to_string());
    jws["payload"] = json!(B64.encode(payload.to_string()));
    let cases: [(Vec<u8>, &str); 4] = [
        (jws.to_string().into_bytes(), "signature does not verify"),
        (sign(d, &versioned_config("evil"), &rogue, "prod", 4), "not in the trust list"),
        (sign(d, &versioned_config("old"), &key, "prod", 1), "lower than the running serial"),
        (sign(d, &versioned_config("dev"), &key, "dev", 5), "this node serves shop/prod"),
    ];
    for (bytes, reason) in cases {
        control.publish(bytes);
        let status = wait_for_status(&control, reason).await;
        assert_eq!(status["serial"], 2, "still on serial 2 after: {reason}");
        assert_eq!(version_of(&node).await.as_deref(), Some("two"));
    }
    let invalid = {
        let mut c = versioned_config("x");
        c["version"] = json!(2);
        c
    };
    let cfg = d.join("invalid.json");
    std::fs::write(&cfg, invalid.to_string()).unwrap();
    let out = weir(&[
        "bundle",
        "sign",
        "-c",
        cfg.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--gateway",
        "shop",
        "--env",
        "prod",
        "--serial",
        "6",
        "-o",
        d.join("x").to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "weir refuses to sign an invalid config");

    // The control plane goes away; a restarted node starts from its cache.
    let addr = control.server.addr;
    drop(control);
    drop(node);
    let node = Process::start(&args, d);
    assert_eq!(version_of(&node).await.as_deref(), Some("two"), "served from the cached bundle");
    assert!(node.log().contains("starting from the cached bundle"));

    // It comes back with something newer; the node picks it up.
    let control = ControlPlane::start(Some(addr)).await;
    control.publish(sign(d, &versioned_config("four"), &key, "prod", 7));
    wait_for_version(&node, "four", Duration::from_secs(20)).await;
    drop(node);
    drop(control);

    // No control plane and no cache: a clear refusal naming both.
    std::fs::remove_dir_all(&cache).unwrap();
    let out = std::process::Command::new(crate::support::weir_bin()).args(&args).args(["-p", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the control plane") && err.contains("does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("krakend.json");
    std::fs::write(&cfg, versioned_config("a").to_string()).unwrap();
    let node = Process::start(&["run", "-c", cfg.to_str().unwrap()], dir.path());
    let url = node.url("/v");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (stop, ok, failed, seen, url) = (stop.clone(), ok.clone(), failed.clone(), seen.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, http_body_util::Empty<Bytes>>(
                hyper_util::client::legacy::connect::HttpConnector::new(),
            );
            let deadline = Instant::now() + Duration::from_secs(8);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match client.get(url.parse().unwrap()).await {
                    Ok(r) if r.status() == 200 => {
                        let body = http_body_util::BodyExt::collect(r.into_body()).await.map(|c| c.to_bytes());
                        match body.ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
                            Some(v) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                seen.lock().unwrap().insert(v["version"].as_str().unwrap_or("").to_owned());
                            }
                            None => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let version = if i % 2 == 0 { "b" } else { "a" };
        std::fs::write(&cfg, versioned_config(version).to_string()).unwrap();
        node.signal("HUP");
    }
    // Signals can coalesce: let the last reload land before the next file is written.
    wait_for_version(&node, "a", Duration::from_secs(5)).await;
    // An invalid config is refused and the last good one keeps serving.
    std::fs::write(&cfg, "{\"version\": 3, \"endpoints\": [{\"endpoint\": \"/v\"}]}").unwrap();
    node.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("reload under load: {ok} requests answered, {failed} failed, 10 reloads");
    assert_eq!(failed, 0);
    assert!(ok > 200, "{ok}");
    assert_eq!(*seen.lock().unwrap(), ["a".to_owned(), "b".to_owned()].into_iter().collect());
    assert_eq!(version_of(&node).await.as_deref(), Some("a"), "the last valid config is still served");
    assert!(node.log().contains("config reload refused"), "{}", node.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reloads_when_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("krakend.yaml");
    let yaml = |v: &str| {
        format!(
            "version: 3\nhost: [\"http://127.0.0.1:9\"]\nendpoints:\n  - endpoint: /v\n    backend: [{{url_pattern: /x}}]\n    extra_config: {{proxy: {{static: {{strategy: always, data: {{version: {v}}}}}}}}}\n"
        )
    };
    std::fs::write(&cfg, yaml("a")).unwrap();
    let node = Process::start(&["run", "--watch", "-c", cfg.to_str().unwrap()], dir.path());
    assert_eq!(version_of(&node).await.as_deref(), Some("a"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::write(&cfg, yaml("bb")).unwrap();
    wait_for_version(&node, "bb", Duration::from_secs(5)).await;
}

/// A reload keeps what rate limits and circuit breakers hold where their settings did
/// not change (a new bundle, or a key issued in the portal, must not refill every
/// client's bucket or close an open breaker), and starts afresh where they did.
#[tokio::test]
async fn reload_keeps_rate_limit_buckets_and_breakers_whose_settings_did_not_change() {
    let ok = Backend::json(json!({"ok": true})).await;
    let broken = Backend::start(|_| Reply::status(500)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("krakend.json");
    let write = |version: &str, max_rate: u32| {
        let config = json!({"version": 3, "endpoints": [
            {"endpoint": "/v", "backend": [{"host": ["http://127.0.0.1:9"], "url_pattern": "/x"}],
             "extra_config": {"proxy": {"static": {"strategy": "always", "data": {"version": version}}}}},
            {"endpoint": "/limited", "backend": [{"host": [ok.url], "url_pattern": "/"}],
             "extra_config": {"qos/ratelimit/router": {"max_rate": max_rate, "every": "1h"}}},
            {"endpoint": "/cb", "backend": [{"host": [broken.url], "url_pattern": "/",
             "extra_config": {"qos/circuit-breaker": {"interval": 3600, "timeout": 3600, "max_errors": 0}}}]}]});
        std::fs::write(&cfg, config.to_string()).unwrap();
    };
    write("a", 2);
    let node = Process::start(&["run", "--watch", "-c", cfg.to_str().unwrap()], dir.path());
    let get = |path: &str| {
        let url = node.url(path);
        async move { send(Method::GET, &url, &[], Bytes::new()).await.status }
    };
    assert_eq!(version_of(&node).await.as_deref(), Some("a"));
    assert_eq!([get("/limited").await, get("/limited").await, get("/limited").await], [200, 200, 503]);
    assert_eq!(get("/cb").await, 500);
    assert_eq!(broken.hits(), 1, "one failure opens the breaker");

    tokio::time::sleep(Duration::from_millis(50)).await;
    write("b", 2);
    wait_for_version(&node, "b", Duration::from_secs(5)).await;
    assert_eq!(get("/limited").await, 503, "the same limit keeps its empty bucket");
    assert_eq!(get("/cb").await, 500);
    assert_eq!(broken.hits(), 1, "the same breaker stays open");

    tokio::time::sleep(Duration::from_millis(50)).await;
    write("c", 3);
    wait_for_version(&node, "c", Duration::from_secs(5)).await;
    assert_eq!(get("/limited").await, 200, "a changed limit starts with a full bucket");
}
