//! `weir audit`: a security lint of a gateway config. Where `check` answers "will this
//! run?", `audit` answers "is this safe to expose?": write methods anyone may call,
//! credentials allowed from any origin, debug endpoints, public endpoints without a rate
//! limit, and the like. Each finding has a stable rule id, a severity and the path of
//! the part of the config it is about.

use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "low" => Some(Self::Low),
            "medium" => Some(Self::Medium),
            "high" => Some(Self::High),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Low => "LOW",
            Self::Medium => "MEDIUM",
            Self::High => "HIGH",
            Self::Critical => "CRITICAL",
        }
    }
}

/// A rule: its id, severity and what it looks for.
pub struct Rule {
    pub id: &'static str,
    pub severity: Severity,
    pub summary: &'static str,
}

pub const RULES: &[Rule] = &[
    Rule {
        id: "WA101",
        severity: Severity::High,
        summary: "a write method (POST, PUT, PATCH, DELETE) without authentication",
    },
    Rule {
        id: "WA102",
        severity: Severity::Critical,
        summary: "JWT validation with disable_jwk_security (keys fetched without TLS checks)",
    },
    Rule { id: "WA103", severity: Severity::Medium, summary: "JWT validation that checks neither audience nor issuer" },
    Rule {
        id: "WA104",
        severity: Severity::Medium,
        summary: "API keys read from the query string (they end up in access logs and browser history)",
    },
    Rule { id: "WA201", severity: Severity::High, summary: "CORS allowing any origin together with credentials" },
    Rule { id: "WA202", severity: Severity::Low, summary: "CORS allowing any origin" },
    Rule { id: "WA301", severity: Severity::Medium, summary: "the /__debug/ endpoint is on" },
    Rule { id: "WA302", severity: Severity::Medium, summary: "the /__echo/ endpoint is on" },
    Rule {
        id: "WA401",
        severity: Severity::Medium,
        summary: "a public endpoint (no authentication) without a rate limit",
    },
    Rule {
        id: "WA501",
        severity: Severity::Medium,
        summary: "a timeout above 60 s (slow backends then hold connections and memory that long)",
    },
    Rule {
        id: "WA601",
        severity: Severity::Medium,
        summary: "every client header is forwarded to backends (input_headers: [\"*\"]), Cookie and Authorization included",
    },
    Rule {
        id: "WA602",
        severity: Severity::Low,
        summary: "every query-string parameter is forwarded to backends (input_query_strings: [\"*\"])",
    },
    Rule {
        id: "WA701",
        severity: Severity::Low,
        summary: "no TLS on the listener (terminate TLS in front of the gateway, or set tls)",
    },
    Rule {
        id: "WA702",
        severity: Severity::Low,
        summary: "no security headers (security/http: HSTS, nosniff, frame options)",
    },
];

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    /// Where in the config, e.g. `endpoints[2]`.
    pub path: String,
    pub message: String,
}

const AUTH: &[&str] = &["auth/validator", "auth/api-keys", "auth/basic"];
const RATE_LIMITS: &[&str] = &["qos/ratelimit/router", "qos/ratelimit/router/redis"];
const WRITE_METHODS: &[&str] = &["POST", "PUT", "PATCH", "DELETE"];
const LONGEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn extra(v: &Value) -> Option<&Map<String, Value>> {
    v.get("extra_config").and_then(Value::as_object)
}

fn has_any(config: Option<&Map<String, Value>>, keys: &[&str]) -> bool {
    config.is_some_and(|c| keys.iter().any(|k| c.contains_key(*k)))
}

fn is_star_list(v: Option<&Value>) -> bool {
    v.and_then(Value::as_array).is_some_and(|a| a.iter().any(|s| s == "*"))
}

