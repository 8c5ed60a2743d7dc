//! Seeds from the operating system's random number generator.
//!
//! The state machines draw every random number from a seeded ChaCha20; a real
//! deployment seeds them here. Tests and simulators pass their own seeds.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// A 256-bit seed for a real device's [`bluetick_core::client::Client::from_seed`].
// The runtime is the one place allowed to read the OS RNG: key material for a
// real device must not be predictable.
#[allow(clippy::disallowed_types)]
pub fn os_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut seed);
    seed
}

/// A 64-bit seed for the server's nonce generator.
// As above: challenge nonces must not be predictable on a real server.
#[allow(clippy::disallowed_types)]
pub fn os_seed_u64() -> u64 {
    rand_core::OsRng.next_u64()
}

/// An OS-seeded generator for reconnect jitter, which must differ between
/// devices so they do not reconnect in lockstep after a server restart.
pub fn jitter_rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(os_seed_u64())
}
