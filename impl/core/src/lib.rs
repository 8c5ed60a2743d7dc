//! The sans-IO messaging core of bluetick.
//!
//! # Contract
//! Like quinn-proto, the state machines here are deterministic and do no IO: no
//! sockets, no clock, no threads, no global RNG. Time (`now`) and randomness
//! come in as parameters; collections whose order can reach output are ordered.
//! The tokio runtime, the simulator and the model checker all drive the same
//! code. Durable state goes through the [`store::Store`] trait the driver hands
//! in; [`store::RedbStore`] is the one IO adapter in the crate, and the
//! simulator and model checker use [`store::MemoryStore`].
//!
//! # Layout
//! - [`ids`]: user, device, message, group and blob identifiers.
//! - [`wire`]: the client↔server frames and their size-checked codec.
//! - [`server`]: the sans-IO [`server::Server`] state machine and its parts:
//!   key distribution, per-device mailboxes, shared group bodies, presence.
//! - [`client`]: the sans-IO [`client::Client`] state machine of one device:
//!   sessions, outbox, dedup, receipts and ticks, groups with sender keys.
//! - [`store`]: durable key-value storage with atomic batches (in memory, redb).
//! - [`world`]: one server and N clients on a simulated clock and a faulty
//!   in-memory network, with the invariant oracle checked after every step.

pub mod client;
pub mod ids;
pub mod server;
pub mod store;
pub mod wire;
pub mod world;
