//! `qos/circuit-breaker` (backend): stops calling a backend that keeps failing.
//!
//! KrakenD wraps sony/gobreaker with these settings: `ReadyToTrip` is
//! "consecutive failures > `max_errors`", `Interval` clears the counts of the closed
//! state every `interval` seconds (never when 0), `Timeout` is how long the breaker
//! stays open (60 s when 0), and the half-open state lets exactly one probe through:
//! its success closes the breaker, its failure opens it for another `timeout`.
//! Results of calls admitted before a state change (or before the interval cleared
//! the counts) are ignored, as gobreaker does with its generations, and a cancelled
//! call counts neither way, as KrakenD excludes `context.Canceled`.
//!
//! Written here rather than taken from a crate: no maintained crate has this state
//! machine with an injectable clock, and the closed state, the one every request
//! sees, needs only atomics. The state, a generation and the current deadline share
//! one `AtomicU64`, so a reader always sees a consistent triple; state changes are
//! rare and take a small lock so that the counters of the new generation are reset
//! before the new state is published.
//!
//! Per call: [`CircuitBreaker::try_acquire`] before sending (`None`: fail fast without
//! calling the backend), then [`Permit::success`] or [`Permit::failure`] with the
//! outcome. A permit dropped without either (the client went away and the call was
//! cancelled) records nothing and gives the half-open probe slot back. A deadline
//! is not a cancellation: KrakenD counts `context.DeadlineExceeded` as a failure, so
//! a caller that times the call out reports `failure()` before dropping the permit.

use crate::config::{is_comment_key, join as at, kind};
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::{Problems, problem};

/// The `extra_config` key of this component.
pub const NAMESPACE: &str = "qos/circuit-breaker";

/// gobreaker's `Timeout` when KrakenD passes 0: a breaker must reopen eventually.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where time comes from; tests use a clock they move by hand.
pub trait Clock: Send + Sync {
    /// The current instant; must never go backwards.
    fn now(&self) -> Instant;
}

/// The process's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Compiled `qos/circuit-breaker` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Shown in state-change logs.
    pub name: String,
    /// How often the closed state forgets its failures; zero: never.
    pub interval: Duration,
    /// How long the breaker stays open before it lets a probe through.
    pub timeout: Duration,
    /// The breaker opens when the consecutive failures exceed this number.
    pub max_errors: u32,
    /// Whether state changes are logged as warnings.
    pub log_status_change: bool,
}

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through; consecutive failures are counted.
    Closed = 0,
    /// Calls fail fast until the timeout has passed.
    Open = 1,
    /// One probe call at a time decides between closed and open.
    HalfOpen = 2,
}

impl BreakerState {
    fn from_bits(bits: u64) -> Self {
        match bits & STATE_MASK {
            0 => Self::Closed,
            1 => Self::Open,
            _ => Self::HalfOpen,
        }
    }

    /// The name gobreaker logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// Layout of `CircuitBreaker::word`: state in bits 0-1, generation in bits 2-21,
// deadline in bits 22-63 (milliseconds since the breaker was created: 139 years).
// The deadline is the end of the counting window when closed (0: none) and the end of
// the open period when open; half-open has none.
const STATE_MASK: u64 = 0b11;
const GEN_SHIFT: u32 = 2;
/// 20 bits: a generation would have to come round again (a million state changes or
/// intervals) while one call is in flight for a stale result to count.
const GEN_MASK: u64 = (1 << 20) - 1;
const DEADLINE_SHIFT: u32 = 22;
const DEADLINE_MAX: u64 = (1 << 42) - 1;

fn pack(state: BreakerState, generation: u64, deadline: u64) -> u64 {
    (state as u64) | ((generation & GEN_MASK) << GEN_SHIFT) | (deadline.min(DEADLINE_MAX) << DEADLINE_SHIFT)
}

fn generation(word: u64) -> u64 {
    (word >> GEN_SHIFT) & GEN_MASK
}

fn deadline(word: u64) -> u64 {
    word >> DEADLINE_SHIFT
}

/// Consecutive failures of one generation: the generation in the high half, so
/// that a late result of an older generation cannot count in the current one.
fn failures_of(generation: u64, count: u32) -> u64 {
    (generation << 32) | u64::from(count)
}

/// A circuit breaker for one backend.
pub struct CircuitBreaker {
    settings: BreakerSettings,
    clock: Arc<dyn Clock>,
    /// Time zero of the deadlines in `word`.
    origin: Instant,
    /// State, generation and deadline; see `pack`.
    word: AtomicU64,
    /// Consecutive failures in the closed state; see `failures_of`.
    failures: AtomicU64,
    /// The half-open probe holder's generation with bit 31 set; 0 when free.
    probe: AtomicU32,
    /// How many times each state was entered, indexed by `BreakerState as usize`.
    transitions: [AtomicU64; 3],
    /// Serialises state changes; the closed state's calls never take it.
    changing: Mutex<()>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker").field("settings", &self.settings).field("state", &self.state()).finish()
    }
}

