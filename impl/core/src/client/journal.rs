//! Incremental saves: what changed since the last save, instead of all of it.
//!
//! A full [`Client::save`](super::Client::save) encodes the whole state, and
//! the state grows with use: ticks for up to 10,000 sent messages, up to
//! 65,536 remembered message ids, a session per contact, a sender key per
//! group member. Saving all of it after every input made a load generator's
//! clients spend 44% of their CPU saving, and a 1,024-member group's sender
//! re-encode its whole status book for every receipt.
//!
//! The collections that grow are `Table`s: ordered maps that, once
//! journaling is on, remember which keys were inserted, changed or removed.
//! An incremental save ([`SavedChanges`]) is then the *head* — the state
//! encoded with every table left empty, which stays small — plus the current
//! value (or removal) of each touched key. A full save encodes tables as
//! plain maps, so its bytes are what they were without journaling; the model
//! checker hashes those.
//!
//! Applying changes to a full save ([`SavedClient::apply_changes`](super::SavedClient::apply_changes))
//! gives the full save of the state they were taken from, byte for byte: the
//! client tests check that after every call.

use std::any::Any;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeBounds;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

thread_local! {
    /// Set while a head is encoded: tables then encode as empty maps.
    static HEAD_ONLY: Cell<bool> = const { Cell::new(false) };
}

#[cfg(test)]
thread_local! {
    /// A deliberately broken build for the tests: tables forget what they
    /// should remember, so an incremental save misses changes (the client
    /// tests must notice).
    pub(crate) static FORGET_TOUCHES: Cell<bool> = const { Cell::new(false) };
}

/// Encodes `value` with every [`Table`] in it left empty.
pub(crate) fn encode_head<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            HEAD_ONLY.with(|h| h.set(false));
        }
    }
    HEAD_ONLY.with(|h| h.set(true));
    let _reset = Reset;
    postcard::to_allocvec(value)
}

/// One touched key of one table: its encoded key and its encoded value, or
/// `None` for a removal.
pub(crate) type Change = (u8, Vec<u8>, Option<Vec<u8>>);

/// What an incremental save stores (postcard, inside [`SavedChanges`]).
#[derive(Serialize, Deserialize)]
pub(crate) struct ChangeRecord {
    pub format: u16,
    pub head: Vec<u8>,
    pub changes: Vec<Change>,
}

/// What changed in a client's persistent state since its previous save: see
/// [`Client::save_incremental`](super::Client::save_incremental). Opaque;
/// stored by the driver after the full save it follows, in order.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SavedChanges {
    pub(crate) bytes: Vec<u8>,
}

impl SavedChanges {
    /// The encoded changes, for the driver to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Wraps bytes read back from storage; checked when applied.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        SavedChanges { bytes }
    }
}

impl fmt::Debug for SavedChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bytes include secret keys.
        write!(f, "SavedChanges({} bytes)", self.bytes.len())
    }
}

/// An ordered map that can report which keys changed. Encodes as the plain
/// map (empty inside [`encode_head`]).
pub(crate) struct Table<K, V> {
    map: BTreeMap<K, V>,
    /// Keys inserted, changed or removed since the last drain; `None` while
    /// nobody drains (the model checker and the simulator's direct driver
    /// only take full saves, and should not pay for the bookkeeping).
    touched: Option<BTreeSet<K>>,
}

impl<K, V> Default for Table<K, V> {
    fn default() -> Self {
        Table { map: BTreeMap::new(), touched: None }
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Table<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.map.fmt(f)
    }
}

impl<K: Serialize, V: Serialize> Serialize for Table<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if HEAD_ONLY.with(Cell::get) {
            s.collect_map(std::iter::empty::<(&K, &V)>())
        } else {
            self.map.serialize(s)
        }
    }
}

impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Table<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Table { map: BTreeMap::deserialize(d)?, touched: None })
    }
}

impl<K: Ord + Clone, V> Table<K, V> {
    fn touch(&mut self, key: &K) {
        #[cfg(test)]
        if FORGET_TOUCHES.with(Cell::get) {
            return;
        }
        if let Some(t) = &mut self.touched {
            t.insert(key.clone());
        }
    }

    /// The value at `key`.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.map.get(key)
    }

    /// Whether `key` is present.
    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
    {
        self.map.contains_key(key)
    }

    /// The value at `key`, to change (the key counts as changed).
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        if self.map.contains_key(key) {
            self.touch(key);
        }
        self.map.get_mut(key)
    }

    /// The value at `key`, inserted by `make` if absent (changed either way).
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        self.touch(&key);
        self.map.entry(key).or_insert_with(make)
    }

    /// Inserts, returning the previous value.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.touch(&key);
        self.map.insert(key, value)
    }

    /// Removes, returning the value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let old = self.map.remove(key);
        if old.is_some() {
            self.touch(key);
        }
        old
    }

    /// Removes and returns the first entry.
    pub fn pop_first(&mut self) -> Option<(K, V)> {
        let (k, v) = self.map.pop_first()?;
        self.touch(&k);
        Some((k, v))
    }

    /// Entries in key order.
    pub fn iter(&self) -> std::collections::btree_map::Iter<'_, K, V> {
        self.map.iter()
    }

    /// Keys in order.
    pub fn keys(&self) -> std::collections::btree_map::Keys<'_, K, V> {
        self.map.keys()
    }

    /// Entries with keys in `range`.
    pub fn range<Q: Ord + ?Sized, R: RangeBounds<Q>>(&self, range: R) -> std::collections::btree_map::Range<'_, K, V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.map.range(range)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// What the client's state does with each of its tables, by number.
