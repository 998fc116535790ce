//! `weir-control`: serve the control plane, run the dev suite, and the commands a CI
//! pipeline or an operator types.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::client::{ApiClient, error_message};
use crate::domain::access::Role;
use crate::domain::signing::{SigningKeys, public_path};
use crate::store::Store;

#[derive(Parser)]
#[command(name = "weir-control", version = weir_gateway::VERSION, about = "Weir control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the control plane keeps its state.
#[derive(clap::Args, Clone)]
struct Storage {
    /// Directory for the SQLite database, the signing key and (in dev) the node cache.
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "./weir-data")]
    data_dir: PathBuf,
    /// postgres://… or sqlite://… (default: sqlite://<data-dir>/weir.db).
    #[arg(long, env = "WEIR_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// A file holding the database URL (a mounted secret), instead of --database-url.
    #[arg(long, env = "WEIR_DATABASE_URL_FILE", conflicts_with = "database_url")]
    database_url_file: Option<PathBuf>,
}

impl Storage {
    fn url(&self) -> Result<String, String> {
        if let Some(file) = &self.database_url_file {
            let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            return match text.trim() {
                "" => Err(format!("{}: the file is empty; it should hold the database URL", file.display())),
                url => Ok(url.to_owned()),
            };
        }
        Ok(self.database_url.clone().unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("weir.db").display())))
    }

    fn signing_key(&self, explicit: Option<&PathBuf>) -> PathBuf {
        explicit.cloned().unwrap_or_else(|| self.data_dir.join("signing.key"))
    }

    /// Connects and migrates; SQLite's directory is created first.
    async fn open(&self) -> Result<Store, String> {
        let url = self.url()?;
        if url.starts_with("sqlite:") {
            std::fs::create_dir_all(&self.data_dir).map_err(|e| format!("{}: {e}", self.data_dir.display()))?;
        }
        let store = Store::connect(&url).await.map_err(|e| e.to_string())?;
        store.migrate().await.map_err(|e| e.to_string())?;
        Ok(store)
    }
}

