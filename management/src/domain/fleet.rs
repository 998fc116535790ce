//! What operators see of the fleet: each node SYNCED, STALE or REJECTED.

use serde::Serialize;

use crate::store::nodes::{Report, Seen};

/// Nodes silent for more than this many heartbeats are STALE.
pub const SILENT_HEARTBEATS: i64 = 3;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum NodeState {
    /// Runs the environment's current serial and reports on time.
    Synced,
    /// Runs an older serial, or has gone silent.
    Stale,
    /// Refused the last bundle it fetched (and still serves the one before).
    Rejected,
}

/// A node as the API shows it: its last report, and what that means.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub report: Report,
    /// When the control plane last heard from it (Unix ms).
    pub seen_at: i64,
    pub state: NodeState,
    /// Why it is not SYNCED.
    pub reason: Option<String>,
}

/// Classifies a node against its environment's current serial.
pub fn classify(seen: &Seen, environment_serial: i64, now_ms: i64, heartbeat_ms: i64) -> (NodeState, Option<String>) {
    let r = &seen.report;
    if let Some(reason) = r.last_result.strip_prefix("rejected") {
        return (NodeState::Rejected, Some(reason.trim_start_matches([':', ' ']).to_owned()));
    }
    let silent = now_ms - seen.seen_at;
    if silent > SILENT_HEARTBEATS * heartbeat_ms {
        return (NodeState::Stale, Some(format!("silent for {} s", silent / 1000)));
    }
    match r.serial {
        Some(s) if s == environment_serial => (NodeState::Synced, None),
        Some(s) => (NodeState::Stale, Some(format!("runs serial {s}; the environment is at {environment_serial}"))),
        None => (NodeState::Stale, Some("runs no bundle yet".into())),
    }
}

pub fn view(seen: Seen, environment_serial: i64, now_ms: i64, heartbeat_ms: i64) -> NodeView {
    let (state, reason) = classify(&seen, environment_serial, now_ms, heartbeat_ms);
    NodeView { report: seen.report, seen_at: seen.seen_at, state, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(serial: Option<i64>, result: &str, seen_at: i64) -> Seen {
        Seen {
            report: Report {
                node_id: "n1".into(),
                hostname: "h".into(),
                version: "0.1.0".into(),
                serial,
                config_digest: None,
                last_fetch_at: None,
                last_result: result.into(),
                reported_at: String::new(),
            },
            seen_at,
        }
    }

    #[test]
    fn states_follow_serial_silence_and_rejection() {
        let hb = 30_000;
        let now = 1_000_000;
        assert_eq!(classify(&seen(Some(4), "applied", now - 1000), 4, now, hb).0, NodeState::Synced);
        assert_eq!(classify(&seen(Some(3), "applied", now - 1000), 4, now, hb).0, NodeState::Stale);
        assert_eq!(classify(&seen(Some(4), "applied", now - 91_000), 4, now, hb).0, NodeState::Stale);
        assert_eq!(classify(&seen(Some(4), "applied", now - 89_000), 4, now, hb).0, NodeState::Synced);
        let (state, reason) = classify(&seen(Some(3), "rejected: signature does not verify", now), 4, now, hb);
        assert_eq!(state, NodeState::Rejected);
        assert_eq!(reason.as_deref(), Some("signature does not verify"));
    }
}