/// Leave to call the backend once; report how it went with [`Permit::success`] or
/// [`Permit::failure`]. Dropping it records nothing.
#[must_use = "a permit records nothing unless success() or failure() is called"]
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    generation: u64,
    /// Whether this permit holds the half-open probe slot.
    probe: bool,
}

impl Permit<'_> {
    /// The call succeeded.
    pub fn success(self) {
        self.breaker.on_success(self.generation, self.probe);
    }

    /// The call failed: no connection, the deadline passed, or an answer KrakenD
    /// counts as an error (any status but 200/201 unless the encoding is `no-op`).
    pub fn failure(self) {
        self.breaker.on_failure(self.generation, self.probe);
    }
}

impl Drop for Permit<'_> {
    /// A call that ended without an outcome (cancelled) says nothing about the
    /// backend: count nothing, but free the probe slot so the half-open state cannot
    /// wait forever for a probe that will never report. After `success`/`failure`
    /// the state change has already freed the slot and this does nothing.
    fn drop(&mut self) {
        if self.probe {
            self.breaker.release_probe(self.generation);
        }
    }
}

fn probe_tag(generation: u64) -> u32 {
    // Bit 31 keeps the tag non-zero; the generation fits in the low 20 bits.
    (generation & GEN_MASK) as u32 | (1 << 31)
}

