//! Response manipulation, the way an endpoint's pipeline runs it: decode each backend's
//! body, apply its `target`/`allow`/`deny`/`mapping`/`group`/`flatmap_filter`, merge the
//! backends, apply the endpoint's `flatmap_filter`, and encode for the client.
//!
//! Input: a line of control bytes, then one backend body per line (at most four). The
//! control bytes pick each backend's encoding and manipulation, with field paths drawn
//! from the bodies' own keys so that they hit something, and the output encoding. The
//! settings go through config validation, as they would in a `krakend.json`.
//!
//! Invariants: a `group` leaves one key; JSON output parses back to an object with the
//! merged keys; YAML output parses back as YAML.

use serde_json::{Map, Value, json};
use weir_gateway::config::{self, Format, OutputEncoding};
use weir_gateway::proxy::decode::decode;
use weir_gateway::proxy::flatmap::Flatmap;
use weir_gateway::proxy::render::render;
use weir_gateway::proxy::shape::Shape;

use crate::{Control, split_control};

const MAX_BACKENDS: usize = 4;
/// Paths collected from the bodies, at most; enough to reach nested fields.
const MAX_PATHS: usize = 64;

const ENCODINGS: [&str; 6] = ["json", "safejson", "string", "yaml", "xml", "no-op"];
const OUTPUTS: [&str; 6] = ["json", "json-collection", "string", "xml", "yaml", "negotiate"];
const ACCEPTS: [&str; 5] = ["application/json", "application/xml", "text/plain;q=0.5, text/xml", "*/*", "x;q=bad"];
/// Paths worth trying whatever the bodies hold: decoders' wrapper keys, wildcards.
const EXTRA_PATHS: [&str; 7] = ["collection", "content", "result", "collection.*", "collection.0", "*", "missing.x"];

/// Runs one input; panics where an invariant of this target does not hold.
pub fn run(data: &[u8]) {
    let (control, rest) = split_control(data);
    let mut c = Control::new(control);
    let bodies: Vec<&[u8]> = rest.split(|b| *b == b'\n').take(MAX_BACKENDS).collect();
    let paths = vocabulary(&bodies);

    let backends: Vec<Value> = bodies.iter().map(|_| backend(&mut c, &paths)).collect();
    let output = *c.pick(&OUTPUTS);
    let mut proxy = Map::new();
    let endpoint_ops = flatmap_ops(&mut c, &paths);
    if !endpoint_ops.is_empty() {
        proxy.insert("flatmap_filter".into(), Value::Array(endpoint_ops));
    }
    let accept = *c.pick(&ACCEPTS);
    let accept = http::HeaderValue::from_static(accept);
    let config = json!({
        "version": 3,
        "host": ["http://127.0.0.1:1"],
        "endpoints": [{
            "endpoint": "/fuzz",
            "output_encoding": output,
            "extra_config": {"proxy": proxy},
            "backend": backends,
        }],
    });
    let checked = config::parse(&config.to_string(), Format::Json, |_| None);
    let Some(mut service) = checked.service else { return };
    let endpoint = service.endpoints.remove(0);

    let mut merged = Map::new();
    let mut has_response = false;
    for (b, body) in endpoint.backends.iter().zip(&bodies) {
        let Ok(decoded) = decode(b.encoding, b.is_collection, body) else { continue };
        let shape = Shape::compile(b);
        let shaped = if shape.is_identity() { decoded } else { shape.apply(decoded) };
        if let Some(group) = &b.group {
            assert!(shaped.len() == 1 && shaped.contains_key(group), "group {group:?} left {:?}", shaped.keys());
        }
        merged.extend(shaped);
        has_response = true;
    }
    if has_response && !endpoint.flatmap.is_empty() {
        let mut root = Value::Object(std::mem::take(&mut merged));
        Flatmap::compile(&endpoint.flatmap).apply(&mut root);
        if let Value::Object(m) = root {
            merged = m;
        }
    }

    let (body, _) = render(endpoint.output_encoding, Some(&accept), &merged);
    match endpoint.output_encoding {
        OutputEncoding::Json => {
            let back: Map<String, Value> = serde_json::from_slice(&body).expect("JSON output parses");
            assert!(back.keys().eq(merged.keys()), "JSON output lost or gained keys");
        }
        OutputEncoding::Yaml => {
            let text = std::str::from_utf8(&body).expect("YAML output is UTF-8");
            if let Err(e) = decode(config::BackendEncoding::Yaml, false, text.as_bytes()) {
                panic!("YAML output does not parse back: {e}\n{text}");
            }
        }
        // XML names cannot hold every JSON key; decoding only checks for panics.
        _ => {
            let _ = decode(config::BackendEncoding::Xml, false, &body);
        }
    }
}

