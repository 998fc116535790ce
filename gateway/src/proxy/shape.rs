//! Response manipulation of one backend's data, in KrakenD's order:
//! `is_collection` -> `target` -> `allow` (or else `deny`) -> `mapping` -> `group`,
//! or `flatmap_filter` in place of allow/deny/mapping.
//!
//! Paths are split into segments when the config is compiled, never per request.

use serde::de::{DeserializeSeed, Visitor};
use serde_json::{Map, Value};

use super::flatmap::Flatmap;
use crate::config::Backend;

/// A dot path split once at compile time (`"a.b.c"` -> `["a", "b", "c"]`).
pub type Path = Box<[Box<str>]>;

pub fn split(path: &str) -> Path {
    path.split('.').map(Box::from).collect()
}

/// The compiled manipulation of one backend's response.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    target: Option<Path>,
    filter: Filter,
    mapping: Box<[(Box<str>, Box<str>)]>,
    flatmap: Option<Flatmap>,
    group: Option<Box<str>>,
}

#[derive(Debug, Clone, Default)]
enum Filter {
    #[default]
    None,
    Allow(Tree),
    Deny(Box<[Path]>),
}

/// Allowed paths as a tree: a leaf keeps the whole value under it.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    children: Vec<(Box<str>, Tree)>,
    leaf: bool,
}

impl Tree {
    fn insert(&mut self, path: &[Box<str>]) {
        let Some((first, rest)) = path.split_first() else {
            self.leaf = true;
            return;
        };
        let child = match self.children.iter().position(|(k, _)| k == first) {
            Some(i) => &mut self.children[i].1,
            None => {
                self.children.push((first.clone(), Tree::default()));
                let last = self.children.len() - 1;
                &mut self.children[last].1
            }
        };
        child.insert(rest);
    }

    fn child(&self, key: &str) -> Option<&Tree> {
        self.child_bytes(key.as_bytes())
    }

    /// The subtree of `key`, if the key is allowed.
    pub(super) fn child_bytes(&self, key: &[u8]) -> Option<&Tree> {
        self.children.iter().find(|(k, _)| k.as_bytes() == key).map(|(_, t)| t)
    }

    /// Whether the value under this node is kept whole.
    pub(super) fn is_leaf(&self) -> bool {
        self.leaf
    }

    /// Whether every allowed key is kept whole: nothing under them is looked at.
    fn is_flat(&self) -> bool {
        self.children.iter().all(|(_, t)| t.leaf)
    }

    /// Keeps only allowed keys of `obj`; returns whether anything is left.
    fn prune(&self, obj: &mut Map<String, Value>) -> bool {
        obj.retain(|key, value| {
            let Some((_, sub)) = self.children.iter().find(|(k, _)| **k == **key) else {
                return false;
            };
            if sub.leaf {
                return true;
            }
            match value {
                Value::Object(inner) => sub.prune(inner),
                Value::Array(items) => {
                    for item in items.iter_mut() {
                        if let Value::Object(inner) = item {
                            sub.prune(inner);
                        }
                    }
                    true
                }
                _ => false,
            }
        });
        !obj.is_empty()
    }
}

impl Shape {
    /// Compiles the manipulation keys of a backend.
    pub fn compile(b: &Backend) -> Self {
        let filter = if !b.allow.is_empty() {
            let mut tree = Tree::default();
            for p in &b.allow {
                tree.insert(&split(p));
            }
            Filter::Allow(tree)
        } else if !b.deny.is_empty() {
            Filter::Deny(b.deny.iter().map(|p| split(p)).collect())
        } else {
            Filter::None
        };
        let flatmap = (!b.flatmap.is_empty()).then(|| Flatmap::compile(&b.flatmap));
        Self {
            target: b.target.as_deref().map(split),
            filter,
            mapping: b.mapping.iter().map(|(a, b)| (a.as_str().into(), b.as_str().into())).collect(),
            flatmap,
            group: b.group.as_deref().map(Box::from),
        }
    }

    /// Whether the data passes through unchanged, so decoding can skip this step.
    pub fn is_identity(&self) -> bool {
        self.target.is_none()
            && matches!(self.filter, Filter::None)
            && self.mapping.is_empty()
            && self.flatmap.is_none()
            && self.group.is_none()
    }

    /// The allow-list, when it is the first thing applied to the backend's object: then
    /// the object can be decoded already pruned ([`decode_allowed`]), and what `allow`
    /// drops is never built.
    pub fn allow_first(&self) -> Option<&Tree> {
        match &self.filter {
            Filter::Allow(tree) if self.target.is_none() && self.flatmap.is_none() => Some(tree),
            _ => None,
        }
    }

