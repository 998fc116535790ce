//! The `weir` command line: `run`, `check` and `version`, with KrakenD's flags.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{self, Checked, Report, Service};
use crate::runtime::{Flags, Runtime};
use crate::server;

#[derive(Parser)]
#[command(name = "weir", version, about = "Weir API gateway: runs KrakenD v3 configs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway described by a config file.
    Run {
        /// Config file (.json, .yaml/.yml or .toml).
        #[arg(short, long, default_value = "./krakend.json", env = "WEIR_CONFIG")]
        config: PathBuf,
        /// Listen on this port instead of the config's.
        #[arg(short, long)]
        port: Option<u16>,
        /// Enable the /__debug/ endpoint and debug logging.
        #[arg(short, long)]
        debug: bool,
        /// Start even if the config uses components Weir does not implement yet
        /// (they are then not applied).
        #[arg(long)]
        allow_unsupported: bool,
        /// Worker threads (default: one per core).
        #[arg(long, env = "WEIR_WORKERS")]
        workers: Option<usize>,
        /// Reload the config file when it changes (it is always reloaded on SIGHUP).
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        managed: ManagedArgs,
    },
    /// Create an Ed25519 signing key pair for bundles: FILE (private) and its .pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign, verify and inspect config bundles.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Security lint of a config: findings with rule ids and severities (see --rules).
    Audit {
        #[arg(short, long, default_value = "./krakend.json")]
        config: PathBuf,
        /// Show findings of this severity and above: low, medium, high, critical.
        #[arg(short, long, default_value = "low")]
        severity: String,
        /// Exit 1 when a finding of this severity or above is shown.
        #[arg(long, default_value = "high")]
        fail_on: String,
        /// Rule ids to skip, comma-separated (e.g. WA701,WA702).
        #[arg(short, long, value_delimiter = ',')]
        ignore: Vec<String>,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
        /// List the rules and exit.
        #[arg(long)]
        rules: bool,
    },
    /// Validate a config file and report every problem with its path.
    Check {
        #[arg(short, long, default_value = "./krakend.json")]
        config: PathBuf,
        /// Also reject unknown keys.
        #[arg(long)]
        lint: bool,
        /// Accept components Weir does not implement yet.
        #[arg(long)]
        allow_unsupported: bool,
        /// Also compile the routing table (always done; accepted for KrakenD compatibility).
        #[arg(short = 't', long = "test-gin-routes")]
        test_routes: bool,
        /// Print the effective config after defaults and overrides (KrakenD's -d).
        #[arg(short, long)]
        debug: bool,
    },
    /// Print the version.
    Version,
}

/// Managed mode: the config comes from a control plane as a signed bundle.
#[derive(clap::Args)]
struct ManagedArgs {
    /// Control-plane base URL; turns on managed mode (the -c file is then not read).
    #[arg(long, env = "WEIR_CONTROL", requires_all = ["gateway", "env", "token_file", "trust"])]
    control: Option<String>,
    /// Gateway name this node serves.
    #[arg(long, env = "WEIR_GATEWAY")]
    gateway: Option<String>,
    /// Environment this node serves.
    #[arg(long, env = "WEIR_ENV")]
    env: Option<String>,
    /// File holding the node token.
    #[arg(long, env = "WEIR_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Public key (a JWK, or a JWK Set such as weir-control's signing.pub) whose bundles
    /// are accepted; repeat it to trust several files.
    #[arg(long)]
    trust: Vec<PathBuf>,
    /// Where the last accepted bundle is kept.
    #[arg(long, env = "WEIR_CACHE_DIR", default_value = "./weir-cache")]
    cache_dir: PathBuf,
    /// Time between bundle fetches (Go duration).
    #[arg(long, default_value = "2s", value_parser = config::parse_duration)]
    poll_interval: std::time::Duration,
    /// Node id reported to the control plane (default: the host name).
    #[arg(long, env = "WEIR_NODE_ID")]
    node_id: Option<String>,
    /// How often request metrics go to the control plane as OTLP/HTTP (0s: never).
    #[arg(long, env = "WEIR_METRICS_INTERVAL", default_value = "10s", value_parser = config::parse_duration)]
    metrics_interval: std::time::Duration,
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Sign a config as a bundle for one gateway and environment.
    Sign {
        #[arg(short, long)]
        config: PathBuf,
        /// Private key (JWK) from `weir keygen`.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        gateway: String,
        #[arg(long)]
        env: String,
        #[arg(long)]
        serial: u64,
        /// Config version number to record (a control plane sets it).
        #[arg(long, default_value_t = 0)]
        version: u64,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Verify a bundle's signature, scope and config.
    Verify {
        bundle: PathBuf,
        #[arg(long, required = true)]
        trust: Vec<PathBuf>,
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long)]
        env: Option<String>,
    },
    /// Print a bundle's header and metadata without verifying it.
    Inspect { bundle: PathBuf },
}

