//! `weir-control dev`: the whole suite in one process, for a laptop.
//!
//! A control plane on SQLite, a demo upstream with a few small JSON services, and a
//! gateway node in managed mode that fetches its signed bundle over HTTP like any
//! other node. The first run seeds a demo gateway; later runs reuse `./weir-data`.

mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use weir_gateway::config::Format;

use crate::api::AppState;
use crate::domain::access::{Role, generate_password, hash_password};
use crate::domain::signing::SigningKeys;
use crate::store::Store;

const DEMO_CONFIG: &str = include_str!("demo.json");
const ADMIN_EMAIL: &str = "admin@localhost";
const ACTOR: &str = "weir-control dev";
/// The embedded node polls often: on a laptop, a promotion should show at once.
const NODE_POLL: Duration = Duration::from_millis(500);
const NODE_ID: &str = "dev-node";

pub struct Options {
    pub data_dir: PathBuf,
    pub database_url: String,
    pub listen: SocketAddr,
    pub gateway_port: u16,
    pub demo_port: u16,
    pub portal_port: u16,
}

/// The demo gateway's config, pointing at the demo upstream's port.
pub fn demo_config(demo_port: u16) -> String {
    DEMO_CONFIG.replace("{{DEMO_PORT}}", &demo_port.to_string())
}

fn write_secret(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(format!("{text}\n").as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn read_secret(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("{}: {e} (delete the data dir to start afresh)", path.display()))
}

/// First run: admin account and token, the demo gateway with `dev` and `prod`
/// (prod only takes what ran in dev), version 1 promoted to dev, and a node token.
async fn seed(store: &Store, opts: &Options, signing_key: &Path) -> Result<(), String> {
    let e = |e: crate::api::error::ApiError| e.to_string();
    let password = generate_password().map_err(|e| e.to_string())?;
    let hashed = {
        let password = password.clone();
        tokio::task::spawn_blocking(move || hash_password(&password)).await.map_err(|e| e.to_string())??
    };
    let mut w = store.write().await.map_err(|e| e.to_string())?;
    store.create_user_in(&mut w.tx, ADMIN_EMAIL, &hashed, Role::Admin).await.map_err(|e| e.to_string())?;
    w.commit(crate::store::Change {
        actor: ACTOR.into(),
        action: "user.create",
        target: format!("user:{ADMIN_EMAIL}"),
        detail: "role admin, password".into(),
        ..crate::store::Change::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    write_secret(&opts.data_dir.join("admin-password"), &password)?;
    let admin = crate::control::issue_token(store, ACTOR, "admin", Role::Admin, None).await.map_err(e)?;
    write_secret(&opts.data_dir.join("admin-token"), &admin.token)?;

    crate::control::create_gateway(store, ACTOR, "demo", "Demo gateway aggregating the demo services")
        .await
        .map_err(e)?;
    crate::control::create_environment(store, ACTOR, "demo", "dev", None).await.map_err(e)?;
    crate::control::create_environment(store, ACTOR, "demo", "prod", Some("dev")).await.map_err(e)?;
    let config = demo_config(opts.demo_port);
    let pushed =
        crate::control::push_version(store, ACTOR, "demo", &config, Format::Json, "demo: aggregate the demo services")
            .await
            .map_err(e)?;
    crate::control::promote(store, signing_key, ACTOR, "demo", "dev", pushed.version).await.map_err(e)?;
    let plan = |name: &str, per_second, per_day| crate::store::portal::Plan {
        name: name.into(),
        rate_per_second: Some(per_second),
        quota_per_day: Some(per_day),
        ..Default::default()
    };
    let product = crate::control::NewProduct {
        name: "orders".into(),
        title: "Orders API".into(),
        description: "Look up orders and their status. Get a key in \"My apps\".".into(),
        gateway: "demo".into(),
        environment: "dev".into(),
        approval: Some("auto".into()),
        plans: vec![plan("free", 5, 1_000), plan("pro", 100, 1_000_000)],
    };
    crate::control::create_product(store, ACTOR, &product).await.map_err(e)?;
    let node =
        crate::control::issue_token(store, ACTOR, NODE_ID, Role::Node, Some(("demo", "dev"))).await.map_err(e)?;
    write_secret(&opts.data_dir.join("node-token"), &node.token)?;
    Ok(())
}

async fn bind(addr: SocketAddr, what: &str) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for the {what}: {e} (is another suite running?)"))
}

pub async fn run(opts: Options) -> Result<(), String> {
    std::fs::create_dir_all(&opts.data_dir).map_err(|e| format!("{}: {e}", opts.data_dir.display()))?;
    let signing_key = opts.data_dir.join("signing.key");
    let keys =
        if signing_key.exists() { SigningKeys::load(&signing_key)? } else { SigningKeys::generate(&signing_key)? };
    let store = Store::connect(&opts.database_url).await.map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    // Bind everything before seeding, so that a busy port fails fast and changes nothing.
    let api_listener = bind(opts.listen, "management API").await?;
    let demo_listener = bind(SocketAddr::from(([127, 0, 0, 1], opts.demo_port)), "demo upstream").await?;
    let portal_listener = bind(SocketAddr::from(([127, 0, 0, 1], opts.portal_port)), "developer portal").await?;
    let first_run = store.gateways().await.map_err(|e| e.to_string())?.is_empty();
    if first_run {
        seed(&store, &opts, &signing_key).await?;
    }

    let (stop, stopped) = watch::channel(false);
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let state = AppState {
        store: store.clone(),
        signing_key: signing_key.clone(),
        heartbeat: Duration::from_secs(30),
        // Browsers keep Secure cookies on http://127.0.0.1, so dev needs no exception.
        ui: std::sync::Arc::new(crate::ui::UiSettings::new(true, None)),
    };
    let api = tokio::spawn(crate::serve(api_listener, state, until_stopped(stopped.clone())));
    let publisher = tokio::spawn(crate::control::publish_keyrings(store.clone(), signing_key.clone()));
    let pruner = tokio::spawn(crate::control::maintain_metrics(store.clone(), Duration::from_secs(90 * 86_400)));
    let demo = tokio::spawn(upstream::serve(demo_listener, until_stopped(stopped.clone())));
    let portal = weir_portal::Portal::new(
        std::sync::Arc::new(store.clone()),
        weir_portal::Settings {
            secure_cookies: true,
            approve_sign_ups: false,
            gateway_url: format!("http://127.0.0.1:{}", opts.gateway_port),
        },
    )?;
    let portal = tokio::spawn(weir_portal::serve(portal_listener, portal, until_stopped(stopped.clone())));

    let settings = weir_gateway::node::Managed {
        control: format!("http://{}", opts.listen),
        gateway: "demo".into(),
        environment: "dev".into(),
        token: read_secret(&opts.data_dir.join("node-token"))?,
        trust: weir_gateway::bundle::TrustList::new(keys.public_keys()),
        cache_dir: opts.data_dir.join("node-cache"),
        poll_interval: NODE_POLL,
        node_id: NODE_ID.into(),
        flags: weir_gateway::runtime::Flags::default(),
        // A laptop dashboard should move as soon as traffic does.
        metrics_interval: Some(Duration::from_secs(2)),
    };
    let node = tokio::spawn(weir_gateway::node::serve_managed(
        settings,
        Some(opts.gateway_port),
        until_stopped(stopped.clone()),
    ));
    wait_for_port(opts.gateway_port, &node).await?;
    banner(&opts, first_run)?;

    weir_gateway::server::shutdown_signal().await;
    eprintln!("stopping…");
    let _ = stop.send(true);
    publisher.abort();
    pruner.abort();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = node.await;
        let _ = api.await;
        let _ = demo.await;
        let _ = portal.await;
    })
    .await;
    store.close().await;
    Ok(())
}

