//! The NATS JetStream target: the other secondary peer. One work-queue
//! stream per run (`BT_<tag>`, subjects `bt.<tag>.*`, file storage); pair
//! `p` publishes to `bt.<tag>.<p>` (the JetStream publish ack is the
//! server's ack) and its receiver is the durable pull consumer `r<p>`
//! filtered to that subject, acking each message after handing it on
//! (acked messages leave the work queue). A receiver away keeps its
//! consumer, so JetStream holds what arrives meanwhile. Durability is the
//! server's: file storage synced every two minutes by default, so an ack
//! means "in memory" as with mosquitto.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::oneshot;

use crate::engine::{Driver, Offer, ReceiverTasks, SenderPort, Shared};

/// How long connecting and creating the stream or a consumer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes one sender keeps unacknowledged before it reports its queue
/// full: the closed loop's window (deliveries) is the real limit; this
/// bounds an open loop against a stalled server.
const PENDING_MAX: usize = 1_000;

/// Messages a consumer may have delivered and unacknowledged.
const ACK_PENDING_MAX: i64 = 10_000;

/// After an error, how long a receiver waits before pulling again.
const RETRY_DELAY: Duration = Duration::from_millis(100);

type Acked = jetstream::context::PublishAckFuture;

/// The NATS JetStream driver.
pub struct Nats {
    shared: Arc<Shared>,
    js: jetstream::Context,
    stream: stream::Stream,
    receivers: ReceiverTasks,
}

impl Nats {
    /// Connects to the server at `host:port` and creates this run's stream.
    ///
    /// # Errors
    /// The server is unreachable, has no JetStream, or refuses the stream.
    pub async fn connect(shared: Arc<Shared>, host: &str, port: u16) -> Result<Nats, String> {
        let addr = format!("{host}:{port}");
        let setup = async {
            let client = async_nats::connect(addr.as_str())
                .await
                .map_err(|e| format!("cannot connect to NATS at {addr} ({e})"))?;
            // The context holds back publishes past its own limit of acks in
            // flight (5,000 by default) until earlier acks are taken; a sender
            // blocked there cannot take its own, so with 100 pairs of 100 in
            // flight every sender waited on every other. Its limit is set
            // above what the senders can have pending together.
            let inflight = shared.plan.pairs.saturating_mul(PENDING_MAX + 1).max(1);
            let js = jetstream::ContextBuilder::new().max_ack_inflight(inflight).build(client);
            let tag = &shared.plan.run_tag;
            let stream = js
                .get_or_create_stream(stream::Config {
                    name: format!("BT_{tag}"),
                    subjects: vec![format!("bt.{tag}.*")],
                    retention: stream::RetentionPolicy::WorkQueue,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("cannot create the JetStream stream at {addr} (is JetStream on? -js): {e}"))?;
            Ok::<_, String>((js, stream))
        };
        let (js, stream) = tokio::time::timeout(CONNECT_TIMEOUT, setup)
            .await
            .map_err(|_| format!("no answer from NATS at {addr} within {} s", CONNECT_TIMEOUT.as_secs()))??;
        Ok(Nats { shared, js, stream, receivers: ReceiverTasks::default() })
    }

    fn subject(&self, pair: usize) -> String {
        format!("bt.{}.{pair}", self.shared.plan.run_tag)
    }
}

/// Pulls from `consumer` until `stop`, handing each message on, then acking it.
async fn receive(consumer: consumer::PullConsumer, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    'connect: loop {
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(_) => {
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    biased;
                    _ = &mut stop => return,
                    () = tokio::time::sleep(RETRY_DELAY) => continue 'connect,
                }
            }
        };
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => return,
                next = messages.next() => match next {
                    Some(Ok(message)) => {
                        shared.on_message(&message.payload);
                        // A lost ack only means redelivery, which the book counts.
                        if message.ack().await.is_err() {
                            shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Err(_)) | None => {
                        shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        continue 'connect;
                    }
                },
            }
        }
    }
}

/// A sender: its publishes awaiting JetStream's acks.
pub struct NatsSender {
    js: jetstream::Context,
    subject: String,
    pending: FuturesUnordered<<Acked as std::future::IntoFuture>::IntoFuture>,
    pair: usize,
    shared: Arc<Shared>,
    /// One ack answers the warm-up message, which is not measured.
    warm_up_answered: bool,
}

impl SenderPort for NatsSender {
    async fn send(&mut self, body: Vec<u8>) -> Result<Offer, String> {
        if self.pending.len() >= PENDING_MAX {
            return Ok(Offer::Full);
        }
        // The publish is written (in order) before this returns; only its
        // ack is awaited later.
        let ack = self
            .js
            .publish(self.subject.clone(), body.into())
            .await
            .map_err(|e| format!("publish to {} failed: {e}", self.subject))?;
        self.pending.push(std::future::IntoFuture::into_future(ack));
        Ok(Offer::Queued)
    }

    async fn next_event(&mut self) -> Result<(), String> {
        // Cancel-safe: the ack futures live in `pending`.
        match self.pending.next().await {
            Some(Ok(_)) if !self.warm_up_answered => {
                self.warm_up_answered = true;
                Ok(())
            }
            Some(Ok(_)) => {
                self.shared.on_server_ack(self.pair);
                Ok(())
            }
            Some(Err(e)) => Err(format!("no JetStream ack for a publish to {}: {e}", self.subject)),
            None => std::future::pending().await,
        }
    }
}

impl Driver for Nats {
    type Sender = NatsSender;

    async fn open_receiver(self: Arc<Self>, pair: usize) -> Result<(), String> {
        if self.receivers.contains(pair) {
            return Ok(());
        }
        let name = format!("r{pair}");
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: self.subject(pair),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: ACK_PENDING_MAX,
            ..Default::default()
        };
        let consumer = tokio::time::timeout(CONNECT_TIMEOUT, self.stream.get_or_create_consumer(&name, config))
            .await
            .map_err(|_| format!("creating consumer {name} took over {} s", CONNECT_TIMEOUT.as_secs()))?
            .map_err(|e| format!("cannot create consumer {name}: {e}"))?;
        let shared = Arc::clone(&self.shared);
        self.receivers.start(pair, |stop| receive(consumer, shared, stop));
        Ok(())
    }

    async fn close_receiver(self: Arc<Self>, pair: usize) -> Result<(), String> {
        self.receivers.stop(pair).await
    }

    async fn open_sender(self: Arc<Self>, pair: usize) -> Result<NatsSender, String> {
        Ok(NatsSender {
            js: self.js.clone(),
            subject: self.subject(pair),
            pending: FuturesUnordered::new(),
            pair,
            shared: Arc::clone(&self.shared),
            warm_up_answered: false,
        })
    }

    async fn close_sender(self: Arc<Self>, mut sender: NatsSender) {
        // Acks still owed are collected so they are counted.
        while !sender.pending.is_empty() {
            match tokio::time::timeout(CONNECT_TIMEOUT, sender.next_event()).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    }

    async fn close_all(self: Arc<Self>) {
        self.receivers.stop_all().await;
    }
}
