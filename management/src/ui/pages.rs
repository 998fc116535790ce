//! The UI's pages. Handlers read the store, build small view models with everything
//! pre-formatted, and render them; writes go through the same audited actions as the API.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use weir_gateway::config::Format;

use super::{Nav, Signed, UiError, ago, render};
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::control;
use crate::domain::access::{Role, generate_password, hash_password};
use crate::domain::annotate::{Line, annotate};
use crate::domain::diff::{self, Diff, Row};
use crate::domain::fleet::{self, NodeState};
use crate::domain::upload::{self, Problem};
use crate::store::gateways::Environment;
use crate::store::nodes::Seen;
use crate::store::tokens::Token;
use crate::store::{Change, now_ms, rfc3339};

/// Versions per page on a gateway's page.
const VERSIONS_PER_PAGE: i64 = 50;
/// Audit entries shown at once.
const AUDIT_ROWS: i64 = 200;
/// Unchanged lines kept around each change in side-by-side diffs.
const DIFF_CONTEXT: usize = 4;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/fleet", get(fleet_page))
        .route("/gateways/{gw}", get(gateway_page))
        .route("/gateways/{gw}/versions", post(create_version))
        .route("/gateways/{gw}/versions/new", get(new_version))
        .route("/gateways/{gw}/versions/{n}", get(version_page))
        .route("/gateways/{gw}/diff", get(diff_page))
        .route("/gateways/{gw}/promote", get(promote_page))
        .route("/gateways/{gw}/environments/{env}", get(environment_page))
        .route("/gateways/{gw}/environments/{env}/nodes", get(nodes_fragment))
        .route("/gateways/{gw}/environments/{env}/promote", post(promote))
        .route("/tokens", get(tokens_page).post(create_token))
        .route("/node-tokens", post(create_node_token))
        .route("/tokens/{id}/revoke", post(revoke_token))
        .route("/users", get(users_page).post(create_user))
        .route("/users/{id}/role", post(set_role))
        .route("/audit", get(audit_page))
        .route("/gateways/{gw}/environments/{env}/dashboard", get(dashboard))
        .route("/products", get(products_page).post(create_product))
        .route("/subscriptions/{id}/{decision}", post(decide_subscription))
        .route("/developers/{id}/approve", post(approve_developer))
}

fn heartbeat_ms(state: &AppState) -> i64 {
    i64::try_from(state.heartbeat.as_millis()).unwrap_or(i64::MAX)
}

/// An environment as overview tables show it.
struct EnvRow {
    name: String,
    version: Option<i64>,
    serial: i64,
    requires: Option<String>,
    synced: usize,
    stale: usize,
    rejected: usize,
    last_promotion: String,
}

fn env_row(e: &Environment, nodes: &[&Seen], last: Option<i64>, now: i64, heartbeat: i64) -> EnvRow {
    let mut row = EnvRow {
        name: e.name.clone(),
        version: e.active_version,
        serial: e.serial,
        requires: e.requires.clone(),
        synced: 0,
        stale: 0,
        rejected: 0,
        last_promotion: last.map_or_else(|| "never".to_owned(), ago),
    };
    for n in nodes {
        match fleet::classify(n, e.serial, now, heartbeat).0 {
            NodeState::Synced => row.synced += 1,
            NodeState::Stale => row.stale += 1,
            NodeState::Rejected => row.rejected += 1,
        }
    }
    row
}

/// Every environment's row, from three queries whatever the fleet's size.
async fn env_rows(state: &AppState) -> Result<HashMap<i64, (i64, EnvRow)>, UiError> {
    let environments = state.store.all_environments().await?;
    let nodes = state.store.all_nodes().await?;
    let last: HashMap<i64, i64> = state.store.last_promotions().await?.into_iter().collect();
    let mut by_env: HashMap<i64, Vec<&Seen>> = HashMap::new();
    for (env, seen) in &nodes {
        by_env.entry(*env).or_default().push(seen);
    }
    let (now, hb) = (now_ms(), heartbeat_ms(state));
    Ok(environments
        .iter()
        .map(|e| {
            let nodes = by_env.get(&e.id).map(Vec::as_slice).unwrap_or_default();
            (e.id, (e.gateway_id, env_row(e, nodes, last.get(&e.id).copied(), now, hb)))
        })
        .collect())
}

struct GatewayCard {
    name: String,
    description: String,
    environments: Vec<EnvRow>,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    nav: Nav,
    gateways: Vec<GatewayCard>,
}

async fn overview(State(state): State<AppState>, signed: Signed) -> Result<Response, UiError> {
    let gateways = state.store.gateways().await?;
    let mut rows = env_rows(&state).await?;
    let environments = state.store.all_environments().await?;
    let cards = gateways
        .into_iter()
        .map(|g| GatewayCard {
            environments: environments
                .iter()
                .filter(|e| e.gateway_id == g.id)
                .filter_map(|e| rows.remove(&e.id).map(|(_, r)| r))
                .collect(),
            name: g.name,
            description: g.description,
        })
        .collect();
    render(&Overview { nav: signed.nav("gateways"), gateways: cards })
}

