//! The bytes every load message carries, so the receiver can tell who sent
//! it, in which order, and when — without asking the sender.
//!
//! Layout (little-endian), then padding up to `--size`:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | [`MAGIC`] |
//! | 4 | kind: 0 measured, 1 warm-up |
//! | 5..8 | zero |
//! | 8..12 | pair index |
//! | 12..20 | sequence number within the pair, from 0 |
//! | 20..28 | send time, µs on the load generator's monotonic clock |
//!
//! Sender and receiver live in the same process, so one monotonic clock
//! stamps both ends and the difference is the end-to-end latency.

/// Marks a load message; anything else arriving at a receiver is counted as
/// foreign rather than misread as a sequence number.
pub const MAGIC: [u8; 4] = *b"BTLG";

/// Bytes of the header; `--size` must be at least this.
pub const HEADER_LEN: usize = 28;

/// What a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Counted in the results.
    Measured,
    /// Opens sessions and proves the path works before the clock starts; not counted.
    WarmUp,
}

/// The header of one load message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// What it is for.
    pub kind: Kind,
    /// Which sender→receiver pair.
    pub pair: u32,
    /// Position in the pair's stream, from 0.
    pub seq: u64,
    /// When it was (meant to be) sent, µs on the monotonic clock.
    pub sent_us: u64,
}

impl Stamp {
    /// The message: header then `size - HEADER_LEN` bytes of filler (a
    /// pattern, so a body that is all zeros cannot hide a truncation).
    pub fn encode(&self, size: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(size.max(HEADER_LEN));
        out.extend_from_slice(&MAGIC);
        out.push(match self.kind {
            Kind::Measured => 0,
            Kind::WarmUp => 1,
        });
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.pair.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.sent_us.to_le_bytes());
        let mut filler = self.seq as u8;
        while out.len() < size {
            out.push(filler);
            filler = filler.wrapping_add(1);
        }
        out
    }

    /// Reads the header back; `None` for anything that is not a load message.
    pub fn decode(bytes: &[u8]) -> Option<Stamp> {
        let header = bytes.get(..HEADER_LEN)?;
        if header.get(..4)? != MAGIC {
            return None;
        }
        let kind = match header.get(4)? {
            0 => Kind::Measured,
            1 => Kind::WarmUp,
            _ => return None,
        };
        let pair = u32::from_le_bytes(header.get(8..12)?.try_into().ok()?);
        let seq = u64::from_le_bytes(header.get(12..20)?.try_into().ok()?);
        let sent_us = u64::from_le_bytes(header.get(20..28)?.try_into().ok()?);
        Some(Stamp { kind, pair, seq, sent_us })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_survives_encoding_at_the_requested_size() {
        let stamp = Stamp { kind: Kind::Measured, pair: 7, seq: 1 << 40, sent_us: 123_456_789 };
        let bytes = stamp.encode(1024);
        assert_eq!(bytes.len(), 1024);
        assert_eq!(Stamp::decode(&bytes), Some(stamp));
        let warm = Stamp { kind: Kind::WarmUp, ..stamp };
        assert_eq!(Stamp::decode(&warm.encode(HEADER_LEN)), Some(warm));
    }

    #[test]
    fn foreign_or_short_bytes_are_not_read_as_stamps() {
        let bytes = Stamp { kind: Kind::Measured, pair: 1, seq: 2, sent_us: 3 }.encode(64);
        assert_eq!(Stamp::decode(&bytes[..HEADER_LEN - 1]), None);
        let mut wrong_magic = bytes.clone();
        wrong_magic[0] ^= 1;
        assert_eq!(Stamp::decode(&wrong_magic), None);
        let mut wrong_kind = bytes;
        wrong_kind[4] = 9;
        assert_eq!(Stamp::decode(&wrong_kind), None);
    }
}
