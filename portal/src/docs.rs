//! API reference for a product, generated from the gateway config that serves it: the
//! endpoints whose `auth/api-keys` admits the product's keys, with their parameters and
//! how to send the key, as OpenAPI 3.1 (merged with a document operators uploaded).

use serde::Serialize;
use serde_json::{Map, Value, json};

/// How a key is sent, from the service's `auth/api-keys`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyPlacement {
    /// `header` or `query`.
    pub place: String,
    pub name: String,
}

/// One documented operation.
#[derive(Debug, Clone, Serialize)]
pub struct Operation {
    pub method: String,
    pub path: String,
    pub path_params: Vec<String>,
    pub query: Vec<String>,
    pub headers: Vec<String>,
    pub summary: String,
}

/// A product's reference.
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    pub key: KeyPlacement,
    pub operations: Vec<Operation>,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).filter(|s| *s != "*").map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The operations of `config` that keys of `product` may call.
pub fn reference(config: &Value, product: &str) -> Reference {
    let service_keys = config.pointer("/extra_config/auth~1api-keys");
    let key = match service_keys.and_then(|k| k.get("strategy")).and_then(Value::as_str) {
        Some("query_string") => KeyPlacement {
            place: "query".into(),
            name: service_keys.and_then(|k| k.get("identifier")).and_then(Value::as_str).unwrap_or("key").into(),
        },
        _ => KeyPlacement {
            place: "header".into(),
            name: service_keys
                .and_then(|k| k.get("identifier"))
                .and_then(Value::as_str)
                .unwrap_or("Authorization")
                .into(),
        },
    };
    let mut operations = Vec::new();
    for e in config.get("endpoints").and_then(Value::as_array).into_iter().flatten() {
        let Some(guard) = e.pointer("/extra_config/auth~1api-keys") else { continue };
        let roles = strings(guard.get("roles"));
        if !roles.is_empty() && !roles.iter().any(|r| r == product) {
            continue;
        }
        let path = e.get("endpoint").and_then(Value::as_str).unwrap_or("/").to_owned();
        let path_params = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|s| s.trim_start_matches('*').to_owned())
            .collect();
        let backends = e.get("backend").and_then(Value::as_array).map_or(0, Vec::len);
        operations.push(Operation {
            method: e.get("method").and_then(Value::as_str).unwrap_or("GET").to_ascii_uppercase(),
            summary: e
                .get("@comment")
                .and_then(Value::as_str)
                .map_or_else(|| format!("Served from {backends} backend call(s)"), str::to_owned),
            path,
            path_params,
            query: strings(e.get("input_query_strings")),
            headers: strings(e.get("input_headers")),
        });
    }
    Reference { key, operations }
}

/// The reference as OpenAPI 3.1, with an uploaded document merged over it.
pub fn openapi(title: &str, description: &str, server: &str, r: &Reference, uploaded: Option<&Value>) -> Value {
    let mut paths = Map::new();
    for op in &r.operations {
        let mut params: Vec<Value> = op
            .path_params
            .iter()
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        params.extend(op.query.iter().map(|q| json!({"name": q, "in": "query", "schema": {"type": "string"}})));
        params.extend(op.headers.iter().map(|h| json!({"name": h, "in": "header", "schema": {"type": "string"}})));
        let operation = json!({
            "summary": op.summary,
            "parameters": params,
            "security": [{"apiKey": []}],
            "responses": {
                "200": {"description": "Success"},
                "401": {"description": "Missing, unknown, revoked or expired key"},
                "403": {"description": "The key is not for this product"},
                "429": {"description": "The plan's rate or quota is used up (see Retry-After)"},
            },
        });
        let entry = paths.entry(op.path.clone()).or_insert_with(|| json!({}));
        entry[op.method.to_ascii_lowercase()] = operation;
    }
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": title, "description": description, "version": "1"},
        "servers": [{"url": server}],
        "paths": paths,
        "components": {"securitySchemes": {"apiKey": {"type": "apiKey", "in": r.key.place, "name": r.key.name}}},
    });
    if let Some(uploaded) = uploaded {
        merge(&mut doc, uploaded);
    }
    doc
}

/// Deep merge: objects key by key, anything else replaced by `over`.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_the_endpoints_a_product_key_opens() {
        let config = json!({"version": 3,
        "extra_config": {"auth/api-keys": {"keys": [], "identifier": "X-Api-Key"}},
        "endpoints": [
            {"endpoint": "/orders/{id}", "input_query_strings": ["expand"],
             "extra_config": {"auth/api-keys": {"roles": ["orders"]}}, "backend": [{}]},
            {"endpoint": "/admin", "extra_config": {"auth/api-keys": {"roles": ["ops"]}}, "backend": [{}]},
            {"endpoint": "/any", "method": "post", "extra_config": {"auth/api-keys": {}}, "backend": [{}]},
            {"endpoint": "/public", "backend": [{}]},
        ]});
        let r = reference(&config, "orders");
        let paths: Vec<&str> = r.operations.iter().map(|o| o.path.as_str()).collect();
        assert_eq!(paths, vec!["/orders/{id}", "/any"]);
        assert_eq!(r.key, KeyPlacement { place: "header".into(), name: "X-Api-Key".into() });
        assert_eq!(r.operations[0].path_params, vec!["id"]);
        let uploaded = json!({"paths": {"/orders/{id}": {"get": {"summary": "Fetch an order"}}}});
        let doc = openapi("Orders", "", "http://gw", &r, Some(&uploaded));
        assert_eq!(doc["paths"]["/orders/{id}"]["get"]["summary"], "Fetch an order");
        assert_eq!(doc["paths"]["/orders/{id}"]["get"]["parameters"][1]["name"], "expand");
        assert_eq!(doc["paths"]["/any"]["post"]["security"][0]["apiKey"], json!([]));
        assert_eq!(doc["components"]["securitySchemes"]["apiKey"]["in"], "header");
    }
}
