//! Backend JSON objects merged straight from their bytes, read as spans.
//!
//! When neither the backends nor the endpoint manipulate the data, the response is the
//! union of the backends' top-level members (a later backend wins a key) encoded as the
//! gateway always encodes: members sorted by key at every level, no whitespace, strings
//! and numbers in serde_json's canonical form. That is what decoding every body into
//! values, merging the maps and encoding the result gives; here it is written directly
//! from the input. The documents are read once into a flat list of spans (a tape): a
//! value that is already in canonical form (no whitespace, keys in order, nothing to
//! rewrite) is one span, copied out as it is; only the others keep their parts, and only
//! a string with escapes or a number not already canonical is decoded and written again.
//!
//! Anything out of the ordinary (invalid JSON, a document that is not an object, deep
//! nesting, lone surrogates) makes [`merge`] give up with `None`; the caller then takes
//! the general path, which decodes and reports the problem as it always does.

use std::borrow::Cow;
use std::cmp::Ordering;

/// Deeper documents are left to serde_json, whose recursion limit (128) decides.
const MAX_DEPTH: usize = 100;

/// Writes the merge of `docs` (each a JSON object, later ones winning a key) to `out`.
/// `None`: some document needs the general path; `out` is then unspecified.
pub fn merge(docs: &[&[u8]], out: &mut Vec<u8>) -> Option<()> {
    let mut parser = Parser { src: "", at: 0, tape: Vec::with_capacity(64) };
    let mut members = Vec::with_capacity(32);
    for doc in docs {
        // Checked once as a whole: every string in it is then valid UTF-8 too, as JSON's
        // structure is ASCII and strings are cut at ASCII quotes.
        parser.src = std::str::from_utf8(doc).ok()?;
        parser.at = 0;
        parser.ws();
        parser.eat(b'{')?;
        let from = parser.tape.len();
        parser.members(0)?;
        parser.ws();
        if parser.at != doc.len() {
            return None;
        }
        gather(&parser.tape, from, parser.tape.len(), &mut members)?;
    }
    write_members(&parser.tape, &mut members, 0, out)
}

/// One value (or object key) of a document, with the tape index just past its parts.
#[derive(Clone, Copy)]
struct Item<'a> {
    /// The value's text: a token, or a whole array or object.
    text: &'a str,
    kind: Kind,
    /// The index after this item and its parts: its next sibling's.
    next: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Already as serde_json would write it: copied out whole, with no parts on the tape.
    Canonical,
    /// A string with escapes, decoded and written again.
    Escaped,
    /// A number serde_json writes differently (a float, `-0`, a very long integer).
    Number,
    /// An array with its items after it on the tape.
    Array,
    /// An object with its members after it on the tape, each a key and then its value.
    Object,
}

