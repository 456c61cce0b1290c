//! Finding drivers for a test: one trait, one implementation per way drivers exist.
//!
//! - [`PoolLauncher`]: drivers that are already up (started by hand, by `make local`, by
//!   compose replicas — the original system's model); a test takes idle ones.
//! - [`ProcessLauncher`]: starts one `loadwave-driver --test-id` process per driver on
//!   this machine; they exit when the test is done.
//!
//! ECS Fargate tasks are the third implementation, with the AWS deployment.

use std::path::PathBuf;
use std::process::Stdio;

use async_trait::async_trait;

/// What a launcher made of a request for drivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// These drivers are the test's. They will register and confirm its configuration.
    Drivers(Vec<String>),
    /// Not enough drivers right now; ask again later.
    NotYet {
        /// Drivers that would have been available.
        available: usize,
    },
    /// Drivers cannot be had; the test fails with this reason.
    Failed(String),
}

/// Finds or starts drivers.
#[async_trait]
pub trait Launcher: Send + Sync + 'static {
    /// Drivers for `test_id`: `count` of them. `idle` lists the pool drivers that are
    /// alive, idle and not held by another test, oldest first.
    async fn acquire(&self, test_id: &str, count: usize, idle: &[String]) -> Acquired;

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
            Acquired::Drivers(idle[..count].to_vec())
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

/// Starts `loadwave-driver` processes, one per driver, dedicated to the test.
#[derive(Debug)]
pub struct ProcessLauncher {
    /// The driver binary.
    pub driver_bin: PathBuf,
    /// Passed to the drivers.
    pub brokers: String,
    /// Passed to the drivers.
    pub topic_prefix: String,
    /// Where the drivers' logs go (`{dir}/{driver_id}.log`); discarded when unset.
    pub log_dir: Option<PathBuf>,
}

impl ProcessLauncher {
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
        let mut ids = Vec::with_capacity(count);
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
                .args(["--brokers", &self.brokers])
                .args(["--topic-prefix", &self.topic_prefix])
                .args(["--test-id", test_id])
                .args(["--driver-id", &driver_id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(output)
                .spawn();
            match spawned {
                Ok(mut child) => {
                    // Reap it when it exits; it outlives nothing but its test.
                    tokio::spawn(async move {
                        let _ = child.wait().await;
                    });
                    ids.push(driver_id);
                }
                Err(err) => {
                    return Acquired::Failed(format!(
                        "cannot start {}: {err}",
                        self.driver_bin.display()
                    ));
                }
            }
        }
        Acquired::Drivers(ids)
    }

    fn name(&self) -> &'static str {
        "process"
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
            Acquired::Drivers(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            PoolLauncher.acquire("t", 4, &idle).await,
            Acquired::NotYet { available: 3 }
        );
    }

    #[tokio::test]
    async fn a_missing_driver_binary_fails_the_test_with_its_path() {
        let launcher = ProcessLauncher {
            driver_bin: PathBuf::from("/nonexistent/loadwave-driver"),
            brokers: "127.0.0.1:1".into(),
            topic_prefix: String::new(),
            log_dir: None,
        };
        match launcher.acquire("t", 1, &[]).await {
            Acquired::Failed(reason) => assert!(reason.contains("/nonexistent/loadwave-driver")),
            other => panic!("{other:?}"),
        }
    }
}
