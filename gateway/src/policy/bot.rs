//! The bot detector (`security/bot-detector`): KrakenD's rules on the `User-Agent`,
//! evaluated in its order. `allow` (exact) accepts, then `deny` (exact) and `patterns`
//! (unanchored RE2-style expressions) refuse; a missing or empty `User-Agent` is a bot
//! only with `empty_user_agent_is_bot`. KrakenD answers bots with 403.

use std::collections::HashSet;

use http::HeaderMap;
use http::header::USER_AGENT;
use regex::bytes::{RegexSet, RegexSetBuilder};
use serde_json::Value;

use super::Problems;
use super::settings::Settings;

/// The `extra_config` namespace this component reads.
pub const NAMESPACE: &str = "security/bot-detector";

/// Every key of the namespace in KrakenD's schema; `cache_size` is accepted and has no effect.
pub const KEYS: &[&str] = &["allow", "deny", "patterns", "empty_user_agent_is_bot", "cache_size"];

/// Room for large pattern lists such as ua-parser's (hundreds of expressions) in one
/// set; the regex crate's default of 10 MiB is meant for single expressions.
const PATTERNS_SIZE_LIMIT: usize = 64 << 20;

/// A compiled `security/bot-detector` policy.
#[derive(Debug)]
pub struct BotDetector {
    allow: HashSet<Box<[u8]>>,
    deny: HashSet<Box<[u8]>>,
    /// All `patterns` in one automaton: one pass over the agent whatever their number.
    patterns: Option<RegexSet>,
    empty_is_bot: bool,
}

impl BotDetector {
    /// Compiles the namespace value found at `path`, reporting every bad key.
    pub fn compile(v: &Value, path: &str) -> Result<Self, Problems> {
        let mut s = Settings::new(v, path);
        let allow = agents(&mut s, "allow");
        let deny = agents(&mut s, "deny");
        let patterns = patterns(&mut s);
        let empty_is_bot = s.flag("empty_user_agent_is_bot").unwrap_or(false);
        // KrakenD caches verdicts per agent in an LRU; one RegexSet pass is cheap enough
        // that a shared, locked cache would cost more than it saves.
        s.uint("cache_size", 0, u32::MAX.into());
        s.finish(BotDetector { allow, deny, patterns, empty_is_bot })
    }

    /// Whether the request's `User-Agent` marks it as a bot.
    pub fn is_bot(&self, headers: &HeaderMap) -> bool {
        // The raw bytes: agents are not always ASCII, and the rules still apply to them.
        let agent = headers.get(USER_AGENT).map_or(&[][..], |v| v.as_bytes());
        if agent.is_empty() {
            return self.empty_is_bot;
        }
        if self.allow.contains(agent) {
            return false;
        }
        self.deny.contains(agent) || self.patterns.as_ref().is_some_and(|set| set.is_match(agent))
    }
}

fn agents(s: &mut Settings<'_>, key: &str) -> HashSet<Box<[u8]>> {
    s.strings(key).unwrap_or_default().into_iter().map(|(_, agent)| agent.as_bytes().into()).collect()
}

fn patterns(s: &mut Settings<'_>) -> Option<RegexSet> {
    let list = s.strings("patterns").unwrap_or_default();
    if list.is_empty() {
        return None;
    }
    // Compiled one by one first, so that a bad expression is named by its index.
    let mut all_valid = true;
    for (i, pattern) in &list {
        if let Err(e) = regex::bytes::Regex::new(pattern) {
            s.error_at(s.item("patterns", *i), format!("{pattern:?} is not a valid regular expression: {e}"));
            all_valid = false;
        }
    }
    if !all_valid {
        return None;
    }
    match RegexSetBuilder::new(list.iter().map(|(_, p)| p)).size_limit(PATTERNS_SIZE_LIMIT).build() {
        Ok(set) => Some(set),
        Err(e) => {
            s.error("patterns", format!("the expressions cannot be compiled together: {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use serde_json::json;

    use super::*;

    fn detector(v: Value) -> BotDetector {
        BotDetector::compile(&v, "extra_config.security/bot-detector").unwrap()
    }

    fn agent(ua: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(USER_AGENT, HeaderValue::from_bytes(ua).unwrap());
        h
    }

    #[test]
    fn rules_apply_in_krakend_order() {
        let d = detector(json!({
            "allow": ["MyAndroidClient/1.0", "Pingdom.com_bot_version_1.1"],
            "deny": ["a", "b"],
            "patterns": ["(Pingdom.com_bot_version_).*", "(facebookexternalhit)/.*"],
        }));
        assert!(!d.is_bot(&agent(b"MyAndroidClient/1.0")));
        assert!(!d.is_bot(&agent(b"Pingdom.com_bot_version_1.1")), "allow wins over a matching pattern");
        assert!(d.is_bot(&agent(b"Pingdom.com_bot_version_1.2")));
        assert!(d.is_bot(&agent(b"a")));
        assert!(!d.is_bot(&agent(b"ab")), "deny is an exact match");
        assert!(d.is_bot(&agent(b"Mozilla/5.0 (compatible; facebookexternalhit/1.1)")), "patterns are unanchored");
        assert!(!d.is_bot(&agent(b"Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0")));
        assert!(!d.is_bot(&agent(b"MyAndroidClient/1.0 ")), "allow is exact too");
    }

    #[test]
    fn empty_agents_follow_the_flag() {
        let lenient = detector(json!({"deny": ["x"]}));
        let strict = detector(json!({"empty_user_agent_is_bot": true}));
        for headers in [HeaderMap::new(), agent(b"")] {
            assert!(!lenient.is_bot(&headers));
            assert!(strict.is_bot(&headers));
        }
        assert!(!strict.is_bot(&agent(b"curl/8.0")));
    }

    #[test]
    fn non_ascii_agents_are_still_matched() {
        let d = detector(json!({"patterns": ["bot"]}));
        assert!(d.is_bot(&agent(b"\xe9t\xe9-bot/1")));
        assert!(!d.is_bot(&agent(b"\xe9t\xe9/1")));
    }

    #[test]
    fn reports_every_bad_key() {
        let v = json!({
            "allow": "MyApp",
            "deny": ["ok", 7],
            "patterns": ["fine.*", "(broken", "also[fine]", "[z-a]"],
            "empty_user_agent_is_bot": 1,
            "cache_size": -5,
        });
        let problems = BotDetector::compile(&v, "extra_config.security/bot-detector").unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let p = "extra_config.security/bot-detector";
        assert_eq!(text.len(), 6, "{text:#?}");
        assert_eq!(text[0], format!("{p}.allow: must be an array of strings, found a string"));
        assert_eq!(text[1], format!("{p}.deny[1]: must be a string, found a number"));
        assert!(text[2].starts_with(&format!("{p}.patterns[1]: \"(broken\" is not a valid regular expression")));
        assert!(text[3].starts_with(&format!("{p}.patterns[3]: \"[z-a]\" is not a valid regular expression")));
        assert_eq!(text[4], format!("{p}.empty_user_agent_is_bot: must be true or false, found a number"));
        assert!(text[5].starts_with(&format!("{p}.cache_size: must be a whole number")));
    }

    #[test]
    fn cache_size_is_accepted() {
        let d = detector(json!({"deny": ["x"], "cache_size": 10000}));
        assert!(d.is_bot(&agent(b"x")));
    }
}
