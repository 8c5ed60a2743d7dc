//! [`LogStore`]: the server's store as one append-only log file, with the
//! tables indexed in memory.
//!
//! # Why a log
//! The server keeps its state in memory and writes the store only so that a
//! restart can rebuild it; nearly every write is short-lived (a mailbox
//! entry put on accept and deleted on ack, an accepted id put and deleted a
//! TTL later). redb pays for that with a copy-on-write B-tree: in a loopback
//! drain of queued messages, half of the server's CPU went to redb's page
//! copies, checksums and commits. Here a batch is one record appended to the
//! file and one `fsync`; a delete is a few bytes. The index (key → where its
//! value sits in the file) lives in memory, so reads cost one positioned
//! read, and [`Store::scan`] is a walk of the index.
//!
//! # Format
//! The file starts with [`MAGIC`]. Each [`Store::apply`] appends one record:
//! the payload's length (`u32`, little-endian), its CRC-32 (`u32`), then the
//! payload, the batch's ops in order, each `tag (0 put, 1 delete) · table ·
//! key length (u32) · key · [value length (u32) · value]`.
//!
//! # Crash safety
//! A batch is acknowledged only after its record is written and synced, so
//! a crash can tear only the record being appended, which was never
//! acknowledged. Opening replays the records; a torn last record (short, or
//! failing its checksum with nothing after it) is cut off. A record that
//! fails its checksum with more records after it is corruption, not a
//! crash: the store refuses to open ([`StoreError::Unreadable`]) rather than
//! silently drop acknowledged writes. After an I/O error the store refuses
//! further writes until it is reopened, since what reached the disk is
//! unknown until the log is read again.
//!
//! # Compaction
//! Overwritten and deleted values stay in the file until it is more than
//! [`COMPACT_RATIO`] times what is live (and at least
//! [`COMPACT_MIN_BYTES`]); then the live entries are written to a new file,
//! synced, and renamed over the old one, so a crash leaves one whole log or
//! the other. That apply takes as long as writing the live data once.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{BatchOp, Row, Store, StoreError, Table, TableStats, WriteBatch};

/// The first bytes of a log file (format version 1).
pub const MAGIC: [u8; 8] = *b"BTLOG\0\0\x01";

/// A record's header: payload length and CRC-32.
const RECORD_HEADER: u64 = 8;

/// Compaction starts when the file exceeds this many times the live bytes.
pub const COMPACT_RATIO: u64 = 4;

/// No compaction below this file size: rewriting a small log saves nothing.
pub const COMPACT_MIN_BYTES: u64 = 64 << 20;

/// Payload bytes per record when compaction rewrites the live entries.
const COMPACT_RECORD_BYTES: usize = 1 << 20;

/// Where a value sits in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    offset: u64,
    len: u32,
}

/// Bytes an entry is counted as when deciding on compaction: its key, its
/// value and the op's framing.
fn entry_cost(key: &[u8], loc: Loc) -> u64 {
    key.len() as u64 + u64::from(loc.len) + 10
}

/// A [`Store`] in one append-only file (see the module docs).
pub struct LogStore {
    file: File,
    path: PathBuf,
    /// Length of the valid log: where the next record goes.
    end: u64,
    index: [BTreeMap<Vec<u8>, Loc>; Table::ALL.len()],
    /// Sum of [`entry_cost`] over the index.
    live: u64,
    /// Set by an I/O error in `apply`: writes are refused until reopened.
    poisoned: bool,
    /// The file size from which compaction is tried (raised after a failed try).
    compact_floor: u64,
    /// No compaction below this size ([`COMPACT_MIN_BYTES`] but in tests).
    compact_min: u64,
    /// The record being written, kept to reuse its allocation.
    scratch: Vec<u8>,
}

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore").field("path", &self.path).field("end", &self.end).finish_non_exhaustive()
    }
}

