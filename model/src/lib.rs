//! Model checking of bluetick's real state machines with stateright.
//!
//! # Contract
//! The checker explores every execution of the real sans-IO
//! [`bluetick_core::server::Server`] and [`bluetick_core::client::Client`]
//! within a bound: no protocol logic is re-implemented here. Like the core,
//! the model is deterministic — every RNG is seeded from the configuration,
//! time is a number in the state, collections are ordered — so a run's state
//! counts and counterexamples are reproducible.
//!
//! # Layout
//! - [`config`]: what a check explores (clients, app scripts, faults, adversary, bounds).
//! - [`system`]: the explored state (server, clients, network, history, thief) and the step code.
//! - [`properties`]: the named properties and guards.
//! - [`model`]: the stateright [`stateright::Model`] over the system.
//! - [`x3dh`]: a small model over the crypto crate alone: forward secrecy of X3DH sessions.
//! - [`suite`]: the named configurations CI and the deep run check.
//! - [`run`]: running a check, timing it, and its report.
//! - [`trace`]: counterexamples as numbered traces in plain words.
//! - [`scenario`]: a counterexample written as a simulator scenario file.
//! - [`cli`]: `bluetick check`.

pub mod cli;
pub mod config;
pub mod model;
pub mod properties;
pub mod run;
pub mod scenario;
pub mod suite;
pub mod system;
pub mod trace;
pub mod x3dh;
