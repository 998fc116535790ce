//! Client IP filtering (`weir/ip-filter`, Weir's own namespace).
//!
//! * `allow` and `deny` list IPv4/IPv6 addresses or CIDR networks. `deny` wins; a
//!   non-empty `allow` admits only what it lists.
//! * IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack listener reports
//!   for IPv4 clients) are matched as IPv4, and so are mapped networks.
//! * `client_ip_headers` (e.g. `X-Forwarded-For`) are read only when the peer is in
//!   `trusted_proxies`. Each header is walked from the right, past the trusted proxies,
//!   to the first address no trusted proxy vouches for: the left-most entry is whatever
//!   the client wrote, so it is used only when every hop after it is trusted (this is
//!   gin's `ClientIP`, which KrakenD uses). An unparsable entry stops the walk.
//!
//! The CIDR matching is written here: it is a mask and a compare, and the crates that
//! offer it bring far more than this needs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::{HeaderMap, HeaderName};
use serde_json::Value;

use super::Problems;
use super::settings::Settings;

/// The `extra_config` namespace this component reads.
pub const NAMESPACE: &str = "weir/ip-filter";

/// Every key of the namespace.
pub const KEYS: &[&str] = &["allow", "deny", "client_ip_headers", "trusted_proxies"];

/// An IPv4 address in dotted decimal, written without the formatter: the client's address
/// is written on every request that forwards it or keys a rate limit by it, and the
/// formatter cost ~900 instructions for it.
pub struct Ipv4Text {
    bytes: [u8; 15],
    len: usize,
}

impl Ipv4Text {
    pub fn new(ip: Ipv4Addr) -> Self {
        let mut bytes = [0u8; 15];
        let mut len = 0;
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                bytes[len] = b'.';
                len += 1;
            }
            if octet >= 100 {
                bytes[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                bytes[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            bytes[len] = b'0' + octet % 10;
            len += 1;
        }
        Self { bytes, len }
    }

    pub fn as_str(&self) -> &str {
        // Digits and dots only.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

/// A compiled `weir/ip-filter` policy.
#[derive(Debug)]
pub struct IpFilter {
    allow: Vec<Net>,
    deny: Vec<Net>,
    client_ip_headers: Vec<HeaderName>,
    trusted_proxies: Vec<Net>,
}

/// A CIDR network, its address already masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Net {
    V4 { network: u32, mask: u32 },
    V6 { network: u128, mask: u128 },
}

impl IpFilter {
    /// Compiles the namespace value found at `path`, reporting every bad key.
    pub fn compile(v: &Value, path: &str) -> Result<Self, Problems> {
        let mut s = Settings::new(v, path);
        let allow = nets(&mut s, "allow");
        let deny = nets(&mut s, "deny");
        let trusted_proxies = nets(&mut s, "trusted_proxies");
        let mut client_ip_headers = Vec::new();
        for (i, name) in s.strings("client_ip_headers").unwrap_or_default() {
            match HeaderName::from_bytes(name.trim().as_bytes()) {
                Ok(h) => client_ip_headers.push(h),
                Err(_) => s.error_at(s.item("client_ip_headers", i), format!("{name:?} is not a header name")),
            }
        }
        s.finish(IpFilter { allow, deny, client_ip_headers, trusted_proxies })
    }

    /// The client's address: `peer` itself, unless `peer` is a trusted proxy and one
    /// of `client_ip_headers` names a client (see the module comment). IPv4-mapped
    /// addresses come back as IPv4.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if self.client_ip_headers.is_empty() || !self.trusted(peer) {
            return peer;
        }
        self.client_ip_headers.iter().find_map(|name| self.forwarded_client(headers, name)).unwrap_or(peer)
    }

    /// Whether `ip` may pass: not denied, and allowed when there is an allow list.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !self.deny.iter().any(|n| n.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(ip)))
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(ip))
    }

    /// Walks one header's entries (all its lines, in order) from the right.
    fn forwarded_client(&self, headers: &HeaderMap, name: &HeaderName) -> Option<IpAddr> {
        let mut leftmost = None;
        for line in headers.get_all(name).iter().rev() {
            let line = line.to_str().ok()?;
            for entry in line.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
                let ip = canonical(parse_entry(entry)?);
                if !self.trusted(ip) {
                    return Some(ip);
                }
                leftmost = Some(ip);
            }
        }
        leftmost
    }
}

