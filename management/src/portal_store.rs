//! The developer portal's storage, implemented on the control plane's [`Store`]. Every
//! change is audited; key changes ask for the environment's keyring to be published,
//! which the control plane (never the portal) signs.

use weir_portal::{App, AppUsage, Developer, Fut, Key, Plan, PortalError, PortalStore, Product, Subscription};

use crate::store::{Change, Store, StoreError, now_ms};

impl From<StoreError> for PortalError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => PortalError::NotFound(format!("{m} not found")),
            StoreError::Conflict(m) => PortalError::Conflict(m),
            e => PortalError::Internal(e.to_string()),
        }
    }
}

fn change(actor: &str, action: &'static str, target: String, detail: String) -> Change {
    Change { actor: format!("developer:{actor}"), action, target, detail, ..Change::default() }
}

fn plan(p: crate::store::portal::Plan) -> Plan {
    Plan {
        name: p.name,
        rate_per_second: p.rate_per_second,
        rate_per_minute: p.rate_per_minute,
        quota_per_day: p.quota_per_day,
        quota_per_month: p.quota_per_month,
        key_ttl_days: p.key_ttl_days,
    }
}

fn developer(d: crate::store::portal::Developer) -> Developer {
    Developer { id: d.id, email: d.email, password_hash: d.password_hash, status: d.status }
}

fn subscription(s: crate::store::portal::Subscription) -> Subscription {
    Subscription { id: s.id, app_id: s.app_id, app: s.app, product: s.product, plan: s.plan, status: s.status }
}

impl Store {
    async fn email_of(&self, developer: i64) -> Result<String, PortalError> {
        let row = sqlx::query("SELECT email FROM developers WHERE id = $1")
            .bind(developer)
            .fetch_optional(self.pool())
            .await
            .map_err(StoreError::from)?
            .ok_or_else(|| PortalError::NotFound("account not found".into()))?;
        Ok(crate::store::get(&row, "email")?)
    }

    /// One of the developer's keys (anyone else's is "not found").
    async fn own_key(&self, developer: i64, key: i64) -> Result<crate::store::portal::ApiKey, PortalError> {
        self.api_keys(developer)
            .await?
            .into_iter()
            .find(|k| k.id == key)
            .ok_or_else(|| PortalError::NotFound(format!("You have no key {key}.")))
    }
}

impl PortalStore for Store {
    fn sign_up<'a>(&'a self, email: &'a str, password_hash: &'a str, status: &'a str) -> Fut<'a, i64> {
        Box::pin(async move {
            let mut w = self.write().await?;
            let id = self.create_developer(&mut w.tx, email, password_hash, status).await?;
            w.commit(change(email, "developer.signup", format!("developer:{email}"), format!("status {status}")))
                .await?;
            Ok(id)
        })
    }

    fn developer_by_email<'a>(&'a self, email: &'a str) -> Fut<'a, Option<Developer>> {
        Box::pin(async move { Ok(Store::developer_by_email(self, email).await?.map(developer)) })
    }

