//! The `weir` command line: `run`, `check` and `version`, with KrakenD's flags.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{self, Checked, Report};
use crate::runtime::{Flags, Runtime};
use crate::server;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Weir API gateway: runs KrakenD v3 configs"
)]
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

/// Entry point of the `weir` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("Weir Version {}", crate::VERSION);
            ExitCode::SUCCESS
        }
        Command::Check {
            config,
            lint,
            allow_unsupported,
            test_routes: _,
            debug,
        } => check(&config, lint, allow_unsupported, debug),
        Command::Run {
            config,
            port,
            debug,
            allow_unsupported,
            workers,
        } => {
            init_logging(debug);
            run(&config, port, debug, allow_unsupported, workers)
        }
    }
}

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
            if blocking > 0 && !allow_unsupported {
                " (pass --allow-unsupported to accept them)"
            } else {
                ""
            },
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

fn run(
    path: &Path,
    port: Option<u16>,
    debug: bool,
    allow_unsupported: bool,
    workers: Option<usize>,
) -> ExitCode {
    let Checked { service, report } = config::load(path);
    print_report(&report, false);
    if !report.is_runnable(false, allow_unsupported) {
        eprintln!(
            "{}: refusing to start; fix the problems above",
            path.display()
        );
        if report.errors.is_empty() {
            eprintln!("(or pass --allow-unsupported to run without the unsupported components)");
        }
        return ExitCode::FAILURE;
    }
    let Some(service) = service else {
        return ExitCode::FAILURE;
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = workers.filter(|n| *n > 0) {
        builder.worker_threads(n);
    }
    let tokio = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio.block_on(async move {
        let runtime = match Runtime::compile(&service, Flags { debug }) {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let settings = match server::Settings::from_service(&service) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = server::listen_addr(&service, port);
        let listener = match server::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(addr = %local, endpoints = service.endpoints.len(), tls = service.tls.is_some(), "weir listening");
        let shared = Arc::new(arc_swap::ArcSwap::from_pointee(runtime));
        server::serve(listener, settings, shared, server::shutdown_signal()).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}
