//! The target-independent half of a run: the plan, the counters every task
//! shares, the pacing of senders, the sender loop and the phase waits.
//!
//! A run goes through these phases (the targets' `run` functions call them
//! in order):
//! 1. connect every receiver and sender; each sender sends one warm-up
//!    message and [`wait_warm`] waits until all of them arrived (sessions
//!    open, subscriptions live, the path proven);
//! 2. receivers chosen by `--offline-ratio` go offline;
//! 3. the send phase ([`Phase::Send`]): each sender paces itself
//!    ([`Pacer`]) until `--duration` passes or `--messages` were sent;
//! 4. [`wait_settled`]: every message to an online receiver arrives;
//! 5. [`wait_acked`]: the server confirmed every message to an offline
//!    receiver; then they come back and [`wait_drained`] times the drain;
//! 6. [`Phase::Stop`]: every task ends.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::payload::{Kind, Stamp};
use crate::stats::{Arrival, Book};
use crate::Target;

/// Errors kept for the report; later ones are only counted, so a failing
/// run cannot grow memory with repeated messages.
pub const ERRORS_KEPT_MAX: usize = 8;

/// How long every warm-up message gets to arrive: covers session setup (a
/// bundle fetch and X3DH per pair) for thousands of pairs on a loaded
/// machine.
pub const WARM_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a phase wait re-reads the counters: short against the phases
/// (seconds), long against a counter update.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How long a sender whose client queue is full waits (handling its events)
/// before it offers the same message again.
const FULL_RETRY: Duration = Duration::from_millis(1);

/// Microseconds on the run's monotonic clock (0 = first reading). Sender and
/// receiver share the process, so one clock stamps both ends.
pub fn now_us() -> u64 {
    us_at(Instant::now())
}

/// [`now_us`] of a given instant.
pub fn us_at(at: Instant) -> u64 {
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    let at = at.into_std();
    let base = *BASE.get_or_init(|| at);
    u64::try_from(at.saturating_duration_since(base).as_micros()).unwrap_or(u64::MAX)
}

/// How senders pace themselves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loop {
    /// Each pair keeps this many messages in flight: sent and not yet
    /// delivered (online receiver) or not yet confirmed by the server
    /// (offline receiver). Measures peak throughput.
    Closed {
        /// Messages in flight per pair.
        in_flight: usize,
    },
    /// Messages per second over all pairs, on a fixed schedule; latency is
    /// measured from the scheduled time, so a stalled sender cannot hide
    /// the wait (no coordinated omission).
    Open {
        /// Messages per second, all pairs together.
        rate: f64,
    },
}

/// A validated run description.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Which server.
    pub target: Target,
    /// `ws://host:port/` (bluetick) or `host:port` (MQTT).
    pub server: String,
    /// `host:port` to probe before the run.
    pub addr: String,
    /// Sender→receiver pairs (or connections, when idle).
    pub pairs: usize,
    /// Pairs `0..offline_pairs` have their receiver offline while sending.
    pub offline_pairs: usize,
    /// Pacing.
    pub pacing: Loop,
    /// Bytes per message.
    pub size: usize,
    /// Send phase length.
    pub duration: Duration,
    /// Measured messages to send at most, all pairs together.
    pub messages_max: Option<u64>,
    /// Root of every client seed.
    pub seed: u64,
    /// Server process to read memory from.
    pub server_pid: Option<u32>,
    /// Longest wait for deliveries after the send phase and for the drain.
    pub drain_timeout: Duration,
    /// Only connect and hold, no traffic.
    pub idle: bool,
    /// Distinguishes this run's accounts and topics from earlier runs'
    /// against the same server.
    pub run_tag: String,
    /// The server's per-connection frame limit; clients pace under it.
    pub server_frames_per_second: u32,
}

impl Plan {
    /// Whether pair `pair` has its receiver offline during the send phase.
    pub fn is_offline(&self, pair: usize) -> bool {
        pair < self.offline_pairs
    }
}

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting and warming up.
    WarmUp,
    /// Sending until `end`.
    Send {
        /// When the send phase ends.
        end: Instant,
    },
    /// Everything stops.
    Stop,
}

