//! [`RedbStore`]: the store for the real server, one redb file on disk.
//!
//! # Why redb
//! redb is an embedded key-value store in pure Rust: it builds with `cargo`
//! alone, no C toolchain, on every target the rest of the workspace builds
//! on. It is ACID: a write transaction is copy-on-write over B-trees, and a
//! commit flips a checksummed root, so after a crash the file holds either the
//! old state or the new one, never a mix; with immediate durability (its
//! default, which we set explicitly) `commit` returns only after `fsync`. That
//! is exactly the contract of [`Store::apply`]. SQLite would do as well and is
//! far more battle-tested, but `rusqlite` compiles SQLite's C source (or
//! needs a system library), and we need none of SQL: the server keeps its
//! state in memory and uses the store only as a durable log of typed records.
//! The cost of redb is a younger codebase and a file format that has changed
//! between major versions (a file from another major version is reported as
//! [`StoreError::Unreadable`], not silently rewritten).
//!
//! # Layout
//! One redb table per [`Table`], named by [`Table::name`], with `&[u8]` keys
//! and values; the bytes are the server's encoding, untouched. All tables are
//! created when the store is opened.
//!
//! # Opening
//! The file is opened with redb's integrity check on, which verifies every
//! page's checksum: without it redb trusts a file that was shut down cleanly
//! and may panic on one damaged outside redb. The check reads the whole file,
//! so opening costs time linear in the store's size; after a crash redb walks
//! the file anyway to rebuild its allocator state.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ::redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::{BatchOp, Row, Store, StoreError, Table, TableStats, WriteBatch};

/// The redb table that holds `table`.
const fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

/// A [`Store`] in one redb file. Each [`Store::apply`] is one write
/// transaction committed with immediate durability; reads use read
/// transactions, each a consistent snapshot.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating the file (not its directory) if it
    /// does not exist, and checks its integrity.
    ///
    /// # Errors
    /// [`StoreError::Open`] if the file cannot be opened or created,
    /// [`StoreError::Locked`] if another process or handle has it open,
    /// [`StoreError::Unreadable`] if it is corrupt or not a redb file this
    /// build reads.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .create(&path)
            .map_err(|err| open_error(&path, err.into()))?;
        let store = Self { db, path };
        store.create_tables()?;
        Ok(store)
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates any missing table, so that reads never meet an absent one and
    /// a file whose tables have other types is refused at open, not later.
    fn create_tables(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| open_error(&self.path, e.into()))?;
        for table in Table::ALL {
            txn.open_table(definition(table)).map_err(|e| open_error(&self.path, e.into()))?;
        }
        txn.commit().map_err(|e| open_error(&self.path, e.into()))
    }

    /// Maps an error from an open store.
    fn error(&self, err: impl Into<::redb::Error>) -> StoreError {
        classify(&self.path, err.into(), Fallback::Io)
    }

    /// Calls `visit` on every entry of `table` in key order, inside one read
    /// transaction, without copying.
    fn for_each(&self, table: Table, mut visit: impl FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let handle = match txn.open_table(definition(table)) {
            Ok(handle) => handle,
            // Created at open; tolerate its absence anyway, it means "empty".
            Err(TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(err) => return Err(self.error(err)),
        };
        for entry in handle.iter().map_err(|e| self.error(e))? {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            visit(key.value(), value.value());
        }
        Ok(())
    }
}

/// What a redb error that is neither a lock conflict nor corruption becomes.
#[derive(Clone, Copy)]
enum Fallback {
    /// While opening: the file is not a usable store.
    Unreadable,
    /// On an open store: the read or write failed.
    Io,
}

/// Maps an error met while opening: IO failures are about the file's
/// location or permissions, anything else about its content.
fn open_error(path: &Path, err: ::redb::Error) -> StoreError {
    match err {
        // redb reports "not a redb file" as InvalidData, and a truncated one
        // can read short: the file's content is the problem, not its access.
        ::redb::Error::Io(io)
            if matches!(io.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof) =>
        {
            StoreError::Unreadable { path: path.to_path_buf(), message: io.to_string() }
        }
        ::redb::Error::Io(io) => StoreError::Open { path: path.to_path_buf(), message: io.to_string() },
        other => classify(path, other, Fallback::Unreadable),
    }
}

/// Maps a redb error to the [`StoreError`] a person can act on.
fn classify(path: &Path, err: ::redb::Error, fallback: Fallback) -> StoreError {
    let path = path.to_path_buf();
    match err {
        ::redb::Error::DatabaseAlreadyOpen | ::redb::Error::LockProtocolMismatch => StoreError::Locked { path },
        ::redb::Error::Corrupted(_) | ::redb::Error::UpgradeRequired(_) | ::redb::Error::RepairAborted => {
            StoreError::Unreadable { path, message: err.to_string() }
        }
        other => match fallback {
            Fallback::Unreadable => StoreError::Unreadable { path, message: other.to_string() },
            Fallback::Io => StoreError::Io { path, message: other.to_string() },
        },
    }
}

