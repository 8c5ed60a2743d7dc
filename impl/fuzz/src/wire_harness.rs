//! Frame decoding of arbitrary bytes, both directions.
//!
//! Invariants: decoding never panics; an input over `FRAME_LEN_MAX` is
//! refused as `TooLarge` whatever it holds; a frame that decodes re-encodes to
//! at most as many bytes as it came in (decoding never inflates, so what a
//! peer makes us hold is bounded by what it sent) and decodes back to itself.

use bluetick_core::wire::{self, ClientFrame, DecodeError, ServerFrame, FRAME_LEN_MAX};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Checks one input as a client frame and as a server frame.
pub fn run(data: &[u8]) {
    check::<ClientFrame>(data);
    check::<ServerFrame>(data);
}

fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    match wire::decode::<T>(data) {
        Ok(frame) => {
            assert!(data.len() <= FRAME_LEN_MAX, "{} bytes decoded past the limit", data.len());
            let again = wire::encode(&frame);
            assert!(again.len() <= data.len(), "{} bytes decoded to a frame of {} bytes", data.len(), again.len());
            assert_eq!(wire::decode::<T>(&again).as_ref(), Ok(&frame), "a decoded frame does not round-trip");
        }
        Err(DecodeError::TooLarge { len, max }) => {
            assert!(len > max && len == data.len(), "TooLarge for {} bytes", data.len());
        }
        Err(DecodeError::Malformed(_)) => {
            assert!(data.len() <= FRAME_LEN_MAX, "an oversize input must be refused before decoding");
        }
    }
}

/// Real encoded frames of every kind, the seed corpus of `wire_decode`.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, bytes) in crate::server_harness::sample_client_frames() {
        out.push((format!("client-{name}"), bytes));
    }
    for (name, bytes) in crate::client_harness::sample_server_frames() {
        out.push((format!("server-{name}"), bytes));
    }
    out
}
