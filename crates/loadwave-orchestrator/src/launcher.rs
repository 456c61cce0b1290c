//! Finding drivers for a test: one trait, one implementation per way drivers exist.
//!
//! - [`PoolLauncher`]: drivers that are already up (started by hand, by `make local`, by
//!   compose replicas — the original system's model); a test takes idle ones.
//! - [`ProcessLauncher`]: starts one `loadwave-driver --test-id` process per driver on
//!   this machine; they exit when the test is done.
//! - [`EcsLauncher`]: runs one ECS (Fargate) task per driver with `RunTask`, stops them
//!   with `StopTask`, and reads why a task stopped early with `DescribeTasks`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, CapacityProviderStrategyItem, ContainerOverride,
    KeyValuePair, NetworkConfiguration, TaskOverride,
};
use loadwave_core::{Acquired, DriverSlot};
use loadwave_kafka::KafkaArgs;
use loadwave_proto::ecs_task_driver_id;

/// Finds or starts drivers.
#[async_trait]
pub trait Launcher: Send + Sync + 'static {
    /// Drivers for `test_id`: `count` of them. `idle` lists the pool drivers that are
    /// alive, idle and not held by another test, oldest first.
    async fn acquire(&self, test_id: &str, count: usize, idle: &[String]) -> Acquired;

    /// The test is over (or never needed these drivers): stop whatever still runs.
    async fn release(&self, _test_id: &str, _drivers: &[DriverSlot]) {}

    /// Which of `drivers` are gone, and why (a stopped ECS task, an exited process).
    async fn inspect(&self, _drivers: &[DriverSlot]) -> Vec<(String, String)> {
        Vec::new()
    }

    /// A name for logs and `/healthz`.
    fn name(&self) -> &'static str;
}

/// Takes idle drivers of the pool.
#[derive(Debug, Default)]
pub struct PoolLauncher;

#[async_trait]
impl Launcher for PoolLauncher {
    async fn acquire(&self, _test_id: &str, count: usize, idle: &[String]) -> Acquired {
        if idle.len() >= count {
            Acquired::Drivers(idle[..count].iter().map(DriverSlot::id).collect())
        } else {
            Acquired::NotYet {
                available: idle.len(),
            }
        }
    }

    fn name(&self) -> &'static str {
        "pool"
    }
}

/// Starts `loadwave-driver` processes, one per driver, dedicated to the test. A driver's
/// handle is its process id; one that exits with a failure before its test ends is
/// reported by [`Launcher::inspect`].
#[derive(Debug)]
pub struct ProcessLauncher {
    /// The driver binary.
    pub driver_bin: PathBuf,
    /// Passed to the drivers (brokers, prefix, auth and raw options).
    pub kafka: KafkaArgs,
    /// Where the drivers' logs go (`{dir}/{driver_id}.log`); discarded when unset.
    pub log_dir: Option<PathBuf>,
    exits: Arc<Mutex<HashMap<String, String>>>,
}

impl ProcessLauncher {
    /// A launcher of `driver_bin` processes.
    pub fn new(driver_bin: PathBuf, kafka: KafkaArgs, log_dir: Option<PathBuf>) -> Self {
        ProcessLauncher {
            driver_bin,
            kafka,
            log_dir,
            exits: Arc::default(),
        }
    }

    /// The `loadwave-driver` next to the running executable.
    pub fn sibling_driver_bin() -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("loadwave-driver")))
            .unwrap_or_else(|| PathBuf::from("loadwave-driver"))
    }
}

