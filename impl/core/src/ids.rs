//! Identifiers. Each is a newtype so a device id can never be passed where a
//! message id is expected, and each has a bounded encoded size.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest user name accepted, in bytes: long enough for phone numbers and
/// handles, short enough that routing keys stay small.
pub const USER_ID_LEN_MAX: usize = 32;

/// A user's account name: 1 to [`USER_ID_LEN_MAX`] bytes of `[a-z0-9_.+-]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct UserId(String);

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
        UserId(String::new())
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
        Ok(UserId(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UserId::new(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; 16]);

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
}
