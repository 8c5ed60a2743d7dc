//! The Redis Streams target: a secondary peer for "at-least-once delivery to
//! online and offline recipients with acks". Pair `p` appends to stream
//! `bt:<tag>:<p>` (`XADD`; the reply, the entry's id, is the server's ack)
//! and its receiver reads it through a consumer group (`XREADGROUP`), acking
//! what it has handed on (`XACK`). A receiver away keeps its group's
//! position, so the stream holds what arrives meanwhile; on return it first
//! re-reads its own unacknowledged entries (the group's pending list), then
//! new ones. Durability is the server's configuration (`bench-net.sh` runs
//! it append-only, fsync every second).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::engine::{Driver, Offer, ReceiverTasks, SenderPort, Shared};

/// How long connecting may take before the run gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages one sender queues before it reports its queue full: the closed
/// loop's window (deliveries) is the real limit; this bounds an open loop
/// against a stalled server.
const PENDING_MAX: usize = 1_000;

/// Appends sent as one pipeline at most.
const PIPELINE_MAX: usize = 100;

/// Entries a receiver takes per read.
const READ_COUNT: usize = 100;

/// How long one blocking read waits for entries, in ms: short, so a receiver
/// told to stop notices soon (it never cancels a read, which would leave
/// what it returned unacknowledged until the next connection).
const READ_BLOCK_MS: usize = 100;

/// After an error, how long a receiver waits before reading again.
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// The consumer group every receiver reads through.
const GROUP: &str = "bt";

/// The field an entry's payload is stored under.
const FIELD: &str = "d";

/// The Redis Streams driver.
pub struct RedisStreams {
    shared: Arc<Shared>,
    client: redis::Client,
    addr: String,
    receivers: ReceiverTasks,
}

impl RedisStreams {
    /// A driver for the Redis server at `host:port`.
    ///
    /// # Errors
    /// An address redis-rs cannot parse.
    pub fn new(shared: Arc<Shared>, host: &str, port: u16) -> Result<RedisStreams, String> {
        let addr = format!("{host}:{port}");
        let client = redis::Client::open(format!("redis://{addr}/")).map_err(|e| format!("{addr}: {e}"))?;
        Ok(RedisStreams { shared, client, addr, receivers: ReceiverTasks::default() })
    }

    fn stream(&self, pair: usize) -> String {
        format!("bt:{}:{pair}", self.shared.plan.run_tag)
    }

    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        // No response timeout (redis-rs defaults to 500 ms): under a peak
        // load a pipeline's answer can take longer, and a timed-out append
        // would count as lost although the server took it.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_multiplexed_async_connection_with_config(&config))
            .await
            .map_err(|_| format!("no answer from Redis at {} within {} s", self.addr, CONNECT_TIMEOUT.as_secs()))?
            .map_err(|e| format!("cannot connect to Redis at {} ({e})", self.addr))
    }
}

/// Reads up to [`READ_COUNT`] entries after `from` (`0`: this consumer's
/// unacknowledged ones; `>`: new ones), hands them on and acknowledges
/// them. Returns how many there were.
async fn read_once(
    con: &mut MultiplexedConnection,
    stream: &str,
    consumer: &str,
    from: &str,
    shared: &Shared,
) -> redis::RedisResult<usize> {
    let mut read = redis::cmd("XREADGROUP");
    read.arg("GROUP").arg(GROUP).arg(consumer).arg("COUNT").arg(READ_COUNT);
    if from == ">" {
        read.arg("BLOCK").arg(READ_BLOCK_MS);
    }
    read.arg("STREAMS").arg(stream).arg(from);
    let reply: Option<StreamReadReply> = read.query_async(con).await?;
    let ids: Vec<String> = reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .map(|entry| {
            match entry.map.get(FIELD) {
                Some(redis::Value::BulkString(body)) => shared.on_message(body),
                _ => shared.error(format!("stream {stream}: entry {} has no {FIELD:?} field", entry.id)),
            }
            entry.id
        })
        .collect();
    if !ids.is_empty() {
        let _: usize = redis::cmd("XACK").arg(stream).arg(GROUP).arg(&ids).query_async(con).await?;
    }
    Ok(ids.len())
}

