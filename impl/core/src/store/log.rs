//! [`LogStore`]: the server's store as an append-only log in segment files,
//! with the tables indexed in memory.
//!
//! # Why a log
//! The server keeps its state in memory and writes the store only so that a
//! restart can rebuild it; nearly every write is short-lived (a mailbox
//! entry put on accept and deleted on ack, an accepted id put and deleted a
//! TTL later). redb pays for that with a copy-on-write B-tree: in a loopback
//! drain of queued messages, half of the server's CPU went to redb's page
//! copies, checksums and commits. Here a batch is one record appended to the
//! log and one `fdatasync`; a delete is a few bytes. The index (key → where
//! its value sits) lives in memory, so a read is one positioned read and
//! [`Store::scan`] a sorted walk of the index.
//!
//! # Format
//! The store is a directory: a `LOCK` file and segments
//! `seg-00000001.log`, `seg-00000002.log`, … Each segment starts with
//! [`MAGIC`] and holds records; each [`Store::apply`] appends one record to
//! the newest segment: the payload's length (`u32`, little-endian), its
//! CRC-32 (`u32`), then the payload, the batch's ops in order, each
//! `tag (0 put, 1 delete) · table · key length (u32) · key · [value length
//! (u32) · value]`. Segments replay in order.
//!
//! # Crash safety
//! A batch is acknowledged only after its record is written and synced, so
//! a crash can tear only the record being appended, which was never
//! acknowledged. Opening cuts off a torn last record of the newest segment
//! (short, or failing its checksum with nothing after it). A bad record
//! anywhere else is damage, not a crash: the store refuses to open
//! ([`StoreError::Unreadable`]) rather than silently drop acknowledged
//! writes. After an I/O error it refuses further writes until reopened,
//! since what reached the disk is unknown until the log is read again.
//!
//! # Compaction
//! A segment is closed at [`SEGMENT_BYTES`]. While the segments hold more
//! than [`COMPACT_RATIO`] times the live data (and at least
//! [`COMPACT_MIN_BYTES`]), each apply also compacts the *oldest* segment:
//! its live entries are appended to the newest one as one more record,
//! synced, and then its file is deleted. Oldest first is what makes dropping
//! its deletes safe (no older segment holds a put they could revive), and a
//! crash between the copy and the deletion replays the same values twice.
//! A compaction stalls one commit for reading one segment and writing what
//! is live in it, not the whole store: an earlier version rewrote
//! everything live at once and held commits for ~0.2 s at peak load.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{BatchOp, Row, Store, StoreError, Table, TableStats, WriteBatch};

/// The first bytes of every segment (format version 1).
pub const MAGIC: [u8; 8] = *b"BTLOG\0\0\x01";

/// A record's header: payload length and CRC-32.
const RECORD_HEADER: u64 = 8;

/// A segment is closed once it holds this many bytes.
///
/// A compaction stalls the commit it rides on for reading one segment and
/// re-appending what is live in it, so the segment size is the length of
/// that stall. At 8 MiB, with 20,000 msgs/s offered (one core, tmpfs), p99
/// was 109–128 ms; at 2 MiB 45–63 ms (peak 10 pairs 28k → 32–33k msgs/s, a
/// 200k drain 74–75k → 77–78k, the same CPU per message); at 1 MiB 24–26
/// ms. Only the newest segment keeps its file open, so many small segments
/// cost no descriptors.
pub const SEGMENT_BYTES: u64 = 1 << 20;

/// Compaction runs while the segments exceed this many times the live bytes.
///
/// The disk it costs buys CPU: each compaction copies what is live in the
/// segment it frees, and with every segment about as live as the store as a
/// whole (accepted-id rows live for the TTL and are spread through all of
/// them) that is half of each segment at a ratio of 2, a quarter at 4. At
/// 2, compaction was 57–66% of the server's CPU at peak load; at 4 (same
/// binary otherwise, load clients that save nothing, 10-s runs) peak 10
/// pairs went from 18.6k to 23.8–24.9k msgs/s and a 200k drain from 49.2k
/// to 61.8–62.3k.
pub const COMPACT_RATIO: u64 = 4;

/// No compaction while the segments hold less than this.
pub const COMPACT_MIN_BYTES: u64 = 32 << 20;

/// Where a value sits: segment, offset in it, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    seg: u32,
    offset: u64,
    len: u32,
}

