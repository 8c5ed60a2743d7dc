//! The key distribution service: identity keys, signed prekeys and one-time
//! prekeys as devices upload them, and prekey bundles as initiators fetch them.
//!
//! The promises, each tested below and in `tests/presence_props.rs`:
//! - **An account is bound to its first identity key**: registering a different
//!   key for an existing device is refused.
//! - **Nothing unverified is stored**: a signed prekey whose XEdDSA signature by
//!   the device's identity key does not verify, or any low-order key, refuses
//!   the whole upload and changes nothing.
//! - **Each one-time prekey is handed out at most once**, lowest id first, and
//!   removed from the directory as it is handed out. With none left a bundle
//!   carries the signed prekey alone, and the owner is told to refill when the
//!   stock falls below [`PREKEY_LOW_WATER`].
//! - **Bounded**: at most [`ONE_TIME_PREKEYS_STORED_MAX`] one-time prekeys per
//!   device; an upload that would exceed it is refused whole, never truncated.
//! - **Rate limited**: each requester may fetch [`BUNDLE_FETCHES_PER_MINUTE_MAX`]
//!   bundles a minute (token bucket, burst [`BUNDLE_FETCH_BURST`]), so one
//!   client cannot drain another's one-time prekeys quickly. A refused fetch
//!   hands out nothing.
//!
//! # Persistence
//! The owning server writes each changed device's [`DeviceKeys`] to its store
//! after every call ([`KeyDirectory::take_dirty`], [`KeyDirectory::record`]) and
//! rebuilds with [`KeyDirectory::load`] after a crash. Rate-limit buckets and
//! counters are volatile: they are not in the records, so after a restart every
//! requester starts with a full bucket. That lets a requester fetch at most one
//! extra burst per crash, which is acceptable because the limit exists to slow
//! draining, not to account exactly. (A serde round trip of the whole
//! [`KeyDirectory`], as a simulator snapshot takes, keeps them.)

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bluetick_crypto::prekeys::is_low_order;
use bluetick_crypto::{CipherSuite, PublicKey};
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceAddress, DeviceId, UserId};
use crate::wire::{BundleReply, OneTimePreKeyUpload, SignedPreKeyUpload};

/// Most one-time prekeys stored per device. Twice the client's own stock
/// (`bluetick_crypto::prekeys::ONE_TIME_PREKEY_STOCK_MAX` = 100), so an honest
/// client's full stock always fits, while one device can make the server hold
/// no more than 200 × 36 bytes.
pub const ONE_TIME_PREKEYS_STORED_MAX: usize = 200;

/// Below this many one-time prekeys left, a fetch reports `low` and the server
/// asks the owner to upload more. Ten covers the first contacts of a burst of
/// new conversations (a group join) while the owner is reconnecting.
pub const PREKEY_LOW_WATER: u32 = 10;

/// Bundle fetches one requester may make per minute, sustained. Starting 30
/// new conversations a minute is far beyond a person's pace, and at this rate
/// draining an owner's full stock of 200 one-time prekeys takes a single
/// requester over six minutes, time for the owner to be told to refill.
pub const BUNDLE_FETCHES_PER_MINUTE_MAX: u32 = 30;

/// Fetches a requester may make at once after being idle: the same as the
/// per-minute rate (as with a tuned limit, see
/// [`KeyDirectory::set_fetches_per_minute`]), so opening a group of 30
/// members does not stall.
pub const BUNDLE_FETCH_BURST: u32 = BUNDLE_FETCHES_PER_MINUTE_MAX;

/// The period [`BUNDLE_FETCHES_PER_MINUTE_MAX`] refers to, in ms.
pub const RATE_PERIOD_MS: u64 = 60_000;

/// A key as the directory names it in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The device's identity key.
    Identity,
    /// The signed prekey with this id.
    SignedPreKey {
        /// Its id.
        id: u32,
    },
    /// The one-time prekey with this id.
    OneTimePreKey {
        /// Its id.
        id: u32,
    },
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Identity => f.write_str("identity key"),
            KeyKind::SignedPreKey { id } => write!(f, "signed prekey {id}"),
            KeyKind::OneTimePreKey { id } => write!(f, "one-time prekey {id}"),
        }
    }
}

/// Why the key directory refused a call. A refused call changes no stored key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyDirError {
    /// The device is bound to another identity key.
    #[error("device {device:?} is bound to another identity key")]
    IdentityBound {
        /// The device.
        device: DeviceAddress,
    },
    /// No identity key is registered for the device.
    #[error("unknown device {device:?}")]
    UnknownDevice {
        /// The device asked about.
        device: DeviceAddress,
    },
    /// The signed prekey's signature does not verify under the device's identity key.
    #[error("signed prekey {prekey_id} of device {device:?} has a bad signature")]
    BadSignature {
        /// The uploading device.
        device: DeviceAddress,
        /// The signed prekey's id.
        prekey_id: u32,
    },
    /// A key is a low-order point, so Diffie-Hellman with it would not depend on
    /// the peer's secret.
    #[error("device {device:?} offered a low-order {kind}: {key:?}")]
    LowOrderKey {
        /// The device.
        device: DeviceAddress,
        /// Which key.
        kind: KeyKind,
        /// The key.
        key: PublicKey,
    },
    /// A one-time prekey id is already stored (or repeated in the upload) with a
    /// different key; ids are never rebound.
    #[error("device {device:?} reused one-time prekey id {prekey_id} with a different key")]
    DuplicateOneTimePreKeyId {
        /// The device.
        device: DeviceAddress,
        /// The id.
        prekey_id: u32,
    },
    /// Storing the upload's new one-time prekeys would exceed the per-device limit.
    #[error("device {device:?} holds {stored} one-time prekeys and offered {offered} new ones; the limit is {max}")]
    StockFull {
        /// The device.
        device: DeviceAddress,
        /// One-time prekeys stored now.
        stored: usize,
        /// New (not yet stored) ones in the upload.
        offered: usize,
        /// [`ONE_TIME_PREKEYS_STORED_MAX`].
        max: usize,
    },
    /// The device registered but has not uploaded a signed prekey yet.
    #[error("device {device:?} has no signed prekey yet")]
    NoSignedPreKey {
        /// The device.
        device: DeviceAddress,
    },
    /// The requester fetched too many bundles recently; nothing was handed out.
    #[error("too many bundle fetches; retry in {retry_after_ms} ms")]
    RateLimited {
        /// Wait at least this long before one more fetch will be allowed.
        retry_after_ms: u64,
    },
}