#[async_trait]
impl Launcher for ProcessLauncher {
    async fn acquire(&self, test_id: &str, count: usize, _idle: &[String]) -> Acquired {
        let mut started: Vec<(String, tokio::process::Child)> = Vec::with_capacity(count);
        for i in 1..=count {
            let driver_id = format!("{test_id}-{i}");
            let output = match &self.log_dir {
                Some(dir) => match std::fs::File::create(dir.join(format!("{driver_id}.log"))) {
                    Ok(f) => Stdio::from(f),
                    Err(_) => Stdio::null(),
                },
                None => Stdio::null(),
            };
            let spawned = tokio::process::Command::new(&self.driver_bin)
                .args(self.kafka.to_args())
                .args(["--test-id", test_id])
                .args(["--driver-id", &driver_id])
                // A driver never needs the API's token: it talks to Kafka only.
                .env_remove("LOADWAVE_TOKEN")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(output)
                .kill_on_drop(true)
                .spawn();
            match spawned {
                Ok(child) => started.push((driver_id, child)),
                Err(err) => {
                    // Dropping the children kills the ones already started.
                    drop(started);
                    return Acquired::Failed(format!(
                        "cannot start {}: {err}",
                        self.driver_bin.display()
                    ));
                }
            }
        }
        let mut slots = Vec::with_capacity(count);
        for (driver_id, mut child) in started {
            let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
            slots.push(DriverSlot {
                id: driver_id,
                handle: Some(pid.clone()),
            });
            let exits = self.exits.clone();
            // Reap it when it exits; it outlives nothing but its test.
            tokio::spawn(async move {
                if let Ok(status) = child.wait().await
                    && !status.success()
                {
                    exits
                        .lock()
                        .expect("exits lock")
                        .insert(pid, format!("driver process {status}"));
                }
            });
        }
        Acquired::Drivers(slots)
    }

    async fn inspect(&self, drivers: &[DriverSlot]) -> Vec<(String, String)> {
        let exits = self.exits.lock().expect("exits lock");
        drivers
            .iter()
            .filter_map(|d| d.handle.as_ref())
            .filter_map(|h| exits.get(h).map(|why| (h.clone(), why.clone())))
            .collect()
    }

    fn name(&self) -> &'static str {
        "process"
    }
}

/// The ECS launcher's settings, from the environment (the same names in the Lambda
/// functions and for `--launcher ecs` on a laptop).
#[derive(Debug, Clone)]
pub struct EcsConfig {
    /// `LOADWAVE_ECS_CLUSTER`: cluster name or ARN.
    pub cluster: String,
    /// `LOADWAVE_ECS_TASK_DEFINITION`: the driver's task definition (family, or
    /// family:revision, or ARN).
    pub task_definition: String,
    /// `LOADWAVE_ECS_SUBNETS`: comma-separated subnet ids (awsvpc).
    pub subnets: Vec<String>,
    /// `LOADWAVE_ECS_SECURITY_GROUPS`: comma-separated security group ids.
    pub security_groups: Vec<String>,
    /// `LOADWAVE_ECS_CAPACITY_PROVIDER`: `FARGATE` (default) or `FARGATE_SPOT`.
    pub capacity_provider: String,
    /// `LOADWAVE_ECS_CONTAINER`: the container whose environment is overridden
    /// (default `driver`).
    pub container: String,
    /// What the drivers need to reach Kafka, passed in the task's overrides.
    pub kafka: KafkaArgs,
}

/// Tasks per `RunTask` call: the API's limit.
pub const RUN_TASK_BATCH: usize = 10;

