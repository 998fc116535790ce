//! The `weir` binary as a user runs it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Backend, free_port, weir_bin};

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    path
}

fn check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(weir_bin()).arg("check").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_reports_every_problem_with_its_path_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        &dir,
        "bad.json",
        r#"{"version": 3, "timeout": "soon", "endpoints": [
        {"endpoint": "/users/{user}", "backend": [{"host": ["http://b"], "url_pattern": "/u/{id}"}]},
        {"endpoint": "/x", "output_encoding": "csv", "backend": [{"url_pattern": "/x"}]}]}"#,
    );
    let (code, _, err) = check(&["-c", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("error: timeout: "), "{err}");
    assert!(
        err.contains("error: endpoints[0].backend[0].url_pattern: {id} is not a parameter of /users/{user}"),
        "{err}"
    );
    assert!(err.contains("error: endpoints[1].output_encoding: \"csv\" is not one of"), "{err}");
    assert!(err.contains("error: endpoints[1].backend[0].host: no host"), "{err}");

    let (code, _, err) = check(&["-c", dir.path().join("missing.json").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn check_lint_unsupported_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let typo = write(&dir, "typo.json", r#"{"version": 3, "$schema": "s", "hots": [], "endpoints": []}"#);
    let (code, out, err) = check(&["-c", typo.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Syntax OK"));
    assert!(err.contains("warning: hots: unknown key"), "{err}");
    let (code, _, err) = check(&["--lint", "-c", typo.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("error: hots: unknown key"), "{err}");

    let auth = write(
        &dir,
        "auth.json",
        r#"{"version": 3, "host": ["http://b"], "endpoints": [
        {"endpoint": "/a", "extra_config": {"modifier/lua-endpoint": {}}, "backend": [{"url_pattern": "/"}]}]}"#,
    );
    let (code, _, err) = check(&["-c", auth.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("unsupported: endpoints[0].extra_config: \"modifier/lua-endpoint\" is not supported yet"),
        "{err}"
    );
    assert_eq!(check(&["--allow-unsupported", "-c", auth.to_str().unwrap()]).0, 0);

    let yaml = write(
        &dir,
        "k.yaml",
        "version: 3\nhost: [\"http://b:1\"]\nendpoints:\n  - endpoint: /a\n    backend:\n      - url_pattern: /x\n",
    );
    let toml = write(
        &dir,
        "k.toml",
        "version = 3\nhost = [\"http://b:1\"]\n[[endpoints]]\nendpoint = \"/a\"\n[[endpoints.backend]]\nurl_pattern = \"/x\"\n",
    );
    for f in [yaml, toml] {
        let (code, out, err) = check(&["-c", f.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("1 endpoint"));
    }
}

/// Runs `weir run` and waits until it answers on its port.
struct Running(std::process::Child, u16);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(config: &std::path::Path, extra: &[&str]) -> Running {
    let port = free_port();
    let child = Command::new(weir_bin())
        .args(["run", "-c", config.to_str().unwrap(), "-p", &port.to_string()])
        .args(extra)
        .env("KRAKEND_NAME", "from-env")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = Running(child, port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "weir did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_on_the_given_port_and_stops_gracefully_on_sigterm() {
    let slow =
        Backend::start(|_| crate::support::Reply::json(json!({"ok": true})).after(Duration::from_millis(1500))).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        &dir,
        "k.json",
        &json!({"version": 3, "port": 1, "listen_ip": "127.0.0.1", "name": "x",
        "endpoints": [{"endpoint": "/slow", "backend": [{"host": [slow.url], "url_pattern": "/"}]}]})
        .to_string(),
    );
    let mut running = start(&cfg, &[]);
    let url = format!("http://127.0.0.1:{}/slow", running.1);
    let request =
        tokio::spawn(async move { crate::support::send(http::Method::GET, &url, &[], bytes::Bytes::new()).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pid = running.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let r = request.await.unwrap();
    assert_eq!(r.status, 200, "the request in flight finished");
    let status = running.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn run_refuses_unsupported_components_and_invalid_configs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        &dir,
        "k.json",
        r#"{"version": 3, "host": ["http://127.0.0.1:9"], "endpoints": [
        {"endpoint": "/a", "extra_config": {"modifier/lua-endpoint": {}}, "backend": [{"url_pattern": "/"}]}]}"#,
    );
    let out = Command::new(weir_bin()).args(["run", "-c", cfg.to_str().unwrap(), "-p", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-unsupported"));
    let running = start(&cfg, &["--allow-unsupported"]);
    drop(running);

    let bad = write(&dir, "bad.json", r#"{"version": 3, "endpoints": 5}"#);
    let out = Command::new(weir_bin()).args(["run", "-c", bad.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("endpoints: must be an array"));
}

#[test]
fn version_prints_the_build() {
    let out = Command::new(weir_bin()).arg("version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Weir Version "));
}

fn audit(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(weir_bin()).arg("audit").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn audit_reports_findings_with_rule_ids_and_fails_on_high_ones() {
    let dir = tempfile::tempdir().unwrap();
    let risky = write(
        &dir,
        "risky.yaml",
        "version: 3\ndebug_endpoint: true\nextra_config:\n  security/cors:\n    allow_origins: ['*']\n    allow_credentials: true\n\
         endpoints:\n  - endpoint: /orders\n    method: POST\n    backend: [{host: ['http://b'], url_pattern: /orders}]\n",
    );
    let path = risky.to_str().unwrap();
    let (code, out, _) = audit(&["-c", path]);
    assert_eq!(code, 1, "high findings fail: {out}");
    let first = out.lines().next().unwrap();
    assert!(first.starts_with("HIGH") && first.contains("WA"), "most severe first: {out}");
    assert!(out.contains("WA101  endpoints[0]: POST /orders changes data"), "{out}");
    for id in ["WA201", "WA301", "WA401", "WA701", "WA702"] {
        assert!(out.contains(id), "{id}: {out}");
    }
    assert!(out.contains("finding(s): 0 critical, 2 high, 2 medium, 2 low"), "{out}");

    let (code, out, _) = audit(&["-c", path, "--severity", "high", "--json"]);
    assert_eq!(code, 1);
    let findings: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rules: Vec<_> = findings.as_array().unwrap().iter().map(|f| f["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, ["WA101", "WA201"]);
    assert_eq!(findings[0]["severity"], "high");

    let (code, out, _) = audit(&["-c", path, "--ignore", "WA101,WA201"]);
    assert_eq!(code, 0, "only medium and low findings left: {out}");
    let (code, _, err) = audit(&["-c", path, "--ignore", "WA999"]);
    assert_eq!((code, err.contains("unknown rule \"WA999\"")), (1, true), "{err}");

    let broken = write(&dir, "broken.json", r#"{"version": 3, "timeout": "soon", "endpoints": []}"#);
    let (code, _, err) = audit(&["-c", broken.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("timeout: ") && err.contains("fix it (weir check) before auditing it"), "{err}");

    let (code, out, _) = audit(&["--rules"]);
    assert_eq!(code, 0);
    assert!(out.lines().count() >= 14 && out.contains("WA102  CRITICAL"), "{out}");
}

/// `telemetry/logging`: one JSON line per request on stdout with the prefix, none for
/// skipped paths; the config's level sets the log level (no info lines on stderr).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_goes_to_stdout_in_the_configured_format() {
    let backend = Backend::start(|_| crate::support::Reply::json(json!({"ok": true}))).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        &dir,
        "k.json",
        &json!({"version": 3, "listen_ip": "127.0.0.1", "host": [backend.url],
            "extra_config": {
                "telemetry/logging": {"level": "WARNING", "prefix": "[EDGE]", "format": "logstash", "stdout": true},
                "router": {"logger_skip_paths": ["/__health"]}},
            "endpoints": [{"endpoint": "/ok", "backend": [{"url_pattern": "/"}]}]})
        .to_string(),
    );
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let port = free_port();
    let child = Command::new(weir_bin())
        .args(["run", "-c", cfg.to_str().unwrap(), "-p", &port.to_string()])
        .env_remove("WEIR_LOG")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let _running = Running(child, port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "weir did not start: {}", std::fs::read_to_string(&err).unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    let base = format!("http://127.0.0.1:{port}");
    for path in ["/__health", "/ok", "/missing", "/ok?x=1"] {
        crate::support::send(http::Method::GET, &format!("{base}{path}"), &[], bytes::Bytes::new()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&out).unwrap();
        if text.lines().count() >= 3 {
            break text;
        }
        assert!(Instant::now() < deadline, "three access lines: {text:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let entries: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seen: Vec<(&str, u64)> =
        entries.iter().map(|e| (e["path"].as_str().unwrap(), e["status"].as_u64().unwrap())).collect();
    assert_eq!(seen, [("/ok", 200), ("/missing", 404), ("/ok", 200)], "health checks are skipped: {lines}");
    assert!(entries.iter().all(|e| e["prefix"] == "[EDGE]" && e["method"] == "GET" && e["client_ip"] == "127.0.0.1"));
    assert!(entries.iter().all(|e| e["@timestamp"].as_str().is_some_and(|t| t.ends_with('Z'))));
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert!(!stderr.contains("weir listening") && !stderr.contains("logger_skip_paths"), "{stderr}");
}