/// Reads until `stop`: what this consumer left unacknowledged first, then new entries.
async fn receive(
    mut con: MultiplexedConnection,
    stream: String,
    consumer: String,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut backlog = true;
    while stop.try_recv() == Err(oneshot::error::TryRecvError::Empty) {
        let from = if backlog { "0" } else { ">" };
        match read_once(&mut con, &stream, &consumer, from, &shared).await {
            Ok(0) if backlog => backlog = false,
            Ok(_) => {}
            Err(_) => {
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                backlog = true;
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    }
}

/// A sender: a queue to its writer task, which appends in order.
pub struct RedisSender {
    queue: mpsc::Sender<Vec<u8>>,
    task: JoinHandle<()>,
}

/// Appends what the queue hands it, in order: whatever is waiting goes in
/// one pipeline (one round trip), and each entry id returned is the
/// server's ack of one message. The first is the warm-up message's, not
/// measured.
async fn append_loop(
    mut con: MultiplexedConnection,
    stream: String,
    mut queue: mpsc::Receiver<Vec<u8>>,
    pair: usize,
    shared: Arc<Shared>,
) {
    let mut warm_up_answered = false;
    while let Some(first) = queue.recv().await {
        let mut pipe = redis::pipe();
        pipe.cmd("XADD").arg(&stream).arg("*").arg(FIELD).arg(first);
        let mut n = 1;
        while n < PIPELINE_MAX {
            let Ok(body) = queue.try_recv() else { break };
            pipe.cmd("XADD").arg(&stream).arg("*").arg(FIELD).arg(body);
            n += 1;
        }
        let ids: Vec<String> = match pipe.query_async(&mut con).await {
            Ok(ids) => ids,
            Err(e) => {
                shared.error(format!("XADD to {stream} failed: {e}"));
                return;
            }
        };
        for _ in ids {
            if warm_up_answered {
                shared.on_server_ack(pair);
            } else {
                warm_up_answered = true;
            }
        }
    }
}

impl SenderPort for RedisSender {
    async fn send(&mut self, body: Vec<u8>) -> Result<Offer, String> {
        match self.queue.try_send(body) {
            Ok(()) => Ok(Offer::Queued),
            Err(mpsc::error::TrySendError::Full(_)) => Ok(Offer::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err("the Redis sender stopped".into()),
        }
    }

    async fn next_event(&mut self) -> Result<(), String> {
        // Acks are counted by the writer task.
        std::future::pending().await
    }
}

impl Driver for RedisStreams {
    type Sender = RedisSender;

    async fn open_receiver(self: Arc<Self>, pair: usize) -> Result<(), String> {
        if self.receivers.contains(pair) {
            return Ok(());
        }
        let mut con = self.connect().await?;
        let stream = self.stream(pair);
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut con)
            .await;
        match created {
            Ok(()) => {}
            // Opened before, in this run: the group keeps its position.
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(format!("cannot create the consumer group of {stream}: {e}")),
        }
        let consumer = format!("r{pair}");
        let shared = Arc::clone(&self.shared);
        self.receivers.start(pair, |stop| receive(con, stream, consumer, shared, stop));
        Ok(())
    }

    async fn close_receiver(self: Arc<Self>, pair: usize) -> Result<(), String> {
        self.receivers.stop(pair).await
    }

    async fn open_sender(self: Arc<Self>, pair: usize) -> Result<RedisSender, String> {
        let con = self.connect().await?;
        let (queue, queued) = mpsc::channel(PENDING_MAX);
        let task = tokio::spawn(append_loop(con, self.stream(pair), queued, pair, Arc::clone(&self.shared)));
        Ok(RedisSender { queue, task })
    }

    async fn close_sender(self: Arc<Self>, sender: RedisSender) {
        // What is queued is still appended and its acks counted.
        drop(sender.queue);
        let mut task = sender.task;
        if tokio::time::timeout(CONNECT_TIMEOUT, &mut task).await.is_err() {
            task.abort();
        }
    }

    async fn close_all(self: Arc<Self>) {
        self.receivers.stop_all().await;
    }
}
