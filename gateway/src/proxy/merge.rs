//! Merging backend JSON objects straight from their bytes.
//!
//! When neither the backends nor the endpoint manipulate the data, the response is the
//! union of the backends' top-level members (a later backend wins a key) encoded as the
//! gateway always encodes: members sorted by key at every level, no whitespace, strings
//! and numbers in serde_json's canonical form. That is what decoding every body into
//! values, merging the maps and encoding the result gives; here it is written directly
//! from the input, with spans instead of values: no map, no string or number is built
//! unless it needs rewriting (an escape in a string, a number not already canonical).
//!
//! Anything out of the ordinary (invalid JSON, a document that is not an object, deep
//! nesting, lone surrogates) makes [`merge`] give up with `None`; the caller then takes
//! the general path, which decodes and reports the problem as it always does.

use std::borrow::Cow;

/// Deeper documents are left to serde_json, whose recursion limit (128) decides.
const MAX_DEPTH: usize = 100;

/// Writes the merge of `docs` (each a JSON object, later ones winning a key) to `out`.
/// `None`: some document needs the general path; `out` is then unspecified.
pub fn merge(docs: &[&[u8]], out: &mut Vec<u8>) -> Option<()> {
    let mut members = Vec::new();
    for doc in docs {
        let mut p = Parser { src: doc, at: 0 };
        p.ws();
        members.extend(p.object_members(0)?);
        p.ws();
        if p.at != doc.len() {
            return None;
        }
    }
    write_members(members, out, 0)
}

/// One member of an object: its decoded key and its value's bytes.
struct Member<'a> {
    key: Cow<'a, str>,
    value: &'a [u8],
}

struct Parser<'a> {
    src: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.src.get(self.at) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.src.get(self.at) == Some(&byte)).then(|| self.at += 1)
    }

    /// The members of the object at the cursor, in document order.
    fn object_members(&mut self, depth: usize) -> Option<Vec<Member<'a>>> {
        self.eat(b'{')?;
        let mut members = Vec::new();
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(members);
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            let start = self.at;
            self.skip_value(depth + 1)?;
            members.push(Member { key: decode_string(key)?, value: &self.src[start..self.at] });
            self.ws();
            if self.eat(b',').is_none() {
                self.eat(b'}')?;
                return Some(members);
            }
        }
    }

    /// Moves past one value, checking its syntax.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match *self.src.get(self.at)? {
            b'{' => {
                self.object_members(depth)?;
            }
            b'[' => {
                self.at += 1;
                self.ws();
                if self.eat(b']').is_some() {
                    return Some(());
                }
                loop {
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    if self.eat(b',').is_none() {
                        return self.eat(b']');
                    }
                }
            }
            b'"' => {
                self.string()?;
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            _ => {
                self.number()?;
            }
        }
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.src[self.at..].starts_with(word).then(|| self.at += word.len())
    }

    /// A string token, quotes included, checked as strictly as serde_json checks it
    /// (every member is checked, also one a later duplicate replaces): no control
    /// characters, valid UTF-8, known escapes, surrogates only in pairs.
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        self.eat(b'"')?;
        loop {
            match *self.src.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    let token = &self.src[start..self.at];
                    std::str::from_utf8(token).ok()?;
                    return Some(token);
                }
                b'\\' => {
                    self.at += 1;
                    match *self.src.get(self.at)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                        b'u' => {
                            let unit = self.hex4()?;
                            if (0xDC00..0xE000).contains(&unit) {
                                return None;
                            }
                            if (0xD800..0xDC00).contains(&unit) {
                                self.eat(b'\\')?;
                                if !(0xDC00..0xE000).contains(&self.hex4()?) {
                                    return None;
                                }
                            }
                        }
                        _ => return None,
                    }
                }
                0..0x20 => return None,
                _ => self.at += 1,
            }
        }
    }

    /// `u` and four hex digits: the code unit they give.
    fn hex4(&mut self) -> Option<u32> {
        self.eat(b'u')?;
        let digits = self.src.get(self.at..self.at + 4)?;
        self.at += 4;
        u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok().filter(|_| digits.iter().all(u8::is_ascii_hexdigit))
    }

    /// A number token, checked against JSON's grammar.
    fn number(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        self.eat(b'-');
        match *self.src.get(self.at)? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            if !self.src.get(self.at)?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.src.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.src.get(self.at) {
                self.at += 1;
            }
            if !self.src.get(self.at)?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        let token = &self.src[start..self.at];
        // One serde_json would refuse (out of range) must not pass, even unwritten.
        if !plain_integer(token) {
            serde_json::from_slice::<serde_json::Number>(token).ok()?;
        }
        Some(token)
    }

    fn digits(&mut self) {
        while self.src.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
    }
}

