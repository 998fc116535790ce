//! Backend JSON objects manipulated and merged straight from their bytes, read as spans.
//!
//! When the endpoint does not touch the data and each backend's manipulation is one of
//! `target`, `allow`, `mapping` and `group` (a [`Plan`]), the response is the union of the
//! backends' manipulated objects (a later backend wins a key) encoded as the gateway always
//! encodes: members sorted by key at every level, no whitespace, strings and numbers in
//! serde_json's canonical form. That is what decoding every body into values, manipulating
//! them, merging the maps and encoding the result gives; here it is written directly from
//! the input. The documents are read once into a flat list of spans (a tape): a value that
//! is already in canonical form (no whitespace, keys in order, nothing to rewrite) is copied
//! out as it is; only the others are rebuilt from their parts, and only a string with
//! escapes or a number not already canonical is decoded and written again.
//!
//! Anything out of the ordinary (invalid JSON, a document that is not an object, deep
//! nesting, lone surrogates) makes [`merge`] give up with `None`; the caller then takes
//! the general path, which decodes and reports the problem as it always does.

use std::cmp::Ordering;

pub use super::shape::Plan;
use super::shape::Tree;

/// Deeper documents are left to serde_json, whose recursion limit (128) decides.
const MAX_DEPTH: usize = 100;

/// One backend's document and the manipulation to apply to it.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub body: &'a [u8],
    pub plan: Plan<'a>,
}

/// Writes the merge of `sources` (each a JSON object, manipulated by its plan; later ones
/// win a key) to `out`. `None`: some document needs the general path; `out` is then
/// unspecified.
pub fn merge(sources: &[Source<'_>], out: &mut Vec<u8>) -> Option<()> {
    let mut scratch = SCRATCH.take();
    let merged = merge_with(sources, &mut scratch, out);
    SCRATCH.set(scratch.recycled());
    merged
}

fn merge_with<'a>(sources: &[Source<'a>], scratch: &mut Scratch<'a>, out: &mut Vec<u8>) -> Option<()> {
    let Scratch { tape, frames, members, roots } = scratch;
    // About one item per eight bytes of input (a key or a short value with its quotes,
    // colon and comma), so that the tape grows at most once for usual documents.
    let bytes: usize = sources.iter().map(|s| s.body.len()).sum();
    tape.reserve((bytes / 8).clamp(16, 4096));
    for source in sources {
        roots.push(read(source.body, tape, frames, !source.plan.descends())?);
    }
    let doc = Doc { tape, sources, roots };
    for (i, source) in sources.iter().enumerate() {
        match source.plan.group {
            Some(name) => members.push(Member::named(name, Content::Shaped(i))),
            None => doc.gather_shaped(i, members)?,
        }
    }
    doc.write_members(members, 0, out)
}

/// The lists a merge works in, kept by each thread from one merge to the next: allocated
/// for every request, they cost more than the merge of two small documents itself
/// whenever the allocator had to find fresh pages for them.
#[derive(Default)]
struct Scratch<'a> {
    tape: Vec<Item<'a>>,
    frames: Vec<Frame<'a>>,
    members: Vec<Member<'a>>,
    roots: Vec<usize>,
}

thread_local! {
    static SCRATCH: std::cell::Cell<Scratch<'static>> = std::cell::Cell::new(Scratch::default());
}

/// Lists that grew past this many items are not kept (a large document's tape).
const SCRATCH_KEPT: usize = 4096;

impl Scratch<'_> {
    /// Emptied, and so free of borrows from the documents: ready for the next merge.
    fn recycled(self) -> Scratch<'static> {
        Scratch {
            tape: reuse(self.tape),
            frames: reuse(self.frames),
            members: reuse(self.members),
            roots: reuse(self.roots),
        }
    }
}

