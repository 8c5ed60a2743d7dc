//! Targeted faults and the run trace of the [`World`](super::World), shared
//! with the simulator's drivers so both speak the same types.

use serde::Serialize;

use crate::ids::UserId;

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Client to server.
    ToServer,
    /// Server to client.
    ToClient,
}

/// A targeted frame fault: applies to frames of `kind` (the wire variant name
/// in kebab case, e.g. `delivery-ack`, `deliver`, `send`, `receipt`; `None` =
/// every kind) travelling `direction` on `user`'s connection (`None` = every
/// user), in addition to the background [`Faults`](super::Faults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FrameFault {
    /// Frame kind, or every kind.
    pub kind: Option<String>,
    /// Direction, or both.
    pub direction: Option<Direction>,
    /// Whose connection, or everyone's.
    pub user: Option<UserId>,
    /// Chance the frame is lost, per mille.
    pub drop_per_mille: u32,
    /// Chance the frame arrives twice, per mille.
    pub duplicate_per_mille: u32,
    /// Extra delay added to matching frames.
    pub delay_ms: u64,
}

/// One line of a run's trace: what happened, when. The trace is the input of
/// the run's `trace_hash`, so it holds only deterministic data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceEvent {
    /// Simulated time, ms since the simulation epoch.
    pub at_ms: u64,
    /// Short event name (`send`, `server-ack`, `deliver`, `app-receive`,
    /// `status`, `crash-client`, …).
    pub event: String,
    /// Event details as stable `key=value` text.
    pub detail: String,
}

impl FrameFault {
    /// Whether the rule applies to a frame of `kind` (and, for a `Deliver`,
    /// `delivery_kind`, e.g. `deliver-receipt`) travelling `direction` on
    /// `user`'s connection.
    pub fn matches(&self, kind: &str, delivery_kind: Option<&str>, direction: Direction, user: &UserId) -> bool {
        let kind_ok = match &self.kind {
            None => true,
            Some(k) => k == kind || delivery_kind == Some(k.as_str()),
        };
        kind_ok && self.direction.is_none_or(|d| d == direction) && self.user.as_ref().is_none_or(|u| u == user)
    }
}

impl Direction {
    /// The stable name used in traces and scenario files.
    pub fn name(self) -> &'static str {
        match self {
            Direction::ToServer => "to-server",
            Direction::ToClient => "to-client",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: Option<&str>, direction: Option<Direction>, user: Option<&str>) -> FrameFault {
        FrameFault {
            kind: kind.map(str::to_string),
            direction,
            user: user.map(|u| UserId::new(u).unwrap()),
            drop_per_mille: 1000,
            duplicate_per_mille: 0,
            delay_ms: 0,
        }
    }

    #[test]
    fn a_rule_selects_by_kind_delivery_kind_direction_and_user() {
        let bob = UserId::new("bob").unwrap();
        let alice = UserId::new("alice").unwrap();
        let acks = rule(Some("delivery-ack"), Some(Direction::ToServer), Some("bob"));
        assert!(acks.matches("delivery-ack", None, Direction::ToServer, &bob));
        assert!(!acks.matches("delivery-ack", None, Direction::ToServer, &alice));
        assert!(!acks.matches("delivery-ack", None, Direction::ToClient, &bob));
        assert!(!acks.matches("send", None, Direction::ToServer, &bob));
        let receipts = rule(Some("deliver-receipt"), None, None);
        assert!(receipts.matches("deliver", Some("deliver-receipt"), Direction::ToClient, &alice));
        assert!(!receipts.matches("deliver", Some("deliver-envelope"), Direction::ToClient, &alice));
        assert!(rule(None, None, None).matches("ping", None, Direction::ToServer, &alice));
    }
}