/// A string token's text: borrowed when it has no escapes, decoded by serde_json when
/// it has (surrogate pairs and all).
fn decode_string(token: &[u8]) -> Option<Cow<'_, str>> {
    let inner = &token[1..token.len() - 1];
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(token).ok().map(Cow::Owned)
}

/// Writes members as one object: sorted by key, the last of equal keys kept.
fn write_members(mut members: Vec<Member<'_>>, out: &mut Vec<u8>, depth: usize) -> Option<()> {
    // Stable: among equal keys the later member stays later, and is the one kept.
    members.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
    out.push(b'{');
    let mut first = true;
    for (i, m) in members.iter().enumerate() {
        if members.get(i + 1).is_some_and(|next| next.key == m.key) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_string(&m.key, out);
        out.push(b':');
        write_value(m.value, out, depth + 1)?;
    }
    out.push(b'}');
    Some(())
}

/// Writes one value (already checked by the parser) canonically.
fn write_value(value: &[u8], out: &mut Vec<u8>, depth: usize) -> Option<()> {
    let mut p = Parser { src: value, at: 0 };
    match *value.first()? {
        b'{' => write_members(p.object_members(depth)?, out, depth),
        b'[' => {
            out.push(b'[');
            p.at = 1;
            p.ws();
            if p.eat(b']').is_none() {
                loop {
                    p.ws();
                    let start = p.at;
                    p.skip_value(depth + 1)?;
                    write_value(&value[start..p.at], out, depth + 1)?;
                    p.ws();
                    if p.eat(b',').is_none() {
                        break;
                    }
                    out.push(b',');
                }
            }
            out.push(b']');
            Some(())
        }
        b'"' => {
            write_string(&decode_string(value)?, out);
            Some(())
        }
        b't' | b'f' | b'n' => {
            out.extend_from_slice(value);
            Some(())
        }
        _ => write_number(value, out),
    }
}

/// A string as serde_json writes it: only `"`, `\` and control characters escaped.
fn write_string(text: &str, out: &mut Vec<u8>) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

/// A number as serde_json writes the value it decodes: integers that fit 64 bits as
/// they are, anything else through serde_json's own number (a float, printed shortest).
fn write_number(token: &[u8], out: &mut Vec<u8>) -> Option<()> {
    if plain_integer(token) {
        out.extend_from_slice(token);
        return Some(());
    }
    let number: serde_json::Number = serde_json::from_slice(token).ok()?;
    serde_json::to_writer(&mut *out, &number).ok()
}

