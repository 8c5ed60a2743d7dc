//! [`WatchedStore`]: the server's store as the [`World`](super::World) hands
//! it to the server, remembering every value written since the oracle last
//! looked.
//!
//! `no-plaintext-on-server` asks whether any sent plaintext is in the
//! server's durable store. Rescanning every table after every step made a
//! run's cost grow with the store times the steps (a 1,100-user world holds
//! over a hundred thousand key rows). A value's content is fixed when it is
//! written, and a plaintext can only reach the server after its app sent it,
//! so checking each written value once, right after the step that wrote it,
//! judges exactly what the full rescan judged.

use std::collections::BTreeMap;

use crate::store::{BatchOp, MemoryStore, Row, Store, StoreError, Table, TableStats, WriteBatch};

/// A [`MemoryStore`] that keeps the (table, key, value) of every put since
/// the last [`WatchedStore::take_written`].
#[derive(Debug, Default)]
pub(crate) struct WatchedStore {
    inner: MemoryStore,
    written: Vec<(Table, Row)>,
}

impl WatchedStore {
    /// The store itself.
    pub(crate) fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    /// The puts applied since the last call, in order.
    pub(crate) fn take_written(&mut self) -> Vec<(Table, Row)> {
        std::mem::take(&mut self.written)
    }
}

impl Store for WatchedStore {
    fn apply(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        // Copied before the batch is consumed; kept only if it applied.
        let puts: Vec<(Table, Row)> = batch
            .ops()
            .iter()
            .filter_map(|op| match op {
                BatchOp::Put { table, key, value } => Some((*table, (key.clone(), value.clone()))),
                BatchOp::Delete { .. } => None,
            })
            .collect();
        self.inner.apply(batch)?;
        self.written.extend(puts);
        Ok(())
    }

    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        self.inner.scan(table)
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }

    fn stats(&self) -> Result<BTreeMap<Table, TableStats>, StoreError> {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_applied_puts_are_remembered_and_each_once() {
        let mut s = WatchedStore::default();
        let mut b = WriteBatch::new();
        b.put(Table::Mailbox, b"k1".to_vec(), b"v1".to_vec()).delete(Table::Keys, b"gone".to_vec());
        s.apply(b).unwrap();
        s.inner.fail_next_apply();
        let mut failed = WriteBatch::new();
        failed.put(Table::Mailbox, b"k2".to_vec(), b"v2".to_vec());
        assert!(s.apply(failed).is_err());
        assert_eq!(s.take_written(), vec![(Table::Mailbox, (b"k1".to_vec(), b"v1".to_vec()))]);
        assert!(s.take_written().is_empty());
        assert_eq!(s.get(Table::Mailbox, b"k1").unwrap(), Some(b"v1".to_vec()));
    }
}
