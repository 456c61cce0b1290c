//! `LOADWAVE_KAFKA_AUTH=tls` against the real test broker's TLS listener, whose
//! certificate comes from a throwaway CA that `make test` makes (scripts/tls.sh).

use std::time::Duration;

use loadwave_bus::Bus;
use loadwave_kafka::{KafkaAuth, KafkaBus, KafkaConfig};
use loadwave_proto::{Message, Topic, Trigger, TriggerAction};

fn tls_config(ca: &str) -> KafkaConfig {
    let brokers = std::env::var("LOADWAVE_TEST_KAFKA_TLS")
        .expect("LOADWAVE_TEST_KAFKA_TLS is not set: run the tests through `make test`");
    let prefix = format!("tls{}.", std::process::id());
    let mut config = KafkaConfig::new(brokers, prefix);
    config.auth = KafkaAuth::Tls;
    config
        .add_options(&[format!("ssl.ca.location={ca}")])
        .unwrap();
    config
}

#[tokio::test]
async fn messages_cross_a_tls_listener_verified_against_the_ca() {
    let ca = std::env::var("LOADWAVE_TEST_KAFKA_CA").expect("LOADWAVE_TEST_KAFKA_CA");
    let bus = KafkaBus::connect(tls_config(&ca))
        .await
        .expect("topics created over TLS");
    assert!(bus.reachable(Duration::from_secs(10)));
    let mut sub = bus
        .subscribe(&[Topic::Trigger], "tls-reader")
        .await
        .unwrap();
    let message = Message::Trigger(Trigger {
        test_id: "tls-test".into(),
        action: TriggerAction::Stop,
    });
    // The reader's group may join after the first publish: publish until it arrives.
    let got = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            bus.publish(&message).await.expect("published over TLS");
            if let Ok(Some((m, d))) =
                tokio::time::timeout(Duration::from_secs(2), sub.next_message()).await
            {
                d.ack();
                return m;
            }
        }
    })
    .await
    .expect("a message read back over TLS");
    assert_eq!(got, message);
}

#[tokio::test]
async fn a_broker_certificate_from_another_ca_is_refused() {
    // The system's CAs did not sign the throwaway CA's certificate.
    let mut config = tls_config("/etc/ssl/certs/ca-certificates.crt");
    config
        .options
        .insert("socket.connection.setup.timeout.ms".into(), "3000".into());
    config
        .options
        .insert("socket.timeout.ms".into(), "5000".into());
    match KafkaBus::connect(config).await {
        Ok(bus) => assert!(
            !bus.reachable(Duration::from_secs(3)),
            "a broker with an untrusted certificate was reached"
        ),
        Err(err) => assert!(!err.to_string().is_empty()),
    }
}