struct Parser<'a> {
    src: &'a str,
    at: usize,
    tape: Vec<Item<'a>>,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.at).copied()
    }

    /// Skips whitespace; whether there was any.
    fn ws(&mut self) -> bool {
        let start = self.at;
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
        self.at != start
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek() == Some(byte)).then(|| self.at += 1)
    }

    /// Puts the members of the object whose `{` was just read on the tape, in document
    /// order; whether the object is canonical (no whitespace, keys strictly ascending,
    /// every value canonical).
    fn members(&mut self, depth: usize) -> Option<bool> {
        let mut canonical = !self.ws();
        if self.eat(b'}').is_some() {
            return Some(canonical);
        }
        let mut last_key: Option<&'a str> = None;
        loop {
            canonical &= !self.ws();
            let start = self.at;
            let escaped = self.string()?;
            let key = self.src.get(start..self.at)?;
            self.tape.push(Item {
                text: key,
                kind: if escaped { Kind::Escaped } else { Kind::Canonical },
                next: self.tape.len() + 1,
            });
            let inner = key.get(1..key.len() - 1)?;
            canonical &= !escaped && last_key.is_none_or(|last| last.as_bytes() < inner.as_bytes());
            last_key = Some(inner);
            canonical &= !self.ws();
            self.eat(b':')?;
            canonical &= !self.ws();
            canonical &= self.value(depth + 1)?;
            canonical &= !self.ws();
            if self.eat(b',').is_none() {
                self.eat(b'}')?;
                return Some(canonical);
            }
        }
    }

    /// Puts the items of the array whose `[` was just read on the tape; whether the array
    /// is canonical.
    fn elements(&mut self, depth: usize) -> Option<bool> {
        let mut canonical = !self.ws();
        if self.eat(b']').is_some() {
            return Some(canonical);
        }
        loop {
            canonical &= self.value(depth + 1)?;
            canonical &= !self.ws();
            if self.eat(b',').is_none() {
                self.eat(b']')?;
                return Some(canonical);
            }
            canonical &= !self.ws();
        }
    }

    /// Reads one value onto the tape, checking it as strictly as serde_json would (every
    /// value is checked, also one that a later duplicate key replaces and is never
    /// written); whether it is canonical.
    fn value(&mut self, depth: usize) -> Option<bool> {
        if depth > MAX_DEPTH {
            return None;
        }
        let start = self.at;
        let at = self.tape.len();
        self.tape.push(Item { text: "", kind: Kind::Canonical, next: at + 1 });
        let (kind, canonical) = match self.peek()? {
            b'{' => {
                self.at += 1;
                (Kind::Object, self.members(depth)?)
            }
            b'[' => {
                self.at += 1;
                (Kind::Array, self.elements(depth)?)
            }
            b'"' => {
                let escaped = self.string()?;
                (Kind::Escaped, !escaped)
            }
            b't' => (Kind::Canonical, self.literal("true")?),
            b'f' => (Kind::Canonical, self.literal("false")?),
            b'n' => (Kind::Canonical, self.literal("null")?),
            _ => (Kind::Number, self.number()?),
        };
        let text = self.src.get(start..self.at)?;
        if canonical {
            // Written as it is: its parts are not needed.
            self.tape.truncate(at + 1);
            self.tape[at] = Item { text, kind: Kind::Canonical, next: at + 1 };
        } else {
            let next = self.tape.len();
            self.tape[at] = Item { text, kind, next };
        }
        Some(canonical)
    }

    fn literal(&mut self, word: &'static str) -> Option<bool> {
        self.src[self.at..].starts_with(word).then(|| {
            self.at += word.len();
            true
        })
    }

    /// Reads a string token: no control characters, known escapes only, surrogates only
    /// in pairs (as serde_json requires); whether it has escapes.
    fn string(&mut self) -> Option<bool> {
        let mut escaped = false;
        self.eat(b'"')?;
        loop {
            self.at += plain_run(self.src.as_bytes().get(self.at..)?);
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(escaped);
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

    /// Reads a number token, checked against JSON's grammar; whether it is canonical.
    fn number(&mut self) -> Option<bool> {
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
        let token = self.src.get(start..self.at)?;
        if plain_integer(token) {
            return Some(true);
        }
        // One serde_json would refuse (out of range) must not pass, even unwritten.
        serde_json::from_str::<serde_json::Number>(token).ok()?;
        Some(false)
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

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// How many bytes at the start of `bytes` are [`PLAIN`]: eight at a time, then one by one.
fn plain_run(bytes: &[u8]) -> usize {
    let mut words = bytes.chunks_exact(8);
    let mut done = 0;
    for word in &mut words {
        let mut eight = [0; 8];
        eight.copy_from_slice(word);
        let flags = special_bytes(u64::from_le_bytes(eight));
        if flags != 0 {
            return done + flags.trailing_zeros() as usize / 8;
        }
        done += 8;
    }
    let rest = words.remainder();
    done + rest.iter().position(|&b| !PLAIN[usize::from(b)]).unwrap_or(rest.len())
}

/// The high bit of each byte of `word` that is `"`, `\\` or below 0x20. Only the lowest
/// flag is exact (a borrow can also flag a byte above a flagged one), which is all
/// [`plain_run`] reads.
fn special_bytes(word: u64) -> u64 {
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH_BITS;
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH_BITS;
    zero(word ^ (ONES * u64::from(b'"'))) | zero(word ^ (ONES * u64::from(b'\\'))) | control
}

/// A member of an object being written: its key's text and its value's place on the tape.
struct Member<'a> {
    /// The key's first eight bytes, big-endian and zero-padded: ordering by it orders by
    /// the key wherever two prefixes differ.
    prefix: u64,
    /// Borrowed: the key as it was, with nothing to escape. Owned: decoded from escapes.
    key: Cow<'a, str>,
    value: usize,
}

impl Member<'_> {
    fn order(&self, other: &Self) -> Ordering {
        self.prefix.cmp(&other.prefix).then_with(|| {
            let (a, b) = (self.key.as_bytes(), other.key.as_bytes());
            if a.len() <= 8 && b.len() <= 8 {
                // Equal prefixes: the shorter key is the longer one's start.
                a.len().cmp(&b.len())
            } else {
                a.cmp(b)
            }
        })
    }
}

fn prefix(key: &str) -> u64 {
    let mut eight = [0; 8];
    for (slot, byte) in eight.iter_mut().zip(key.bytes()) {
        *slot = byte;
    }
    u64::from_be_bytes(eight)
}

/// Collects the members on the tape between `from` and `to` (key, value, key, value…).
fn gather<'a>(tape: &[Item<'a>], from: usize, to: usize, into: &mut Vec<Member<'a>>) -> Option<()> {
    let mut at = from;
    while at < to {
        let key = tape.get(at)?;
        let key = match key.kind {
            Kind::Escaped => Cow::Owned(decode_string(key.text)?),
            _ => Cow::Borrowed(key.text.get(1..key.text.len() - 1)?),
        };
        into.push(Member { prefix: prefix(&key), key, value: at + 1 });
        at = tape.get(at + 1)?.next;
    }
    Some(())
}