impl Net {
    /// `10.0.0.0/8`, `2001:db8::/32`, `::ffff:10.0.0.0/104` or a single address.
    fn parse(text: &str) -> Result<Net, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => {
                if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("{text:?} has a malformed prefix length"));
                }
                (addr, Some(prefix.parse::<u32>().unwrap_or(u32::MAX)))
            }
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not an IP address or CIDR network"))?;
        match addr {
            IpAddr::V4(v4) => Net::v4(v4, prefix.unwrap_or(32)).ok_or_else(|| too_long(text, 32)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => match prefix.unwrap_or(128) {
                    p if p < 96 => {
                        Err(format!("{text:?} is an IPv4-mapped network: its prefix length must be 96 to 128"))
                    }
                    p => Net::v4(v4, p - 96).ok_or_else(|| too_long(text, 128)),
                },
                None => Net::v6(v6, prefix.unwrap_or(128)).ok_or_else(|| too_long(text, 128)),
            },
        }
    }

    fn v4(addr: Ipv4Addr, prefix: u32) -> Option<Net> {
        let mask = u32::MAX.checked_shl(32u32.checked_sub(prefix)?).unwrap_or(0);
        Some(Net::V4 { network: u32::from(addr) & mask, mask })
    }

    fn v6(addr: Ipv6Addr, prefix: u32) -> Option<Net> {
        let mask = u128::MAX.checked_shl(128u32.checked_sub(prefix)?).unwrap_or(0);
        Some(Net::V6 { network: u128::from(addr) & mask, mask })
    }

    /// `ip` must be canonical: an IPv6 network never holds an IPv4 address, as in Go.
    fn contains(self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Net::V4 { network, mask }, IpAddr::V4(v4)) => u32::from(v4) & mask == network,
            (Net::V6 { network, mask }, IpAddr::V6(v6)) => u128::from(v6) & mask == network,
            _ => false,
        }
    }
}

fn too_long(text: &str, max: u32) -> String {
    format!("{text:?} has a prefix length above {max}")
}

/// IPv4-mapped IPv6 addresses as the IPv4 addresses they stand for.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// A forwarded-for entry: a bare address, tolerating a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`) or brackets, which some proxies add.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

