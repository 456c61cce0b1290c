//! The Kafka flags every loadwave binary shares, each also read from the environment so
//! Lambda functions and ECS tasks configure by environment alone.

use crate::{KafkaAuth, KafkaConfig};

/// How to reach Kafka (flattened into each binary's arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Prefix of the topic names (and consumer groups).
    #[arg(long, env = "LOADWAVE_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// How clients authenticate: `none` (plaintext), `tls`, or `msk-iam` (TLS with
    /// SASL/OAUTHBEARER and MSK IAM tokens from the AWS credential chain).
    #[arg(long, env = "LOADWAVE_KAFKA_AUTH", value_enum, default_value_t = KafkaAuth::None)]
    pub kafka_auth: KafkaAuth,
    /// Replication factor of the topics this client creates when they are missing: 1 for a
    /// single local broker; a managed cluster wants at least 2, so a broker's maintenance
    /// leaves the topics available.
    #[arg(long, env = "LOADWAVE_KAFKA_REPLICATION", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(1..=5))]
    pub kafka_replication: i32,
    /// A raw librdkafka option `key=value`, applied last; repeatable.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,
}

impl KafkaArgs {
    /// The client configuration these flags describe.
    pub fn config(&self) -> Result<KafkaConfig, String> {
        let mut config = KafkaConfig::new(&self.brokers, &self.topic_prefix);
        config.auth = self.kafka_auth;
        config.replication = self.kafka_replication;
        config.add_options(&self.kafka_options)?;
        Ok(config)
    }

    /// The same flags as arguments for a child process (the process launcher's drivers).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--brokers".to_string(),
            self.brokers.clone(),
            "--topic-prefix".to_string(),
            self.topic_prefix.clone(),
            "--kafka-auth".to_string(),
            self.kafka_auth.as_str().to_string(),
            "--kafka-replication".to_string(),
            self.kafka_replication.to_string(),
        ];
        for option in &self.kafka_options {
            args.push("--kafka-option".to_string());
            args.push(option.clone());
        }
        args
    }

    /// From the environment alone (the Lambda functions): `KAFKA_BROKERS`,
    /// `LOADWAVE_TOPIC_PREFIX`, `LOADWAVE_KAFKA_AUTH`, `LOADWAVE_KAFKA_REPLICATION`.
    pub fn from_env() -> Result<KafkaArgs, String> {
        let brokers =
            std::env::var("KAFKA_BROKERS").map_err(|_| "KAFKA_BROKERS is not set".to_string())?;
        Ok(KafkaArgs {
            brokers,
            topic_prefix: std::env::var("LOADWAVE_TOPIC_PREFIX").unwrap_or_default(),
            kafka_auth: KafkaAuth::parse(
                &std::env::var("LOADWAVE_KAFKA_AUTH").unwrap_or_default(),
            )?,
            kafka_replication: match std::env::var("LOADWAVE_KAFKA_REPLICATION") {
                Ok(v) if !v.trim().is_empty() => v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|r| (1..=5).contains(r))
                    .ok_or_else(|| format!("LOADWAVE_KAFKA_REPLICATION `{v}` is not 1 to 5"))?,
                _ => 1,
            },
            kafka_options: Vec::new(),
        })
    }
}
