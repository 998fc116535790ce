//! Accepting a config upload: the node's own validation, then canonical bytes and digest.

use serde::Serialize;
use weir_gateway::config::{self, Format};

/// A problem with an upload, with its path in the config.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// An upload that a node would run.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Compact JSON with sorted keys: the bytes a bundle carries and the digest covers.
    pub canonical: String,
    pub digest: String,
    pub endpoints: usize,
    /// Unknown keys and other warnings: stored anyway, reported back.
    pub warnings: Vec<Problem>,
}

pub fn format_name(format: Format) -> &'static str {
    match format {
        Format::Json => "json",
        Format::Yaml => "yaml",
        Format::Toml => "toml",
    }
}

/// The format named by a `format` parameter or a media type (`application/yaml`, …).
pub fn parse_format(name: &str) -> Option<Format> {
    let name = name.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match name.rsplit('/').next().unwrap_or("").trim_start_matches("x-") {
        "json" | "" => Some(Format::Json),
        "yaml" | "yml" => Some(Format::Yaml),
        "toml" => Some(Format::Toml),
        _ => None,
    }
}

/// Runs the same checks as `weir check` and a node receiving a bundle: every error and
/// every component the node would refuse comes back, each with its path.
pub fn accept(text: &str, format: Format) -> Result<Accepted, Vec<Problem>> {
    // No KRAKEND_* overrides: the control plane's environment is not the nodes'.
    let checked = config::parse(text, format, |_| None);
    let report = &checked.report;
    let problem = |path: &str, message: String| Problem { path: path.to_owned(), message };
    let mut errors: Vec<Problem> = report.errors.iter().map(|p| problem(&p.path, p.message.clone())).collect();
    errors.extend(report.unsupported.iter().filter(|u| u.blocking).map(|u| {
        problem(&u.path, format!("\"{}\" is not supported yet, and nodes refuse configs that use it", u.namespace))
    }));
    let Some(service) = checked.service.filter(|_| errors.is_empty()) else {
        if errors.is_empty() {
            errors.push(problem("", "the config could not be read".into()));
        }
        return Err(errors);
    };
    if let Err(e) = weir_gateway::runtime::Runtime::compile(&service, weir_gateway::runtime::Flags::default()) {
        return Err(vec![problem("", e.to_string())]);
    }
    let canonical = weir_gateway::bundle::canonical_config(text, format).map_err(|m| vec![problem("", m)])?;
    let mut warnings: Vec<Problem> = report.warnings.iter().map(|p| problem(&p.path, p.message.clone())).collect();
    warnings.extend(report.unknown_keys.iter().map(|p| problem(&p.path, p.message.clone())));
    warnings.extend(
        report
            .unsupported
            .iter()
            .filter(|u| !u.blocking)
            .map(|u| problem(&u.path, format!("\"{}\" is not supported yet and is ignored", u.namespace))),
    );
    Ok(Accepted {
        digest: weir_gateway::bundle::digest(canonical.as_bytes()),
        canonical,
        endpoints: service.endpoints.len(),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_comes_back_with_its_path() {
        let text = r#"{"version": 3, "endpoints": [
            {"endpoint": "/a", "backend": [{"host": ["http://x"]}]},
            {"endpoint": "/b/{id}", "backend": [{"host": ["http://x"], "url_pattern": "/b/{user}"}]}
        ]}"#;
        let errors = accept(text, Format::Json).unwrap_err();
        assert!(errors.iter().any(|e| e.path.starts_with("endpoints[0].backend[0]")), "{errors:?}");
        assert!(errors.iter().any(|e| e.path.starts_with("endpoints[1].backend[0]")), "{errors:?}");
    }

    #[test]
    fn the_same_config_in_any_format_has_one_digest() {
        let json = r#"{"version": 3, "endpoints": [{"endpoint": "/a", "backend": [{"host": ["http://x"], "url_pattern": "/a"}]}]}"#;
        let yaml = "version: 3\nendpoints:\n  - endpoint: /a\n    backend:\n      - url_pattern: /a\n        host: [\"http://x\"]\n";
        let a = accept(json, Format::Json).unwrap();
        let b = accept(yaml, Format::Yaml).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.endpoints, 1);
    }

    #[test]
    fn formats_are_named_by_parameter_or_media_type() {
        assert_eq!(parse_format("application/x-yaml"), Some(Format::Yaml));
        assert_eq!(parse_format("application/toml; charset=utf-8"), Some(Format::Toml));
        assert_eq!(parse_format("json"), Some(Format::Json));
        assert_eq!(parse_format("application/xml"), None);
    }
}
