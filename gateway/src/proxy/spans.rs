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

use std::cmp::Ordering;

/// Deeper documents are left to serde_json, whose recursion limit (128) decides.
const MAX_DEPTH: usize = 100;

/// Writes the merge of `docs` (each a JSON object, later ones winning a key) to `out`.
/// `None`: some document needs the general path; `out` is then unspecified.
pub fn merge(docs: &[&[u8]], out: &mut Vec<u8>) -> Option<()> {
    let mut tape = Vec::with_capacity(64);
    let mut frames = Vec::with_capacity(8);
    let mut members = Vec::with_capacity(32);
    for doc in docs {
        // Checked once as a whole: every string in it is then valid UTF-8 too, as JSON's
        // structure is ASCII and strings are cut at ASCII quotes.
        std::str::from_utf8(doc).ok()?;
        let top = read(doc, &mut tape, &mut frames)?;
        gather(&tape, top + 1, tape.get(top)?.next, &mut members)?;
    }
    write_members(&tape, &mut members, 0, out)
}

/// One value (or object key) of a document, with the tape index just past its parts.
#[derive(Clone, Copy)]
struct Item<'a> {
    /// The value's bytes: a token, or a whole array or object.
    text: &'a [u8],
    /// The index after this item and its parts: its next sibling's.
    next: usize,
    /// For a key without escapes: [`prefix`] of its text.
    prefix: u64,
    kind: Kind,
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

/// An array or object being read.
struct Frame<'a> {
    /// Its item on the tape.
    item: usize,
    /// Where its text starts.
    start: usize,
    object: bool,
    /// Canonical so far: no whitespace, keys strictly ascending, every part canonical.
    canonical: bool,
    /// The previous key of an object, with its prefix.
    last: Option<(u64, &'a [u8])>,
}

/// Reads a document that must be one object (whitespace around it allowed) onto the
/// tape, checking every part as strictly as serde_json would (also a value that a later
/// duplicate key replaces and is never written). Returns the object's tape index; the
/// object itself always keeps its members on the tape.
///
/// One loop with a stack of open containers rather than a recursive descent: the read
/// position stays in a register instead of being stored and reloaded around every call.
fn read<'a>(src: &'a [u8], tape: &mut Vec<Item<'a>>, frames: &mut Vec<Frame<'a>>) -> Option<usize> {
    let mut at = 0;
    skip_ws(src, &mut at);
    if src.get(at) != Some(&b'{') {
        return None;
    }
    let top = tape.len();
    frames.clear();
    'value: loop {
        let start = at;
        let mut canonical = match *src.get(at)? {
            open @ (b'{' | b'[') => {
                if frames.len() > MAX_DEPTH {
                    return None;
                }
                let item = tape.len();
                tape.push(Item { text: &[], next: item + 1, prefix: 0, kind: Kind::Canonical });
                at += 1;
                let object = open == b'{';
                let spaced = skip_ws(src, &mut at);
                let mut frame = Frame { item, start, object, canonical: !spaced, last: None };
                if src.get(at) != Some(if object { &b'}' } else { &b']' }) {
                    if object {
                        key(src, &mut at, tape, &mut frame)?;
                    }
                    frames.push(frame);
                    continue 'value;
                }
                at += 1;
                close(src, at, tape, frame, frames.is_empty())?
            }
            b'"' => {
                let escaped = string(src, &mut at)?;
                let kind = if escaped { Kind::Escaped } else { Kind::Canonical };
                tape.push(Item { text: src.get(start..at)?, next: tape.len() + 1, prefix: 0, kind });
                !escaped
            }
            first @ (b't' | b'f' | b'n') => {
                let word: &'static [u8] = match first {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                if !src.get(at..)?.starts_with(word) {
                    return None;
                }
                at += word.len();
                tape.push(Item { text: word, next: tape.len() + 1, prefix: 0, kind: Kind::Canonical });
                true
            }
            _ => {
                let canonical = number(src, &mut at)?;
                let kind = if canonical { Kind::Canonical } else { Kind::Number };
                tape.push(Item { text: src.get(start..at)?, next: tape.len() + 1, prefix: 0, kind });
                canonical
            }
        };
        // After a value: a separator, or the end of its container (and perhaps of the
        // containers around it).
        loop {
            let Some(frame) = frames.last_mut() else {
                skip_ws(src, &mut at);
                return (at == src.len()).then_some(top);
            };
            frame.canonical &= canonical & !skip_ws(src, &mut at);
            match src.get(at) {
                Some(b',') => {
                    at += 1;
                    frame.canonical &= !skip_ws(src, &mut at);
                    if frame.object {
                        key(src, &mut at, tape, frame)?;
                    }
                    continue 'value;
                }
                Some(b'}') if frame.object => {}
                Some(b']') if !frame.object => {}
                _ => return None,
            }
            at += 1;
            let frame = frames.pop()?;
            canonical = close(src, at, tape, frame, frames.is_empty())?;
        }
    }
}

