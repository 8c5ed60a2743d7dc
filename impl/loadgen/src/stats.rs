//! What arrived: per-pair order and duplicate tracking, and the latency
//! histogram. Pure bookkeeping, no IO, so the arithmetic is unit-tested.

use hdrhistogram::Histogram;

/// Highest sequence number a pair may reach (2^28, 256 Mi messages per pair,
/// a 32 MiB bitset at most): far beyond any run, and it bounds the memory a
/// corrupt or foreign sequence number could make us allocate.
pub const SEQ_TRACKED_MAX: u64 = 1 << 28;

/// Longest latency the histogram resolves, in µs (one hour): a message
/// queued for an offline receiver during a long run still fits; longer ones
/// are clamped to it rather than dropped from the counts.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Significant decimal digits the histogram keeps: 0.1% resolution.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// How one arrival counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First time this sequence number arrived, and after every lower one
    /// that had arrived so far.
    InOrder,
    /// First time, but a higher sequence number arrived before it.
    Reordered,
    /// Arrived before: the receiver's app saw it twice.
    Duplicate,
    /// The sequence number is beyond [`SEQ_TRACKED_MAX`] or the pair is
    /// unknown: not a message this run sent.
    Foreign,
}

/// Order and duplicate tracking for one sender→receiver pair.
#[derive(Debug, Clone, Default)]
pub struct PairTrack {
    /// Bit `s` set once sequence number `s` arrived.
    seen: Vec<u64>,
    /// Highest sequence number seen so far.
    max_seq: Option<u64>,
    /// Distinct messages that arrived.
    pub delivered: u64,
    /// Arrivals of a message that had arrived before.
    pub duplicates: u64,
    /// First arrivals of a message after a higher one of the same pair.
    pub reorders: u64,
}

impl PairTrack {
    /// Records the arrival of sequence number `seq`.
    pub fn arrive(&mut self, seq: u64) -> Arrival {
        if seq >= SEQ_TRACKED_MAX {
            return Arrival::Foreign;
        }
        // Both fit in usize: seq < 2^28.
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        let Some(slot) = self.seen.get_mut(word) else { return Arrival::Foreign };
        if *slot & (1 << bit) != 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        *slot |= 1 << bit;
        self.delivered += 1;
        match self.max_seq {
            Some(max) if seq < max => {
                self.reorders += 1;
                Arrival::Reordered
            }
            _ => {
                self.max_seq = Some(seq);
                Arrival::InOrder
            }
        }
    }
}

/// Latency percentiles of the measured messages, in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Percentiles {
    /// Messages the histogram holds.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
}

/// Everything the receivers recorded.
#[derive(Debug, Clone)]
pub struct Book {
    /// One per pair.
    pub pairs: Vec<PairTrack>,
    /// End-to-end latency of first arrivals on pairs whose receiver was
    /// online. `None` only if hdrhistogram refused the bounds, which are
    /// constants it accepts; kept fallible so that cannot panic.
    latency: Option<Histogram<u64>>,
    /// Arrivals that were not load messages of this run.
    pub foreign: u64,
}

impl Book {
    /// An empty book for `pairs` pairs.
    pub fn new(pairs: usize) -> Book {
        let latency = Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS).ok();
        Book { pairs: vec![PairTrack::default(); pairs], latency, foreign: 0 }
    }

    /// Records an arrival on `pair`; with `latency_us` the first arrival's
    /// latency enters the histogram.
    pub fn record(&mut self, pair: u32, seq: u64, latency_us: Option<u64>) -> Arrival {
        let Some(track) = usize::try_from(pair).ok().and_then(|p| self.pairs.get_mut(p)) else {
            self.foreign += 1;
            return Arrival::Foreign;
        };
        let arrival = track.arrive(seq);
        match arrival {
            Arrival::InOrder | Arrival::Reordered => {
                if let (Some(us), Some(h)) = (latency_us, self.latency.as_mut()) {
                    h.saturating_record(us.clamp(1, LATENCY_US_MAX));
                }
            }
            Arrival::Foreign => self.foreign += 1,
            Arrival::Duplicate => {}
        }
        arrival
    }

    /// Distinct messages delivered, over all pairs.
    pub fn delivered(&self) -> u64 {
        self.pairs.iter().map(|p| p.delivered).sum()
    }

    /// Duplicate arrivals, over all pairs.
    pub fn duplicates(&self) -> u64 {
        self.pairs.iter().map(|p| p.duplicates).sum()
    }

    /// Out-of-order first arrivals, over all pairs.
    pub fn reorders(&self) -> u64 {
        self.pairs.iter().map(|p| p.reorders).sum()
    }

    /// The latency percentiles.
    pub fn percentiles(&self) -> Percentiles {
        let Some(h) = self.latency.as_ref().filter(|h| !h.is_empty()) else {
            return Percentiles::default();
        };
        Percentiles {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_counts_duplicates_and_reorders_separately() {
        let mut t = PairTrack::default();
        assert_eq!(t.arrive(0), Arrival::InOrder);
        assert_eq!(t.arrive(2), Arrival::InOrder);
        assert_eq!(t.arrive(1), Arrival::Reordered);
        assert_eq!(t.arrive(2), Arrival::Duplicate);
        assert_eq!(t.arrive(200), Arrival::InOrder);
        assert_eq!((t.delivered, t.duplicates, t.reorders), (4, 1, 1));
    }

    #[test]
    fn sequence_numbers_past_the_limit_are_foreign_and_allocate_nothing() {
        let mut book = Book::new(1);
        assert_eq!(book.record(0, SEQ_TRACKED_MAX, Some(5)), Arrival::Foreign);
        assert_eq!(book.record(3, 0, Some(5)), Arrival::Foreign);
        assert_eq!(book.foreign, 2);
        assert!(book.pairs[0].seen.is_empty());
        assert_eq!(book.percentiles().count, 0);
    }

    #[test]
    fn only_first_arrivals_with_a_latency_enter_the_histogram() {
        let mut book = Book::new(2);
        for seq in 0..100 {
            book.record(0, seq, Some(1_000 + seq * 10));
        }
        book.record(0, 5, Some(999_999));
        book.record(1, 0, None);
        let p = book.percentiles();
        assert_eq!(p.count, 100);
        assert!(p.p50_us <= p.p90_us && p.p90_us <= p.p99_us && p.p99_us <= p.max_us);
        assert!((1_480..=1_510).contains(&p.p50_us), "p50 {}", p.p50_us);
        assert!(p.max_us < 2_000, "the duplicate's latency was recorded: {}", p.max_us);
        assert_eq!((book.delivered(), book.duplicates(), book.reorders()), (101, 1, 0));
    }
}
