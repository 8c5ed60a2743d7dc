//! Group commit: how the server loop gets its staged writes onto disk without
//! waiting for the disk.
//!
//! The loop stages every handle call's writes
//! ([`bluetick_core::store::Staging`]), seals them into numbered *groups*
//! and hands each to a `Committer`. With [`CommitMode::Thread`] one
//! committer thread takes every group waiting, applies them as one batch (one
//! transaction, one `fsync`), then raises the *durable watermark* and wakes
//! the loop, which releases the outputs of every group at or below it. So the
//! loop keeps reading, accepting and staging while a commit runs, and one
//! `fsync` covers everything that arrived meanwhile.
//!
//! # The handoff (`CommitQueue`)
//! A mutex over the waiting groups, the watermark, the failure and the
//! loop's waker; a condition variable wakes the committer. Its promises,
//! which the loom tests below check under every interleaving:
//! - **no group is lost**: every submitted group is applied, exactly once,
//!   unless an earlier one failed; closing lets the committer drain the queue
//!   before it stops;
//! - **durable before signalled**: the watermark reaches a group only after
//!   the store's `apply` of it returned `Ok`, and the loop is woken after
//!   that;
//! - **in order**: groups are applied in the order submitted and the
//!   watermark only rises.
//!
//! A failed apply is fatal: the loop's memory is then ahead of the disk, so
//! the server stops and a restart recovers from what is durable (nothing the
//! failed groups contained was acknowledged). Later groups are dropped, never
//! applied over the gap.
//!
//! Run the loom tests (a few seconds; a separate target directory keeps the
//! `--cfg loom` build from invalidating the normal one):
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target-loom cargo test -p bluetick-net --release --lib loom`

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Context, Poll, Waker};

use bluetick_core::store::{Row, Store, StoreError, Table, TableStats, WriteBatch};

use crate::sync::{lock, thread, wait, Arc, Condvar, Mutex};

/// Where group commits run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CommitMode {
    /// [`CommitMode::Thread`] on a multi-threaded tokio runtime,
    /// [`CommitMode::Inline`] on a current-thread one. A current-thread
    /// runtime is how simulators (turmoil) run the server deterministically,
    /// and a thread of our own would break that; a multi-threaded one is how
    /// `bluetick serve` runs it.
    #[default]
    Auto,
    /// On the server loop itself: the loop blocks for each commit. Still one
    /// commit per loop turn, not per frame; deterministic.
    Inline,
    /// On a dedicated committer thread, so reads and accepts go on while the
    /// disk syncs.
    Thread,
}

/// Why the committer stopped committing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitFailure {
    /// The store refused or failed a group's write; that group and every later
    /// one were not applied (or, see [`StoreError::Io`], their fate is
    /// decided on reopening).
    #[error("the store failed a group commit: {0}")]
    Store(StoreError),
    /// The committer thread ended without finishing its work (it panicked).
    #[error("the committer thread stopped unexpectedly")]
    Stopped,
}

/// What the loop and the committer share.
#[derive(Debug, Default)]
struct State {
    /// Sealed groups not yet taken by the committer, in submission order.
    waiting: VecDeque<(u64, WriteBatch)>,
    /// Every group up to this one is applied.
    durable: u64,
    /// Set once; nothing is applied after it.
    failure: Option<CommitFailure>,
    /// No more groups will come: drain and stop.
    closed: bool,
    /// The loop task waiting for the watermark to rise.
    waker: Option<Waker>,
}

/// A deliberately broken handoff, so the loom tests are shown to catch it.
/// Only a test build can switch one on ([`CommitQueue::with_bug`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommitBug {
    /// Raise the watermark and wake the loop when a group is taken, before
    /// the store has applied it: acks could then leave before the write.
    SignalBeforeCommit,
    /// Take only the oldest waiting group and drop the others, as a handoff
    /// that kept one slot instead of a queue would.
    DropWaitingGroups,
}

/// The handoff between the server loop and the committer thread: see the
/// module documentation.
#[derive(Debug, Default)]
pub(crate) struct CommitQueue {
    state: Mutex<State>,
    /// Signalled when a group arrives or the queue closes.
    work: Condvar,
    #[cfg(test)]
    bug: Option<CommitBug>,
}

impl CommitQueue {
    /// An empty queue, nothing durable yet.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A queue with `bug` switched on (tests only).
    #[cfg(test)]
    pub(crate) fn with_bug(bug: CommitBug) -> Self {
        CommitQueue { bug: Some(bug), ..Self::default() }
    }

    #[cfg(test)]
    fn has_bug(&self, bug: CommitBug) -> bool {
        self.bug == Some(bug)
    }

    #[cfg(not(test))]
    fn has_bug(&self, _: CommitBug) -> bool {
        false
    }

    /// Hands group `group` to the committer. Groups must come in increasing
    /// order. After a failure or [`CommitQueue::close`] the batch is dropped:
    /// it will never be durable, so its outputs never leave.
    pub(crate) fn submit(&self, group: u64, batch: WriteBatch) {
        let mut state = lock(&self.state);
        if state.failure.is_some() || state.closed {
            return;
        }
        state.waiting.push_back((group, batch));
        drop(state);
        self.work.notify_one();
    }

    /// No more groups: the committer applies what is waiting, then returns.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.work.notify_one();
    }

    /// The durable watermark, or the failure that stopped the committer.
    pub(crate) fn durable(&self) -> Result<u64, CommitFailure> {
        let state = lock(&self.state);
        match &state.failure {
            Some(failure) => Err(failure.clone()),
            None => Ok(state.durable),
        }
    }

    /// Ready once the watermark is above `beyond` (with the new watermark) or
    /// the committer failed; otherwise registers `cx`'s waker.
    pub(crate) fn poll_durable(&self, cx: &mut Context<'_>, beyond: u64) -> Poll<Result<u64, CommitFailure>> {
        let mut state = lock(&self.state);
        if let Some(failure) = &state.failure {
            return Poll::Ready(Err(failure.clone()));
        }
        if state.durable > beyond {
            return Poll::Ready(Ok(state.durable));
        }
        if !state.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Waits until the watermark is above `beyond`; returns it.
    pub(crate) async fn wait_durable(&self, beyond: u64) -> Result<u64, CommitFailure> {
        poll_fn(|cx| self.poll_durable(cx, beyond)).await
    }

    /// The committer: applies waiting groups to `store`, all that are waiting
    /// as one batch, until the queue is closed and empty or an apply fails.
    pub(crate) fn run<S: Store>(&self, store: &Mutex<S>) {
        let mut stopped = StopGuard { queue: self, finished: false };
        loop {
            let (last, merged) = {
                let mut state = lock(&self.state);
                while state.waiting.is_empty() && !state.closed && state.failure.is_none() {
                    state = wait(&self.work, state);
                }
                if state.waiting.is_empty() || state.failure.is_some() {
                    break;
                }
                let mut merged = WriteBatch::new();
                let mut last = state.durable;
                while let Some((group, batch)) = state.waiting.pop_front() {
                    merged.append(batch);
                    last = group;
                    if self.has_bug(CommitBug::DropWaitingGroups) {
                        state.waiting.clear();
                    }
                }
                if self.has_bug(CommitBug::SignalBeforeCommit) {
                    state.durable = last;
                    let waker = state.waker.take();
                    drop(state);
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                }
                (last, merged)
            };
            let result = lock(store).apply(merged);
            let mut state = lock(&self.state);
            let failed = match result {
                Ok(()) => {
                    state.durable = state.durable.max(last);
                    false
                }
                Err(err) => {
                    state.failure = Some(CommitFailure::Store(err));
                    state.waiting.clear();
                    true
                }
            };
            let waker = state.waker.take();
            drop(state);
            if let Some(waker) = waker {
                waker.wake();
            }
            if failed {
                break;
            }
        }
        stopped.finished = true;
    }
}

/// Reports [`CommitFailure::Stopped`] if the committer unwinds, so the loop
/// is not left waiting for a watermark that will never rise.
struct StopGuard<'a> {
    queue: &'a CommitQueue,
    finished: bool,
}

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut state = lock(&self.queue.state);
        state.failure.get_or_insert(CommitFailure::Stopped);
        state.waiting.clear();
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Reads of a store shared with the committer: each read takes the lock for
/// its own duration only (it may wait for a commit in progress). Applying
/// through it applies directly, under the lock.
pub(crate) struct LockedStore<'a, S>(pub(crate) &'a Mutex<S>);

impl<S: Store> Store for LockedStore<'_, S> {
    fn apply(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        lock(self.0).apply(batch)
    }

    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        lock(self.0).scan(table)
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        lock(self.0).get(table, key)
    }

    fn stats(&self) -> Result<BTreeMap<Table, TableStats>, StoreError> {
        lock(self.0).stats()
    }
}

/// Why a committer could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum CommitterError {
    /// The committer thread could not be spawned (out of threads or memory).
    #[error("cannot start the committer thread: {0}")]
    Spawn(std::io::Error),
    /// The committer failed or stopped; what it failed on.
    #[error(transparent)]
    Failed(#[from] CommitFailure),
}

/// The server loop's end of group commit: owns the store (shared with the
/// committer thread, if any) and knows how far commits have got.
pub(crate) enum Committer<S> {
    /// Commits on the caller's thread.
    Inline {
        /// The store.
        store: Arc<Mutex<S>>,
        /// Every group up to this one is applied.
        durable: u64,
    },
    /// Commits on a committer thread.
    Thread {
        /// The store, also held by the thread.
        store: Arc<Mutex<S>>,
        /// The handoff.
        queue: Arc<CommitQueue>,
        /// The thread, joined on [`Committer::finish`].
        thread: thread::JoinHandle<()>,
    },
}

impl<S: Store + Send + 'static> Committer<S> {
    /// Starts committing to `store` in `mode` (`Auto` resolved as
    /// [`CommitMode`] says, from the current tokio runtime).
    pub(crate) fn start(mode: CommitMode, store: S) -> Result<Self, CommitterError> {
        let store = Arc::new(Mutex::new(store));
        let threaded = match mode {
            CommitMode::Inline => false,
            CommitMode::Thread => true,
            CommitMode::Auto => tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread),
        };
        if !threaded {
            return Ok(Committer::Inline { store, durable: 0 });
        }
        let queue = Arc::new(CommitQueue::new());
        let (q, s) = (Arc::clone(&queue), Arc::clone(&store));
        let thread = thread::Builder::new()
            .name("bluetick-commit".into())
            .spawn(move || q.run(&*s))
            .map_err(CommitterError::Spawn)?;
        Ok(Committer::Thread { store, queue, thread })
    }

    /// Whether commits run on a committer thread.
    pub(crate) fn is_threaded(&self) -> bool {
        matches!(self, Committer::Thread { .. })
    }

    /// The store, for reads between commits.
    pub(crate) fn store(&self) -> &Mutex<S> {
        match self {
            Committer::Inline { store, .. } | Committer::Thread { store, .. } => store,
        }
    }

    /// Commits group `group` (inline: now; threaded: hands it over).
    pub(crate) fn submit(&mut self, group: u64, batch: WriteBatch) -> Result<(), CommitFailure> {
        match self {
            Committer::Inline { store, durable } => {
                lock(store).apply(batch).map_err(CommitFailure::Store)?;
                *durable = group;
                Ok(())
            }
            Committer::Thread { queue, .. } => {
                queue.submit(group, batch);
                queue.durable().map(|_| ())
            }
        }
    }

    /// Every group up to the returned one is durable.
    pub(crate) fn durable(&self) -> Result<u64, CommitFailure> {
        match self {
            Committer::Inline { durable, .. } => Ok(*durable),
            Committer::Thread { queue, .. } => queue.durable(),
        }
    }

    /// Completes when the watermark rises above `beyond` (never, inline:
    /// there every submit is durable when it returns).
    pub(crate) async fn wait_durable(&self, beyond: u64) -> Result<u64, CommitFailure> {
        match self {
            Committer::Inline { .. } => std::future::pending().await,
            Committer::Thread { queue, .. } => queue.wait_durable(beyond).await,
        }
    }

    /// Stops committing once everything submitted is applied, and hands the
    /// store back. Blocks until the committer thread has finished: call it
    /// once the watermark covers every group, when that is immediate.
    pub(crate) fn finish(self) -> Result<S, CommitterError> {
        let store = match self {
            Committer::Inline { store, .. } => store,
            Committer::Thread { store, queue, thread } => {
                queue.close();
                if thread.join().is_err() {
                    return Err(CommitFailure::Stopped.into());
                }
                queue.durable()?;
                store
            }
        };
        // The thread, the only other owner, has been joined.
        let store = Arc::try_unwrap(store).map_err(|_| CommitFailure::Stopped)?;
        Ok(store.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

#[cfg(test)]
#[cfg(not(loom))]
mod tests {
    use super::*;
    use bluetick_core::store::MemoryStore;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn group(n: u64) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch.put(Table::Mailbox, n.to_be_bytes(), b"m".to_vec());
        batch
    }

    fn keys(store: &MemoryStore) -> Vec<u64> {
        store
            .scan(Table::Mailbox)
            .unwrap()
            .into_iter()
            .map(|(k, _)| u64::from_be_bytes(k.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn a_threaded_committer_applies_every_group_and_returns_the_store() {
        let mut committer = Committer::start(CommitMode::Thread, MemoryStore::new()).unwrap();
        for n in 1..=50 {
            committer.submit(n, group(n)).unwrap();
        }
        let store = committer.finish().unwrap();
        assert_eq!(keys(&store), (1..=50).collect::<Vec<_>>());
    }

    #[test]
    fn an_inline_committer_is_durable_when_submit_returns() {
        let mut committer = Committer::start(CommitMode::Inline, MemoryStore::new()).unwrap();
        committer.submit(1, group(1)).unwrap();
        assert_eq!(committer.durable(), Ok(1));
        assert_eq!(keys(&lock(committer.store())), vec![1]);
    }

    #[test]
    fn a_failed_commit_stops_the_committer_and_later_groups_are_never_applied() {
        let mut store = MemoryStore::new();
        store.fail_next_apply();
        let queue = CommitQueue::new();
        queue.submit(1, group(1));
        queue.submit(2, group(2));
        queue.close();
        let store = Mutex::new(store);
        queue.run(&store);
        assert_eq!(queue.durable(), Err(CommitFailure::Store(StoreError::Injected)));
        queue.submit(3, group(3));
        assert!(keys(&lock(&store)).is_empty());
        assert!(lock(&queue.state).waiting.is_empty());
    }

    /// A store whose apply panics, as a bug in a storage engine would.
    struct Exploding;

    impl Store for Exploding {
        fn apply(&mut self, _: WriteBatch) -> Result<(), StoreError> {
            panic!("storage engine bug");
        }
        fn scan(&self, _: Table) -> Result<Vec<Row>, StoreError> {
            Ok(Vec::new())
        }
        fn get(&self, _: Table, _: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(None)
        }
        fn stats(&self) -> Result<BTreeMap<Table, TableStats>, StoreError> {
            Ok(BTreeMap::new())
        }
    }

    #[tokio::test]
    async fn a_committer_that_panics_wakes_the_loop_with_a_failure() {
        let mut committer = Committer::start(CommitMode::Thread, Exploding).unwrap();
        committer.submit(1, group(1)).unwrap();
        assert_eq!(committer.wait_durable(0).await, Err(CommitFailure::Stopped));
        assert!(matches!(committer.finish(), Err(CommitterError::Failed(CommitFailure::Stopped))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn auto_mode_uses_a_thread_on_a_multi_threaded_runtime() {
        let committer = Committer::start(CommitMode::Auto, MemoryStore::new()).unwrap();
        assert!(matches!(committer, Committer::Thread { .. }));
        committer.finish().unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn auto_mode_commits_inline_on_a_current_thread_runtime() {
        let committer = Committer::start(CommitMode::Auto, MemoryStore::new()).unwrap();
        assert!(matches!(committer, Committer::Inline { .. }));
    }

    #[test]
    fn the_dropping_bug_switch_really_loses_a_waiting_group() {
        let queue = CommitQueue::with_bug(CommitBug::DropWaitingGroups);
        queue.submit(1, group(1));
        queue.submit(2, group(2));
        queue.close();
        let store = Mutex::new(MemoryStore::new());
        queue.run(&store);
        assert_eq!(keys(&lock(&store)), vec![1]);
    }

    #[test]
    fn waiting_groups_are_merged_into_one_apply() {
        /// Counts applies.
        #[derive(Default)]
        struct Counting(MemoryStore, Arc<AtomicUsize>);
        impl Store for Counting {
            fn apply(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
                self.1.fetch_add(1, Ordering::Relaxed);
                self.0.apply(batch)
            }
            fn scan(&self, t: Table) -> Result<Vec<Row>, StoreError> {
                self.0.scan(t)
            }
            fn get(&self, t: Table, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
                self.0.get(t, k)
            }
            fn stats(&self) -> Result<BTreeMap<Table, TableStats>, StoreError> {
                self.0.stats()
            }
        }
        let applies = Arc::new(AtomicUsize::new(0));
        let queue = CommitQueue::new();
        for n in 1..=10 {
            queue.submit(n, group(n));
        }
        queue.close();
        let store = Mutex::new(Counting(MemoryStore::new(), Arc::clone(&applies)));
        queue.run(&store);
        assert_eq!(applies.load(Ordering::Relaxed), 1);
        assert_eq!(queue.durable(), Ok(10));
        assert_eq!(keys(&lock(&store).0), (1..=10).collect::<Vec<_>>());
    }
}

/// The handoff under loom: every interleaving of the loop (submitting,
/// waiting for the watermark) and the committer thread.
#[cfg(test)]
#[cfg(loom)]
mod loom_tests {
    use super::*;

    /// A store that records which groups it applied, in order (each group's
    /// batch is one put keyed by its number).
    #[derive(Default)]
    struct Log(Vec<u64>);

    impl Store for Log {
        fn apply(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
            for op in batch.ops() {
                let key: [u8; 8] = op.key().try_into().map_err(|_| StoreError::Injected)?;
                self.0.push(u64::from_be_bytes(key));
            }
            Ok(())
        }
        fn scan(&self, _: Table) -> Result<Vec<Row>, StoreError> {
            Ok(Vec::new())
        }
        fn get(&self, _: Table, _: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(None)
        }
        fn stats(&self) -> Result<BTreeMap<Table, TableStats>, StoreError> {
            Ok(BTreeMap::new())
        }
    }

    fn group(n: u64) -> WriteBatch {
        let mut batch = WriteBatch::new();
        batch.put(Table::Mailbox, n.to_be_bytes(), Vec::new());
        batch
    }

    /// Two groups submitted while the committer runs; the loop waits for the
    /// watermark, and at every rise checks the store already holds every
    /// group at or below it, in order. Then closes and checks nothing is lost.
    fn submit_wait_and_check(queue: CommitQueue) {
        let queue = Arc::new(queue);
        let store = Arc::new(Mutex::new(Log::default()));
        let committer = {
            let (queue, store) = (Arc::clone(&queue), Arc::clone(&store));
            thread::spawn(move || queue.run(&*store))
        };
        queue.submit(1, group(1));
        queue.submit(2, group(2));
        let mut seen = 0;
        while seen < 2 {
            let durable = loom::future::block_on(queue.wait_durable(seen)).unwrap();
            assert!(durable > seen, "the watermark went back from {seen} to {durable}");
            let applied = lock(&store).0.clone();
            let expected: Vec<u64> = (1..=durable).collect();
            assert!(
                applied.starts_with(&expected),
                "watermark {durable} signalled before the store had it: applied {applied:?}"
            );
            seen = durable;
        }
        queue.close();
        committer.join().unwrap();
        assert_eq!(lock(&store).0, vec![1, 2], "a group was lost, repeated or reordered");
    }

    #[test]
    fn loom_groups_are_signalled_durable_only_after_the_commit_and_in_order() {
        loom::model(|| submit_wait_and_check(CommitQueue::new()));
    }

    /// Submits two groups and closes at once, racing the committer; after it
    /// stops, the store must hold both, once each, in order.
    fn submit_close_and_check(queue: CommitQueue) {
        let queue = Arc::new(queue);
        let store = Arc::new(Mutex::new(Log::default()));
        let committer = {
            let (queue, store) = (Arc::clone(&queue), Arc::clone(&store));
            thread::spawn(move || queue.run(&*store))
        };
        queue.submit(1, group(1));
        queue.submit(2, group(2));
        queue.close();
        committer.join().unwrap();
        assert_eq!(lock(&store).0, vec![1, 2], "a group was lost, repeated or reordered");
        assert_eq!(queue.durable(), Ok(2));
    }

    #[test]
    fn loom_closing_lets_the_committer_drain_every_submitted_group() {
        loom::model(|| submit_close_and_check(CommitQueue::new()));
    }

    #[test]
    #[should_panic(expected = "a group was lost")]
    fn loom_catches_a_committer_that_drops_waiting_groups() {
        loom::model(|| submit_close_and_check(CommitQueue::with_bug(CommitBug::DropWaitingGroups)));
    }

    #[test]
    #[should_panic(expected = "signalled before the store had it")]
    fn loom_catches_a_committer_that_signals_before_it_commits() {
        loom::model(|| submit_wait_and_check(CommitQueue::with_bug(CommitBug::SignalBeforeCommit)));
    }
}
