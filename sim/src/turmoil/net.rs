//! The seams between bluetick-net's drivers and turmoil: simulated TCP
//! behind [`Acceptor`]/[`Connector`], simulated time behind [`Clock`], and a
//! server store that outlives the server host.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bluetick_core::store::{BatchOp, MemoryStore, Row, Store, StoreError, Table, TableStats, WriteBatch};
use bluetick_core::world::EPOCH_MS;
use bluetick_net::clock::Clock;
use bluetick_net::transport::{Acceptor, Connector};

use super::record::{Record, SharedLog};

/// Locks `m`, taking the data even if a panic poisoned it: everything here
/// runs on one thread, and a poisoned record is still the best record.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Simulated time now, ms since the Unix epoch (the simulation starts at
/// [`EPOCH_MS`]), as the currently running host sees it. Outside a host (no
/// simulation running on this thread) it reads as the start of the run.
pub fn sim_now_ms() -> u64 {
    let elapsed = ::turmoil::sim_elapsed().unwrap_or_default();
    EPOCH_MS.saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

/// The injected clock of a simulated host: simulated time plus an offset the
/// scenario can change while the run goes on (clock skew).
#[derive(Debug, Default)]
pub struct SimClock {
    offset_ms: AtomicI64,
}

impl SimClock {
    /// A clock with no offset.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how far this host's clock is ahead of true simulated time
    /// (negative: behind).
    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        sim_now_ms().saturating_add_signed(self.offset_ms.load(Ordering::Relaxed))
    }
}

/// A turmoil listener as the server's [`Acceptor`].
pub struct SimListener(pub ::turmoil::net::TcpListener);

impl std::fmt::Debug for SimListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SimListener").field(&self.0.local_addr().ok()).finish()
    }
}

impl Acceptor for SimListener {
    type Stream = ::turmoil::net::TcpStream;

    async fn accept(&self) -> std::io::Result<(Self::Stream, String)> {
        let (stream, peer) = self.0.accept().await?;
        Ok((stream, peer.to_string()))
    }
}

/// Opens simulated TCP connections for the client driver.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimConnector;

impl Connector for SimConnector {
    type Stream = ::turmoil::net::TcpStream;

    async fn connect(&self, host: &str, port: u16) -> std::io::Result<Self::Stream> {
        ::turmoil::net::TcpStream::connect((host, port)).await
    }
}

/// The server's durable store, kept outside the server host so that a crash
/// of the host (which drops everything the host owns) leaves it intact; the
/// restarted server recovers from it. Every value written is also copied to
/// the run's log when `log` is set, so the oracle can look for plaintext in
/// each write rather than only in what is left at the end.
#[derive(Debug, Clone)]
pub struct SharedStore {
    inner: Arc<Mutex<MemoryStore>>,
    log: Option<SharedLog>,
}

impl SharedStore {
    pub(crate) fn new(inner: Arc<Mutex<MemoryStore>>, log: Option<SharedLog>) -> Self {
        SharedStore { inner, log }
    }
}

impl Store for SharedStore {
    fn apply(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        let written: Vec<(Table, Vec<u8>, Vec<u8>)> = match &self.log {
            Some(_) => batch
                .ops()
                .iter()
                .filter_map(|op| match op {
                    BatchOp::Put { table, key, value } => Some((*table, key.clone(), value.clone())),
                    BatchOp::Delete { .. } => None,
                })
                .collect(),
            None => Vec::new(),
        };
        lock(&self.inner).apply(batch)?;
        if let Some(log) = &self.log {
            let at_ms = sim_now_ms();
            let mut log = lock(log);
            for (table, key, value) in written {
                log.push(Record::Written { at_ms, table, key, value });
            }
        }
        Ok(())
    }

    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        lock(&self.inner).scan(table)
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        lock(&self.inner).get(table, key)
    }

    fn stats(&self) -> Result<std::collections::BTreeMap<Table, TableStats>, StoreError> {
        lock(&self.inner).stats()
    }
}