/// Waits until the embedded node accepts connections, or reports why it stopped.
async fn wait_for_port(port: u16, node: &tokio::task::JoinHandle<Result<(), String>>) -> Result<(), String> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        if node.is_finished() {
            return Err(format!("the gateway node did not start on port {port}; see the log above"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("the gateway node did not open port {port} within 10 s"))
}

fn banner(opts: &Options, first_run: bool) -> Result<(), String> {
    let dir = opts.data_dir.display();
    let password = read_secret(&opts.data_dir.join("admin-password"))?;
    let token = read_secret(&opts.data_dir.join("admin-token"))?;
    let api = format!("http://{}", opts.listen);
    let gw = format!("http://127.0.0.1:{}", opts.gateway_port);
    println!(
        "\nWeir dev suite is running{}. Data: {dir}\n\n\
         \x20 gateway node     {gw}  (demo/dev, managed: fetches signed bundles from the control plane)\n\
         \x20 operator UI      {api}/  (sign in as the admin user below)\n\
         \x20 management API   {api}/api/v1  (OpenAPI: {api}/api/v1/openapi.json)\n\
         \x20 developer portal http://127.0.0.1:{}  (sign up, create an app, get a key for the Orders API)\n\
         \x20 demo upstream    http://127.0.0.1:{}\n\
         \x20 admin user       {ADMIN_EMAIL} / {password}  (also in {dir}/admin-password)\n\
         \x20 admin API token  {token}  (also in {dir}/admin-token)\n\n\
         Try:\n\
         \x20 curl {gw}/api/users/1\n\
         \x20 curl {gw}/api/dashboard/2\n\
         \x20 curl -H \"X-Api-Key: <key from the portal>\" {gw}/api/orders/1\n\
         \x20 export WEIR_TOKEN=$(cat {dir}/admin-token)\n\
         \x20 curl -H \"Authorization: Bearer $WEIR_TOKEN\" {api}/api/v1/gateways/demo/environments/dev/nodes\n\
         \x20 weir-control push -c my-krakend.json --gateway demo -m \"my change\"   # prints the new version N\n\
         \x20 weir-control promote --gateway demo --env dev --version N\n\n\
         Ctrl-C stops everything.\n",
        if first_run { " (first run: demo gateway created)" } else { "" },
        opts.portal_port,
        opts.demo_port,
    );
    Ok(())
}
