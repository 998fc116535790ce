//! Backend JSON objects merged straight from their bytes, read as spans.
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
    let mut members = Vec::with_capacity(32);
    for doc in docs {
        // Checked once as a whole: every string in it is then valid UTF-8 too, as JSON's
        // structure is ASCII and strings are cut at ASCII quotes.
        let doc = std::str::from_utf8(doc).ok()?;
        let mut p = Parser { src: doc, at: 0 };
        p.ws();
        p.eat(b'{')?;
        p.members(&mut members, 0)?;
        p.ws();
        if p.at != doc.len() {
            return None;
        }
    }
    write_members(members, out);
    Some(())
}

/// A value as spans of its document: what is needed to write it again.
enum Node<'a> {
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
    Array(Vec<Node<'a>>),
    String(Str<'a>),
    Number(&'a str),
    /// `true`, `false` or `null`.
    Literal(&'static str),
}

/// A string token, quotes included, and whether it has escapes.
#[derive(Clone, Copy)]
struct Str<'a> {
    token: &'a str,
    escaped: bool,
}

struct Parser<'a> {
    src: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.at).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek() == Some(byte)).then(|| self.at += 1)
    }

    /// Appends the members of the object whose `{` was just read, in document order.
    fn members(&mut self, into: &mut Vec<(Cow<'a, str>, Node<'a>)>, depth: usize) -> Option<()> {
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.ws();
            let key = decode_string(self.string()?)?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            into.push((key, self.value(depth + 1)?));
            self.ws();
            if self.eat(b',').is_none() {
                return self.eat(b'}');
            }
        }
    }

    /// Reads one value, checking it as strictly as serde_json would (every value is
    /// checked, also one that a later duplicate key replaces and is never written).
    fn value(&mut self, depth: usize) -> Option<Node<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => {
                self.at += 1;
                let mut members = Vec::with_capacity(8);
                self.members(&mut members, depth)?;
                Some(Node::Object(members))
            }
            b'[' => {
                self.at += 1;
                let mut items = Vec::with_capacity(4);
                self.ws();
                if self.eat(b']').is_none() {
                    loop {
                        self.ws();
                        items.push(self.value(depth + 1)?);
                        self.ws();
                        if self.eat(b',').is_none() {
                            self.eat(b']')?;
                            break;
                        }
                    }
                }
                Some(Node::Array(items))
            }
            b'"' => self.string().map(Node::String),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => self.number().map(Node::Number),
        }
    }

    fn literal(&mut self, word: &'static str) -> Option<Node<'a>> {
        self.src[self.at..].starts_with(word).then(|| {
            self.at += word.len();
            Node::Literal(word)
        })
    }

    /// A string token, quotes included: no control characters, known escapes only,
    /// surrogates only in pairs (as serde_json requires).
    fn string(&mut self) -> Option<Str<'a>> {
        let start = self.at;
        let mut escaped = false;
        self.eat(b'"')?;
        loop {
            self.at += plain_run(&self.src.as_bytes()[self.at..]);
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(Str { token: self.src.get(start..self.at)?, escaped });
                }
                b'\\' => {
                    escaped = true;
                    self.at += 1;
                    match self.peek()? {
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
                // A control character.
                _ => return None,
            }
        }
    }

    /// `u` and four hex digits: the code unit they give.
    fn hex4(&mut self) -> Option<u32> {
        self.eat(b'u')?;
        let digits = self.src.get(self.at..self.at + 4)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.at += 4;
        u32::from_str_radix(digits, 16).ok()
    }

    /// A number token, checked against JSON's grammar.
    fn number(&mut self) -> Option<&'a str> {
        let start = self.at;
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        let token = &self.src[start..self.at];
        // One serde_json would refuse (out of range) must not pass, even unwritten.
        if !plain_integer(token) {
            serde_json::from_str::<serde_json::Number>(token).ok()?;
        }
        Some(token)
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }
}

/// Bytes that need no attention inside a string: neither `"`, `\\` nor a control
/// character.
static PLAIN: [bool; 256] = {
    let mut table = [true; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = false;
        b += 1;
    }
    table[b'"' as usize] = false;
    table[b'\\' as usize] = false;
    table
};

