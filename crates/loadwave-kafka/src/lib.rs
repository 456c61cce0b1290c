//! The Kafka transport of loadwave: [`KafkaBus`] implements [`loadwave_bus::Bus`] over
//! rdkafka (librdkafka).
//!
//! - Topics are the original's five (`register`, `test_config`, `trigger`, `metrics`,
//!   `heartbeat`) behind an optional prefix, created at start-up when missing. The
//!   `heartbeat` topic always has one partition, so the heartbeats of every driver and the
//!   orchestrator's ticks are read in the order the broker took them.
//! - The producer is idempotent with `acks=all` and keeps messages for up to five minutes
//!   while the broker is away (`message.timeout.ms`), so an outage delays reports instead
//!   of losing them. `publish` returns once the broker acknowledged the message.
//! - Each subscription is a consumer group of its own; offsets are stored only when the
//!   consumer acks a delivery (commit after processing, at-least-once). A subscription
//!   holds at most [`loadwave_bus::SUBSCRIPTION_CAPACITY`] deliveries: while it is full
//!   the pump stops polling, so a flood of messages waits in the broker, not in this
//!   process's memory.
//! - A failed publish says whether a retry may cure it ([`publish_retriable`]): a message
//!   over the size limit, a malformed one or a topic the client may not write never goes
//!   out, however often it is sent again.
//! - A probe asks the broker for metadata every second and keeps the bus's
//!   [`BusHealth`]: one WARN line when the broker becomes unreachable, a reminder at most
//!   every 30 s, one INFO line when it is back. librdkafka's own errors and connection
//!   chatter go to debug meanwhile, not a line per reconnect.
//!
//! - [`KafkaAuth`] picks how clients authenticate: plaintext (a local broker), TLS, or
//!   TLS with SASL/OAUTHBEARER carrying Amazon MSK IAM tokens, which librdkafka asks for
//!   through its token-refresh callback ([`auth::MskIamTokens`]).
//!
//! Raw librdkafka options in [`KafkaConfig::options`] are applied last, for anything the
//! defaults do not cover; one that contradicts the chosen [`KafkaAuth`] is refused.

pub mod args;
pub mod auth;

pub use args::KafkaArgs;
pub use auth::{AuthContext, KafkaAuth, MskIamTokens};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use loadwave_bus::{Bus, BusError, BusHealth, BusState, Delivery, Subscription};
use loadwave_proto::Topic;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

/// How to reach Kafka.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Prepended to every topic name (and consumer group), so several stacks or tests can
    /// share a broker.
    pub topic_prefix: String,
    /// Partitions of the topics this bus creates (`heartbeat` always gets one).
    pub partitions: i32,
    /// Replication factor of the topics this bus creates.
    pub replication: i32,
    /// Where a new consumer group starts: `earliest` (the orchestrator: nothing published
    /// before it subscribed is missed) or `latest` (drivers: old tests are not replayed).
    pub auto_offset_reset: String,
    /// How clients authenticate.
    pub auth: KafkaAuth,
    /// Raw librdkafka options, applied last to every client.
    pub options: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Defaults for a local single-node broker.
    pub fn new(brokers: impl Into<String>, topic_prefix: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            topic_prefix: topic_prefix.into(),
            partitions: 1,
            replication: 1,
            auto_offset_reset: "earliest".to_string(),
            auth: KafkaAuth::None,
            options: BTreeMap::new(),
        }
    }

    /// Adds raw librdkafka options given as `key=value` (the `--kafka-option` flag of the
    /// binaries); names the first that is not of that form.
    pub fn add_options<S: AsRef<str>>(&mut self, options: &[S]) -> Result<(), String> {
        for option in options {
            let option = option.as_ref();
            let (k, v) = option
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| format!("--kafka-option `{option}` is not KEY=VALUE"))?;
            let key = k.trim();
            if auth::OWNED_KEYS.contains(&key) && self.auth != KafkaAuth::None {
                return Err(format!(
                    "--kafka-option `{key}` contradicts --kafka-auth {}; drop one of them",
                    self.auth.as_str()
                ));
            }
            tracing::info!(option = key, "raw librdkafka option applied");
            self.options.insert(key.to_string(), v.to_string());
        }
        Ok(())
    }

    /// The full name of `topic`.
    pub fn topic_name(&self, topic: Topic) -> String {
        format!("{}{}", self.topic_prefix, topic.name())
    }

    pub(crate) fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        // Local brokers come and go in tests; don't spam the log at every reconnect.
        c.set("log.connection.close", "false");
        // Reconnect within a second of a broker's return (librdkafka backs off up to 10 s
        // by default), so drivers are heard again before anyone's silence counts.
        c.set("reconnect.backoff.max.ms", "1000");
        self.auth.apply(&mut c);
        c
    }

    /// The context every client of this configuration carries (the MSK IAM token source
    /// when [`KafkaAuth::MskIam`] is chosen).
    pub fn context(&self) -> AuthContext {
        AuthContext::for_auth(self.auth)
    }

    fn apply_options(&self, c: &mut ClientConfig) {
        for (k, v) in &self.options {
            c.set(k, v);
        }
    }
}

