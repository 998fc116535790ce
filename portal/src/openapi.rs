//! The OpenAPI 3.1 document of the portal's own JSON API, served at
//! `/api/v1/openapi.json` (the API products' documents are in `docs`).

use serde_json::{Map, Value, json};

/// One operation: method, path, id, summary, whether it needs a developer token, its body
/// schema and its success status.
struct Op {
    method: &'static str,
    path: &'static str,
    id: &'static str,
    summary: &'static str,
    signed: bool,
    body: Option<fn() -> Value>,
    success: u16,
}

fn credentials() -> Value {
    json!({"type": "object", "required": ["email", "password"], "properties": {
        "email": {"type": "string", "format": "email"},
        "password": {"type": "string", "minLength": 12}}})
}

fn new_app() -> Value {
    json!({"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "description": {"type": "string"}}})
}

fn new_subscription() -> Value {
    json!({"type": "object", "required": ["product", "plan"], "properties": {
        "product": {"type": "string"}, "plan": {"type": "string"}}})
}

fn rotation() -> Value {
    json!({"type": "object", "properties": {"grace_hours": {"type": "integer", "minimum": 0, "maximum": 168}}})
}

fn empty() -> Value {
    json!({"type": "object"})
}

const OPS: &[Op] = &[
    Op {
        method: "post",
        path: "/api/v1/signup",
        id: "signUp",
        summary: "Create a developer account (202 whether or not the address is known)",
        signed: false,
        body: Some(credentials),
        success: 202,
    },
    Op {
        method: "post",
        path: "/api/v1/tokens",
        id: "signIn",
        summary: "Exchange email and password for a bearer token",
        signed: false,
        body: Some(credentials),
        success: 201,
    },
    Op {
        method: "get",
        path: "/api/v1/products",
        id: "listProducts",
        summary: "API products and their plans",
        signed: false,
        body: None,
        success: 200,
    },
    Op {
        method: "get",
        path: "/api/v1/apps",
        id: "listApps",
        summary: "Your apps",
        signed: true,
        body: None,
        success: 200,
    },
    Op {
        method: "post",
        path: "/api/v1/apps",
        id: "createApp",
        summary: "Register an app",
        signed: true,
        body: Some(new_app),
        success: 201,
    },
    Op {
        method: "post",
        path: "/api/v1/apps/{id}/subscriptions",
        id: "subscribe",
        summary: "Subscribe an app to a product's plan",
        signed: true,
        body: Some(new_subscription),
        success: 201,
    },
    Op {
        method: "get",
        path: "/api/v1/subscriptions",
        id: "listSubscriptions",
        summary: "Your subscriptions",
        signed: true,
        body: None,
        success: 200,
    },
    Op {
        method: "post",
        path: "/api/v1/subscriptions/{id}/keys",
        id: "issueKey",
        summary: "Issue an API key (shown once)",
        signed: true,
        body: Some(empty),
        success: 201,
    },
    Op {
        method: "get",
        path: "/api/v1/keys",
        id: "listKeys",
        summary: "Your keys (prefixes only)",
        signed: true,
        body: None,
        success: 200,
    },
    Op {
        method: "get",
        path: "/api/v1/usage",
        id: "usage",
        summary: "Requests per app, as the nodes report them",
        signed: true,
        body: None,
        success: 200,
    },
    Op {
        method: "post",
        path: "/api/v1/keys/{id}/revoke",
        id: "revokeKey",
        summary: "Revoke a key on every node",
        signed: true,
        body: Some(empty),
        success: 204,
    },
    Op {
        method: "post",
        path: "/api/v1/keys/{id}/rotate",
        id: "rotateKey",
        summary: "A new key; the old one works for grace_hours more",
        signed: true,
        body: Some(rotation),
        success: 201,
    },
];

pub fn document() -> Value {
    let error = json!({"$ref": "#/components/responses/Error"});
    let mut paths = Map::new();
    for op in OPS {
        let mut responses = Map::new();
        responses.insert(op.success.to_string(), json!({"description": "Success"}));
        let with_id = op.path.contains("{id}");
        if op.body.is_some() || with_id {
            // Syntax, shape (422) and media type (415) of the body; a path id that is no number.
            for status in ["400", "413", "415", "422"] {
                responses.insert(status.into(), error.clone());
            }
        }
        if op.signed {
            responses.insert("401".into(), error.clone());
            responses.insert("403".into(), error.clone());
        }
        if with_id {
            responses.insert("404".into(), error.clone());
        }
        if op.method == "post" && op.signed {
            responses.insert("409".into(), error.clone());
        }
        if !op.signed && op.method == "post" {
            responses.insert("401".into(), error.clone());
            responses.insert("403".into(), error.clone());
            responses.insert("429".into(), error.clone());
        }
        let mut operation = json!({
            "operationId": op.id,
            "summary": op.summary,
            "responses": responses,
            "security": if op.signed { json!([{"bearer": []}]) } else { json!([]) },
        });
        if with_id {
            operation["parameters"] =
                json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}]);
        }
        if let Some(schema) = op.body {
            operation["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema()}}});
        }
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        entry[op.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Weir developer portal API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Sign up, register apps, subscribe them to API products and manage their keys."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "An error", "content": {
                "application/json": {"schema": {"type": "object", "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}}}},
                "text/plain": {"schema": {"type": "string"}}}}},
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_of_the_api_is_documented() {
        let doc = super::document();
        let source = include_str!("api.rs");
        for line in source.lines().filter(|l| l.trim_start().starts_with(".route(\"/api/v1/")) {
            let path = line.split('"').nth(1).unwrap_or_default();
            if path == "/api/v1/openapi.json" {
                continue;
            }
            assert!(doc["paths"].get(path).is_some(), "{path} is not in the OpenAPI document");
        }
    }
}
