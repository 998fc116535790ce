//! Single sign-on with OpenID Connect: authorization code flow with PKCE (S256), the
//! `openidconnect` crate doing discovery and ID-token verification, Weir's own HTTP
//! client underneath (it never follows redirects, as a token exchange must not).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, HttpRequest, HttpResponse, IssuerUrl, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse as _,
};
use serde_json::Value;
use tokio::sync::RwLock;

use crate::domain::access::Role;

/// How long a provider's discovery document and keys are reused before being fetched again.
const METADATA_TTL_MS: i64 = 3_600_000;
const HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Provider responses (discovery, keys, tokens) are small; this bounds a hostile one.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Single sign-on settings (`weir-control serve --oidc-*`).
#[derive(Debug, Clone)]
pub struct SsoSettings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// Where the provider sends browsers back: `<public URL>/auth/sso/callback`.
    pub redirect_url: String,
    /// The ID-token claim holding the user's groups (a list or a string).
    pub groups_claim: String,
    /// Group -> role, first match wins in the order admin, operator, viewer. A `*` entry
    /// gives every authenticated user that role; without it, unmapped users are refused.
    pub role_map: Vec<(String, Role)>,
}

impl SsoSettings {
    /// Parses `group=role,group=role,*=viewer`.
    pub fn parse_role_map(text: &str) -> Result<Vec<(String, Role)>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|entry| {
                let (group, role) = entry.split_once('=').ok_or_else(|| format!("{entry:?} is not group=role"))?;
                let role = Role::parse(role.trim())
                    .filter(|r| *r != Role::Node)
                    .ok_or_else(|| format!("{entry:?}: the role must be admin, operator or viewer"))?;
                Ok((group.trim().to_owned(), role))
            })
            .collect()
    }

    /// The strongest role the groups map to.
    pub fn role_for(&self, groups: &[String]) -> Option<Role> {
        [Role::Admin, Role::Operator, Role::Viewer].into_iter().find(|role| {
            self.role_map.iter().any(|(g, r)| r == role && (g == "*" || groups.iter().any(|have| have == g)))
        })
    }
}

/// A sign-in the provider confirmed.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `issuer|subject`: stable across email changes.
    pub subject: String,
    pub email: String,
    pub groups: Vec<String>,
}

/// An SSO sign-in about to leave for the provider.
pub struct Started {
    pub url: String,
    pub state: String,
    pub verifier: String,
    pub nonce: String,
}

pub struct Sso {
    pub settings: SsoSettings,
    http: weir_gateway::proxy::client::Client,
    metadata: RwLock<Option<(i64, Arc<CoreProviderMetadata>)>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

impl Sso {
    pub fn new(settings: SsoSettings) -> Result<Self, String> {
        IssuerUrl::new(settings.issuer.clone()).map_err(|e| format!("OIDC issuer {:?}: {e}", settings.issuer))?;
        RedirectUrl::new(settings.redirect_url.clone())
            .map_err(|e| format!("OIDC redirect URL {:?}: {e}", settings.redirect_url))?;
        let http = weir_gateway::proxy::client::build(2).map_err(|e| e.to_string())?;
        Ok(Self { settings, http, metadata: RwLock::new(None) })
    }

    /// The HTTP client handed to `openidconnect`.
    fn http_client(
        &self,
    ) -> impl Fn(HttpRequest) -> std::pin::Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send>> {
        let client = self.http.clone();
        move |request: HttpRequest| {
            let client = client.clone();
            Box::pin(async move {
                let (parts, body) = request.into_parts();
                let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
                let response = tokio::time::timeout(HTTP_TIMEOUT, client.request(request))
                    .await
                    .map_err(|_| HttpError("the identity provider did not answer in time".into()))?
                    .map_err(|e| HttpError(format!("cannot reach the identity provider: {e}")))?;
                let (parts, body) = response.into_parts();
                let body = tokio::time::timeout(
                    HTTP_TIMEOUT,
                    http_body_util::Limited::new(body, MAX_RESPONSE_BYTES).collect(),
                )
                .await
                .map_err(|_| HttpError("the identity provider's answer timed out".into()))?
                .map_err(|e| HttpError(format!("the identity provider's answer: {e}")))?
                .to_bytes();
                Ok(http::Response::from_parts(parts, body.to_vec()))
            })
        }
    }