struct VersionRow {
    version: i64,
    message: String,
    author: String,
    age: String,
    created: String,
    digest_short: String,
    running_in: Vec<String>,
}

#[derive(Template)]
#[template(path = "gateway.html")]
struct GatewayPage {
    nav: Nav,
    name: String,
    description: String,
    environments: Vec<EnvRow>,
    versions: Vec<VersionRow>,
    diff_from: i64,
    diff_to: i64,
    newer_page: Option<i64>,
    older_page: Option<i64>,
}

#[derive(Deserialize)]
struct PageQuery {
    #[serde(default)]
    page: i64,
}

fn short_digest(d: &str) -> String {
    d.trim_start_matches("sha256:").chars().take(12).collect()
}

async fn gateway_page(
    State(state): State<AppState>,
    signed: Signed,
    Path(gw): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Response, UiError> {
    let gateway = state.store.gateway(&gw).await?;
    let environments = state.store.environments(&gateway).await?;
    let mut rows = env_rows(&state).await?;
    let page = q.page.max(0);
    let versions = state.store.versions_page(gateway.id, VERSIONS_PER_PAGE + 1, page * VERSIONS_PER_PAGE).await?;
    let has_older = versions.len() as i64 > VERSIONS_PER_PAGE;
    let running = |n: i64| -> Vec<String> {
        environments.iter().filter(|e| e.active_version == Some(n)).map(|e| e.name.clone()).collect()
    };
    let newest = versions.first().map_or(1, |v| v.version);
    let view = GatewayPage {
        nav: signed.nav("gateways"),
        diff_from: (newest - 1).max(1),
        diff_to: newest,
        versions: versions
            .iter()
            .take(VERSIONS_PER_PAGE as usize)
            .map(|v| VersionRow {
                version: v.version,
                message: v.message.clone(),
                author: v.author.clone(),
                age: ago(v.created_at),
                created: rfc3339(v.created_at),
                digest_short: short_digest(&v.digest),
                running_in: running(v.version),
            })
            .collect(),
        environments: environments.iter().filter_map(|e| rows.remove(&e.id).map(|(_, r)| r)).collect(),
        newer_page: (page > 0).then(|| page - 1),
        older_page: has_older.then_some(page + 1),
        name: gateway.name,
        description: gateway.description,
    };
    render(&view)
}

struct EndpointView {
    title: String,
    backends: usize,
    json: String,
}

#[derive(Template)]
#[template(path = "version.html")]
struct VersionPage {
    nav: Nav,
    gateway: String,
    version: i64,
    message: String,
    author: String,
    age: String,
    created: String,
    parent: Option<i64>,
    digest: String,
    format: String,
    environments: Vec<String>,
    service: String,
    endpoints: Vec<EndpointView>,
}

async fn version_page(
    State(state): State<AppState>,
    signed: Signed,
    Path((gw, n)): Path<(String, i64)>,
) -> Result<Response, UiError> {
    let gateway = state.store.gateway(&gw).await?;
    let v = state.store.version(gateway.id, n).await?;
    let mut config: Value = serde_json::from_str(v.config.as_deref().unwrap_or("{}")).unwrap_or_default();
    let endpoints = config
        .as_object_mut()
        .and_then(|o| o.remove("endpoints"))
        .and_then(|e| if let Value::Array(items) = e { Some(items) } else { None })
        .unwrap_or_default();
    let endpoints = endpoints
        .iter()
        .map(|e| EndpointView {
            title: format!(
                "{} {}",
                e.get("method").and_then(Value::as_str).unwrap_or("GET").to_ascii_uppercase(),
                e.get("endpoint").and_then(Value::as_str).unwrap_or("?")
            ),
            backends: e.get("backend").and_then(Value::as_array).map_or(0, Vec::len),
            json: serde_json::to_string_pretty(e).unwrap_or_default(),
        })
        .collect();
    let environments = state.store.environments(&gateway).await?.into_iter().map(|e| e.name).collect();
    render(&VersionPage {
        nav: signed.nav("gateways"),
        gateway: gateway.name,
        version: v.version,
        message: v.message,
        author: v.author,
        age: ago(v.created_at),
        created: rfc3339(v.created_at),
        parent: v.parent,
        digest: v.digest,
        format: v.format,
        environments,
        service: serde_json::to_string_pretty(&config).unwrap_or_default(),
        endpoints,
    })
}

#[derive(Template)]
#[template(path = "new_version.html")]
struct NewVersionPage {
    nav: Nav,
    gateway: String,
    message: String,
    format: String,
    config: String,
    errors: Vec<Problem>,
    annotated: Vec<Line>,
}

async fn new_version(
    State(state): State<AppState>,
    signed: Signed,
    Path(gw): Path<String>,
) -> Result<Response, UiError> {
    signed.require(Role::Operator)?;
    let gateway = state.store.gateway(&gw).await?;
    // Start from the latest config, pretty-printed: most versions are edits.
    let config = match state.store.latest_version(gateway.id).await? {
        Some(v) => state
            .store
            .version(gateway.id, v.version)
            .await?
            .config
            .and_then(|c| serde_json::from_str::<Value>(&c).ok())
            .map(|c| diff::pretty(&c))
            .unwrap_or_default(),
        None => "{\n  \"version\": 3,\n  \"endpoints\": []\n}\n".to_owned(),
    };
    render(&NewVersionPage {
        nav: signed.nav("gateways"),
        gateway: gateway.name,
        message: String::new(),
        format: "json".into(),
        config,
        errors: Vec::new(),
        annotated: Vec::new(),
    })
}

#[derive(Deserialize)]
struct VersionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    format: String,
    config: String,
}