/// `items` emptied and retyped to a list of `U`, in the same storage when it is not too
/// large (`U` has the same layout as `T`: the type with other lifetimes).
fn reuse<T, U>(mut items: Vec<T>) -> Vec<U> {
    if items.capacity() > SCRATCH_KEPT {
        return Vec::new();
    }
    items.clear();
    // Collecting a list's iterator into one of the same layout keeps the storage.
    items.into_iter().filter_map(|_| None).collect()
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
    /// The text is already as serde_json would write it, and can be copied out whole.
    whole: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Already as serde_json would write it (`whole`), with no parts on the tape.
    Canonical,
    /// A string with escapes, decoded and written again.
    Escaped,
    /// A number serde_json writes differently (a float, `-0`, a very long integer).
    Number,
    /// An array with its items after it on the tape (and perhaps `whole` too).
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
/// object itself always keeps its members on the tape, and with `collapse` unset every
/// other array and object keeps its parts too.
///
/// One loop with a stack of open containers rather than a recursive descent: the read
/// position stays in a register instead of being stored and reloaded around every call.
fn read<'a>(src: &'a [u8], tape: &mut Vec<Item<'a>>, frames: &mut Vec<Frame<'a>>, collapse: bool) -> Option<usize> {
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
                tape.push(Item { text: &[], next: item + 1, prefix: 0, kind: Kind::Canonical, whole: false });
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
                close(src, at, tape, frame, frames.is_empty() || !collapse)?
            }
            b'"' => {
                let escaped = string(src, &mut at)?;
                let kind = if escaped { Kind::Escaped } else { Kind::Canonical };
                tape.push(Item { text: src.get(start..at)?, next: tape.len() + 1, prefix: 0, kind, whole: !escaped });
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
                tape.push(Item { text: word, next: tape.len() + 1, prefix: 0, kind: Kind::Canonical, whole: true });
                true
            }
            _ => {
                let canonical = number(src, &mut at)?;
                let kind = if canonical { Kind::Canonical } else { Kind::Number };
                tape.push(Item { text: src.get(start..at)?, next: tape.len() + 1, prefix: 0, kind, whole: canonical });
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
            canonical = close(src, at, tape, frame, frames.is_empty() || !collapse)?;
        }
    }
}

/// Ends the container of `frame`, whose closing bracket ends before `at`: a canonical one
/// becomes a single span without parts, unless it must `keep_parts`. Whether it was
/// canonical.
fn close<'a>(src: &'a [u8], at: usize, tape: &mut Vec<Item<'a>>, frame: Frame<'a>, keep_parts: bool) -> Option<bool> {
    let text = src.get(frame.start..at)?;
    let (next, kind) = if frame.canonical && !keep_parts {
        tape.truncate(frame.item + 1);
        (frame.item + 1, Kind::Canonical)
    } else {
        (tape.len(), if frame.object { Kind::Object } else { Kind::Array })
    };
    *tape.get_mut(frame.item)? = Item { text, next, prefix: 0, kind, whole: frame.canonical };
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
    tape.push(Item { text: token, next: tape.len() + 1, prefix, kind, whole: !escaped });
    frame.canonical &= !skip_ws(src, at);
    if src.get(*at) != Some(&b':') {
        return None;
    }
    *at += 1;
    frame.canonical &= !skip_ws(src, at);
    Some(())
}

/// Skips whitespace; whether there was any.
#[inline(always)]
fn skip_ws(src: &[u8], at: &mut usize) -> bool {
    // Compact documents have none: one comparison.
    match src.get(*at) {
        Some(b) if *b > b' ' => false,
        _ => skip_spaces(src, at),
    }
}

/// [`skip_ws`] where there is whitespace, kept out of the reading loop.
#[inline(never)]
fn skip_spaces(src: &[u8], at: &mut usize) -> bool {
    let start = *at;
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = src.get(*at) {
        *at += 1;
    }
    *at != start
}

/// Reads the string token at `at`: no control characters, known escapes only, surrogates
/// only in pairs (as serde_json requires). Whether it has escapes.
#[inline(always)]
fn string(src: &[u8], at: &mut usize) -> Option<bool> {
    if src.get(*at) != Some(&b'"') {
        return None;
    }
    let mut i = *at + 1;
    let mut escaped = false;
    loop {
        i += plain_run::<true>(src.get(i..)?);
        match *src.get(i)? {
            b'"' => {
                *at = i + 1;
                return Some(escaped);
            }
            b'\\' => {
                escaped = true;
                i = escape(src, i)?;
            }
            0x80.. => i = utf8(src, i)?,
            // A control character.
            _ => return None,
        }
    }
}