/// Entry point of the `weir` binary.
pub fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("Weir Version {}", crate::VERSION);
            ExitCode::SUCCESS
        }
        Command::Audit { config, severity, fail_on, ignore, json, rules } => {
            audit(&config, &severity, &fail_on, &ignore, json, rules)
        }
        Command::Check { config, lint, allow_unsupported, test_routes: _, debug } => {
            check(&config, lint, allow_unsupported, debug)
        }
        Command::Run { config, port, debug, allow_unsupported, workers, watch, managed } => {
            let opts = RunOptions { port, debug, allow_unsupported, workers, watch };
            match managed.control.clone() {
                Some(_) => run_managed(managed, &opts),
                None => run(&config, &opts),
            }
        }
        Command::Keygen { out } => keygen(&out),
        Command::Bundle(cmd) => bundle_command(cmd),
    }
}

/// Turns transparent huge pages off for this process. With the kernel's THP on `always`,
/// the allocator's arenas fault in as 2 MiB pages, and a gateway holding many small
/// per-connection buffers pays for whole huge pages: peak RSS with 1,000 connections was
/// 74-86 MB with THP and 57-65 MB without, at the same throughput within the noise.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        // Only memory use is at stake: say so and go on.
        eprintln!("weir: could not turn transparent huge pages off: {e}");
    }
}

/// Logs to stderr at `WEIR_LOG`, else debug with `-d`, else the config's
/// `telemetry/logging.level`, else info.
fn init_logging(debug: bool, config_level: Option<&str>) {
    let default = if debug { "debug" } else { config_level.unwrap_or("info") };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn print_report(report: &Report, lint: bool) {
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    for u in &report.unknown_keys {
        eprintln!("{}: {u}", if lint { "error" } else { "warning" });
    }
    for u in &report.unsupported {
        eprintln!("unsupported: {u}");
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
}

fn check(path: &Path, lint: bool, allow_unsupported: bool, debug: bool) -> ExitCode {
    let Checked { service, report } = config::load(path);
    print_report(&report, lint);
    if !report.is_runnable(lint, allow_unsupported) {
        let blocking = report.unsupported.iter().filter(|u| u.blocking).count();
        eprintln!(
            "{}: {} error(s){}{}",
            path.display(),
            report.errors.len() + if lint { report.unknown_keys.len() } else { 0 },
            if blocking > 0 && !allow_unsupported {
                format!(", {blocking} unsupported component(s)")
            } else {
                String::new()
            },
            if blocking > 0 && !allow_unsupported { " (pass --allow-unsupported to accept them)" } else { "" },
        );
        return ExitCode::FAILURE;
    }
    let Some(service) = service else {
        return ExitCode::FAILURE;
    };
    if let Err(e) = Runtime::compile(&service, Flags::default()) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    if debug {
        println!("{service:#?}");
    }
    println!("Syntax OK! {} endpoint(s)", service.endpoints.len());
    ExitCode::SUCCESS
}

fn audit(path: &Path, severity: &str, fail_on: &str, ignore: &[String], json: bool, rules: bool) -> ExitCode {
    use crate::audit::{RULES, Severity};
    if rules {
        for r in RULES {
            println!("{}  {:<8}  {}", r.id, r.severity.label(), r.summary);
        }
        return ExitCode::SUCCESS;
    }
    let (Some(shown), Some(failing)) = (Severity::parse(severity), Severity::parse(fail_on)) else {
        return fail("severities are low, medium, high or critical");
    };
    if let Some(unknown) = ignore.iter().find(|id| !RULES.iter().any(|r| r.id == id.as_str())) {
        return fail(format!("unknown rule {unknown:?} (weir audit --rules lists them)"));
    }
    // Audit only what would run: an invalid config gets check's report instead.
    let Checked { service, report } = config::load(path);
    if service.is_none() {
        print_report(&report, false);
        return fail(format!("{}: the config is invalid; fix it (weir check) before auditing it", path.display()));
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return fail(format!("{}: {e}", path.display())),
    };
    let root = match config::to_value(&text, config::Format::from_path(path)) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let findings: Vec<_> = crate::audit::audit(&root)
        .into_iter()
        .filter(|f| f.severity >= shown && !ignore.iter().any(|id| id == f.rule))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&findings).unwrap_or_default());
    } else {
        for f in &findings {
            println!("{:<8}  {}  {}: {}", f.severity.label(), f.rule, f.path, f.message);
        }
        let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
        println!(
            "{}: {} finding(s): {} critical, {} high, {} medium, {} low",
            path.display(),
            findings.len(),
            count(Severity::Critical),
            count(Severity::High),
            count(Severity::Medium),
            count(Severity::Low)
        );
    }
    if findings.iter().any(|f| f.severity >= failing) { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

struct RunOptions {
    port: Option<u16>,
    debug: bool,
    allow_unsupported: bool,
    workers: Option<usize>,
    watch: bool,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn tokio_runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, ExitCode> {
    let workers = workers
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get));
    // One worker: a single-threaded runtime, which skips the work-stealing scheduler's
    // cross-thread bookkeeping on every wake-up.
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all();
    builder.build().map_err(|e| fail(format!("cannot start the async runtime: {e}")))
}

