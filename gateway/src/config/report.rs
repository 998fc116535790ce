//! What a config check found: errors, warnings and unsupported components, each
//! with the path of the key it concerns.

use std::fmt;

/// One finding, e.g. `endpoints[2].backend[0].url_pattern: {id} is not a parameter of /users/{user}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// A KrakenD component Weir does not implement yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// Where the namespace appears, e.g. `endpoints[0].extra_config`.
    pub path: String,
    pub namespace: String,
    /// True when ignoring it would change what clients may do (auth, limits, ...):
    /// `run` then refuses to start without `--allow-unsupported`.
    pub blocking: bool,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: \"{}\" is not supported yet", self.path, self.namespace)?;
        if self.blocking {
            f.write_str(" (run refuses it unless --allow-unsupported)")
        } else {
            f.write_str(" (ignored)")
        }
    }
}

/// Everything a check found. A config with any error is never run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
    /// Unknown keys, kept apart because `check --lint` turns them into errors.
    pub unknown_keys: Vec<Problem>,
    pub unsupported: Vec<Unsupported>,
}

impl Report {
    pub(crate) fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(Problem { path: path.to_owned(), message: message.into() });
    }

    pub(crate) fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push(Problem { path: path.to_owned(), message: message.into() });
    }

    /// Whether the config may run, given the caller's lint and unsupported policies.
    pub fn is_runnable(&self, lint: bool, allow_unsupported: bool) -> bool {
        self.errors.is_empty()
            && (!lint || self.unknown_keys.is_empty())
            && (allow_unsupported || !self.unsupported.iter().any(|u| u.blocking))
    }
}
