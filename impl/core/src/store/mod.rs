//! Durable storage for the server: a small key-value interface with atomic
//! batches, and two implementations.
//!
//! The sans-IO `Server` keeps in a [`Store`] everything that must survive a
//! crash, and on restart rebuilds its in-memory state by [`Store::scan`]ning
//! it. The store knows nothing of accounts or mailboxes: it holds byte keys and
//! byte values in a fixed set of logical [`Table`]s, and the server chooses the
//! encodings (postcard). What the store promises is the part that is hard to
//! get right: [`Store::apply`] writes a whole [`WriteBatch`] or none of it, and
//! once it returns `Ok` the batch survives a crash. The server acknowledges a
//! client only after that `Ok`, which is what makes "nothing acknowledged is
//! lost" true.
//!
//! - [`MemoryStore`]: ordered maps in memory, cloneable, for the simulator and
//!   model checker (a "crash" drops the server and rebuilds it from a clone of
//!   its store), with a fault hook to make writes fail.
//! - [`RedbStore`]: one redb file on disk, for the real server.
//! - [`LogStore`]: append-only segment files in a directory with an
//!   in-memory index, for the real server: cheaper writes than redb's
//!   B-trees, at the cost of an index entry in memory per stored key.
//! - [`Staging`]: not a store but a stage in front of one, for group commit:
//!   many handle calls' batches merged into one durable apply, with reads
//!   that see the staged writes meanwhile.
//!
//! Both refuse a key longer than [`KEY_LEN_MAX`] or a value longer than
//! [`VALUE_LEN_MAX`] before writing anything.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::wire::FRAME_LEN_MAX;

mod log;
mod memory;
mod redb;
mod staging;

pub use self::log::LogStore;
pub use self::memory::MemoryStore;
pub use self::redb::RedbStore;
pub use self::staging::{StagedStore, Staging};

/// Longest key accepted, in bytes. Keys are a few identifiers and sequence
/// numbers, tens of bytes; a key near this size means a value was encoded into
/// a key by mistake, and long keys make every B-tree page hold fewer entries.
pub const KEY_LEN_MAX: usize = 1024;

/// Longest value accepted, in bytes: 1 MiB, four times [`FRAME_LEN_MAX`]. A
/// record holds at most what arrived in one frame plus the server's own
/// metadata, or a few frames' worth (a 1,024-member group is about 40 KiB), so
/// 4x leaves ample margin. A larger value means a whole collection (a full
/// mailbox, a whole media blob) is being stored under one key, which would
/// rewrite megabytes per message; store one record per entry or per chunk
/// instead. The limit also bounds what one `get` makes recovery allocate.
pub const VALUE_LEN_MAX: usize = 4 * FRAME_LEN_MAX;

/// One stored (key, value) pair, as [`Store::scan`] returns them.
pub type Row = (Vec<u8>, Vec<u8>);

/// A logical table. Each is a separate ordered key space; the server chooses
/// what goes in each and how keys and values are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Table {
    /// Registered users and their devices.
    Accounts,
    /// Published identity keys, signed prekeys and one-time prekeys.
    Keys,
    /// Per-device offline queue entries.
    Mailbox,
    /// Group message bodies stored once and referenced by mailbox entries.
    Bodies,
    /// Group membership.
    Groups,
    /// Last-seen and presence subscriptions that outlive a connection.
    Presence,
    /// Encrypted media blob chunks.
    Blobs,
    /// Server-wide counters and format versions.
    Meta,
}

impl Table {
    /// Every table, in key order (the order of [`Store::stats`]).
    pub const ALL: [Table; 8] = [
        Table::Accounts,
        Table::Keys,
        Table::Mailbox,
        Table::Bodies,
        Table::Groups,
        Table::Presence,
        Table::Blobs,
        Table::Meta,
    ];

