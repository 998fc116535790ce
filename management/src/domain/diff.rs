//! Differences between two config versions: what a reviewer asks first (which endpoints
//! were added, removed or changed, and where), then the full text diff.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// How deep changed keys are named: `backend[0].url_pattern`, `extra_config.qos/ratelimit/router.max_rate`.
const KEY_DEPTH: usize = 3;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Diff {
    pub from: i64,
    pub to: i64,
    /// Endpoints as `METHOD /path`.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<ChangedEndpoint>,
    /// Changed settings outside `endpoints` (service-level keys).
    pub service: Vec<String>,
    /// Unified diff of the pretty-printed canonical configs.
    pub text: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChangedEndpoint {
    pub endpoint: String,
    pub keys: Vec<String>,
}

fn endpoints(config: &Value) -> BTreeMap<String, &Value> {
    let mut out = BTreeMap::new();
    for e in config.get("endpoints").and_then(Value::as_array).into_iter().flatten() {
        let method = e.get("method").and_then(Value::as_str).unwrap_or("GET").to_ascii_uppercase();
        let path = e.get("endpoint").and_then(Value::as_str).unwrap_or("?");
        out.insert(format!("{method} {path}"), e);
    }
    out
}

/// Paths under which `a` and `b` differ, named down to `depth` levels.
fn changed_keys(a: &Value, b: &Value, prefix: &str, depth: usize, out: &mut Vec<String>) {
    if a == b {
        return;
    }
    let name = |key: &str| if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) if depth > 0 => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let (va, vb) = (x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null));
                changed_keys(va, vb, &name(k), depth - 1, out);
            }
        }
        (Value::Array(x), Value::Array(y)) if depth > 0 && x.len() == y.len() && !prefix.is_empty() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                changed_keys(va, vb, &format!("{prefix}[{i}]"), depth - 1, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

/// Compares two canonical configs.
pub fn diff(from: i64, a: &Value, to: i64, b: &Value) -> Diff {
    let (ea, eb) = (endpoints(a), endpoints(b));
    let added = eb.keys().filter(|k| !ea.contains_key(*k)).cloned().collect();
    let removed = ea.keys().filter(|k| !eb.contains_key(*k)).cloned().collect();
    let changed = ea
        .iter()
        .filter_map(|(k, va)| {
            let vb = eb.get(k)?;
            let mut keys = Vec::new();
            changed_keys(va, vb, "", KEY_DEPTH, &mut keys);
            (!keys.is_empty()).then(|| ChangedEndpoint { endpoint: k.clone(), keys })
        })
        .collect();
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("endpoints");
        }
        v
    };
    let mut service = Vec::new();
    changed_keys(&strip(a), &strip(b), "", KEY_DEPTH, &mut service);
    let (ta, tb) = (pretty(a), pretty(b));
    let text = similar::TextDiff::from_lines(&ta, &tb)
        .unified_diff()
        .context_radius(3)
        .header(&format!("version {from}"), &format!("version {to}"))
        .to_string();
    Diff { from, to, added, removed, changed, service, text }
}

/// A config as the diffs show it: pretty JSON with sorted keys.
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// One row of a side-by-side diff. `kind` is `equal`, `delete`, `insert`, `replace` or
/// `skip` (unchanged lines left out, counted in `left`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Row {
    pub kind: &'static str,
    pub left_no: String,
    pub left: String,
    pub right_no: String,
    pub right: String,
}