impl EcsConfig {
    /// Reads the `LOADWAVE_ECS_*` variables; names the first one missing or wrong.
    pub fn from_env(kafka: KafkaArgs) -> Result<EcsConfig, String> {
        let var = |name: &str| -> Result<String, String> {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| format!("{name} is not set (the ECS launcher needs it)"))
        };
        let list = |name: &str| -> Result<Vec<String>, String> {
            Ok(var(name)?
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect())
        };
        let capacity_provider = std::env::var("LOADWAVE_ECS_CAPACITY_PROVIDER")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "FARGATE".to_string());
        if !["FARGATE", "FARGATE_SPOT"].contains(&capacity_provider.as_str()) {
            return Err(format!(
                "LOADWAVE_ECS_CAPACITY_PROVIDER `{capacity_provider}` is not FARGATE or FARGATE_SPOT"
            ));
        }
        Ok(EcsConfig {
            cluster: var("LOADWAVE_ECS_CLUSTER")?,
            task_definition: var("LOADWAVE_ECS_TASK_DEFINITION")?,
            subnets: list("LOADWAVE_ECS_SUBNETS")?,
            security_groups: list("LOADWAVE_ECS_SECURITY_GROUPS")?,
            capacity_provider,
            container: std::env::var("LOADWAVE_ECS_CONTAINER")
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "driver".to_string()),
            kafka,
        })
    }

    /// The environment a driver task gets: serve this test, reach Kafka like this.
    pub fn driver_environment(&self, test_id: &str) -> Vec<(String, String)> {
        vec![
            ("LOADWAVE_TEST_ID".into(), test_id.into()),
            ("KAFKA_BROKERS".into(), self.kafka.brokers.clone()),
            (
                "LOADWAVE_TOPIC_PREFIX".into(),
                self.kafka.topic_prefix.clone(),
            ),
            (
                "LOADWAVE_KAFKA_AUTH".into(),
                self.kafka.kafka_auth.as_str().into(),
            ),
            (
                "LOADWAVE_KAFKA_REPLICATION".into(),
                self.kafka.kafka_replication.to_string(),
            ),
        ]
    }
}

/// Runs drivers as ECS tasks. Each task serves one test (`--test-id` mode, set through
/// its container overrides) and takes the task id as its driver id.
#[derive(Debug, Clone)]
pub struct EcsLauncher {
    client: aws_sdk_ecs::Client,
    config: EcsConfig,
}

impl EcsLauncher {
    /// Over a client built once per process.
    pub fn new(client: aws_sdk_ecs::Client, config: EcsConfig) -> Self {
        EcsLauncher { client, config }
    }

    /// A client from the standard AWS configuration (`AWS_REGION`, credentials,
    /// `AWS_ENDPOINT_URL`).
    pub async fn from_env(config: EcsConfig) -> Self {
        let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        EcsLauncher::new(aws_sdk_ecs::Client::new(&aws), config)
    }

    /// Starts `count` tasks; on failure, the reason and the tasks that did start.
    async fn run_batch(
        &self,
        test_id: &str,
        count: usize,
    ) -> Result<Vec<String>, (String, Vec<String>)> {
        let overrides = TaskOverride::builder()
            .container_overrides(
                ContainerOverride::builder()
                    .name(&self.config.container)
                    .set_environment(Some(
                        self.config
                            .driver_environment(test_id)
                            .into_iter()
                            .map(|(k, v)| KeyValuePair::builder().name(k).value(v).build())
                            .collect(),
                    ))
                    .build(),
            )
            .build();
        let network = NetworkConfiguration::builder()
            .awsvpc_configuration(
                AwsVpcConfiguration::builder()
                    .set_subnets(Some(self.config.subnets.clone()))
                    .set_security_groups(Some(self.config.security_groups.clone()))
                    .assign_public_ip(AssignPublicIp::Disabled)
                    .build()
                    .map_err(|e| (e.to_string(), Vec::new()))?,
            )
            .build();
        let out = self
            .client
            .run_task()
            .cluster(&self.config.cluster)
            .task_definition(&self.config.task_definition)
            .count(count as i32)
            .capacity_provider_strategy(
                CapacityProviderStrategyItem::builder()
                    .capacity_provider(&self.config.capacity_provider)
                    .weight(1)
                    .build()
                    .map_err(|e| (e.to_string(), Vec::new()))?,
            )
            .network_configuration(network)
            .overrides(overrides)
            .started_by(format!("loadwave-{}", &test_id[..test_id.len().min(27)]))
            .send()
            .await
            .map_err(|e| (format!("RunTask failed: {}", aws_error(&e)), Vec::new()))?;
        let arns: Vec<String> = out
            .tasks()
            .iter()
            .filter_map(|t| t.task_arn().map(str::to_string))
            .collect();
        let failures: Vec<String> = out
            .failures()
            .iter()
            .map(|f| {
                format!(
                    "{} ({})",
                    f.reason().unwrap_or("unknown"),
                    f.detail().unwrap_or("no detail")
                )
            })
            .collect();
        if !failures.is_empty() || arns.len() != count {
            // Hand back what did start so the caller stops it.
            let reason = format!(
                "RunTask started {} of {count} tasks: {}",
                arns.len(),
                failures.join("; ")
            );
            return Err((reason, arns));
        }
        Ok(arns)
    }

