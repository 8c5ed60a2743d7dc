//! [`MemoryStore`]: the store for the simulator and the model checker.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{BatchOp, Row, Store, StoreError, Table, TableStats, WriteBatch};

/// A [`Store`] in ordered maps. Iteration is deterministic, and `Clone` is the
/// simulated crash: drop the server, rebuild it from a clone of its store, and
/// what the clone holds is exactly what was applied. `apply` is trivially
/// atomic because it is validated first and cannot fail halfway.
///
/// Armed faults ([`MemoryStore::fail_next_apply`]) are part of the state: a
/// clone carries them, as a failing disk stays failing across a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemoryStore {
    tables: BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>,
    /// How many of the next `apply` calls fail with [`StoreError::Injected`].
    failures_armed: u32,
}

impl MemoryStore {
    /// An empty store with no faults armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next valid, non-empty `apply` fail with
    /// [`StoreError::Injected`] and change nothing, as a failed disk write
    /// would. Calls add up: arming twice fails the next two.
    pub fn fail_next_apply(&mut self) {
        self.fail_next_applies(1);
    }

    /// Makes the next `count` valid, non-empty `apply` calls fail (added to
    /// any already armed).
    pub fn fail_next_applies(&mut self, count: u32) {
        self.failures_armed = self.failures_armed.saturating_add(count);
    }

    /// How many upcoming `apply` calls will still fail.
    pub fn failures_armed(&self) -> u32 {
        self.failures_armed
    }

    /// Entries in `table`, without walking them (unlike [`Store::stats`]):
    /// cheap enough for a simulator to poll every few ticks.
    pub fn len(&self, table: Table) -> usize {
        self.tables.get(&table).map_or(0, BTreeMap::len)
    }
}

impl Store for MemoryStore {
    fn apply(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        // Validation first, so an invalid batch reports the caller's bug rather
        // than consuming an armed fault.
        batch.validate()?;
        if batch.is_empty() {
            return Ok(());
        }
        if self.failures_armed > 0 {
            self.failures_armed -= 1;
            return Err(StoreError::Injected);
        }
        for op in batch.ops {
            match op {
                BatchOp::Put { table, key, value } => {
                    self.tables.entry(table).or_default().insert(key, value);
                }
                BatchOp::Delete { table, key } => {
                    if let Some(entries) = self.tables.get_mut(&table) {
                        entries.remove(&key);
                        // Dropping emptied tables keeps equality (and Hash) a
                        // function of the contents alone.
                        if entries.is_empty() {
                            self.tables.remove(&table);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        Ok(self
            .tables
            .get(&table)
            .map(|entries| entries.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tables.get(&table).and_then(|entries| entries.get(key)).cloned())
    }

    fn stats(&self) -> Result<BTreeMap<Table, TableStats>, StoreError> {
        let mut stats: BTreeMap<Table, TableStats> = Table::ALL.iter().map(|&t| (t, TableStats::default())).collect();
        for (table, entries) in &self.tables {
            let table_stats = stats.entry(*table).or_default();
            for (key, value) in entries {
                table_stats.add(key.len(), value.len());
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_put(table: Table, key: &[u8], value: &[u8]) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch.put(table, key.to_vec(), value.to_vec());
        batch
    }

    #[test]
    fn len_counts_one_tables_entries() {
        let mut store = MemoryStore::new();
        assert_eq!(store.len(Table::Mailbox), 0);
        store.apply(one_put(Table::Mailbox, b"a", b"1")).unwrap();
        store.apply(one_put(Table::Mailbox, b"b", b"2")).unwrap();
        store.apply(one_put(Table::Meta, b"a", b"3")).unwrap();
        assert_eq!((store.len(Table::Mailbox), store.len(Table::Meta)), (2, 1));
        assert_eq!(store.len(Table::Mailbox) as u64, store.stats().unwrap()[&Table::Mailbox].entries);
    }

    #[test]
    fn an_injected_failure_changes_nothing_and_fails_only_once() {
        let mut store = MemoryStore::new();
        store.apply(one_put(Table::Mailbox, b"a", b"1")).unwrap();
        let before = store.clone();

        store.fail_next_apply();
        let mut batch = one_put(Table::Mailbox, b"b", b"2");
        batch.delete(Table::Mailbox, b"a".to_vec());
        assert_eq!(store.apply(batch.clone()), Err(StoreError::Injected));
        assert_eq!(store, before);
        assert_eq!(store.failures_armed(), 0);

        // The retry of the same batch goes through.
        store.apply(batch).unwrap();
        assert_eq!(store.scan(Table::Mailbox).unwrap(), vec![(b"b".to_vec(), b"2".to_vec())]);
    }

    #[test]
    fn armed_failures_add_up_and_skip_invalid_and_empty_batches() {
        let mut store = MemoryStore::new();
        store.fail_next_apply();
        store.fail_next_applies(1);
        assert_eq!(store.failures_armed(), 2);

        // Neither an empty batch nor an invalid one uses up a fault.
        store.apply(WriteBatch::new()).unwrap();
        let oversize = one_put(Table::Blobs, b"x", &vec![0u8; super::super::VALUE_LEN_MAX + 1]);
        assert!(matches!(store.apply(oversize), Err(StoreError::ValueTooLarge { .. })));
        assert_eq!(store.failures_armed(), 2);

        assert_eq!(store.apply(one_put(Table::Meta, b"k", b"v")), Err(StoreError::Injected));
        assert_eq!(store.apply(one_put(Table::Meta, b"k", b"v")), Err(StoreError::Injected));
        store.apply(one_put(Table::Meta, b"k", b"v")).unwrap();
        assert_eq!(store.get(Table::Meta, b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn a_clone_is_an_independent_snapshot() {
        let mut store = MemoryStore::new();
        store.apply(one_put(Table::Accounts, b"alice", b"1")).unwrap();
        let crashed = store.clone();
        store.apply(one_put(Table::Accounts, b"bob", b"2")).unwrap();

        assert_eq!(crashed.scan(Table::Accounts).unwrap(), vec![(b"alice".to_vec(), b"1".to_vec())]);
        assert_eq!(store.scan(Table::Accounts).unwrap().len(), 2);
    }

    #[test]
    fn equal_contents_compare_equal_whatever_the_history() {
        let mut churned = MemoryStore::new();
        churned.apply(one_put(Table::Groups, b"g", b"1")).unwrap();
        let mut delete = WriteBatch::new();
        delete.delete(Table::Groups, b"g".to_vec());
        churned.apply(delete).unwrap();
        assert_eq!(churned, MemoryStore::new());
    }

    #[test]
    fn a_postcard_round_trip_preserves_contents_and_armed_faults() {
        let mut store = MemoryStore::new();
        store.apply(one_put(Table::Bodies, &[0, 1, 2], &[9, 8])).unwrap();
        store.fail_next_apply();
        let bytes = postcard::to_allocvec(&store).unwrap();
        let mut back: MemoryStore = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, store);
        assert_eq!(back.apply(one_put(Table::Meta, b"k", b"v")), Err(StoreError::Injected));
    }
}