/// A Kafka client that failed to start.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// librdkafka refused the configuration or could not create a client.
    #[error("kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    /// Authentication could not be set up.
    #[error("kafka authentication: {0}")]
    Auth(String),
    /// A topic could not be created.
    #[error("creating topic {topic}: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// What the broker said.
        reason: String,
    },
}

/// The bus over Kafka. Build it once per process and share it.
pub struct KafkaBus {
    config: KafkaConfig,
    producer: FutureProducer<AuthContext>,
    health: Arc<BusHealth>,
    /// Ends the probe thread when the bus goes.
    probe_stop: Arc<AtomicBool>,
}

/// Five minutes of buffering while the broker is away.
const MESSAGE_TIMEOUT_MS: &str = "300000";
/// How often the probe asks the broker for metadata.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long one probe waits: a broker slower than this is as good as away.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl KafkaBus {
    /// Creates the producer and the topics, and starts the probe.
    pub async fn connect(config: KafkaConfig) -> Result<KafkaBus, KafkaError> {
        let health = Arc::new(BusHealth::new(format!("Kafka at {}", config.brokers)));
        let mut c = config.client();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", MESSAGE_TIMEOUT_MS);
        config.apply_options(&mut c);
        let producer: FutureProducer<AuthContext> =
            c.create_with_context(config.context().quiet_outages())?;
        let bus = KafkaBus {
            config,
            producer,
            health,
            probe_stop: Arc::new(AtomicBool::new(false)),
        };
        bus.ensure_topics().await?;
        bus.spawn_probe();
        Ok(bus)
    }

    /// Asks the broker for the heartbeat topic's metadata every second, on a thread of
    /// its own (the call blocks), and tells the bus's health what it found.
    fn spawn_probe(&self) {
        let producer = self.producer.clone();
        let topic = self.config.topic_name(Topic::Heartbeat);
        let health = self.health.clone();
        let stop = self.probe_stop.clone();
        let spawned = std::thread::Builder::new()
            .name("loadwave-kafka-probe".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(PROBE_EVERY);
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match producer
                        .client()
                        .fetch_metadata(Some(&topic), PROBE_TIMEOUT)
                    {
                        Ok(_) => health.up(),
                        Err(err) => health.down(&err.to_string()),
                    }
                }
            });
        if let Err(err) = spawned {
            tracing::error!(%err, "cannot start the Kafka probe; the bus's health will not be watched");
        }
    }

    /// The configuration.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// Creates the five topics if missing.
    pub async fn ensure_topics(&self) -> Result<(), KafkaError> {
        let mut c = self.config.client();
        self.config.apply_options(&mut c);
        let context = self.config.context().quiet_outages();
        let admin: AdminClient<AuthContext> = c.create_with_context(context.clone())?;
        if let Some(iam) = context.iam() {
            // rdkafka's admin client does not relay token refreshes; it lives for this
            // call only, so one token set up front serves it.
            auth::set_token_now(admin.inner().native_ptr(), iam)?;
        }
        let names: Vec<(String, i32)> = Topic::ALL
            .iter()
            .map(|t| {
                let partitions = if *t == Topic::Heartbeat {
                    1
                } else {
                    self.config.partitions
                };
                (self.config.topic_name(*t), partitions)
            })
            .collect();
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(self.config.replication)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin.create_topics(&topics, &opts).await?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaError::CreateTopic {
                        topic,
                        reason: code.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether the broker answers a metadata request within `timeout`.
    pub fn reachable(&self, timeout: Duration) -> bool {
        self.producer
            .client()
            .fetch_metadata(Some(&self.config.topic_name(Topic::Heartbeat)), timeout)
            .is_ok()
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn publish_raw(&self, topic: Topic, key: &str, payload: Vec<u8>) -> Result<(), BusError> {
        let name = self.config.topic_name(topic);
        let record = FutureRecord::to(&name).key(key).payload(&payload);
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map(|_| ())
            .map_err(|(err, _)| BusError::Publish {
                topic: name.clone(),
                reason: err.to_string(),
                retriable: publish_retriable(&err),
            })
    }

    fn health(&self) -> BusState {
        self.health.state()
    }

    async fn subscribe(&self, topics: &[Topic], name: &str) -> Result<Subscription, BusError> {
        let mut c = self.config.client();
        c.set("group.id", format!("{}{name}", self.config.topic_prefix))
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "500")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &self.config.auto_offset_reset)
            // The broker's least allowed session: a dead consumer's partitions move on
            // quickly. (Static membership would be quicker still, but librdkafka treats
            // the fencing a broker restart can cause as fatal.)
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            // librdkafka prefetches up to this much per consumer while our bounded channel
            // holds the pump back: 16 MiB (its default is 64 MiB) is thousands of reports,
            // plenty to keep a controller busy, a quarter of the memory a flood may pin.
            .set("queued.max.messages.kbytes", "16384");
        self.config.apply_options(&mut c);
        let consumer: StreamConsumer<AuthContext> = c
            .create_with_context(self.config.context().quiet_outages())
            .map_err(|e| BusError::Subscribe(e.to_string()))?;
        let names: Vec<String> = topics.iter().map(|t| self.config.topic_name(*t)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer
            .subscribe(&refs)
            .map_err(|e| BusError::Subscribe(e.to_string()))?;
        let consumer = Arc::new(consumer);
        let (tx, sub) = Subscription::channel();
        let prefix_map: Vec<(String, Topic)> = topics
            .iter()
            .map(|t| (self.config.topic_name(*t), *t))
            .collect();
        tokio::spawn(pump(consumer, prefix_map, tx));
        Ok(sub)
    }
}

impl Drop for KafkaBus {
    fn drop(&mut self) {
        self.probe_stop.store(true, Ordering::Relaxed);
    }
}

/// Whether a publish that failed with `err` may succeed if sent again. Not when the
/// message itself or the client's rights are at fault: too large (for the producer's
/// `message.max.bytes` or the broker's limit), malformed, refused by the topic's policy,
/// a topic the client may not write, or a producer that librdkafka declared unusable.
/// Timeouts, a full queue and a broker away are retriable.
pub fn publish_retriable(err: &RdKafkaError) -> bool {
    let Some(code) = err.rdkafka_error_code() else {
        return true;
    };
    !matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::BadMessage
            | RDKafkaErrorCode::InvalidArgument
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::InvalidRequiredAcks
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::UnsupportedForMessageFormat
            | RDKafkaErrorCode::UnsupportedCompressionType
            | RDKafkaErrorCode::UnsupportedVersion
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
    )
}