pub(crate) trait Journaled {
    /// Starts (or restarts) remembering touched keys, forgetting earlier ones.
    fn start_journal(&mut self);
    /// Whether touched keys are remembered.
    fn is_journaling(&self) -> bool;
    /// Appends the touched keys' current values to `out` as table `id`, and
    /// forgets them.
    fn drain(&mut self, id: u8, out: &mut Vec<Change>) -> Result<(), postcard::Error>;
    /// Applies one stored change.
    fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), postcard::Error>;
    /// Swaps contents with the same table of another state (`other` must be
    /// a table of the same type).
    fn swap_with(&mut self, other: &mut dyn Any);
    /// For `swap_with`.
    fn as_any(&mut self) -> &mut dyn Any;
}

impl<K, V> Journaled for Table<K, V>
where
    K: Ord + Clone + Serialize + DeserializeOwned + 'static,
    V: Serialize + DeserializeOwned + 'static,
{
    fn start_journal(&mut self) {
        self.touched = Some(BTreeSet::new());
    }

    fn is_journaling(&self) -> bool {
        self.touched.is_some()
    }

    fn drain(&mut self, id: u8, out: &mut Vec<Change>) -> Result<(), postcard::Error> {
        let Some(touched) = self.touched.as_mut() else { return Ok(()) };
        for key in std::mem::take(touched) {
            let value = self.map.get(&key).map(postcard::to_allocvec).transpose()?;
            out.push((id, postcard::to_allocvec(&key)?, value));
        }
        Ok(())
    }

    fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), postcard::Error> {
        let key: K = postcard::from_bytes(key)?;
        match value {
            Some(v) => {
                self.map.insert(key, postcard::from_bytes(v)?);
            }
            None => {
                self.map.remove(&key);
            }
        }
        Ok(())
    }

    fn swap_with(&mut self, other: &mut dyn Any) {
        if let Some(other) = other.downcast_mut::<Self>() {
            std::mem::swap(&mut self.map, &mut other.map);
        }
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, Default)]
    struct Doc {
        before: u32,
        table: Table<u32, String>,
        after: Vec<u8>,
    }

    #[test]
    fn a_table_encodes_as_its_map_and_as_nothing_in_a_head() {
        let mut doc = Doc { before: 7, after: vec![1, 2], ..Doc::default() };
        doc.table.insert(3, "three".into());
        let plain =
            postcard::to_allocvec(&(7u32, BTreeMap::from([(3u32, "three".to_string())]), vec![1u8, 2])).unwrap();
        assert_eq!(postcard::to_allocvec(&doc).unwrap(), plain, "a full encoding is the plain map's");
        let head = encode_head(&doc).unwrap();
        let back: Doc = postcard::from_bytes(&head).unwrap();
        assert_eq!((back.before, back.table.len(), back.after), (7, 0, vec![1, 2]));
        assert_eq!(postcard::to_allocvec(&doc).unwrap(), plain, "the head flag is reset afterwards");
    }

    #[test]
    fn touched_keys_drain_once_with_current_values_and_removals() {
        let mut t: Table<u32, String> = Table::default();
        t.insert(1, "untracked".into());
        t.start_journal();
        t.insert(2, "two".into());
        t.insert(3, "three".into());
        t.remove(&3);
        if let Some(v) = t.get_mut(&1) {
            v.push('!');
        }
        t.remove(&9);
        let _ = t.get_mut(&9);
        let mut out = Vec::new();
        t.drain(4, &mut out).unwrap();
        let decoded: Vec<(u8, u32, Option<String>)> = out
            .iter()
            .map(|(id, k, v)| {
                (*id, postcard::from_bytes(k).unwrap(), v.as_ref().map(|v| postcard::from_bytes(v).unwrap()))
            })
            .collect();
        assert_eq!(
            decoded,
            vec![(4, 1, Some("untracked!".into())), (4, 2, Some("two".into())), (4, 3, None)],
            "absent keys never touched; a removal drains as None"
        );
        let first = std::mem::take(&mut out);
        t.drain(4, &mut out).unwrap();
        assert!(out.is_empty(), "drained once");

        // A replica of the state at the journal's start follows the changes.
        let mut replica: Table<u32, String> = Table::default();
        replica.insert(1, "untracked".into());
        replica.insert(3, "stale".into());
        for (_, k, v) in &first {
            replica.apply(k, v.as_deref()).unwrap();
        }
        assert_eq!(replica.map, t.map);
        t.pop_first();
        for (_, k, v) in &decoded_changes(&mut t) {
            replica.apply(k, v.as_deref()).unwrap();
        }
        assert_eq!(replica.map, t.map);
    }

    fn decoded_changes(t: &mut Table<u32, String>) -> Vec<Change> {
        let mut out = Vec::new();
        t.drain(0, &mut out).unwrap();
        out
    }

    #[test]
    fn without_a_journal_nothing_is_remembered() {
        let mut t: Table<u32, u32> = Table::default();
        t.insert(1, 1);
        let mut out = Vec::new();
        t.drain(0, &mut out).unwrap();
        assert!(out.is_empty());
        assert!(t.touched.is_none());
    }
}
