//! A device's saved state on disk: a full save plus a log of the changes
//! saved after it ([`Client::save_incremental`](bluetick_core::client::Client::save_incremental)).
//!
//! - `<path>` holds the last full save, replaced atomically
//!   ([`save_atomically`]), as before
//!   incremental saves existed.
//! - `<path>.log` starts with the first 8 bytes of SHA-256 of that full save,
//!   then holds records `[u32 LE length][first 8 bytes of SHA-256 of the
//!   body][body]`, each appended and synced before the driver sends anything
//!   the change it holds led to.
//!
//! A crash can leave a torn last record: its length or digest does not
//! match, and it and anything after it are ignored — that save never
//! returned, so nothing it led to left the device. A crash between writing a
//! new full save and a new log leaves the old log, whose header names the old
//! full save: it is ignored too, as the new full save already holds it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bluetick_core::client::{SavedChanges, SavedClient};
use sha2::{Digest, Sha256};

use crate::client::save_atomically;

const DIGEST_LEN: usize = 8;

fn digest(bytes: &[u8]) -> [u8; DIGEST_LEN] {
    let full = Sha256::digest(bytes);
    let mut out = [0; DIGEST_LEN];
    out.copy_from_slice(&full[..DIGEST_LEN]);
    out
}

/// The log beside a save file.
pub fn log_path(path: &Path) -> PathBuf {
    let mut log = path.as_os_str().to_owned();
    log.push(".log");
    PathBuf::from(log)
}

/// Writes a device's saves: full saves and the changes after them.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    /// Whether a full save was written through this `StateFile` (its log is
    /// then ours to append to). The log is opened for each append rather
    /// than held: a load generator runs 10,000 clients in one process, and a
    /// descriptor each on top of their sockets ran out of them.
    full_written: bool,
}

impl StateFile {
    /// Saves to `path` (and `path.log`). The first save must be full.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateFile { path: path.into(), full_written: false }
    }

    /// Replaces everything with a full save, and starts an empty log after it.
    ///
    /// # Errors
    /// The first IO error; the previous full save and log then still hold.
    pub fn write_full(&mut self, saved: &SavedClient) -> io::Result<()> {
        self.full_written = false;
        save_atomically(&self.path, saved.as_bytes())?;
        save_atomically(&log_path(&self.path), &digest(saved.as_bytes()))?;
        self.full_written = true;
        Ok(())
    }

    /// Appends changes after the last full save, durably.
    ///
    /// # Errors
    /// The first IO error, or [`io::ErrorKind::InvalidInput`] if no full
    /// save was written through this `StateFile` yet.
    pub fn append(&mut self, changes: &SavedChanges) -> io::Result<()> {
        if !self.full_written {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "changes saved before a full save"));
        }
        let body = changes.as_bytes();
        let len =
            u32::try_from(body.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        let mut record = Vec::with_capacity(4 + DIGEST_LEN + body.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&digest(body));
        record.extend_from_slice(body);
        let mut log = OpenOptions::new().append(true).open(log_path(&self.path))?;
        log.write_all(&record)?;
        log.sync_data()
    }
}