fn table_index(t: Table) -> usize {
    Table::ALL.iter().position(|x| *x == t).unwrap_or(0)
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io { path: path.to_path_buf(), message: e.to_string() }
}

/// Appends one op to a record payload; returns where in the payload a put's
/// value starts.
fn encode_op(out: &mut Vec<u8>, op: &BatchOp) -> Option<usize> {
    let (tag, table, key, value) = match op {
        BatchOp::Put { table, key, value } => (0u8, *table, key, Some(value)),
        BatchOp::Delete { table, key } => (1u8, *table, key, None),
    };
    out.push(tag);
    out.push(table_index(table) as u8);
    // Lengths fit: `WriteBatch::validate` bounds keys and values far below 4 GiB.
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    value.map(|v| {
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        let at = out.len();
        out.extend_from_slice(v);
        at
    })
}

/// One op read back from a payload: (table, key, value's position and
/// length within the payload for a put).
type DecodedOp<'a> = (Table, &'a [u8], Option<(usize, u32)>);

/// Reads the ops of a payload whose checksum held; `Err` names what does not
/// parse (a writer bug or a format this build does not know).
fn decode_ops(payload: &[u8]) -> Result<Vec<DecodedOp<'_>>, String> {
    let mut ops = Vec::new();
    let mut at = 0usize;
    let u32_at = |at: usize| -> Result<u32, String> {
        payload
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| format!("op cut short at payload byte {at}"))
    };
    while at < payload.len() {
        let (Some(&tag), Some(&table)) = (payload.get(at), payload.get(at + 1)) else {
            return Err(format!("op cut short at payload byte {at}"));
        };
        let table = *Table::ALL.get(usize::from(table)).ok_or_else(|| format!("unknown table number {table}"))?;
        let key_len = u32_at(at + 2)? as usize;
        let key_start = at + 6;
        let key = payload.get(key_start..key_start + key_len).ok_or_else(|| format!("key cut short at {key_start}"))?;
        at = key_start + key_len;
        match tag {
            0 => {
                let len = u32_at(at)?;
                let start = at + 4;
                if payload.len() < start + len as usize {
                    return Err(format!("value cut short at {start}"));
                }
                ops.push((table, key, Some((start, len))));
                at = start + len as usize;
            }
            1 => ops.push((table, key, None)),
            other => return Err(format!("unknown op tag {other}")),
        }
    }
    Ok(ops)
}