fn nets(s: &mut Settings<'_>, key: &str) -> Vec<Net> {
    let mut nets = Vec::new();
    for (i, text) in s.strings(key).unwrap_or_default() {
        match Net::parse(text) {
            Ok(n) => nets.push(n),
            Err(e) => s.error_at(s.item(key, i), e),
        }
    }
    nets
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use serde_json::json;

    use super::*;

    #[test]
    fn ipv4_text_is_what_the_formatter_writes() {
        for octets in [[0, 0, 0, 0], [127, 0, 0, 1], [10, 20, 30, 40], [255, 255, 255, 255], [1, 99, 100, 249]] {
            let ip = Ipv4Addr::from(octets);
            assert_eq!(Ipv4Text::new(ip).as_str(), ip.to_string());
        }
    }

    fn filter(v: Value) -> IpFilter {
        IpFilter::compile(&v, "extra_config.weir/ip-filter").unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let f = filter(json!({"allow": ["10.0.0.0/8", "2001:db8::/32"], "deny": ["10.1.0.0/16", "2001:db8:bad::1"]}));
        assert!(f.allows(ip("10.2.3.4")));
        assert!(!f.allows(ip("10.1.2.3")), "deny wins over a wider allow");
        assert!(!f.allows(ip("192.168.1.1")), "not in the allow list");
        assert!(f.allows(ip("2001:db8::42")));
        assert!(!f.allows(ip("2001:db8:bad::1")));
        assert!(f.allows(ip("2001:db8:bad::2")));
        assert!(!f.allows(ip("2001:db9::1")));

        let deny_only = filter(json!({"deny": ["203.0.113.7"]}));
        assert!(!deny_only.allows(ip("203.0.113.7")));
        assert!(deny_only.allows(ip("203.0.113.8")));
        assert!(filter(json!({})).allows(ip("::1")));
    }

    #[test]
    fn mapped_addresses_match_as_ipv4() {
        let f = filter(json!({"allow": ["192.168.0.0/16"], "deny": ["::ffff:192.168.9.0/120"]}));
        assert!(f.allows(ip("::ffff:192.168.1.1")));
        assert!(!f.allows(ip("::ffff:192.168.9.9")));
        assert!(!f.allows(ip("192.168.9.9")), "a mapped network holds plain IPv4 addresses");
        let everything_v6 = filter(json!({"deny": ["::/0"]}));
        assert!(everything_v6.allows(ip("10.0.0.1")), "an IPv6 network never holds IPv4, as in Go");
        assert!(!everything_v6.allows(ip("::1")));
    }

    #[test]
    fn prefix_edges() {
        let f = filter(json!({"allow": ["0.0.0.0/0"], "deny": ["10.0.0.5/32", "172.16.5.9/12"]}));
        assert!(f.allows(ip("8.8.8.8")));
        assert!(!f.allows(ip("10.0.0.5")));
        assert!(f.allows(ip("10.0.0.6")));
        assert!(!f.allows(ip("172.31.255.255")), "host bits of a network are ignored, as Go's ParseCIDR does");
        assert!(f.allows(ip("172.32.0.0")));
        assert!(!f.allows(ip("2001:db8::1")), "0.0.0.0/0 holds no IPv6 address");
    }

    #[test]
    fn forwarded_headers_only_from_trusted_proxies() {
        let f = filter(json!({"client_ip_headers": ["X-Forwarded-For"], "trusted_proxies": ["10.0.0.0/8"]}));
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(f.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        assert_eq!(f.client_ip(ip("198.51.100.1"), &h), ip("198.51.100.1"), "untrusted peers speak for themselves");
        assert_eq!(f.client_ip(ip("::ffff:10.0.0.1"), &h), ip("203.0.113.9"), "a mapped peer is trusted as IPv4");
        assert_eq!(f.client_ip(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
        assert_eq!(f.client_ip(ip("::ffff:198.51.100.1"), &HeaderMap::new()), ip("198.51.100.1"));

        let no_proxies = filter(json!({"client_ip_headers": ["X-Forwarded-For"]}));
        assert_eq!(no_proxies.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_chain_is_walked_from_the_right() {
        let f =
            filter(json!({"client_ip_headers": ["X-Real-IP", "X-Forwarded-For"], "trusted_proxies": ["10.0.0.0/8"]}));
        let peer = ip("10.0.0.1");
        // A client forging the left-most entry does not get to choose its address.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.0.0.2")]);
        assert_eq!(f.client_ip(peer, &h), ip("203.0.113.9"));
        // Repeated header lines are one list, in order.
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-for", "203.0.113.9, 10.0.0.2")]);
        assert_eq!(f.client_ip(peer, &h), ip("203.0.113.9"));
        // Only trusted hops: the left-most is the client.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.2")]);
        assert_eq!(f.client_ip(peer, &h), ip("10.9.9.9"));
        // Garbage stops the walk; the next header, then the peer, is used.
        let h = headers(&[("x-forwarded-for", "203.0.113.9, garbage, 10.0.0.2")]);
        assert_eq!(f.client_ip(peer, &h), peer);
        let h = headers(&[("x-real-ip", "not-an-ip"), ("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(f.client_ip(peer, &h), ip("198.51.100.7"));
        // Headers are tried in the configured order.
        let h = headers(&[("x-real-ip", "198.51.100.1"), ("x-forwarded-for", "198.51.100.2")]);
        assert_eq!(f.client_ip(peer, &h), ip("198.51.100.1"));
        // Ports and brackets are tolerated; mapped entries come back as IPv4.
        let h = headers(&[("x-forwarded-for", "[2001:db8::7]:443")]);
        assert_eq!(f.client_ip(peer, &h), ip("2001:db8::7"));
        let h = headers(&[("x-forwarded-for", "198.51.100.3:5000")]);
        assert_eq!(f.client_ip(peer, &h), ip("198.51.100.3"));
        let h = headers(&[("x-forwarded-for", "::ffff:198.51.100.4")]);
        assert_eq!(f.client_ip(peer, &h), ip("198.51.100.4"));
    }

    #[test]
    fn reports_every_bad_key() {
        let v = json!({
            "allow": ["10.0.0.0/8", "10.0.0.0/33", "nope", "2001:db8::/129"],
            "deny": ["10.0.0.0/", "::ffff:10.0.0.0/64", 5],
            "client_ip_headers": ["X Forwarded"],
            "trusted_proxies": "10.0.0.0/8",
        });
        let problems = IpFilter::compile(&v, "extra_config.weir/ip-filter").unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let p = "extra_config.weir/ip-filter";
        assert_eq!(
            text,
            [
                format!("{p}.allow[1]: \"10.0.0.0/33\" has a prefix length above 32"),
                format!("{p}.allow[2]: \"nope\" is not an IP address or CIDR network"),
                format!("{p}.allow[3]: \"2001:db8::/129\" has a prefix length above 128"),
                format!("{p}.deny[2]: must be a string, found a number"),
                format!("{p}.deny[0]: \"10.0.0.0/\" has a malformed prefix length"),
                format!(
                    "{p}.deny[1]: \"::ffff:10.0.0.0/64\" is an IPv4-mapped network: its prefix length must be 96 to 128"
                ),
                format!("{p}.trusted_proxies: must be an array of strings, found a string"),
                format!("{p}.client_ip_headers[0]: \"X Forwarded\" is not a header name"),
            ]
        );
    }
}
