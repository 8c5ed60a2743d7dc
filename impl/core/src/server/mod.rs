//! The chat server's state, one module per concern. The `Server` state
//! machine that ties them together is not built yet (issue 3).

pub mod bodies;
pub mod mailbox;
