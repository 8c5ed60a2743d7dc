//! Identifiers. Each is a newtype so a device id can never be passed where a
//! message id is expected, and each has a bounded encoded size.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest user name accepted, in bytes: long enough for phone numbers and
/// handles, short enough that routing keys stay small.
pub const USER_ID_LEN_MAX: usize = 32;

/// A user's account name: 1 to [`USER_ID_LEN_MAX`] bytes of `[a-z0-9_.+-]`.
///
/// Held inline, zero-padded, not as a `String`: user ids are the keys of
/// most maps in the server, client and simulator, and as heap strings every
/// lookup was a `memcmp` call and every clone an allocation (a fifth of the
/// direct driver's time). No valid byte is zero, so comparing the padded
/// bytes as big-endian words, then the lengths, is exactly the string order.
#[derive(Clone, PartialEq, Eq)]
pub struct UserId {
    bytes: [u8; USER_ID_LEN_MAX],
    len: u8,
}

/// Why a user id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    /// Empty, or longer than [`USER_ID_LEN_MAX`].
    #[error("user id must be 1..={max} bytes, got {len}")]
    Length {
        /// Bytes given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A byte outside `[a-z0-9_.+-]`.
    #[error("user id contains {found:?} at byte {at}; allowed are a-z 0-9 _ . + -")]
    Character {
        /// The offending character.
        found: char,
        /// Its byte offset.
        at: usize,
    },
}

impl UserId {
    /// Sorts before every valid user id (it is not one): the lower bound of
    /// a range over keys that start with something else.
    pub(crate) fn least() -> Self {
        UserId { bytes: [0; USER_ID_LEN_MAX], len: 0 }
    }

    /// Validates and wraps a user name.
    pub fn new(name: &str) -> Result<Self, UserIdError> {
        if name.is_empty() || name.len() > USER_ID_LEN_MAX {
            return Err(UserIdError::Length { len: name.len(), max: USER_ID_LEN_MAX });
        }
        if let Some((at, found)) =
            name.char_indices().find(|(_, c)| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '.' | '+' | '-'))
        {
            return Err(UserIdError::Character { found, at });
        }
        let mut bytes = [0; USER_ID_LEN_MAX];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        // The length check above keeps it within u8.
        Ok(UserId { bytes, len: name.len() as u8 })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // Only `new` fills the bytes, with a validated ASCII name.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }

    /// The padded bytes as big-endian words: their order is the names' order
    /// up to a tie between a name and its zero-padded extension, which the
    /// lengths break.
    fn words(&self) -> [u64; USER_ID_LEN_MAX / 8] {
        let mut w = [0u64; USER_ID_LEN_MAX / 8];
        for (word, chunk) in w.iter_mut().zip(self.bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *word = u64::from_be_bytes(b);
        }
        w
    }
}

impl Ord for UserId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let (a, b) = (self.words(), other.words());
        for (x, y) in a.iter().zip(b.iter()) {
            if x != y {
                return x.cmp(y);
            }
        }
        self.len.cmp(&other.len)
    }
}

impl PartialOrd for UserId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for UserId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As the `String` it once was, so hashes (and model fingerprints) did not move.
        self.as_str().hash(state);
    }
}

impl Serialize for UserId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A newtype of a string, as the derive on `UserId(String)` wrote it:
        // stored and wire bytes are unchanged.
        s.serialize_newtype_struct("UserId", self.as_str())
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = UserId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a user id")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<UserId, E> {
                UserId::new(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Name)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.as_str())
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One of a user's devices. Sessions, mailboxes and acks are per device so that
/// multi-device can be added without a redesign; today every user has device 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceId(pub u32);

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}", self.0)
    }
}

/// A routable device: the pair the server queues and delivers for.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceAddress {
    /// The account.
    pub user: UserId,
    /// The device of that account.
    pub device: DeviceId,
}

impl DeviceAddress {
    /// Convenience constructor.
    pub fn new(user: UserId, device: DeviceId) -> Self {
        DeviceAddress { user, device }
    }
}

impl fmt::Debug for DeviceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}/{:?}", self.user, self.device)
    }
}

