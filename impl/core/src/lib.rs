//! The sans-IO messaging core of bluetick.
//!
//! # Contract
//! Like quinn-proto, this crate is deterministic and does no IO: no sockets, no
//! clock, no threads, no global RNG. Time (`now`) and randomness come in as
//! parameters; collections whose order can reach output are ordered. The tokio
//! runtime, the simulator and the model checker all drive the same code.
//!
//! # Layout
//! - [`ids`]: user, device, message, group and blob identifiers.
//! - [`wire`]: the client↔server frames and their size-checked codec.
//! - [`server`]: the chat server's parts so far: [`server::mailbox`] (per-device
//!   offline queue) and [`server::bodies`] (group bodies stored once).
//!
//! The server and client state machines are not built yet (issue 3).

pub mod ids;
pub mod server;
pub mod wire;
