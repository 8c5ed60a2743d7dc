//! Wall-clock time for the drivers.
//!
//! The core takes `now_ms` as a parameter; the drivers ask a [`Clock`] for it.
//! Production uses [`SystemClock`]; a simulator (turmoil) or a test injects
//! its own.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now" in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    fn now_ms(&self) -> u64;
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    // The runtime is the one place that reads the real clock; the core only
    // ever receives the number.
    #[allow(clippy::disallowed_methods)]
    fn now_ms(&self) -> u64 {
        // A clock set before 1970 reads as the epoch rather than failing: the
        // core only compares times, and a stuck clock delays timers, no more.
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_reads_a_time_after_2025() {
        // 2025-01-01T00:00:00Z: a clock reading before it is not the real one.
        assert!(SystemClock.now_ms() > 1_735_689_600_000);
    }
}
