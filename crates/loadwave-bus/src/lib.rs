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
//! Every subscription is a bounded channel ([`SUBSCRIPTION_CAPACITY`] deliveries over a
//! broker, [`MEMORY_SUBSCRIPTION_CAPACITY`] in memory): a consumer that falls behind
//! holds its transport back (Kafka's pump stops polling, a [`MemoryBus`] publisher
//! waits) instead of growing memory. A publish error says whether retrying can cure it
//! ([`BusError::is_retriable`]): a message over the transport's size limit never goes
//! out, however often it is sent again.
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
use loadwave_proto::spec::MAX_MESSAGE_BYTES;
use loadwave_proto::{Message, Topic};
use tokio::sync::mpsc;

/// Deliveries a subscription holds before its transport waits for the consumer: a few
/// seconds of a thousand drivers' heartbeats and reports, so a busy consumer keeps its
/// throughput, and a bound on what a flood of messages can cost.
pub const SUBSCRIPTION_CAPACITY: usize = 2_048;

/// Deliveries a [`MemoryBus`] subscription holds before a publisher waits. Higher than
/// [`SUBSCRIPTION_CAPACITY`] because there is no broker in between: `loadwave run`'s
/// coordinator and its agents each publish from the loop that reads their subscription,
/// so two full channels could wait on each other. Measured with `loadwave run --drivers
/// 1000 -n 1` (debug build, 2 cores): at 2,048 the run hung past 5 minutes; at this
/// bound it ends as it did unbounded (its drivers not ready within 10 s, in 18 s).
pub const MEMORY_SUBSCRIPTION_CAPACITY: usize = 65_536;

/// A transport failure.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The message could not be handed to the transport in time, or the transport
    /// refused it.
    #[error("publishing to {topic} failed: {reason}")]
    Publish {
        /// The topic's full name.
        topic: String,
        /// What the transport said.
        reason: String,
        /// Whether sending it again may succeed (the broker was away, a queue was full);
        /// `false` when no retry can cure it (the message is too large or malformed, the
        /// client may not write to the topic).
        retriable: bool,
    },
    /// Subscribing failed.
    #[error("subscribing failed: {0}")]
    Subscribe(String),
    /// The bus was shut down.
    #[error("the bus is closed")]
    Closed,
}

impl BusError {
    /// Whether the same operation may succeed if tried again: a publish the transport
    /// could not take in time, a subscription that failed. A publish the transport refused
    /// for good, or a closed bus, is not.
    pub fn is_retriable(&self) -> bool {
        match self {
            BusError::Publish { retriable, .. } => *retriable,
            BusError::Subscribe(_) => true,
            BusError::Closed => false,
        }
    }
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

/// A stream of deliveries from the subscribed topics, always through a bounded channel:
/// a full one holds its feeder back (a transport stops polling), so a flood costs no
/// memory.
pub struct Subscription {
    rx: mpsc::Receiver<Delivery>,
    malformed: Arc<AtomicU64>,
}

impl Subscription {
    /// A bounded channel of [`SUBSCRIPTION_CAPACITY`] deliveries: the sender a transport
    /// feeds (waiting while it is full) and the subscription reading it.
    pub fn channel() -> (mpsc::Sender<Delivery>, Subscription) {
        Self::channel_of(SUBSCRIPTION_CAPACITY)
    }

    /// [`Subscription::channel`] holding `capacity` deliveries (at least one).
    pub fn channel_of(capacity: usize) -> (mpsc::Sender<Delivery>, Subscription) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (tx, Subscription::bounded(rx))
    }

    /// A subscription fed by the bounded channel `rx`.
    pub fn bounded(rx: mpsc::Receiver<Delivery>) -> Self {
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
            let delivery = self.next().await?;
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
    tx: mpsc::Sender<Delivery>,
}

/// An in-process bus: every subscriber gets its own copy of every message on its topics,
/// in publish order.
///
/// It behaves as Kafka does where that matters: a message over [`MAX_MESSAGE_BYTES`]
/// (librdkafka's default limit) is refused with an error that is not retriable, and a
/// subscription holds [`MEMORY_SUBSCRIPTION_CAPACITY`] deliveries, beyond which a
/// publisher waits for the subscriber to read (there is no broker to hold them).
#[derive(Clone)]
pub struct MemoryBus {
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
    published: Arc<AtomicU64>,
    max_message_bytes: usize,
    capacity: usize,
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus {
            subscribers: Arc::default(),
            published: Arc::default(),
            max_message_bytes: MAX_MESSAGE_BYTES,
            capacity: MEMORY_SUBSCRIPTION_CAPACITY,
        }
    }
}

