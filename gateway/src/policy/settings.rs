//! Reading one component's settings object: typed getters that record every
//! problem under the key's config path, so a `compile` reports them all at once
//! and still builds a value from the keys that were fine.

use crate::config::kind;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{Problems, problem};
use crate::config::parse_duration;

/// A component's settings and the problems found so far while reading them.
pub(crate) struct Settings<'a> {
    /// `None` when the namespace value is not an object: every getter then reads nothing.
    obj: Option<&'a Map<String, Value>>,
    path: &'a str,
    problems: Problems,
}

impl<'a> Settings<'a> {
    /// Starts reading `v`, found at `path` (e.g. `extra_config.security/cors`).
    pub(crate) fn new(v: &'a Value, path: &'a str) -> Self {
        let mut problems = Problems::new();
        let obj = match v {
            Value::Object(m) => Some(m),
            other => {
                problems.push(problem(path, format!("must be an object, found {}", kind(other))));
                None
            }
        };
        Self { obj, path, problems }
    }

    /// The config path of `key`.
    pub(crate) fn at(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) }
    }

    /// The config path of item `i` of the list under `key`.
    pub(crate) fn item(&self, key: &str, i: usize) -> String {
        format!("{}[{i}]", self.at(key))
    }

    /// Records a problem about `key`.
    pub(crate) fn error(&mut self, key: &str, message: impl Into<String>) {
        let path = self.at(key);
        self.problems.push(problem(&path, message));
    }

    /// Records a problem at a path built with [`Settings::at`] or [`Settings::item`].
    pub(crate) fn error_at(&mut self, path: String, message: impl Into<String>) {
        self.problems.push(problem(&path, message));
    }

    /// The value under `key`; `null` counts as absent, as in the rest of the config.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj?.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn flag(&mut self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            other => {
                let k = kind(other);
                self.error(key, format!("must be true or false, found {k}"));
                None
            }
        }
    }

    pub(crate) fn string(&mut self, key: &str) -> Option<&'a str> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            other => {
                let k = kind(other);
                self.error(key, format!("must be a string, found {k}"));
                None
            }
        }
    }

    /// A list of strings with each item's index, for problems about single items.
    /// Items that are not strings are reported and left out.
    pub(crate) fn strings(&mut self, key: &str) -> Option<Vec<(usize, &'a str)>> {
        let v = self.get(key)?;
        let Value::Array(items) = v else {
            let k = kind(v);
            self.error(key, format!("must be an array of strings, found {k}"));
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) => out.push((i, s.as_str())),
                other => {
                    let path = self.item(key, i);
                    self.error_at(path, format!("must be a string, found {}", kind(other)));
                }
            }
        }
        Some(out)
    }

    pub(crate) fn uint(&mut self, key: &str, min: u64, max: u64) -> Option<u64> {
        let v = self.get(key)?;
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.error(key, format!("{n} is outside the range {min} to {max}"));
                None
            }
            None => {
                let k = if v.is_number() { "a negative or fractional number" } else { kind(v) };
                self.error(key, format!("must be a whole number from {min} to {max}, found {k}"));
                None
            }
        }
    }

    /// A Go-style duration string such as `"12h"`.
    pub(crate) fn duration(&mut self, key: &str) -> Option<Duration> {
        match self.get(key)? {
            Value::String(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.error(key, e);
                    None
                }
            },
            other => {
                let k = kind(other);
                self.error(key, format!("must be a duration string like \"12h\", found {k}"));
                None
            }
        }
    }

    pub(crate) fn object(&mut self, key: &str) -> Option<&'a Map<String, Value>> {
        match self.get(key)? {
            Value::Object(m) => Some(m),
            other => {
                let k = kind(other);
                self.error(key, format!("must be an object, found {k}"));
                None
            }
        }
    }

    /// `value` when nothing was wrong, else every problem found.
    pub(crate) fn finish<T>(self, value: T) -> Result<T, Problems> {
        if self.problems.is_empty() { Ok(value) } else { Err(self.problems) }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn collects_every_problem_with_its_path() {
        let v = json!({"a": 1, "b": ["x", 2, "y", true], "c": "soon", "d": -1, "e": null});
        let mut s = Settings::new(&v, "extra_config.ns");
        assert_eq!(s.flag("a"), None);
        assert_eq!(s.strings("b"), Some(vec![(0, "x"), (2, "y")]));
        assert_eq!(s.duration("c"), None);
        assert_eq!(s.uint("d", 0, 10), None);
        assert_eq!(s.strings("e"), None, "null is absent, not an error");
        let problems = s.finish(()).unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "extra_config.ns.a: must be true or false, found a number",
                "extra_config.ns.b[1]: must be a string, found a number",
                "extra_config.ns.b[3]: must be a string, found a boolean",
                "extra_config.ns.c: \"soon\" is not a duration like \"2s\" or \"1m30s\"",
                "extra_config.ns.d: must be a whole number from 0 to 10, found a negative or fractional number",
            ]
        );
    }

    #[test]
    fn a_non_object_is_one_problem_and_reads_nothing() {
        let v = json!(["not", "an", "object"]);
        let mut s = Settings::new(&v, "extra_config.ns");
        assert_eq!(s.flag("a"), None);
        let problems = s.finish(()).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].to_string(), "extra_config.ns: must be an object, found an array");
    }
}