    /// The table's stable name. [`RedbStore`] names its on-disk tables with
    /// it, so changing one orphans existing data: never rename, only add.
    pub const fn name(self) -> &'static str {
        match self {
            Table::Accounts => "accounts",
            Table::Keys => "keys",
            Table::Mailbox => "mailbox",
            Table::Bodies => "bodies",
            Table::Groups => "groups",
            Table::Presence => "presence",
            Table::Blobs => "blobs",
            Table::Meta => "meta",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One change in a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BatchOp {
    /// Set `key` to `value`, replacing any previous value.
    Put {
        /// The table written.
        table: Table,
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove `key` if present (removing an absent key is not an error, so a
    /// replayed delete is harmless).
    Delete {
        /// The table written.
        table: Table,
        /// The key.
        key: Vec<u8>,
    },
}

impl BatchOp {
    /// The table this op writes.
    pub fn table(&self) -> Table {
        match self {
            BatchOp::Put { table, .. } | BatchOp::Delete { table, .. } => *table,
        }
    }

    /// The key this op writes.
    pub fn key(&self) -> &[u8] {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key, .. } => key,
        }
    }
}

/// Changes applied together by [`Store::apply`]: all of them or none. Ops apply
/// in the order they were added, so when two touch the same key the later one
/// wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put of `value` under `key` in `table`. Sizes are checked by
    /// [`Store::apply`], so building a batch never fails.
    pub fn put(&mut self, table: Table, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(BatchOp::Put { table, key: key.into(), value: value.into() });
        self
    }

    /// Adds a delete of `key` in `table`.
    pub fn delete(&mut self, table: Table, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(BatchOp::Delete { table, key: key.into() });
        self
    }

    /// Moves every op of `other` to the end of this batch: applying the
    /// result is applying this batch and then `other`, as one atomic write
    /// (the merge behind group commit).
    pub fn append(&mut self, mut other: WriteBatch) {
        self.ops.append(&mut other.ops);
    }

    /// Whether the batch has no ops (applying it changes nothing).
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The ops, in the order they will be applied.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    /// Checks every key and value against [`KEY_LEN_MAX`] and
    /// [`VALUE_LEN_MAX`]; both stores call this before writing anything, so an
    /// oversize op fails the whole batch with nothing applied.
    pub fn validate(&self) -> Result<(), StoreError> {
        for op in &self.ops {
            let table = op.table();
            let key_len = op.key().len();
            if key_len > KEY_LEN_MAX {
                return Err(StoreError::KeyTooLarge { table, len: key_len, max: KEY_LEN_MAX });
            }
            if let BatchOp::Put { value, .. } = op {
                if value.len() > VALUE_LEN_MAX {
                    return Err(StoreError::ValueTooLarge { table, len: value.len(), max: VALUE_LEN_MAX });
                }
            }
        }
        Ok(())
    }
}

/// What one table holds, for reports and memory accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableStats {
    /// Number of keys.
    pub entries: u64,
    /// Sum of key lengths, in bytes.
    pub key_bytes: u64,
    /// Sum of value lengths, in bytes.
    pub value_bytes: u64,
}

impl TableStats {
    /// Counts one more entry.
    fn add(&mut self, key_len: usize, value_len: usize) {
        self.entries += 1;
        self.key_bytes += key_len as u64;
        self.value_bytes += value_len as u64;
    }
}

