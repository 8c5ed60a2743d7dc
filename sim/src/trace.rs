//! The trace's consumer: while the simulation runs, a second thread writes
//! each [`TraceEvent`] as a line of `trace.jsonl`, hashes the lines into
//! the run's `trace_hash`, and keeps the app deliveries that latencies are
//! measured from.
//!
//! The runner takes the events from the driver as they come
//! ([`Driver::drain_trace`](crate::driver::Driver::drain_trace)) instead of
//! leaving millions of them in the driver until the end: the events (two
//! heap strings each) are freed as they are written, which took the peak
//! memory of a 10-second direct run from 919 to 670 MB, and the serialising
//! and hashing move off the simulating thread.
//! One consumer takes the batches in order, so the bytes, and so the hash,
//! are exactly those a single thread writes.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use bluetick_core::ids::UserId;
use sha2::{Digest, Sha256};

use crate::driver::TraceEvent;

/// Events sent to the consumer at a time: large enough that the channel's
/// cost per event is nothing, small enough that little waits in memory.
const BATCH: usize = 8192;

/// Batches that may wait for the consumer before the simulation blocks.
const BATCHES_QUEUED_MAX: usize = 16;

/// One app delivery of a message or attachment (`app` lines with
/// `event=message|media`), as the trace names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppDelivery {
    /// Simulated time of the delivery, ms since the simulation epoch.
    pub at_ms: u64,
    /// The recipient.
    pub user: UserId,
    /// The message id as the trace prints it (a short prefix).
    pub id: String,
}

/// What the whole trace came to.
#[derive(Debug, Default)]
pub struct TraceDigest {
    /// `trace.jsonl`: one JSON object per line.
    pub jsonl: Vec<u8>,
    /// Hex SHA-256 of `jsonl`.
    pub hash: String,
    /// Lines in `jsonl`.
    pub lines: u64,
    /// Every app delivery, in trace order.
    pub deliveries: Vec<AppDelivery>,
}

/// The consuming side's state; also used on the runner's own thread when a
/// second one cannot be started.
#[derive(Default)]
struct Consumer {
    jsonl: Vec<u8>,
    hasher: Sha256,
    lines: u64,
    deliveries: Vec<AppDelivery>,
}

impl Consumer {
    fn take(&mut self, batch: Vec<TraceEvent>) {
        let start = self.jsonl.len();
        for ev in &batch {
            // Writing a `TraceEvent` into a vector cannot fail, so no line
            // is left half-written.
            if serde_json::to_writer(&mut self.jsonl, ev).is_ok() {
                self.jsonl.push(b'\n');
                self.lines += 1;
            }
            if let Some(d) = app_delivery(ev) {
                self.deliveries.push(d);
            }
        }
        // Hash what this batch added while it is still in cache.
        if let Some(fresh) = self.jsonl.get(start..) {
            self.hasher.update(fresh);
        }
    }

    fn finish(self) -> TraceDigest {
        TraceDigest {
            hash: hex::encode(self.hasher.finalize()),
            jsonl: self.jsonl,
            lines: self.lines,
            deliveries: self.deliveries,
        }
    }
}

/// The value of `key=` in a trace detail line.
pub fn field<'a>(detail: &'a str, key: &str) -> Option<&'a str> {
    detail.split(' ').find_map(|tok| tok.strip_prefix(key)?.strip_prefix('='))
}

fn app_delivery(ev: &TraceEvent) -> Option<AppDelivery> {
    if ev.event != "app" {
        return None;
    }
    let kind = field(&ev.detail, "event")?;
    if kind != "message" && kind != "media" {
        return None;
    }
    let user = UserId::new(field(&ev.detail, "user")?).ok()?;
    let id = field(&ev.detail, "id")?.to_owned();
    Some(AppDelivery { at_ms: ev.at_ms, user, id })
}

/// Where the runner puts trace events; [`TraceSink::finish`] returns the
/// digest once every event is in.
pub struct TraceSink {
    pending: Vec<TraceEvent>,
    mode: Mode,
}

enum Mode {
    Background { tx: SyncSender<Vec<TraceEvent>>, worker: JoinHandle<TraceDigest> },
    Inline(Box<Consumer>),
}

