//! The gateway config: KrakenD's v3 format read from JSON, YAML or TOML, validated
//! in one pass that reports every problem with its path.
//!
//! This module does no I/O beyond reading the one file it is given, so the node,
//! `weir check` and the control plane all run exactly the same validation.

mod duration;
mod model;
mod report;
mod validate;

use std::path::Path;

use serde_json::Value;

pub use duration::parse as parse_duration;
pub use model::*;
pub use report::{Problem, Report, Unsupported};
pub use validate::{LIMITS_NAMESPACE, MAX_PATH_PARAMS, path_params, resp_placeholder};
pub(crate) use validate::{is_comment_key, join, kind};

/// The syntax a config file is written in, chosen by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    Toml,
}

impl Format {
    /// `.yaml`/`.yml` and `.toml` by extension; anything else is read as JSON, as KrakenD does.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("yaml" | "yml") => Format::Yaml,
            Some("toml") => Format::Toml,
            _ => Format::Json,
        }
    }
}

/// A config that was read and checked; `service` is `None` when `report` has errors.
#[derive(Debug)]
pub struct Checked {
    pub service: Option<Service>,
    pub report: Report,
}

/// Reads and validates a config file, applying `KRAKEND_*` environment overrides.
pub fn load(path: &Path) -> Checked {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, Format::from_path(path), |k| std::env::var(k).ok()),
        Err(e) => {
            let mut report = Report::default();
            report.error("", format!("cannot read {}: {e}", path.display()));
            Checked { service: None, report }
        }
    }
}

/// Parses and validates config text. `env` looks up environment variables, so tests
/// and the control plane can decide which overrides apply.
pub fn parse(text: &str, format: Format, env: impl Fn(&str) -> Option<String>) -> Checked {
    let mut root = match to_value(text, format) {
        Ok(v) => v,
        Err(message) => {
            let mut report = Report::default();
            report.error("", message);
            return Checked { service: None, report };
        }
    };
    apply_env_overrides(&mut root, env);
    let (service, report) = validate::validate(&root);
    Checked { service, report }
}

/// Parses config text into a JSON tree without validating it.
pub fn to_value(text: &str, format: Format) -> Result<Value, String> {
    match format {
        Format::Json => serde_json::from_str(text)
            .map_err(|e| format!("invalid JSON at line {}, column {}: {e}", e.line(), e.column())),
        Format::Yaml => serde_saphyr::from_str(text).map_err(|e| format!("invalid YAML: {e}")),
        Format::Toml => toml::from_str(text).map_err(|e| format!("invalid TOML: {e}")),
    }
}