    fn create_session<'a>(&'a self, id_hash: &'a str, developer: i64, csrf: &'a str, expires_at: i64) -> Fut<'a, ()> {
        Box::pin(async move { Ok(self.create_developer_session(id_hash, developer, csrf, expires_at).await?) })
    }

    fn session<'a>(&'a self, id_hash: &'a str) -> Fut<'a, Option<(Developer, String)>> {
        Box::pin(async move { Ok(self.developer_session(id_hash).await?.map(|(d, csrf)| (developer(d), csrf))) })
    }

    fn end_session<'a>(&'a self, id_hash: &'a str) -> Fut<'a, ()> {
        Box::pin(async move { Ok(self.delete_developer_session(id_hash).await?) })
    }

    fn products(&self) -> Fut<'_, Vec<Product>> {
        Box::pin(async move {
            Ok(Store::products(self)
                .await?
                .into_iter()
                .map(|p| Product {
                    name: p.name,
                    title: p.title,
                    description: p.description,
                    approval: p.approval,
                    plans: p.plans.into_iter().map(plan).collect(),
                })
                .collect())
        })
    }

    fn product_config<'a>(&'a self, product: &'a str) -> Fut<'a, Option<String>> {
        Box::pin(async move {
            let p = self.product(product).await?;
            let env = self.environment_by_id(p.environment_id).await?;
            let Some(active) = env.active_version else { return Ok(None) };
            Ok(self.version(env.gateway_id, active).await?.config)
        })
    }

    fn product_openapi<'a>(&'a self, product: &'a str) -> Fut<'a, Option<String>> {
        Box::pin(async move { Ok(self.product(product).await?.openapi) })
    }

    fn apps(&self, developer: i64) -> Fut<'_, Vec<App>> {
        Box::pin(async move {
            Ok(Store::apps(self, developer)
                .await?
                .into_iter()
                .map(|a| App { id: a.id, name: a.name, description: a.description })
                .collect())
        })
    }

    fn create_app<'a>(&'a self, developer: i64, name: &'a str, description: &'a str) -> Fut<'a, i64> {
        Box::pin(async move {
            let email = self.email_of(developer).await?;
            let mut w = self.write().await?;
            let id = Store::create_app(self, &mut w.tx, developer, name, description).await?;
            w.commit(change(&email, "app.create", format!("app:{name}#{id}"), String::new())).await?;
            Ok(id)
        })
    }

    fn subscribe<'a>(
        &'a self,
        developer: i64,
        app: i64,
        product: &'a str,
        plan_name: &'a str,
    ) -> Fut<'a, Subscription> {
        Box::pin(async move {
            let email = self.email_of(developer).await?;
            let app = self.app(developer, app).await?;
            let product = self.product(product).await?;
            let plan = product
                .plans
                .iter()
                .find(|p| p.name == plan_name)
                .ok_or_else(|| PortalError::NotFound(format!("{} has no plan {plan_name:?}", product.name)))?;
            let status = if product.approval == "manual" { "pending" } else { "active" };
            let mut w = self.write().await?;
            let id = self.create_subscription(&mut w.tx, app.id, product.id, plan.id, status).await?;
            w.commit(change(
                &email,
                "subscription.create",
                format!("app:{}#{} -> {}", app.name, app.id, product.name),
                format!("plan {plan_name}, {status}"),
            ))
            .await?;
            Store::subscriptions(self, Some(developer))
                .await?
                .into_iter()
                .find(|s| s.id == id)
                .map(subscription)
                .ok_or_else(|| PortalError::Internal("the new subscription vanished".into()))
        })
    }

    fn subscriptions(&self, developer: i64) -> Fut<'_, Vec<Subscription>> {
        Box::pin(async move {
            Ok(Store::subscriptions(self, Some(developer)).await?.into_iter().map(subscription).collect())
        })
    }

    fn keys(&self, developer: i64) -> Fut<'_, Vec<Key>> {
        Box::pin(async move {
            Ok(self
                .api_keys(developer)
                .await?
                .into_iter()
                .map(|k| Key {
                    id: k.id,
                    subscription_id: k.subscription_id,
                    app: k.app,
                    product: k.product,
                    prefix: k.prefix,
                    created_at: k.created_at,
                    expires_at: k.expires_at,
                    revoked_at: k.revoked_at,
                })
                .collect())
        })
    }

    fn issue_key<'a>(
        &'a self,
        developer: i64,
        subscription: i64,
        hash: &'a str,
        prefix: &'a str,
    ) -> Fut<'a, (i64, Option<i64>)> {
        Box::pin(async move {
            let email = self.email_of(developer).await?;
            let sub = Store::subscriptions(self, Some(developer))
                .await?
                .into_iter()
                .find(|s| s.id == subscription)
                .ok_or_else(|| PortalError::NotFound(format!("You have no subscription {subscription}.")))?;
            if sub.status != "active" {
                return Err(PortalError::Forbidden(format!(
                    "The subscription is {}: keys come once it is active.",
                    sub.status
                )));
            }
            let ttl_days = self
                .product(&sub.product)
                .await?
                .plans
                .into_iter()
                .find(|p| p.name == sub.plan)
                .and_then(|p| p.key_ttl_days);
            let expires_at = ttl_days.map(|d| now_ms() + d * 86_400_000);
            let mut w = self.write().await?;
            let id = self.insert_api_key(&mut w.tx, sub.id, hash, prefix, expires_at).await?;
            self.request_keyring(&mut w.tx, sub.environment_id).await?;
            w.commit(change(
                &email,
                "key.issue",
                format!("app:{}#{} -> {}", sub.app, sub.app_id, sub.product),
                format!("key {id} ({prefix}…)"),
            ))
            .await?;
            Ok((id, expires_at))
        })
    }

    fn revoke_key(&self, developer: i64, key: i64) -> Fut<'_, ()> {
        Box::pin(async move {
            let email = self.email_of(developer).await?;
            let k = self.own_key(developer, key).await?;
            let mut w = self.write().await?;
            self.revoke_api_key(&mut w.tx, key).await?;
            self.request_keyring(&mut w.tx, k.environment_id).await?;
            w.commit(change(
                &email,
                "key.revoke",
                format!("app:{} -> {}", k.app, k.product),
                format!("key {key} ({}…)", k.prefix),
            ))
            .await?;
            Ok(())
        })
    }

    fn expire_key(&self, developer: i64, key: i64, grace_ms: i64) -> Fut<'_, ()> {
        Box::pin(async move {
            let email = self.email_of(developer).await?;
            let k = self.own_key(developer, key).await?;
            let at = now_ms() + grace_ms;
            let mut w = self.write().await?;
            self.expire_api_key(&mut w.tx, key, at).await?;
            self.request_keyring(&mut w.tx, k.environment_id).await?;
            w.commit(change(
                &email,
                "key.rotate",
                format!("app:{} -> {}", k.app, k.product),
                format!("key {key} ({}…) expires {}", k.prefix, crate::store::rfc3339(at)),
            ))
            .await?;
            Ok(())
        })
    }

    fn usage(&self, developer: i64) -> Fut<'_, Vec<AppUsage>> {
        Box::pin(async move {
            let now_minute = now_ms() / 60_000;
            // Consumers are named `<app name>#<app id>` in keyrings (see control::keyring).
            let by_app = |rows: Vec<(String, i64)>| -> std::collections::HashMap<i64, i64> {
                rows.into_iter().filter_map(|(consumer, n)| Some((consumer.rsplit_once('#')?.1.parse().ok()?, n))).fold(
                    std::collections::HashMap::new(),
                    |mut m, (app, n)| {
                        *m.entry(app).or_insert(0) += n;
                        m
                    },
                )
            };
            let day = by_app(self.consumer_requests(now_minute - 24 * 60).await?);
            let month = by_app(self.consumer_requests(now_minute - 30 * 24 * 60).await?);
            Ok(Store::apps(self, developer)
                .await?
                .into_iter()
                .map(|a| AppUsage {
                    app_id: a.id,
                    last_day: day.get(&a.id).copied().unwrap_or(0),
                    last_30_days: month.get(&a.id).copied().unwrap_or(0),
                })
                .collect())
        })
    }
}