/// One pair's shared state.
#[derive(Debug)]
pub struct PairState {
    /// Whether the receiver is offline during the send phase.
    pub offline: bool,
    /// Closed loop: permits to send.
    pub window: Semaphore,
    /// Measured messages sent.
    pub sent: AtomicU64,
    /// Measured messages the server confirmed.
    pub acked: AtomicU64,
    /// Whether the warm-up message arrived.
    warm: AtomicBool,
    /// Wakes whoever waits for `warm`.
    warm_notify: Notify,
}

/// Counters and records every task updates.
#[derive(Debug)]
pub struct Shared {
    /// What is being run.
    pub plan: Plan,
    /// One per pair.
    pub pairs: Vec<PairState>,
    book: Mutex<Book>,
    /// Measured messages sent, all pairs.
    pub sent: AtomicU64,
    /// First arrivals on online pairs.
    pub delivered_online: AtomicU64,
    /// First arrivals on offline pairs.
    pub delivered_offline: AtomicU64,
    /// When the latest offline-pair message arrived ([`now_us`]).
    pub last_offline_us: AtomicU64,
    /// Delivery receipts that reached senders (bluetick ✓✓).
    pub receipts: AtomicU64,
    /// Connections that dropped and came back during the run.
    pub reconnects: AtomicU64,
    budget: AtomicU64,
    errors: Mutex<(Vec<String>, u64)>,
}

/// Locks, taking over a lock whose holder panicked: the counters stay usable
/// for the report.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Fresh counters for `plan`.
    pub fn new(plan: Plan) -> Shared {
        let permits = match plan.pacing {
            Loop::Closed { in_flight } => in_flight.min(Semaphore::MAX_PERMITS),
            Loop::Open { .. } => 0,
        };
        let pairs = (0..plan.pairs)
            .map(|p| PairState {
                offline: plan.is_offline(p),
                window: Semaphore::new(permits),
                sent: AtomicU64::new(0),
                acked: AtomicU64::new(0),
                warm: AtomicBool::new(false),
                warm_notify: Notify::new(),
            })
            .collect();
        Shared {
            book: Mutex::new(Book::new(plan.pairs)),
            budget: AtomicU64::new(plan.messages_max.unwrap_or(u64::MAX)),
            plan,
            pairs,
            sent: AtomicU64::new(0),
            delivered_online: AtomicU64::new(0),
            delivered_offline: AtomicU64::new(0),
            last_offline_us: AtomicU64::new(0),
            receipts: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            errors: Mutex::new((Vec::new(), 0)),
        }
    }

    /// A message body arrived at a receiver's app.
    pub fn on_message(&self, body: &[u8]) {
        let now = now_us();
        let Some(stamp) = Stamp::decode(body) else {
            lock(&self.book).foreign += 1;
            return;
        };
        let Some(pair) = usize::try_from(stamp.pair).ok().and_then(|p| self.pairs.get(p)) else {
            lock(&self.book).foreign += 1;
            return;
        };
        if stamp.kind == Kind::WarmUp {
            pair.warm.store(true, Ordering::Release);
            pair.warm_notify.notify_waiters();
            return;
        }
        let latency = (!pair.offline).then(|| now.saturating_sub(stamp.sent_us));
        let arrival = lock(&self.book).record(stamp.pair, stamp.seq, latency);
        if matches!(arrival, Arrival::InOrder | Arrival::Reordered) {
            if pair.offline {
                self.delivered_offline.fetch_add(1, Ordering::Relaxed);
                self.last_offline_us.fetch_max(now, Ordering::Relaxed);
            } else {
                self.delivered_online.fetch_add(1, Ordering::Relaxed);
                if matches!(self.plan.pacing, Loop::Closed { .. }) {
                    pair.window.add_permits(1);
                }
            }
        }
    }

    /// The server confirmed one measured message of `pair`.
    pub fn on_server_ack(&self, pair: usize) {
        let Some(p) = self.pairs.get(pair) else { return };
        p.acked.fetch_add(1, Ordering::Relaxed);
        if p.offline && matches!(self.plan.pacing, Loop::Closed { .. }) {
            p.window.add_permits(1);
        }
    }

    /// Records an error for the report.
    pub fn error(&self, what: impl Into<String>) {
        let mut errors = lock(&self.errors);
        errors.1 += 1;
        if errors.0.len() < ERRORS_KEPT_MAX {
            errors.0.push(what.into());
        }
    }

    /// The errors kept, and how many there were in all.
    pub fn errors(&self) -> (Vec<String>, u64) {
        lock(&self.errors).clone()
    }

    /// A copy of the book.
    pub fn book(&self) -> Book {
        lock(&self.book).clone()
    }

    /// Takes one message from the `--messages` budget; false once spent.
    fn take_budget(&self) -> bool {
        self.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1)).is_ok()
    }

    /// Messages sent to (online or offline) receivers.
    pub fn sent_where(&self, offline: bool) -> u64 {
        self.pairs.iter().filter(|p| p.offline == offline).map(|p| p.sent.load(Ordering::Relaxed)).sum()
    }

    /// Messages to offline receivers the server has not confirmed yet.
    fn unacked_offline(&self) -> u64 {
        self.pairs
            .iter()
            .filter(|p| p.offline)
            .map(|p| p.sent.load(Ordering::Relaxed).saturating_sub(p.acked.load(Ordering::Relaxed)))
            .sum()
    }
}