/// Dot paths of the bodies' keys (an array step as `*` or its first index), parsed as
/// JSON where they are JSON, plus a few fixed ones.
fn vocabulary(bodies: &[&[u8]]) -> Vec<String> {
    let mut paths: Vec<String> = EXTRA_PATHS.iter().map(|p| (*p).to_owned()).collect();
    for body in bodies {
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            collect(&v, "", 0, &mut paths);
        }
    }
    paths
}

fn collect(v: &Value, prefix: &str, depth: usize, out: &mut Vec<String>) {
    if depth > 4 || out.len() >= MAX_PATHS {
        return;
    }
    let join = |seg: &str| if prefix.is_empty() { seg.to_owned() } else { format!("{prefix}.{seg}") };
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let path = join(k);
                collect(child, &path, depth + 1, out);
                out.push(path);
            }
        }
        Value::Array(items) => {
            if let Some(first) = items.first() {
                collect(first, &join("*"), depth + 1, out);
                collect(first, &join("0"), depth + 1, out);
            }
        }
        _ => {}
    }
}

fn backend(c: &mut Control<'_>, paths: &[String]) -> Value {
    let mut b = Map::new();
    b.insert("url_pattern".into(), "/".into());
    b.insert("encoding".into(), (*c.pick(&ENCODINGS)).into());
    let switches = c.byte();
    b.insert("is_collection".into(), (switches & 1 == 1).into());
    if switches & 2 != 0 {
        b.insert("target".into(), c.pick(paths).clone().into());
    }
    let list: Vec<Value> = (0..c.below(4)).map(|_| c.pick(paths).clone().into()).collect();
    if !list.is_empty() {
        b.insert(if switches & 4 != 0 { "allow" } else { "deny" }.into(), list.into());
    }
    if switches & 8 != 0 {
        let mapping: Map<String, Value> =
            (0..1 + c.below(2)).map(|_| (top(c.pick(paths).as_str()), last(c.pick(paths).as_str()).into())).collect();
        b.insert("mapping".into(), mapping.into());
    }
    if switches & 16 != 0 {
        b.insert("group".into(), last(c.pick(paths).as_str()).into());
    }
    if switches & 32 != 0 {
        b.insert("extra_config".into(), json!({"proxy": {"flatmap_filter": flatmap_ops(c, paths)}}));
    }
    Value::Object(b)
}

fn flatmap_ops(c: &mut Control<'_>, paths: &[String]) -> Vec<Value> {
    (0..c.below(4))
        .map(|_| match c.below(3) {
            0 => json!({"type": "del", "args": [c.pick(paths)]}),
            1 => json!({"type": "move", "args": [c.pick(paths), c.pick(paths)]}),
            _ => json!({"type": "append", "args": [c.pick(paths), c.pick(paths)]}),
        })
        .collect()
}

fn top(path: &str) -> String {
    path.split('.').next().unwrap_or(path).to_owned()
}

fn last(path: &str) -> String {
    path.rsplit('.').next().unwrap_or(path).to_owned()
}
