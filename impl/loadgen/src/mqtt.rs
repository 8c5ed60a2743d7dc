//! The MQTT target (mosquitto and any MQTT 3.1.1 broker): rumqttc clients,
//! QoS 1 (at least once: the broker acks each publish, the receiver acks
//! each delivery), persistent sessions (`clean_session = false`) so the
//! broker queues for a receiver while it is away.
//!
//! Pair `p` is client `<tag>s<p>` publishing to topic `bt/<tag>/<p>`, which
//! client `<tag>r<p>` subscribes to at QoS 1.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::engine::{Driver, Loop, Offer, ReceiverTasks, SenderPort, Shared};

/// How long connecting and subscribing may take before the run gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Keep-alive: long against a run's stalls, so a busy broker is not taken
/// for a dead one.
const KEEP_ALIVE: Duration = Duration::from_secs(60);

/// Requests queued between a client handle and its event loop: a few, so a
/// closed-loop window stays the only real queue.
const REQUEST_QUEUE_LEN: usize = 16;

/// QoS 1 publishes a sender keeps unacknowledged in open loop, where
/// `--in-flight` does not apply: the same 100 the closed-loop default uses.
const OPEN_LOOP_INFLIGHT: u16 = 100;

/// After a connection error, how long an event loop waits before it polls
/// (and so reconnects) again.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// On shutdown, how long a client gets to send its DISCONNECT.
const DISCONNECT_GRACE: Duration = Duration::from_secs(1);

/// The MQTT driver.
pub struct Mqtt {
    shared: Arc<Shared>,
    host: String,
    port: u16,
    receivers: ReceiverTasks,
}

impl Mqtt {
    /// A driver for the broker at `host:port`.
    pub fn new(shared: Arc<Shared>, host: String, port: u16) -> Mqtt {
        Mqtt { shared, host, port, receivers: ReceiverTasks::default() }
    }

    fn options(&self, id: String, inflight: u16) -> MqttOptions {
        let mut o = MqttOptions::new(id, self.host.clone(), self.port);
        o.set_clean_session(false);
        o.set_keep_alive(KEEP_ALIVE);
        o.set_inflight(inflight.max(1));
        // Room for the payload plus MQTT headers and the topic.
        let packet = self.shared.plan.size.saturating_add(1024);
        o.set_max_packet_size(packet, packet);
        o
    }

    fn topic(&self, pair: usize) -> String {
        format!("bt/{}/{pair}", self.shared.plan.run_tag)
    }

    fn unreachable(&self, e: &rumqttc::ConnectionError) -> String {
        format!("cannot connect to the MQTT broker at {}:{} ({e})", self.host, self.port)
    }
}

/// Polls until CONNACK; publishes that arrive first (a persistent session's
/// queue) go to `shared`.
async fn connected(events: &mut EventLoop, driver: &Mqtt) -> Result<(), String> {
    let wait = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                    return if ack.code == rumqttc::ConnectReturnCode::Success {
                        Ok(())
                    } else {
                        Err(format!("the broker refused the connection: {:?}", ack.code))
                    };
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => driver.shared.on_message(&p.payload),
                Ok(_) => {}
                Err(e) => return Err(driver.unreachable(&e)),
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, wait).await.map_err(|_| {
        format!("no CONNACK from {}:{} within {} s", driver.host, driver.port, CONNECT_TIMEOUT.as_secs())
    })?
}

/// Polls a receiver's event loop, handing publishes to `shared`, until `stop`.
async fn receive(client: AsyncClient, mut events: EventLoop, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            polled = events.poll() => match polled {
                Ok(Event::Incoming(Incoming::Publish(p))) => shared.on_message(&p.payload),
                Ok(_) => {}
                Err(_) => {
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(RECONNECT_DELAY).await;
                }
            },
        }
    }
    disconnect(&client, &mut events).await;
}

