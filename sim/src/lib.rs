//! bluetick-sim: scenario files, drivers, oracle verdicts and reports.
//!
//! # Contract
//! A run is a function of its scenario file, seed and crate version: no
//! clock reads, no OS randomness, no hash-ordered collections inside (wall
//! time is only printed by the command line, never written). Same seed ⇒
//! byte-identical `trace.jsonl` and `report.json`.
//!
//! # Layout
//! - [`scenario`]: the TOML format (model, parse, validate, resolve), with
//!   `file:line:column: field: message` errors.
//! - [`driver`]: the [`driver::Driver`] trait both drivers implement.
//! - [`direct`]: the direct driver over the core's in-process `World`.
//! - [`invariants`]: the invariants judged and when each applies.
//! - [`run`]: one run: plan → driver → quiesce → verdicts, guards, latency, `trace_hash`.
//! - [`trace`]: the trace written, hashed and mined for latencies on a second thread as the run goes.
//! - [`report`]: `report.json`, `report.md`, `trace.jsonl`; [`html`]: `report.html` with SVG plots.
//! - [`sweep`]: many seeds at once, shards and their merge, shrinking a failure.
//! - [`cli`]: `bluetick run`, `bluetick sweep`, `bluetick merge`.

pub mod cli;
pub mod direct;
pub mod driver;
pub mod html;
pub mod invariants;
pub mod report;
pub mod run;
pub mod scenario;
pub mod sweep;
pub mod trace;
pub mod turmoil;