/// Serves `shared` with the service's listener and exporters until SIGTERM/SIGINT.
async fn serve(service: &Service, port: Option<u16>, shared: crate::runtime::Shared) -> ExitCode {
    match server::run(service, port, shared, server::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn run(path: &Path, opts: &RunOptions) -> ExitCode {
    let Checked { service, report } = config::load(path);
    print_report(&report, false);
    if !report.is_runnable(false, opts.allow_unsupported) {
        eprintln!("{}: refusing to start; fix the problems above", path.display());
        if report.errors.is_empty() {
            eprintln!("(or pass --allow-unsupported to run without the unsupported components)");
        }
        return ExitCode::FAILURE;
    }
    let Some(service) = service else {
        return ExitCode::FAILURE;
    };
    init_logging(opts.debug, service.extra_config.get("telemetry/logging").and_then(crate::telemetry::access::level));
    let tokio = match tokio_runtime(opts.workers) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let flags = Flags { debug: opts.debug };
    tokio.block_on(async move {
        let runtime = match Runtime::compile(&service, flags) {
            Ok(rt) => rt,
            Err(e) => return fail(e),
        };
        let shared = Arc::new(arc_swap::ArcSwap::from_pointee(runtime));
        tokio::spawn(crate::node::reload_on_change(
            path.to_owned(),
            flags,
            opts.allow_unsupported,
            shared.clone(),
            opts.watch,
            service.clone(),
        ));
        serve(&service, opts.port, shared).await
    })
}

fn run_managed(args: ManagedArgs, opts: &RunOptions) -> ExitCode {
    // The config arrives later, in a bundle: its logging level is not applied.
    init_logging(opts.debug, None);
    let token = match args.token_file.as_deref().map(std::fs::read_to_string) {
        Some(Ok(t)) if !t.trim().is_empty() => t.trim().to_owned(),
        Some(Ok(_)) => return fail("the token file is empty"),
        Some(Err(e)) => return fail(format!("cannot read the token file: {e}")),
        None => return fail("--token-file is required with --control"),
    };
    let mut keys = Vec::new();
    for path in &args.trust {
        match crate::bundle::PublicKey::load_set(path) {
            Ok(k) => keys.extend(k),
            Err(e) => return fail(format!("trusted key {e}")),
        }
    }
    let node_id = args.node_id.clone().or_else(crate::node::hostname).unwrap_or_else(|| "node".into());
    let settings = crate::node::Managed {
        control: args.control.unwrap_or_default(),
        gateway: args.gateway.unwrap_or_default(),
        environment: args.env.unwrap_or_default(),
        token,
        trust: crate::bundle::TrustList::new(keys),
        cache_dir: args.cache_dir,
        poll_interval: args.poll_interval,
        node_id,
        flags: Flags { debug: opts.debug },
        metrics_interval: Some(args.metrics_interval).filter(|d| !d.is_zero()),
    };
    let tokio = match tokio_runtime(opts.workers) {
        Ok(t) => t,
        Err(code) => return code,
    };
    tokio.block_on(async move {
        let (node, runtime, service) = match crate::node::Node::boot(settings).await {
            Ok(booted) => booted,
            Err(e) => return fail(e),
        };
        let shared = Arc::new(arc_swap::ArcSwap::from_pointee(runtime));
        tokio::spawn(node.follow(shared.clone()));
        serve(&service, opts.port, shared).await
    })
}

/// `weir keygen --out signing.key`: writes `signing.key` (private, mode 600) and
/// `signing.pub`.
fn keygen(out: &Path) -> ExitCode {
    let key = match crate::bundle::SigningKey::generate() {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    let public = out.with_extension("pub");
    if public == out {
        return fail("the private key file must not end in .pub");
    }
    if let Err(e) = write_private(out, key.to_jwk().as_bytes()) {
        return fail(format!("{}: {e}", out.display()));
    }
    if let Err(e) = std::fs::write(&public, key.public().to_jwk()) {
        return fail(format!("{}: {e}", public.display()));
    }
    println!("private key: {} (keep it secret)", out.display());
    println!("public key:  {}", public.display());
    println!("key id:      {}", key.kid());
    ExitCode::SUCCESS
}

/// Writes a new secret file readable by its owner only; never overwrites one.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

fn load_trust(paths: &[PathBuf]) -> Result<crate::bundle::TrustList, ExitCode> {
    let mut keys = Vec::new();
    for t in paths {
        keys.extend(crate::bundle::PublicKey::load_set(t).map_err(fail)?);
    }
    Ok(crate::bundle::TrustList::new(keys))
}

fn bundle_command(cmd: BundleCommand) -> ExitCode {
    use crate::bundle;
    match cmd {
        BundleCommand::Sign { config, key, gateway, env, serial, version, out } => {
            let key = match bundle::SigningKey::load(&key) {
                Ok(k) => k,
                Err(e) => return fail(e),
            };
            let checked = config::load(&config);
            print_report(&checked.report, false);
            if !checked.report.errors.is_empty() {
                eprintln!("{}: not signed; fix the problems above", config.display());
                return ExitCode::FAILURE;
            }
            let text = std::fs::read_to_string(&config)
                .map_err(|e| e.to_string())
                .and_then(|t| bundle::canonical_config(&t, config::Format::from_path(&config)));
            let text = match text {
                Ok(t) => t,
                Err(e) => return fail(e),
            };
            let payload = bundle::Payload {
                metadata: bundle::Metadata {
                    gateway,
                    environment: env,
                    serial,
                    config_version: version,
                    config_digest: bundle::digest(text.as_bytes()),
                    issued_at: bundle::now_rfc3339(),
                },
                config: text,
                keyring: Vec::new(),
                plans: Default::default(),
            };
            let bytes = bundle::sign(&payload, &key).and_then(|jws| serde_json::to_vec_pretty(&jws));
            match bytes.map_err(|e| e.to_string()).and_then(|b| std::fs::write(&out, b).map_err(|e| e.to_string())) {
                Ok(()) => {
                    println!(
                        "signed {} (serial {serial}, {}) with key {}",
                        out.display(),
                        payload.metadata.config_digest,
                        key.kid()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("{}: {e}", out.display())),
            }
        }
        BundleCommand::Verify { bundle: path, trust, gateway, env } => {
            let trust = match load_trust(&trust) {
                Ok(t) => t,
                Err(code) => return code,
            };
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => return fail(format!("{}: {e}", path.display())),
            };
            let expect =
                bundle::Expect { gateway: gateway.as_deref(), environment: env.as_deref(), running_serial: None };
            match bundle::parse(&bytes).and_then(|jws| bundle::verify(&jws, &trust, &expect)) {
                Ok(v) => {
                    let m = &v.payload.metadata;
                    println!(
                        "OK: {}/{} serial {} {} signed by {} at {}",
                        m.gateway, m.environment, m.serial, m.config_digest, v.kid, m.issued_at
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rejected: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        BundleCommand::Inspect { bundle: path } => {
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| bundle::parse(&b).and_then(|jws| bundle::inspect(&jws)).map_err(|e| e.to_string()));
            match parsed {
                Ok((header, m)) => {
                    println!("header:         {header}");
                    println!("gateway:        {}", m.gateway);
                    println!("environment:    {}", m.environment);
                    println!("serial:         {}", m.serial);
                    println!("config version: {}", m.config_version);
                    println!("config digest:  {}", m.config_digest);
                    println!("issued at:      {}", m.issued_at);
                    println!("(not verified: `weir bundle verify` checks the signature)");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    }
}