/// Why a store operation failed. After any error from [`Store::apply`] the
/// batch was not acknowledged: the caller must not tell a client it is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A key is longer than [`KEY_LEN_MAX`]; nothing of the batch was applied.
    #[error("a key for table {table} is {len} bytes, the limit is {max}")]
    KeyTooLarge {
        /// The table the op was for.
        table: Table,
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value is longer than [`VALUE_LEN_MAX`]; nothing of the batch was applied.
    #[error("a value for table {table} is {len} bytes, the limit is {max}")]
    ValueTooLarge {
        /// The table the op was for.
        table: Table,
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A stored record did not decode: the store holds something this build
    /// did not write (corruption, or a newer format).
    #[error("corrupt record in table {table}: {detail}")]
    Corrupt {
        /// The table.
        table: Table,
        /// What did not decode.
        detail: String,
    },
    /// A failure injected by [`MemoryStore::fail_next_apply`]; nothing was applied.
    #[error("injected store failure (test fault hook)")]
    Injected,
    /// The store file could not be opened or created: a missing directory, no
    /// permission, a full disk.
    #[error("cannot open store file {path}: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        message: String,
    },
    /// Another process (or another handle in this one) has the store file
    /// open; only one server may use a store at a time.
    #[error("store file {path} is already open elsewhere; stop the other server first")]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The file exists but is not a store this build can read: corrupted, not
    /// a redb database, or written by an incompatible redb version. Restore a
    /// backup or move the file aside; nothing was changed.
    #[error("store file {path} is corrupt or not a bluetick store: {message}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        message: String,
    },
    /// Reading or writing an open store failed (an IO error, a full disk). For
    /// [`Store::apply`] the batch is either wholly absent or, if the failure
    /// hit the final flush, wholly present, never partly; reopen the store and
    /// recover from what it holds.
    #[error("store file {path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        message: String,
    },
}

/// Durable, ordered key-value storage with atomic batches. Object safe: the
/// server takes `&mut dyn Store`.
pub trait Store {
    /// Applies every op of the batch atomically and durably: when this returns
    /// `Ok`, a crash cannot lose any of it, and a crash during it leaves none
    /// of it. On `Err` nothing was acknowledged (see [`StoreError::Io`] for the
    /// one case where the outcome is decided only on reopening). An empty batch
    /// is a no-op.
    fn apply(&mut self, batch: WriteBatch) -> Result<(), StoreError>;

    /// All (key, value) pairs of a table in ascending key order (byte-wise
    /// lexicographic, so encode numbers big-endian to scan them in order). For
    /// recovery and tests; it copies the whole table.
    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError>;

    /// The value under `key`, if any.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Entries and bytes held per table, with every [`Table`] present (zero
    /// for empty ones). May walk every entry: meant for reports, not hot paths.
    fn stats(&self) -> Result<BTreeMap<Table, TableStats>, StoreError>;
}

impl<S: Store + ?Sized> Store for Box<S> {
    fn apply(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        (**self).apply(batch)
    }

    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        (**self).scan(table)
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(table, key)
    }

    fn stats(&self) -> Result<BTreeMap<Table, TableStats>, StoreError> {
        (**self).stats()
    }
}

#[cfg(test)]
mod tests {
    //! The behaviour every store must have, written once against `dyn Store`
    //! and run against each implementation.

    use super::*;

    fn scan_all(store: &dyn Store) -> BTreeMap<Table, Vec<Row>> {
        Table::ALL.iter().map(|&t| (t, store.scan(t).unwrap())).collect()
    }

