//! `flatmap_filter`: `move`, `del` and `append` over dot paths where `*` matches
//! every item of an array and a number selects one item.

use serde_json::{Map, Value};

use super::shape::{Path, split};
use crate::config::FlatmapOp;

/// A compiled list of flatmap operations, run in order.
#[derive(Debug, Clone)]
pub struct Flatmap {
    ops: Box<[Op]>,
}

#[derive(Debug, Clone)]
enum Op {
    Move(Path, Path),
    Del(Path),
    Append(Path, Path),
}

impl Flatmap {
    pub fn compile(ops: &[FlatmapOp]) -> Self {
        let ops = ops
            .iter()
            .map(|op| match op {
                FlatmapOp::Move { from, to } => Op::Move(split(from), split(to)),
                FlatmapOp::Del { path } => Op::Del(split(path)),
                FlatmapOp::Append { from, to } => Op::Append(split(from), split(to)),
            })
            .collect();
        Self { ops }
    }

    pub fn apply(&self, root: &mut Value) {
        for op in self.ops.iter() {
            match op {
                Op::Del(path) => {
                    remove_matches(root, path);
                }
                Op::Move(from, to) => {
                    let found = remove_matches(root, from);
                    for (bindings, value) in found {
                        if let Some(dest) = substitute(to, &bindings) {
                            insert(root, &dest, value);
                        }
                    }
                }
                Op::Append(from, to) => {
                    let Some(Value::Array(_)) = lookup(root, to) else {
                        continue;
                    };
                    let Some(Value::Array(_)) = lookup(root, from) else {
                        continue;
                    };
                    let mut removed = remove_matches(root, from);
                    let Some((_, Value::Array(items))) = removed.pop() else {
                        continue;
                    };
                    if let Some(Value::Array(dest)) = lookup_mut(root, to) {
                        dest.extend(items);
                    }
                }
            }
        }
    }
}

fn is_wildcard(seg: &str) -> bool {
    seg == "*"
}

fn lookup<'a>(mut v: &'a Value, path: &[Box<str>]) -> Option<&'a Value> {
    for seg in path {
        v = match v {
            Value::Object(m) => m.get(&**seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

fn lookup_mut<'a>(mut v: &'a mut Value, path: &[Box<str>]) -> Option<&'a mut Value> {
    for seg in path {
        v = match v {
            Value::Object(m) => m.get_mut(&**seg)?,
            Value::Array(a) => a.get_mut(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Removes every value matching `path` and returns each with the array indexes its
/// wildcards matched, in document order.
fn remove_matches(root: &mut Value, path: &[Box<str>]) -> Vec<(Vec<usize>, Value)> {
    let mut out = Vec::new();
    let mut bindings = Vec::new();
    remove_rec(root, path, &mut bindings, &mut out);
    out
}

fn remove_rec(v: &mut Value, path: &[Box<str>], bindings: &mut Vec<usize>, out: &mut Vec<(Vec<usize>, Value)>) {
    let Some((seg, rest)) = path.split_first() else {
        return;
    };
    let last = rest.is_empty();
    match v {
        Value::Object(m) => {
            if last {
                if let Some(taken) = m.remove(&**seg) {
                    out.push((bindings.clone(), taken));
                }
            } else if let Some(child) = m.get_mut(&**seg) {
                remove_rec(child, rest, bindings, out);
            }
        }
        Value::Array(items) if is_wildcard(seg) => {
            if last {
                for (i, item) in std::mem::take(items).into_iter().enumerate() {
                    bindings.push(i);
                    out.push((bindings.clone(), item));
                    bindings.pop();
                }
            } else {
                for (i, item) in items.iter_mut().enumerate() {
                    bindings.push(i);
                    remove_rec(item, rest, bindings, out);
                    bindings.pop();
                }
            }
        }
        Value::Array(items) => {
            let Ok(i) = seg.parse::<usize>() else { return };
            if last {
                if i < items.len() {
                    out.push((bindings.clone(), items.remove(i)));
                }
            } else if let Some(child) = items.get_mut(i) {
                remove_rec(child, rest, bindings, out);
            }
        }
        _ => {}
    }
}

/// Replaces the `*` of a destination path with the indexes a source match bound.
fn substitute(path: &[Box<str>], bindings: &[usize]) -> Option<Vec<Box<str>>> {
    let mut next = bindings.iter();
    path.iter()
        .map(|seg| if is_wildcard(seg) { next.next().map(|i| Box::from(i.to_string())) } else { Some(seg.clone()) })
        .collect()
}

/// Sets `path` to `value`, creating objects on the way; an index selects an existing item.
fn insert(root: &mut Value, path: &[Box<str>], value: Value) {
    let Some((seg, rest)) = path.split_first() else {
        *root = value;
        return;
    };
    if root.is_null() {
        *root = Value::Object(Map::new());
    }
    match root {
        Value::Object(m) => {
            if rest.is_empty() {
                m.insert(seg.to_string(), value);
            } else {
                let child = m.entry(seg.to_string()).or_insert(Value::Null);
                insert(child, rest, value);
            }
        }
        Value::Array(items) => {
            if let Some(child) = seg.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                insert(child, rest, value);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(ops: &[FlatmapOp], mut v: Value) -> Value {
        Flatmap::compile(ops).apply(&mut v);
        v
    }

    fn mv(a: &str, b: &str) -> FlatmapOp {
        FlatmapOp::Move { from: a.into(), to: b.into() }
    }

    #[test]
    fn move_renames_inside_every_item() {
        let v = json!({"a":[{"b":1,"x":0},{"b":2}]});
        assert_eq!(run(&[mv("a.*.b", "a.*.c")], v), json!({"a":[{"c":1,"x":0},{"c":2}]}));
    }

    #[test]
    fn move_nested_wildcards_and_promote() {
        let v = json!({"a":[{"b1":[{"c":1},{"c":2}]}],"k":{"v":5}});
        let out = run(&[mv("a.*.b1.*.c", "a.*.b1.*.d"), mv("k.v", "top")], v);
        assert_eq!(out, json!({"a":[{"b1":[{"d":1},{"d":2}]}],"k":{},"top":5}));
    }

    #[test]
    fn del_with_index_and_wildcard() {
        let v = json!({"a":[{"b":1,"c":2},{"b":3,"c":4}],"d":[1,2,3]});
        let out = run(&[FlatmapOp::Del { path: "a.*.c".into() }, FlatmapOp::Del { path: "d.0".into() }], v);
        assert_eq!(out, json!({"a":[{"b":1},{"b":3}],"d":[2,3]}));
    }

    #[test]
    fn append_concatenates_arrays_and_drops_source() {
        let v = json!({"x":[1,2],"y":[3],"n":1});
        let out = run(
            &[
                FlatmapOp::Append { from: "y".into(), to: "x".into() },
                FlatmapOp::Append { from: "n".into(), to: "x".into() },
            ],
            v,
        );
        assert_eq!(out, json!({"x":[1,2,3],"n":1}));
    }
}