/// How the CLI reaches a running control plane.
#[derive(clap::Args)]
struct Remote {
    /// Base URL of the control plane.
    #[arg(long, env = "WEIR_URL", default_value = "http://127.0.0.1:9100")]
    url: String,
    /// Operator or CI token.
    #[arg(long, env = "WEIR_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Subcommand)]
enum Command {
    /// Start the whole suite locally: control plane, developer portal, a managed gateway node and a demo upstream.
    Dev {
        #[command(flatten)]
        storage: Storage,
        /// Address of the management API and the operator UI.
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
        /// Port of the embedded gateway node.
        #[arg(long, default_value_t = 8080)]
        gateway_port: u16,
        /// Port of the demo upstream services.
        #[arg(long, default_value_t = 9300)]
        demo_port: u16,
        /// Port of the developer portal.
        #[arg(long, default_value_t = 9200)]
        portal_port: u16,
    },
    /// Run the control plane (production entry point).
    Serve {
        #[command(flatten)]
        storage: Storage,
        /// Address of the management API and the operator UI.
        #[arg(long, env = "WEIR_LISTEN", default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
        /// Private signing key set (JWK Set); default <data-dir>/signing.key.
        #[arg(long, env = "WEIR_SIGNING_KEY")]
        signing_key: Option<PathBuf>,
        /// How often nodes report (their heartbeat); silent for three of these = STALE.
        #[arg(long, env = "WEIR_NODE_HEARTBEAT", default_value = "30s", value_parser = weir_gateway::config::parse_duration)]
        node_heartbeat: Duration,
        /// How long request metrics are kept, as hourly rollups after their first day (Go duration).
        #[arg(long, env = "WEIR_METRICS_RETENTION", default_value = "2160h", value_parser = weir_gateway::config::parse_duration)]
        metrics_retention: Duration,
        #[command(flatten)]
        web: WebArgs,
    },
    /// Run the developer portal (its own listener; it never loads the signing key).
    Portal {
        #[command(flatten)]
        storage: Storage,
        #[arg(long, env = "WEIR_PORTAL_LISTEN", default_value = "127.0.0.1:9200")]
        listen: SocketAddr,
        /// The gateway URL the docs show and "try it" calls.
        #[arg(long, env = "WEIR_PORTAL_GATEWAY_URL", default_value = "http://127.0.0.1:8080")]
        gateway_url: String,
        /// New developer accounts wait for an admin's approval before they can sign in.
        #[arg(long, env = "WEIR_PORTAL_APPROVE_SIGN_UPS")]
        approve_sign_ups: bool,
        /// Send session cookies without `Secure`, for plain-HTTP setups other than localhost.
        #[arg(long, env = "WEIR_INSECURE_COOKIES")]
        insecure_cookies: bool,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[command(flatten)]
        storage: Storage,
    },
    /// Signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Create an operator, CI or admin token directly in the database (bootstrap).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Upload a config as the gateway's next version (JSON, YAML or TOML).
    Push {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(long)]
        gateway: String,
        #[arg(short, long, default_value = "")]
        message: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Promote a version to an environment (a rollback is a promotion of an older version).
    Promote {
        #[arg(long)]
        gateway: String,
        #[arg(long)]
        env: String,
        #[arg(long)]
        version: i64,
        #[command(flatten)]
        remote: Remote,
    },
}

/// The operator web UI: its public address, cookies and single sign-on.
#[derive(clap::Args)]
struct WebArgs {
    /// The URL operators use to reach this server (default: http://<listen>).
    #[arg(long, env = "WEIR_PUBLIC_URL")]
    public_url: Option<String>,
    /// Send session cookies without `Secure`, for plain-HTTP setups other than localhost.
    #[arg(long, env = "WEIR_INSECURE_COOKIES")]
    insecure_cookies: bool,
    /// OpenID Connect issuer URL; turns on single sign-on.
    #[arg(long, env = "WEIR_OIDC_ISSUER", requires_all = ["oidc_client_id", "oidc_client_secret", "oidc_role_map"])]
    oidc_issuer: Option<String>,
    /// The client id Weir is registered with at the provider.
    #[arg(long, env = "WEIR_OIDC_CLIENT_ID")]
    oidc_client_id: Option<String>,
    /// The client's secret (prefer the environment variable to the command line).
    #[arg(long, env = "WEIR_OIDC_CLIENT_SECRET", hide_env_values = true)]
    oidc_client_secret: Option<String>,
    /// The ID-token claim listing the user's groups.
    #[arg(long, env = "WEIR_OIDC_GROUPS_CLAIM", default_value = "groups")]
    oidc_groups_claim: String,
    /// Groups to roles: `weir-admins=admin,platform=operator,*=viewer`.
    #[arg(long, env = "WEIR_OIDC_ROLE_MAP")]
    oidc_role_map: Option<String>,
}

impl WebArgs {
    fn settings(&self, listen: SocketAddr) -> Result<crate::ui::UiSettings, String> {
        let public = self.public_url.clone().unwrap_or_else(|| format!("http://{listen}"));
        let sso = match &self.oidc_issuer {
            None => None,
            Some(issuer) => {
                let settings = crate::ui::sso::SsoSettings {
                    issuer: issuer.clone(),
                    client_id: self.oidc_client_id.clone().unwrap_or_default(),
                    client_secret: self.oidc_client_secret.clone().unwrap_or_default(),
                    redirect_url: format!("{}/auth/sso/callback", public.trim_end_matches('/')),
                    groups_claim: self.oidc_groups_claim.clone(),
                    role_map: crate::ui::sso::SsoSettings::parse_role_map(self.oidc_role_map.as_deref().unwrap_or(""))
                        .map_err(|e| format!("--oidc-role-map: {e}"))?,
                };
                if settings.role_map.is_empty() {
                    return Err("--oidc-role-map maps no group to a role: nobody could sign in".into());
                }
                Some(crate::ui::sso::Sso::new(settings)?)
            }
        };
        Ok(crate::ui::UiSettings::new(!self.insecure_cookies, sso))
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create the signing key set if it does not exist.
    Init {
        #[command(flatten)]
        storage: Storage,
        #[arg(long, env = "WEIR_SIGNING_KEY")]
        signing_key: Option<PathBuf>,
    },
    /// Add a new signing key; older keys stay in the published public set.
    Rotate {
        #[command(flatten)]
        storage: Storage,
        #[arg(long, env = "WEIR_SIGNING_KEY")]
        signing_key: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Issue a token and print it (it is stored only as a hash).
    Create {
        #[command(flatten)]
        storage: Storage,
        #[arg(long)]
        name: String,
        /// admin, operator or viewer.
        #[arg(long, default_value = "operator")]
        role: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the audit hash chain; exits 1 if any entry was changed or removed.
    Verify {
        #[command(flatten)]
        storage: Storage,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev { storage, listen, gateway_port, demo_port, portal_port } => {
                crate::dev::run(crate::dev::Options {
                    data_dir: storage.data_dir.clone(),
                    database_url: storage.url()?,
                    listen,
                    gateway_port,
                    demo_port,
                    portal_port,
                })
                .await
            }
            Command::Serve { storage, listen, signing_key, node_heartbeat, metrics_retention, web } => {
                let ui = web.settings(listen)?;
                let key = storage.signing_key(signing_key.as_ref());
                serve(&storage, listen, key, (node_heartbeat, metrics_retention), ui).await
            }
            Command::Portal { storage, listen, gateway_url, approve_sign_ups, insecure_cookies } => {
                let store = storage.open().await?;
                let settings =
                    weir_portal::Settings { secure_cookies: !insecure_cookies, approve_sign_ups, gateway_url };
                let portal = weir_portal::Portal::new(std::sync::Arc::new(store.clone()), settings)?;
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
                tracing::info!(addr = %listen, "developer portal listening");
                weir_portal::serve(listener, portal, weir_gateway::server::shutdown_signal())
                    .await
                    .map_err(|e| e.to_string())?;
                store.close().await;
                Ok(())
            }
            Command::Migrate { storage } => storage.open().await.map(|_| println!("migrations applied")),
            Command::Keys(KeysCommand::Init { storage, signing_key }) => {
                let path = storage.signing_key(signing_key.as_ref());
                if path.exists() {
                    SigningKeys::load(&path)
                        .map(|k| println!("{} exists; active key {}", path.display(), k.active().kid()))
                } else {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                    }
                    SigningKeys::generate(&path).map(|k| {
                        println!("signing key {} (key id {})", path.display(), k.active().kid());
                        println!("nodes trust {}", public_path(&path).display());
                    })
                }
            }
            Command::Keys(KeysCommand::Rotate { storage, signing_key }) => {
                let path = storage.signing_key(signing_key.as_ref());
                SigningKeys::rotate(&path).map(|(_, kid)| {
                    println!("new signing key {kid}; new bundles are signed with it");
                    println!("give nodes the updated public set {} before promoting", public_path(&path).display());
                })
            }
            Command::Tokens(TokensCommand::Create { storage, name, role }) => {
                let role = Role::parse(&role)
                    .filter(|r| *r != Role::Node)
                    .ok_or_else(|| format!("unknown role {role:?}: use admin, operator or viewer"))?;
                let store = storage.open().await?;
                let issued =
                    crate::control::issue_token(&store, "cli", &name, role, None).await.map_err(|e| e.to_string())?;
                println!("{}", issued.token);
                Ok(())
            }
            Command::Audit(AuditCommand::Verify { storage }) => {
                let store = storage.open().await?;
                let v = store.verify_audit().await.map_err(|e| e.to_string())?;
                if v.ok {
                    println!("audit chain intact: {} entries", v.entries);
                    Ok(())
                } else {
                    Err(format!(
                        "audit chain broken at entry {}: {}",
                        v.broken_at.unwrap_or_default(),
                        v.problem.unwrap_or_default()
                    ))
                }
            }
            Command::Push { config, gateway, message, remote } => push(&config, &gateway, &message, &remote).await,
            Command::Promote { gateway, env, version, remote } => promote(&gateway, &env, version, &remote).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

/// `timing`: the nodes' heartbeat, and how long request metrics are kept.
async fn serve(
    storage: &Storage,
    listen: SocketAddr,
    signing_key: PathBuf,
    timing: (Duration, Duration),
    ui: crate::ui::UiSettings,
) -> Result<(), String> {
    let (heartbeat, metrics_retention) = timing;
    let keys = SigningKeys::load(&signing_key)
        .map_err(|e| format!("{e}\n(create a signing key with `weir-control keys init`)"))?;
    let store = storage.open().await?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    tracing::info!(addr = %listen, database = ?store.kind(), kid = keys.active().kid(), "weir-control listening");
    let publisher = tokio::spawn(crate::control::publish_keyrings(store.clone(), signing_key.clone()));
    let pruner = tokio::spawn(crate::control::maintain_metrics(store.clone(), metrics_retention));
    let state = AppState { store: store.clone(), signing_key, heartbeat, ui: std::sync::Arc::new(ui) };
    crate::serve(listener, state, weir_gateway::server::shutdown_signal()).await.map_err(|e| e.to_string())?;
    publisher.abort();
    pruner.abort();
    // Metrics summed since the last flush are written before the process ends.
    if let Err(e) = store.flush_rollups().await {
        tracing::warn!(error = %e, "metric rollups of the last second were lost");
    }
    store.close().await;
    Ok(())
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn push(config: &Path, gateway: &str, message: &str, remote: &Remote) -> Result<(), String> {
    let text = std::fs::read(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let format = crate::domain::upload::format_name(weir_gateway::config::Format::from_path(config));
    let client = ApiClient::new(&remote.url, &remote.token)?;
    let path = format!("/api/v1/gateways/{}/versions?message={}&format={format}", encode(gateway), encode(message));
    let (status, body) = client.send(Method::POST, &path, &format!("application/{format}"), text).await?;
    for w in body.get("warnings").and_then(Value::as_array).into_iter().flatten() {
        eprintln!("warning: {}", problem_line(w));
    }
    match status {
        StatusCode::CREATED => {
            println!("{gateway}: version {} ({})", body["version"], body["digest"].as_str().unwrap_or_default());
            Ok(())
        }
        StatusCode::OK => {
            println!("{gateway}: unchanged, still version {}", body["version"]);
            Ok(())
        }
        StatusCode::UNPROCESSABLE_ENTITY => {
            for e in body.get("errors").and_then(Value::as_array).into_iter().flatten() {
                eprintln!("error: {}", problem_line(e));
            }
            Err(format!("{}: {}", config.display(), error_message(&body)))
        }
        status => Err(format!("{status}: {}", error_message(&body))),
    }
}

fn problem_line(p: &Value) -> String {
    let path = p.get("path").and_then(Value::as_str).unwrap_or_default();
    let message = p.get("message").and_then(Value::as_str).unwrap_or_default();
    if path.is_empty() { message.to_owned() } else { format!("{path}: {message}") }
}

async fn promote(gateway: &str, env: &str, version: i64, remote: &Remote) -> Result<(), String> {
    let client = ApiClient::new(&remote.url, &remote.token)?;
    let path = format!("/api/v1/gateways/{}/environments/{}/promote", encode(gateway), encode(env));
    let body = serde_json::to_vec(&json!({ "version": version })).map_err(|e| e.to_string())?;
    let (status, body) = client.send(Method::POST, &path, "application/json", body).await?;
    if status != StatusCode::OK {
        return Err(format!("{status}: {}", error_message(&body)));
    }
    println!(
        "{gateway}/{env} now runs version {version} (serial {}{})",
        body["serial"],
        if body["rollback"] == Value::Bool(true) { ", a rollback" } else { "" }
    );
    Ok(())
}