/// Audits a config tree (as `config::to_value` reads it). The config should pass
/// `check` first: the audit reads what a valid config means and skips what it cannot.
pub fn audit(root: &Value) -> Vec<Finding> {
    let mut found = Vec::new();
    let mut add = |id: &'static str, path: String, detail: String| {
        let rule = RULES.iter().find(|r| r.id == id).map_or(Severity::Low, |r| r.severity);
        found.push(Finding { rule: id, severity: rule, path, message: detail });
    };
    let service = extra(root);

    if root.get("debug_endpoint").and_then(Value::as_bool) == Some(true) {
        add(
            "WA301",
            "debug_endpoint".into(),
            "debug_endpoint is true: /__debug/ answers anyone; turn it off outside development".into(),
        );
    }
    if root.get("echo_endpoint").and_then(Value::as_bool) == Some(true) {
        add(
            "WA302",
            "echo_endpoint".into(),
            "echo_endpoint is true: /__echo/ reflects requests, headers included, to anyone".into(),
        );
    }
    if root.get("tls").is_none() {
        add("WA701", "tls".into(), "the listener speaks plain HTTP; make sure TLS is terminated in front of it".into());
    }
    if !has_any(service, &["security/http"]) {
        add(
            "WA702",
            "extra_config".into(),
            "no security/http: responses carry no HSTS, nosniff or frame options".into(),
        );
    }
    if let Some(cors) = service.and_then(|s| s.get("security/cors")) {
        let any_origin = is_star_list(cors.get("allow_origins")) || cors.get("allow_origins").is_none();
        if any_origin && cors.get("allow_credentials").and_then(Value::as_bool) == Some(true) {
            add("WA201", "extra_config.security/cors".into(),
                "allow_origins is * (or unset) with allow_credentials: any web site can make credentialed calls and read the answers; list the origins".into());
        } else if any_origin {
            add(
                "WA202",
                "extra_config.security/cors".into(),
                "allow_origins is * (or unset): any web site can call this API from a browser".into(),
            );
        }
    }
    if let Some(keys) = service.and_then(|s| s.get("auth/api-keys"))
        && keys.get("strategy").and_then(Value::as_str) == Some("query_string")
    {
        add(
            "WA104",
            "extra_config.auth/api-keys.strategy".into(),
            "API keys travel in the query string; use the header strategy".into(),
        );
    }
    let service_timeout = root.get("timeout").and_then(Value::as_str);
    if let Some(t) = service_timeout.and_then(|t| crate::config::parse_duration(t).ok())
        && t > LONGEST_TIMEOUT
    {
        add(
            "WA501",
            "timeout".into(),
            format!("the default endpoint timeout is {}", service_timeout.unwrap_or_default()),
        );
    }

    for (i, endpoint) in root.get("endpoints").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let path = format!("endpoints[{i}]");
        let method = endpoint.get("method").and_then(Value::as_str).unwrap_or("GET").to_ascii_uppercase();
        let route = format!("{method} {}", endpoint.get("endpoint").and_then(Value::as_str).unwrap_or("?"));
        let config = extra(endpoint);
        let authenticated = has_any(config, AUTH);
        if !authenticated && WRITE_METHODS.contains(&method.as_str()) {
            add(
                "WA101",
                path.clone(),
                format!("{route} changes data and anyone may call it; add auth/validator, auth/api-keys or auth/basic"),
            );
        }
        if !authenticated && !has_any(config, RATE_LIMITS) {
            add(
                "WA401",
                path.clone(),
                format!("{route} is public and unthrottled; add qos/ratelimit/router (max_rate, client_max_rate)"),
            );
        }
        if let Some(jwt) = config.and_then(|c| c.get("auth/validator")) {
            let at = format!("{path}.extra_config.auth/validator");
            if jwt.get("disable_jwk_security").and_then(Value::as_bool) == Some(true) {
                add(
                    "WA102",
                    at.clone(),
                    format!(
                        "{route}: signing keys are fetched without TLS verification; anyone on the path can mint tokens"
                    ),
                );
            }
            if jwt.get("audience").is_none() && jwt.get("issuer").is_none() {
                add(
                    "WA103",
                    at,
                    format!(
                        "{route}: any token signed by the key is accepted, whoever it was issued for; set audience and issuer"
                    ),
                );
            }
        }
        if let Some(t) = endpoint.get("timeout").and_then(Value::as_str)
            && crate::config::parse_duration(t).is_ok_and(|d| d > LONGEST_TIMEOUT)
        {
            add("WA501", format!("{path}.timeout"), format!("{route} waits up to {t}"));
        }
        if is_star_list(endpoint.get("input_headers")) {
            add(
                "WA601",
                format!("{path}.input_headers"),
                format!("{route} forwards every client header; list the ones the backends need"),
            );
        }
        if is_star_list(endpoint.get("input_query_strings")) {
            add(
                "WA602",
                format!("{path}.input_query_strings"),
                format!("{route} forwards every query parameter; list the ones the backends need"),
            );
        }
    }
    found.sort_by(|a, b| b.severity.cmp(&a.severity).then_with(|| a.rule.cmp(b.rule)));
    found
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rules(config: &Value) -> Vec<&'static str> {
        let mut ids: Vec<_> = audit(config).into_iter().map(|f| f.rule).collect();
        ids.dedup();
        ids
    }

    #[test]
    fn a_hardened_config_has_no_findings() {
        let config = json!({"version": 3, "timeout": "3s", "tls": {"keys": []},
        "extra_config": {"security/http": {"sts_seconds": 31536000},
            "security/cors": {"allow_origins": ["https://app.example.com"], "allow_credentials": true}},
        "endpoints": [
            {"endpoint": "/orders", "method": "POST", "input_headers": ["X-Request-Id"],
             "extra_config": {"auth/validator": {"alg": "RS256", "jwk_url": "https://idp/jwks", "audience": ["shop"]}},
             "backend": [{"url_pattern": "/orders"}]},
            {"endpoint": "/products", "extra_config": {"qos/ratelimit/router": {"max_rate": 100}},
             "backend": [{"url_pattern": "/products"}]}
        ]});
        assert_eq!(audit(&config).len(), 0, "{:?}", audit(&config));
    }

    #[test]
    fn each_rule_fires_on_what_it_describes() {
        let config = json!({"version": 3, "timeout": "90s", "debug_endpoint": true, "echo_endpoint": true,
        "extra_config": {"security/cors": {"allow_origins": ["*"], "allow_credentials": true},
                         "auth/api-keys": {"keys": [], "strategy": "query_string"}},
        "endpoints": [
            {"endpoint": "/orders/{id}", "method": "delete", "backend": [{"url_pattern": "/o"}]},
            {"endpoint": "/me", "input_headers": ["*"], "input_query_strings": ["*"], "timeout": "2m",
             "extra_config": {"auth/validator": {"alg": "RS256", "jwk_url": "http://idp/jwks", "disable_jwk_security": true}},
             "backend": [{"url_pattern": "/me"}]}
        ]});
        let found = audit(&config);
        let ids = rules(&config);
        for id in [
            "WA101", "WA102", "WA103", "WA104", "WA201", "WA301", "WA302", "WA401", "WA501", "WA601", "WA602", "WA701",
            "WA702",
        ] {
            assert!(ids.contains(&id), "{id} missing from {ids:?}");
        }
        assert!(!ids.contains(&"WA202"), "credentials make it WA201, not both");
        assert_eq!(found[0].severity, Severity::Critical, "most severe first");
        let delete = found.iter().find(|f| f.rule == "WA101").unwrap();
        assert_eq!(delete.path, "endpoints[0]");
        assert!(delete.message.starts_with("DELETE /orders/{id}"), "{}", delete.message);
        assert_eq!(found.iter().filter(|f| f.rule == "WA501").count(), 2, "service and endpoint timeouts");
    }

    #[test]
    fn authenticated_or_throttled_endpoints_are_not_public_unthrottled() {
        let config = json!({"version": 3, "endpoints": [
            {"endpoint": "/a", "extra_config": {"auth/api-keys": {"roles": ["x"]}}, "backend": [{"url_pattern": "/"}]},
            {"endpoint": "/b", "extra_config": {"qos/ratelimit/router/redis": {"max_rate": 5}}, "backend": [{"url_pattern": "/"}]},
            {"endpoint": "/c", "backend": [{"url_pattern": "/"}]}
        ]});
        let public: Vec<_> = audit(&config).into_iter().filter(|f| f.rule == "WA401").map(|f| f.path).collect();
        assert_eq!(public, ["endpoints[2]"]);
    }

    #[test]
    fn every_rule_has_a_unique_id() {
        let mut ids: Vec<_> = RULES.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), RULES.len());
    }
}
