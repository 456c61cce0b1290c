//! One subscription shared by the agents of one process (`--agents N`).
//!
//! Every agent subscribes to `test_config` and `trigger`. On Kafka each subscription is a
//! consumer group of its own that reads everything on both topics, so N agents would be
//! N groups for the broker to coordinate and N² deliveries while a test's N drivers
//! come up (a configuration per driver, re-sent every second until confirmed). A
//! [`FanoutBus`] reads the two topics once for the process and hands each configuration
//! to the agent it names and each trigger to every agent; publishing goes straight to
//! the bus underneath.
//!
//! Acknowledgement: the shared delivery is acked once handed on. A crash before an agent
//! acts on it loses nothing the orchestrator does not send again (configurations and
//! triggers are re-sent every second until the drivers act on them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use loadwave_bus::{Bus, BusError, Delivery, Subscription};
use loadwave_proto::{Message, Topic};
use tokio::sync::mpsc;

type Agents = Arc<Mutex<HashMap<String, mpsc::Sender<Delivery>>>>;

/// Deliveries waiting for one agent. Configurations and triggers are re-sent every second
/// until drivers act on them, so one dropped while an agent's queue is full costs a second,
/// never a test; a bound keeps a flood on the shared topics from costing memory.
const AGENT_QUEUE: usize = 256;

/// A bus whose `test_config` + `trigger` subscriptions share one underneath.
pub struct FanoutBus {
    inner: Arc<dyn Bus>,
    /// The shared subscription's name (its consumer group on Kafka).
    name: String,
    agents: Agents,
    started: tokio::sync::Mutex<bool>,
}

impl FanoutBus {
    /// Over `inner`; the shared subscription is made under `name` when the first agent
    /// subscribes.
    pub fn new(inner: Arc<dyn Bus>, name: impl Into<String>) -> Self {
        FanoutBus {
            inner,
            name: name.into(),
            agents: Arc::default(),
            started: tokio::sync::Mutex::new(false),
        }
    }
}

/// What the agents subscribe to.
const SHARED: [Topic; 2] = [Topic::TestConfig, Topic::Trigger];

#[async_trait]
impl Bus for FanoutBus {
    async fn publish_raw(&self, topic: Topic, key: &str, payload: Vec<u8>) -> Result<(), BusError> {
        self.inner.publish_raw(topic, key, payload).await
    }

    fn health(&self) -> loadwave_bus::BusState {
        self.inner.health()
    }

    async fn subscribe(&self, topics: &[Topic], name: &str) -> Result<Subscription, BusError> {
        if topics.len() != SHARED.len() || !SHARED.iter().all(|t| topics.contains(t)) {
            return self.inner.subscribe(topics, name).await;
        }
        let (tx, rx) = mpsc::channel(AGENT_QUEUE);
        self.agents
            .lock()
            .expect("agents lock poisoned")
            .insert(name.to_string(), tx);
        let mut started = self.started.lock().await;
        if !*started {
            let shared = self.inner.subscribe(&SHARED, &self.name).await?;
            tokio::spawn(route(shared, self.agents.clone()));
            *started = true;
        }
        Ok(Subscription::bounded(rx))
    }
}

/// Hands each delivery of the shared subscription to the agents it concerns, until the
/// bus closes (then every agent's subscription ends too).
async fn route(mut shared: Subscription, agents: Agents) {
    while let Some(delivery) = shared.next().await {
        let to: Option<String> = match Message::decode(&delivery.payload) {
            Ok(Message::TestConfig(c)) => Some(c.driver_id),
            // Triggers concern every agent; anything else the agents skip themselves.
            Ok(_) => None,
            Err(_) => {
                delivery.ack();
                continue;
            }
        };
        {
            let mut agents = agents.lock().expect("agents lock poisoned");
            agents.retain(|_, tx| !tx.is_closed());
            let copy = || {
                Delivery::new(
                    delivery.topic,
                    delivery.key.clone(),
                    delivery.payload.clone(),
                    None,
                )
            };
            match &to {
                Some(id) => {
                    if let Some(tx) = agents.get(id) {
                        let _ = tx.try_send(copy());
                    }
                }
                None => {
                    for tx in agents.values() {
                        let _ = tx.try_send(copy());
                    }
                }
            }
        }
        delivery.ack();
    }
    agents.lock().expect("agents lock poisoned").clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use loadwave_bus::MemoryBus;
    use loadwave_proto::{TestConfig, TestSpec, Trigger, TriggerAction};

    fn config(driver: &str) -> Message {
        Message::TestConfig(TestConfig {
            test_id: "t".into(),
            driver_id: driver.into(),
            driver_index: 0,
            spec: TestSpec::from_json(
                br#"{"target_url":"http://127.0.0.1:9/","test_type":"avalanche","requests_per_driver":1}"#,
            )
            .unwrap(),
        })
    }

    #[tokio::test]
    async fn configurations_go_to_their_agent_and_triggers_to_all() {
        let memory = MemoryBus::new();
        let bus = FanoutBus::new(Arc::new(memory.clone()), "proc");
        let mut a = bus.subscribe(&SHARED, "a").await.unwrap();
        let mut b = bus.subscribe(&SHARED, "b").await.unwrap();
        for m in [config("b"), config("a"), config("nobody")] {
            memory.publish(&m).await.unwrap();
        }
        let stop = Message::Trigger(Trigger {
            test_id: "t".into(),
            action: TriggerAction::Stop,
        });
        bus.publish(&stop).await.unwrap();
        assert_eq!(a.next_message().await.unwrap().0, config("a"));
        assert_eq!(a.next_message().await.unwrap().0, stop);
        assert_eq!(b.next_message().await.unwrap().0, config("b"));
        assert_eq!(b.next_message().await.unwrap().0, stop);
        // Other subscriptions are the inner bus's own.
        let mut beats = bus.subscribe(&[Topic::Heartbeat], "x").await.unwrap();
        memory.publish(&stop).await.unwrap();
        drop(memory);
        drop(bus);
        assert!(beats.next().await.is_none());
    }
}