    fn put_get_delete_and_scan_order(store: &mut dyn Store) {
        assert_eq!(store.get(Table::Accounts, b"alice").unwrap(), None);
        assert_eq!(store.scan(Table::Accounts).unwrap(), Vec::<(Vec<u8>, Vec<u8>)>::new());

        let mut batch = WriteBatch::new();
        // Inserted out of order, with a prefix pair and an empty value, to see
        // the scan sort byte-wise.
        batch
            .put(Table::Accounts, b"carol".to_vec(), b"3".to_vec())
            .put(Table::Accounts, b"alice".to_vec(), b"1".to_vec())
            .put(Table::Accounts, b"al".to_vec(), Vec::new())
            .put(Table::Accounts, b"bob".to_vec(), b"2".to_vec())
            .put(Table::Keys, b"alice".to_vec(), b"keys of alice".to_vec());
        store.apply(batch).unwrap();

        assert_eq!(store.get(Table::Accounts, b"alice").unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.get(Table::Accounts, b"al").unwrap(), Some(Vec::new()));
        assert_eq!(store.get(Table::Keys, b"alice").unwrap(), Some(b"keys of alice".to_vec()));
        // Tables are separate key spaces.
        assert_eq!(store.get(Table::Keys, b"bob").unwrap(), None);
        assert_eq!(store.get(Table::Mailbox, b"alice").unwrap(), None);
        assert_eq!(
            store.scan(Table::Accounts).unwrap(),
            vec![
                (b"al".to_vec(), Vec::new()),
                (b"alice".to_vec(), b"1".to_vec()),
                (b"bob".to_vec(), b"2".to_vec()),
                (b"carol".to_vec(), b"3".to_vec()),
            ]
        );

        // Overwrite, delete, delete of an absent key, and two ops on one key
        // (the later wins) in one batch.
        let mut batch = WriteBatch::new();
        batch
            .put(Table::Accounts, b"alice".to_vec(), b"1 again".to_vec())
            .delete(Table::Accounts, b"bob".to_vec())
            .delete(Table::Accounts, b"nobody".to_vec())
            .put(Table::Accounts, b"dave".to_vec(), b"first".to_vec())
            .delete(Table::Accounts, b"dave".to_vec())
            .delete(Table::Accounts, b"carol".to_vec())
            .put(Table::Accounts, b"carol".to_vec(), b"back".to_vec());
        assert_eq!(batch.len(), 7);
        store.apply(batch).unwrap();
        assert_eq!(
            store.scan(Table::Accounts).unwrap(),
            vec![
                (b"al".to_vec(), Vec::new()),
                (b"alice".to_vec(), b"1 again".to_vec()),
                (b"carol".to_vec(), b"back".to_vec()),
            ]
        );
        assert_eq!(store.get(Table::Accounts, b"bob").unwrap(), None);

        // Big-endian numbers scan in numeric order.
        let mut batch = WriteBatch::new();
        for n in [300u64, 2, 70_000, 1] {
            batch.put(Table::Mailbox, n.to_be_bytes(), n.to_le_bytes());
        }
        store.apply(batch).unwrap();
        let order: Vec<u64> = store
            .scan(Table::Mailbox)
            .unwrap()
            .into_iter()
            .map(|(k, _)| u64::from_be_bytes(k.try_into().unwrap()))
            .collect();
        assert_eq!(order, vec![1, 2, 300, 70_000]);

        // An empty batch changes nothing and succeeds.
        let before = scan_all(store);
        assert!(WriteBatch::new().is_empty());
        store.apply(WriteBatch::new()).unwrap();
        assert_eq!(scan_all(store), before);
    }

    fn a_batch_with_an_invalid_op_applies_nothing(store: &mut dyn Store) {
        let mut batch = WriteBatch::new();
        batch.put(Table::Groups, b"g".to_vec(), b"before".to_vec());
        store.apply(batch).unwrap();
        let before = scan_all(store);

        // Valid ops before and after the oversize one: none may land.
        let mut batch = WriteBatch::new();
        batch
            .put(Table::Groups, b"g".to_vec(), b"after".to_vec())
            .delete(Table::Groups, b"g".to_vec())
            .put(Table::Bodies, b"b".to_vec(), vec![7u8; VALUE_LEN_MAX + 1])
            .put(Table::Meta, b"m".to_vec(), b"x".to_vec());
        assert_eq!(
            store.apply(batch),
            Err(StoreError::ValueTooLarge { table: Table::Bodies, len: VALUE_LEN_MAX + 1, max: VALUE_LEN_MAX })
        );
        assert_eq!(scan_all(store), before);

        let mut batch = WriteBatch::new();
        batch.put(Table::Meta, b"m".to_vec(), b"x".to_vec()).delete(Table::Presence, vec![0u8; KEY_LEN_MAX + 1]);
        assert_eq!(
            store.apply(batch),
            Err(StoreError::KeyTooLarge { table: Table::Presence, len: KEY_LEN_MAX + 1, max: KEY_LEN_MAX })
        );
        assert_eq!(scan_all(store), before);

        // Exactly at the limits is accepted.
        let mut batch = WriteBatch::new();
        batch.put(Table::Blobs, vec![1u8; KEY_LEN_MAX], vec![2u8; VALUE_LEN_MAX]);
        store.apply(batch).unwrap();
        assert_eq!(store.get(Table::Blobs, &[1u8; KEY_LEN_MAX]).unwrap().map(|v| v.len()), Some(VALUE_LEN_MAX));
    }