/// KrakenD lets `KRAKEND_PORT`, `KRAKEND_TIMEOUT`, ... override root scalars that the
/// file sets; the value keeps the type of the one in the file.
fn apply_env_overrides(root: &mut Value, env: impl Fn(&str) -> Option<String>) {
    let Value::Object(obj) = root else { return };
    for (key, value) in obj.iter_mut() {
        if !matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            continue;
        }
        let Some(raw) = env(&format!("KRAKEND_{}", key.to_ascii_uppercase())) else {
            continue;
        };
        *value = match value {
            Value::Number(_) => {
                raw.trim().parse::<serde_json::Number>().map(Value::Number).unwrap_or(Value::String(raw))
            }
            Value::Bool(_) => match raw.trim() {
                "true" | "1" => Value::Bool(true),
                "false" | "0" => Value::Bool(false),
                _ => Value::String(raw),
            },
            _ => Value::String(raw),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Checked {
        parse(text, Format::Json, |_| None)
    }

    fn messages(c: &Checked) -> Vec<String> {
        c.report.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn minimal_config_gets_krakend_defaults() {
        let c = check(
            r#"{"version":3,"endpoints":[{"endpoint":"/a","backend":[{"host":["http://b:1"],"url_pattern":"/x"}]}]}"#,
        );
        let s = c.service.expect("valid");
        assert_eq!(s.port, 8080);
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        let e = &s.endpoints[0];
        assert_eq!(e.method, http::Method::GET);
        assert_eq!(e.input_headers, NameFilter::Only(vec!["Content-Type".into()]));
        assert_eq!(e.backends[0].host, vec!["http://b:1".to_owned()]);
    }

    #[test]
    fn reports_every_error_with_its_path() {
        let c = check(
            r#"{"version":2,"timeout":"fast","endpoints":[
                {"endpoint":"/users/{user}","backend":[{"host":["http://b"],"url_pattern":"/u/{id}"}]},
                {"endpoint":"/x","method":"FETCH","backend":[]}]}"#,
        );
        let m = messages(&c);
        assert!(c.service.is_none());
        assert!(m.iter().any(|e| e.starts_with("version: must be 3")), "{m:?}");
        assert!(m.iter().any(|e| e.starts_with("timeout: ")), "{m:?}");
        assert!(
            m.iter().any(|e| e.starts_with(
                "endpoints[0].backend[0].url_pattern: {id} is not a parameter of /users/{user}"
            )),
            "{m:?}"
        );
        assert!(m.iter().any(|e| e.starts_with("endpoints[1].method: ")), "{m:?}");
        assert!(m.iter().any(|e| e.starts_with("endpoints[1].backend: needs at least one")), "{m:?}");
    }

    #[test]
    fn unknown_keys_and_unsupported_components_are_reported_apart() {
        let c = check(
            r#"{"version":3,"$schema":"x","@comment":"y","colour":"red","host":["http://b"],"endpoints":[
                {"endpoint":"/a","extra_config":{"modifier/lua-endpoint":{}},"backend":[{"url_pattern":"/"}]}]}"#,
        );
        assert!(c.report.errors.is_empty(), "{:?}", c.report.errors);
        assert_eq!(c.report.unknown_keys.len(), 1);
        assert_eq!(c.report.unknown_keys[0].path, "colour");
        assert_eq!(c.report.unsupported.len(), 1);
        assert!(c.report.unsupported[0].blocking);
        assert!(!c.report.is_runnable(false, false));
        assert!(c.report.is_runnable(false, true));
        assert!(!c.report.is_runnable(true, true));
    }

    #[test]
    fn env_overrides_root_scalars_present_in_the_file() {
        let c = parse(r#"{"version":3,"port":8080,"name":"a"}"#, Format::Json, |k| match k {
            "KRAKEND_PORT" => Some("9000".into()),
            "KRAKEND_NAME" => Some("b".into()),
            "KRAKEND_TIMEOUT" => Some("bad".into()),
            _ => None,
        });
        let s = c.service.expect("valid");
        assert_eq!((s.port, s.name.as_str(), s.timeout), (9000, "b", DEFAULT_TIMEOUT));
    }

    #[test]
    fn yaml_and_toml_parse_to_the_same_model() {
        let yaml = "version: 3\nhost: [\"http://b:1\"]\nendpoints:\n  - endpoint: /a\n    backend:\n      - url_pattern: /x\n        allow: [a]\n";
        let toml = "version = 3\nhost = [\"http://b:1\"]\n[[endpoints]]\nendpoint = \"/a\"\n[[endpoints.backend]]\nurl_pattern = \"/x\"\nallow = [\"a\"]\n";
        for (text, f) in [(yaml, Format::Yaml), (toml, Format::Toml)] {
            let s = parse(text, f, |_| None).service.expect("valid");
            assert_eq!(s.endpoints[0].backends[0].allow, vec!["a".to_owned()]);
        }
    }

    #[test]
    fn conflicting_and_duplicate_routes_are_errors() {
        let c = check(
            r#"{"version":3,"host":["http://b"],"endpoints":[
                {"endpoint":"/a/{id}","backend":[{"url_pattern":"/"}]},
                {"endpoint":"/a/{id}","backend":[{"url_pattern":"/"}]},
                {"endpoint":"/__health","backend":[{"url_pattern":"/"}]}]}"#,
        );
        let m = messages(&c);
        assert!(m.iter().any(|e| e.starts_with("endpoints[1].endpoint: GET /a/{id} is declared twice")), "{m:?}");
        assert!(m.iter().any(|e| e.starts_with("endpoints[2].endpoint: /__health is reserved")), "{m:?}");
    }

    #[test]
    fn otlp_exporters_over_http_and_grpc_are_both_supported() {
        let with = |exporter: &str| {
            check(&format!(
                r#"{{"version":3,"host":["http://b"],"extra_config":{{"telemetry/opentelemetry":{{"exporters":{{"otlp":[{exporter}]}}}}}},
                   "endpoints":[{{"endpoint":"/a","backend":[{{"url_pattern":"/"}}]}}]}}"#
            ))
            .report
        };
        for exporter in [
            r#"{"name":"c","host":"collector","port":4318,"use_http":true}"#,
            r#"{"name":"c","host":"collector","port":4317}"#,
        ] {
            let report = with(exporter);
            assert!(report.unsupported.is_empty() && report.errors.is_empty(), "{exporter}: {report:?}");
        }
    }

    /// Found by fuzzing: the router panicked on a path with 26 parameters.
    #[test]
    fn too_many_path_parameters_are_an_error_not_a_panic() {
        let path = |n: usize| (0..n).map(|i| format!("/{{p{i}}}")).collect::<String>();
        let text = |n: usize| {
            format!(
                r#"{{"version":3,"host":["http://b"],"endpoints":[{{"endpoint":"{}","backend":[{{"url_pattern":"/"}}]}}]}}"#,
                path(n)
            )
        };
        let most = check(&text(MAX_PATH_PARAMS));
        assert!(most.report.errors.is_empty(), "{:?}", most.report.errors);
        let service = most.service.expect("valid");
        assert!(
            crate::runtime::Runtime::compile(&service, Default::default()).is_ok(),
            "the router takes the largest path"
        );

        let m = messages(&check(&text(MAX_PATH_PARAMS + 1)));
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].starts_with("endpoints[0].endpoint: "), "{m:?}");
        assert!(m[0].contains("has 26 parameters; at most 25 are allowed"), "{m:?}");
    }

    #[test]
    fn sequential_placeholders_must_point_backwards() {
        let c = check(
            r#"{"version":3,"host":["http://b"],"endpoints":[
                {"endpoint":"/a","extra_config":{"proxy":{"sequential":true}},
                 "backend":[{"url_pattern":"/x/{resp1_id}"},{"url_pattern":"/y/{resp0_user.id}"}]}]}"#,
        );
        let m = messages(&c);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].starts_with("endpoints[0].backend[0].url_pattern: {resp1_id} refers to backend 1"));
    }
}
