//! The contract between a scenario run and the thing that executes it.
//!
//! Two drivers implement [`Driver`]: the direct driver (the in-process
//! [`bluetick_core::world::World`], no tokio) and the turmoil driver (the real
//! tokio server and client drivers of `bluetick-net` over `turmoil::net`). The
//! scenario runner only talks to this trait, so one scenario file runs on
//! either, and both feed the same [`History`] to the same oracle.
//!
//! Call order: build the driver, then for each timeline step call
//! [`Driver::run_until`] with the step's time followed by the action; at the
//! quiesce point call [`Driver::quiesce`], then [`Driver::finish`] once.
//! Methods that name a user the driver does not know do nothing and return
//! `None`/`false` (the scenario validator rejects such files first).

use bluetick_core::client::ClientBugs;
use bluetick_core::ids::{GroupId, MessageId, UserId};
use bluetick_core::server::ServerConfig;
use bluetick_core::wire::Visibility;
pub use bluetick_core::world::faults::{Direction, FrameFault, TraceEvent};
use bluetick_core::world::oracle::{History, Violation};
use bluetick_core::world::Faults;
use bluetick_crypto::CipherSuite;

/// Everything a driver needs to build a run: the same for both drivers, so
/// one scenario means the same thing on either.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Seed of the driver's own randomness (keys, network draws).
    pub seed: u64,
    /// The users, one device each.
    pub users: Vec<UserId>,
    /// Background network faults at the start.
    pub faults: Faults,
    /// Server tunables and deliberate server bugs.
    pub server: ServerConfig,
    /// Deliberate client bugs, applied to every client.
    pub client_bugs: ClientBugs,
    /// A client with unsent work retries after this long.
    pub resend_after_ms: u64,
    /// A disconnected online user reconnects after this long.
    pub reconnect_after_ms: u64,
    /// Key bundles each client fetches per minute.
    pub bundle_fetches_per_minute: usize,
    /// Cipher suite of every device.
    pub suite: CipherSuite,
}

/// A driver was asked for something it cannot do (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {driver} driver does not support {what} in this build")]
pub struct Unsupported {
    /// The driver.
    pub driver: &'static str,
    /// The capability.
    pub what: &'static str,
}

/// Something that executes a scenario. See the module docs for the call order.
pub trait Driver {
    /// Which driver this is (`direct` or `turmoil`), for reports.
    fn name(&self) -> &'static str;
    /// Simulated time now, ms.
    fn now_ms(&self) -> u64;
    /// Runs everything due up to and including `t_ms`.
    fn run_until(&mut self, t_ms: u64);

    /// `from` sends `body` to `to`; the id, if the client accepted it.
    fn send_text(&mut self, from: &UserId, to: &UserId, body: &[u8]) -> Option<MessageId>;
    /// `from` creates a group with `members` (besides itself).
    fn create_group(&mut self, from: &UserId, members: &[UserId]) -> Option<GroupId>;
    /// `admin` adds or removes members of `group`.
    fn change_group(&mut self, admin: &UserId, group: GroupId, add: &[UserId], remove: &[UserId]) -> bool;
    /// `from` sends `body` to `group`.
    fn send_group(&mut self, from: &UserId, group: GroupId, body: &[u8]) -> Option<MessageId>;
    /// `reader` opens its conversation with `peer` (everything received is read).
    fn mark_read(&mut self, reader: &UserId, peer: &UserId);

    /// Background network faults (loss, duplication, latency).
    fn set_faults(&mut self, faults: Faults);
    /// Adds a targeted frame fault (until [`Driver::clear_frame_faults`]).
    fn add_frame_fault(&mut self, fault: FrameFault);
    /// Removes every targeted frame fault.
    fn clear_frame_faults(&mut self);
    /// Cuts `users` off from the server (both ways, or only `direction`).
    fn partition(&mut self, users: &[UserId], direction: Option<Direction>);
    /// Heals every partition.
    fn heal(&mut self);
    /// Takes `user` offline until [`Driver::connect`].
    fn disconnect(&mut self, user: &UserId);
    /// Brings `user` back online.
    fn connect(&mut self, user: &UserId);
    /// Kills `user`'s client; it restarts from its durable state.
    fn crash_client(&mut self, user: &UserId);
    /// Kills the server; it restarts from its durable store.
    fn crash_server(&mut self);
    /// Sets `user`'s clock offset from true simulated time.
    fn set_clock_offset(&mut self, user: &UserId, offset_ms: i64);

    /// Faults off, everyone online, run until idle or `budget_ms` passes.
    fn quiesce(&mut self, budget_ms: u64);
    /// End-of-run liveness checks; every violation of the run.
    fn finish(&mut self) -> Vec<Violation>;
    /// What happened (the oracle's input).
    fn history(&self) -> &History;
    /// The deterministic trace so far, less what [`Driver::drain_trace`] took.
    fn trace(&self) -> Vec<TraceEvent>;
    /// Moves the trace events recorded since the last call to the end of
    /// `out`, in order: a long run has millions, which the runner streams
    /// out rather than keep.
    fn drain_trace(&mut self, out: &mut Vec<TraceEvent>);

    // ----- added capabilities: the defaults say "unsupported", so a driver
    // that predates them keeps compiling and the runner reports it cleanly.

    /// `from` sends an attachment of `bytes` to `to`; the id, if the client accepted it.
    fn send_media(&mut self, from: &UserId, to: &UserId, bytes: &[u8]) -> Result<Option<MessageId>, Unsupported> {
        let _ = (from, to, bytes);
        Err(Unsupported { driver: self.name(), what: "media messages" })
    }
    /// `reader` opens the conversation of `group` (everything received is read).
    fn mark_group_read(&mut self, reader: &UserId, group: GroupId) -> Result<(), Unsupported> {
        let _ = (reader, group);
        Err(Unsupported { driver: self.name(), what: "reading group conversations" })
    }
    /// `owner` sets who may see its presence; `contacts` is its contact list.
    fn set_presence_privacy(
        &mut self,
        owner: &UserId,
        visibility: Visibility,
        contacts: &[UserId],
    ) -> Result<(), Unsupported> {
        let _ = (owner, visibility, contacts);
        Err(Unsupported { driver: self.name(), what: "presence privacy" })
    }
    /// `subscriber` follows the presence of `targets`.
    fn subscribe_presence(&mut self, subscriber: &UserId, targets: &[UserId]) -> Result<(), Unsupported> {
        let _ = (subscriber, targets);
        Err(Unsupported { driver: self.name(), what: "presence subscriptions" })
    }
    /// An adversary copies `user`'s device state (the forward-secrecy check
    /// then tries it against what the device had already received).
    fn compromise(&mut self, user: &UserId) -> Result<(), Unsupported> {
        let _ = user;
        Err(Unsupported { driver: self.name(), what: "device compromise" })
    }
}