    async fn stop(&self, arns: &[String], reason: &str) {
        for arn in arns {
            if let Err(e) = self
                .client
                .stop_task()
                .cluster(&self.config.cluster)
                .task(arn)
                .reason(reason)
                .send()
                .await
            {
                tracing::warn!(task = %arn, error = %aws_error(&e), "StopTask failed");
            }
        }
    }
}

/// The message of an SDK error, with the service's code when there is one.
fn aws_error<E: std::error::Error + 'static>(err: &E) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[async_trait]
impl Launcher for EcsLauncher {
    async fn acquire(&self, test_id: &str, count: usize, _idle: &[String]) -> Acquired {
        let mut arns: Vec<String> = Vec::with_capacity(count);
        let mut left = count;
        while left > 0 {
            let n = left.min(RUN_TASK_BATCH);
            match self.run_batch(test_id, n).await {
                Ok(batch) => arns.extend(batch),
                Err((reason, partial)) => {
                    // A partial launch helps nobody: stop what started, fail the test.
                    arns.extend(partial);
                    self.stop(&arns, "loadwave: the test could not get all its drivers")
                        .await;
                    return Acquired::Failed(format!(
                        "could not start {count} driver tasks on ECS cluster {}: {reason}",
                        self.config.cluster
                    ));
                }
            }
            left -= n;
        }
        tracing::info!(test_id, tasks = arns.len(), "driver tasks started");
        Acquired::Drivers(
            arns.into_iter()
                .map(|arn| DriverSlot {
                    id: ecs_task_driver_id(&arn),
                    handle: Some(arn),
                })
                .collect(),
        )
    }

    async fn release(&self, test_id: &str, drivers: &[DriverSlot]) {
        let arns: Vec<String> = drivers.iter().filter_map(|d| d.handle.clone()).collect();
        tracing::info!(test_id, tasks = arns.len(), "stopping driver tasks");
        self.stop(&arns, "loadwave: test ended").await;
    }