impl Store for RedbStore {
    fn apply(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        batch.validate()?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(|e| self.error(e))?;
        // The default already, but the whole contract rests on it.
        txn.set_durability(Durability::Immediate).map_err(|e| self.error(e))?;
        {
            // Any early return drops `txn` uncommitted, which aborts it: an
            // error halfway leaves nothing of the batch.
            let mut tables = BTreeMap::new();
            for op in batch.ops() {
                let handle = match tables.entry(op.table()) {
                    Entry::Occupied(open) => open.into_mut(),
                    Entry::Vacant(slot) => {
                        slot.insert(txn.open_table(definition(op.table())).map_err(|e| self.error(e))?)
                    }
                };
                match op {
                    BatchOp::Put { key, value, .. } => {
                        handle.insert(key.as_slice(), value.as_slice()).map_err(|e| self.error(e))?;
                    }
                    BatchOp::Delete { key, .. } => {
                        handle.remove(key.as_slice()).map_err(|e| self.error(e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| self.error(e))
    }

    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        let mut entries = Vec::new();
        self.for_each(table, |key, value| entries.push((key.to_vec(), value.to_vec())))?;
        Ok(entries)
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let handle = match txn.open_table(definition(table)) {
            Ok(handle) => handle,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(err) => return Err(self.error(err)),
        };
        Ok(handle.get(key).map_err(|e| self.error(e))?.map(|value| value.value().to_vec()))
    }

    fn stats(&self) -> Result<BTreeMap<Table, TableStats>, StoreError> {
        let mut stats = BTreeMap::new();
        for table in Table::ALL {
            let mut table_stats = TableStats::default();
            self.for_each(table, |key, value| table_stats.add(key.len(), value.len()))?;
            stats.insert(table, table_stats);
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_batches_survive_closing_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let mut store = RedbStore::open(&path).unwrap();
            let mut batch = WriteBatch::new();
            batch.put(Table::Mailbox, b"m1".to_vec(), b"hello".to_vec()).put(Table::Meta, b"v".to_vec(), vec![1]);
            store.apply(batch).unwrap();
            let mut batch = WriteBatch::new();
            batch.delete(Table::Meta, b"v".to_vec());
            store.apply(batch).unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.path(), path.as_path());
        assert_eq!(store.scan(Table::Mailbox).unwrap(), vec![(b"m1".to_vec(), b"hello".to_vec())]);
        assert_eq!(store.get(Table::Meta, b"v").unwrap(), None);
    }

    #[test]
    fn opening_in_a_missing_directory_is_an_open_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no such dir").join("store.redb");
        let err = RedbStore::open(&path).unwrap_err();
        match &err {
            StoreError::Open { path: reported, message } => {
                assert_eq!(reported, &path);
                assert!(!message.is_empty());
            }
            other => panic!("expected an open error, got {other:?}"),
        }
        assert!(err.to_string().contains("no such dir"), "{err}");
        assert!(!path.exists());
    }

    /// A file whose table of the same name holds other types (another
    /// program's, or a future format) is refused when opened, not on the
    /// first read or write of that table.
    #[test]
    fn a_table_of_other_types_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let db = ::redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            let other: ::redb::TableDefinition<u64, u64> = ::redb::TableDefinition::new(Table::Mailbox.name());
            txn.open_table(other).unwrap().insert(1, 2).unwrap();
            txn.commit().unwrap();
        }
        match RedbStore::open(&path).map(|_| ()) {
            Err(StoreError::Unreadable { message, .. }) => assert!(message.contains("mailbox"), "{message}"),
            other => panic!("expected the mailbox table to be refused, got {other:?}"),
        }
    }

    #[test]
    fn opening_a_directory_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(RedbStore::open(dir.path()), Err(StoreError::Open { .. })));
    }

    #[test]
    fn a_second_handle_on_the_same_file_is_refused_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let first = RedbStore::open(&path).unwrap();
        assert_eq!(RedbStore::open(&path).unwrap_err(), StoreError::Locked { path: path.clone() });
        drop(first);
        RedbStore::open(&path).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_store_is_unreadable_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        let junk = b"these are my notes, not a database\n".repeat(200);
        std::fs::write(&path, &junk).unwrap();
        match RedbStore::open(&path) {
            Err(StoreError::Unreadable { path: reported, .. }) => assert_eq!(reported, path),
            other => panic!("expected unreadable, got {other:?}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), junk);
    }

    #[test]
    fn a_truncated_store_is_unreadable_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let mut store = RedbStore::open(&path).unwrap();
            for n in 0u32..100 {
                let mut batch = WriteBatch::new();
                batch.put(Table::Blobs, n.to_be_bytes(), vec![n as u8; 2000]);
                store.apply(batch).unwrap();
            }
        }
        let bytes = std::fs::read(&path).unwrap();
        // Cut inside the header, inside the first pages, and halfway: redb
        // records the file's layout length, so every cut is detected.
        for cut in [10, 600, 5000, bytes.len() / 2] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let result = RedbStore::open(&path);
            assert!(matches!(result, Err(StoreError::Unreadable { .. })), "cut at {cut}: {result:?}");
        }
    }

    #[test]
    fn a_store_with_damaged_pages_is_unreadable_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let mut store = RedbStore::open(&path).unwrap();
            for n in 0u32..200 {
                let mut batch = WriteBatch::new();
                batch.put(Table::Bodies, n.to_be_bytes(), vec![0xA5; 700]);
                store.apply(batch).unwrap();
            }
        }
        // Overwrite every occurrence of the stored values' bytes: data pages
        // change, so their checksums no longer match.
        let mut bytes = std::fs::read(&path).unwrap();
        let mut damaged = 0;
        for byte in bytes.iter_mut().filter(|b| **b == 0xA5) {
            *byte = 0x5A;
            damaged += 1;
        }
        assert!(damaged > 0);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(RedbStore::open(&path), Err(StoreError::Unreadable { .. })));
    }
}
