//! Serde for byte strings (keys, signatures, ciphertexts): lowercase hex in
//! human-readable formats (JSON test vectors, reports, TOML), raw bytes in
//! binary ones (postcard on the wire, in stores and in saved client state).
//!
//! Hex in postcard doubled every key on the wire and in every save, and
//! encoding it was a third of the simulator's time when a client with a
//! thousand sessions saved; readable text only helps where people read.

use serde::de::{Error, Visitor};
use serde::{Deserializer, Serializer};
use zeroize::Zeroize;

fn expecting_len(f: &mut std::fmt::Formatter, n: usize) -> std::fmt::Result {
    write!(f, "{n} bytes (or {} hex digits)", 2 * n)
}

/// A fixed-size array, `[u8; N]`.
pub(crate) mod fixed {
    use super::*;

    pub fn serialize<S: Serializer, const N: usize>(bytes: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(bytes))
        } else {
            s.serialize_bytes(bytes)
        }
    }

    struct Fixed<const N: usize>;

    impl<const N: usize> Visitor<'_> for Fixed<N> {
        type Value = [u8; N];

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            expecting_len(f, N)
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<[u8; N], E> {
            let mut out = [0u8; N];
            hex::decode_to_slice(v, &mut out).map_err(E::custom)?;
            Ok(out)
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<[u8; N], E> {
            v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(Fixed::<N>)
        } else {
            d.deserialize_bytes(Fixed::<N>)
        }
    }
}

/// A byte vector of any length.
pub(crate) mod vec {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(bytes))
        } else {
            s.serialize_bytes(bytes)
        }
    }

    struct Bytes;

    impl Visitor<'_> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes (or hex digits)")
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Vec<u8>, E> {
            hex::decode(v).map_err(E::custom)
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(Bytes)
        } else {
            d.deserialize_byte_buf(Bytes)
        }
    }
}

/// 32 secret bytes in a box. No copy of them outlives the call: the hex text
/// and any owned buffer a format hands over are wiped.
pub(crate) mod secret {
    use super::*;
    use zeroize::Zeroizing;

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let text = Zeroizing::new(hex::encode(bytes));
            s.serialize_str(&text)
        } else {
            s.serialize_bytes(bytes)
        }
    }

    struct Secret;

    impl Visitor<'_> for Secret {
        type Value = Box<[u8; 32]>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            expecting_len(f, 32)
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            let mut out = Box::new([0u8; 32]);
            hex::decode_to_slice(v, out.as_mut()).map_err(E::custom)?;
            Ok(out)
        }

        fn visit_string<E: Error>(self, mut v: String) -> Result<Self::Value, E> {
            let out = self.visit_str(&v);
            v.zeroize();
            out
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            if v.len() != 32 {
                return Err(E::invalid_length(v.len(), &self));
            }
            let mut out = Box::new([0u8; 32]);
            out.copy_from_slice(v);
            Ok(out)
        }

        fn visit_byte_buf<E: Error>(self, mut v: Vec<u8>) -> Result<Self::Value, E> {
            let out = self.visit_bytes(&v);
            v.zeroize();
            out
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Box<[u8; 32]>, D::Error> {
        if d.is_human_readable() {
            d.deserialize_string(Secret)
        } else {
            d.deserialize_bytes(Secret)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        #[serde(with = "super::fixed")]
        key: [u8; 4],
        #[serde(with = "super::vec")]
        body: Vec<u8>,
        #[serde(with = "super::secret")]
        secret: Box<[u8; 32]>,
    }

    fn sample() -> Sample {
        Sample { key: [0xde, 0xad, 0xbe, 0xef], body: vec![1, 2, 3], secret: Box::new([0x5a; 32]) }
    }

    #[test]
    fn json_shows_hex_and_postcard_raw_bytes() {
        let json = serde_json::to_string(&sample()).unwrap();
        assert_eq!(json, format!(r#"{{"key":"deadbeef","body":"010203","secret":"{}"}}"#, "5a".repeat(32)));
        assert_eq!(serde_json::from_str::<Sample>(&json).unwrap(), sample());
        let bin = postcard::to_allocvec(&sample()).unwrap();
        let mut want = vec![4, 0xde, 0xad, 0xbe, 0xef, 3, 1, 2, 3, 32];
        want.extend([0x5a; 32]);
        assert_eq!(bin, want, "a length prefix, then the bytes themselves");
        assert_eq!(postcard::from_bytes::<Sample>(&bin).unwrap(), sample());
    }

    #[test]
    fn wrong_lengths_and_bad_hex_are_errors() {
        let short = r#"{"key":"deadbe","body":"","secret":""}"#;
        assert!(serde_json::from_str::<Sample>(short).is_err());
        let not_hex = format!(r#"{{"key":"deadbeef","body":"zz","secret":"{}"}}"#, "5a".repeat(32));
        assert!(serde_json::from_str::<Sample>(&not_hex).is_err());
        let mut bin = postcard::to_allocvec(&sample()).unwrap();
        bin[0] = 3;
        assert!(postcard::from_bytes::<Sample>(&bin).is_err(), "a 3-byte key");
        let mut bin = postcard::to_allocvec(&sample()).unwrap();
        let at = bin.len() - 33;
        bin[at] = 31;
        assert!(postcard::from_bytes::<Sample>(&bin).is_err(), "a 31-byte secret");
    }
}