impl CircuitBreaker {
    /// Reads the `qos/circuit-breaker` object found at `path`. All three numbers are
    /// required, as in KrakenD's schema: a missing `max_errors` would silently mean
    /// "open on the first failure" in KrakenD.
    pub fn compile(v: &Value, path: &str) -> Result<BreakerSettings, Problems> {
        let mut problems = Problems::new();
        let Value::Object(obj) = v else {
            return Err(vec![problem(path, format!("must be an object, found {}", kind(v)))]);
        };
        for key in obj.keys() {
            if !is_comment_key(key) && !KEYS.contains(&key.as_str()) {
                problems.push(problem(
                    &at(path, key),
                    "unknown key (expected interval, timeout, max_errors, name or log_status_change)",
                ));
            }
        }
        let interval = whole(obj, path, "interval", "seconds", u64::MAX, &mut problems).map(Duration::from_secs);
        let timeout = whole(obj, path, "timeout", "seconds", u64::MAX, &mut problems)
            .map(|s| if s == 0 { DEFAULT_TIMEOUT } else { Duration::from_secs(s) });
        let max_errors = whole(obj, path, "max_errors", "errors", u64::from(u32::MAX), &mut problems)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let name = match obj.get("name").filter(|v| !v.is_null()) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                problems.push(problem(&at(path, "name"), format!("must be a string, found {}", kind(other))));
                None
            }
        };
        let log_status_change = match obj.get("log_status_change").filter(|v| !v.is_null()) {
            // The schema's default: state changes are not logged.
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                problems.push(problem(
                    &at(path, "log_status_change"),
                    format!("must be true or false, found {}", kind(other)),
                ));
                false
            }
        };
        match (interval, timeout, max_errors) {
            (Some(interval), Some(timeout), Some(max_errors)) if problems.is_empty() => Ok(BreakerSettings {
                // KrakenD logs an empty name; the config path says which backend it is.
                name: name.filter(|n| !n.is_empty()).unwrap_or_else(|| path.to_owned()),
                interval,
                timeout,
                max_errors,
                log_status_change,
            }),
            _ => Err(problems),
        }
    }

    /// A closed breaker; `clock` is read on every call in the open state, when a
    /// counting window may have ended, and on failures.
    pub fn new(settings: BreakerSettings, clock: Arc<dyn Clock>) -> Self {
        let origin = clock.now();
        let breaker = Self {
            settings,
            clock,
            origin,
            word: AtomicU64::new(0),
            failures: AtomicU64::new(failures_of(0, 0)),
            probe: AtomicU32::new(0),
            transitions: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            changing: Mutex::new(()),
        };
        let window = breaker.window_end(0);
        breaker.word.store(pack(BreakerState::Closed, 0, window), Ordering::Release);
        breaker
    }

    /// The settings the breaker was built with.
    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// Leave to call the backend, or `None` when the breaker is open (or half-open
    /// with its probe already out): the caller fails fast.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        // A counting window can end, or an open period run out, while we look: each
        // costs one more round. A fourth round would mean the clock raced past a whole
        // window meanwhile; refusing one call then is harmless.
        for _ in 0..3 {
            let word = self.word.load(Ordering::Acquire);
            match BreakerState::from_bits(word) {
                BreakerState::Closed => {
                    let end = deadline(word);
                    if end == 0 || self.now() < end {
                        return Some(Permit { breaker: self, generation: generation(word), probe: false });
                    }
                    self.roll_window(word);
                }
                BreakerState::Open => {
                    let now = self.now();
                    if now < deadline(word) {
                        return None;
                    }
                    self.change(word, BreakerState::HalfOpen, now);
                }
                BreakerState::HalfOpen => {
                    let generation = generation(word);
                    let tag = probe_tag(generation);
                    if self.probe.compare_exchange(0, tag, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                        return None;
                    }
                    if self.word.load(Ordering::Acquire) == word {
                        return Some(Permit { breaker: self, generation, probe: true });
                    }
                    // The previous probe decided meanwhile: this slot is stale.
                    self.release_probe(generation);
                }
            }
        }
        None
    }

    /// The current state. An open breaker whose timeout has passed reports
    /// `HalfOpen` even before a call has moved it there.
    pub fn state(&self) -> BreakerState {
        let word = self.word.load(Ordering::Acquire);
        match BreakerState::from_bits(word) {
            BreakerState::Open if self.now() >= deadline(word) => BreakerState::HalfOpen,
            state => state,
        }
    }

    /// How many times the breaker entered each state, indexed by `BreakerState as
    /// usize` (closed, open, half-open); the initial closed state is not counted.
    pub fn transitions(&self) -> [u64; 3] {
        self.transitions.each_ref().map(|t| t.load(Ordering::Relaxed))
    }

    fn release_probe(&self, generation: u64) {
        let _ = self.probe.compare_exchange(probe_tag(generation), 0, Ordering::AcqRel, Ordering::Relaxed);
    }

    fn on_success(&self, permit_generation: u64, probe: bool) {
        let word = self.word.load(Ordering::Acquire);
        if generation(word) != permit_generation {
            return;
        }
        match BreakerState::from_bits(word) {
            BreakerState::Closed => {
                // Only write when there is something to reset, so that a run of
                // successes does not bounce the cache line between cores.
                let current = self.failures.load(Ordering::Relaxed);
                if current >> 32 == permit_generation && current as u32 != 0 {
                    let _ = self.failures.compare_exchange(
                        current,
                        failures_of(permit_generation, 0),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
            }
            BreakerState::HalfOpen if probe => {
                self.change(word, BreakerState::Closed, self.now());
            }
            _ => {}
        }
    }

    fn on_failure(&self, permit_generation: u64, probe: bool) {
        let mut word = self.word.load(Ordering::Acquire);
        if generation(word) != permit_generation {
            return;
        }
        let now = self.now();
        match BreakerState::from_bits(word) {
            BreakerState::Closed => {
                let end = deadline(word);
                if end != 0 && now >= end {
                    // The window this call was counted in is over: gobreaker starts a
                    // new generation here and drops the result.
                    self.roll_window(word);
                    return;
                }
                let mut current = self.failures.load(Ordering::Relaxed);
                let count = loop {
                    if current >> 32 != permit_generation {
                        return;
                    }
                    let next = (current as u32).saturating_add(1);
                    match self.failures.compare_exchange_weak(
                        current,
                        failures_of(permit_generation, next),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => break next,
                        Err(seen) => current = seen,
                    }
                };
                if count > self.settings.max_errors {
                    // Re-read: the word may have moved to another window meanwhile,
                    // in which case `change` refuses.
                    word = self.word.load(Ordering::Acquire);
                    if generation(word) == permit_generation {
                        self.change(word, BreakerState::Open, now);
                    }
                }
            }
            BreakerState::HalfOpen if probe => {
                self.change(word, BreakerState::Open, now);
            }
            _ => {}
        }
    }

    /// Starts a new counting window in the closed state: a new generation with no
    /// failures. Not a state change: not counted, not logged.
    fn roll_window(&self, seen: u64) {
        let _guard = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        if self.word.load(Ordering::Acquire) == seen {
            let next = (generation(seen) + 1) & GEN_MASK;
            self.failures.store(failures_of(next, 0), Ordering::Relaxed);
            self.word.store(pack(BreakerState::Closed, next, self.window_end(self.now())), Ordering::Release);
        }
    }

    /// Moves from the state in `seen` to `to`, unless another call changed the word
    /// first. The new generation's counters are reset before it is published.
    fn change(&self, seen: u64, to: BreakerState, now: u64) {
        let _guard = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        if self.word.load(Ordering::Acquire) != seen {
            return;
        }
        let from = BreakerState::from_bits(seen);
        let next = (generation(seen) + 1) & GEN_MASK;
        let end = match to {
            BreakerState::Closed => self.window_end(now),
            BreakerState::Open => now.saturating_add(millis_of(self.settings.timeout)),
            BreakerState::HalfOpen => 0,
        };
        self.failures.store(failures_of(next, 0), Ordering::Relaxed);
        self.probe.store(0, Ordering::Relaxed);
        self.word.store(pack(to, next, end), Ordering::Release);
        self.transitions[to as usize].fetch_add(1, Ordering::Relaxed);
        if self.settings.log_status_change {
            tracing::warn!(breaker = %self.settings.name, from = %from, to = %to, "circuit breaker changed state");
        }
    }

    /// The end of a counting window starting at `now`; 0 (none) without interval.
    /// At least a millisecond, so that a window always ends after it starts.
    fn window_end(&self, now: u64) -> u64 {
        if self.settings.interval.is_zero() { 0 } else { now.saturating_add(millis_of(self.settings.interval).max(1)) }
    }

    /// Milliseconds since the breaker was built.
    fn now(&self) -> u64 {
        millis_of(self.clock.now().saturating_duration_since(self.origin))
    }
}

fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

const KEYS: [&str; 5] = ["interval", "timeout", "max_errors", "name", "log_status_change"];

/// A required whole number of `unit` (seconds, errors) of at most `max`.
fn whole(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
    unit: &str,
    max: u64,
    problems: &mut Problems,
) -> Option<u64> {
    let Some(v) = obj.get(key).filter(|v| !v.is_null()) else {
        problems.push(problem(&at(path, key), format!("is required: a whole number of {unit}")));
        return None;
    };
    match v.as_u64() {
        Some(n) if n <= max => Some(n),
        Some(n) => {
            problems.push(problem(&at(path, key), format!("{n} is larger than the maximum {max}")));
            None
        }
        None => {
            problems.push(problem(&at(path, key), format!("must be a whole number of {unit}, found {}", show(v))));
            None
        }
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        other => kind(other).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Barrier;
    use std::sync::atomic::AtomicUsize;

    /// A clock moved by hand.
    struct ManualClock {
        start: Instant,
        offset_ms: AtomicU64,
    }

    impl ManualClock {
        fn new() -> Arc<Self> {
            Arc::new(Self { start: Instant::now(), offset_ms: AtomicU64::new(0) })
        }

        fn advance(&self, d: Duration) {
            self.offset_ms.fetch_add(millis_of(d), Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.start + Duration::from_millis(self.offset_ms.load(Ordering::SeqCst))
        }
    }

    fn settings(interval: u64, timeout: u64, max_errors: u32) -> BreakerSettings {
        BreakerSettings {
            name: "test".into(),
            interval: Duration::from_secs(interval),
            timeout: Duration::from_secs(timeout),
            max_errors,
            log_status_change: true,
        }
    }

    fn breaker(interval: u64, timeout: u64, max_errors: u32) -> (CircuitBreaker, Arc<ManualClock>) {
        let clock = ManualClock::new();
        (CircuitBreaker::new(settings(interval, timeout, max_errors), clock.clone()), clock)
    }

    fn fail(b: &CircuitBreaker, n: usize) {
        for _ in 0..n {
            b.try_acquire().map(Permit::failure).unwrap_or_else(|| panic!("breaker refused a call"));
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn compiles_krakend_settings() {
        let s = CircuitBreaker::compile(
            &json!({"interval": 60, "timeout": 10, "max_errors": 1, "name": "cb-1", "log_status_change": true, "@comment": "x"}),
            "endpoints[0].backend[0].extra_config.qos/circuit-breaker",
        )
        .unwrap();
        assert_eq!(
            s,
            BreakerSettings {
                name: "cb-1".into(),
                interval: secs(60),
                timeout: secs(10),
                max_errors: 1,
                log_status_change: true
            }
        );
    }

    #[test]
    fn compile_defaults_name_to_path_and_zero_timeout_to_a_minute() {
        let s =
            CircuitBreaker::compile(&json!({"interval": 0, "timeout": 0, "max_errors": 0}), "b.qos/circuit-breaker")
                .unwrap();
        assert_eq!(s.name, "b.qos/circuit-breaker");
        assert_eq!(s.timeout, secs(60));
        assert_eq!(s.interval, Duration::ZERO);
        assert!(!s.log_status_change);
    }

    #[test]
    fn compile_reports_every_problem_with_its_path() {
        let problems = CircuitBreaker::compile(
            &json!({"interval": -1, "timeout": "10s", "maxErrors": 3, "name": 7, "log_status_change": "yes"}),
            "p",
        )
        .unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        for expected in [
            "p.interval: must be a whole number of seconds, found -1",
            "p.timeout: must be a whole number of seconds, found a string",
            "p.max_errors: is required",
            "p.maxErrors: unknown key",
            "p.name: must be a string, found a number",
            "p.log_status_change: must be true or false, found a string",
        ] {
            assert!(text.iter().any(|t| t.starts_with(expected)), "missing {expected:?} in {text:#?}");
        }
        assert_eq!(text.len(), 6, "{text:#?}");
        assert_eq!(
            CircuitBreaker::compile(&json!([]), "p").unwrap_err()[0].to_string(),
            "p: must be an object, found an array"
        );
        let too_big =
            CircuitBreaker::compile(&json!({"interval": 1, "timeout": 1, "max_errors": 5_000_000_000u64}), "p");
        assert!(too_big.unwrap_err()[0].to_string().starts_with("p.max_errors: 5000000000 is larger"));
    }

    #[test]
    fn opens_when_consecutive_failures_exceed_max_errors() {
        // KrakenD: ReadyToTrip is ConsecutiveFailures > max_errors.
        let (b, _) = breaker(60, 10, 2);
        fail(&b, 2);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_none());
        assert_eq!(b.transitions(), [0, 1, 0]);
    }

    #[test]
    fn zero_max_errors_opens_on_the_first_failure() {
        let (b, _) = breaker(60, 10, 0);
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let (b, _) = breaker(0, 10, 2);
        for _ in 0..5 {
            fail(&b, 2);
            b.try_acquire().unwrap().success();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 3);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn the_interval_clears_failures_in_the_closed_state() {
        let (b, clock) = breaker(60, 10, 2);
        fail(&b, 2);
        clock.advance(secs(60));
        fail(&b, 2);
        assert_eq!(b.state(), BreakerState::Closed, "the first two failures belong to the previous window");
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn without_interval_failures_are_never_forgotten() {
        let (b, clock) = breaker(0, 10, 2);
        fail(&b, 2);
        clock.advance(secs(86_400 * 365));
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn a_result_from_a_finished_window_is_ignored() {
        let (b, clock) = breaker(60, 10, 0);
        let permit = b.try_acquire().unwrap();
        clock.advance(secs(61));
        permit.failure();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn stays_open_for_the_timeout_then_lets_one_probe_through() {
        let (b, clock) = breaker(60, 10, 0);
        fail(&b, 1);
        clock.advance(Duration::from_millis(9_999));
        assert!(b.try_acquire().is_none());
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_millis(1));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.try_acquire().expect("the probe");
        assert!(b.try_acquire().is_none(), "only one probe at a time");
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire().is_some());
        assert_eq!(b.transitions(), [1, 1, 1]);
    }

    #[test]
    fn a_failed_probe_reopens_for_another_timeout() {
        let (b, clock) = breaker(60, 10, 0);
        fail(&b, 1);
        clock.advance(secs(10));
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(secs(9));
        assert!(b.try_acquire().is_none());
        clock.advance(secs(1));
        assert!(b.try_acquire().is_some());
        assert_eq!(b.transitions(), [0, 2, 2]);
    }

    #[test]
    fn a_dropped_probe_frees_the_slot_without_counting() {
        let (b, clock) = breaker(60, 10, 0);
        fail(&b, 1);
        clock.advance(secs(10));
        drop(b.try_acquire().unwrap());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.try_acquire().expect("the slot is free again");
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_dropped_permit_in_the_closed_state_counts_nothing() {
        let (b, _) = breaker(0, 10, 1);
        fail(&b, 1);
        for _ in 0..10 {
            drop(b.try_acquire().unwrap());
        }
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn late_results_from_before_the_trip_change_nothing() {
        let (b, clock) = breaker(60, 10, 0);
        let late_success = b.try_acquire().unwrap();
        let late_failure = b.try_acquire().unwrap();
        fail(&b, 1);
        clock.advance(secs(10));
        let probe = b.try_acquire().unwrap();
        late_success.success();
        late_failure.failure();
        assert_eq!(b.state(), BreakerState::HalfOpen, "only the probe decides");
        assert!(b.try_acquire().is_none());
        probe.failure();
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn concurrent_failures_open_the_breaker_once() {
        let (b, _) = breaker(0, 10, 50);
        let threads = 8;
        let barrier = Barrier::new(threads);
        let refused = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..100 {
                        match b.try_acquire() {
                            Some(p) => p.failure(),
                            None => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.transitions(), [0, 1, 0]);
        assert!(refused.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn concurrent_successes_keep_the_breaker_closed() {
        let (b, _) = breaker(0, 10, 0);
        let barrier = Barrier::new(4);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..1_000 {
                        b.try_acquire().unwrap().success();
                    }
                });
            }
        });
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.transitions(), [0, 0, 0]);
    }

    #[test]
    fn concurrent_callers_in_half_open_get_exactly_one_probe() {
        let (b, clock) = breaker(60, 10, 0);
        fail(&b, 1);
        clock.advance(secs(10));
        for round in 0..20 {
            let threads = 8;
            let barrier = Barrier::new(threads);
            let granted = AtomicUsize::new(0);
            let probes: Mutex<Vec<Permit<'_>>> = Mutex::new(Vec::new());
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| {
                        barrier.wait();
                        if let Some(p) = b.try_acquire() {
                            granted.fetch_add(1, Ordering::Relaxed);
                            probes.lock().unwrap().push(p);
                        }
                    });
                }
            });
            assert_eq!(granted.load(Ordering::Relaxed), 1, "round {round}");
            let probe = probes.into_inner().unwrap().pop().unwrap();
            if round % 2 == 0 {
                // Cancelled: the next round must be able to probe again.
                drop(probe);
            } else {
                probe.failure();
                clock.advance(secs(10));
            }
        }
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn a_probe_outcome_racing_with_new_callers_closes_cleanly() {
        let (b, clock) = breaker(0, 10, 3);
        fail(&b, 4);
        clock.advance(secs(10));
        let probe = b.try_acquire().unwrap();
        let barrier = Barrier::new(5);
        let successes = AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                probe.success();
            });
            for _ in 0..4 {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..200 {
                        if let Some(p) = b.try_acquire() {
                            successes.fetch_add(1, Ordering::Relaxed);
                            p.success();
                        }
                    }
                });
            }
        });
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.transitions(), [1, 1, 1]);
        // Closed again with no failures: max_errors + 1 failures are needed to trip.
        fail(&b, 3);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn deadlines_far_in_the_future_saturate() {
        let clock = ManualClock::new();
        let s = BreakerSettings { timeout: Duration::from_secs(u64::MAX / 4), ..settings(u64::MAX / 4, 1, 0) };
        let b = CircuitBreaker::new(s, clock.clone());
        fail(&b, 1);
        clock.advance(secs(86_400 * 365 * 100));
        assert!(b.try_acquire().is_none());
    }
}