/// Sends DISCONNECT (the broker keeps the persistent session) and polls
/// until it is out or [`DISCONNECT_GRACE`] passes.
async fn disconnect(client: &AsyncClient, events: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// A sender's client; its event loop runs in its own task, counting PUBACKs.
pub struct MqttSender {
    client: AsyncClient,
    topic: String,
    task: JoinHandle<()>,
}

/// Polls a sender's event loop: each PUBACK but the warm-up message's is a
/// server confirmation for `pair`.
async fn sender_events(mut events: EventLoop, shared: Arc<Shared>, pair: usize) {
    // The warm-up publish is the first one; its packet id is skipped once.
    let mut warm_up: Option<u16> = None;
    let mut warm_up_acked = false;
    loop {
        match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if warm_up.is_none() {
                    warm_up = Some(pkid);
                }
            }
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                if !warm_up_acked && Some(ack.pkid) == warm_up {
                    warm_up_acked = true;
                } else {
                    shared.on_server_ack(pair);
                }
            }
            // Ours (closing): polling on would reconnect.
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => break,
            Err(_) => {
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
}

impl SenderPort for MqttSender {
    async fn send(&mut self, body: Vec<u8>) -> Result<Offer, String> {
        self.client
            .publish(self.topic.clone(), QoS::AtLeastOnce, false, body)
            .await
            .map(|()| Offer::Queued)
            .map_err(|e| format!("the MQTT client stopped: {e}"))
    }

    async fn next_event(&mut self) -> Result<(), String> {
        // Acks are counted by the event loop's own task.
        std::future::pending().await
    }
}

impl Driver for Mqtt {
    type Sender = MqttSender;

    async fn open_receiver(self: Arc<Self>, pair: usize) -> Result<(), String> {
        if self.receivers.contains(pair) {
            return Ok(());
        }
        let id = format!("{}r{pair}", self.shared.plan.run_tag);
        let (client, mut events) = AsyncClient::new(self.options(id, OPEN_LOOP_INFLIGHT), REQUEST_QUEUE_LEN);
        connected(&mut events, &self).await?;
        client.subscribe(self.topic(pair), QoS::AtLeastOnce).await.map_err(|e| e.to_string())?;
        let subscribed = async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => return Ok(()),
                    Ok(Event::Incoming(Incoming::Publish(p))) => self.shared.on_message(&p.payload),
                    Ok(_) => {}
                    Err(e) => return Err(self.unreachable(&e)),
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, subscribed)
            .await
            .map_err(|_| format!("no SUBACK within {} s", CONNECT_TIMEOUT.as_secs()))??;
        let shared = Arc::clone(&self.shared);
        self.receivers.start(pair, |stop| receive(client, events, shared, stop));
        Ok(())
    }

    async fn close_receiver(self: Arc<Self>, pair: usize) -> Result<(), String> {
        self.receivers.stop(pair).await
    }

    async fn open_sender(self: Arc<Self>, pair: usize) -> Result<MqttSender, String> {
        let inflight = match self.shared.plan.pacing {
            Loop::Closed { in_flight } => u16::try_from(in_flight).unwrap_or(u16::MAX),
            Loop::Open { .. } => OPEN_LOOP_INFLIGHT,
        };
        let id = format!("{}s{pair}", self.shared.plan.run_tag);
        let (client, mut events) = AsyncClient::new(self.options(id, inflight), REQUEST_QUEUE_LEN);
        connected(&mut events, &self).await?;
        let task = tokio::spawn(sender_events(events, Arc::clone(&self.shared), pair));
        Ok(MqttSender { client, topic: self.topic(pair), task })
    }

    async fn close_sender(self: Arc<Self>, sender: MqttSender) {
        let _ = sender.client.try_disconnect();
        let mut task = sender.task;
        if tokio::time::timeout(DISCONNECT_GRACE, &mut task).await.is_err() {
            task.abort();
        }
    }

    async fn close_all(self: Arc<Self>) {
        self.receivers.stop_all().await;
    }
}