    async fn inspect(&self, drivers: &[DriverSlot]) -> Vec<(String, String)> {
        let arns: Vec<String> = drivers.iter().filter_map(|d| d.handle.clone()).collect();
        let mut gone = Vec::new();
        for chunk in arns.chunks(100) {
            let out = match self
                .client
                .describe_tasks()
                .cluster(&self.config.cluster)
                .set_tasks(Some(chunk.to_vec()))
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    tracing::warn!(error = %aws_error(&e), "DescribeTasks failed");
                    continue;
                }
            };
            for task in out.tasks() {
                if task.last_status() != Some("STOPPED") {
                    continue;
                }
                let Some(arn) = task.task_arn() else { continue };
                let mut reason = task
                    .stopped_reason()
                    .unwrap_or("the task stopped")
                    .to_string();
                if let Some(code) = task
                    .containers()
                    .iter()
                    .find(|c| c.name() == Some(self.config.container.as_str()))
                    .and_then(|c| c.exit_code())
                {
                    reason.push_str(&format!(" (exit code {code})"));
                }
                gone.push((arn.to_string(), format!("ECS task stopped: {reason}")));
            }
        }
        gone
    }

    fn name(&self) -> &'static str {
        "ecs"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pool_takes_the_oldest_idle_drivers_or_waits() {
        let idle: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(
            PoolLauncher.acquire("t", 2, &idle).await,
            Acquired::Drivers(vec![DriverSlot::id("a"), DriverSlot::id("b")])
        );
        assert_eq!(
            PoolLauncher.acquire("t", 4, &idle).await,
            Acquired::NotYet { available: 3 }
        );
    }

    fn kafka() -> KafkaArgs {
        KafkaArgs {
            brokers: "127.0.0.1:1".into(),
            topic_prefix: "p.".into(),
            kafka_auth: loadwave_kafka::KafkaAuth::None,
            kafka_replication: 1,
            kafka_options: vec!["client.id=x".into()],
        }
    }

    #[tokio::test]
    async fn a_missing_driver_binary_fails_the_test_with_its_path() {
        let launcher = ProcessLauncher::new("/nonexistent/loadwave-driver".into(), kafka(), None);
        match launcher.acquire("t", 1, &[]).await {
            Acquired::Failed(reason) => assert!(reason.contains("/nonexistent/loadwave-driver")),
            other => panic!("{other:?}"),
        }
    }

    /// Drivers get every Kafka setting, raw options included, and a driver that exits
    /// with a failure is reported with its status.
    #[tokio::test]
    async fn started_drivers_get_the_kafka_options_and_failed_exits_are_reported() {
        let dir = std::env::temp_dir().join(format!("lw-launch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("fake-driver.sh");
        std::fs::write(&script, "#!/bin/sh\necho \"$@\" >&2\nexit 3\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let launcher = ProcessLauncher::new(script, kafka(), Some(dir.clone()));
        let Acquired::Drivers(slots) = launcher.acquire("t9", 2, &[]).await else {
            panic!("drivers expected")
        };
        assert_eq!(slots.len(), 2);
        let mut gone = Vec::new();
        for _ in 0..100 {
            gone = launcher.inspect(&slots).await;
            if gone.len() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(gone.len(), 2, "{gone:?}");
        assert!(gone[0].1.contains("exit status: 3"), "{gone:?}");
        let args = std::fs::read_to_string(dir.join("t9-1.log")).unwrap();
        for want in [
            "--kafka-option client.id=x",
            "--topic-prefix p.",
            "--test-id t9",
            "--driver-id t9-1",
            "--kafka-auth none",
        ] {
            assert!(args.contains(want), "{want} missing from {args}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn ecs_settings_name_the_missing_variable() {
        // SAFETY: this test owns the LOADWAVE_ECS_* variables.
        unsafe {
            for v in [
                "LOADWAVE_ECS_CLUSTER",
                "LOADWAVE_ECS_TASK_DEFINITION",
                "LOADWAVE_ECS_SUBNETS",
                "LOADWAVE_ECS_SECURITY_GROUPS",
                "LOADWAVE_ECS_CAPACITY_PROVIDER",
                "LOADWAVE_ECS_CONTAINER",
            ] {
                std::env::remove_var(v);
            }
            std::env::set_var("LOADWAVE_ECS_CLUSTER", "c");
        }
        let err = EcsConfig::from_env(kafka()).unwrap_err();
        assert!(err.contains("LOADWAVE_ECS_TASK_DEFINITION"), "{err}");
        unsafe {
            std::env::set_var("LOADWAVE_ECS_TASK_DEFINITION", "td");
            std::env::set_var("LOADWAVE_ECS_SUBNETS", "subnet-1, subnet-2");
            std::env::set_var("LOADWAVE_ECS_SECURITY_GROUPS", "sg-1");
            std::env::set_var("LOADWAVE_ECS_CAPACITY_PROVIDER", "SPOT");
        }
        let err = EcsConfig::from_env(kafka()).unwrap_err();
        assert!(err.contains("LOADWAVE_ECS_CAPACITY_PROVIDER"), "{err}");
        unsafe { std::env::set_var("LOADWAVE_ECS_CAPACITY_PROVIDER", "FARGATE_SPOT") };
        let c = EcsConfig::from_env(kafka()).unwrap();
        assert_eq!(c.subnets, ["subnet-1", "subnet-2"]);
        assert_eq!(c.container, "driver");
        let env = c.driver_environment("t1");
        assert!(env.contains(&("LOADWAVE_TEST_ID".into(), "t1".into())));
        assert!(env.contains(&("KAFKA_BROKERS".into(), "127.0.0.1:1".into())));
    }
}