impl LogStore {
    /// Opens the log at `path`, creating the file (not its directory) if it
    /// does not exist, and replays it. [`StoreError::Locked`] if another
    /// handle has it open, [`StoreError::Unreadable`] if it is not a log of
    /// this format or is damaged other than by a torn last write (which is
    /// cut off).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |e: std::io::Error| StoreError::Open { path: path.clone(), message: e.to_string() };
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(open_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StoreError::Locked { path }),
            Err(TryLockError::Error(e)) => return Err(open_err(e)),
        }
        let len = file.metadata().map_err(open_err)?.len();
        let mut store = LogStore {
            file,
            path: path.clone(),
            end: 0,
            index: Default::default(),
            live: 0,
            poisoned: false,
            compact_floor: COMPACT_MIN_BYTES,
            compact_min: COMPACT_MIN_BYTES,
            scratch: Vec::new(),
        };
        if len == 0 {
            store.file.write_all(&MAGIC).map_err(open_err)?;
            store.file.sync_all().map_err(open_err)?;
            sync_dir(&path).map_err(open_err)?;
            store.end = MAGIC.len() as u64;
        } else {
            store.replay(len)?;
        }
        Ok(store)
    }

    fn unreadable(&self, message: impl Into<String>) -> StoreError {
        StoreError::Unreadable { path: self.path.clone(), message: message.into() }
    }

    /// Rebuilds the index from the file, cutting off a torn last record.
    fn replay(&mut self, len: u64) -> Result<(), StoreError> {
        let mut reader = BufReader::with_capacity(1 << 20, &self.file);
        let mut magic = [0u8; 8];
        if reader.read_exact(&mut magic).is_err() || magic != MAGIC {
            return Err(self.unreadable("not a bluetick log (wrong or missing header)"));
        }
        let mut at = MAGIC.len() as u64;
        let mut payload = Vec::new();
        let mut index: [BTreeMap<Vec<u8>, Loc>; Table::ALL.len()] = Default::default();
        let mut live = 0u64;
        let torn = loop {
            if at == len {
                break false;
            }
            let mut header = [0u8; 8];
            if len - at < RECORD_HEADER || reader.read_exact(&mut header).is_err() {
                break true;
            }
            let payload_len = u64::from(u32::from_le_bytes([header[0], header[1], header[2], header[3]]));
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            let record_end = at + RECORD_HEADER + payload_len;
            if record_end > len {
                break true;
            }
            payload.resize(payload_len as usize, 0);
            if reader.read_exact(&mut payload).is_err() {
                break true;
            }
            if crc32fast::hash(&payload) != crc {
                if record_end == len {
                    break true;
                }
                return Err(self.unreadable(format!(
                    "record at byte {at} fails its checksum and is not the last one: the file is damaged"
                )));
            }
            let ops = decode_ops(&payload)
                .map_err(|e| self.unreadable(format!("record at byte {at} does not parse: {e}")))?;
            let base = at + RECORD_HEADER;
            for (table, key, value) in ops {
                let map = &mut index[table_index(table)];
                if let Some(old) = map.remove(key) {
                    live -= entry_cost(key, old);
                }
                if let Some((start, len)) = value {
                    let loc = Loc { offset: base + start as u64, len };
                    live += entry_cost(key, loc);
                    map.insert(key.to_vec(), loc);
                }
            }
            at = record_end;
        };
        drop(reader);
        if torn {
            // The tail was being appended when the process stopped: never
            // acknowledged, so it goes.
            self.file.set_len(at).map_err(|e| io_error(&self.path, e))?;
            self.file.sync_all().map_err(|e| io_error(&self.path, e))?;
        }
        self.index = index;
        self.live = live;
        self.end = at;
        Ok(())
    }

    fn read_at(&self, loc: Loc) -> Result<Vec<u8>, StoreError> {
        let mut buf = vec![0u8; loc.len as usize];
        let mut f = &self.file;
        f.seek(SeekFrom::Start(loc.offset)).map_err(|e| io_error(&self.path, e))?;
        f.read_exact(&mut buf).map_err(|e| io_error(&self.path, e))?;
        Ok(buf)
    }

    /// Bytes of the log file, header included (for tests and reports).
    pub fn file_len(&self) -> u64 {
        self.end
    }

    fn append(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        let mut record = std::mem::take(&mut self.scratch);
        record.clear();
        record.extend_from_slice(&[0u8; RECORD_HEADER as usize]);
        let mut value_at = Vec::with_capacity(batch.len());
        for op in batch.ops() {
            value_at.push(encode_op(&mut record, op));
        }
        let payload = &record[RECORD_HEADER as usize..];
        let (len, crc) = (payload.len() as u32, crc32fast::hash(payload));
        record[..4].copy_from_slice(&len.to_le_bytes());
        record[4..8].copy_from_slice(&crc.to_le_bytes());
        let written = (|| {
            self.file.seek(SeekFrom::Start(self.end))?;
            self.file.write_all(&record)?;
            self.file.sync_data()
        })();
        let record_len = record.len() as u64;
        self.scratch = record;
        if let Err(e) = written {
            self.poisoned = true;
            return Err(io_error(&self.path, e));
        }
        let base = self.end;
        for (op, at) in batch.ops().iter().zip(value_at) {
            let map = &mut self.index[table_index(op.table())];
            if let Some(old) = map.remove(op.key()) {
                self.live -= entry_cost(op.key(), old);
            }
            if let (BatchOp::Put { key, value, .. }, Some(at)) = (op, at) {
                let loc = Loc { offset: base + at as u64, len: value.len() as u32 };
                self.live += entry_cost(key, loc);
                map.insert(key.clone(), loc);
            }
        }
        self.end += record_len;
        Ok(())
    }

    /// Rewrites the live entries into a fresh file that replaces this one.
    fn compact(&mut self) -> Result<(), StoreError> {
        let tmp = self.path.with_extension("compacting");
        let err = |e: std::io::Error| io_error(&tmp, e);
        // Read and write: it becomes the store's file, which `get` reads.
        let mut out = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(err)?;
        out.write_all(&MAGIC).map_err(err)?;
        let mut end = MAGIC.len() as u64;
        let mut index: [BTreeMap<Vec<u8>, Loc>; Table::ALL.len()] = Default::default();
        let mut record: Vec<u8> = Vec::with_capacity(COMPACT_RECORD_BYTES + 4096);
        // (table, key, position of the value in `record`)
        let mut pending: Vec<(usize, Vec<u8>, usize, u32)> = Vec::new();
        let mut flush = |record: &mut Vec<u8>,
                         pending: &mut Vec<(usize, Vec<u8>, usize, u32)>,
                         end: &mut u64,
                         index: &mut [BTreeMap<Vec<u8>, Loc>; Table::ALL.len()]|
         -> std::io::Result<()> {
            if pending.is_empty() {
                return Ok(());
            }
            let mut header = [0u8; 8];
            header[..4].copy_from_slice(&(record.len() as u32).to_le_bytes());
            header[4..].copy_from_slice(&crc32fast::hash(record).to_le_bytes());
            out.write_all(&header)?;
            out.write_all(record)?;
            let base = *end + RECORD_HEADER;
            for (t, key, at, len) in pending.drain(..) {
                index[t].insert(key, Loc { offset: base + at as u64, len });
            }
            *end = base + record.len() as u64;
            record.clear();
            Ok(())
        };
        // In file order, so the old log is read front to back in large
        // reads instead of one seek and read per value.
        let mut live: Vec<(Loc, usize, &Vec<u8>)> =
            self.index.iter().enumerate().flat_map(|(t, map)| map.iter().map(move |(k, loc)| (*loc, t, k))).collect();
        live.sort_unstable_by_key(|(loc, ..)| loc.offset);
        let old_err = |e: std::io::Error| io_error(&self.path, e);
        let mut old = &self.file;
        old.seek(SeekFrom::Start(0)).map_err(old_err)?;
        let mut reader = BufReader::with_capacity(1 << 20, old);
        let mut pos = 0u64;
        for (loc, t, key) in live {
            let skip = i64::try_from(loc.offset - pos).map_err(|e| old_err(std::io::Error::other(e)))?;
            reader.seek_relative(skip).map_err(old_err)?;
            let mut value = vec![0u8; loc.len as usize];
            reader.read_exact(&mut value).map_err(old_err)?;
            pos = loc.offset + u64::from(loc.len);
            let op = BatchOp::Put { table: Table::ALL[t], key: key.clone(), value };
            if let Some(at) = encode_op(&mut record, &op) {
                pending.push((t, key.clone(), at, loc.len));
            }
            if record.len() >= COMPACT_RECORD_BYTES {
                flush(&mut record, &mut pending, &mut end, &mut index).map_err(err)?;
            }
        }
        flush(&mut record, &mut pending, &mut end, &mut index).map_err(err)?;
        out.sync_all().map_err(err)?;
        out.try_lock().map_err(|e| io_error(&tmp, std::io::Error::other(e.to_string())))?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        sync_dir(&self.path).map_err(|e| io_error(&self.path, e))?;
        self.file = out;
        self.index = index;
        self.end = end;
        Ok(())
    }
}

