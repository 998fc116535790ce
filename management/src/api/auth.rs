//! Every route states who may call it ([`Access`]); this guard enforces it before the
//! handler runs, so no route can forget.

use axum::extract::{RawPathParams, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use http::header;

use super::error::ApiError;
use crate::domain::access::{Role, hash_token};
use crate::store::Store;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (the OpenAPI document, health).
    Public,
    /// An operator token whose role includes this one.
    Role(Role),
    /// A node token scoped to the `{gateway}`/`{environment}` of the path.
    Node,
    /// A node token of any environment; the handler reads the scope from the caller.
    AnyNode,
}

/// The authenticated caller, for handlers and the audit log.
#[derive(Debug, Clone)]
pub struct Caller {
    /// A node token's gateway and environment.
    pub scope: Option<(String, String)>,
    /// How the audit log names the caller: `token:<name>`.
    pub actor: String,
}

#[derive(Clone)]
pub(crate) struct Guard {
    pub store: Store,
    pub access: Access,
}

pub(crate) async fn guard(State(g): State<Guard>, params: RawPathParams, mut request: Request, next: Next) -> Response {
    // Only the header is taken along: the request body is not `Sync`, so a reference to
    // the request cannot be held across the token lookup.
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();
    match authorize(&g, &params, authorization.as_ref()).await {
        Ok(Some(caller)) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Ok(None) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

async fn authorize(
    g: &Guard,
    params: &RawPathParams,
    authorization: Option<&http::HeaderValue>,
) -> Result<Option<Caller>, ApiError> {
    if g.access == Access::Public {
        return Ok(None);
    }
    let token = authorization
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    let token = g.store.token_by_hash(&hash_token(token)).await?.ok_or(ApiError::Unauthorized)?;
    match g.access {
        Access::Public => {}
        Access::Role(needed) => {
            if !token.role.includes(needed) {
                return Err(ApiError::Forbidden(format!(
                    "this needs the {needed} role; the token {:?} has the {} role",
                    token.name, token.role
                )));
            }
        }
        Access::AnyNode => {
            if token.role != Role::Node {
                return Err(ApiError::Forbidden("only node tokens send metrics".into()));
            }
        }
        Access::Node => {
            let param = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| v);
            let scope_matches = token.role == Role::Node
                && token.gateway.as_deref() == param("gateway")
                && token.environment.as_deref() == param("environment");
            if !scope_matches {
                return Err(ApiError::Forbidden(match (&token.gateway, &token.environment) {
                    (Some(g), Some(e)) => format!("this node token is for {g}/{e} only"),
                    _ => "only a node token of this environment may do this".to_owned(),
                }));
            }
        }
    }
    let scope = token.gateway.clone().zip(token.environment.clone());
    Ok(Some(Caller { scope, actor: format!("token:{}", token.name) }))
}