/// Moves messages from the consumer into the subscription's channel until the
/// subscription is dropped. While the channel is full the pump waits and does not poll:
/// the consumer's backlog stays in the broker (librdkafka's own prefetch is bounded by
/// its `queued.max.messages.kbytes`).
async fn pump(
    consumer: Arc<StreamConsumer<AuthContext>>,
    topics: Vec<(String, Topic)>,
    tx: mpsc::Sender<Delivery>,
) {
    loop {
        let received = tokio::select! {
            _ = tx.closed() => return,
            m = consumer.recv() => m,
        };
        let message = match received {
            Ok(m) => m,
            Err(err) => {
                // librdkafka reconnects by itself; its own log already said why.
                tracing::debug!(%err, "kafka consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Some(topic) = topics
            .iter()
            .find(|(n, _)| n == message.topic())
            .map(|(_, t)| *t)
        else {
            continue;
        };
        let (name, partition, offset) = (
            message.topic().to_string(),
            message.partition(),
            message.offset(),
        );
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        let payload = message.payload().map(<[u8]>::to_vec).unwrap_or_default();
        let c = consumer.clone();
        let ack = Box::new(move || {
            let mut tpl = TopicPartitionList::new();
            // The committed offset is the next one to read.
            if tpl
                .add_partition_offset(&name, partition, Offset::Offset(offset + 1))
                .is_ok()
                && let Err(err) = c.store_offsets(&tpl)
            {
                tracing::debug!(%err, "offset not stored (partition revoked?)");
            }
        });
        let delivery = Delivery::new(topic, key, payload, Some(ack));
        // Waits for room, or for the subscription to go.
        if tx.send(delivery).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_carry_the_prefix() {
        let c = KafkaConfig::new("b:9092", "dev.");
        assert_eq!(c.topic_name(Topic::TestConfig), "dev.test_config");
        assert_eq!(c.topic_name(Topic::Heartbeat), "dev.heartbeat");
    }

    #[test]
    fn publishes_no_retry_can_cure_are_not_retriable() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::MessageBatchTooLarge,
            RDKafkaErrorCode::InvalidMessage,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            let err = RdKafkaError::MessageProduction(code);
            assert!(!publish_retriable(&err), "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ] {
            let err = RdKafkaError::MessageProduction(code);
            assert!(publish_retriable(&err), "{code:?}");
        }
        assert!(publish_retriable(&RdKafkaError::Canceled));
    }

    #[test]
    fn subscriptions_are_bounded() {
        assert!((1_024..=4_096).contains(&loadwave_bus::SUBSCRIPTION_CAPACITY));
    }

    #[test]
    fn raw_options_must_be_key_value() {
        let mut c = KafkaConfig::new("b:9092", "");
        c.add_options(&["security.protocol=SSL", "a=b=c"]).unwrap();
        assert_eq!(c.options["security.protocol"], "SSL");
        assert_eq!(c.options["a"], "b=c");
        let err = c.add_options(&["novalue"]).unwrap_err();
        assert!(err.contains("novalue"), "{err}");
        assert!(c.add_options(&["=x"]).is_err());
    }
}