/// Makes a file's creation or renaming durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match File::open(dir).and_then(|d| d.sync_all()) {
        // Some filesystems refuse to sync a directory handle; the data itself is synced.
        Err(e) if e.kind() == ErrorKind::InvalidInput || e.kind() == ErrorKind::PermissionDenied => Ok(()),
        other => other,
    }
}

impl Store for LogStore {
    fn apply(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        batch.validate()?;
        if batch.is_empty() {
            return Ok(());
        }
        if self.poisoned {
            return Err(StoreError::Io {
                path: self.path.clone(),
                message: "an earlier write failed; reopen the store to recover".into(),
            });
        }
        self.append(&batch)?;
        if self.end >= self.compact_floor && self.end > COMPACT_RATIO.saturating_mul(self.live) {
            if self.compact().is_err() {
                // The batch is durable in the old log, which stays whole;
                // try again once the file has doubled.
                let _ = std::fs::remove_file(self.path.with_extension("compacting"));
                self.compact_floor = self.end.saturating_mul(2);
            } else {
                self.compact_floor = self.compact_min.max(self.end.saturating_mul(2));
            }
        }
        Ok(())
    }

    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        self.index[table_index(table)].iter().map(|(k, loc)| Ok((k.clone(), self.read_at(*loc)?))).collect()
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.index[table_index(table)].get(key).map(|loc| self.read_at(*loc)).transpose()
    }

    fn stats(&self) -> Result<BTreeMap<Table, TableStats>, StoreError> {
        let mut out = BTreeMap::new();
        for (t, map) in Table::ALL.iter().zip(&self.index) {
            let mut s = TableStats::default();
            for (k, loc) in map {
                s.add(k.len(), loc.len as usize);
            }
            out.insert(*t, s);
        }
        Ok(out)
    }
}