/// Side-by-side rows of two texts, keeping `context` unchanged lines around each change.
pub fn side_by_side(a: &str, b: &str, context: usize) -> Vec<Row> {
    use similar::{DiffOp, TextDiff};
    let diff = TextDiff::from_lines(a, b);
    let (old, new) = (diff.old_slices(), diff.new_slices());
    let line = |s: &[&str], i: usize| s.get(i).map(|l| l.trim_end_matches('\n').to_owned()).unwrap_or_default();
    let no = |i: usize| (i + 1).to_string();
    let mut rows = Vec::new();
    for group in diff.grouped_ops(context) {
        if !rows.is_empty() {
            rows.push(Row {
                kind: "skip",
                left_no: String::new(),
                left: "…".into(),
                right_no: String::new(),
                right: "…".into(),
            });
        }
        for op in group {
            match op {
                DiffOp::Equal { old_index, new_index, len } => {
                    for k in 0..len {
                        rows.push(Row {
                            kind: "equal",
                            left_no: no(old_index + k),
                            left: line(old, old_index + k),
                            right_no: no(new_index + k),
                            right: line(new, new_index + k),
                        });
                    }
                }
                DiffOp::Delete { old_index, old_len, .. } => {
                    for k in 0..old_len {
                        rows.push(Row {
                            kind: "delete",
                            left_no: no(old_index + k),
                            left: line(old, old_index + k),
                            right_no: String::new(),
                            right: String::new(),
                        });
                    }
                }
                DiffOp::Insert { new_index, new_len, .. } => {
                    for k in 0..new_len {
                        rows.push(Row {
                            kind: "insert",
                            left_no: String::new(),
                            left: String::new(),
                            right_no: no(new_index + k),
                            right: line(new, new_index + k),
                        });
                    }
                }
                DiffOp::Replace { old_index, old_len, new_index, new_len } => {
                    for k in 0..old_len.max(new_len) {
                        rows.push(Row {
                            kind: "replace",
                            left_no: if k < old_len { no(old_index + k) } else { String::new() },
                            left: if k < old_len { line(old, old_index + k) } else { String::new() },
                            right_no: if k < new_len { no(new_index + k) } else { String::new() },
                            right: if k < new_len { line(new, new_index + k) } else { String::new() },
                        });
                    }
                }
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_added_removed_and_changed_endpoints_with_their_keys() {
        let a = json!({"version": 3, "timeout": "3s", "endpoints": [
            {"endpoint": "/a", "backend": [{"url_pattern": "/a", "host": ["http://x"]}],
             "extra_config": {"qos/ratelimit/router": {"max_rate": 1}}},
            {"endpoint": "/gone", "backend": [{"url_pattern": "/g"}]},
        ]});
        let b = json!({"version": 3, "timeout": "5s", "endpoints": [
            {"endpoint": "/a", "backend": [{"url_pattern": "/a2", "host": ["http://x"]}],
             "extra_config": {"qos/ratelimit/router": {"max_rate": 5}}},
            {"endpoint": "/new", "method": "post", "backend": [{"url_pattern": "/n"}]},
        ]});
        let d = diff(1, &a, 2, &b);
        assert_eq!(d.added, vec!["POST /new"]);
        assert_eq!(d.removed, vec!["GET /gone"]);
        assert_eq!(d.changed.len(), 1);
        assert_eq!(d.changed[0].endpoint, "GET /a");
        assert_eq!(d.changed[0].keys, vec!["backend[0].url_pattern", "extra_config.qos/ratelimit/router.max_rate"]);
        assert_eq!(d.service, vec!["timeout"]);
        assert!(d.text.contains("-  \"timeout\": \"3s\""), "{}", d.text);
        assert!(d.text.contains("+  \"timeout\": \"5s\""), "{}", d.text);
    }

    #[test]
    fn side_by_side_pairs_changed_lines_and_skips_far_context() {
        let a = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let b = "a\nB\nc\nd\ne\nf\ng\nh\ni\n";
        let rows = side_by_side(a, b, 1);
        let kinds: Vec<&str> = rows.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, vec!["equal", "replace", "equal", "skip", "equal", "insert"]);
        assert_eq!((rows[1].left.as_str(), rows[1].right.as_str()), ("b", "B"));
        assert_eq!(rows[5].right_no, "9");
    }

    #[test]
    fn identical_configs_have_an_empty_diff() {
        let a = json!({"version": 3, "endpoints": [{"endpoint": "/a", "backend": []}]});
        let d = diff(1, &a, 1, &a);
        assert!(d.added.is_empty() && d.removed.is_empty() && d.changed.is_empty() && d.service.is_empty());
        assert!(d.text.is_empty());
    }
}