    fn stats_count_entries_and_bytes_per_table(store: &mut dyn Store) {
        let stats = store.stats().unwrap();
        assert_eq!(stats.keys().copied().collect::<Vec<_>>(), Table::ALL.to_vec());
        assert!(stats.values().all(|s| *s == TableStats::default()));

        let mut batch = WriteBatch::new();
        batch.put(Table::Keys, b"k1".to_vec(), vec![0u8; 10]).put(Table::Keys, b"key2".to_vec(), vec![0u8; 100]).put(
            Table::Presence,
            b"p".to_vec(),
            Vec::new(),
        );
        store.apply(batch).unwrap();
        let mut batch = WriteBatch::new();
        batch.put(Table::Keys, b"k1".to_vec(), vec![0u8; 3]).delete(Table::Presence, b"p".to_vec());
        store.apply(batch).unwrap();

        let stats = store.stats().unwrap();
        assert_eq!(stats[&Table::Keys], TableStats { entries: 2, key_bytes: 6, value_bytes: 103 });
        assert_eq!(stats[&Table::Presence], TableStats::default());
        assert_eq!(stats[&Table::Accounts], TableStats::default());
        assert_eq!(stats.len(), Table::ALL.len());
    }

    /// Runs every shared check, each on a fresh store from `fresh`.
    fn conformance(mut fresh: impl FnMut() -> Box<dyn Store>) {
        put_get_delete_and_scan_order(fresh().as_mut());
        a_batch_with_an_invalid_op_applies_nothing(fresh().as_mut());
        stats_count_entries_and_bytes_per_table(fresh().as_mut());
    }

    #[test]
    fn memory_store_meets_the_store_contract() {
        conformance(|| Box::new(MemoryStore::new()));
    }

    #[test]
    fn redb_store_meets_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        conformance(|| {
            n += 1;
            Box::new(RedbStore::open(dir.path().join(format!("store-{n}.redb"))).unwrap())
        });
    }

    #[test]
    fn log_store_meets_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        conformance(|| {
            n += 1;
            Box::new(LogStore::open(dir.path().join(format!("store-{n}.log"))).unwrap())
        });
    }

    #[test]
    fn table_names_are_unique_and_ordered_like_all() {
        let mut sorted = Table::ALL.to_vec();
        sorted.sort();
        assert_eq!(sorted, Table::ALL.to_vec());
        let names: std::collections::BTreeSet<&str> = Table::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names.len(), Table::ALL.len());
        assert_eq!(Table::Mailbox.to_string(), "mailbox");
    }

    #[test]
    fn a_boxed_store_is_usable_as_a_dyn_store() {
        let mut boxed: Box<dyn Store> = Box::new(MemoryStore::new());
        let store: &mut dyn Store = &mut boxed;
        let mut batch = WriteBatch::new();
        batch.put(Table::Meta, b"k".to_vec(), b"v".to_vec());
        store.apply(batch).unwrap();
        assert_eq!(boxed.get(Table::Meta, b"k").unwrap(), Some(b"v".to_vec()));
        // Every method goes through the box to the store inside it.
        let outer: &dyn Store = &boxed;
        let rows = outer.scan(Table::Meta).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].0.as_slice(), rows[0].1.as_slice()), (&b"k"[..], &b"v"[..]));
        assert_eq!(outer.stats().unwrap()[&Table::Meta].entries, 1);
    }
}