/// An integer serde_json keeps as it is: up to 18 digits (so it fits 64 bits either
/// way), no leading zero, not `-0` (which it reads as a float).
fn plain_integer(token: &[u8]) -> bool {
    let digits = token.strip_prefix(b"-").unwrap_or(token);
    !digits.is_empty()
        && digits.len() <= 18
        && digits.iter().all(u8::is_ascii_digit)
        && (digits.len() == 1 || digits[0] != b'0')
        && token != b"-0"
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    /// What the general path gives: decode each, extend in order, encode.
    fn general(docs: &[&[u8]]) -> Option<Vec<u8>> {
        let mut merged = Map::new();
        for doc in docs {
            match serde_json::from_slice::<Value>(doc).ok()? {
                Value::Object(m) => merged.extend(m),
                _ => return None,
            }
        }
        serde_json::to_vec(&merged).ok()
    }

    fn direct(docs: &[&[u8]]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        merge(docs, &mut out).map(|()| out)
    }

    #[test]
    fn merges_sorted_with_later_documents_winning() {
        let a = br#"{"b": 1, "a": {"z": [3, {"y": 1, "x": 2}], "c": "\u00e9\n"}, "d": 1.50}"#;
        let b = br#" {"d": -0, "e": 1e3, "b": "two", "b": "three"} "#;
        let out = direct(&[a, b]).unwrap();
        assert_eq!(String::from_utf8(out.clone()).unwrap(), r#"{"a":{"c":"é\n","z":[3,{"x":2,"y":1}]},"b":"three","d":-0.0,"e":1000.0}"#);
        assert_eq!(Some(out), general(&[a, b]));
    }

    #[test]
    fn anything_unusual_is_left_to_the_general_path() {
        for doc in [
            &b"[1]"[..],
            b"{\"a\": 1} x",
            b"{\"a\": 01}",
            b"{\"a\": \"\x01\"}",
            b"{\"a\": \"\xff\"}",
            b"{\"a\": \"\\ud800\"}",
            b"{\"a\": tru}",
            b"{\"a\": 1,}",
            b"{\"a\" 1}",
            b"",
        ] {
            assert_eq!(direct(&[doc]), None, "{}", String::from_utf8_lossy(doc));
        }
        let deep = format!("{{\"a\": {}1{}}}", "[".repeat(150), "]".repeat(150));
        assert_eq!(direct(&[deep.as_bytes()]), None);
    }

    /// Arbitrary JSON with few distinct keys (so that merges collide), odd numbers and
    /// escapes.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            "[a-c\"\\\\/\n\u{e9}\u{1F600}\u{7f}]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-d]{1,2}", inner), 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn object() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::vec(("[a-e]{1,2}", value()), 0..6).prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        /// Equal to decoding, merging and encoding, however the documents are written.
        #[test]
        fn equals_the_general_path(docs in prop::collection::vec(object(), 1..4), pretty in any::<bool>()) {
            let texts: Vec<Vec<u8>> = docs
                .iter()
                .map(|d| if pretty { serde_json::to_vec_pretty(d).unwrap() } else { serde_json::to_vec(d).unwrap() })
                .collect();
            let refs: Vec<&[u8]> = texts.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(direct(&refs), general(&refs));
        }

        /// Hand-written number and escape shapes decode and re-encode as serde_json does.
        #[test]
        fn numbers_and_escapes_match(
            number in r"-?(0|[1-9][0-9]{0,22})(\.[0-9]{1,8})?([eE][+-]?[0-9]{1,3})?",
            text in r#"([a-z ]|\\[nrtbf/"\\]|\\u00[0-7][0-9a-f]|\\ud83d\\ude00){0,6}"#,
        ) {
            let doc = format!(r#"{{"n": {number}, "s": "{text}", "{text}": [{number}]}}"#);
            prop_assert_eq!(direct(&[doc.as_bytes()]), general(&[doc.as_bytes()]), "{}", doc);
        }

        /// Garbage never panics, and whatever is accepted is what the general path gives.
        #[test]
        fn garbage_is_refused_or_handled_alike(bytes in prop::collection::vec(
            prop::sample::select(b"{}[]\":,-+.eE0123456789 \\untrlfsa".to_vec()), 0..40)) {
            if let Some(out) = direct(&[&bytes]) {
                prop_assert_eq!(Some(out), general(&[&bytes]));
            }
        }
    }
}