/// Paces one sender.
#[derive(Debug)]
pub enum Pacer {
    /// Send when the pair's window has room.
    Closed,
    /// Send at fixed times.
    Open {
        /// Between two sends of this pair.
        interval: Duration,
        /// The next scheduled send.
        next: Instant,
    },
}

impl Pacer {
    /// The pacer of `pair`, starting at `start`. Open-loop senders are
    /// staggered over one interval so the pairs do not send in lockstep.
    pub fn new(plan: &Plan, pair: usize, start: Instant) -> Pacer {
        match plan.pacing {
            Loop::Closed { .. } => Pacer::Closed,
            Loop::Open { rate } => {
                let per_pair = rate / plan.pairs.max(1) as f64;
                let interval = Duration::from_secs_f64((1.0 / per_pair).clamp(1e-7, 1e6));
                let offset = interval.mul_f64(pair as f64 / plan.pairs.max(1) as f64);
                Pacer::Open { interval, next: start + offset }
            }
        }
    }

    /// Waits for the next send slot and returns its stamp ([`now_us`] for
    /// closed loop, the scheduled time for open loop); `None` once the slot
    /// would fall after `end`. Cancel-safe: a slot is only used up when
    /// this returns.
    pub async fn next(&mut self, pair: &PairState, end: Instant) -> Option<u64> {
        match self {
            Pacer::Closed => {
                // `timeout_at` polls its future before the deadline: without
                // this check a window with room would keep sending after `end`.
                if Instant::now() >= end {
                    return None;
                }
                let permit = tokio::time::timeout_at(end, pair.window.acquire()).await.ok()?.ok()?;
                permit.forget();
                Some(now_us())
            }
            Pacer::Open { interval, next } => {
                if *next >= end {
                    return None;
                }
                tokio::time::sleep_until(*next).await;
                let at = *next;
                *next += *interval;
                Some(us_at(at))
            }
        }
    }
}

/// What a sender's client said about one message handed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Taken: it will be sent.
    Queued,
    /// The client's queue is full: offer it again later.
    Full,
}