async fn create_version(
    State(state): State<AppState>,
    signed: Signed,
    Path(gw): Path<String>,
    Form(f): Form<VersionForm>,
) -> Result<Response, UiError> {
    signed.may(Role::Operator, &f.csrf)?;
    let format = upload::parse_format(&f.format).unwrap_or(Format::Json);
    // Browsers send text areas with CRLF line ends; configs are stored as written on disk.
    let text = f.config.replace("\r\n", "\n");
    match control::push_version(&state.store, &signed.actor(), &gw, &text, format, f.message.trim()).await {
        Ok(pushed) => {
            let to = format!("/gateways/{gw}/versions/{}", pushed.version);
            Ok(Redirect::to(&to).into_response())
        }
        Err(ApiError::InvalidConfig(errors)) => {
            let annotated = weir_gateway::config::to_value(&text, format)
                .map(|value| {
                    let problems: Vec<(String, String)> =
                        errors.iter().map(|e| (e.path.clone(), e.message.clone())).collect();
                    annotate(&value, &problems)
                })
                .unwrap_or_default();
            let page = NewVersionPage {
                nav: signed.nav("gateways"),
                gateway: gw,
                message: f.message,
                format: upload::format_name(format).to_owned(),
                config: text,
                errors,
                annotated,
            };
            Ok((StatusCode::UNPROCESSABLE_ENTITY, Html(page.render()?)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Template)]
#[template(path = "diff.html")]
struct DiffPage {
    nav: Nav,
    gateway: String,
    from: i64,
    to: i64,
    diff: Diff,
    rows: Vec<Row>,
}

#[derive(Deserialize)]
struct DiffQuery {
    from: i64,
    to: i64,
}

async fn config_value(state: &AppState, gateway_id: i64, n: i64) -> Result<Value, UiError> {
    let v = state.store.version(gateway_id, n).await?;
    serde_json::from_str(v.config.as_deref().unwrap_or("{}")).map_err(|e| UiError::Internal(e.to_string()))
}

/// The semantic diff and side-by-side rows between two versions.
async fn compare(state: &AppState, gateway_id: i64, from: i64, to: i64) -> Result<(Diff, Vec<Row>), UiError> {
    let (a, b) = (config_value(state, gateway_id, from).await?, config_value(state, gateway_id, to).await?);
    let rows = diff::side_by_side(&diff::pretty(&a), &diff::pretty(&b), DIFF_CONTEXT);
    Ok((diff::diff(from, &a, to, &b), rows))
}

async fn diff_page(
    State(state): State<AppState>,
    signed: Signed,
    Path(gw): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Result<Response, UiError> {
    let gateway = state.store.gateway(&gw).await?;
    let (diff, rows) = compare(&state, gateway.id, q.from, q.to).await?;
    render(&DiffPage { nav: signed.nav("gateways"), gateway: gateway.name, from: q.from, to: q.to, diff, rows })
}

#[derive(Template)]
#[template(path = "promote.html")]
struct PromotePage {
    nav: Nav,
    gateway: String,
    env: String,
    version: i64,
    current: Option<i64>,
    serial: i64,
    rollback: bool,
    blocked: Option<String>,
    diff: Diff,
    rows: Vec<Row>,
}

#[derive(Deserialize)]
struct PromoteQuery {
    env: String,
    version: i64,
}

async fn promote_page(
    State(state): State<AppState>,
    signed: Signed,
    Path(gw): Path<String>,
    Query(q): Query<PromoteQuery>,
) -> Result<Response, UiError> {
    signed.require(Role::Operator)?;
    let gateway = state.store.gateway(&gw).await?;
    let env = state.store.environment(&gw, &q.env).await?;
    state.store.version(gateway.id, q.version).await?;
    let blocked = match env.requires.as_deref() {
        Some(required) => {
            let before = state.store.environment(&gw, required).await?;
            (!state.store.was_promoted(before.id, q.version).await?).then(|| {
                format!("{} only takes versions promoted to {required} first, and v{} never was.", env.name, q.version)
            })
        }
        None => None,
    };
    let (diff, rows) = match env.active_version {
        Some(current) => compare(&state, gateway.id, current, q.version).await?,
        None => (diff::diff(0, &Value::Null, q.version, &Value::Null), Vec::new()),
    };
    render(&PromotePage {
        nav: signed.nav("gateways"),
        gateway: gateway.name,
        rollback: env.active_version.is_some_and(|c| c > q.version),
        current: env.active_version,
        serial: env.serial,
        env: env.name,
        version: q.version,
        blocked,
        diff,
        rows,
    })
}

#[derive(Deserialize)]
struct PromoteForm {
    #[serde(default)]
    csrf: String,
    version: i64,
}

async fn promote(
    State(state): State<AppState>,
    signed: Signed,
    Path((gw, env)): Path<(String, String)>,
    Form(f): Form<PromoteForm>,
) -> Result<Response, UiError> {
    signed.may(Role::Operator, &f.csrf)?;
    let done = control::promote(&state.store, &state.signing_key, &signed.actor(), &gw, &env, f.version).await?;
    Ok(Redirect::to(&format!("/gateways/{gw}/environments/{env}?promoted={}", done.serial)).into_response())
}

struct NodeRow {
    node_id: String,
    hostname: String,
    state: &'static str,
    state_class: &'static str,
    reason: Option<String>,
    serial: Option<i64>,
    build: String,
    seen_age: String,
    seen: String,
    last_result: String,
}

#[derive(Template)]
#[template(path = "nodes.html")]
struct NodesFragment {
    nodes: Vec<NodeRow>,
    status: String,
    status_class: &'static str,
}

/// The nodes table of an environment, with a one-line convergence status.
fn nodes_fragment_html(env: &Environment, seen: Vec<Seen>, heartbeat: i64) -> Result<String, UiError> {
    let now = now_ms();
    let nodes: Vec<NodeRow> = seen
        .into_iter()
        .map(|s| {
            let v = fleet::view(s, env.serial, now, heartbeat);
            let (state, class) = match v.state {
                NodeState::Synced => ("SYNCED", "synced"),
                NodeState::Stale => ("STALE", "stale"),
                NodeState::Rejected => ("REJECTED", "rejected"),
            };
            NodeRow {
                node_id: v.report.node_id,
                hostname: v.report.hostname,
                state,
                state_class: class,
                reason: v.reason,
                serial: v.report.serial,
                build: v.report.version,
                seen_age: ago(v.seen_at),
                seen: rfc3339(v.seen_at),
                last_result: v.report.last_result,
            }
        })
        .collect();
    let synced = nodes.iter().filter(|n| n.state == "SYNCED").count();
    let rejected = nodes.iter().filter(|n| n.state == "REJECTED").count();
    let (status, status_class) = if nodes.is_empty() {
        ("No nodes yet.".to_owned(), "waiting")
    } else if rejected > 0 {
        (format!("{rejected} of {} node(s) rejected serial {}.", nodes.len(), env.serial), "failed")
    } else if synced == nodes.len() {
        (format!("All {synced} node(s) run serial {}.", env.serial), "done")
    } else {
        (format!("Converging: {synced} of {} node(s) run serial {}…", nodes.len(), env.serial), "waiting")
    };
    Ok(NodesFragment { nodes, status, status_class }.render()?)
}

struct PromotionRow {
    serial: i64,
    version: i64,
    by: String,
    age: String,
    created: String,
    kid_short: String,
    can_roll_back: bool,
}

#[derive(Template)]
#[template(path = "environment.html")]
struct EnvironmentPage {
    nav: Nav,
    gateway: String,
    env: String,
    version: Option<i64>,
    serial: i64,
    requires: Option<String>,
    nodes: String,
    watching: bool,
    promotions: Vec<PromotionRow>,
    /// The gateway's newest version, offered for promotion.
    latest: Option<i64>,
}

#[derive(Deserialize)]
struct PromotedQuery {
    promoted: Option<i64>,
}

async fn environment_page(
    State(state): State<AppState>,
    signed: Signed,
    Path((gw, env)): Path<(String, String)>,
    Query(q): Query<PromotedQuery>,
) -> Result<Response, UiError> {
    let e = state.store.environment(&gw, &env).await?;
    let nodes = nodes_fragment_html(&e, state.store.nodes(e.id).await?, heartbeat_ms(&state))?;
    let promotions = state.store.promotions(e.id).await?;
    let latest = state.store.latest_version(e.gateway_id).await?.map(|v| v.version);
    let mut nav = signed.nav("gateways");
    nav.notice = q.promoted.map(|s| format!("Promoted: serial {s} is signed. Nodes pick it up at their next poll."));
    render(&EnvironmentPage {
        nav,
        promotions: promotions
            .iter()
            .map(|p| PromotionRow {
                serial: p.serial,
                version: p.version,
                by: p.promoted_by.clone(),
                age: ago(p.created_at),
                created: rfc3339(p.created_at),
                kid_short: p.kid.chars().take(10).collect(),
                can_roll_back: Some(p.version) != e.active_version,
            })
            .collect(),
        gateway: gw,
        env: e.name,
        version: e.active_version,
        serial: e.serial,
        requires: e.requires,
        nodes,
        watching: q.promoted.is_some(),
        latest,
    })
}

async fn nodes_fragment(
    State(state): State<AppState>,
    _signed: Signed,
    Path((gw, env)): Path<(String, String)>,
) -> Result<Response, UiError> {
    let e = state.store.environment(&gw, &env).await?;
    Ok(Html(nodes_fragment_html(&e, state.store.nodes(e.id).await?, heartbeat_ms(&state))?).into_response())
}

struct FleetEnv {
    gateway: String,
    name: String,
    serial: i64,
    nodes: String,
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    nav: Nav,
    environments: Vec<FleetEnv>,
}

async fn fleet_page(State(state): State<AppState>, signed: Signed) -> Result<Response, UiError> {
    let environments = state.store.all_environments().await?;
    let mut by_env: HashMap<i64, Vec<Seen>> = HashMap::new();
    for (env, seen) in state.store.all_nodes().await? {
        by_env.entry(env).or_default().push(seen);
    }
    let hb = heartbeat_ms(&state);
    let environments = environments
        .iter()
        .map(|e| {
            Ok(FleetEnv {
                gateway: e.gateway.clone(),
                name: e.name.clone(),
                serial: e.serial,
                nodes: nodes_fragment_html(e, by_env.remove(&e.id).unwrap_or_default(), hb)?,
            })
        })
        .collect::<Result<_, UiError>>()?;
    render(&FleetPage { nav: signed.nav("fleet"), environments })
}

struct TokenRow {
    id: i64,
    name: String,
    scope: String,
    prefix: String,
    age: String,
    created: String,
    created_by: String,
    revoked: bool,
}

fn token_rows(tokens: Vec<Token>) -> Vec<TokenRow> {
    tokens
        .into_iter()
        .map(|t| TokenRow {
            id: t.id,
            scope: match (&t.gateway, &t.environment) {
                (Some(g), Some(e)) => format!("node of {g}/{e}"),
                _ => t.role.to_string(),
            },
            name: t.name,
            prefix: t.prefix,
            age: ago(t.created_at),
            created: rfc3339(t.created_at),
            created_by: t.created_by,
            revoked: t.revoked_at.is_some(),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    nav: Nav,
    tokens: Vec<TokenRow>,
    node_tokens: Vec<TokenRow>,
    environments: Vec<String>,
}

async fn tokens_page(State(state): State<AppState>, signed: Signed) -> Result<Response, UiError> {
    signed.require(Role::Admin)?;
    render(&TokensPage {
        nav: signed.nav("tokens"),
        tokens: token_rows(state.store.tokens(None).await?),
        node_tokens: token_rows(state.store.node_tokens().await?),
        environments: state
            .store
            .all_environments()
            .await?
            .into_iter()
            .map(|e| format!("{}/{}", e.gateway, e.name))
            .collect(),
    })
}

#[derive(Template)]
#[template(path = "secret.html")]
struct SecretPage {
    nav: Nav,
    title: String,
    explanation: String,
    secret: String,
    back: String,
}

#[derive(Deserialize)]
struct TokenForm {
    #[serde(default)]
    csrf: String,
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    environment: String,
}

async fn create_token(
    State(state): State<AppState>,
    signed: Signed,
    Form(f): Form<TokenForm>,
) -> Result<Response, UiError> {
    signed.may(Role::Admin, &f.csrf)?;
    let role = Role::parse(&f.role)
        .filter(|r| *r != Role::Node)
        .ok_or_else(|| UiError::BadRequest("Choose viewer, operator or admin.".into()))?;
    let issued = control::issue_token(&state.store, &signed.actor(), f.name.trim(), role, None).await?;
    render(&SecretPage {
        nav: signed.nav("tokens"),
        title: format!("API token {:?}", issued.name),
        explanation: format!(
            "A {role} token. Send it as Authorization: Bearer <token>, or set WEIR_TOKEN for weir-control."
        ),
        secret: issued.token,
        back: "/tokens".into(),
    })
}

async fn create_node_token(
    State(state): State<AppState>,
    signed: Signed,
    Form(f): Form<TokenForm>,
) -> Result<Response, UiError> {
    signed.may(Role::Admin, &f.csrf)?;
    let (gw, env) =
        f.environment.split_once('/').ok_or_else(|| UiError::BadRequest("Choose an environment.".into()))?;
    let issued =
        control::issue_token(&state.store, &signed.actor(), f.name.trim(), Role::Node, Some((gw, env))).await?;
    render(&SecretPage {
        nav: signed.nav("tokens"),
        title: format!("Node token {:?} for {gw}/{env}", issued.name),
        explanation: format!(
            "Write it to the node's token file: weir run --control <url> --gateway {gw} --env {env} --token-file <file> --trust signing.pub"
        ),
        secret: issued.token,
        back: "/tokens".into(),
    })
}

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

async fn revoke_token(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<i64>,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, UiError> {
    signed.may(Role::Admin, &f.csrf)?;
    control::revoke_token(&state.store, &signed.actor(), id).await?;
    Ok(Redirect::to("/tokens").into_response())
}

struct UserRow {
    id: i64,
    email: String,
    role: String,
    sso: bool,
    age: String,
    created: String,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    nav: Nav,
    users: Vec<UserRow>,
}

async fn users_page(State(state): State<AppState>, signed: Signed) -> Result<Response, UiError> {
    signed.require(Role::Admin)?;
    let users = state
        .store
        .users()
        .await?
        .into_iter()
        .map(|u| UserRow {
            id: u.id,
            email: u.email,
            role: u.role.to_string(),
            sso: u.sso_subject.is_some(),
            age: ago(u.created_at),
            created: rfc3339(u.created_at),
        })
        .collect();
    render(&UsersPage { nav: signed.nav("users"), users })
}

#[derive(Deserialize)]
struct UserForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    role: String,
}

fn parse_operator_role(role: &str) -> Result<Role, UiError> {
    Role::parse(role)
        .filter(|r| *r != Role::Node)
        .ok_or_else(|| UiError::BadRequest("Choose viewer, operator or admin.".into()))
}

async fn create_user(
    State(state): State<AppState>,
    signed: Signed,
    Form(f): Form<UserForm>,
) -> Result<Response, UiError> {
    signed.may(Role::Admin, &f.csrf)?;
    let role = parse_operator_role(&f.role)?;
    let email = f.email.trim().to_owned();
    if !email.contains('@') || email.len() > 254 {
        return Err(UiError::BadRequest("Enter an email address.".into()));
    }
    let password = generate_password().map_err(|e| UiError::Internal(e.to_string()))?;
    let hashed = {
        let password = password.clone();
        tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|e| UiError::Internal(e.to_string()))?
            .map_err(UiError::Internal)?
    };
    let mut w = state.store.write().await?;
    let id = state.store.create_user_in(&mut w.tx, &email, &hashed, role).await?;
    w.commit(Change {
        actor: signed.actor(),
        action: "user.create",
        target: format!("user:{email}"),
        detail: format!("id {id}, role {role}, password"),
        ..Change::default()
    })
    .await?;
    render(&SecretPage {
        nav: signed.nav("users"),
        title: format!("Account {email}"),
        explanation: format!("A {role} account. Give this password to its owner over a safe channel."),
        secret: password,
        back: "/users".into(),
    })
}

async fn set_role(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<i64>,
    Form(f): Form<UserForm>,
) -> Result<Response, UiError> {
    signed.may(Role::Admin, &f.csrf)?;
    let role = parse_operator_role(&f.role)?;
    let user = state.store.user(id).await?;
    if user.id == signed.user.id && role != Role::Admin {
        return Err(UiError::BadRequest("You cannot take away your own admin role; ask another admin.".into()));
    }
    let mut w = state.store.write().await?;
    state.store.set_role(&mut w.tx, id, role).await?;
    w.commit(Change {
        actor: signed.actor(),
        action: "user.role",
        target: format!("user:{}", user.email),
        detail: format!("{} -> {role}", user.role),
        ..Change::default()
    })
    .await?;
    Ok(Redirect::to("/users").into_response())
}

struct AuditRow {
    seq: i64,
    age: String,
    at: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
    digests: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Nav,
    chain_ok: bool,
    chain_entries: i64,
    chain_problem: String,
    actions: Vec<String>,
    action: String,
    actor: String,
    target: String,
    entries: Vec<AuditRow>,
}

#[derive(Deserialize)]
struct AuditQuery {
    #[serde(default)]
    action: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    target: String,
}

async fn audit_page(
    State(state): State<AppState>,
    signed: Signed,
    Query(q): Query<AuditQuery>,
) -> Result<Response, UiError> {
    signed.require(Role::Admin)?;
    let verification = state.store.verify_audit().await?;
    let entries = state.store.search_audit(q.action.trim(), q.actor.trim(), q.target.trim(), AUDIT_ROWS).await?;
    let digest = |d: &Option<String>| d.as_deref().map_or_else(|| "—".to_owned(), short_digest);
    render(&AuditPage {
        nav: signed.nav("audit"),
        chain_ok: verification.ok,
        chain_entries: verification.entries,
        chain_problem: match (verification.broken_at, verification.problem) {
            (Some(at), Some(p)) => format!("entry {at}: {p}"),
            _ => String::new(),
        },
        actions: state.store.audit_actions().await?,
        entries: entries
            .into_iter()
            .map(|e| AuditRow {
                seq: e.seq,
                age: ago(e.at),
                at: rfc3339(e.at),
                digests: if e.before_digest.is_none() && e.after_digest.is_none() {
                    String::new()
                } else {
                    format!("{} → {}", digest(&e.before_digest), digest(&e.after_digest))
                },
                actor: e.actor,
                action: e.action,
                target: e.target,
                detail: e.detail,
            })
            .collect(),
        action: q.action,
        actor: q.actor,
        target: q.target,
    })
}

struct ProductCard {
    name: String,
    title: String,
    description: String,
    gateway: String,
    environment: String,
    approval: String,
    /// (plan, what it allows)
    plans: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "products.html")]
struct ProductsPage {
    nav: Nav,
    products: Vec<ProductCard>,
    environments: Vec<String>,
    subscriptions: Vec<crate::store::portal::Subscription>,
    developers: Vec<crate::store::portal::Developer>,
}

fn plan_summary(p: &crate::store::portal::Plan) -> String {
    let parts: Vec<String> = [
        (p.rate_per_second, "/s"),
        (p.rate_per_minute, "/min"),
        (p.quota_per_day, "/day"),
        (p.quota_per_month, "/month"),
    ]
    .iter()
    .filter_map(|(n, unit)| n.map(|n| format!("{n}{unit}")))
    .chain(p.key_ttl_days.map(|d| format!("keys valid {d} days")))
    .collect();
    if parts.is_empty() { "no limits".into() } else { parts.join(", ") }
}

async fn products_page(State(state): State<AppState>, signed: Signed) -> Result<Response, UiError> {
    let products = state
        .store
        .products()
        .await?
        .into_iter()
        .map(|p| ProductCard {
            plans: p.plans.iter().map(|plan| (plan.name.clone(), plan_summary(plan))).collect(),
            name: p.name,
            title: p.title,
            description: p.description,
            gateway: p.gateway,
            environment: p.environment,
            approval: p.approval,
        })
        .collect();
    let developers = if signed.user.role.includes(Role::Admin) { state.store.developers().await? } else { Vec::new() };
    render(&ProductsPage {
        nav: signed.nav("products"),
        products,
        environments: state
            .store
            .all_environments()
            .await?
            .into_iter()
            .map(|e| format!("{}/{}", e.gateway, e.name))
            .collect(),
        subscriptions: state.store.subscriptions(None).await?,
        developers,
    })
}

#[derive(Deserialize)]
struct ProductForm {
    #[serde(default)]
    csrf: String,
    name: String,
    title: String,
    #[serde(default)]
    description: String,
    environment: String,
    approval: String,
    plans: String,
}

/// `free rate_per_second=5 quota_per_day=1000`, one plan per line.
fn parse_plans(text: &str) -> Result<Vec<crate::store::portal::Plan>, UiError> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut words = line.split_whitespace();
            let mut plan =
                crate::store::portal::Plan { name: words.next().unwrap_or_default().to_owned(), ..Default::default() };
            for word in words {
                let bad = || UiError::BadRequest(format!("In {line:?}: {word:?} is not key=number"));
                let (key, value) = word.split_once('=').ok_or_else(bad)?;
                let value: i64 = value.parse().map_err(|_| bad())?;
                let slot = match key {
                    "rate_per_second" => &mut plan.rate_per_second,
                    "rate_per_minute" => &mut plan.rate_per_minute,
                    "quota_per_day" => &mut plan.quota_per_day,
                    "quota_per_month" => &mut plan.quota_per_month,
                    "key_ttl_days" => &mut plan.key_ttl_days,
                    _ => return Err(UiError::BadRequest(format!("In {line:?}: {key:?} is not a plan limit"))),
                };
                *slot = Some(value);
            }
            Ok(plan)
        })
        .collect()
}

async fn create_product(
    State(state): State<AppState>,
    signed: Signed,
    Form(f): Form<ProductForm>,
) -> Result<Response, UiError> {
    signed.may(Role::Operator, &f.csrf)?;
    let (gateway, environment) =
        f.environment.split_once('/').ok_or_else(|| UiError::BadRequest("Choose an environment.".into()))?;
    let product = control::NewProduct {
        name: f.name.trim().to_owned(),
        title: f.title.trim().to_owned(),
        description: f.description.trim().to_owned(),
        gateway: gateway.to_owned(),
        environment: environment.to_owned(),
        approval: Some(f.approval),
        plans: parse_plans(&f.plans)?,
    };
    control::create_product(&state.store, &signed.actor(), &product).await?;
    Ok(Redirect::to("/products").into_response())
}

/// `approve` or `reject` a subscription.
async fn decide_subscription(
    State(state): State<AppState>,
    signed: Signed,
    Path((id, decision)): Path<(i64, String)>,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, UiError> {
    signed.may(Role::Operator, &f.csrf)?;
    let approve = match decision.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return Err(UiError::NotFound("There is no such page.".into())),
    };
    control::decide_subscription(&state.store, &signed.actor(), id, approve).await?;
    Ok(Redirect::to("/products").into_response())
}

async fn approve_developer(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<i64>,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, UiError> {
    signed.may(Role::Admin, &f.csrf)?;
    control::approve_developer(&state.store, &signed.actor(), id).await?;
    Ok(Redirect::to("/products").into_response())
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    nav: Nav,
    gateway: String,
    env: String,
    range: String,
    ranges: Vec<&'static str>,
    requests: i64,
    rps: String,
    error_rate: String,
    latency: String,
    status: Vec<(String, i64)>,
    rps_chart: String,
    latency_chart: String,
    /// (route, requests, errors, p95)
    routes: Vec<(String, i64, i64, String)>,
    nodes: Vec<(String, i64, i64, String)>,
}

#[derive(Deserialize)]
struct RangeQuery {
    #[serde(default)]
    range: Option<String>,
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| if v >= 100.0 { format!("{v:.0} ms") } else { format!("{v:.1} ms") })
}

fn clock(minute: i64) -> String {
    rfc3339(minute * 60_000).get(11..16).unwrap_or_default().to_owned()
}

async fn dashboard(
    State(state): State<AppState>,
    signed: Signed,
    Path((gw, env)): Path<(String, String)>,
    Query(q): Query<RangeQuery>,
) -> Result<Response, UiError> {
    use super::charts::{Line, line_chart};
    let e = state.store.environment(&gw, &env).await?;
    let range = q.range.unwrap_or_else(|| "15m".into());
    let t = crate::api::traffic(&state.store, e.id, &range).await?;
    // Promotions inside the range, placed on the step axis.
    #[allow(clippy::cast_precision_loss)]
    let markers: Vec<(f64, String)> = state
        .store
        .promotions(e.id)
        .await?
        .iter()
        .filter(|p| p.created_at / 60_000 >= t.from_minute)
        .map(|p| {
            let at = (p.created_at / 60_000 - t.from_minute) as f64 / t.step_minutes as f64;
            (at, format!("serial {} (v{}) by {}", p.serial, p.version, p.promoted_by))
        })
        .collect();
    let (first, last) = (clock(t.from_minute), clock(t.to_minute));
    let has = |f: &crate::domain::traffic::Figures| f.requests > 0;
    let rps_chart = line_chart(
        "Requests per second",
        "/s",
        &[Line {
            label: "requests per second",
            color: "#0b5cad",
            values: t.series.iter().map(|s| Some(s.figures.rps)).collect(),
        }],
        &first,
        &last,
        &markers,
    );
    let latency_line = |label, color, pick: fn(&crate::domain::traffic::Figures) -> Option<f64>| Line {
        label,
        color,
        values: t.series.iter().map(|s| if has(&s.figures) { pick(&s.figures) } else { None }).collect(),
    };
    let latency_chart = line_chart(
        "Latency percentiles",
        "ms",
        &[
            latency_line("p50", "#17733a", |f| f.p50_ms),
            latency_line("p95", "#8a5a00", |f| f.p95_ms),
            latency_line("p99", "#b3261e", |f| f.p99_ms),
        ],
        &first,
        &last,
        &markers,
    );
    let rows = |v: &[crate::domain::traffic::Named]| {
        v.iter().map(|n| (n.name.clone(), n.figures.requests, n.figures.errors, ms(n.figures.p95_ms))).collect()
    };
    render(&DashboardPage {
        nav: signed.nav("gateways"),
        gateway: gw,
        env: e.name,
        ranges: crate::domain::traffic::RANGES.iter().map(|r| r.0).collect(),
        requests: t.totals.requests,
        rps: format!("{:.2}", t.totals.rps),
        error_rate: format!("{:.2} %", t.totals.error_rate * 100.0),
        latency: format!("{} / {} / {}", ms(t.totals.p50_ms), ms(t.totals.p95_ms), ms(t.totals.p99_ms)),
        status: t.status.clone().into_iter().collect(),
        rps_chart,
        latency_chart,
        routes: rows(&t.routes),
        nodes: rows(&t.nodes),
        range: t.range,
    })
}
