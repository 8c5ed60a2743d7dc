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

/// Frames a second the client sends at most on average by default: 90% of
/// the server's default limit (a client handing a new sender key to a
/// 1,024-member group needs every frame it can get).
pub const PACE_PER_SECOND: u64 = FRAMES_PER_SECOND_MAX as u64 * 9 / 10;

/// Frames the client may send at once on a fresh connection by default:
/// three quarters of the server's default burst, the rest is margin for
/// frames the network bunches.
pub const PACE_BURST: u64 = FRAMES_BURST_MAX as u64 * 3 / 4;

const MILLI: u64 = 1000;

/// A client's send budget on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Frames a second on average (0 is taken as 1).
    pub per_second: u64,
    /// Frames at once on a fresh connection (0 is taken as 1).
    pub burst: u64,
}

impl Pace {
    /// The budget for a server that refuses frames past `per_second` a
    /// second and `burst` at once (`bluetick serve --max-frames-per-second`):
    /// with the same margins as the defaults.
    pub fn under(per_second: u32, burst: u32) -> Self {
        Pace { per_second: u64::from(per_second) * 9 / 10, burst: u64::from(burst) * 3 / 4 }
    }

    fn rate(self) -> u64 {
        self.per_second.max(1)
    }

    pub(crate) fn cap(self) -> u64 {
        self.burst.max(1) * MILLI
    }
}

impl Default for Pace {
    fn default() -> Self {
        Pace { per_second: PACE_PER_SECOND, burst: PACE_BURST }
    }
}

/// A token bucket in thousandths of a frame, full on a new connection (as
/// the server's is).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacer {
    pace: Pace,
    milli_tokens: u64,
    at_ms: u64,
}

impl Pacer {
    pub(crate) fn new(now_ms: u64, pace: Pace) -> Self {
        Pacer { pace, milli_tokens: pace.cap(), at_ms: now_ms }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now_ms);
        self.milli_tokens =
            self.milli_tokens.saturating_add(elapsed.saturating_mul(self.pace.rate())).min(self.pace.cap());
    }

    /// The budget in thousandths of a frame at `now_ms` (no later input
    /// before it), which is all its future behaviour depends on.
    pub(crate) fn at(mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        self.milli_tokens
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
        self.at_ms.saturating_add(missing.div_ceil(self.pace.rate()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_bucket_lets_a_burst_go_then_the_rate() {
        let mut p = Pacer::new(1_000, Pace::default());
        assert_eq!(p.take(1_000, 1_000), PACE_BURST as usize);
        assert_eq!(p.take(1_000, 1), 0);
        assert_eq!(p.next_at(), 1_000 + MILLI.div_ceil(PACE_PER_SECOND));
        assert_eq!(p.take(2_000, 1_000), PACE_PER_SECOND as usize, "one second refills the rate");
        assert_eq!(p.take(2_000, 0), 0);
        assert_eq!(p.take(1_000_000, 1_000), PACE_BURST as usize, "never more than a burst saved up");
        assert!(PACE_PER_SECOND < u64::from(FRAMES_PER_SECOND_MAX) && PACE_BURST < u64::from(FRAMES_BURST_MAX));
    }

    #[test]
    fn a_budget_under_a_raised_server_limit_keeps_the_margins() {
        let pace = Pace::under(2_000, 4_000);
        assert_eq!(pace, Pace { per_second: 1_800, burst: 3_000 });
        assert_eq!(Pace::under(FRAMES_PER_SECOND_MAX, FRAMES_BURST_MAX), Pace::default());
        let mut p = Pacer::new(0, pace);
        assert_eq!(p.take(0, 10_000), 3_000);
        assert_eq!(p.take(1_000, 10_000), 1_800);
        let mut none = Pacer::new(0, Pace { per_second: 0, burst: 0 });
        assert_eq!(none.take(0, 10), 1, "a zero budget still lets one frame go");
        assert_eq!(none.next_at(), 1_000, "and one a second");
    }

    #[test]
    fn time_going_backwards_takes_nothing_extra() {
        let mut p = Pacer::new(5_000, Pace::default());
        assert_eq!(p.take(5_000, 1_000), PACE_BURST as usize);
        assert_eq!(p.take(4_000, 1_000), 0);
        assert_eq!(p.take(5_000, 1_000), 0, "the clock going back does not refill");
    }
}