/// One sender's client, as the sender loop sees it.
pub trait SenderPort: Send {
    /// Hands one message to the client.
    fn send(&mut self, body: Vec<u8>) -> impl Future<Output = Result<Offer, String>> + Send;
    /// Waits for the client's next event and accounts for it (acks,
    /// receipts); `Err` when the client stopped. Must be cancel-safe.
    fn next_event(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// Runs one sender through every phase: warm-up message, then paced
/// measured messages until the send phase ends, then events until stop.
/// Errors are recorded in `shared` and end the loop.
pub async fn sender_loop<P: SenderPort>(
    mut port: P,
    pair: usize,
    shared: std::sync::Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
) -> P {
    if let Err(e) = sender_phases(&mut port, pair, &shared, &mut phase).await {
        shared.error(format!("sender {pair}: {e}"));
    }
    port
}

async fn sender_phases<P: SenderPort>(
    port: &mut P,
    pair: usize,
    shared: &Shared,
    phase: &mut watch::Receiver<Phase>,
) -> Result<(), String> {
    let Some(state) = shared.pairs.get(pair) else { return Ok(()) };
    let pair_u32 = u32::try_from(pair).map_err(|_| format!("pair index {pair} does not fit 32 bits"))?;
    let size = shared.plan.size;
    let warm = Stamp { kind: Kind::WarmUp, pair: pair_u32, seq: 0, sent_us: now_us() };
    offer(port, warm.encode(size)).await?;
    let end = loop {
        tokio::select! {
            biased;
            event = port.next_event() => event?,
            changed = phase.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                match *phase.borrow_and_update() {
                    Phase::Send { end } => break end,
                    Phase::Stop => return Ok(()),
                    Phase::WarmUp => {}
                }
            }
        }
    };
    let mut pacer = Pacer::new(&shared.plan, pair, Instant::now());
    let mut seq = 0u64;
    loop {
        if shared.budget.load(Ordering::Relaxed) == 0 {
            break;
        }
        tokio::select! {
            biased;
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow_and_update() == Phase::Stop {
                    return Ok(());
                }
            }
            event = port.next_event() => event?,
            slot = pacer.next(state, end) => {
                let Some(sent_us) = slot else { break };
                if !shared.take_budget() {
                    break;
                }
                let stamp = Stamp { kind: Kind::Measured, pair: pair_u32, seq, sent_us };
                offer(port, stamp.encode(size)).await?;
                seq += 1;
                state.sent.fetch_add(1, Ordering::Relaxed);
                shared.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    loop {
        tokio::select! {
            biased;
            event = port.next_event() => event?,
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow_and_update() == Phase::Stop {
                    return Ok(());
                }
            }
        }
    }
}

/// Offers `body` until the client takes it, handling events while its queue
/// is full.
async fn offer<P: SenderPort>(port: &mut P, body: Vec<u8>) -> Result<(), String> {
    loop {
        match port.send(body.clone()).await? {
            Offer::Queued => return Ok(()),
            Offer::Full => {
                let pause = tokio::time::sleep(FULL_RETRY);
                tokio::pin!(pause);
                loop {
                    tokio::select! {
                        biased;
                        () = &mut pause => break,
                        event = port.next_event() => event?,
                    }
                }
            }
        }
    }
}

/// Waits until every pair's warm-up message arrived.
///
/// # Errors
/// How many pairs are still cold after [`WARM_UP_TIMEOUT`].
pub async fn wait_warm(shared: &Shared) -> Result<(), String> {
    let all = async {
        for p in &shared.pairs {
            loop {
                let notified = p.warm_notify.notified();
                if p.warm.load(Ordering::Acquire) {
                    break;
                }
                // The flag is set before notify_waiters; re-checking on a
                // short tick covers a notification between the load and
                // the await.
                let _ = tokio::time::timeout(POLL_INTERVAL * 20, notified).await;
            }
        }
    };
    tokio::time::timeout(WARM_UP_TIMEOUT, all).await.map_err(|_| {
        let cold = shared.pairs.iter().filter(|p| !p.warm.load(Ordering::Acquire)).count();
        format!(
            "{cold} of {} pairs got no warm-up message through within {} s",
            shared.pairs.len(),
            WARM_UP_TIMEOUT.as_secs()
        )
    })
}

/// Waits until every message to an online receiver arrived, or `timeout`.
pub async fn wait_settled(shared: &Shared, timeout: Duration) -> bool {
    wait_until(timeout, || shared.delivered_online.load(Ordering::Relaxed) >= shared.sent_where(false)).await
}

/// Waits until the server confirmed every message to an offline receiver, or `timeout`.
pub async fn wait_acked(shared: &Shared, timeout: Duration) -> bool {
    wait_until(timeout, || shared.unacked_offline() == 0).await
}

/// Waits until every message to an offline receiver arrived, or `timeout`.
pub async fn wait_drained(shared: &Shared, timeout: Duration) -> bool {
    wait_until(timeout, || shared.delivered_offline.load(Ordering::Relaxed) >= shared.sent_where(true)).await
}

async fn wait_until(timeout: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Concurrent connection attempts while opening clients: enough to hide the
/// per-client round trips, few enough that a server busy committing the
/// registrations still gets to accept the next connections in time.
pub const OPEN_CONCURRENCY: usize = 32;

/// A running receiver: what stops it, and its task.
type ReceiverTask = (oneshot::Sender<()>, JoinHandle<()>);

/// The receivers a driver runs, by pair: each a task told when to stop.
#[derive(Default)]
pub struct ReceiverTasks(Mutex<std::collections::BTreeMap<usize, ReceiverTask>>);

impl ReceiverTasks {
    /// Whether pair `pair`'s receiver runs.
    pub fn contains(&self, pair: usize) -> bool {
        lock(&self.0).contains_key(&pair)
    }

    /// Spawns `receive` as pair `pair`'s receiver; it should return soon
    /// after the receiver it is given fires.
    pub fn start<F>(&self, pair: usize, receive: impl FnOnce(oneshot::Receiver<()>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(receive(stopped));
        lock(&self.0).insert(pair, (stop, task));
    }

    /// Stops pair `pair`'s receiver (if it runs) and waits for it.
    ///
    /// # Errors
    /// The receiver's task panicked.
    pub async fn stop(&self, pair: usize) -> Result<(), String> {
        let Some((stop, task)) = lock(&self.0).remove(&pair) else { return Ok(()) };
        let _ = stop.send(());
        task.await.map_err(|e| format!("receiver {pair}: {e}"))
    }

    /// Stops every receiver, one after another.
    pub async fn stop_all(&self) {
        let all = std::mem::take(&mut *lock(&self.0));
        for (_, (stop, task)) in all {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

/// The target-specific half: how to connect, park and stop clients.
pub trait Driver: Send + Sync + 'static {
    /// A sender's client.
    type Sender: SenderPort + 'static;
    /// Connects pair `pair`'s receiver (again, after [`Driver::close_receiver`])
    /// and starts handing what it receives to [`Shared::on_message`].
    fn open_receiver(self: std::sync::Arc<Self>, pair: usize) -> impl Future<Output = Result<(), String>> + Send;
    /// Disconnects pair `pair`'s receiver, keeping its account or session
    /// so the server queues for it.
    fn close_receiver(self: std::sync::Arc<Self>, pair: usize) -> impl Future<Output = Result<(), String>> + Send;
    /// Connects pair `pair`'s sender.
    fn open_sender(
        self: std::sync::Arc<Self>,
        pair: usize,
    ) -> impl Future<Output = Result<Self::Sender, String>> + Send;
    /// Disconnects a sender.
    fn close_sender(self: std::sync::Arc<Self>, sender: Self::Sender) -> impl Future<Output = ()> + Send;
    /// Disconnects every receiver still connected.
    fn close_all(self: std::sync::Arc<Self>) -> impl Future<Output = ()> + Send;
}

/// Moments of a run, on the [`now_us`] clock, and the counters read at them.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// Send phase start and end.
    pub send_us: (u64, u64),
    /// Online deliveries by the end of the send phase.
    pub delivered_at_end: u64,
    /// Receipts by the end of the send phase.
    pub receipts_at_end: u64,
    /// Whether every online message arrived within the drain timeout.
    pub settled: bool,
    /// Offline receivers reconnecting: start, last arrival, complete?
    pub drain: Option<(u64, u64, bool)>,
}

/// Opens `pairs` with `open`, [`OPEN_CONCURRENCY`] at a time, returning the
/// results in pair order; the first error stops the rest.
async fn open_all<T, F, Fut>(pairs: impl Iterator<Item = usize>, open: F) -> Result<Vec<(usize, T)>, String>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, String>> + Send + 'static,
{
    let gate = std::sync::Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for pair in pairs {
        let gate = std::sync::Arc::clone(&gate);
        let fut = open(pair);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            fut.await.map(|t| (pair, t))
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(t)) => out.push(t),
            Ok(Err(e)) => {
                tasks.abort_all();
                return Err(e);
            }
            Err(e) => {
                tasks.abort_all();
                return Err(format!("a connection task failed: {e}"));
            }
        }
    }
    out.sort_by_key(|(pair, _)| *pair);
    Ok(out)
}

/// Runs the phases of the module doc against `driver`. `on_phase` names each
/// phase for the progress display.
///
/// # Errors
/// A sentence for a person when connecting or warming up fails.
pub async fn drive<D: Driver>(
    driver: std::sync::Arc<D>,
    shared: std::sync::Arc<Shared>,
    on_phase: impl Fn(&str),
) -> Result<Timeline, String> {
    let plan = shared.plan.clone();
    on_phase("connecting receivers");
    let d = std::sync::Arc::clone(&driver);
    open_all(0..plan.pairs, move |p| std::sync::Arc::clone(&d).open_receiver(p)).await?;
    let mut timeline = Timeline::default();
    if plan.idle {
        on_phase("holding idle connections");
        tokio::time::sleep(plan.duration).await;
        on_phase("closing idle connections");
        driver.close_all().await;
        return Ok(timeline);
    }
    on_phase("connecting senders");
    let d = std::sync::Arc::clone(&driver);
    let senders = open_all(0..plan.pairs, move |p| std::sync::Arc::clone(&d).open_sender(p)).await;
    let senders = match senders {
        Ok(s) => s,
        Err(e) => {
            driver.close_all().await;
            return Err(e);
        }
    };
    let (phase_tx, phase_rx) = watch::channel(Phase::WarmUp);
    let mut tasks = tokio::task::JoinSet::new();
    for (pair, port) in senders {
        tasks.spawn(sender_loop(port, pair, std::sync::Arc::clone(&shared), phase_rx.clone()));
    }
    on_phase("warming up");
    let warmed = wait_warm(&shared).await;
    let result = match warmed {
        Ok(()) => run_phases(&driver, &shared, &phase_tx, &on_phase, &mut timeline).await,
        Err(e) => Err(e),
    };
    on_phase("stopping");
    let _ = phase_tx.send(Phase::Stop);
    while let Some(joined) = tasks.join_next().await {
        if let Ok(port) = joined {
            std::sync::Arc::clone(&driver).close_sender(port).await;
        }
    }
    driver.close_all().await;
    result.map(|()| timeline)
}

async fn run_phases<D: Driver>(
    driver: &std::sync::Arc<D>,
    shared: &Shared,
    phase_tx: &watch::Sender<Phase>,
    on_phase: &impl Fn(&str),
    timeline: &mut Timeline,
) -> Result<(), String> {
    let plan = &shared.plan;
    if plan.offline_pairs > 0 {
        on_phase("receivers going offline");
        for pair in 0..plan.offline_pairs {
            std::sync::Arc::clone(driver).close_receiver(pair).await?;
        }
    }
    on_phase("sending");
    let start = Instant::now();
    let end = start + plan.duration;
    let _ = phase_tx.send(Phase::Send { end });
    // With a message budget the phase may end early: once it is spent and
    // every sender is idle, there is nothing left to time.
    let budget_spent = async {
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            if shared.budget.load(Ordering::Relaxed) == 0 {
                break;
            }
        }
    };
    tokio::select! {
        () = tokio::time::sleep_until(end) => {}
        () = budget_spent, if plan.messages_max.is_some() => {}
    }
    let stop = Instant::now();
    timeline.send_us = (us_at(start), us_at(stop));
    timeline.delivered_at_end = shared.delivered_online.load(Ordering::Relaxed);
    timeline.receipts_at_end = shared.receipts.load(Ordering::Relaxed);
    on_phase("waiting for the last deliveries");
    timeline.settled = wait_settled(shared, plan.drain_timeout).await;
    if plan.offline_pairs > 0 {
        on_phase("waiting for the server to confirm queued messages");
        if !wait_acked(shared, plan.drain_timeout).await {
            shared.error("the server did not confirm every message for offline receivers within the drain timeout");
        }
        on_phase("offline receivers draining");
        let drain_start = now_us();
        let d = std::sync::Arc::clone(driver);
        open_all(0..plan.offline_pairs, move |p| std::sync::Arc::clone(&d).open_receiver(p)).await?;
        let complete = wait_drained(shared, plan.drain_timeout).await;
        let last = shared.last_offline_us.load(Ordering::Relaxed).max(drain_start);
        timeline.drain = Some((drain_start, last, complete));
    }
    Ok(())
}