/// Writes `members[from..]` as one object: sorted by key, the last of equal keys kept.
fn write_members<'a>(tape: &[Item<'a>], members: &mut Vec<Member<'a>>, from: usize, out: &mut Vec<u8>) -> Option<()> {
    // Stable: among equal keys the later member stays later, and is the one kept.
    members.get_mut(from..)?.sort_by(Member::order);
    out.push(b'{');
    let mut first = true;
    // Writing a value pushes its own members after these and takes them off again.
    for i in from..members.len() {
        let member = &members[i];
        if members.get(i + 1).is_some_and(|next| member.order(next) == Ordering::Equal) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        match &member.key {
            // Checked by the parser: no quote, backslash or control character.
            Cow::Borrowed(plain) => {
                out.push(b'"');
                out.extend_from_slice(plain.as_bytes());
                out.extend_from_slice(b"\":");
            }
            Cow::Owned(decoded) => {
                write_string(decoded, out);
                out.push(b':');
            }
        }
        let value = member.value;
        write_value(tape, value, members, out)?;
    }
    out.push(b'}');
    Some(())
}

/// Writes the value at `at` on the tape as serde_json writes the value it would decode.
fn write_value<'a>(tape: &[Item<'a>], at: usize, members: &mut Vec<Member<'a>>, out: &mut Vec<u8>) -> Option<()> {
    let item = *tape.get(at)?;
    match item.kind {
        Kind::Canonical => out.extend_from_slice(item.text.as_bytes()),
        // Checked by the parser: decoding cannot fail.
        Kind::Escaped => write_string(&decode_string(item.text)?, out),
        Kind::Number => write_number(item.text, out)?,
        Kind::Array => {
            out.push(b'[');
            let mut part = at + 1;
            while part < item.next {
                if part > at + 1 {
                    out.push(b',');
                }
                write_value(tape, part, members, out)?;
                part = tape.get(part)?.next;
            }
            out.push(b']');
        }
        Kind::Object => {
            let from = members.len();
            gather(tape, at + 1, item.next, members)?;
            write_members(tape, members, from, out)?;
            members.truncate(from);
        }
    }
    Some(())
}

/// A string token's text, decoded by serde_json (escapes, surrogate pairs and all).
fn decode_string(token: &str) -> Option<String> {
    serde_json::from_str::<String>(token).ok()
}

/// A string as serde_json writes it: only `"`, `\\` and control characters escaped.
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

/// A number as serde_json writes the value it decodes, through serde_json's own number
/// (a float, printed shortest; the parser checked that it reads).
fn write_number(token: &str, out: &mut Vec<u8>) -> Option<()> {
    let number = serde_json::from_str::<serde_json::Number>(token).ok()?;
    serde_json::to_writer(&mut *out, &number).ok()
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

    /// Compact JSON whose objects list their keys in reverse where `flips` has a bit set
    /// for their depth.
    fn unordered(value: &Value, flips: u32) -> String {
        match value {
            Value::Object(map) => {
                let mut members: Vec<String> =
                    map.iter().map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), unordered(v, flips >> 1))).collect();
                if flips & 1 == 1 {
                    members.reverse();
                }
                format!("{{{}}}", members.join(","))
            }
            Value::Array(items) => format!("[{}]", items.iter().map(|v| unordered(v, flips >> 1)).collect::<Vec<_>>().join(",")),
            other => other.to_string(),
        }
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

        /// Equal to the general path when keys come in any order, at any level, compact
        /// (no nested value is canonical as it stands, so each is rebuilt from its parts).
        #[test]
        fn unordered_keys_are_sorted_at_every_level(docs in prop::collection::vec(object(), 1..4), flips in any::<u32>()) {
            let texts: Vec<Vec<u8>> = docs.iter().map(|d| unordered(&Value::Object(d.clone()), flips).into_bytes()).collect();
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