/// Deliberate bugs a test, scenario or model check can switch on to prove its
/// checker notices. Off by default; never set them in a real deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyBug {
    /// Hand a one-time prekey out without removing it, so the next fetch gets
    /// the same one again.
    HandOutTwice,
}

/// A signed prekey as stored: the upload and the suite its signature was
/// checked under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSignedPreKey {
    /// The suite whose public-key encoding the signature covers.
    pub suite: CipherSuite,
    /// Id, key and signature as uploaded.
    pub prekey: SignedPreKeyUpload,
}

/// One device's keys: the durable record the server persists per device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeys {
    /// The identity key the device registered with.
    pub identity_key: PublicKey,
    /// The current signed prekey, once uploaded.
    pub signed_prekey: Option<StoredSignedPreKey>,
    /// One-time prekeys not yet handed out, by id.
    pub one_time_prekeys: BTreeMap<u32, PublicKey>,
    /// The highest one-time prekey id ever stored. Clients number their
    /// one-time prekeys upwards, so an upload of an id at or below this that
    /// is not stored any more is a retry of a key already handed out: it is
    /// skipped, never re-armed (a re-armed key would be handed out twice).
    pub one_time_id_high: Option<u32>,
}

/// A bundle handed out by [`KeyDirectory::fetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The bundle for the requester.
    pub bundle: BundleReply,
    /// One-time prekeys the owner has left after this fetch.
    pub remaining: u32,
    /// `remaining` is below [`PREKEY_LOW_WATER`]: tell the owner to upload more.
    pub low: bool,
}

/// What an accepted upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    /// One-time prekeys newly stored.
    pub added: usize,
    /// One-time prekeys already stored with the same id and key (a retried
    /// upload), left as they were.
    pub skipped: usize,
    /// One-time prekeys stored after the upload.
    pub stock: usize,
}

/// Running totals for reports (volatile: not persisted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCounters {
    /// Devices newly registered.
    pub registered: u64,
    /// Uploads accepted.
    pub uploads_accepted: u64,
    /// Uploads refused (bad signature, low-order key, reused id, stock full, unknown device).
    pub uploads_refused: u64,
    /// One-time prekeys newly stored.
    pub one_time_uploaded: u64,
    /// One-time prekeys handed out in bundles.
    pub handed_out_total: u64,
    /// Bundles handed out with the signed prekey alone (owner had none left).
    pub fallback_total: u64,
    /// Fetches refused by the rate limit.
    pub rate_limited_total: u64,
}

/// A requester's token bucket, in units of 1/[`RATE_PERIOD_MS`] token so that
/// refill is exact integer arithmetic: one ms adds `per_minute` units (the
/// directory's limit, [`BUNDLE_FETCHES_PER_MINUTE_MAX`] by default), a fetch
/// costs [`RATE_PERIOD_MS`], and a full bucket holds a minute's worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket {
    units: u64,
    at_ms: u64,
}

const FETCH_COST_UNITS: u64 = RATE_PERIOD_MS;

fn capacity_units(per_minute: u32) -> u64 {
    u64::from(per_minute) * RATE_PERIOD_MS
}

impl Bucket {
    fn full(now_ms: u64, per_minute: u32) -> Self {
        Bucket { units: capacity_units(per_minute), at_ms: now_ms }
    }

    /// The level at `now_ms`. A clock that steps back refills nothing.
    fn level(&self, now_ms: u64, per_minute: u32) -> u64 {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.units.saturating_add(elapsed.saturating_mul(u64::from(per_minute))).min(capacity_units(per_minute))
    }
}

/// The key distribution service's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDirectory {
    devices: BTreeMap<DeviceAddress, DeviceKeys>,
    /// Volatile: see the module documentation.
    buckets: BTreeMap<DeviceAddress, Bucket>,
    dirty: BTreeSet<DeviceAddress>,
    counters: KeyCounters,
    bug: Option<KeyBug>,
    /// Fetches per minute and burst per requester (at least 1).
    fetches_per_minute: u32,
}

impl Default for KeyDirectory {
    fn default() -> Self {
        KeyDirectory {
            devices: BTreeMap::new(),
            buckets: BTreeMap::new(),
            dirty: BTreeSet::new(),
            counters: KeyCounters::default(),
            bug: None,
            fetches_per_minute: BUNDLE_FETCHES_PER_MINUTE_MAX,
        }
    }
}

