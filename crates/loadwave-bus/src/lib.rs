//! The bus between the orchestrator and its drivers.
//!
//! [`Bus`] is the small seam every transport implements: publish a message on a topic,
//! subscribe to topics. [`MemoryBus`] delivers within one process and backs
//! `loadwave run` and the tests; the Kafka transport implements the same trait, so the
//! driver agent and the orchestrator core never know which one they talk over.
//!
//! Deliveries carry an acknowledgement: a consumer acks a message once it has processed
//! it, which on Kafka commits the offset (at-least-once delivery; the orchestrator's fold
//! is idempotent, so a re-delivery changes nothing). A payload that does not decode is
//! logged, counted and skipped by [`Subscription::next_message`], never fatal.
//!
//! [`health`] keeps a process's view of whether its bus can be reached (and says so in
//! the log once, not per failure); [`stop`] ends a process in bounded time on SIGTERM or
//! Ctrl-C, whatever the bus is doing.

pub mod health;
pub mod stop;

pub use health::{BusHealth, BusState};

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use loadwave_proto::{Message, Topic};
use tokio::sync::mpsc;

/// A transport failure.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The message could not be handed to the transport in time.
    #[error("publishing to {topic} failed: {reason}")]
    Publish {
        /// The topic's full name.
        topic: String,
        /// What the transport said.
        reason: String,
    },
    /// Subscribing failed.
    #[error("subscribing failed: {0}")]
    Subscribe(String),
    /// The bus was shut down.
    #[error("the bus is closed")]
    Closed,
}

/// One delivered payload.
pub struct Delivery {
    /// The topic it arrived on.
    pub topic: Topic,
    /// The partitioning key, if any.
    pub key: Option<String>,
    /// The raw bytes.
    pub payload: Vec<u8>,
    ack: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl Delivery {
    /// A delivery; `ack` runs when the consumer has processed it.
    pub fn new(
        topic: Topic,
        key: Option<String>,
        payload: Vec<u8>,
        ack: Option<Box<dyn FnOnce() + Send>>,
    ) -> Self {
        Delivery {
            topic,
            key,
            payload,
            ack,
        }
    }

    /// Marks the delivery processed (commits it, on transports that commit).
    pub fn ack(mut self) {
        if let Some(ack) = self.ack.take() {
            ack();
        }
    }
}

/// A stream of deliveries from the subscribed topics.
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Delivery>,
    malformed: Arc<AtomicU64>,
}

impl Subscription {
    /// A subscription fed by `rx`.
    pub fn new(rx: mpsc::UnboundedReceiver<Delivery>) -> Self {
        Subscription {
            rx,
            malformed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The next raw delivery; `None` once the bus is closed.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// The next message that decodes. Malformed payloads are logged, counted, acked (so
    /// they are not re-delivered forever) and skipped.
    pub async fn next_message(&mut self) -> Option<(Message, Delivery)> {
        loop {
            let delivery = self.rx.recv().await?;
            match Message::decode(&delivery.payload) {
                Ok(message) => return Some((message, delivery)),
                Err(err) => {
                    self.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(topic = delivery.topic.name(), %err, "skipping malformed message");
                    delivery.ack();
                }
            }
        }
    }

    /// How many malformed payloads were skipped.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }
}

/// A publish/subscribe transport.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes raw bytes on `topic` with partitioning key `key`.
    async fn publish_raw(&self, topic: Topic, key: &str, payload: Vec<u8>) -> Result<(), BusError>;

    /// Subscribes to `topics`. Every subscription sees every message published after it
    /// was made (each is its own consumer group); `name` identifies the subscriber.
    async fn subscribe(&self, topics: &[Topic], name: &str) -> Result<Subscription, BusError>;

    /// Encodes `message` and publishes it on its topic, keyed by its test.
    async fn publish(&self, message: &Message) -> Result<(), BusError> {
        self.publish_raw(message.topic(), message.key(), message.encode())
            .await
    }

    /// Whether the transport can reach its broker. An in-process bus always can.
    fn health(&self) -> BusState {
        BusState {
            reachable: true,
            since_ms: 0,
        }
    }
}

struct Subscriber {
    topics: Vec<Topic>,
    tx: mpsc::UnboundedSender<Delivery>,
}

/// An in-process bus: every subscriber gets its own copy of every message on its topics,
/// in publish order.
#[derive(Default, Clone)]
pub struct MemoryBus {
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
    published: Arc<AtomicU64>,
}

impl MemoryBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages published so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish_raw(&self, topic: Topic, key: &str, payload: Vec<u8>) -> Result<(), BusError> {
        self.published.fetch_add(1, Ordering::Relaxed);
        let mut subscribers = self.subscribers.lock().expect("bus lock poisoned");
        subscribers.retain(|s| !s.tx.is_closed());
        for s in subscribers.iter().filter(|s| s.topics.contains(&topic)) {
            let _ = s.tx.send(Delivery::new(
                topic,
                Some(key.to_string()),
                payload.clone(),
                None,
            ));
        }
        Ok(())
    }

    async fn subscribe(&self, topics: &[Topic], _name: &str) -> Result<Subscription, BusError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .expect("bus lock poisoned")
            .push(Subscriber {
                topics: topics.to_vec(),
                tx,
            });
        Ok(Subscription::new(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loadwave_proto::{Trigger, TriggerAction};

    #[tokio::test]
    async fn delivers_to_subscribers_of_the_topic_only() {
        let bus = MemoryBus::new();
        let mut triggers = bus.subscribe(&[Topic::Trigger], "a").await.unwrap();
        let mut metrics = bus.subscribe(&[Topic::Metrics], "b").await.unwrap();
        let msg = Message::Trigger(Trigger {
            test_id: "t".into(),
            action: TriggerAction::Stop,
        });
        bus.publish(&msg).await.unwrap();
        let (got, delivery) = triggers.next_message().await.unwrap();
        assert_eq!(got, msg);
        assert_eq!(delivery.key.as_deref(), Some("t"));
        drop(bus);
        assert!(metrics.next().await.is_none());
    }

    #[tokio::test]
    async fn malformed_payloads_are_counted_and_skipped() {
        let bus = MemoryBus::new();
        let mut sub = bus.subscribe(&[Topic::Trigger], "a").await.unwrap();
        bus.publish_raw(Topic::Trigger, "k", b"\xff\x00junk".to_vec())
            .await
            .unwrap();
        let msg = Message::Trigger(Trigger {
            test_id: "t".into(),
            action: TriggerAction::Stop,
        });
        bus.publish(&msg).await.unwrap();
        assert_eq!(sub.next_message().await.unwrap().0, msg);
        assert_eq!(sub.malformed(), 1);
    }
}