/// Bytes an entry is counted as when deciding on compaction: its key, its
/// value and the op's framing.
fn entry_cost(key: &[u8], loc: Loc) -> u64 {
    key.len() as u64 + u64::from(loc.len) + 10
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    /// Open only while this is the newest segment, the one appended to:
    /// older ones are opened when read (a `get`, a `scan`, their
    /// compaction), so a store of many small segments holds one descriptor.
    file: Option<File>,
    /// Valid bytes: where the next record goes.
    len: u64,
    /// Sum of [`entry_cost`] of the index entries that point here.
    live: u64,
}

/// Key → where its value sits, per table. Hashed, not ordered: at peak
/// load the index's inserts and removes, each a dozen `memcmp`s of long
/// keys deep in a B-tree, were a sixth of the server's CPU. Nothing
/// iterates it where order could reach output: [`Store::scan`] sorts.
#[allow(clippy::disallowed_types)]
type Index = [std::collections::HashMap<Vec<u8>, Loc>; Table::ALL.len()];

/// Where a segment's valid records end, and their ops in order.
type ReadRecords = (u64, Vec<(Table, Vec<u8>, Option<Loc>)>);

/// A [`Store`] in a directory of append-only segments (see the module docs).
pub struct LogStore {
    dir: PathBuf,
    /// Held (locked) while the store is open.
    _lock: File,
    segments: BTreeMap<u32, Segment>,
    index: Index,
    /// Set by an I/O error in `apply`: writes are refused until reopened.
    poisoned: bool,
    segment_bytes: u64,
    compact_min: u64,
    /// The record being written, kept to reuse its allocation.
    scratch: Vec<u8>,
}

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .finish_non_exhaustive()
    }
}

fn table_index(t: Table) -> usize {
    Table::ALL.iter().position(|x| *x == t).unwrap_or(0)
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io { path: path.to_path_buf(), message: e.to_string() }
}

fn segment_name(id: u32) -> String {
    format!("seg-{id:08}.log")
}