/// Ends the container of `frame`, whose closing bracket ends before `at`: a canonical one
/// (not the document's own object) becomes a single span without parts. Whether it was
/// canonical.
fn close<'a>(src: &'a [u8], at: usize, tape: &mut Vec<Item<'a>>, frame: Frame<'a>, outermost: bool) -> Option<bool> {
    let text = src.get(frame.start..at)?;
    let (next, kind) = if frame.canonical && !outermost {
        tape.truncate(frame.item + 1);
        (frame.item + 1, Kind::Canonical)
    } else {
        (tape.len(), if frame.object { Kind::Object } else { Kind::Array })
    };
    *tape.get_mut(frame.item)? = Item { text, next, prefix: 0, kind };
    Some(frame.canonical)
}

/// Reads an object key, the colon and the whitespace around it, noting on the frame
/// whether the keys stay canonical.
#[inline(always)]
fn key<'a>(src: &'a [u8], at: &mut usize, tape: &mut Vec<Item<'a>>, frame: &mut Frame<'a>) -> Option<()> {
    let start = *at;
    let escaped = string(src, at)?;
    let token = src.get(start..*at)?;
    let text = token.get(1..token.len() - 1)?;
    // The key's first eight bytes as one load where the document has them (it usually
    // does: a value and a closing brace follow), masked to the key's length.
    let prefix = match src.get(start + 1..).and_then(<[u8]>::first_chunk::<8>) {
        Some(eight) if text.len() < 8 => u64::from_be_bytes(*eight) & !(u64::MAX >> (8 * text.len())),
        Some(eight) => u64::from_be_bytes(*eight),
        None => prefix(text),
    };
    frame.canonical &= !escaped && frame.last.is_none_or(|(p, last)| p < prefix || (p == prefix && last < text));
    frame.last = Some((prefix, text));
    let kind = if escaped { Kind::Escaped } else { Kind::Canonical };
    tape.push(Item { text: token, next: tape.len() + 1, prefix, kind });
    frame.canonical &= !skip_ws(src, at);
    if src.get(*at) != Some(&b':') {
        return None;
    }
    *at += 1;
    frame.canonical &= !skip_ws(src, at);
    Some(())
}

/// Skips whitespace; whether there was any.
#[inline]
fn skip_ws(src: &[u8], at: &mut usize) -> bool {
    let start = *at;
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = src.get(*at) {
        *at += 1;
    }
    *at != start
}

/// Reads the string token at `at`: no control characters, known escapes only, surrogates
/// only in pairs (as serde_json requires). Whether it has escapes.
#[inline]
fn string(src: &[u8], at: &mut usize) -> Option<bool> {
    if src.get(*at) != Some(&b'"') {
        return None;
    }
    let mut i = *at + 1;
    let mut escaped = false;
    loop {
        i += plain_run(src.get(i..)?);
        match *src.get(i)? {
            b'"' => {
                *at = i + 1;
                return Some(escaped);
            }
            b'\\' => {
                escaped = true;
                i = escape(src, i)?;
            }
            // A control character.
            _ => return None,
        }
    }
}

/// Reads the escape at the backslash at `at`; where it ends.
#[cold]
fn escape(src: &[u8], at: usize) -> Option<usize> {
    match *src.get(at + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(at + 2),
        b'u' => {
            let unit = hex4(src, at + 2)?;
            if (0xDC00..0xE000).contains(&unit) {
                return None;
            }
            if !(0xD800..0xDC00).contains(&unit) {
                return Some(at + 6);
            }
            // A high surrogate: a low one must follow.
            if src.get(at + 6..at + 8)? != b"\\u" || !(0xDC00..0xE000).contains(&hex4(src, at + 8)?) {
                return None;
            }
            Some(at + 12)
        }
        _ => None,
    }
}

/// The code unit of the four hex digits at `at`.
fn hex4(src: &[u8], at: usize) -> Option<u32> {
    let mut unit = 0;
    for &b in src.get(at..at + 4)? {
        unit = unit * 16 + char::from(b).to_digit(16)?;
    }
    Some(unit)
}

