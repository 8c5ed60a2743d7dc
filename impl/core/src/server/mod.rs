//! The chat server: one sans-IO state machine ([`Server`], in [`machine`])
//! built from one module per concern.

pub mod bodies;
pub mod keys;
pub mod machine;
pub mod mailbox;
pub mod presence;

pub use machine::{routing_row, ConnId, RoutingRow, Server, ServerBugs, ServerConfig, ServerOutput, ServerStats};
