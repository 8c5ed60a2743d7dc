//! Crash consistency of `RedbStore` under real process kills.
//!
//! The test binary re-executes itself as a child process (switched into child
//! mode by [`CHILD_ENV`], which names the store file). The child applies batch
//! after batch and prints `bluetick-store-committed <seq>` after each `apply`
//! returns. The parent reads those lines, SIGKILLs the child after a seeded pseudo-random
//! number of them, reopens the store and checks that
//! - every sequence number the child reported is present with all its
//!   values: nothing acknowledged is lost;
//! - the store is exactly the result of batches `1..=last` for some `last`:
//!   no batch is partly present (each batch writes several tables, overwrites
//!   one key, and deletes keys written by earlier batches).
//!
//! The kill lands wherever the child happens to be, which is almost always
//! inside `apply` (the commit's `fsync` dominates its loop). Rounds reuse the
//! same file, so each child also starts from a store recovered after a kill.
//! A second test runs the same checks against children broken on purpose
//! (splitting batches, acknowledging before committing) and expects them to
//! fail, so the checks are seen to be able to fail.
//!
//! What this does not test: a process kill leaves the OS page cache intact,
//! so it checks that redb's commit is atomic and that "`apply` returned" means
//! "committed", not that the `fsync` survives power loss. That would need a
//! VM or a fault-injecting filesystem; for it we rely on redb committing with
//! immediate durability.
//!
//! Reproduce a failure with the seed printed on stderr:
//! `BLUETICK_STORE_CRASH_SEED=<seed> cargo test -p bluetick-core --test store_crash`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use bluetick_core::store::{BatchOp, RedbStore, Row, Store, Table, WriteBatch};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Set in the child's environment to the store path; its presence switches
/// the test function into child mode.
const CHILD_ENV: &str = "BLUETICK_STORE_CRASH_CHILD";
/// Overrides [`DEFAULT_SEED`] to reproduce a run.
const SEED_ENV: &str = "BLUETICK_STORE_CRASH_SEED";
const DEFAULT_SEED: u64 = 0x5eed_b1e7_1c4a_11ed;
/// Set in the child's environment to a [`ChildBug`] name to break it on purpose.
const CHILD_BUG_ENV: &str = "BLUETICK_STORE_CRASH_BUG";
/// The test the child runs: the name of the test function that checks
/// [`CHILD_ENV`] and runs the child.
const CHILD_TEST: &str = "redb_store_keeps_every_acknowledged_batch_across_sigkill";
/// Kill rounds; each costs a process start plus at most [`KILL_AFTER_MAX`]
/// commits: about 0.02–0.05 s here, under a second even where an `fsync`
/// takes 20 ms.
const ROUNDS: usize = 10;
/// Kill rounds at most for a broken child: a round stops the run as soon as
/// it catches the bug, but a single round misses an early acknowledgement
/// whenever the kill lands once the batch's commit record is written (the
/// `fsync` after it still running): five to nine rounds in ten here (it
/// was caught in round 0 to 22 of twelve runs), so ten rounds let about one
/// run in six pass unnoticed. 200 make that below 10^-9, and cost seconds
/// only when the check has failed anyway.
const BUG_ROUNDS: usize = 200;
/// The child is killed after 1 to this many acknowledged commits.
const KILL_AFTER_MAX: u64 = 30;
/// After the chosen acknowledgement the parent waits up to this long before
/// the kill, so the kill lands at varying points of the next commits rather
/// than always just after a report.
const KILL_DELAY_MAX_MICROS: u64 = 4_000;
/// How long the parent waits for one line before declaring the child stuck.
const LINE_TIMEOUT: Duration = Duration::from_secs(20);
/// A child whose parent died stops after this many batches instead of
/// writing forever (it also dies on the closed stdout pipe).
const CHILD_BATCHES_MAX: u64 = 100_000;

/// What the child prints before each acknowledged sequence number.
const COMMIT_MARKER: &str = "bluetick-store-committed ";

const LAST_KEY: &[u8] = b"last";

/// Deterministic value of batch `seq` for one table; lengths vary so batches
/// span different numbers of pages.
fn value(table: Table, seq: u64) -> Vec<u8> {
    let salt = table as u64 + 1;
    let len = 32 + (seq.wrapping_mul(7_919) ^ salt.wrapping_mul(104_729)) % 12_000;
    (0..len).map(|i| (seq.wrapping_mul(31) ^ i.wrapping_mul(salt) ^ (i >> 8)) as u8).collect()
}

