//! [`Staging`]: the write batches of many handle calls, held for one group
//! commit.
//!
//! A driver that commits one durable transaction per handle call pays one
//! `fsync` per frame. With a `Staging` in between, each call's
//! [`Store::apply`] only *stages* its batch: it is validated at once (so the
//! caller sees exactly the errors a real store would give for that batch,
//! and an invalid batch never poisons the group) and appended to the open
//! group. The driver then [`Staging::seal`]s the group into one
//! [`WriteBatch`], applies that with the real store, and reports
//! [`Staging::committed`]. Until then reads through [`Staging::view`] see the
//! staged writes over the base store, so the caller observes a store that
//! behaves as if every apply had already landed.
//!
//! What this does not do is hold back the caller's *outputs*: that is the
//! driver's half of the contract. Whatever a handle call produced after
//! staging into group `n` may leave only once group `n` is durable.
//!
//! Group numbers start at 1 and count sealed groups; 0 means "none".

use std::collections::BTreeMap;

use super::{BatchOp, Row, Store, StoreError, Table, TableStats, WriteBatch};

/// The newest uncommitted write of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Staged {
    /// The group the write belongs to (the open group is `sealed + 1`).
    group: u64,
    /// The new value; `None` for a delete.
    value: Option<Vec<u8>>,
}

/// Staged writes not yet known to be durable: the open group being built, and
/// the latest value of every key written by a group that is sealed but not
/// yet [`Staging::committed`].
#[derive(Debug, Default)]
pub struct Staging {
    /// The batches staged since the last seal, merged in order.
    open: WriteBatch,
    /// Number of the last sealed group (0: none yet).
    sealed: u64,
    /// Every group up to this one is durable.
    durable: u64,
    /// The newest uncommitted write per key, for reads.
    overlay: BTreeMap<Table, BTreeMap<Vec<u8>, Staged>>,
}

impl Staging {
    /// Nothing staged.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates `batch` and adds it to the open group. On `Err` nothing was
    /// staged.
    ///
    /// # Errors
    /// [`StoreError::KeyTooLarge`] or [`StoreError::ValueTooLarge`], as
    /// [`WriteBatch::validate`] reports them.
    pub fn stage(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        batch.validate()?;
        let group = self.sealed + 1;
        for op in batch.ops() {
            let value = match op {
                BatchOp::Put { value, .. } => Some(value.clone()),
                BatchOp::Delete { .. } => None,
            };
            self.overlay.entry(op.table()).or_default().insert(op.key().to_vec(), Staged { group, value });
        }
        self.open.append(batch);
        Ok(())
    }

    /// Whether the open group holds writes (what a call returning now has
    /// staged must wait for group [`Staging::open_group`]).
    pub fn has_open_writes(&self) -> bool {
        !self.open.is_empty()
    }

    /// The number the open group will have once sealed.
    pub fn open_group(&self) -> u64 {
        self.sealed + 1
    }

    /// The number of the last sealed group, 0 if none.
    pub fn last_sealed(&self) -> u64 {
        self.sealed
    }

    /// The group everything staged so far belongs to: the open group if it
    /// holds writes, else the last sealed one. Output produced now may be
    /// released once this group is durable.
    pub fn barrier(&self) -> u64 {
        if self.has_open_writes() {
            self.open_group()
        } else {
            self.sealed
        }
    }

    /// Every group up to this one is known durable.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Sealed groups not yet reported committed.
    pub fn groups_in_flight(&self) -> u64 {
        self.sealed - self.durable
    }

    /// Closes the open group and returns its number and its merged batch, to
    /// be applied with the real store; `None` if it holds no writes.
    pub fn seal(&mut self) -> Option<(u64, WriteBatch)> {
        if self.open.is_empty() {
            return None;
        }
        self.sealed += 1;
        Some((self.sealed, std::mem::take(&mut self.open)))
    }

    /// Every group up to `group` is durable in the base store: reads of their
    /// keys may go to the base again. Writes of later groups stay visible.
    /// Reports at or below an earlier one change nothing.
    pub fn committed(&mut self, group: u64) {
        let group = group.min(self.sealed);
        if group <= self.durable {
            return;
        }
        self.durable = group;
        for entries in self.overlay.values_mut() {
            entries.retain(|_, staged| staged.group > group);
        }
        self.overlay.retain(|_, entries| !entries.is_empty());
    }