/// Reads the full save at `path` and the changes logged after it (a torn or
/// stale log contributes what it validly holds after that save: see the
/// module docs). `Ok(None)` if there is no save.
///
/// # Errors
/// Any IO error other than a missing file.
pub fn read_state(path: &Path) -> io::Result<Option<(SavedClient, Vec<SavedChanges>)>> {
    let full = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut log = Vec::new();
    match File::open(log_path(path)) {
        Ok(mut f) => {
            f.read_to_end(&mut log)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut changes = Vec::new();
    if log.len() >= DIGEST_LEN && log[..DIGEST_LEN] == digest(&full) {
        let mut rest = &log[DIGEST_LEN..];
        while rest.len() >= 4 + DIGEST_LEN {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let Some(body) = rest.get(4 + DIGEST_LEN..4 + DIGEST_LEN + len) else { break };
            if rest[4..4 + DIGEST_LEN] != digest(body) {
                break;
            }
            changes.push(SavedChanges::from_bytes(body.to_vec()));
            rest = &rest[4 + DIGEST_LEN + len..];
        }
    }
    Ok(Some((SavedClient::from_bytes(full), changes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(b: &[u8]) -> SavedChanges {
        SavedChanges::from_bytes(b.to_vec())
    }

    #[test]
    fn full_saves_and_appended_changes_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.bin");
        assert!(read_state(&path).unwrap().is_none());
        let mut file = StateFile::new(&path);
        assert_eq!(file.append(&changes(b"early")).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        file.write_full(&SavedClient::from_bytes(b"full-1".to_vec())).unwrap();
        file.append(&changes(b"a")).unwrap();
        file.append(&changes(b"")).unwrap();
        file.append(&changes(b"ccc")).unwrap();
        let (full, log) = read_state(&path).unwrap().unwrap();
        assert_eq!(full.as_bytes(), b"full-1");
        assert_eq!(log, vec![changes(b"a"), changes(b""), changes(b"ccc")]);

        file.write_full(&SavedClient::from_bytes(b"full-2".to_vec())).unwrap();
        file.append(&changes(b"d")).unwrap();
        let (full, log) = read_state(&path).unwrap().unwrap();
        assert_eq!((full.as_bytes(), log), (&b"full-2"[..], vec![changes(b"d")]));
    }

    #[test]
    fn a_torn_or_corrupt_record_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.bin");
        let mut file = StateFile::new(&path);
        file.write_full(&SavedClient::from_bytes(b"full".to_vec())).unwrap();
        file.append(&changes(b"one")).unwrap();
        file.append(&changes(b"two")).unwrap();
        let log = std::fs::read(log_path(&path)).unwrap();
        // Every cut short of the end keeps exactly the records wholly written.
        for cut in DIGEST_LEN..log.len() {
            std::fs::write(log_path(&path), &log[..cut]).unwrap();
            let (_, got) = read_state(&path).unwrap().unwrap();
            let whole = if cut >= log.len() - (4 + DIGEST_LEN + 3) { 1 } else { 0 };
            assert_eq!(got.len(), whole, "cut at {cut}");
        }
        // A flipped byte in the second record's body drops it, not the first.
        let mut bad = log.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(log_path(&path), &bad).unwrap();
        assert_eq!(read_state(&path).unwrap().unwrap().1, vec![changes(b"one")]);
    }

    #[test]
    fn a_full_save_without_a_log_reads_as_itself() {
        // The first full save is renamed into place before its log is: a
        // crash between leaves no log at all.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.bin");
        save_atomically(&path, b"first").unwrap();
        let (full, log) = read_state(&path).unwrap().unwrap();
        assert_eq!((full.as_bytes(), log.len()), (&b"first"[..], 0));
    }

    #[cfg(unix)]
    #[test]
    fn a_save_or_log_that_cannot_be_read_is_an_error_not_a_fresh_start() {
        // Reading "no save" where there is one would make a new identity.
        // A symlink to itself fails to open with something other than
        // "not found" (even for root, unlike permissions).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.bin");
        std::os::unix::fs::symlink(&path, &path).unwrap();
        assert!(read_state(&path).is_err(), "unreadable save");
        std::fs::remove_file(&path).unwrap();
        save_atomically(&path, b"full").unwrap();
        let log = log_path(&path);
        std::os::unix::fs::symlink(&log, &log).unwrap();
        assert!(read_state(&path).is_err(), "unreadable log");
    }

    #[test]
    fn a_log_left_from_an_older_full_save_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.bin");
        let mut file = StateFile::new(&path);
        file.write_full(&SavedClient::from_bytes(b"old".to_vec())).unwrap();
        file.append(&changes(b"old change")).unwrap();
        // A crash after the new full save, before its log replaced the old one.
        save_atomically(&path, b"new").unwrap();
        let (full, log) = read_state(&path).unwrap().unwrap();
        assert_eq!(full.as_bytes(), b"new");
        assert!(log.is_empty());
    }
}