    /// The manipulation as [`super::spans`] applies it to a document's bytes: everything
    /// but `deny` and `flatmap_filter`, which take the general path.
    pub fn plan(&self) -> Option<Plan<'_>> {
        let allow = match &self.filter {
            Filter::None => None,
            Filter::Allow(tree) => Some(tree),
            Filter::Deny(_) => return None,
        };
        if self.flatmap.is_some() {
            return None;
        }
        Some(Plan {
            target: self.target.as_deref().unwrap_or_default(),
            allow,
            mapping: &self.mapping,
            group: self.group.as_deref(),
        })
    }

    /// Applies the manipulation to decoded data.
    pub fn apply(&self, mut data: Map<String, Value>) -> Map<String, Value> {
        if let Some(target) = &self.target {
            data = extract(target, data);
        }
        if let Some(flatmap) = &self.flatmap {
            let mut root = Value::Object(data);
            flatmap.apply(&mut root);
            data = match root {
                Value::Object(m) => m,
                _ => Map::new(),
            };
        } else {
            match &self.filter {
                Filter::None => {}
                Filter::Allow(tree) => {
                    tree.prune(&mut data);
                }
                Filter::Deny(paths) => {
                    for p in paths.iter() {
                        deny(&mut data, p);
                    }
                }
            }
            for (from, to) in self.mapping.iter() {
                if let Some(v) = data.remove(&**from) {
                    data.insert(to.to_string(), v);
                }
            }
        }
        match &self.group {
            Some(g) => {
                let mut wrapped = Map::new();
                wrapped.insert(g.to_string(), Value::Object(data));
                wrapped
            }
            None => data,
        }
    }
}

/// A backend's manipulation, for [`super::spans`]: applied in the same order and with the
/// same meaning as [`Shape::apply`]. The default changes nothing.
#[derive(Clone, Copy, Default)]
pub struct Plan<'s> {
    pub target: &'s [Box<str>],
    pub allow: Option<&'s Tree>,
    /// Renames in order, each as a remove and an insert (which replaces a key already there).
    pub mapping: &'s [(Box<str>, Box<str>)],
    pub group: Option<&'s str>,
}

impl Plan<'_> {
    /// Whether applying it looks inside the document's values (`target`, or an allowed
    /// path deeper than one key), so their parts must stay on the tape.
    pub(super) fn descends(&self) -> bool {
        !self.target.is_empty() || self.allow.is_some_and(|t| !t.is_flat())
    }
}

/// `target`: the object at `path` becomes the root; anything else leaves nothing.
fn extract(path: &[Box<str>], mut data: Map<String, Value>) -> Map<String, Value> {
    for key in path {
        match data.remove(&**key) {
            Some(Value::Object(inner)) => data = inner,
            _ => return Map::new(),
        }
    }
    data
}

/// Removes one path; arrays on the way apply the rest of the path to every item.
fn deny(obj: &mut Map<String, Value>, path: &[Box<str>]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        obj.remove(&**first);
        return;
    }
    match obj.get_mut(&**first) {
        Some(Value::Object(inner)) => deny(inner, rest),
        Some(Value::Array(items)) => {
            for item in items {
                if let Value::Object(inner) = item {
                    deny(inner, rest);
                }
            }
        }
        _ => {}
    }
}

/// Decodes a JSON object keeping only what `allow` keeps: the same result as decoding the
/// whole document and pruning it, without building what would be dropped (skipped values
/// are still checked to be well-formed JSON). A document that is not an object goes to
/// [`super::decode::decode`], which words the error.
pub fn decode_allowed(body: &[u8], allow: &Tree) -> Result<Map<String, Value>, super::decode::DecodeError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return super::decode::decode(crate::config::BackendEncoding::Json, false, body);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let object = serde::Deserializer::deserialize_map(&mut de, Object(allow))?;
    de.end()?;
    Ok(object)
}

/// Keeps the keys of an object that `tree` allows, each pruned as [`Tree::prune`] would.
fn prune_map<'de, A: serde::de::MapAccess<'de>>(tree: &Tree, mut map: A) -> Result<Map<String, Value>, A::Error> {
    let mut out = Map::new();
    while let Some(key) = map.next_key_seed(Key)? {
        let Some(sub) = tree.child(&key) else {
            map.next_value::<serde::de::IgnoredAny>()?;
            continue;
        };
        let kept = if sub.leaf { Some(map.next_value::<Value>()?) } else { map.next_value_seed(Under(sub))? };
        // A repeated key replaces the earlier value, as in a full decode.
        match kept {
            Some(v) => {
                out.insert(key.into_owned(), v);
            }
            None => {
                out.remove(&*key);
            }
        }
    }
    Ok(out)
}