fn segment_id(name: &str) -> Option<u32> {
    name.strip_prefix("seg-")?.strip_suffix(".log")?.parse().ok()
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

/// How a walk over a segment's records ended.
enum Tail {
    /// At the end of the bytes.
    Clean,
    /// At a record cut short, or failing its checksum with nothing after
    /// it: what a crash during an append leaves.
    Torn(&'static str),
    /// At a record failing its checksum with more bytes after it.
    Damaged,
}

/// The records of a segment's bytes, header included: each payload with
/// where it starts, where the valid records end, and how the walk ended.
fn records(bytes: &[u8]) -> (Vec<(usize, &[u8])>, usize, Tail) {
    let mut out = Vec::new();
    let mut at = MAGIC.len();
    let tail = loop {
        if at >= bytes.len() {
            break Tail::Clean;
        }
        let Some(header) = bytes.get(at..at + RECORD_HEADER as usize) else { break Tail::Torn("a record cut short") };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let base = at + RECORD_HEADER as usize;
        let Some(payload) = bytes.get(base..base + len) else { break Tail::Torn("a record cut short") };
        if crc32fast::hash(payload) != crc {
            break if base + len == bytes.len() { Tail::Torn("a record failing its checksum") } else { Tail::Damaged };
        }
        out.push((base, payload));
        at = base + len;
    };
    (out, at, tail)
}

/// Points `key` at `loc` (or at nothing), keeping the segments' live counts.
fn set(index: &mut Index, segments: &mut BTreeMap<u32, Segment>, table: Table, key: &[u8], loc: Option<Loc>) {
    let map = &mut index[table_index(table)];
    let old = match loc {
        Some(loc) => {
            if let Some(seg) = segments.get_mut(&loc.seg) {
                seg.live += entry_cost(key, loc);
            }
            match map.get_mut(key) {
                Some(slot) => Some(std::mem::replace(slot, loc)),
                None => {
                    map.insert(key.to_vec(), loc);
                    None
                }
            }
        }
        None => map.remove(key),
    };
    if let Some(old) = old {
        if let Some(seg) = segments.get_mut(&old.seg) {
            seg.live = seg.live.saturating_sub(entry_cost(key, old));
        }
    }
}

impl LogStore {
    /// Opens the store in directory `dir`, creating it (not its parent) if
    /// it does not exist, and replays it. [`StoreError::Locked`] if another
    /// handle has it open, [`StoreError::Unreadable`] if it is not a log of
    /// this format or is damaged other than by a torn last write (which is
    /// cut off).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_sized(dir.as_ref(), SEGMENT_BYTES, COMPACT_MIN_BYTES)
    }

    fn open_sized(dir: &Path, segment_bytes: u64, compact_min: u64) -> Result<Self, StoreError> {
        let dir = dir.to_path_buf();
        let open_err = |e: std::io::Error| StoreError::Open { path: dir.clone(), message: e.to_string() };
        match std::fs::metadata(&dir) {
            Ok(m) if !m.is_dir() => {
                return Err(StoreError::Unreadable {
                    path: dir.clone(),
                    message: "not a log store directory (a file is in its place)".into(),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::fs::create_dir(&dir).map_err(open_err)?;
                sync_parent(&dir).map_err(open_err)?;
            }
            Err(e) => return Err(open_err(e)),
        }
        let lock =
            OpenOptions::new().write(true).create(true).truncate(false).open(dir.join("LOCK")).map_err(open_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StoreError::Locked { path: dir }),
            Err(TryLockError::Error(e)) => return Err(open_err(e)),
        }
        let mut ids: Vec<u32> = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(open_err)? {
            let entry = entry.map_err(open_err)?;
            if let Some(id) = entry.file_name().to_str().and_then(segment_id) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut store = LogStore {
            dir,
            _lock: lock,
            segments: BTreeMap::new(),
            index: Default::default(),
            poisoned: false,
            segment_bytes,
            compact_min,
            scratch: Vec::new(),
        };
        let last = ids.last().copied();
        for id in ids {
            store.replay(id, Some(id) == last)?;
        }
        if store.segments.is_empty() {
            store.new_segment(1).map_err(|e| io_error(&store.dir, e))?;
        }
        Ok(store)
    }

    fn unreadable(&self, id: u32, message: impl Into<String>) -> StoreError {
        StoreError::Unreadable { path: self.dir.join(segment_name(id)), message: message.into() }
    }

    /// Creates segment `id` with its header, durably.
    fn new_segment(&mut self, id: u32) -> std::io::Result<()> {
        let path = self.dir.join(segment_name(id));
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        file.write_all(&MAGIC)?;
        file.sync_all()?;
        sync_parent(&path)?;
        // The segment before this one is appended to no more.
        if let Some(previous) = self.segments.values_mut().next_back() {
            previous.file = None;
        }
        self.segments.insert(id, Segment { file: Some(file), len: MAGIC.len() as u64, live: 0 });
        Ok(())
    }

    /// Replays segment `id` into the index; in the newest segment (`last`)
    /// a torn final record is cut off.
    fn replay(&mut self, id: u32, last: bool) -> Result<(), StoreError> {
        let path = self.dir.join(segment_name(id));
        let io = |e: std::io::Error| io_error(&path, e);
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if last && len < MAGIC.len() as u64 {
            // Created, but its header never fully reached the disk: empty.
            drop(file);
            return self.new_segment(id).map_err(io);
        }
        let mut bytes = Vec::new();
        (&file).read_to_end(&mut bytes).map_err(io)?;
        let (end, ops) = self.read_records(&bytes, id, last)?;
        drop(bytes);
        if end < len {
            // The tail was being appended when the process stopped: never
            // acknowledged, so it goes.
            file.set_len(end).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        self.segments.insert(id, Segment { file: last.then_some(file), len: end, live: 0 });
        for (table, key, loc) in ops {
            set(&mut self.index, &mut self.segments, table, &key, loc);
        }
        Ok(())
    }

    /// Segment `id`'s ops in order, and where its valid records end.
    fn read_records(&self, bytes: &[u8], id: u32, last: bool) -> Result<ReadRecords, StoreError> {
        if bytes.get(..MAGIC.len()) != Some(&MAGIC[..]) {
            return Err(self.unreadable(id, "not a bluetick log segment (wrong or missing header)"));
        }
        let (records, end, tail) = records(bytes);
        match tail {
            Tail::Clean => {}
            Tail::Torn(_) if last => {}
            Tail::Torn(what) => {
                return Err(self.unreadable(id, format!("{what} at byte {end} of a segment that is not the newest")))
            }
            Tail::Damaged => {
                return Err(self.unreadable(
                    id,
                    format!("record at byte {end} fails its checksum and is not the last one: the log is damaged"),
                ))
            }
        }
        let mut ops: Vec<(Table, Vec<u8>, Option<Loc>)> = Vec::new();
        for (base, payload) in records {
            let decoded = decode_ops(payload).map_err(|e| {
                self.unreadable(id, format!("record at byte {} does not parse: {e}", base - RECORD_HEADER as usize))
            })?;
            for (table, key, value) in decoded {
                let loc = value.map(|(start, len)| Loc { seg: id, offset: (base + start) as u64, len });
                ops.push((table, key.to_vec(), loc));
            }
        }
        Ok((end as u64, ops))
    }

    fn read_at(&self, loc: Loc) -> Result<Vec<u8>, StoreError> {
        let mut opened = BTreeMap::new();
        self.read_via(&mut opened, loc)
    }

    /// Reads the value at `loc` through segment `loc.seg`'s open file, or
    /// one opened now and kept in `opened` for the caller's next reads.
    fn read_via(&self, opened: &mut BTreeMap<u32, File>, loc: Loc) -> Result<Vec<u8>, StoreError> {
        let path = self.dir.join(segment_name(loc.seg));
        let seg = self.segments.get(&loc.seg).ok_or_else(|| StoreError::Corrupt {
            table: Table::Meta,
            detail: format!("index points into missing segment {}", loc.seg),
        })?;
        let io = |e: std::io::Error| io_error(&path, e);
        let mut f = match &seg.file {
            Some(f) => f,
            None => match opened.entry(loc.seg) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(File::open(&path).map_err(io)?),
            },
        };
        let mut buf = vec![0u8; loc.len as usize];
        f.seek(SeekFrom::Start(loc.offset)).map_err(io)?;
        f.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    }

    /// Segment files open now (the newest only; for tests).
    pub fn open_segment_files(&self) -> usize {
        self.segments.values().filter(|s| s.file.is_some()).count()
    }

    /// Bytes in all segments, headers included (for tests and reports).
    pub fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.len).sum()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn live_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.live).sum()
    }

    /// Appends `batch` as one record to the newest segment and syncs it.
    fn append(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        let Some((&id, _)) = self.segments.last_key_value() else {
            return Err(io_error(&self.dir, std::io::Error::other("no segment")));
        };
        let path = self.dir.join(segment_name(id));
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
        let Some(seg) = self.segments.get_mut(&id) else {
            return Err(io_error(&path, std::io::Error::other("no segment")));
        };
        let base = seg.len;
        let written = (|| {
            let file = seg.file.as_mut().ok_or_else(|| std::io::Error::other("the newest segment is not open"))?;
            file.seek(SeekFrom::Start(base))?;
            file.write_all(&record)?;
            file.sync_data()
        })();
        let record_len = record.len() as u64;
        self.scratch = record;
        if let Err(e) = written {
            self.poisoned = true;
            return Err(io_error(&path, e));
        }
        seg.len += record_len;
        for (op, at) in batch.ops().iter().zip(value_at) {
            let loc = match (op, at) {
                (BatchOp::Put { value, .. }, Some(at)) => {
                    Some(Loc { seg: id, offset: base + at as u64, len: value.len() as u32 })
                }
                _ => None,
            };
            set(&mut self.index, &mut self.segments, op.table(), op.key(), loc);
        }
        Ok(())
    }

    /// Closes the newest segment if full, then compacts the oldest while
    /// the segments hold too much dead data.
    fn maintain(&mut self) -> Result<(), StoreError> {
        let Some((&newest, seg)) = self.segments.last_key_value() else { return Ok(()) };
        if seg.len >= self.segment_bytes {
            self.new_segment(newest + 1).map_err(|e| io_error(&self.dir, e))?;
        }
        let total = self.disk_bytes();
        if self.segments.len() > 1 && total >= self.compact_min && total > COMPACT_RATIO * self.live_bytes() {
            self.compact_oldest()?;
        }
        Ok(())
    }

    /// Copies the oldest segment's live entries to the newest, then deletes it.
    ///
    /// The segment is read whole and each put checked against the index (is
    /// the key's value still this one?): a cost in the segment's size. An
    /// earlier version walked the whole index for entries in the segment,
    /// which under load was a third of the server's CPU, since compaction
    /// runs on every apply while dead data exceeds the ratio.
    fn compact_oldest(&mut self) -> Result<(), StoreError> {
        let Some((&oldest, seg)) = self.segments.first_key_value() else { return Ok(()) };
        let path = self.dir.join(segment_name(oldest));
        let io = |e: std::io::Error| io_error(&path, e);
        let mut bytes = vec![0u8; usize::try_from(seg.len).map_err(|e| io(std::io::Error::other(e)))?];
        let mut f = File::open(&path).map_err(io)?;
        f.read_exact(&mut bytes).map_err(io)?;
        let mut batch = WriteBatch::new();
        // Every record was checked when the segment was replayed or written.
        for (base, payload) in records(&bytes).0 {
            let ops = decode_ops(payload).map_err(|e| self.unreadable(oldest, e))?;
            for (table, key, value) in ops {
                let Some((start, len)) = value else { continue };
                let loc = Loc { seg: oldest, offset: (base + start) as u64, len };
                if self.index[table_index(table)].get(key) == Some(&loc) {
                    let value = payload.get(start..start + len as usize).unwrap_or_default();
                    batch.put(table, key.to_vec(), value.to_vec());
                }
            }
        }
        drop(bytes);
        if !batch.is_empty() {
            self.append(&batch)?;
        }
        // Its live entries are durable in the newest segment now.
        if let Some(seg) = self.segments.remove(&oldest) {
            drop(seg);
            std::fs::remove_file(&path).map_err(io)?;
            sync_parent(&path).map_err(io)?;
        }
        Ok(())
    }
}