/// The batch with sequence number `seq` (from 1). After batches `1..=last`:
/// Accounts and Bodies hold every seq; Mailbox holds every seq except those
/// deleted two batches later by a batch whose seq is a multiple of 3;
/// Presence holds only `last` (each batch deletes its predecessor's key);
/// Meta's `last` is `last`.
fn batch(seq: u64) -> WriteBatch {
    let key = seq.to_be_bytes();
    let mut batch = WriteBatch::new();
    batch
        .put(Table::Accounts, key, value(Table::Accounts, seq))
        .put(Table::Mailbox, key, value(Table::Mailbox, seq))
        .put(Table::Bodies, key, value(Table::Bodies, seq))
        .delete(Table::Presence, (seq - 1).to_be_bytes())
        .put(Table::Presence, key, value(Table::Presence, seq))
        .put(Table::Meta, LAST_KEY, key);
    if seq.is_multiple_of(3) {
        batch.delete(Table::Mailbox, (seq - 2).to_be_bytes());
    }
    batch
}

/// The sequence number of the last batch in the store, 0 if none.
fn last_seq(store: &RedbStore) -> u64 {
    store.get(Table::Meta, LAST_KEY).unwrap().map_or(0, |bytes| u64::from_be_bytes(bytes.try_into().unwrap()))
}

/// What the store must hold after exactly batches `1..=last`.
fn expected_after(last: u64) -> BTreeMap<Table, Vec<Row>> {
    let row = |table: Table, seq: u64| (seq.to_be_bytes().to_vec(), value(table, seq));
    let mut expected = BTreeMap::new();
    for table in Table::ALL {
        let rows = match table {
            Table::Accounts | Table::Bodies => (1..=last).map(|seq| row(table, seq)).collect(),
            Table::Mailbox => (1..=last)
                .filter(|seq| !((seq + 2).is_multiple_of(3) && seq + 2 <= last))
                .map(|seq| row(table, seq))
                .collect(),
            Table::Presence => (last > 0).then(|| row(table, last)).into_iter().collect(),
            Table::Meta => (last > 0).then(|| (LAST_KEY.to_vec(), last.to_be_bytes().to_vec())).into_iter().collect(),
            Table::Keys | Table::Groups | Table::Blobs => Vec::new(),
        };
        expected.insert(table, rows);
    }
    expected
}

/// Deliberately broken children, to show the checks can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildBug {
    /// Applies each op of a batch as its own batch: not atomic.
    SplitBatches,
    /// Reports a batch before applying it: acknowledges what is not durable.
    AckBeforeCommit,
}

impl ChildBug {
    fn name(self) -> &'static str {
        match self {
            ChildBug::SplitBatches => "split-batches",
            ChildBug::AckBeforeCommit => "ack-before-commit",
        }
    }

    fn from_env() -> Option<Self> {
        let name = std::env::var(CHILD_BUG_ENV).ok()?;
        [ChildBug::SplitBatches, ChildBug::AckBeforeCommit].into_iter().find(|bug| bug.name() == name)
    }
}

/// Child mode: apply batches from the store's last one on, reporting each
/// commit, until killed.
fn run_child(path: &Path, bug: Option<ChildBug>) {
    let mut store = RedbStore::open(path).unwrap();
    let first = last_seq(&store) + 1;
    for seq in first..first + CHILD_BATCHES_MAX {
        // One `write` per line (stdout is line buffered), so a kill cannot
        // leave a torn line that parses as another number.
        let report = || println!("{COMMIT_MARKER}{seq}");
        match bug {
            None => {
                store.apply(batch(seq)).unwrap();
                report();
            }
            Some(ChildBug::SplitBatches) => {
                for op in batch(seq).ops() {
                    let mut single = WriteBatch::new();
                    match op {
                        BatchOp::Put { table, key, value } => single.put(*table, key.clone(), value.clone()),
                        BatchOp::Delete { table, key } => single.delete(*table, key.clone()),
                    };
                    store.apply(single).unwrap();
                }
                report();
            }
            Some(ChildBug::AckBeforeCommit) => {
                report();
                store.apply(batch(seq)).unwrap();
            }
        }
    }
}

