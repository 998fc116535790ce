//! Response compression (`weir/compression`, Weir's own namespace): picks brotli or
//! gzip from `Accept-Encoding` and compresses bodies held in memory.
//!
//! * `algorithms`: which of `"br"` and `"gzip"` may be used (default both).
//! * `min_size`: smaller bodies are sent as they are (default 1024 bytes).
//! * `level`: 0 to 11; brotli uses it as its quality, gzip caps it at 9.
//! * `content_types`: media types worth compressing, as `type/subtype`, `type/*` or a
//!   structured-syntax suffix such as `+json` (default: JSON, XML, YAML and text).
//!
//! The runtime decides whether a response may be compressed at all (not for streamed
//! `no-op` bodies, not when the backend already set `Content-Encoding`) and adds
//! `Vary: Accept-Encoding`.

use std::io::Write;

use bytes::Bytes;
use flate2::write::GzEncoder;
use http::HeaderValue;
use serde_json::Value;

use super::Problems;
use super::settings::Settings;

/// The `extra_config` namespace this component reads.
pub const NAMESPACE: &str = "weir/compression";

/// Every key of the namespace.
pub const KEYS: &[&str] = &["algorithms", "min_size", "level", "content_types"];

/// Below about a kilobyte the saving is a few hundred bytes at best, which fits in the
/// same TCP segment anyway, while compressing still costs CPU and an allocation.
const DEFAULT_MIN_SIZE: u64 = 1024;
/// flate2's default: the usual zlib trade-off between ratio and speed.
const DEFAULT_GZIP_LEVEL: u32 = 6;
/// At quality 4 brotli compresses API payloads better than gzip -6 at similar speed;
/// the top qualities are far too slow for compressing on the request path.
const DEFAULT_BROTLI_QUALITY: u32 = 4;
/// The textual formats Weir's encoders produce and APIs commonly return.
const DEFAULT_CONTENT_TYPES: &[&str] = &[
    "application/json",
    "+json",
    "application/xml",
    "text/xml",
    "+xml",
    "application/x-yaml",
    "application/yaml",
    "text/yaml",
    "text/plain",
    "text/html",
    "text/css",
    "text/csv",
    "text/javascript",
    "application/javascript",
];
/// Brotli's smallest and largest sliding windows, as powers of two.
const BROTLI_WINDOW_BITS: (u32, u32) = (10, 22);

/// A content coding Weir can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Brotli,
}

impl Encoding {
    /// The `Content-Encoding` value for this coding.
    pub fn header_value(self) -> HeaderValue {
        match self {
            Encoding::Gzip => HeaderValue::from_static("gzip"),
            Encoding::Brotli => HeaderValue::from_static("br"),
        }
    }
}

/// A compiled `weir/compression` policy.
#[derive(Debug)]
pub struct Compression {
    gzip: bool,
    brotli: bool,
    min_size: usize,
    gzip_level: u32,
    brotli_quality: u32,
    content_types: Vec<MediaRange>,
}

/// One entry of `content_types`, lower case.
#[derive(Debug, PartialEq, Eq)]
enum MediaRange {
    /// `application/json`
    Exact(Box<str>),
    /// `text/*`, kept as `text/`
    Type(Box<str>),
    /// `+json`
    Suffix(Box<str>),
}

impl Compression {
    /// Compiles the namespace value found at `path`, reporting every bad key.
    pub fn compile(v: &Value, path: &str) -> Result<Self, Problems> {
        let mut s = Settings::new(v, path);
        let (gzip, brotli) = algorithms(&mut s);
        let min_size = s.uint("min_size", 0, u32::MAX.into()).unwrap_or(DEFAULT_MIN_SIZE);
        let level = s.uint("level", 0, 11).and_then(|l| u32::try_from(l).ok());
        let content_types = content_types(&mut s);
        s.finish(Compression {
            gzip,
            brotli,
            min_size: usize::try_from(min_size).unwrap_or(usize::MAX),
            gzip_level: level.map_or(DEFAULT_GZIP_LEVEL, |l| l.min(9)),
            brotli_quality: level.unwrap_or(DEFAULT_BROTLI_QUALITY),
            content_types,
        })
    }