impl MemoryBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same bus refusing messages over `bytes` (tests use a small limit to see a
    /// publish fail for good).
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// The same bus whose later subscriptions hold `deliveries` (at least one).
    pub fn with_capacity(mut self, deliveries: usize) -> Self {
        self.capacity = deliveries.max(1);
        self
    }

    /// Messages published so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish_raw(&self, topic: Topic, key: &str, payload: Vec<u8>) -> Result<(), BusError> {
        if payload.len() > self.max_message_bytes {
            return Err(BusError::Publish {
                topic: topic.name().to_string(),
                reason: format!(
                    "a message of {} bytes is larger than the bus allows ({} bytes)",
                    payload.len(),
                    self.max_message_bytes
                ),
                retriable: false,
            });
        }
        self.published.fetch_add(1, Ordering::Relaxed);
        // The senders are taken out of the lock: a full subscription makes this publisher
        // wait, and nothing may wait holding the lock.
        let to: Vec<mpsc::Sender<Delivery>> = {
            let mut subscribers = self.subscribers.lock().expect("bus lock poisoned");
            subscribers.retain(|s| !s.tx.is_closed());
            subscribers
                .iter()
                .filter(|s| s.topics.contains(&topic))
                .map(|s| s.tx.clone())
                .collect()
        };
        for tx in to {
            let delivery = Delivery::new(topic, Some(key.to_string()), payload.clone(), None);
            // A subscriber that went away meanwhile misses nothing it would have read.
            let _ = tx.send(delivery).await;
        }
        Ok(())
    }

    async fn subscribe(&self, topics: &[Topic], _name: &str) -> Result<Subscription, BusError> {
        let (tx, sub) = Subscription::channel_of(self.capacity);
        self.subscribers
            .lock()
            .expect("bus lock poisoned")
            .push(Subscriber {
                topics: topics.to_vec(),
                tx,
            });
        Ok(sub)
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

    /// The issue: the subscription channel was unbounded. A subscriber that does not read
    /// holds the publisher back at the channel's capacity; reading lets it go on.
    #[tokio::test]
    async fn a_full_subscription_holds_the_publisher_back() {
        let bus = MemoryBus::new().with_capacity(4);
        let mut sub = bus.subscribe(&[Topic::Trigger], "slow").await.unwrap();
        for _ in 0..4 {
            bus.publish_raw(Topic::Trigger, "k", vec![1]).await.unwrap();
        }
        let fifth = bus.publish_raw(Topic::Trigger, "k", vec![2]);
        tokio::pin!(fifth);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(100), &mut fifth)
                .await
                .is_err(),
            "a publish into a full subscription returned"
        );
        assert_eq!(sub.next().await.unwrap().payload, vec![1]);
        fifth.await.unwrap();
        for _ in 0..3 {
            assert_eq!(sub.next().await.unwrap().payload, vec![1]);
        }
        assert_eq!(sub.next().await.unwrap().payload, vec![2]);
    }

    #[test]
    fn the_default_subscription_is_bounded() {
        let (tx, _sub) = Subscription::channel();
        assert_eq!(tx.max_capacity(), SUBSCRIPTION_CAPACITY);
    }

    /// Like Kafka's producer: a message over the limit is refused for good.
    #[tokio::test]
    async fn a_message_over_the_size_limit_is_refused_for_good() {
        let bus = MemoryBus::new();
        let mut sub = bus.subscribe(&[Topic::TestConfig], "a").await.unwrap();
        let err = bus
            .publish_raw(Topic::TestConfig, "k", vec![b' '; MAX_MESSAGE_BYTES + 1])
            .await
            .unwrap_err();
        assert!(!err.is_retriable(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("test_config") && text.contains("1000001"),
            "{text}"
        );
        assert_eq!(bus.published(), 0);
        bus.publish_raw(Topic::TestConfig, "k", vec![b' '; MAX_MESSAGE_BYTES])
            .await
            .unwrap();
        assert_eq!(sub.next().await.unwrap().payload.len(), MAX_MESSAGE_BYTES);
        let small = MemoryBus::new().with_max_message_bytes(10);
        assert!(
            small
                .publish_raw(Topic::Trigger, "k", vec![0; 11])
                .await
                .is_err()
        );
        assert!(
            BusError::Publish {
                topic: "t".into(),
                reason: "timed out".into(),
                retriable: true
            }
            .is_retriable()
        );
        assert!(!BusError::Closed.is_retriable());
    }
}
