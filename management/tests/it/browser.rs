//! The operator UI in a real browser: Debian's Chromium driven through chromedriver.
//! Screenshots of the main pages land in `<target>/tmp/screenshots/`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use weir_management::domain::access::Role;

use crate::fleet::{backend, eventually, gateway_config, start_node};
use crate::oidc::TestIdp;
use crate::support::{Db, TestApp, free_port, spawn_app, spawn_app_full};

/// chromedriver and its Chromium, stopped when dropped.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start() -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver package; tests/run.sh installs it)");
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let caps: serde_json::Map<String, serde_json::Value> = caps.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{port}");
        let mut last = String::new();
        for _ in 0..100 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
                Ok(client) => return Self { client, driver, _profile: profile },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start a session: {last}");
    }

    async fn go(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The text of the first element matching `css`, waiting for it to appear. Retried
    /// when the page replaces the element between finding and reading it (live tables).
    async fn text(&self, css: &str) -> String {
        let mut last = String::new();
        for _ in 0..50 {
            match self.client.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css(css)).await {
                Ok(element) => match element.text().await {
                    Ok(text) => return text,
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no text for {css}: {last}");
    }

    async fn fill(&self, css: &str, value: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    /// Sets a text area's value directly (typing a whole config key by key is slow).
    async fn set_value(&self, css: &str, value: &str) {
        self.client
            .execute("document.querySelector(arguments[0]).value = arguments[1];", vec![json!(css), json!(value)])
            .await
            .unwrap();
    }

    async fn click(&self, css: &str) {
        self.client.find(Locator::Css(css)).await.unwrap().click().await.unwrap();
    }

    async fn source(&self) -> String {
        self.client.source().await.unwrap()
    }

    async fn sign_in(&self, app: &TestApp, email: &str, password: &str) {
        self.go(&format!("{}/login", app.url())).await;
        self.fill("input[name=email]", email).await;
        self.fill("input[name=password]", password).await;
        self.click("button[type=submit]").await;
        let who = self.text(".who").await;
        assert!(who.contains(email), "not signed in: {who}");
    }

    async fn screenshot(&self, name: &str) {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Posts a form from inside the page (same origin, with the session cookie) and
    /// returns the status: what a forged or hand-made request would get.
    async fn post_from_page(&self, path: &str, body: &str) -> u64 {
        let script = "const [path, body, done] = arguments; \
            fetch(path, {method: 'POST', body, headers: {'content-type': 'application/x-www-form-urlencoded'}}) \
              .then(r => done(r.status), () => done(0));";
        self.client.execute_async(script, vec![json!(path), json!(body)]).await.unwrap().as_u64().unwrap()
    }
}

const BAD_CONFIG: &str = r#"{
  "version": 3,
  "endpoints": [
    {"endpoint": "/users/{id}", "backend": [{"host": ["http://127.0.0.1:9"], "url_pattern": "/users/{user}"}]}
  ]
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_uploads_diffs_promotes_and_watches_the_node_sync() {
    let app = spawn_app(Db::Sqlite).await;
    app.gateway("shop", &[("dev", None), ("prod", Some("dev"))]).await;
    app.user("ops@example.com", "correct horse battery", Role::Admin).await;
    let upstream = backend().await;
    let node_port = free_port();
    let b = Browser::start().await;
    b.sign_in(&app, "ops@example.com", "correct horse battery").await;
    assert!(b.text(".cards").await.contains("shop"));

    // An invalid upload: the error shows next to the line of its path, nothing is stored.
    b.go(&format!("{}/gateways/shop/versions/new", app.url())).await;
    b.set_value("#config", BAD_CONFIG).await;
    b.fill("input[name=message]", "broken").await;
    b.click("#upload button[type=submit]").await;
    let problems = b.text(".problems").await;
    assert!(problems.contains("endpoints[0].backend[0].url_pattern"), "{problems}");
    let inline = b.text("pre.annotated .inline-error").await;
    assert!(inline.contains("{user}"), "{inline}");
    let bad_line = b.text("pre.annotated .bad").await;
    assert!(bad_line.contains("\"url_pattern\""), "the error sits on the url_pattern line: {bad_line}");
    b.screenshot("upload-invalid").await;
    assert!(app.get("/api/v1/gateways/shop/versions", &app.admin_token).await.body.as_array().unwrap().is_empty());

    // Two valid versions, then their diff.
    for (pattern, message) in [("/v1", "first"), ("/v2", "second")] {
        b.go(&format!("{}/gateways/shop/versions/new", app.url())).await;
        let config = serde_json::to_string_pretty(&gateway_config(&upstream, node_port, pattern)).unwrap();
        b.set_value("#config", &config).await;
        b.fill("input[name=message]", message).await;
        b.click("#upload button[type=submit]").await;
        assert!(b.text("h1").await.contains("v"), "version page");
    }
    assert!(b.text("dl.facts").await.contains("second"));
    b.screenshot("version").await;
    b.go(&format!("{}/gateways/shop/diff?from=1&to=2", app.url())).await;
    let summary = b.text(".summary").await;
    assert!(summary.contains("GET /hello") && summary.contains("backend[0].url_pattern"), "{summary}");
    assert!(b.text("table.sbs tr.replace").await.contains("/v2"));
    b.screenshot("diff").await;

    // Promote v1 to dev from its version page, with the confirmation page in between.
    b.go(&format!("{}/gateways/shop/versions/1", app.url())).await;
    b.click("form.promote button").await;
    assert!(b.text(".lead").await.contains("Nothing runs in dev yet"));
    b.click("form.inline button.primary").await;
    assert!(b.text(".notice").await.contains("serial 1"));

    // A real node starts, then v2 is promoted: the page shows it converge to SYNCED.
    let token_file = app.dir.path().join("node-token");
    std::fs::write(&token_file, app.node_token("shop", "dev", "browser").await).unwrap();
    let node = start_node(&app, &token_file, node_port);
    b.go(&format!("{}/gateways/shop/versions/2", app.url())).await;
    b.click("form.promote button").await;
    assert!(b.text(".lead").await.contains("dev runs v1"));
    let confirm = b.source().await;
    assert!(
        confirm.contains("dev runs") && confirm.contains("backend[0].url_pattern"),
        "the diff against what dev runs"
    );
    b.screenshot("promote-confirm").await;
    b.click("form.inline button.primary").await;
    let synced = eventually(Duration::from_secs(20), || async {
        let status = b.text(".convergence").await;
        status.contains("All 1 node(s) run serial 2").then_some(status)
    })
    .await;
    assert!(synced.is_some(), "the page never showed the node synced: {}\n{}", b.text("#nodes").await, node.log());
    assert!(b.text("#nodes").await.contains("SYNCED"));
    b.screenshot("environment").await;

    // Traffic through the node shows on the dashboard within an export interval.
    for _ in 0..12 {
        crate::portal::call("GET", &format!("http://127.0.0.1:{node_port}/hello"), &[], None).await;
    }
    let shown = eventually(Duration::from_secs(10), || async {
        b.go(&format!("{}/gateways/shop/environments/dev/dashboard", app.url())).await;
        let n = b.text("#requests").await;
        (n == "12").then_some(n)
    })
    .await;
    assert!(shown.is_some(), "the dashboard never counted 12 requests: {}", b.text("dl.facts").await);
    assert!(b.source().await.contains("<path d=\"M"), "the charts have lines");
    b.screenshot("dashboard").await;

    // prod only takes what ran in dev: v1 ran there, so the rule lets it through.
    b.go(&format!("{}/gateways/shop/promote?env=prod&version=2", app.url())).await;
    assert!(b.source().await.contains("Roll back") || b.source().await.contains("Promote prod"));

    for (page, name) in [
        ("/", "overview"),
        ("/gateways/shop", "gateway"),
        ("/fleet", "fleet"),
        ("/tokens", "tokens"),
        ("/users", "users"),
        ("/audit", "audit"),
    ] {
        b.go(&format!("{}{page}", app.url())).await;
        b.screenshot(name).await;
    }
    let audit = b.text("table").await;
    assert!(audit.contains("environment.promote") && audit.contains("user:ops@example.com"), "{audit}");

    // Publish an API product from the UI.
    b.go(&format!("{}/products", app.url())).await;
    b.fill("#new-product input[name=name]", "orders").await;
    b.fill("#new-product input[name=title]", "Orders API").await;
    b.click("#new-product button").await;
    let card = b.text(".cards .card").await;
    assert!(card.contains("Orders API") && card.contains("5/s, 1000/day"), "{card}");
    b.screenshot("products").await;
    b.go(&format!("{}/audit", app.url())).await;
    assert!(b.text(".notice.ok").await.contains("Hash chain intact"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_cannot_promote_and_forms_need_their_csrf_token() {
    let app = spawn_app(Db::Sqlite).await;
    app.gateway("shop", &[("dev", None)]).await;
    app.push("shop", &crate::support::config("http://127.0.0.1:9", &[("/a", "/a")]), "one").await;
    app.user("viewer@example.com", "viewer password 1", Role::Viewer).await;
    app.user("ops@example.com", "operator password 1", Role::Operator).await;

    let b = Browser::start().await;
    b.sign_in(&app, "viewer@example.com", "viewer password 1").await;
    b.go(&format!("{}/gateways/shop/versions/1", app.url())).await;
    let page = b.source().await;
    assert!(page.contains("v1") && !page.contains("Review promotion"), "viewers see no promote button");
    assert!(!b.source().await.contains("Tokens"), "nor admin pages in the menu");
    // Posting anyway, even with the session's own CSRF token, is refused.
    let csrf = b.client.find(Locator::Css("input[name=csrf]")).await.unwrap().attr("value").await.unwrap().unwrap();
    let status = b.post_from_page("/gateways/shop/environments/dev/promote", &format!("csrf={csrf}&version=1")).await;
    assert_eq!(status, 403);
    b.go(&format!("{}/tokens", app.url())).await;
    assert!(b.text("h1").await.contains("Not allowed"));
    b.go(&format!("{}/", app.url())).await;
    b.click("button.link").await; // sign out
    assert!(b.text(".signin h1").await.contains("control plane"));

    b.sign_in(&app, "ops@example.com", "operator password 1").await;
    b.go(&format!("{}/gateways/shop/versions/1", app.url())).await;
    assert_eq!(b.post_from_page("/gateways/shop/environments/dev/promote", "version=1").await, 403, "no CSRF token");
    assert_eq!(b.post_from_page("/gateways/shop/environments/dev/promote", "csrf=forged&version=1").await, 403);
    let promotions = app.get("/api/v1/gateways/shop/environments/dev/promotions", &app.admin_token).await;
    assert_eq!(promotions.body, json!([]), "nothing was promoted");
    let csrf = b.client.find(Locator::Css("input[name=csrf]")).await.unwrap().attr("value").await.unwrap().unwrap();
    assert_eq!(
        b.post_from_page("/gateways/shop/environments/dev/promote", &format!("csrf={csrf}&version=1")).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_sign_on_maps_groups_to_roles() {
    let idp = TestIdp::start().await;
    let (issuer, client_id, secret) = (idp.issuer.clone(), idp.client_id.clone(), idp.client_secret.clone());
    let app = spawn_app_full(Db::Sqlite, Duration::from_secs(30), move |addr| {
        let settings = weir_management::ui::sso::SsoSettings {
            issuer,
            client_id,
            client_secret: secret,
            redirect_url: format!("http://{addr}/auth/sso/callback"),
            groups_claim: "groups".into(),
            role_map: weir_management::ui::sso::SsoSettings::parse_role_map("platform=operator,weir-admins=admin")
                .unwrap(),
        };
        weir_management::ui::UiSettings::new(true, Some(weir_management::ui::sso::Sso::new(settings).unwrap()))
    })
    .await;
    app.gateway("shop", &[("dev", None)]).await;

    let b = Browser::start().await;
    idp.sign_in_as("u-42", "grace@example.com", &["platform", "sales"]);
    b.go(&format!("{}/gateways/shop", app.url())).await;
    b.screenshot("login").await;
    b.click("a.button").await;
    let who = b.text(".who").await;
    assert!(who.contains("grace@example.com") && who.contains("operator"), "{who}");
    assert!(b.text("h1").await.contains("shop"), "back on the page asked for");
    assert_eq!(idp.exchanges(), 1);

    // Someone in no mapped group is turned away with the reason.
    b.click("button.link").await;
    idp.sign_in_as("u-7", "mallory@example.com", &["sales"]);
    b.go(&format!("{}/login", app.url())).await;
    b.click("a.button").await;
    assert!(b.text(".error").await.contains("no group"));

    // The account's role follows the provider's groups at the next sign-in.
    idp.sign_in_as("u-42", "grace@example.com", &["weir-admins"]);
    b.click("a.button").await;
    assert!(b.text(".who").await.contains("admin"));
    let users = app.store.users().await.unwrap();
    let grace = users.iter().find(|u| u.email == "grace@example.com").unwrap();
    assert_eq!(grace.role, Role::Admin);
    assert!(users.iter().all(|u| u.email != "mallory@example.com"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_goes_from_sign_up_to_a_working_key_and_revokes_it() {
    use crate::portal::{call, keyed_shop, spawn_portal};
    let app = spawn_app(Db::Sqlite).await;
    let (_nodes, ports) = keyed_shop(&app, 1, "auto").await;
    let gateway = format!("http://127.0.0.1:{}", ports[0]);
    let portal = spawn_portal(&app, false, gateway.clone()).await;
    let started = std::time::Instant::now();

    let b = Browser::start().await;
    b.go(&format!("{portal}/")).await;
    assert!(b.text(".cards").await.contains("orders API"));
    b.screenshot("portal-catalog").await;
    b.click("a.button.primary").await; // Sign up to get a key
    b.fill("input[name=email]", "grace@example.com").await;
    b.fill("input[name=password]", "correct horse battery staple").await;
    b.click("button[type=submit]").await;
    assert!(b.text(".notice").await.contains("Sign in to continue"));
    b.fill("input[name=password]", "correct horse battery staple").await;
    b.click("button[type=submit]").await;
    assert!(b.text("h1").await.contains("My apps"));

    b.fill("input[name=name]", "Grace's dashboard").await;
    b.click("form.inline button.primary").await;
    assert!(b.text("section.app h2").await.contains("Grace's dashboard"));
    b.client.execute("document.querySelector('select[name=plan]').value = 'orders/free';", vec![]).await.unwrap();
    b.click("section.app form.inline button").await; // Subscribe
    assert!(b.text(".subscription h3").await.contains("active"));
    b.click(".subscription form button.primary").await; // Get a new key
    let key = b.text("#secret").await;
    assert!(key.starts_with("wk_"), "{key}");
    b.screenshot("portal-key").await;

    // The key works on the gateway (within the propagation time), then is revoked in the UI.
    let works = eventually(Duration::from_secs(10), || async {
        let (status, _, body) = call("GET", &format!("{gateway}/orders/7"), &[("x-api-key", &key)], None).await;
        (status == http::StatusCode::OK).then_some(body)
    })
    .await;
    assert_eq!(works.unwrap()["v"], 1);
    eprintln!("sign-up to a working key in the browser: {} ms", started.elapsed().as_millis());

    // The docs name the endpoint and how to send the key; "try it" calls the gateway.
    b.go(&format!("{portal}/docs/orders")).await;
    assert!(b.text(".lead").await.contains("X-Api-Key"));
    b.fill("form.try input[name=path]", "/orders/42").await;
    b.fill("form.try input[name=key]", &key).await;
    b.click("form.try button").await;
    assert!(b.text(".tried h2").await.contains("200"));
    b.screenshot("portal-docs").await;

    b.go(&format!("{portal}/apps")).await;
    b.screenshot("portal-apps").await;
    b.click("button.danger").await; // Revoke
    assert!(b.text(".subscription table").await.contains("revoked"));
    let refused = eventually(Duration::from_secs(10), || async {
        let (status, _, body) = call("GET", &format!("{gateway}/orders/7"), &[("x-api-key", &key)], None).await;
        (status == http::StatusCode::UNAUTHORIZED).then_some(body)
    })
    .await;
    assert_eq!(refused.unwrap()["error"], "api key revoked");
}