    /// The coding to use for a client's `Accept-Encoding`, by q-value (`q=0` refuses a
    /// coding, `*` stands for any coding not named); brotli wins a tie. `None` when
    /// neither enabled coding is acceptable.
    pub fn negotiate(&self, accept_encoding: Option<&HeaderValue>) -> Option<Encoding> {
        let header = accept_encoding?.to_str().ok()?;
        let (mut br, mut gzip, mut any) = (None, None, None);
        for item in header.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            // An item with a malformed weight is ignored rather than guessed at.
            let Some(q) = weight(parts) else { continue };
            if coding.eq_ignore_ascii_case("br") {
                br = Some(q);
            } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(q);
            } else if coding == "*" {
                any = Some(q);
            }
        }
        let br = if self.brotli { br.or(any).unwrap_or(0) } else { 0 };
        let gzip = if self.gzip { gzip.or(any).unwrap_or(0) } else { 0 };
        match (br, gzip) {
            (0, 0) => None,
            (br, gzip) if br >= gzip => Some(Encoding::Brotli),
            _ => Some(Encoding::Gzip),
        }
    }

    /// The body compressed with `encoding`, or `None` when it should be sent as it is:
    /// shorter than `min_size`, of a type not in `content_types` (or untyped), or not
    /// made smaller by compressing (already compressed data).
    pub fn compress(&self, encoding: Encoding, content_type: Option<&HeaderValue>, body: &[u8]) -> Option<Bytes> {
        if body.len() < self.min_size || !self.compressible(content_type?) {
            return None;
        }
        let out = match encoding {
            Encoding::Gzip if self.gzip => gzip(body, self.gzip_level),
            Encoding::Brotli if self.brotli => brotli(body, self.brotli_quality),
            _ => return None,
        };
        out.ok().filter(|out| out.len() < body.len()).map(Bytes::from)
    }

    fn compressible(&self, content_type: &HeaderValue) -> bool {
        let Ok(text) = content_type.to_str() else { return false };
        let media = text.split(';').next().unwrap_or("").trim().as_bytes();
        self.content_types.iter().any(|range| match range {
            MediaRange::Exact(m) => media.eq_ignore_ascii_case(m.as_bytes()),
            MediaRange::Type(prefix) => {
                media.len() > prefix.len() && media[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            }
            MediaRange::Suffix(suffix) => {
                media.len() > suffix.len()
                    && media[media.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            }
        })
    }
}

fn gzip(body: &[u8], level: u32) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 2), flate2::Compression::new(level));
    encoder.write_all(body)?;
    encoder.finish()
}