macro_rules! id128 {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; 16]);

        // The bytes' order, as one big-endian integer: the derived order on
        // `[u8; 16]` calls `memcmp`, and ids are keys of the largest maps (the
        // server's accepted ids, the clients' dedup sets).
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                u128::from_be_bytes(self.0).cmp(&u128::from_be_bytes(other.0))
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl $name {
            /// Draws a fresh id from the injected RNG (never uuid v4 from the OS).
            pub fn random<R: rand_core::RngCore>(rng: &mut R) -> Self {
                let mut bytes = [0u8; 16];
                rng.fill_bytes(&mut bytes);
                $name(bytes)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Eight hex digits identify an id in a trace; the full value is in the JSON.
                write!(f, concat!($prefix, "{}"), hex::encode(&self.0[..4]))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }
    };
}

id128!(
    /// A message's 128-bit id, chosen by the sender and kept across retries, so
    /// the server can enqueue idempotently and the recipient can deduplicate.
    MessageId,
    "m:"
);
id128!(
    /// A group's 128-bit id, chosen by its creator.
    GroupId,
    "g:"
);
id128!(
    /// A media blob's 128-bit id, chosen by the uploader; knowing it is what lets
    /// a device download the (encrypted) blob.
    BlobId,
    "b:"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_rejects_empty_long_and_odd_characters() {
        assert!(UserId::new("alice").is_ok());
        assert!(UserId::new("+15551234567").is_ok());
        assert_eq!(UserId::new(""), Err(UserIdError::Length { len: 0, max: USER_ID_LEN_MAX }));
        assert!(matches!(UserId::new(&"a".repeat(33)), Err(UserIdError::Length { len: 33, .. })));
        assert_eq!(UserId::new("Bob"), Err(UserIdError::Character { found: 'B', at: 0 }));
        assert_eq!(UserId::new("a b"), Err(UserIdError::Character { found: ' ', at: 1 }));
    }

    #[test]
    fn user_id_deserialization_validates() {
        let ok: Result<UserId, _> = postcard::from_bytes(&postcard::to_allocvec(&"carol").unwrap());
        assert!(ok.is_ok());
        let bad: Result<UserId, _> = postcard::from_bytes(&postcard::to_allocvec(&"Carol!").unwrap());
        assert!(bad.is_err());
    }

    fn name() -> impl proptest::strategy::Strategy<Value = String> {
        // A small alphabet, so that prefixes and ties are common.
        proptest::string::string_regex("[ab0.]{1,32}").expect("valid regex")
    }

    proptest::proptest! {
        /// The inline representation must order, compare and encode exactly
        /// as the `String` it replaced: maps keyed by user ids, and so traces
        /// and reports, iterate in this order.
        #[test]
        fn user_id_orders_and_encodes_as_its_name(a in name(), b in name()) {
            let (ua, ub) = (UserId::new(&a).unwrap(), UserId::new(&b).unwrap());
            proptest::prop_assert_eq!(ua.cmp(&ub), a.cmp(&b));
            proptest::prop_assert_eq!(ua == ub, a == b);
            proptest::prop_assert_eq!(ua.as_str(), a.as_str());
            proptest::prop_assert_eq!(postcard::to_allocvec(&ua).unwrap(), postcard::to_allocvec(&a).unwrap());
            proptest::prop_assert!(UserId::least() < ua);
        }
    }

    proptest::proptest! {
        #[test]
        fn ids_order_as_their_bytes(a in proptest::array::uniform16(0u8..4), b in proptest::array::uniform16(0u8..4)) {
            proptest::prop_assert_eq!(MessageId(a).cmp(&MessageId(b)), a.cmp(&b));
        }
    }

    #[test]
    fn a_user_id_hashes_as_its_name_and_names_itself_when_refused() {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hasher = BuildHasherDefault::<DefaultHasher>::default();
        let alice = UserId::new("alice").unwrap();
        assert_eq!(hasher.hash_one(&alice), hasher.hash_one("alice".to_owned()));
        assert_ne!(hasher.hash_one(&alice), hasher.hash_one(UserId::new("bob").unwrap()));

        use serde::de::value::{Error, U32Deserializer};
        let refused = UserId::deserialize(U32Deserializer::<Error>::new(5)).unwrap_err();
        assert!(refused.to_string().contains("expected a user id"), "{refused}");
    }

    #[test]
    fn a_name_sorts_before_its_extensions_and_after_its_prefixes() {
        let ids: Vec<UserId> =
            ["a", "a.", "a0", "aa", "aaaaaaaa", "aaaaaaaaa", "b"].iter().map(|n| UserId::new(n).unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }
}