/// Checks the run of non-ASCII bytes at `at` (inside a string: JSON's structure is ASCII,
/// so the document is valid UTF-8 when its strings are); where it ends.
#[cold]
fn utf8(src: &[u8], at: usize) -> Option<usize> {
    let rest = src.get(at..)?;
    let run = rest.iter().position(u8::is_ascii).unwrap_or(rest.len());
    std::str::from_utf8(rest.get(..run)?).ok()?;
    Some(at + run)
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
    let first = i;
    match *src.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => digits(&mut i),
        _ => return None,
    }
    let mut integer = true;
    let point = i;
    if src.get(i) == Some(&b'.') {
        integer = false;
        i += 1;
        if !src.get(i)?.is_ascii_digit() {
            return None;
        }
        digits(&mut i);
    }
    let mut exponent = false;
    if let Some(b'e' | b'E') = src.get(i) {
        integer = false;
        exponent = true;
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
    // The grammar above allows no leading zero. Up to 18 digits fit 64 bits either way;
    // `-0` is read as a float.
    if integer && i - first <= 18 && token != b"-0" {
        return Some(true);
    }
    if !exponent && !integer && canonical_decimal(src.get(first..point)?, src.get(point + 1..i)?) {
        return Some(true);
    }
    // One serde_json would refuse (out of range) must not pass, even unwritten.
    serde_json::from_slice::<serde_json::Number>(token).ok()?;
    Some(false)
}

/// Whether a decimal without exponent (`whole.fraction`, as the grammar checked it) is
/// what serde_json writes for the float it reads: the shortest digits that read back as
/// the same float, in positional notation. Up to 15 significant digits every decimal
/// reads back from its float, so the shortest are its own when the fraction does not end
/// in 0; positional notation is kept from 1e-5 up to 1e16.
fn canonical_decimal(whole: &[u8], fraction: &[u8]) -> bool {
    let significant = if whole == b"0" {
        let zeros = fraction.iter().take_while(|&&d| d == b'0').count();
        if zeros > 4 {
            return false;
        }
        fraction.len() - zeros
    } else {
        whole.len() + fraction.len()
    };
    significant <= 15 && fraction.last().is_some_and(|&d| d != b'0')
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

/// How many bytes at the start of `bytes` are [`PLAIN`] (and, with `ASCII`, below 0x80):
/// eight at a time, then one by one.
#[inline]
fn plain_run<const ASCII: bool>(bytes: &[u8]) -> usize {
    let mut done = 0;
    while let Some(eight) = bytes.get(done..).and_then(<[u8]>::first_chunk::<8>) {
        let word = u64::from_le_bytes(*eight);
        let flags = special_bytes(word) | if ASCII { word & HIGH_BITS } else { 0 };
        if flags != 0 {
            return done + flags.trailing_zeros() as usize / 8;
        }
        done += 8;
    }
    let rest = bytes.get(done..).unwrap_or_default();
    done + rest.iter().position(|&b| !PLAIN[usize::from(b)] || (ASCII && !b.is_ascii())).unwrap_or(rest.len())
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

/// A member of an object being written: its key's text and its value.
struct Member<'a> {
    prefix: u64,
    key: Key<'a>,
    content: Content,
    /// What of the value an allow-list keeps, when it does not keep it whole.
    tree: Option<&'a Tree>,
}

enum Key<'a> {
    /// As it was in the document: nothing to escape.
    Plain(&'a [u8]),
    /// Decoded from escapes.
    Decoded(String),
    /// A name from the configuration (`mapping`, `group`).
    Named(&'a str),
}

#[derive(Clone, Copy)]
enum Content {
    /// The value at this index of the tape.
    Tape(usize),
    /// The whole manipulated object of this source (under its `group`).
    Shaped(usize),
}

impl Key<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Key::Plain(text) => text,
            Key::Decoded(text) => text.as_bytes(),
            Key::Named(text) => text.as_bytes(),
        }
    }
}

