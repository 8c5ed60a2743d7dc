//! The fuzz harnesses of bluetick, shared by two drivers: the cargo-fuzz
//! targets in `fuzz_targets/` (libFuzzer, nightly, `just fuzz`) and, on
//! stable, the proptests of `impl/core/tests/hostile_input.rs` and
//! `impl/crypto/tests/hostile_ciphertext.rs`, which include these files by
//! path and replay the committed corpora in `corpus/<target>/`.
//!
//! Each harness reads the fuzzer's bytes as a script of operations
//! ([`bytes::Bytes`]) and checks its invariants after every operation by
//! panicking, which both drivers report as a failure with the input.
//!
//! - [`wire_harness`]: `wire_decode`, frame decoding in both directions.
//! - [`server_harness`]: `server_frames`, the server fed arbitrary frame
//!   sequences from several connections, some logged in with real keys.
//! - [`client_harness`]: `client_frames`, the client fed arbitrary server
//!   frames (a malicious server).
//! - [`crypto_harness`]: `ratchet_decrypt` and `sender_key_decrypt`,
//!   decryption of arbitrary bytes.
//!
//! Not yet: scenario-file parsing. When the simulator crate (`sim/`) has its
//! scenario parser, add a `scenario_parse` target here that feeds arbitrary
//! bytes (as UTF-8 where they are) to it and checks it returns an error rather
//! than panicking or allocating without bound, with the files of
//! `scenarios/` as its seed corpus.

pub mod bytes;
pub mod client_harness;
pub mod crypto_harness;
pub mod server_harness;
pub mod wire_harness;