fn brotli(body: &[u8], quality: u32) -> std::io::Result<Vec<u8>> {
    // A window just large enough for the body keeps the encoder's memory small
    // without costing any ratio: nothing further back than the body's start exists.
    let needed = usize::BITS - body.len().saturating_sub(1).leading_zeros();
    let lgwin = needed.clamp(BROTLI_WINDOW_BITS.0, BROTLI_WINDOW_BITS.1);
    let params = brotli::enc::BrotliEncoderParams {
        quality: i32::try_from(quality).unwrap_or(DEFAULT_BROTLI_QUALITY as i32),
        lgwin: i32::try_from(lgwin).unwrap_or(22),
        size_hint: body.len(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(body.len() / 2);
    brotli::BrotliCompress(&mut &body[..], &mut out, &params)?;
    Ok(out)
}

/// The q-value of one `Accept-Encoding` item in thousandths (1.0 when absent), or
/// `None` when it is malformed.
fn weight<'a>(params: impl Iterator<Item = &'a str>) -> Option<u16> {
    let mut q = 1000;
    for param in params {
        if let Some((name, value)) = param.split_once('=')
            && name.trim().eq_ignore_ascii_case("q")
        {
            q = qvalue(value.trim())?;
        }
    }
    Some(q)
}

/// RFC 9110's `qvalue`: `0`, `0.5`, `0.125`, `1`, `1.000`.
fn qvalue(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths =
        frac.bytes().chain(std::iter::repeat(b'0')).take(3).fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

fn algorithms(s: &mut Settings<'_>) -> (bool, bool) {
    let Some(list) = s.strings("algorithms") else { return (true, true) };
    let (mut gzip, mut brotli) = (false, false);
    for (i, name) in list {
        match name.trim().to_ascii_lowercase().as_str() {
            "gzip" => gzip = true,
            "br" => brotli = true,
            _ => s.error_at(s.item("algorithms", i), format!("{name:?} is not supported; use \"br\" or \"gzip\"")),
        }
    }
    (gzip, brotli)
}

fn content_types(s: &mut Settings<'_>) -> Vec<MediaRange> {
    let Some(list) = s.strings("content_types") else {
        return DEFAULT_CONTENT_TYPES.iter().filter_map(|t| MediaRange::parse(t)).collect();
    };
    let mut ranges = Vec::with_capacity(list.len());
    for (i, text) in list {
        match MediaRange::parse(text) {
            Some(range) => ranges.push(range),
            None => s.error_at(
                s.item("content_types", i),
                format!("{text:?} is not a media type like \"application/json\", \"text/*\" or \"+json\""),
            ),
        }
    }
    ranges
}

impl MediaRange {
    fn parse(text: &str) -> Option<MediaRange> {
        let text = text.trim().to_ascii_lowercase();
        let is_token =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
        if let Some(suffix) = text.strip_prefix('+') {
            return is_token(suffix).then(|| MediaRange::Suffix(text.as_str().into()));
        }
        let (kind, sub) = text.split_once('/')?;
        if !is_token(kind) {
            return None;
        }
        if sub == "*" {
            return Some(MediaRange::Type(format!("{kind}/").into()));
        }
        is_token(sub).then(|| MediaRange::Exact(text.as_str().into()))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use serde_json::json;

    use super::*;

    fn compression(v: Value) -> Compression {
        Compression::compile(&v, "extra_config.weir/compression").unwrap()
    }

    fn negotiate(c: &Compression, accept: &str) -> Option<Encoding> {
        c.negotiate(Some(&HeaderValue::from_str(accept).unwrap()))
    }

    /// A JSON body of `n` records, repetitive as API payloads are.
    fn json_body(n: usize) -> Vec<u8> {
        let items: Vec<Value> =
            (0..n).map(|i| json!({"id": i, "name": format!("user {i}"), "active": i % 3 == 0})).collect();
        serde_json::to_vec(&items).unwrap()
    }

    const JSON: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");

    #[test]
    fn negotiation_follows_q_values_and_prefers_brotli() {
        let c = compression(json!({}));
        assert_eq!(c.negotiate(None), None);
        assert_eq!(negotiate(&c, "gzip"), Some(Encoding::Gzip));
        assert_eq!(negotiate(&c, "gzip, deflate, br"), Some(Encoding::Brotli), "a tie goes to brotli");
        assert_eq!(negotiate(&c, "br;q=0.5, gzip"), Some(Encoding::Gzip));
        assert_eq!(negotiate(&c, "br;q=0.9, GZIP;Q=0.8"), Some(Encoding::Brotli));
        assert_eq!(negotiate(&c, "br;q=0, gzip;q=0.000"), None, "q=0 refuses");
        assert_eq!(negotiate(&c, "*"), Some(Encoding::Brotli));
        assert_eq!(negotiate(&c, "*;q=0.5, br;q=0"), Some(Encoding::Gzip), "* covers only codings not named");
        assert_eq!(negotiate(&c, "identity"), None);
        assert_eq!(negotiate(&c, ""), None);
        assert_eq!(negotiate(&c, "x-gzip"), Some(Encoding::Gzip));
        assert_eq!(negotiate(&c, "br;q=1.5, gzip;q=0.2"), Some(Encoding::Gzip), "a malformed weight drops the item");
        assert_eq!(negotiate(&c, "br;q=high"), None);
        assert_eq!(negotiate(&c, "br ; q=1.000"), Some(Encoding::Brotli));

        let gzip_only = compression(json!({"algorithms": ["gzip"]}));
        assert_eq!(negotiate(&gzip_only, "br"), None);
        assert_eq!(negotiate(&gzip_only, "br, gzip;q=0.1"), Some(Encoding::Gzip));
        let none = compression(json!({"algorithms": []}));
        assert_eq!(negotiate(&none, "br, gzip"), None);
    }

    #[test]
    fn gzip_round_trips() {
        let c = compression(json!({}));
        let body = json_body(200);
        let packed = c.compress(Encoding::Gzip, Some(&JSON), &body).expect("compressed");
        assert!(packed.len() < body.len() / 3, "{} of {}", packed.len(), body.len());
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(&packed[..]).read_to_end(&mut unpacked).unwrap();
        assert_eq!(unpacked, body);
        assert_eq!(Encoding::Gzip.header_value(), "gzip");
    }

    #[test]
    fn brotli_round_trips_at_every_level() {
        let body = json_body(200);
        for level in [0, 4, 11] {
            let c = compression(json!({"level": level}));
            let packed = c.compress(Encoding::Brotli, Some(&JSON), &body).expect("compressed");
            let mut unpacked = Vec::new();
            brotli::BrotliDecompress(&mut &packed[..], &mut unpacked).unwrap();
            assert_eq!(unpacked, body, "level {level}");
            let gz = c.compress(Encoding::Gzip, Some(&JSON), &body);
            if level == 0 {
                assert!(gz.is_none(), "gzip level 0 only stores: larger, so left alone");
                continue;
            }
            let gz = gz.expect("gzip, level capped at 9");
            let mut unpacked = Vec::new();
            flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut unpacked).unwrap();
            assert_eq!(unpacked, body, "gzip level {level}");
        }
        assert_eq!(Encoding::Brotli.header_value(), "br");
    }

    #[test]
    fn small_untyped_or_opaque_bodies_are_left_alone() {
        let c = compression(json!({"min_size": 100}));
        let body = json_body(20);
        assert!(c.compress(Encoding::Gzip, Some(&JSON), &body[..99]).is_none(), "below min_size");
        assert!(c.compress(Encoding::Gzip, None, &body).is_none(), "no content type");
        let png = HeaderValue::from_static("image/png");
        assert!(c.compress(Encoding::Gzip, Some(&png), &body).is_none());
        for typed in ["application/problem+json", "text/plain", "APPLICATION/JSON", "application/x-yaml; charset=utf-8"]
        {
            let ct = HeaderValue::from_static(typed);
            assert!(c.compress(Encoding::Brotli, Some(&ct), &body).is_some(), "{typed}");
        }
        // Data that does not shrink (here pseudo-random bytes) is sent as it is.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect();
        assert!(c.compress(Encoding::Gzip, Some(&JSON), &noise).is_none());
        assert!(c.compress(Encoding::Brotli, Some(&JSON), &noise).is_none());
        // A coding the config did not enable is never produced.
        let gzip_only = compression(json!({"algorithms": ["gzip"], "min_size": 0}));
        assert!(gzip_only.compress(Encoding::Brotli, Some(&JSON), &body).is_none());
    }

    #[test]
    fn configured_content_types_replace_the_defaults() {
        let c = compression(json!({"content_types": ["text/*", "+csv", "application/vnd.api+json"], "min_size": 0}));
        let body = json_body(20);
        let accepts = |t: &'static str| c.compress(Encoding::Gzip, Some(&HeaderValue::from_static(t)), &body).is_some();
        assert!(accepts("text/anything"));
        assert!(accepts("application/foo+csv"));
        assert!(accepts("application/vnd.api+json"));
        assert!(!accepts("application/json"));
        assert!(!accepts("text/"), "text/* needs a subtype");
    }

    #[test]
    fn reports_every_bad_key() {
        let v = json!({
            "algorithms": ["br", "deflate", 1],
            "min_size": "1k",
            "level": 12,
            "content_types": ["application/json", "json", "text/", "+"],
        });
        let problems = Compression::compile(&v, "extra_config.weir/compression").unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let p = "extra_config.weir/compression";
        let media = "is not a media type like \"application/json\", \"text/*\" or \"+json\"";
        assert_eq!(
            text,
            [
                format!("{p}.algorithms[2]: must be a string, found a number"),
                format!("{p}.algorithms[1]: \"deflate\" is not supported; use \"br\" or \"gzip\""),
                format!("{p}.min_size: must be a whole number from 0 to 4294967295, found a string"),
                format!("{p}.level: 12 is outside the range 0 to 11"),
                format!("{p}.content_types[1]: \"json\" {media}"),
                format!("{p}.content_types[2]: \"text/\" {media}"),
                format!("{p}.content_types[3]: \"+\" {media}"),
            ]
        );
    }

    #[test]
    fn q_values() {
        assert_eq!(qvalue("0"), Some(0));
        assert_eq!(qvalue("0.5"), Some(500));
        assert_eq!(qvalue("0.125"), Some(125));
        assert_eq!(qvalue("1"), Some(1000));
        assert_eq!(qvalue("1.000"), Some(1000));
        for bad in ["1.001", "0.1234", "2", "", ".5", "0.a", "-0"] {
            assert_eq!(qvalue(bad), None, "{bad:?}");
        }
    }
}
