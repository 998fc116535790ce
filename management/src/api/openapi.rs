//! The OpenAPI 3.1 document, generated from the same table as the router.

use serde_json::{Map, Value, json};

use super::{Access, operations};

/// Path parameters of a route template, in order: `/a/{x}/b/{y}` -> `[x, y]`.
fn parameters(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect()
}

/// Path parameters that are numbers (versions and ids); the others are names.
fn is_integer(param: &str) -> bool {
    matches!(param, "version" | "from" | "to" | "id")
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for (op, _) in operations() {
        let params: Vec<Value> = parameters(op.path)
            .into_iter()
            .map(|name| {
                let integer = is_integer(name);
                json!({
                    "name": name,
                    "in": "path",
                    "required": true,
                    "schema": { "type": if integer { "integer" } else { "string" } },
                })
            })
            .collect();
        let mut responses = Map::new();
        responses.insert(op.success.0.to_string(), json!({ "description": op.success.1 }));
        let error = json!({ "$ref": "#/components/responses/Error" });
        match op.access {
            Access::Public => {}
            Access::Role(_) | Access::Node | Access::AnyNode => {
                responses.insert("401".into(), error.clone());
                responses.insert("403".into(), error.clone());
            }
        }
        if !params.is_empty() {
            responses.insert("404".into(), error.clone());
        }
        // A body that is not what the operation reads, or a path number that is not a number.
        let numbered = parameters(op.path).iter().any(|p| is_integer(p));
        if op.request.is_some() || numbered {
            responses.insert("400".into(), error.clone());
        }
        if op.id == "createVersion" {
            responses.insert("422".into(), error.clone());
        }
        if op.id == "promote" || op.id.starts_with("create") {
            responses.insert("409".into(), error.clone());
        }
        // Any operation that reads the database answers 503 while it is unreachable.
        if op.id != "health" && op.id != "openapi" {
            responses.insert("503".into(), error.clone());
        }
        if op.id == "exportMetrics" {
            responses.insert("413".into(), error.clone());
            responses.insert("415".into(), error.clone());
        }
        if op.id == "getBundle" {
            responses.insert("304".into(), json!({ "description": "Not modified since the ETag sent" }));
        }
        let access = match op.access {
            Access::Public => "public".to_owned(),
            Access::Role(role) => role.to_string(),
            Access::Node => "node token of this environment".to_owned(),
            Access::AnyNode => "node token".to_owned(),
        };
        let mut operation = json!({
            "operationId": op.id,
            "summary": op.summary,
            "parameters": params,
            "responses": responses,
            "x-weir-access": access,
            "security": if op.access == Access::Public { json!([]) } else { json!([{ "bearer": [] }]) },
        });
        if let Some((media, description)) = op.request {
            operation["requestBody"] = json!({
                "required": true,
                "description": description,
                "content": { media: { "schema": {} } },
            });
        }
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        entry[op.method.as_str().to_ascii_lowercase()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Weir management API",
            "version": weir_gateway::VERSION,
            "description": "Config versions, promotion, signed bundles and the node fleet of Weir gateways.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "responses": {
                "Error": {
                    "description": "An error with a stable code",
                    "content": { "application/json": { "schema": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": { "type": "string" },
                            "message": { "type": "string" },
                            "errors": { "type": "array", "items": { "type": "object", "properties": {
                                "path": { "type": "string" }, "message": { "type": "string" } } } },
                        },
                    } } },
                },
            },
        },
    })
}