/// Runs one child until it has acknowledged `kill_after` commits, waits
/// `kill_delay`, kills it, and returns every sequence number it acknowledged
/// (including any still in the pipe when it died).
fn run_and_kill(path: &Path, bug: Option<ChildBug>, kill_after: u64, kill_delay: Duration) -> Vec<u64> {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, path)
        .env_remove(CHILD_BUG_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(bug) = bug {
        command.env(CHILD_BUG_ENV, bug.name());
    }
    let mut child = command.spawn().unwrap();

    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            if stdout.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                break;
            }
            // Only whole lines count. libtest's own output is skipped, and it
            // may share the first report's line ("test name ... "), so the
            // marker is searched for rather than expected at the start.
            let Some(text) = line.strip_suffix(b"\n").and_then(|l| std::str::from_utf8(l).ok()) else { continue };
            if let Some((_, seq)) = text.split_once(COMMIT_MARKER) {
                if lines_tx.send(seq.parse::<u64>().unwrap()).is_err() {
                    break;
                }
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let mut acked = Vec::new();
    while (acked.len() as u64) < kill_after {
        match lines_rx.recv_timeout(LINE_TIMEOUT) {
            Ok(seq) => acked.push(seq),
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = stderr_reader.join().unwrap();
                panic!("child stopped reporting after {} commits ({err:?}); its stderr:\n{stderr}", acked.len());
            }
        }
    }
    thread::sleep(kill_delay);
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child must die by the kill, not exit: {status:?}");
    reader.join().unwrap();
    // Lines written before the kill are acknowledged commits too.
    acked.extend(lines_rx.try_iter());
    stderr_reader.join().unwrap();
    acked
}

/// Kills children running `bug` at seeded points and checks the store after
/// each kill: [`ROUNDS`] times for the real child, up to [`BUG_ROUNDS`] for
/// a broken one. Returns the number of batches in the store at the end, or
/// the first violation found.
fn crash_rounds(bug: Option<ChildBug>) -> Result<u64, String> {
    let rounds = if bug.is_some() { BUG_ROUNDS } else { ROUNDS };
    let seed = std::env::var(SEED_ENV).map_or(DEFAULT_SEED, |s| s.parse().unwrap());
    eprintln!("store crash test ({bug:?}) seed {seed} (set {SEED_ENV} to reproduce)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");

    let mut last = 0;
    let mut unacked_commits = 0;
    for round in 0..rounds {
        let kill_after = 1 + rng.next_u64() % KILL_AFTER_MAX;
        let kill_delay = Duration::from_micros(rng.next_u64() % KILL_DELAY_MAX_MICROS);
        let acked = run_and_kill(&path, bug, kill_after, kill_delay);

        // The child resumes where the recovered store ends and reports in order.
        let expected_acks: Vec<u64> = (last + 1..=last + acked.len() as u64).collect();
        if acked != expected_acks {
            return Err(format!("round {round}: acknowledgements {acked:?}, expected {expected_acks:?}"));
        }
        let acked_max = acked.last().copied().unwrap_or(last);

        let store = RedbStore::open(&path).unwrap();
        let recovered = last_seq(&store);
        if recovered < acked_max {
            return Err(format!("round {round}: batch {acked_max} was acknowledged but the store ends at {recovered}"));
        }
        // A batch committed between the last report and the kill may be
        // present; that is allowed (the child died before acknowledging it).
        if recovered > acked_max + 1 {
            return Err(format!("round {round}: store ends at {recovered}, only {acked_max} reported"));
        }
        unacked_commits += recovered - acked_max;

        for (table, rows) in expected_after(recovered) {
            let actual = store.scan(table).unwrap();
            if actual != rows {
                return Err(format!(
                    "round {round}: table {table} is not the result of batches 1..={recovered}: {} rows, expected {}",
                    actual.len(),
                    rows.len()
                ));
            }
        }
        eprintln!(
            "round {round}: killed {kill_delay:?} after ack {kill_after}; {} acks, store ends at batch {recovered}",
            acked.len()
        );
        last = recovered;
    }
    eprintln!("{unacked_commits} of {rounds} rounds ended with a committed but unacknowledged batch");
    Ok(last)
}

#[test]
fn redb_store_keeps_every_acknowledged_batch_across_sigkill() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        run_child(Path::new(&path), ChildBug::from_env());
        return;
    }
    let last = crash_rounds(None).unwrap();
    assert!(last >= ROUNDS as u64, "every round acknowledges at least one batch");
}

/// The same checks against children that split batches or acknowledge before
/// committing must fail, or they would prove nothing. A kill lands at a random
/// moment, so a single round can miss the bug (see [`BUG_ROUNDS`]); over all
/// rounds that is vanishingly unlikely.
#[test]
fn the_crash_check_notices_split_batches_and_early_acks() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    for bug in [ChildBug::SplitBatches, ChildBug::AckBeforeCommit] {
        match crash_rounds(Some(bug)) {
            Err(violation) => eprintln!("{bug:?} caught: {violation}"),
            Ok(last) => panic!("{bug:?} went unnoticed through {BUG_ROUNDS} kills ({last} batches)"),
        }
    }
}
