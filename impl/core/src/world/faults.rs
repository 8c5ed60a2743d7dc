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
