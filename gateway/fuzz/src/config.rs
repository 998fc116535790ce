//! Config text -> validation -> compiled runtime, as `weir check` does it.
//!
//! Input: the first byte picks the syntax (`j` JSON, `y` YAML, `t` TOML, anything else
//! by its value), the rest is the config text.
//!
//! Invariants: a config is refused exactly when the report has errors; a config that
//! validates compiles (`Runtime::compile`), passes the security audit without panicking,
//! and its canonical JSON, what a signed bundle carries, validates too.

use serde_json::Value;
use weir_gateway::config::{self, Format, Service};
use weir_gateway::runtime::{Flags, Runtime};

/// Runs one input; panics where an invariant of this target does not hold.
pub fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let format = match selector {
        b'j' => Format::Json,
        b'y' => Format::Yaml,
        b't' => Format::Toml,
        other => [Format::Json, Format::Yaml, Format::Toml][usize::from(other) % 3],
    };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let checked = config::parse(text, format, |_| None);
    assert_eq!(
        checked.service.is_some(),
        checked.report.errors.is_empty(),
        "a config is refused exactly when there are errors: {:?}",
        checked.report.errors
    );
    let Some(mut service) = checked.service else { return };

    let root = config::to_value(text, format).expect("a config that validated parses");
    let _ = weir_gateway::audit::audit(&root);

    let canonical = weir_gateway::bundle::canonical_config(text, format).expect("a valid config has a canonical form");
    let again = config::parse(&canonical, Format::Json, |_| None);
    assert!(
        again.service.is_some(),
        "the canonical JSON of a valid config is refused: {:?}\n{canonical}",
        again.report.errors
    );

    let reads_files = point_files_at_fixtures(&mut service);
    match Runtime::compile(&service, Flags::default()) {
        Ok(_) => {}
        // Key and htpasswd files are read when compiling; the fixtures need not fit.
        Err(_) if reads_files => {}
        Err(e) => panic!("a config that validated does not compile: {e}"),
    }
}

/// Compiling reads the files that `*_path` settings name. Arbitrary paths could name
/// `/dev/zero` or a FIFO, so they are pointed at the JWT test fixtures instead.
/// Returns whether there were any.
fn point_files_at_fixtures(service: &mut Service) -> bool {
    let mut found = false;
    let maps =
        std::iter::once(&mut service.extra_config).chain(service.endpoints.iter_mut().flat_map(|e| {
            std::iter::once(&mut e.extra_config).chain(e.backends.iter_mut().map(|b| &mut b.extra_config))
        }));
    for map in maps {
        for (namespace, settings) in map.iter_mut() {
            let fixture = if namespace == "auth/signer" { "jwt/private-jwks.json" } else { "jwt/jwks.json" };
            found |= replace_paths(settings, &crate::fixture(fixture).display().to_string());
        }
    }
    found
}

fn replace_paths(v: &mut Value, with: &str) -> bool {
    let mut found = false;
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if k.ends_with("_path") && v.is_string() {
                    *v = Value::String(with.to_owned());
                    found = true;
                } else {
                    found |= replace_paths(v, with);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                found |= replace_paths(item, with);
            }
        }
        _ => {}
    }
    found
}
