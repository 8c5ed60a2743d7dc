//! Pacing of outgoing frames under the server's per-connection frame limit.
//!
//! The server refuses frames past [`FRAMES_PER_SECOND_MAX`] a second on
//! average (burst [`FRAMES_BURST_MAX`]) and closes a connection after
//! repeated refusals. A client that turned every delivery into its own ack
//! frame, or handed out a sender key to a thousand members at once, ran into
//! that limit and lost its connection over and over. So the client releases
//! frames from a token bucket of its own, with a margin under the server's
//! (network jitter can bunch frames the client spaced out), and frames it
//! holds back wait in order; acks that wait are merged into one frame.

use crate::server::machine::{FRAMES_BURST_MAX, FRAMES_PER_SECOND_MAX};

/// Frames a second the client sends at most on average: 90% of the
/// server's limit (a client handing a new sender key to a 1,024-member group
/// needs every frame it can get).
pub const PACE_PER_SECOND: u64 = FRAMES_PER_SECOND_MAX as u64 * 9 / 10;

/// Frames the client may send at once on a fresh connection: three quarters
/// of the server's burst, the rest is margin for frames the network bunches.
pub const PACE_BURST: u64 = FRAMES_BURST_MAX as u64 * 3 / 4;

const MILLI: u64 = 1000;

/// A token bucket in thousandths of a frame, full on a new connection (as
/// the server's is).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacer {
    milli_tokens: u64,
    at_ms: u64,
}

impl Pacer {
    pub(crate) fn new(now_ms: u64) -> Self {
        Pacer { milli_tokens: PACE_BURST * MILLI, at_ms: now_ms }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now_ms);
        self.milli_tokens =
            self.milli_tokens.saturating_add(elapsed.saturating_mul(PACE_PER_SECOND)).min(PACE_BURST * MILLI);
    }

    /// How many of `want` frames may go now (and takes their tokens).
    pub(crate) fn take(&mut self, now_ms: u64, want: usize) -> usize {
        self.refill(now_ms);
        let n = (self.milli_tokens / MILLI).min(want as u64);
        self.milli_tokens -= n * MILLI;
        usize::try_from(n).unwrap_or(want)
    }

    /// When the next frame may go, if one waits now (after [`Pacer::take`]).
    pub(crate) fn next_at(&self) -> u64 {
        let missing = MILLI.saturating_sub(self.milli_tokens);
        self.at_ms.saturating_add(missing.div_ceil(PACE_PER_SECOND))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_bucket_lets_a_burst_go_then_the_rate() {
        let mut p = Pacer::new(1_000);
        assert_eq!(p.take(1_000, 1_000), PACE_BURST as usize);
        assert_eq!(p.take(1_000, 1), 0);
        assert_eq!(p.next_at(), 1_000 + MILLI.div_ceil(PACE_PER_SECOND));
        assert_eq!(p.take(2_000, 1_000), PACE_PER_SECOND as usize, "one second refills the rate");
        assert_eq!(p.take(2_000, 0), 0);
        assert_eq!(p.take(1_000_000, 1_000), PACE_BURST as usize, "never more than a burst saved up");
        assert!(PACE_PER_SECOND < u64::from(FRAMES_PER_SECOND_MAX) && PACE_BURST < u64::from(FRAMES_BURST_MAX));
    }

    #[test]
    fn time_going_backwards_takes_nothing_extra() {
        let mut p = Pacer::new(5_000);
        assert_eq!(p.take(5_000, 1_000), PACE_BURST as usize);
        assert_eq!(p.take(4_000, 1_000), 0);
        assert_eq!(p.take(5_000, 1_000), 0, "the clock going back does not refill");
    }
}