impl TraceSink {
    /// A sink consuming on a second thread (on this one if none can be
    /// started).
    pub fn background() -> Self {
        let (tx, rx) = sync_channel::<Vec<TraceEvent>>(BATCHES_QUEUED_MAX);
        let mode = match std::thread::Builder::new().name("trace".into()).spawn(move || consume(rx)) {
            Ok(worker) => Mode::Background { tx, worker },
            Err(_) => Mode::Inline(Box::default()),
        };
        TraceSink { pending: Vec::with_capacity(BATCH), mode }
    }

    /// A sink consuming on the caller's thread.
    pub fn inline() -> Self {
        TraceSink { pending: Vec::new(), mode: Mode::Inline(Box::default()) }
    }

    /// The buffer the driver appends its new events to; call
    /// [`TraceSink::flush_if_full`] after.
    pub fn buffer(&mut self) -> &mut Vec<TraceEvent> {
        &mut self.pending
    }

    /// Hands the buffered events on once there are a batch of them.
    pub fn flush_if_full(&mut self) {
        if self.pending.len() >= BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH));
        match &mut self.mode {
            Mode::Background { tx, .. } => {
                // A send fails only if the consumer is gone (it panicked);
                // `finish` then reports that, so nothing is lost silently.
                let _ = tx.send(batch);
            }
            Mode::Inline(c) => c.take(batch),
        }
    }

    /// Every event handed in, written and hashed. `None` if the consumer
    /// thread died (a bug: a report without its trace would be misleading).
    pub fn finish(mut self) -> Option<TraceDigest> {
        self.flush();
        match self.mode {
            Mode::Background { tx, worker } => {
                drop(tx);
                worker.join().ok()
            }
            Mode::Inline(c) => Some(c.finish()),
        }
    }
}

fn consume(rx: Receiver<Vec<TraceEvent>>) -> TraceDigest {
    let mut c = Consumer::default();
    while let Ok(batch) = rx.recv() {
        c.take(batch);
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at_ms: u64, event: &str, detail: &str) -> TraceEvent {
        TraceEvent { at_ms, event: event.to_owned(), detail: detail.to_owned() }
    }

    fn events(n: u64) -> Vec<TraceEvent> {
        (0..n)
            .map(|i| match i % 3 {
                0 => ev(i, "frame", "user=u1 dir=to-server kind=send size=99 fate=delivered"),
                1 => ev(i, "app", &format!("user=u2 event=message from=u1 group=None id=m:{i:08x} len=64")),
                _ => ev(i, "app", "user=u1 event=status id=m:00000001 peer=u2 status=Delivered"),
            })
            .collect()
    }

    fn by_one_thread(all: &[TraceEvent]) -> (Vec<u8>, String) {
        let mut jsonl = Vec::new();
        for e in all {
            serde_json::to_writer(&mut jsonl, e).unwrap();
            jsonl.push(b'\n');
        }
        let hash = hex::encode(Sha256::digest(&jsonl));
        (jsonl, hash)
    }

    #[test]
    fn the_digest_is_what_one_thread_writing_it_all_at_the_end_gets() {
        // More than a batch, handed in unevenly, as the runner does.
        let all = events(3 * BATCH as u64 + 17);
        let (jsonl, hash) = by_one_thread(&all);
        for mut sink in [TraceSink::background(), TraceSink::inline()] {
            for chunk in all.chunks(1000) {
                sink.buffer().extend_from_slice(chunk);
                sink.flush_if_full();
            }
            let d = sink.finish().unwrap();
            assert_eq!(d.jsonl, jsonl);
            assert_eq!(d.hash, hash);
            assert_eq!(d.lines, all.len() as u64);
            assert_eq!(d.deliveries.len(), all.iter().filter(|e| e.detail.contains("event=message")).count());
            let first = AppDelivery { at_ms: 1, user: UserId::new("u2").unwrap(), id: "m:00000001".into() };
            assert_eq!(d.deliveries[0], first);
        }
    }

    #[test]
    fn an_empty_trace_hashes_as_empty_bytes() {
        let d = TraceSink::background().finish().unwrap();
        assert_eq!((d.lines, d.jsonl.len()), (0, 0));
        assert_eq!(d.hash, hex::encode(Sha256::digest(b"")));
    }

    #[test]
    fn trace_fields_are_found_by_key() {
        let d = "user=bob event=message from=alice group=None id=M0a1b2c3d len=64";
        assert_eq!(field(d, "user"), Some("bob"));
        assert_eq!(field(d, "id"), Some("M0a1b2c3d"));
        assert_eq!(field(d, "event"), Some("message"));
        assert_eq!(field(d, "nope"), None);
    }
}