/// The document: an object, pruned (and kept even when nothing is left).
struct Object<'t>(&'t Tree);

impl<'de> Visitor<'de> for Object<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        prune_map(self.0, map)
    }
}

/// A value under a non-leaf node: an object is pruned and goes when left empty, an
/// array keeps its items (objects in it pruned), and a scalar goes (`None`).
struct Under<'t>(&'t Tree);

impl<'de> DeserializeSeed<'de> for Under<'_> {
    type Value = Option<Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Under<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let object = prune_map(self.0, map)?;
        Ok((!object.is_empty()).then_some(Value::Object(object)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Item(self.0))? {
            items.push(item);
        }
        Ok(Some(Value::Array(items)))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// An object key, borrowed from the body unless it has escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_owned()))
    }
}

/// An item of an array under a non-leaf node: an object is pruned (and kept, even when
/// empty), anything else kept whole.
struct Item<'t>(&'t Tree);

impl<'de> DeserializeSeed<'de> for Item<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Item<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        prune_map(self.0, map).map(Value::Object)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Format, parse};
    use serde_json::json;

    fn shape(backend_json: &str) -> Shape {
        let text = format!(
            r#"{{"version":3,"host":["http://b"],"endpoints":[{{"endpoint":"/a","backend":[{backend_json}]}}]}}"#
        );
        let s = parse(&text, Format::Json, |_| None).service.expect("valid config");
        Shape::compile(&s.endpoints[0].backends[0])
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test data is an object"),
        }
    }

    #[test]
    fn target_allow_mapping_group_in_order() {
        let s = shape(
            r#"{"url_pattern":"/","target":"data","allow":["id","name","address.city"],"mapping":{"name":"full_name"},"group":"user"}"#,
        );
        let input =
            obj(json!({"data":{"id":1,"name":"Ada","secret":"x","address":{"city":"London","zip":"N1"}},"meta":{}}));
        assert_eq!(
            Value::Object(s.apply(input)),
            json!({"user":{"id":1,"full_name":"Ada","address":{"city":"London"}}})
        );
    }

    #[test]
    fn deny_nested_and_through_arrays() {
        let s = shape(r#"{"url_pattern":"/","deny":["a.b","items.secret"]}"#);
        let input = obj(json!({"a":{"b":1,"c":2},"items":[{"secret":1,"ok":2},{"ok":3}]}));
        assert_eq!(Value::Object(s.apply(input)), json!({"a":{"c":2},"items":[{"ok":2},{"ok":3}]}));
    }

    #[test]
    fn decoding_pruned_handles_repeats_escapes_and_bad_documents() {
        let s = shape(r#"{"url_pattern":"/","allow":["a.x","b","c\"q"]}"#);
        let allow = s.allow_first().expect("allow comes first");
        let decode = |body: &str| decode_allowed(body.as_bytes(), allow).map(Value::Object).map_err(|e| e.to_string());
        // A repeated key replaces the earlier value, even when what replaces it is dropped.
        assert_eq!(decode(r#"{"a":{"x":1},"a":{"y":2},"b":1,"b":[2]}"#), Ok(json!({"b": [2]})));
        assert_eq!(decode(r#"{"c\"q":1,"\u0062":true,"z":{"deep":[1,{"x":2}]}}"#), Ok(json!({"c\"q": 1, "b": true})));
        assert_eq!(
            decode(r#"{"a":[{"x":1,"y":2},{"y":3},4,[{"y":5}]]}"#),
            Ok(json!({"a": [{"x": 1}, {}, 4, [{"y": 5}]]}))
        );
        // Skipped values must still be well-formed, and nothing may trail the document.
        assert!(decode(r#"{"z":[1,}"#).unwrap_err().contains("invalid JSON"));
        assert!(decode(r#"{"b":1} x"#).unwrap_err().contains("invalid JSON"));
        assert_eq!(decode("[1]"), Err("expected a JSON object, found an array (set is_collection for arrays)".into()));
        assert_eq!(
            decode(r#""s""#),
            Err("expected a JSON object, found a string (set is_collection for arrays)".into())
        );
        // Only a leading allow-list decodes pruned: after `target` or with `flatmap_filter`
        // the object it applies to is not the document.
        assert!(shape(r#"{"url_pattern":"/","target":"t","allow":["a"]}"#).allow_first().is_none());
        assert!(shape(r#"{"url_pattern":"/","deny":["a"]}"#).allow_first().is_none());
    }

    #[test]
    fn allow_drops_nested_keys_on_scalars_and_empty_objects() {
        let s = shape(r#"{"url_pattern":"/","allow":["a.x","b.x","c"]}"#);
        let input = obj(json!({"a":1,"b":{"y":1},"c":[1,2],"d":4}));
        assert_eq!(Value::Object(s.apply(input)), json!({"c":[1,2]}));
    }

    #[test]
    fn target_missing_or_not_an_object_gives_empty() {
        let s = shape(r#"{"url_pattern":"/","target":"a.b"}"#);
        assert!(s.apply(obj(json!({"a":{"b":[1]}}))).is_empty());
        assert!(s.apply(obj(json!({"x":1}))).is_empty());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::config::{FlatmapOp, Format, parse};
    use proptest::prelude::*;

    /// Arbitrary JSON with a small key alphabet, so paths actually hit something.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            "[a-c]{0,3}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]", inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn object() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("[a-d]", json_value(), 0..5).prop_map(|m| m.into_iter().collect())
    }

    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(prop_oneof!["[a-d]", Just("*".to_owned()), Just("0".to_owned())], 1..4)
            .prop_map(|p| p.join("."))
    }

    fn shape_with(backend: serde_json::Value) -> Shape {
        let mut b = backend;
        b["url_pattern"] = "/".into();
        let text =
            serde_json::json!({"version": 3, "host": ["http://b"], "endpoints": [{"endpoint": "/", "backend": [b]}]});
        let s = parse(&text.to_string(), Format::Json, |_| None).service.expect("valid");
        Shape::compile(&s.endpoints[0].backends[0])
    }

    proptest! {
        #[test]
        fn allow_is_idempotent_and_keeps_only_allowed_roots(data in object(), allow in prop::collection::vec(path(), 1..4)) {
            let s = shape_with(serde_json::json!({"allow": allow}));
            let once = s.apply(data);
            let roots: Vec<&str> = allow.iter().map(|p| p.split('.').next().unwrap_or("")).collect();
            prop_assert!(once.keys().all(|k| roots.contains(&k.as_str())));
            prop_assert_eq!(s.apply(once.clone()), once);
        }

        /// Decoding with the allow-list gives what decoding everything and pruning gives.
        #[test]
        fn decoding_pruned_equals_pruning_the_decoded(data in object(), allow in prop::collection::vec(path(), 1..4)) {
            let s = shape_with(serde_json::json!({"allow": allow}));
            let body = serde_json::to_vec(&data).unwrap();
            let pruned = decode_allowed(&body, s.allow_first().unwrap()).unwrap();
            prop_assert_eq!(&pruned, &s.apply(data));
            prop_assert_eq!(s.apply(pruned.clone()), pruned);
        }

        #[test]
        fn deny_is_idempotent_and_removes_denied_roots(data in object(), deny in prop::collection::vec("[a-d](\\.[a-d])?", 1..4)) {
            let s = shape_with(serde_json::json!({"deny": deny}));
            let once = s.apply(data);
            for d in &deny {
                if !d.contains('.') {
                    prop_assert!(!once.contains_key(d.as_str()));
                }
            }
            prop_assert_eq!(s.apply(once.clone()), once);
        }

        #[test]
        fn every_manipulation_is_total(data in object(), target in "[a-d](\\.[a-d])?", a in path(), b in path(), group in "[a-d]") {
            let s = shape_with(serde_json::json!({"target": target, "allow": [a.clone()], "mapping": {"a": "b"}, "group": group}));
            let out = s.apply(data.clone());
            prop_assert_eq!(out.len(), 1);
            let ops = [FlatmapOp::Move { from: a.clone(), to: b.clone() }, FlatmapOp::Append { from: b.clone(), to: a.clone() }, FlatmapOp::Del { path: a }];
            let mut root = Value::Object(data);
            crate::proxy::flatmap::Flatmap::compile(&ops).apply(&mut root);
        }

        /// Deleting by key or wildcard is idempotent (by index it is not: the next item moves up).
        #[test]
        fn flatmap_del_is_idempotent(data in object(), p in prop::collection::vec(prop_oneof!["[a-d]", Just("*".to_owned())], 1..4)) {
            let p = p.join(".");
            let f = crate::proxy::flatmap::Flatmap::compile(&[FlatmapOp::Del { path: p }]);
            let mut once = Value::Object(data);
            f.apply(&mut once);
            let mut twice = once.clone();
            f.apply(&mut twice);
            prop_assert_eq!(twice, once);
        }
    }
}