impl KeyDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        KeyDirectory::default()
    }

    /// Switches a deliberate bug on (or off with `None`); see [`KeyBug`].
    pub fn set_bug(&mut self, bug: Option<KeyBug>) {
        self.bug = bug;
    }

    /// Sets the bundle fetches one requester may make per minute, which is
    /// also its burst after being idle (values below 1 are treated as 1).
    /// A test or scale simulation that sets up large groups in seconds raises
    /// it; the default is [`BUNDLE_FETCHES_PER_MINUTE_MAX`].
    pub fn set_fetches_per_minute(&mut self, per_minute: u32) {
        self.fetches_per_minute = per_minute.max(1);
    }

    /// Binds `addr` to `identity_key`. Registering the same key again is a
    /// no-op; a different key for a known device is refused.
    pub fn register(&mut self, addr: &DeviceAddress, identity_key: PublicKey) -> Result<(), KeyDirError> {
        if let Some(existing) = self.devices.get(addr) {
            if existing.identity_key == identity_key {
                return Ok(());
            }
            return Err(KeyDirError::IdentityBound { device: addr.clone() });
        }
        if is_low_order(&identity_key) {
            return Err(KeyDirError::LowOrderKey { device: addr.clone(), kind: KeyKind::Identity, key: identity_key });
        }
        self.devices.insert(
            addr.clone(),
            DeviceKeys { identity_key, signed_prekey: None, one_time_prekeys: BTreeMap::new(), one_time_id_high: None },
        );
        self.dirty.insert(addr.clone());
        self.counters.registered += 1;
        Ok(())
    }

    /// Every registered device of `user`, in device order (routing for
    /// group sends, receipts and notices).
    pub fn devices_of(&self, user: &UserId) -> Vec<DeviceAddress> {
        let first = DeviceAddress::new(user.clone(), DeviceId(0));
        self.devices.range(first..).take_while(|(a, _)| &a.user == user).map(|(a, _)| a.clone()).collect()
    }

    /// The identity key `addr` registered with.
    pub fn identity(&self, addr: &DeviceAddress) -> Option<PublicKey> {
        self.devices.get(addr).map(|d| d.identity_key)
    }

    /// The signed prekey bundles of `addr` currently carry.
    pub fn signed_prekey(&self, addr: &DeviceAddress) -> Option<&StoredSignedPreKey> {
        self.devices.get(addr)?.signed_prekey.as_ref()
    }

    /// One-time prekeys `addr` has left (0 for an unknown device).
    pub fn one_time_count(&self, addr: &DeviceAddress) -> usize {
        self.devices.get(addr).map_or(0, |d| d.one_time_prekeys.len())
    }

    /// Devices registered.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether no device is registered.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Running totals.
    pub fn counters(&self) -> &KeyCounters {
        &self.counters
    }

    /// Replaces the signed prekey of `addr` and adds one-time prekeys.
    ///
    /// Checked in this order, and all before anything is stored, so a refused
    /// upload changes nothing: the device is registered; the signed prekey's
    /// signature verifies under its identity key over `suite`'s encoding of
    /// the key; no one-time id is rebound to a different key (a prekey already
    /// stored with the same id and key is skipped, so a retried upload is
    /// harmless); the new ones fit under [`ONE_TIME_PREKEYS_STORED_MAX`]; no
    /// key is low-order.
    pub fn upload(
        &mut self,
        addr: &DeviceAddress,
        suite: CipherSuite,
        signed: &SignedPreKeyUpload,
        one_time: &[OneTimePreKeyUpload],
    ) -> Result<Uploaded, KeyDirError> {
        let result = self.check_upload(addr, suite, signed, one_time);
        let new = match result {
            Ok(new) => new,
            Err(e) => {
                self.counters.uploads_refused += 1;
                return Err(e);
            }
        };
        let Some(device) = self.devices.get_mut(addr) else {
            // check_upload found the device; unreachable, but refusing is safe.
            self.counters.uploads_refused += 1;
            return Err(KeyDirError::UnknownDevice { device: addr.clone() });
        };
        device.signed_prekey = Some(StoredSignedPreKey { suite, prekey: signed.clone() });
        let added = new.len();
        if let Some(&top) = new.keys().next_back() {
            device.one_time_id_high = Some(device.one_time_id_high.map_or(top, |h| h.max(top)));
        }
        device.one_time_prekeys.extend(new);
        let stock = device.one_time_prekeys.len();
        self.dirty.insert(addr.clone());
        self.counters.uploads_accepted += 1;
        self.counters.one_time_uploaded += added as u64;
        Ok(Uploaded { added, skipped: one_time.len().saturating_sub(added), stock })
    }

    /// Validates an upload without changing anything; returns the one-time
    /// prekeys to add.
    fn check_upload(
        &self,
        addr: &DeviceAddress,
        suite: CipherSuite,
        signed: &SignedPreKeyUpload,
        one_time: &[OneTimePreKeyUpload],
    ) -> Result<BTreeMap<u32, PublicKey>, KeyDirError> {
        let device = self.devices.get(addr).ok_or_else(|| KeyDirError::UnknownDevice { device: addr.clone() })?;
        // Both refusals (bad signature, identity key with no Edwards form) mean
        // the same to the uploader: this signed prekey is not vouched for.
        suite
            .verify(&device.identity_key, &suite.encode_public(&signed.key), &signed.signature)
            .map_err(|_| KeyDirError::BadSignature { device: addr.clone(), prekey_id: signed.id })?;
        let mut new: BTreeMap<u32, PublicKey> = BTreeMap::new();
        for opk in one_time {
            let known = device.one_time_prekeys.get(&opk.id).or_else(|| new.get(&opk.id));
            match known {
                Some(key) if *key == opk.key => {}
                Some(_) => {
                    return Err(KeyDirError::DuplicateOneTimePreKeyId { device: addr.clone(), prekey_id: opk.id })
                }
                // Handed out (or otherwise gone) before: never re-armed.
                None if device.one_time_id_high.is_some_and(|high| opk.id <= high) => {}
                None => {
                    new.insert(opk.id, opk.key);
                }
            }
        }
        if device.one_time_prekeys.len() + new.len() > ONE_TIME_PREKEYS_STORED_MAX {
            return Err(KeyDirError::StockFull {
                device: addr.clone(),
                stored: device.one_time_prekeys.len(),
                offered: new.len(),
                max: ONE_TIME_PREKEYS_STORED_MAX,
            });
        }
        if is_low_order(&signed.key) {
            return Err(KeyDirError::LowOrderKey {
                device: addr.clone(),
                kind: KeyKind::SignedPreKey { id: signed.id },
                key: signed.key,
            });
        }
        if let Some((&id, &key)) = new.iter().find(|(_, key)| is_low_order(key)) {
            return Err(KeyDirError::LowOrderKey { device: addr.clone(), kind: KeyKind::OneTimePreKey { id }, key });
        }
        Ok(new)
    }

    /// Hands `requester` a bundle of `owner`'s keys, with the owner's lowest-id
    /// one-time prekey, which is removed so no one else ever gets it.
    ///
    /// The rate limit is checked first, so probing for unknown devices is
    /// throttled too; every fetch it admits spends a token, whatever the
    /// outcome. A rate-limited fetch changes nothing.
    pub fn fetch(
        &mut self,
        requester: &DeviceAddress,
        owner: &DeviceAddress,
        now_ms: u64,
    ) -> Result<Fetched, KeyDirError> {
        let per_minute = self.fetches_per_minute.max(1);
        let bucket = self.buckets.get(requester).copied().unwrap_or_else(|| Bucket::full(now_ms, per_minute));
        let level = bucket.level(now_ms, per_minute);
        if level < FETCH_COST_UNITS {
            self.counters.rate_limited_total += 1;
            let missing = FETCH_COST_UNITS - level;
            return Err(KeyDirError::RateLimited { retry_after_ms: missing.div_ceil(u64::from(per_minute)) });
        }
        self.buckets
            .insert(requester.clone(), Bucket { units: level - FETCH_COST_UNITS, at_ms: now_ms.max(bucket.at_ms) });

        let device = self.devices.get_mut(owner).ok_or_else(|| KeyDirError::UnknownDevice { device: owner.clone() })?;
        let signed =
            device.signed_prekey.as_ref().ok_or_else(|| KeyDirError::NoSignedPreKey { device: owner.clone() })?;
        let signed_prekey = signed.prekey.clone();
        let one_time_prekey = if self.bug == Some(KeyBug::HandOutTwice) {
            device.one_time_prekeys.first_key_value().map(|(&id, &key)| OneTimePreKeyUpload { id, key })
        } else {
            device.one_time_prekeys.pop_first().map(|(id, key)| OneTimePreKeyUpload { id, key })
        };
        let identity_key = device.identity_key;
        let remaining = u32::try_from(device.one_time_prekeys.len()).unwrap_or(u32::MAX);
        match one_time_prekey {
            Some(_) => {
                self.counters.handed_out_total += 1;
                self.dirty.insert(owner.clone());
            }
            None => self.counters.fallback_total += 1,
        }
        Ok(Fetched {
            bundle: BundleReply { owner: owner.clone(), identity_key, signed_prekey, one_time_prekey },
            remaining,
            low: remaining < PREKEY_LOW_WATER,
        })
    }

    /// Forgets rate-limit buckets that have refilled completely by `now_ms`: a
    /// full bucket behaves exactly like a missing one, so this bounds memory by
    /// recently active requesters without changing behaviour.
    pub fn prune_rate_limits(&mut self, now_ms: u64) {
        let per_minute = self.fetches_per_minute.max(1);
        self.buckets.retain(|_, b| b.level(now_ms, per_minute) < capacity_units(per_minute));
    }

    /// Devices whose [`DeviceKeys`] changed since the last call, in order; the
    /// caller writes each one's [`KeyDirectory::record`] to its store.
    pub fn take_dirty(&mut self) -> Vec<DeviceAddress> {
        std::mem::take(&mut self.dirty).into_iter().collect()
    }

    /// The durable record of `addr`, or `None` if the device is unknown.
    pub fn record(&self, addr: &DeviceAddress) -> Option<DeviceKeys> {
        self.devices.get(addr).cloned()
    }

    /// Rebuilds from stored records after a restart (meant for an empty
    /// directory; a record replaces any device with the same address). Loaded
    /// devices are not dirty: they are what the store already holds.
    pub fn load(&mut self, records: impl IntoIterator<Item = (DeviceAddress, DeviceKeys)>) {
        self.devices.extend(records);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DeviceId, UserId};
    use bluetick_crypto::{IdentityKeyPair, KeyPair};
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use std::cell::RefCell;

    fn addr(name: &str) -> DeviceAddress {
        DeviceAddress::new(UserId::new(name).unwrap(), DeviceId(1))
    }

    struct Owner {
        addr: DeviceAddress,
        identity: IdentityKeyPair,
        rng: RefCell<ChaCha20Rng>,
    }

    impl Owner {
        fn new(name: &str, seed: u64) -> Self {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let identity = IdentityKeyPair::generate(&mut rng);
            Owner { addr: addr(name), identity, rng: RefCell::new(rng) }
        }

        fn signed(&self, suite: CipherSuite, id: u32) -> SignedPreKeyUpload {
            let key = self.key();
            let signature = self.identity.sign(&suite.encode_public(&key), &mut *self.rng.borrow_mut());
            SignedPreKeyUpload { id, key, signature }
        }

        fn key(&self) -> PublicKey {
            KeyPair::generate(&mut *self.rng.borrow_mut()).public()
        }

        fn one_time(&self, ids: std::ops::Range<u32>) -> Vec<OneTimePreKeyUpload> {
            ids.map(|id| OneTimePreKeyUpload { id, key: self.key() }).collect()
        }

        fn registered(self, dir: &mut KeyDirectory) -> Self {
            dir.register(&self.addr, self.identity.public()).unwrap();
            self
        }
    }

    /// Points of order dividing 8 (Bernstein's list) and a non-canonical 1.
    fn low_order_points() -> Vec<PublicKey> {
        [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ]
        .iter()
        .map(|h| PublicKey(hex::decode(h).unwrap().try_into().unwrap()))
        .collect()
    }

    /// Fetches `n` bundles from distinct requesters (so the rate limit never
    /// applies) and returns the one-time prekey ids handed out.
    fn fetch_many(dir: &mut KeyDirectory, owner: &DeviceAddress, n: usize) -> Vec<Fetched> {
        (0..n).map(|i| dir.fetch(&addr(&format!("r{i}")), owner, 0).unwrap()).collect()
    }

    /// The check the proptests and the simulator apply: no one-time prekey id
    /// appears in two bundles.
    fn each_one_time_prekey_at_most_once(fetched: &[Fetched]) -> Result<(), u32> {
        let mut seen = BTreeSet::new();
        for f in fetched {
            if let Some(opk) = f.bundle.one_time_prekey {
                if !seen.insert(opk.id) {
                    return Err(opk.id);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn one_time_prekeys_go_out_once_lowest_first_then_the_signed_prekey_alone_with_low_set() {
        let mut dir = KeyDirectory::new();
        let bob = Owner::new("bob", 1).registered(&mut dir);
        let spk = bob.signed(CipherSuite::BluetickV1, 7);
        let opks = bob.one_time(1..13);
        dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk, &opks).unwrap();

        let fetched = fetch_many(&mut dir, &bob.addr, 15);
        each_one_time_prekey_at_most_once(&fetched).unwrap();
        let ids: Vec<Option<u32>> = fetched.iter().map(|f| f.bundle.one_time_prekey.map(|o| o.id)).collect();
        let mut want: Vec<Option<u32>> = (1..13).map(Some).collect();
        want.extend([None, None, None]);
        assert_eq!(ids, want);
        for (i, f) in fetched.iter().enumerate() {
            assert_eq!(f.bundle.signed_prekey, spk);
            assert_eq!(f.bundle.identity_key, bob.identity.public());
            let remaining = 12u32.saturating_sub(i as u32 + 1);
            assert_eq!(f.remaining, remaining, "fetch {i}");
            assert_eq!(f.low, remaining < PREKEY_LOW_WATER, "fetch {i}");
        }
        // The keys handed out are the uploaded ones, and none is left behind.
        assert_eq!(fetched[0].bundle.one_time_prekey, Some(opks[0]));
        assert_eq!(dir.one_time_count(&bob.addr), 0);
        assert_eq!(dir.counters().handed_out_total, 12);
        assert_eq!(dir.counters().fallback_total, 3);
    }

    #[test]
    fn a_bad_signature_refuses_the_upload_and_stores_nothing() {
        let mut dir = KeyDirectory::new();
        let bob = Owner::new("bob", 2).registered(&mut dir);
        let good = bob.signed(CipherSuite::BluetickV1, 1);
        dir.upload(&bob.addr, CipherSuite::BluetickV1, &good, &bob.one_time(1..3)).unwrap();
        dir.take_dirty();
        let before = dir.clone();

        let mut tampered = bob.signed(CipherSuite::BluetickV1, 2);
        tampered.signature.0[5] ^= 1;
        let more = bob.one_time(3..6);
        assert_eq!(
            dir.upload(&bob.addr, CipherSuite::BluetickV1, &tampered, &more),
            Err(KeyDirError::BadSignature { device: bob.addr.clone(), prekey_id: 2 })
        );
        // Signed by someone else.
        let mallory = Owner::new("mallory", 3);
        let mut forged = bob.signed(CipherSuite::BluetickV1, 3);
        forged.signature = mallory.identity.sign(&forged.key.0, &mut *bob.rng.borrow_mut());
        assert!(matches!(
            dir.upload(&bob.addr, CipherSuite::BluetickV1, &forged, &more),
            Err(KeyDirError::BadSignature { prekey_id: 3, .. })
        ));
        // Signed over the other suite's encoding (0x05-prefixed key).
        let compat = bob.signed(CipherSuite::SignalV3Compat, 4);
        assert!(matches!(
            dir.upload(&bob.addr, CipherSuite::BluetickV1, &compat, &more),
            Err(KeyDirError::BadSignature { prekey_id: 4, .. })
        ));

        assert_eq!(dir.record(&bob.addr), before.record(&bob.addr));
        assert!(dir.take_dirty().is_empty());
        assert_eq!(dir.counters().uploads_refused, 3);
        // The same compat upload is fine under its own suite.
        dir.upload(&bob.addr, CipherSuite::SignalV3Compat, &compat, &more).unwrap();
        assert_eq!(dir.signed_prekey(&bob.addr).unwrap().suite, CipherSuite::SignalV3Compat);
    }

    #[test]
    fn an_identity_is_bound_once_and_re_registering_it_is_a_no_op() {
        let mut dir = KeyDirectory::new();
        let bob = Owner::new("bob", 4).registered(&mut dir);
        assert_eq!(dir.take_dirty(), vec![bob.addr.clone()]);
        assert_eq!(dir.register(&bob.addr, bob.identity.public()), Ok(()));
        assert!(dir.take_dirty().is_empty());
        let other = Owner::new("bob", 5);
        assert_eq!(
            dir.register(&bob.addr, other.identity.public()),
            Err(KeyDirError::IdentityBound { device: bob.addr.clone() })
        );
        assert_eq!(dir.identity(&bob.addr), Some(bob.identity.public()));
        assert_eq!(dir.counters().registered, 1);
        assert_eq!(dir.len(), 1, "re-registering adds no device");
        let _carol = Owner::new("carol", 6).registered(&mut dir);
        let _dave = Owner::new("dave", 7).registered(&mut dir);
        assert_eq!(dir.len(), 3);
        assert!(!dir.is_empty());
        assert!(KeyDirectory::new().is_empty());
    }

    #[test]
    fn uploading_or_fetching_for_an_unregistered_device_is_refused() {
        let mut dir = KeyDirectory::new();
        let bob = Owner::new("bob", 6);
        let spk = bob.signed(CipherSuite::BluetickV1, 1);
        assert_eq!(
            dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk, &[]),
            Err(KeyDirError::UnknownDevice { device: bob.addr.clone() })
        );
        assert_eq!(
            dir.fetch(&addr("alice"), &bob.addr, 0),
            Err(KeyDirError::UnknownDevice { device: bob.addr.clone() })
        );
        let bob = bob.registered(&mut dir);
        assert_eq!(
            dir.fetch(&addr("alice"), &bob.addr, 0),
            Err(KeyDirError::NoSignedPreKey { device: bob.addr.clone() })
        );
    }

    #[test]
    fn the_rate_limit_admits_exactly_the_burst_and_refuses_one_more_without_handing_anything_out() {
        let mut dir = KeyDirectory::new();
        let bob = Owner::new("bob", 7).registered(&mut dir);
        let spk = bob.signed(CipherSuite::BluetickV1, 1);
        dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk, &bob.one_time(1..101)).unwrap();
        let mallory = addr("mallory");
        let t = 1_000_000;
        for i in 0..BUNDLE_FETCH_BURST {
            assert!(dir.fetch(&mallory, &bob.addr, t).is_ok(), "fetch {i} within the burst");
        }
        dir.take_dirty();
        let before = dir.record(&bob.addr);
        let per_token_ms = RATE_PERIOD_MS / u64::from(BUNDLE_FETCHES_PER_MINUTE_MAX);
        assert_eq!(dir.fetch(&mallory, &bob.addr, t), Err(KeyDirError::RateLimited { retry_after_ms: per_token_ms }));
        assert_eq!(dir.record(&bob.addr), before, "a refused fetch hands nothing out");
        assert!(dir.take_dirty().is_empty());
        assert_eq!(dir.one_time_count(&bob.addr), 100 - BUNDLE_FETCH_BURST as usize);
        assert_eq!(dir.counters().rate_limited_total, 1);
        // Another requester is not affected.
        assert!(dir.fetch(&addr("alice"), &bob.addr, t).is_ok());
    }

    #[test]
    fn tokens_return_with_time_one_per_interval_up_to_the_burst() {
        let mut dir = KeyDirectory::new();
        let bob = Owner::new("bob", 8).registered(&mut dir);
        let spk = bob.signed(CipherSuite::BluetickV1, 1);
        dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk, &[]).unwrap();
        let mallory = addr("mallory");
        for _ in 0..BUNDLE_FETCH_BURST {
            dir.fetch(&mallory, &bob.addr, 0).unwrap();
        }
        let per_token_ms = RATE_PERIOD_MS / u64::from(BUNDLE_FETCHES_PER_MINUTE_MAX);
        assert_eq!(
            dir.fetch(&mallory, &bob.addr, per_token_ms - 1),
            Err(KeyDirError::RateLimited { retry_after_ms: 1 })
        );
        assert!(dir.fetch(&mallory, &bob.addr, per_token_ms).is_ok());
        assert!(matches!(dir.fetch(&mallory, &bob.addr, per_token_ms), Err(KeyDirError::RateLimited { .. })));
        // A clock stepping back refills nothing and does not panic.
        assert!(matches!(dir.fetch(&mallory, &bob.addr, 0), Err(KeyDirError::RateLimited { .. })));
        // After a long idle the bucket is full again, never fuller.
        let later = 10 * RATE_PERIOD_MS;
        for i in 0..BUNDLE_FETCH_BURST {
            assert!(dir.fetch(&mallory, &bob.addr, later).is_ok(), "fetch {i} after idling");
        }
        assert!(matches!(dir.fetch(&mallory, &bob.addr, later), Err(KeyDirError::RateLimited { .. })));
        // Pruning keeps the drained bucket and drops it once it is full.
        dir.prune_rate_limits(later);
        assert!(matches!(dir.fetch(&mallory, &bob.addr, later), Err(KeyDirError::RateLimited { .. })));
        dir.prune_rate_limits(later + RATE_PERIOD_MS);
        assert!(dir.buckets.is_empty());
    }

    #[test]
    fn a_tuned_fetch_limit_sets_both_the_burst_and_the_refill() {
        let mut dir = KeyDirectory::new();
        dir.set_fetches_per_minute(120);
        let bob = Owner::new("bob", 8).registered(&mut dir);
        let spk = bob.signed(CipherSuite::BluetickV1, 1);
        dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk, &[]).unwrap();
        let mallory = addr("mallory");
        for i in 0..120 {
            assert!(dir.fetch(&mallory, &bob.addr, 0).is_ok(), "fetch {i} of the burst");
        }
        // 120 a minute: one token every 500 ms.
        assert_eq!(dir.fetch(&mallory, &bob.addr, 0), Err(KeyDirError::RateLimited { retry_after_ms: 500 }));
        assert!(dir.fetch(&mallory, &bob.addr, 500).is_ok());
        // Zero would refuse everything and divide by zero: it counts as one.
        dir.set_fetches_per_minute(0);
        assert_eq!(
            dir.fetch(&addr("eve"), &bob.addr, 0).map(|_| ()),
            Ok(()),
            "a fresh requester gets its burst of one"
        );
        assert_eq!(dir.fetch(&addr("eve"), &bob.addr, 0), Err(KeyDirError::RateLimited { retry_after_ms: 60_000 }));
    }

    #[test]
    fn an_upload_past_the_stock_limit_is_refused_whole() {
        let mut dir = KeyDirectory::new();
        let bob = Owner::new("bob", 9).registered(&mut dir);
        let spk = bob.signed(CipherSuite::BluetickV1, 1);
        let max = ONE_TIME_PREKEYS_STORED_MAX as u32;
        dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk, &bob.one_time(1..max - 4)).unwrap();
        let before = dir.record(&bob.addr);
        let spk2 = bob.signed(CipherSuite::BluetickV1, 2);
        assert_eq!(
            dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk2, &bob.one_time(1000..1010)),
            Err(KeyDirError::StockFull {
                device: bob.addr.clone(),
                stored: ONE_TIME_PREKEYS_STORED_MAX - 5,
                offered: 10,
                max: ONE_TIME_PREKEYS_STORED_MAX
            })
        );
        assert_eq!(dir.record(&bob.addr), before, "neither the signed prekey nor any one-time prekey changed");
        // Exactly filling the stock is fine.
        let up = dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk2, &bob.one_time(1000..1005)).unwrap();
        assert_eq!(up, Uploaded { added: 5, skipped: 0, stock: ONE_TIME_PREKEYS_STORED_MAX });
        assert!(matches!(
            dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk2, &bob.one_time(2000..2001)),
            Err(KeyDirError::StockFull { offered: 1, .. })
        ));
    }

    #[test]
    fn a_retried_upload_skips_known_prekeys_and_a_rebound_id_is_refused() {
        let mut dir = KeyDirectory::new();
        let bob = Owner::new("bob", 10).registered(&mut dir);
        let spk = bob.signed(CipherSuite::BluetickV1, 1);
        let opks = bob.one_time(1..6);
        assert_eq!(
            dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk, &opks).unwrap(),
            Uploaded { added: 5, skipped: 0, stock: 5 }
        );
        assert_eq!(
            dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk, &opks).unwrap(),
            Uploaded { added: 0, skipped: 5, stock: 5 }
        );
        // Counted per accepted upload, and per key really added.
        assert_eq!((dir.counters().uploads_accepted, dir.counters().one_time_uploaded), (2, 5));
        let before = dir.record(&bob.addr);
        let mut rebound = bob.one_time(6..8);
        rebound.push(OneTimePreKeyUpload { id: 3, key: bob.key() });
        assert_eq!(
            dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk, &rebound),
            Err(KeyDirError::DuplicateOneTimePreKeyId { device: bob.addr.clone(), prekey_id: 3 })
        );
        // The same id twice in one upload with different keys.
        let mut twice = bob.one_time(9..10);
        twice.push(OneTimePreKeyUpload { id: 9, key: bob.key() });
        assert!(matches!(
            dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk, &twice),
            Err(KeyDirError::DuplicateOneTimePreKeyId { prekey_id: 9, .. })
        ));
        assert_eq!(dir.record(&bob.addr), before);
    }

    #[test]
    fn low_order_keys_are_refused_everywhere() {
        let mut dir = KeyDirectory::new();
        let bob = Owner::new("bob", 11).registered(&mut dir);
        for (i, bad) in low_order_points().into_iter().enumerate() {
            let who = addr(&format!("lo{i}"));
            assert!(matches!(dir.register(&who, bad), Err(KeyDirError::LowOrderKey { kind: KeyKind::Identity, .. })));
            // A low-order signed prekey, correctly signed.
            let signature = bob.identity.sign(&bad.0, &mut *bob.rng.borrow_mut());
            let spk = SignedPreKeyUpload { id: 1, key: bad, signature };
            assert_eq!(
                dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk, &[]),
                Err(KeyDirError::LowOrderKey {
                    device: bob.addr.clone(),
                    kind: KeyKind::SignedPreKey { id: 1 },
                    key: bad
                })
            );
            let good = bob.signed(CipherSuite::BluetickV1, 2);
            let mut opks = bob.one_time(1..4);
            opks[1].key = bad;
            assert_eq!(
                dir.upload(&bob.addr, CipherSuite::BluetickV1, &good, &opks),
                Err(KeyDirError::LowOrderKey {
                    device: bob.addr.clone(),
                    kind: KeyKind::OneTimePreKey { id: 2 },
                    key: bad
                })
            );
        }
        assert_eq!(dir.len(), 1);
        assert_eq!(dir.record(&bob.addr).unwrap().signed_prekey, None);
        // Ordinary keys pass the check.
        for _ in 0..32 {
            assert!(!is_low_order(&bob.key()));
        }
    }

    #[test]
    fn hand_out_twice_is_caught_by_the_at_most_once_check() {
        let run = |bug: Option<KeyBug>| {
            let mut dir = KeyDirectory::new();
            dir.set_bug(bug);
            let bob = Owner::new("bob", 12).registered(&mut dir);
            let spk = bob.signed(CipherSuite::BluetickV1, 1);
            dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk, &bob.one_time(1..4)).unwrap();
            let fetched = fetch_many(&mut dir, &bob.addr, 4);
            each_one_time_prekey_at_most_once(&fetched)
        };
        assert_eq!(run(None), Ok(()));
        assert_eq!(run(Some(KeyBug::HandOutTwice)), Err(1));
    }

    #[test]
    fn dirty_records_rebuild_a_directory_that_behaves_the_same() {
        let mut dir = KeyDirectory::new();
        let mut store: BTreeMap<DeviceAddress, DeviceKeys> = BTreeMap::new();
        let persist = |dir: &mut KeyDirectory, store: &mut BTreeMap<DeviceAddress, DeviceKeys>| {
            for a in dir.take_dirty() {
                store.insert(a.clone(), dir.record(&a).unwrap());
            }
        };
        let bob = Owner::new("bob", 13).registered(&mut dir);
        let carol = Owner::new("carol", 14).registered(&mut dir);
        persist(&mut dir, &mut store);
        assert_eq!(store.len(), 2);
        let spk = bob.signed(CipherSuite::BluetickV1, 1);
        dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk, &bob.one_time(1..6)).unwrap();
        assert_eq!(dir.take_dirty(), vec![bob.addr.clone()]);
        store.insert(bob.addr.clone(), dir.record(&bob.addr).unwrap());
        dir.fetch(&carol.addr, &bob.addr, 0).unwrap();
        dir.fetch(&carol.addr, &bob.addr, 0).unwrap();
        persist(&mut dir, &mut store);

        // Crash: rebuild from the store alone.
        let mut rebuilt = KeyDirectory::new();
        rebuilt.load(store.clone());
        assert!(rebuilt.take_dirty().is_empty());
        for a in [&bob.addr, &carol.addr] {
            assert_eq!(rebuilt.record(a), dir.record(a));
        }
        let a = dir.fetch(&carol.addr, &bob.addr, 0).unwrap();
        let b = rebuilt.fetch(&carol.addr, &bob.addr, 0).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.bundle.one_time_prekey.map(|o| o.id), Some(3), "handed-out keys stay gone after a restart");
    }

    #[test]
    fn a_handed_out_prekey_reuploaded_by_a_retry_is_never_rearmed() {
        let mut dir = KeyDirectory::new();
        let bob = Owner::new("bob", 41);
        let alice = Owner::new("alice", 42);
        let carol = Owner::new("carol", 43);
        for o in [&bob, &alice, &carol] {
            dir.register(&o.addr, o.identity.public()).unwrap();
        }
        let spk = bob.signed(CipherSuite::BluetickV1, 1);
        let opks = bob.one_time(1..3);
        dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk, &opks).unwrap();
        let first = dir.fetch(&alice.addr, &bob.addr, 0).unwrap();
        assert_eq!(first.bundle.one_time_prekey.map(|k| k.id), Some(1));
        // Bob did not hear that the upload landed and sends it again.
        let up = dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk, &opks).unwrap();
        assert_eq!(up.added, 0, "key 1 was handed out and key 2 is stored: nothing new");
        let second = dir.fetch(&carol.addr, &bob.addr, 0).unwrap();
        assert_eq!(second.bundle.one_time_prekey.map(|k| k.id), Some(2), "key 1 is not handed out again");
        // Higher ids still go in.
        assert_eq!(dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk, &bob.one_time(3..5)).unwrap().added, 2);
    }

    #[test]
    fn the_durable_record_encoding_is_pinned() {
        // The layout the crate README documents: postcard, keys and signatures
        // as length-prefixed raw bytes (the crypto crate's binary serde form).
        let record = DeviceKeys {
            identity_key: PublicKey([0x11; 32]),
            signed_prekey: Some(StoredSignedPreKey {
                suite: CipherSuite::BluetickV1,
                prekey: SignedPreKeyUpload {
                    id: 7,
                    key: PublicKey([0x22; 32]),
                    signature: bluetick_crypto::xeddsa::Signature([0x33; 64]),
                },
            }),
            one_time_prekeys: BTreeMap::from([(1, PublicKey([0x44; 32])), (300, PublicKey([0x55; 32]))]),
            one_time_id_high: Some(300),
        };
        let raw = |byte: u8, n: usize| -> Vec<u8> {
            let mut v = vec![n as u8];
            v.extend(vec![byte; n]);
            v
        };
        let mut want = raw(0x11, 32);
        want.extend([0x01, 0x00, 0x07]); // Some, suite index 0 (bluetick-v1), id 7
        want.extend(raw(0x22, 32));
        want.extend(raw(0x33, 64));
        want.extend([0x02, 0x01]); // two entries; id 1
        want.extend(raw(0x44, 32));
        want.extend([0xac, 0x02]); // id 300 as varint
        want.extend(raw(0x55, 32));
        want.extend([0x01, 0xac, 0x02]); // one_time_id_high: Some(300)
        let bytes = postcard::to_allocvec(&record).unwrap();
        assert_eq!(hex::encode(&bytes), hex::encode(&want));
        assert_eq!(postcard::from_bytes::<DeviceKeys>(&bytes).unwrap(), record);
    }

    #[test]
    fn a_serde_round_trip_keeps_keys_rate_limits_and_bug() {
        let mut dir = KeyDirectory::new();
        dir.set_bug(Some(KeyBug::HandOutTwice));
        let bob = Owner::new("bob", 15).registered(&mut dir);
        let spk = bob.signed(CipherSuite::BluetickV1, 1);
        dir.upload(&bob.addr, CipherSuite::BluetickV1, &spk, &bob.one_time(1..3)).unwrap();
        let mallory = addr("mallory");
        for _ in 0..BUNDLE_FETCH_BURST {
            dir.fetch(&mallory, &bob.addr, 0).unwrap();
        }
        let mut copy: KeyDirectory = postcard::from_bytes(&postcard::to_allocvec(&dir).unwrap()).unwrap();
        assert_eq!(copy, dir);
        assert_eq!(copy.fetch(&mallory, &bob.addr, 0), dir.fetch(&mallory, &bob.addr, 0));
        assert_eq!(copy.fetch(&addr("alice"), &bob.addr, 0), dir.fetch(&addr("alice"), &bob.addr, 0));
    }
}