impl<'a> Member<'a> {
    fn named(name: &'a str, content: Content) -> Self {
        Self { prefix: prefix(name.as_bytes()), key: Key::Named(name), content, tree: None }
    }

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

/// Sorts `members[from..]` by key and keeps the last of equal keys, as inserting them one
/// by one into a map would.
fn dedupe(members: &mut Vec<Member<'_>>, from: usize) -> Option<()> {
    // Stable: among equal keys the later member stays later.
    members.get_mut(from..)?.sort_by(Member::order);
    let mut kept = from;
    for i in from..members.len() {
        if members.get(i + 1).is_some_and(|next| members[i].order(next) == Ordering::Equal) {
            continue;
        }
        members.swap(kept, i);
        kept += 1;
    }
    members.truncate(kept);
    Some(())
}

/// The documents read onto one tape, with what to do to each.
struct Doc<'t, 'a> {
    tape: &'t [Item<'a>],
    sources: &'t [Source<'a>],
    /// Each source's object on the tape.
    roots: &'t [usize],
}

impl<'a> Doc<'_, 'a> {
    /// Collects the members of the object at `at`, or those `tree` allows (each with
    /// its own subtree unless the allow-list keeps it whole).
    fn gather(&self, at: usize, tree: Option<&'a Tree>, into: &mut Vec<Member<'a>>) -> Option<()> {
        let end = self.tape.get(at)?.next;
        let mut at = at + 1;
        while at < end {
            let key = self.tape.get(at)?;
            let (prefix, key) = match key.kind {
                Kind::Escaped => {
                    let decoded = decode_string(key.text)?;
                    (prefix(decoded.as_bytes()), Key::Decoded(decoded))
                }
                _ => (key.prefix, Key::Plain(key.text.get(1..key.text.len() - 1)?)),
            };
            let value = at + 1;
            at = self.tape.get(value)?.next;
            let tree = match tree {
                None => None,
                Some(tree) => match tree.child_bytes(key.bytes()) {
                    None => continue,
                    Some(sub) if sub.is_leaf() => None,
                    Some(sub) => Some(sub),
                },
            };
            into.push(Member { prefix, key, content: Content::Tape(value), tree });
        }
        Some(())
    }

    /// Collects the members of source `i`'s object after its `target`, `allow` and
    /// `mapping`: each key once, in no particular order.
    fn gather_shaped(&self, i: usize, into: &mut Vec<Member<'a>>) -> Option<()> {
        let plan = self.sources.get(i)?.plan;
        let Some(root) = self.target(*self.roots.get(i)?, plan.target)? else { return Some(()) };
        let from = into.len();
        self.gather(root, plan.allow, into)?;
        if plan.allow.is_none() && plan.mapping.is_empty() {
            // Repeated keys are settled when the object is written.
            return Some(());
        }
        dedupe(into, from)?;
        // A value the allow-list empties goes, before `mapping` looks for its key.
        let end = into.len();
        let mut kept = from;
        for m in from..end {
            let alive = match (into[m].tree, into[m].content) {
                (Some(tree), Content::Tape(value)) => self.survives(value, tree, into)?,
                _ => true,
            };
            if alive {
                into.swap(kept, m);
                kept += 1;
            }
        }
        into.truncate(kept);
        for (old, new) in plan.mapping {
            let find = |members: &[Member<'_>], key: &str| members.iter().position(|m| m.key.bytes() == key.as_bytes());
            let Some(mut at) = find(&into[from..], old) else { continue };
            if let Some(taken) = find(&into[from..], new).filter(|&t| t != at) {
                into.swap_remove(from + taken);
                if at == into.len() - from {
                    at = taken;
                }
            }
            let member = &mut into[from + at];
            member.prefix = prefix(new.as_bytes());
            member.key = Key::Named(new);
        }
        Some(())
    }

    /// The object `path` leads to from the object at `at` (the last of repeated keys
    /// counting), or `Some(None)` where something on the way is missing or not an object.
    fn target(&self, mut at: usize, path: &[Box<str>]) -> Option<Option<usize>> {
        for step in path {
            let end = self.tape.get(at)?.next;
            let mut found = None;
            let mut key = at + 1;
            while key < end {
                let item = self.tape.get(key)?;
                let matches = match item.kind {
                    Kind::Escaped => decode_string(item.text)? == **step,
                    _ => item.text.get(1..item.text.len() - 1)? == step.as_bytes(),
                };
                if matches {
                    found = Some(key + 1);
                }
                key = self.tape.get(key + 1)?.next;
            }
            match found.and_then(|v| Some((v, self.tape.get(v)?))) {
                Some((v, item)) if item.kind == Kind::Object => at = v,
                // An object without its parts on the tape: not read for descending.
                Some((_, item)) if item.kind == Kind::Canonical && item.text.first() == Some(&b'{') => return None,
                _ => return Some(None),
            }
        }
        Some(Some(at))
    }

    /// Whether anything of the value at `at` is left once `tree` prunes it: an object
    /// keeps what its allowed members keep, an array stays, anything else goes.
    fn survives(&self, at: usize, tree: &'a Tree, scratch: &mut Vec<Member<'a>>) -> Option<bool> {
        let item = self.tape.get(at)?;
        match item.kind {
            Kind::Object => {
                let from = scratch.len();
                self.gather(at, Some(tree), scratch)?;
                dedupe(scratch, from)?;
                let mut alive = false;
                for m in from..scratch.len() {
                    alive = match (scratch[m].tree, scratch[m].content) {
                        (Some(sub), Content::Tape(value)) => self.survives(value, sub, scratch)?,
                        _ => true,
                    };
                    if alive {
                        break;
                    }
                }
                scratch.truncate(from);
                Some(alive)
            }
            Kind::Array => Some(true),
            _ if matches!(item.text.first(), Some(b'{' | b'[')) => None,
            _ => Some(false),
        }
    }

    /// Writes `members[from..]` as one object: sorted by key, the last of equal keys
    /// kept, a member an allow-list empties left out.
    fn write_members(&self, members: &mut Vec<Member<'a>>, from: usize, out: &mut Vec<u8>) -> Option<()> {
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
            let mark = out.len();
            if !first {
                out.push(b',');
            }
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
                Key::Named(text) => {
                    write_string(text, out);
                    out.push(b':');
                }
            }
            let kept = match (member.content, member.tree) {
                (Content::Tape(value), None) => {
                    self.write_value(value, members, out)?;
                    true
                }
                (Content::Tape(value), Some(tree)) => self.write_pruned(value, tree, members, out)?,
                (Content::Shaped(source), _) => {
                    self.write_shaped(source, members, out)?;
                    true
                }
            };
            if kept {
                first = false;
            } else {
                out.truncate(mark);
            }
        }
        out.push(b'}');
        Some(())
    }

    /// Writes source `i`'s object as its plan leaves it.
    fn write_shaped(&self, i: usize, members: &mut Vec<Member<'a>>, out: &mut Vec<u8>) -> Option<()> {
        let plan = self.sources.get(i)?.plan;
        let root = self.tape.get(*self.roots.get(i)?)?;
        if root.whole && plan.target.is_empty() && plan.allow.is_none() && plan.mapping.is_empty() {
            out.extend_from_slice(root.text);
            return Some(());
        }
        let from = members.len();
        self.gather_shaped(i, members)?;
        self.write_members(members, from, out)?;
        members.truncate(from);
        Some(())
    }

    /// Writes the value at `at` on the tape as serde_json writes the value it would decode.
    fn write_value(&self, at: usize, members: &mut Vec<Member<'a>>, out: &mut Vec<u8>) -> Option<()> {
        let item = *self.tape.get(at)?;
        if item.whole {
            out.extend_from_slice(item.text);
            return Some(());
        }
        match item.kind {
            Kind::Canonical => out.extend_from_slice(item.text),
            // Checked by the parser: decoding cannot fail.
            Kind::Escaped => write_string(&decode_string(item.text)?, out),
            Kind::Number => write_number(item.text, out)?,
            Kind::Array => self.write_items(at, None, members, out)?,
            Kind::Object => self.write_allowed(at, None, members, out)?,
        }
        Some(())
    }

    /// Writes what `tree` keeps of the value at `at`: an object's allowed members (each
    /// pruned in turn), an array with its objects pruned, nothing for anything else.
    /// Whether it kept anything: an object left empty, or a scalar, is not kept, and
    /// the caller takes back what it wrote.
    fn write_pruned(
        &self,
        at: usize,
        tree: &'a Tree,
        members: &mut Vec<Member<'a>>,
        out: &mut Vec<u8>,
    ) -> Option<bool> {
        let item = *self.tape.get(at)?;
        match item.kind {
            Kind::Object => {
                let start = out.len();
                self.write_allowed(at, Some(tree), members, out)?;
                Some(out.len() > start + 2)
            }
            Kind::Array => {
                self.write_items(at, Some(tree), members, out)?;
                Some(true)
            }
            // A container without its parts on the tape: not read for pruning.
            _ if matches!(item.text.first(), Some(b'{' | b'[')) => None,
            _ => Some(false),
        }
    }

    /// Writes the members of the object at `at`, or those `tree` allows.
    fn write_allowed(
        &self,
        at: usize,
        tree: Option<&'a Tree>,
        members: &mut Vec<Member<'a>>,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        let from = members.len();
        self.gather(at, tree, members)?;
        self.write_members(members, from, out)?;
        members.truncate(from);
        Some(())
    }

    /// Writes the array at `at`; under `tree`, an object in it is pruned (and kept even
    /// when nothing in it is allowed), anything else written whole.
    fn write_items(
        &self,
        at: usize,
        tree: Option<&'a Tree>,
        members: &mut Vec<Member<'a>>,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        let end = self.tape.get(at)?.next;
        out.push(b'[');
        let mut part = at + 1;
        while part < end {
            if part > at + 1 {
                out.push(b',');
            }
            match tree {
                Some(tree) if self.tape.get(part)?.kind == Kind::Object => {
                    self.write_allowed(part, Some(tree), members, out)?;
                }
                _ => self.write_value(part, members, out)?,
            }
            part = self.tape.get(part)?.next;
        }
        out.push(b']');
        Some(())
    }
}