    /// A [`Store`] whose `apply` stages and whose reads see staged writes
    /// over `base`. `base` is only read.
    pub fn view<'a>(&'a mut self, base: &'a dyn Store) -> StagedStore<'a> {
        StagedStore { staging: self, base }
    }

    /// The staged value of `key`: `Some(None)` if staged as deleted, `None`
    /// if not staged at all.
    fn lookup(&self, table: Table, key: &[u8]) -> Option<Option<&[u8]>> {
        self.overlay.get(&table).and_then(|entries| entries.get(key)).map(|staged| staged.value.as_deref())
    }
}

/// The store a handle call sees while its writes are staged: see
/// [`Staging::view`].
pub struct StagedStore<'a> {
    staging: &'a mut Staging,
    base: &'a dyn Store,
}

impl std::fmt::Debug for StagedStore<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedStore").field("staging", &self.staging).finish_non_exhaustive()
    }
}

impl Store for StagedStore<'_> {
    /// Stages the batch (validated now; durable only once its group is
    /// committed by the driver).
    fn apply(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        self.staging.stage(batch)
    }

    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        let mut rows: BTreeMap<Vec<u8>, Vec<u8>> = self.base.scan(table)?.into_iter().collect();
        if let Some(entries) = self.staging.overlay.get(&table) {
            for (key, staged) in entries {
                match &staged.value {
                    Some(value) => {
                        rows.insert(key.clone(), value.clone());
                    }
                    None => {
                        rows.remove(key);
                    }
                }
            }
        }
        Ok(rows.into_iter().collect())
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.staging.lookup(table, key) {
            Some(staged) => Ok(staged.map(<[u8]>::to_vec)),
            None => self.base.get(table, key),
        }
    }

    fn stats(&self) -> Result<BTreeMap<Table, TableStats>, StoreError> {
        let mut stats = BTreeMap::new();
        for table in Table::ALL {
            let mut table_stats = TableStats::default();
            for (key, value) in self.scan(table)? {
                table_stats.add(key.len(), value.len());
            }
            stats.insert(table, table_stats);
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MemoryStore, RedbStore, VALUE_LEN_MAX};
    use super::*;

    /// A put (`Some` value) or a delete (`None`) of a key.
    type Op<'a> = (Table, &'a [u8], Option<&'a [u8]>);

    fn batch(ops: &[Op<'_>]) -> WriteBatch {
        let mut batch = WriteBatch::new();
        for (table, key, value) in ops {
            match value {
                Some(v) => batch.put(*table, key.to_vec(), v.to_vec()),
                None => batch.delete(*table, key.to_vec()),
            };
        }
        batch
    }

    fn contents(store: &dyn Store) -> BTreeMap<Table, Vec<Row>> {
        Table::ALL.iter().map(|&t| (t, store.scan(t).unwrap())).collect()
    }

    /// Three handle calls' worth of batches, touching the same keys in
    /// different ways, so that the order of the merged ops matters.
    fn calls() -> Vec<WriteBatch> {
        vec![
            batch(&[(Table::Mailbox, b"m1", Some(b"hello")), (Table::Meta, b"seq", Some(b"1"))]),
            batch(&[(Table::Mailbox, b"m1", None), (Table::Mailbox, b"m2", Some(b"again"))]),
            batch(&[(Table::Meta, b"seq", Some(b"2")), (Table::Mailbox, b"m1", Some(b"back"))]),
        ]
    }

    /// Stages `calls()` over `store`, checks reads see them before the commit
    /// and the base does not, then applies the one sealed batch and compares
    /// with applying the calls one by one to a reference store.
    fn one_group_commit_equals_the_calls_applied_one_by_one(store: &mut dyn Store) {
        let mut seed = WriteBatch::new();
        seed.put(Table::Mailbox, b"m0".to_vec(), b"old".to_vec()).put(Table::Accounts, b"a".to_vec(), b"1".to_vec());
        store.apply(seed.clone()).unwrap();
        let mut reference = MemoryStore::new();
        reference.apply(seed).unwrap();
        let before = contents(store);

        let mut staging = Staging::new();
        {
            let mut view = staging.view(&*store);
            for call in calls() {
                view.apply(call.clone()).unwrap();
                reference.apply(call).unwrap();
            }
            // Reads through the view see every staged write, deletes included.
            assert_eq!(contents(&view), contents(&reference));
            assert_eq!(view.get(Table::Mailbox, b"m1").unwrap(), Some(b"back".to_vec()));
            assert_eq!(view.get(Table::Accounts, b"a").unwrap(), Some(b"1".to_vec()));
            assert_eq!(view.stats().unwrap(), reference.stats().unwrap());
        }
        assert_eq!(contents(store), before, "staging wrote to the base store");
        assert_eq!(staging.barrier(), 1);

        let (group, merged) = staging.seal().unwrap();
        assert_eq!((group, merged.len()), (1, 6));
        assert!(staging.seal().is_none(), "an empty group was sealed");
        store.apply(merged).unwrap();
        staging.committed(group);
        assert_eq!(contents(store), contents(&reference));
        assert_eq!(contents(&staging.view(&*store)), contents(&reference));
    }

    fn an_invalid_batch_is_refused_at_staging_and_the_group_is_unharmed(store: &mut dyn Store) {
        let mut staging = Staging::new();
        let mut view = staging.view(&*store);
        view.apply(batch(&[(Table::Groups, b"g", Some(b"kept"))])).unwrap();
        let mut oversize = batch(&[(Table::Groups, b"g", Some(b"lost"))]);
        oversize.put(Table::Blobs, b"b".to_vec(), vec![0u8; VALUE_LEN_MAX + 1]);
        assert!(matches!(view.apply(oversize), Err(StoreError::ValueTooLarge { .. })));
        assert_eq!(view.get(Table::Groups, b"g").unwrap(), Some(b"kept".to_vec()));
        let (_, merged) = staging.seal().unwrap();
        assert_eq!(merged.len(), 1);
        store.apply(merged).unwrap();
        assert_eq!(store.get(Table::Groups, b"g").unwrap(), Some(b"kept".to_vec()));
    }

    /// Conformance for one store kind: each check on a fresh store.
    fn conformance(mut fresh: impl FnMut() -> Box<dyn Store>) {
        one_group_commit_equals_the_calls_applied_one_by_one(fresh().as_mut());
        an_invalid_batch_is_refused_at_staging_and_the_group_is_unharmed(fresh().as_mut());
    }

    #[test]
    fn group_commit_over_a_memory_store_matches_one_by_one_applies() {
        conformance(|| Box::new(MemoryStore::new()));
    }

    #[test]
    fn group_commit_over_a_redb_store_matches_one_by_one_applies() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        conformance(|| {
            n += 1;
            Box::new(RedbStore::open(dir.path().join(format!("store-{n}.redb"))).unwrap())
        });
    }

    #[test]
    fn a_committed_group_stops_shadowing_but_a_later_rewrite_still_does() {
        let mut base = MemoryStore::new();
        let mut staging = Staging::new();
        staging.stage(batch(&[(Table::Keys, b"k", Some(b"v1")), (Table::Keys, b"x", Some(b"x1"))])).unwrap();
        let (g1, b1) = staging.seal().unwrap();
        // While group 1 is committing, a later call rewrites k.
        staging.stage(batch(&[(Table::Keys, b"k", Some(b"v2"))])).unwrap();
        assert_eq!((staging.groups_in_flight(), staging.barrier()), (1, 2));
        base.apply(b1).unwrap();
        staging.committed(g1);
        assert_eq!(staging.durable(), 1);
        // x is read from the base now, k still from the staged rewrite.
        assert_eq!(staging.lookup(Table::Keys, b"x"), None);
        assert_eq!(staging.view(&base).get(Table::Keys, b"k").unwrap(), Some(b"v2".to_vec()));
        assert_eq!(base.get(Table::Keys, b"k").unwrap(), Some(b"v1".to_vec()));
        // A stale or premature report changes nothing.
        staging.committed(0);
        staging.committed(9);
        assert_eq!(staging.durable(), 1);
        let (g2, b2) = staging.seal().unwrap();
        base.apply(b2).unwrap();
        staging.committed(g2);
        assert!(staging.overlay.is_empty());
        assert_eq!((staging.groups_in_flight(), staging.barrier()), (0, 2));
    }

    #[test]
    fn a_delete_staged_over_a_stored_key_hides_it_until_committed() {
        let mut base = MemoryStore::new();
        base.apply(batch(&[(Table::Presence, b"p", Some(b"seen"))])).unwrap();
        let mut staging = Staging::new();
        let mut view = staging.view(&base);
        view.apply(batch(&[(Table::Presence, b"p", None)])).unwrap();
        assert_eq!(view.get(Table::Presence, b"p").unwrap(), None);
        assert_eq!(view.scan(Table::Presence).unwrap(), Vec::<Row>::new());
        assert_eq!(base.get(Table::Presence, b"p").unwrap(), Some(b"seen".to_vec()));
    }
}