/// How many bytes at the start of `bytes` are [`PLAIN`].
fn plain_run(bytes: &[u8]) -> usize {
    bytes.iter().position(|&b| !PLAIN[usize::from(b)]).unwrap_or(bytes.len())
}

/// A string's text: borrowed when it has no escapes, decoded by serde_json when it has
/// (surrogate pairs and all).
fn decode_string(s: Str<'_>) -> Option<Cow<'_, str>> {
    if !s.escaped {
        return Some(Cow::Borrowed(&s.token[1..s.token.len() - 1]));
    }
    serde_json::from_str::<String>(s.token).ok().map(Cow::Owned)
}

/// Writes members as one object: sorted by key, the last of equal keys kept.
fn write_members(mut members: Vec<(Cow<'_, str>, Node<'_>)>, out: &mut Vec<u8>) {
    // Stable: among equal keys the later member stays later, and is the one kept.
    members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push(b'{');
    let mut first = true;
    let mut members = members.into_iter().peekable();
    while let Some((key, value)) = members.next() {
        if members.peek().is_some_and(|next| next.0 == key) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        match key {
            // Checked by the parser: no quote, backslash or control character.
            Cow::Borrowed(plain) => {
                out.push(b'"');
                out.extend_from_slice(plain.as_bytes());
                out.extend_from_slice(b"\":");
            }
            Cow::Owned(decoded) => {
                write_string(&decoded, out);
                out.push(b':');
            }
        }
        write_node(value, out);
    }
    out.push(b'}');
}

/// Writes one value as serde_json writes the value it would decode.
fn write_node(node: Node<'_>, out: &mut Vec<u8>) {
    match node {
        Node::Object(members) => write_members(members, out),
        Node::Array(items) => {
            out.push(b'[');
            for (i, item) in items.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_node(item, out);
            }
            out.push(b']');
        }
        // Without escapes a checked string is already as serde_json writes it; with
        // them it is decoded (checked by the parser: it cannot fail) and written again.
        Node::String(s) => match decode_string(s) {
            Some(Cow::Owned(text)) => write_string(&text, out),
            _ => out.extend_from_slice(s.token.as_bytes()),
        },
        Node::Number(token) => write_number(token, out),
        Node::Literal(word) => out.extend_from_slice(word.as_bytes()),
    }
}

/// A string as serde_json writes it: only `"`, `\` and control characters escaped.
fn write_string(text: &str, out: &mut Vec<u8>) {
    if plain_run(text.as_bytes()) == text.len() {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

/// A number as serde_json writes the value it decodes: integers that fit 64 bits as
/// they are, anything else through serde_json's own number (a float, printed shortest;
/// the parser checked that it reads).
fn write_number(token: &str, out: &mut Vec<u8>) {
    if plain_integer(token) {
        out.extend_from_slice(token.as_bytes());
    } else if let Ok(number) = serde_json::from_str::<serde_json::Number>(token) {
        let _ = serde_json::to_writer(&mut *out, &number);
    }
}

/// An integer serde_json keeps as it is: up to 18 digits (so it fits 64 bits either
/// way), no leading zero, not `-0` (which it reads as a float).
fn plain_integer(token: &str) -> bool {
    let digits = token.strip_prefix('-').unwrap_or(token).as_bytes();
    !digits.is_empty()
        && digits.len() <= 18
        && digits.iter().all(u8::is_ascii_digit)
        && (digits.len() == 1 || digits[0] != b'0')
        && token != "-0"
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
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"{"a":{"c":"é\n","z":[3,{"x":2,"y":1}]},"b":"three","d":-0.0,"e":1000.0}"#
        );
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

        /// The eight-bytes-at-a-time scan stops where a byte-by-byte one does.
        #[test]
        fn plain_runs_end_at_the_first_special_byte(bytes in prop::collection::vec(
            prop_oneof![Just(b'"'), Just(b'\\'), Just(0x1f), Just(0x20), Just(0x7f), Just(0x80), any::<u8>(), 0x21u8..0x7e], 0..40)) {
            let naive = bytes.iter().take_while(|&&b| b >= 0x20 && b != b'"' && b != b'\\').count();
            prop_assert_eq!(plain_run(&bytes), naive);
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