/// Reads the number token at `at`, checked against JSON's grammar; whether it is
/// canonical.
fn number(src: &[u8], at: &mut usize) -> Option<bool> {
    let start = *at;
    let digits = |i: &mut usize| {
        while src.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
    };
    let mut i = start;
    if src.get(i) == Some(&b'-') {
        i += 1;
    }
    match *src.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => digits(&mut i),
        _ => return None,
    }
    let mut integer = true;
    if src.get(i) == Some(&b'.') {
        integer = false;
        i += 1;
        if !src.get(i)?.is_ascii_digit() {
            return None;
        }
        digits(&mut i);
    }
    if let Some(b'e' | b'E') = src.get(i) {
        integer = false;
        i += 1;
        if let Some(b'+' | b'-') = src.get(i) {
            i += 1;
        }
        if !src.get(i)?.is_ascii_digit() {
            return None;
        }
        digits(&mut i);
    }
    *at = i;
    let token = src.get(start..i)?;
    if integer && plain_integer(token) {
        return Some(true);
    }
    // One serde_json would refuse (out of range) must not pass, even unwritten.
    serde_json::from_slice::<serde_json::Number>(token).ok()?;
    Some(false)
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
#[inline]
fn plain_run(bytes: &[u8]) -> usize {
    let mut done = 0;
    while let Some(eight) = bytes.get(done..).and_then(<[u8]>::first_chunk::<8>) {
        let flags = special_bytes(u64::from_le_bytes(*eight));
        if flags != 0 {
            return done + flags.trailing_zeros() as usize / 8;
        }
        done += 8;
    }
    let rest = bytes.get(done..).unwrap_or_default();
    done + rest.iter().position(|&b| !PLAIN[usize::from(b)]).unwrap_or(rest.len())
}

/// The high bit of each byte of `word` that is `"`, `\\` or below 0x20. Only the lowest
/// flag is exact (a borrow can also flag a byte above a flagged one), which is all
/// [`plain_run`] reads.
#[inline]
fn special_bytes(word: u64) -> u64 {
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH_BITS;
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH_BITS;
    zero(word ^ (ONES * u64::from(b'"'))) | zero(word ^ (ONES * u64::from(b'\\'))) | control
}

/// A key's first eight bytes, big-endian and zero-padded: ordering by it orders by the
/// key wherever two prefixes differ.
#[inline]
fn prefix(key: &[u8]) -> u64 {
    if let Some(eight) = key.first_chunk::<8>() {
        return u64::from_be_bytes(*eight);
    }
    let mut eight = [0; 8];
    for (slot, byte) in eight.iter_mut().zip(key) {
        *slot = *byte;
    }
    u64::from_be_bytes(eight)
}

/// A member of an object being written: its key's text and its value's place on the tape.
struct Member<'a> {
    prefix: u64,
    key: Key<'a>,
    value: usize,
}

enum Key<'a> {
    /// As it was in the document: nothing to escape.
    Plain(&'a [u8]),
    /// Decoded from escapes.
    Decoded(String),
}

impl Key<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Key::Plain(text) => text,
            Key::Decoded(text) => text.as_bytes(),
        }
    }
}

impl Member<'_> {
    fn order(&self, other: &Self) -> Ordering {
        self.prefix.cmp(&other.prefix).then_with(|| {
            let (a, b) = (self.key.bytes(), other.key.bytes());
            if a.len() <= 8 && b.len() <= 8 {
                // Equal prefixes: the shorter key is the longer one's start.
                a.len().cmp(&b.len())
            } else {
                a.cmp(b)
            }
        })
    }
}

/// Collects the members on the tape between `from` and `to` (key, value, key, value…).
fn gather<'a>(tape: &[Item<'a>], from: usize, to: usize, into: &mut Vec<Member<'a>>) -> Option<()> {
    let mut at = from;
    while at < to {
        let key = tape.get(at)?;
        let (prefix, key) = match key.kind {
            Kind::Escaped => {
                let decoded = decode_string(key.text)?;
                (prefix(decoded.as_bytes()), Key::Decoded(decoded))
            }
            _ => (key.prefix, Key::Plain(key.text.get(1..key.text.len() - 1)?)),
        };
        into.push(Member { prefix, key, value: at + 1 });
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
            Key::Plain(text) => {
                out.push(b'"');
                out.extend_from_slice(text);
                out.extend_from_slice(b"\":");
            }
            Key::Decoded(text) => {
                write_string(text, out);
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
        Kind::Canonical => out.extend_from_slice(item.text),
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
fn decode_string(token: &[u8]) -> Option<String> {
    serde_json::from_slice::<String>(token).ok()
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
fn write_number(token: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let number = serde_json::from_slice::<serde_json::Number>(token).ok()?;
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
                let mut members: Vec<String> = map
                    .iter()
                    .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), unordered(v, flips >> 1)))
                    .collect();
                if flips & 1 == 1 {
                    members.reverse();
                }
                format!("{{{}}}", members.join(","))
            }
            Value::Array(items) => {
                format!("[{}]", items.iter().map(|v| unordered(v, flips >> 1)).collect::<Vec<_>>().join(","))
            }
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
