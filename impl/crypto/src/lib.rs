//! The cryptographic core of bluetick: X3DH key agreement, the Double Ratchet,
//! Sender Keys for groups, and client-side media encryption.
//!
//! # Contract
//! This crate is pure and deterministic. It does no IO, reads no clock and never
//! touches the operating system's RNG: every function that needs randomness
//! takes `&mut impl RngCore + CryptoRng`, so a seeded `rand_chacha` generator
//! reproduces a whole run byte for byte. Secrets are boxed, zeroized on drop and
//! redacted in `Debug`. Malformed or hostile input returns an error, never panics,
//! and a rejected message leaves every session exactly as it was.
//!
//! Every byte encoding is specified in this crate's `README.md`, precisely enough
//! to reproduce `tests/vectors/*.json` from the document alone.
//!
//! # Layout
//! - [`kdf`]: HKDF-SHA256 and HMAC-SHA256 helpers.
//! - [`keys`]: X25519 key pairs, identity keys, redacted secrets.
//! - [`xeddsa`]: XEdDSA signatures with identity keys, libsignal-compatible.
//! - [`suite`]: the `bluetick-v1` and `signal-v3-compat` cipher suites, and
//!   `symbolic-insecure` for scale runs.
//! - [`symbolic`]: the no-security stand-ins for X25519 and signatures that
//!   `symbolic-insecure` uses.
//! - [`prekeys`]: signed and one-time prekeys, bundles, bundle verification.
//! - [`x3dh`]: the X3DH handshake, initiator and responder.
//! - [`ratchet`]: Double Ratchet sessions with bounded skipped keys.
//! - [`sender_key`]: Sender Keys for groups, with rotation.
//! - [`media`]: streaming attachment encryption (`bluetick-v1`, `whatsapp-v1`).
//! - [`vectors`]: known-answer vectors, regenerated and checked by the tests.

mod bytes_serde;
pub mod kdf;
pub mod keys;
pub mod media;
pub mod prekeys;
pub mod ratchet;
pub mod sender_key;
pub mod suite;
pub mod symbolic;
pub mod vectors;
pub mod x3dh;
pub mod xeddsa;

pub use keys::{IdentityKeyPair, KeyError, KeyPair, PublicKey, SecretKey};
pub use suite::CipherSuite;