#[cfg(test)]
impl LogStore {
    /// Compaction from `bytes` on, so tests need not write 64 MiB.
    fn with_compact_floor(mut self, bytes: u64) -> Self {
        self.compact_floor = bytes;
        self.compact_min = bytes;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use proptest::prelude::*;

    fn all(store: &dyn Store) -> Vec<(Table, Vec<Row>)> {
        Table::ALL.iter().map(|&t| (t, store.scan(t).unwrap())).collect()
    }

    fn batch(ops: &[(bool, u8, u8, u16)]) -> WriteBatch {
        let mut b = WriteBatch::new();
        for &(put, t, k, v) in ops {
            let table = Table::ALL[usize::from(t) % Table::ALL.len()];
            let key = vec![k % 16; 1 + usize::from(k % 3)];
            if put {
                b.put(table, key, vec![v as u8; usize::from(v % 300)]);
            } else {
                b.delete(table, key);
            }
        }
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever the batches, the log holds what an in-memory store
        /// holds, before and after reopening, with compaction in between.
        #[test]
        fn a_log_holds_what_memory_holds_across_reopens(
            batches in prop::collection::vec(prop::collection::vec((any::<bool>(), 0u8..8, any::<u8>(), any::<u16>()), 0..12), 1..40),
            reopen_every in 1usize..10,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s.log");
            let mut log = LogStore::open(&path).unwrap().with_compact_floor(1024);
            let mut mem = MemoryStore::new();
            for (i, ops) in batches.iter().enumerate() {
                let b = batch(ops);
                mem.apply(b.clone()).unwrap();
                log.apply(b).unwrap();
                if i % reopen_every == 0 {
                    drop(log);
                    log = LogStore::open(&path).unwrap().with_compact_floor(1024);
                }
                prop_assert_eq!(all(&log), all(&mem));
                prop_assert_eq!(log.stats().unwrap(), mem.stats().unwrap());
            }
        }
    }

    fn put(store: &mut LogStore, key: &[u8], value: &[u8]) {
        let mut b = WriteBatch::new();
        b.put(Table::Mailbox, key.to_vec(), value.to_vec());
        store.apply(b).unwrap();
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        let mut log = LogStore::open(&path).unwrap();
        put(&mut log, b"a", b"first");
        put(&mut log, b"b", b"second");
        let good = log.file_len();
        put(&mut log, b"c", b"third, torn");
        drop(log);
        let full = std::fs::read(&path).unwrap();
        // Every cut inside the last record: its header, its payload.
        for cut in good + 1..full.len() as u64 {
            std::fs::write(&path, &full[..cut as usize]).unwrap();
            let log = LogStore::open(&path).unwrap();
            assert_eq!(log.get(Table::Mailbox, b"b").unwrap().as_deref(), Some(&b"second"[..]), "cut at {cut}");
            assert_eq!(log.get(Table::Mailbox, b"c").unwrap(), None, "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), good, "the torn tail is removed");
        }
        // A complete last record whose bytes were damaged is torn too.
        let mut damaged = full.clone();
        *damaged.last_mut().unwrap() ^= 0xff;
        std::fs::write(&path, &damaged).unwrap();
        let mut log = LogStore::open(&path).unwrap();
        assert_eq!(log.get(Table::Mailbox, b"c").unwrap(), None);
        // And the log goes on from there.
        put(&mut log, b"d", b"after");
        drop(log);
        let log = LogStore::open(&path).unwrap();
        assert_eq!(log.get(Table::Mailbox, b"d").unwrap().as_deref(), Some(&b"after"[..]));
        assert_eq!(log.get(Table::Mailbox, b"a").unwrap().as_deref(), Some(&b"first"[..]));
    }

    #[test]
    fn damage_before_the_last_record_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        let mut log = LogStore::open(&path).unwrap();
        put(&mut log, b"a", b"first");
        put(&mut log, b"b", b"second");
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        // The first record's value: acknowledged data, not a torn append.
        let at = bytes.windows(5).position(|w| w == b"first").unwrap();
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        match LogStore::open(&path) {
            Err(StoreError::Unreadable { message, .. }) => assert!(message.contains("checksum"), "{message}"),
            other => panic!("expected Unreadable, got {other:?}"),
        }
        // Nothing was cut: the file is as it was.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_file_that_is_not_a_log_is_refused_and_a_second_handle_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.bin");
        std::fs::write(&path, b"SQLite format 3\0 and more").unwrap();
        assert!(matches!(LogStore::open(&path), Err(StoreError::Unreadable { .. })));
        let path = dir.path().join("s.log");
        let _first = LogStore::open(&path).unwrap();
        assert!(matches!(LogStore::open(&path), Err(StoreError::Locked { .. })));
        let missing = dir.path().join("no-such-dir").join("s.log");
        assert!(matches!(LogStore::open(&missing), Err(StoreError::Open { .. })));
    }

    #[test]
    fn overwrites_are_compacted_away_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        let mut log = LogStore::open(&path).unwrap().with_compact_floor(64 << 10);
        let mut b = WriteBatch::new();
        b.put(Table::Keys, b"kept".to_vec(), b"untouched".to_vec());
        log.apply(b).unwrap();
        for i in 0..2_000u32 {
            let mut b = WriteBatch::new();
            b.put(Table::Mailbox, b"hot".to_vec(), vec![i as u8; 1024]).delete(Table::Bodies, i.to_be_bytes().to_vec());
            log.apply(b).unwrap();
        }
        // 2 MB written; what is live is about 1 KiB.
        assert!(log.file_len() < 256 << 10, "log is {} bytes", log.file_len());
        assert!(!path.with_extension("compacting").exists());
        drop(log);
        let log = LogStore::open(&path).unwrap();
        assert_eq!(log.get(Table::Mailbox, b"hot").unwrap(), Some(vec![(1_999u32) as u8; 1024]));
        assert_eq!(log.get(Table::Keys, b"kept").unwrap().as_deref(), Some(&b"untouched"[..]));
        assert_eq!(log.stats().unwrap()[&Table::Mailbox].entries, 1);
    }
}