/// Makes a file's creation, renaming or removal durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
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
                path: self.dir.clone(),
                message: "an earlier write failed; reopen the store to recover".into(),
            });
        }
        self.append(&batch)?;
        // The batch is durable whatever happens next; a failure to rotate or
        // compact leaves every segment whole, and the next apply tries again.
        let _ = self.maintain();
        Ok(())
    }

    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        let mut keys: Vec<(&Vec<u8>, &Loc)> = self.index[table_index(table)].iter().collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
        // Each older segment is opened once for the whole scan.
        let mut opened = BTreeMap::new();
        keys.into_iter().map(|(k, loc)| Ok((k.clone(), self.read_via(&mut opened, *loc)?))).collect()
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
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use proptest::prelude::*;

    /// Small segments and an early compaction threshold, so tests rotate
    /// and compact without writing megabytes.
    fn open_small(dir: &Path) -> LogStore {
        LogStore::open_sized(dir, 2048, 4096).unwrap()
    }

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

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).and_then(segment_id).is_some())
            .collect();
        files.sort();
        files
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever the batches, the log holds what an in-memory store
        /// holds, before and after reopening, across rotations and
        /// compactions.
        #[test]
        fn a_log_holds_what_memory_holds_across_reopens(
            batches in prop::collection::vec(prop::collection::vec((any::<bool>(), 0u8..8, any::<u8>(), any::<u16>()), 0..12), 1..60),
            reopen_every in 1usize..10,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s.log");
            let mut log = open_small(&path);
            let mut mem = MemoryStore::new();
            for (i, ops) in batches.iter().enumerate() {
                let b = batch(ops);
                mem.apply(b.clone()).unwrap();
                log.apply(b).unwrap();
                if i % reopen_every == 0 {
                    drop(log);
                    log = open_small(&path);
                }
                prop_assert_eq!(all(&log), all(&mem));
                prop_assert_eq!(log.stats().unwrap(), mem.stats().unwrap());
                // Only the segment being appended to holds a file open.
                prop_assert_eq!(log.open_segment_files(), 1);
            }
            prop_assert_eq!(segment_files(&path).len(), log.segment_count());
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
        let good = log.disk_bytes();
        put(&mut log, b"c", b"third, torn");
        drop(log);
        let [segment] = segment_files(&path).try_into().unwrap();
        let full = std::fs::read(&segment).unwrap();
        // Every cut inside the last record: its header, its payload.
        for cut in good + 1..full.len() as u64 {
            std::fs::write(&segment, &full[..cut as usize]).unwrap();
            let log = LogStore::open(&path).unwrap();
            assert_eq!(log.get(Table::Mailbox, b"b").unwrap().as_deref(), Some(&b"second"[..]), "cut at {cut}");
            assert_eq!(log.get(Table::Mailbox, b"c").unwrap(), None, "cut at {cut}");
            assert_eq!(std::fs::metadata(&segment).unwrap().len(), good, "the torn tail is removed");
        }
        // A complete last record whose bytes were damaged is torn too.
        let mut damaged = full.clone();
        *damaged.last_mut().unwrap() ^= 0xff;
        std::fs::write(&segment, &damaged).unwrap();
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
    fn damage_that_a_crash_cannot_explain_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        let mut log = LogStore::open(&path).unwrap();
        put(&mut log, b"a", b"first");
        put(&mut log, b"b", b"second");
        drop(log);
        let [segment] = segment_files(&path).try_into().unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        // The first record's value: acknowledged data, not a torn append.
        let at = bytes.windows(5).position(|w| w == b"first").unwrap();
        bytes[at] ^= 1;
        std::fs::write(&segment, &bytes).unwrap();
        match LogStore::open(&path) {
            Err(StoreError::Unreadable { message, .. }) => assert!(message.contains("checksum"), "{message}"),
            other => panic!("expected Unreadable, got {other:?}"),
        }
        // Nothing was cut: the file is as it was.
        assert_eq!(std::fs::read(&segment).unwrap(), bytes);

        // A torn end is a crash only in the newest segment.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        let mut log = open_small(&path);
        while log.segment_count() < 2 {
            put(&mut log, b"k", &[7u8; 500]);
        }
        drop(log);
        let older = segment_files(&path)[0].clone();
        let len = std::fs::metadata(&older).unwrap().len();
        let file = OpenOptions::new().write(true).open(&older).unwrap();
        file.set_len(len - 3).unwrap();
        assert!(matches!(LogStore::open_sized(&path, 2048, 4096), Err(StoreError::Unreadable { .. })));
    }

    #[test]
    fn what_is_not_a_log_is_refused_and_a_second_handle_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file-in-the-way");
        std::fs::write(&path, b"SQLite format 3\0 and more").unwrap();
        assert!(matches!(LogStore::open(&path), Err(StoreError::Unreadable { .. })));
        let path = dir.path().join("bad-header");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join(segment_name(1)), b"NOTALOG!rest").unwrap();
        assert!(matches!(LogStore::open(&path), Err(StoreError::Unreadable { .. })));
        let path = dir.path().join("s.log");
        let _first = LogStore::open(&path).unwrap();
        assert!(matches!(LogStore::open(&path), Err(StoreError::Locked { .. })));
        let missing = dir.path().join("no-such-dir").join("s.log");
        assert!(matches!(LogStore::open(&missing), Err(StoreError::Open { .. })));
    }

    #[test]
    fn dead_segments_are_compacted_away_and_live_data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        let mut log = open_small(&path);
        let mut b = WriteBatch::new();
        b.put(Table::Keys, b"kept".to_vec(), b"untouched".to_vec());
        log.apply(b).unwrap();
        for i in 0..2_000u32 {
            let mut b = WriteBatch::new();
            b.put(Table::Mailbox, b"hot".to_vec(), vec![i as u8; 300]).delete(Table::Bodies, i.to_be_bytes().to_vec());
            // A long-lived row every tenth batch, as accepted ids are.
            if i % 10 == 0 {
                b.put(Table::Meta, i.to_be_bytes().to_vec(), vec![1u8; 20]);
            }
            log.apply(b).unwrap();
        }
        // 0.6 MB written; what is live is about 7 KB.
        assert!(log.disk_bytes() < 32 << 10, "{} bytes on disk", log.disk_bytes());
        assert_eq!(segment_files(&path).len(), log.segment_count());
        assert!(log.segment_count() <= 16, "{} segments", log.segment_count());
        drop(log);
        let log = open_small(&path);
        assert_eq!(log.get(Table::Mailbox, b"hot").unwrap(), Some(vec![(1_999u32) as u8; 300]));
        assert_eq!(log.get(Table::Keys, b"kept").unwrap().as_deref(), Some(&b"untouched"[..]));
        assert_eq!(log.stats().unwrap()[&Table::Meta].entries, 200);
        assert_eq!(log.stats().unwrap()[&Table::Mailbox].entries, 1);
    }
}