/// A string token's text, decoded by serde_json (escapes, surrogate pairs and all).
fn decode_string(token: &[u8]) -> Option<String> {
    serde_json::from_slice::<String>(token).ok()
}

/// A string as serde_json writes it: only `"`, `\\` and control characters escaped.
fn write_string(text: &str, out: &mut Vec<u8>) {
    if plain_run::<false>(text.as_bytes()) == text.len() {
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
        let sources: Vec<Source<'_>> = docs.iter().map(|&body| Source { body, plan: Plan::default() }).collect();
        let mut out = Vec::new();
        merge(&sources, &mut out).map(|()| out)
    }

    #[test]
    fn a_thread_keeps_its_lists_from_one_merge_to_the_next() {
        let doc = br#"{"b": {"y": 1, "x": [1, 2]}, "a": "\u00e9", "c": 3}"#;
        let first = direct(&[doc]).unwrap();
        let kept = SCRATCH.take();
        let sizes = [kept.tape.capacity(), kept.frames.capacity(), kept.members.capacity(), kept.roots.capacity()];
        assert!(sizes.iter().all(|&n| n > 0), "every list kept its storage: {sizes:?}");
        assert!(kept.tape.is_empty() && kept.members.is_empty(), "and nothing of the last documents");
        SCRATCH.set(kept);
        assert_eq!(direct(&[doc]).unwrap(), first, "the kept lists serve the next merge alike");
        // A failed merge leaves nothing behind either.
        assert!(direct(&[br#"{"a": [1, }"#]).is_none());
        assert_eq!(direct(&[doc]).unwrap(), first);
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

        // Text beyond ASCII, in keys and values, is checked where it is read and kept.
        let text = "{\"ü\": \"日本\", \"a\": \"é\"}".as_bytes();
        assert_eq!(direct(&[text]).as_deref(), Some("{\"a\":\"é\",\"ü\":\"日本\"}".as_bytes()));
        assert_eq!(direct(&[text]), general(&[text]));
    }

    #[test]
    fn anything_unusual_is_left_to_the_general_path() {
        for doc in [
            &b"[1]"[..],
            b"{\"a\": 1} x",
            b"{\"a\": 01}",
            b"{\"a\": \"\x01\"}",
            b"{\"a\": \"\xff\"}",
            b"{\"a\": \"\xc3\xa9\xff\"}",
            b"{\"\xc3\": 1}",
            b"{\"a\": 1\xc3\xa9}",
            b"{\"a\": 1}\xc3\xa9",
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

    #[test]
    fn decimals_are_kept_as_they_come_only_where_serde_json_writes_them_so() {
        let kept = ["97.5", "-0.5", "0.1", "0.0001", "0.00001", "0.000012", "12345678901234.5", "99999999999999.9"];
        let rewritten = [
            "1.50",
            "2.0",
            "0.0",
            "-0.0",
            "0.000001",
            "123456789012345.5",
            "999999999999999.9",
            "1234567890123456.5",
            "0.30000000000000004",
            "0.1234567890123456",
            "5e-324",
            "1.5e2",
        ];
        for (numbers, canonical) in [(&kept[..], true), (&rewritten[..], false)] {
            for number in numbers {
                let mut at = 0;
                assert_eq!(super::number(number.as_bytes(), &mut at), Some(canonical), "{number}");
                let doc = format!(r#"{{"n":{number}}}"#);
                let out = direct(&[doc.as_bytes()]).unwrap();
                assert_eq!(Some(out.clone()), general(&[doc.as_bytes()]), "{number}");
                if canonical {
                    assert_eq!(out, doc.as_bytes());
                }
            }
        }
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

    /// An object whose top-level keys are single letters.
    fn small_object() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::vec(("[a-d]", value()), 0..6).prop_map(|m| m.into_iter().collect())
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

    fn shape(backend: Value) -> crate::proxy::shape::Shape {
        let mut backend = backend;
        backend["url_pattern"] = "/".into();
        let text = serde_json::json!({"version": 3, "host": ["http://b"], "endpoints": [{"endpoint": "/", "backend": [backend]}]});
        let service = crate::config::parse(&text.to_string(), crate::config::Format::Json, |_| None).service;
        crate::proxy::shape::Shape::compile(&service.expect("valid config").endpoints[0].backends[0])
    }

    /// What the general path gives for manipulated documents: decode each, manipulate it,
    /// extend in order, encode.
    fn general_shaped(docs: &[(&[u8], &crate::proxy::shape::Shape)]) -> Option<Vec<u8>> {
        let mut merged = Map::new();
        for (doc, shape) in docs {
            match serde_json::from_slice::<Value>(doc).ok()? {
                Value::Object(m) => merged.extend(shape.apply(m)),
                _ => return None,
            }
        }
        serde_json::to_vec(&merged).ok()
    }

    fn direct_shaped(docs: &[(&[u8], &crate::proxy::shape::Shape)]) -> Option<Vec<u8>> {
        let sources: Vec<Source<'_>> =
            docs.iter().map(|&(body, shape)| Some(Source { body, plan: shape.plan()? })).collect::<Option<_>>()?;
        let mut out = Vec::new();
        merge(&sources, &mut out).map(|()| out)
    }

    #[test]
    fn manipulates_like_the_general_path() {
        let profile = br#"{"profile_id":"p-1","display_name":"Jane","address":{"street":"x","city":"W","country":"US"},
            "roles":["a","b"],"preferences":{"theme":"dark","lang":"en"},"social":[{"n":1}],"id":"old"}"#;
        let shaped = shape(serde_json::json!({
            "allow": ["profile_id", "display_name", "address.city", "address.country", "roles", "preferences.theme", "id"],
            "mapping": {"profile_id": "id", "display_name": "name"},
            "group": "profile"}));
        let out = direct_shaped(&[(profile, &shaped)]).unwrap();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"{"profile":{"address":{"city":"W","country":"US"},"id":"p-1","name":"Jane","preferences":{"theme":"dark"},"roles":["a","b"]}}"#
        );
        assert_eq!(Some(out), general_shaped(&[(profile, &shaped)]));

        // Repeats: the last value of a key counts, even when the allow-list then drops it,
        // and a key it empties is gone before `mapping` looks for it.
        let repeats = br#"{"a":{"x":1},"a":{"y":2},"b":{"x":1},"c":1,"c":{"x":[{"x":1,"y":2},{"y":3},4,[{"y":5}]]}}"#;
        let pruned = shape(serde_json::json!({"allow": ["a.x", "b.y", "c.x.x", "d"], "mapping": {"a": "d", "b": "d"}}));
        assert_eq!(
            String::from_utf8(direct_shaped(&[(repeats, &pruned)]).unwrap()).unwrap(),
            r#"{"c":{"x":[{"x":1},{},4,[{"y":5}]]}}"#
        );
        assert_eq!(direct_shaped(&[(repeats, &pruned)]), general_shaped(&[(repeats, &pruned)]));

        // A renamed key replaces one already there, whichever comes first.
        let renamed = shape(serde_json::json!({"mapping": {"a": "z", "y": "b"}}));
        let doc = br#"{"a":1,"b":2,"y":3,"z":4}"#;
        assert_eq!(String::from_utf8(direct_shaped(&[(doc, &renamed)]).unwrap()).unwrap(), r#"{"b":3,"z":1}"#);
        assert_eq!(direct_shaped(&[(doc, &renamed)]), general_shaped(&[(doc, &renamed)]));

        // `target` through repeated and escaped keys; a missing one leaves nothing.
        let nested = br#"{"data":{"in":{"k":1}},"data":{"in":{"k":2,"j":[1]}}}"#;
        let targeted = shape(serde_json::json!({"target": "data.in", "mapping": {"k": "key"}}));
        assert_eq!(String::from_utf8(direct_shaped(&[(nested, &targeted)]).unwrap()).unwrap(), r#"{"j":[1],"key":2}"#);
        let missing = shape(serde_json::json!({"target": "data.out", "group": "g"}));
        assert_eq!(String::from_utf8(direct_shaped(&[(nested, &missing)]).unwrap()).unwrap(), r#"{"g":{}}"#);

        // Several backends: a group and a plain document colliding, the later one winning.
        let plain = shape(serde_json::json!({}));
        let grouped = shape(serde_json::json!({"group": "a", "allow": ["k"]}));
        let docs: [(&[u8], _); 2] = [(br#"{"k":1,"z":2}"#, &grouped), (br#"{"a":"plain","b":1}"#, &plain)];
        assert_eq!(String::from_utf8(direct_shaped(&docs).unwrap()).unwrap(), r#"{"a":"plain","b":1}"#);
        let docs: [(&[u8], _); 2] = [docs[1], docs[0]];
        assert_eq!(String::from_utf8(direct_shaped(&docs).unwrap()).unwrap(), r#"{"a":{"k":1},"b":1}"#);

        // `deny` and `flatmap_filter` are left to the general path.
        assert!(shape(serde_json::json!({"deny": ["a"]})).plan().is_none());
    }

    /// A manipulation with the key alphabet of [`small_object`], so that its paths and
    /// renames hit something.
    fn manipulation() -> impl Strategy<Value = Value> {
        let path = "[a-d](\\.[a-d]{1,2}){0,2}";
        (
            prop::option::of("[a-d](\\.[a-d]{1,2})?"),
            prop::option::of(prop::collection::vec(path, 1..4)),
            prop::collection::btree_map("[a-d]", "[a-d]", 0..3),
            prop::option::of("[a-f]"),
        )
            .prop_map(|(target, allow, mapping, group)| {
                let mut b = serde_json::json!({"mapping": mapping});
                if let Some(t) = target {
                    b["target"] = t.into();
                }
                if let Some(a) = allow {
                    b["allow"] = a.into();
                }
                if let Some(g) = group {
                    b["group"] = g.into();
                }
                b
            })
    }

    proptest! {
        /// Manipulated and merged from the bytes, equal to decoding, manipulating,
        /// merging and encoding, however the documents are written.
        #[test]
        fn manipulation_equals_the_general_path(
            docs in prop::collection::vec((small_object(), manipulation()), 1..4),
            flips in any::<u32>(),
            pretty in any::<bool>(),
        ) {
            let shapes: Vec<_> = docs.iter().map(|(_, m)| shape(m.clone())).collect();
            let texts: Vec<Vec<u8>> = docs
                .iter()
                .map(|(d, _)| {
                    let d = Value::Object(d.clone());
                    if pretty { serde_json::to_vec_pretty(&d).unwrap() } else { unordered(&d, flips).into_bytes() }
                })
                .collect();
            let pairs: Vec<(&[u8], &crate::proxy::shape::Shape)> = texts.iter().map(Vec::as_slice).zip(shapes.iter()).collect();
            prop_assert_eq!(direct_shaped(&pairs), general_shaped(&pairs));
        }

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
            prop_assert_eq!(plain_run::<false>(&bytes), naive);
            let ascii = bytes.iter().take_while(|&&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\').count();
            prop_assert_eq!(plain_run::<true>(&bytes), ascii);
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