    async fn metadata(&self) -> Result<Arc<CoreProviderMetadata>, String> {
        let now = crate::store::now_ms();
        if let Some((at, m)) = self.metadata.read().await.as_ref()
            && now - at < METADATA_TTL_MS
        {
            return Ok(m.clone());
        }
        let issuer = IssuerUrl::new(self.settings.issuer.clone()).map_err(|e| e.to_string())?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http_client())
            .await
            .map_err(|e| format!("OIDC discovery at {}: {}", self.settings.issuer, error_chain(&e)))?;
        let metadata = Arc::new(metadata);
        *self.metadata.write().await = Some((now, metadata.clone()));
        Ok(metadata)
    }

    async fn client(
        &self,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        String,
    > {
        let metadata = self.metadata().await?;
        let redirect = RedirectUrl::new(self.settings.redirect_url.clone()).map_err(|e| e.to_string())?;
        Ok(CoreClient::from_provider_metadata(
            (*metadata).clone(),
            ClientId::new(self.settings.client_id.clone()),
            Some(ClientSecret::new(self.settings.client_secret.clone())),
        )
        .set_redirect_uri(redirect))
    }

    /// The provider URL to send the browser to, with a fresh state, nonce and PKCE pair.
    pub async fn start(&self) -> Result<Started, String> {
        let client = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
            .add_scope(Scope::new("email".into()))
            .set_pkce_challenge(challenge);
        if self.settings.groups_claim == "groups" {
            request = request.add_scope(Scope::new("groups".into()));
        }
        let (url, state, nonce) = request.url();
        Ok(Started {
            url: url.to_string(),
            state: state.secret().clone(),
            verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
        })
    }

    /// Exchanges the code and verifies the ID token (signature, issuer, audience, expiry, nonce).
    pub async fn finish(&self, code: &str, verifier: &str, nonce: &str) -> Result<Identity, String> {
        let client = self.client().await?;
        let http = self.http_client();
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| format!("the provider has no token endpoint: {e}"))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()))
            .request_async(&http)
            .await
            .map_err(|e| format!("code exchange failed: {}", error_chain(&e)))?;
        let id_token = tokens.id_token().ok_or("the provider returned no ID token")?;
        let claims = id_token
            .claims(&client.id_token_verifier(), &Nonce::new(nonce.to_owned()))
            .map_err(|e| format!("ID token refused: {}", error_chain(&e)))?;
        let email = claims.email().map(|e| e.as_str().to_owned()).ok_or("the ID token has no email claim")?;
        // The token is verified by now; custom claims are read from its payload.
        let groups = id_token
            .to_string()
            .split('.')
            .nth(1)
            .and_then(|p| B64.decode(p).ok())
            .and_then(|p| serde_json::from_slice::<Value>(&p).ok())
            .map(|payload| match payload.get(&self.settings.groups_claim) {
                Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
                Some(Value::String(s)) => s.split([' ', ',']).filter(|g| !g.is_empty()).map(str::to_owned).collect(),
                _ => Vec::new(),
            })
            .unwrap_or_default();
        Ok(Identity { subject: format!("{}|{}", self.settings.issuer, claims.subject().as_str()), email, groups })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_map_to_the_strongest_role() {
        let s = SsoSettings {
            issuer: String::new(),
            client_id: String::new(),
            client_secret: String::new(),
            redirect_url: String::new(),
            groups_claim: "groups".into(),
            role_map: SsoSettings::parse_role_map("ops=operator, admins=admin").unwrap(),
        };
        let g = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(s.role_for(&g(&["ops", "admins"])), Some(Role::Admin));
        assert_eq!(s.role_for(&g(&["ops"])), Some(Role::Operator));
        assert_eq!(s.role_for(&g(&["sales"])), None);
        let open = SsoSettings { role_map: SsoSettings::parse_role_map("*=viewer").unwrap(), ..s };
        assert_eq!(open.role_for(&[]), Some(Role::Viewer));
        assert!(SsoSettings::parse_role_map("ops=root").is_err());
        assert!(SsoSettings::parse_role_map("ops").is_err());
    }
}
