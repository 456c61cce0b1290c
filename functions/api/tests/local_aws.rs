//! `make local-aws` end to end: the real `loadwave-lambda-api` and
//! `loadwave-lambda-controller` binaries under AWS's runtime interface emulator, API
//! Gateway v2 events from our front, MSK-shaped batches and the schedule from our bridge,
//! moto for S3 and ECS, a real Kafka broker for MSK, and one real `loadwave-driver`
//! process per ECS task. Tests go through the HTTP API as a user's would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use loadwave_testkit::free_port;
use serde_json::{Value, json};

/// The stack of `scripts/local-aws.sh`, on free ports and its own state folder; brought
/// down when dropped.
struct Stack {
    env: Vec<(String, String)>,
    root: PathBuf,
    state: PathBuf,
    api: String,
    target: String,
}

impl Stack {
    fn up() -> Stack {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .unwrap();
        let bin_dir =
            loadwave_testkit::bin(env!("CARGO_BIN_EXE_loadwave-lambda-api"), "loadwave-driver")
                .parent()
                .unwrap()
                .to_path_buf();
        let state = std::env::temp_dir().join(format!("lw-local-aws-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let (api, target) = (free_port(), free_port());
        let env: Vec<(String, String)> = [
            ("LOADWAVE_BIN_DIR", bin_dir.display().to_string()),
            ("LOCAL_AWS_NO_DEMO", "1".into()),
            ("LOCAL_AWS_STATE_DIR", state.display().to_string()),
            ("LOCAL_AWS_API_PORT", api.to_string()),
            ("LOCAL_AWS_TARGET_PORT", target.to_string()),
            ("LOCAL_AWS_KAFKA_PORT", "19292".into()),
            ("LOCAL_AWS_MOTO_PORT", free_port().to_string()),
            ("LOCAL_AWS_API_RIE_PORT", "19301".into()),
            ("LOCAL_AWS_CONTROLLER_RIE_PORT", "19302".into()),
            (
                "LOCAL_AWS_TOPIC_PREFIX",
                format!("e2e{}.", std::process::id()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let stack = Stack {
            env,
            root,
            state,
            api: format!("http://127.0.0.1:{api}"),
            target: format!("http://127.0.0.1:{target}"),
        };
        let status = stack.script("up");
        assert!(
            status,
            "local-aws.sh up failed; logs in {}",
            stack.state.display()
        );
        stack
    }

    fn script(&self, action: &str) -> bool {
        Command::new("bash")
            .arg(self.root.join("scripts/local-aws.sh"))
            .arg(action)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.root)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn post(&self, spec: Value) -> Value {
        let mut response = ureq::post(&format!("{}/tests", self.api))
            .send_json(spec)
            .expect("POST /tests through API Gateway → Lambda");
        assert_eq!(response.status().as_u16(), 201);
        response.body_mut().read_json().unwrap()
    }

    fn get(&self, path: &str) -> Value {
        ureq::get(&format!("{}{path}", self.api))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .body_mut()
            .read_json()
            .unwrap()
    }

    /// Polls `GET /tests/{id}` until `done` holds (two minutes at most).
    fn wait(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let view = self.get(&format!("/tests/{id}"));
            if done(&view) {
                return view;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "test {id} not {what} within 2 minutes: {view}; logs in {}",
                self.state.display()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn target_requests(&self) -> u64 {
        ureq::get(&format!("{}/metrics", self.target))
            .call()
            .unwrap()
            .body_mut()
            .read_json::<Value>()
            .unwrap()["requests"]
            .as_u64()
            .unwrap()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.script("down");
    }
}

fn finished(view: &Value) -> bool {
    matches!(
        view["status"].as_str(),
        Some("completed" | "failed" | "stopped")
    )
}

#[test]
fn the_lambda_path_counts_exactly_and_names_a_stopped_task() {
    let stack = Stack::up();
    let health = stack.get("/healthz");
    assert_eq!(health["launcher"], "ecs", "{health}");

    let ping = format!("{}/ping", stack.target);
    let avalanche = stack.post(json!({
        "name": "e2e avalanche", "target_url": ping, "test_type": "avalanche",
        "drivers": 3, "requests_per_driver": 3000, "concurrency": 8,
    }));
    let id = avalanche["id"].as_str().unwrap().to_string();
    let view = stack.wait(&id, "finished", finished);
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["summary"]["requests"], 9_000);
    assert_eq!(view["drivers"].as_array().unwrap().len(), 3);
    assert!(
        view["drivers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["id"].as_str().unwrap().starts_with("task-"))
    );

    let tsunami = stack.post(json!({
        "name": "e2e tsunami", "target_url": ping, "test_type": "tsunami",
        "drivers": 2, "requests_per_driver": 150, "concurrency": 4, "delay_ms": 5,
    }));
    let tid = tsunami["id"].as_str().unwrap().to_string();
    let view = stack.wait(&tid, "finished", finished);
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["summary"]["requests"], 300);
    assert_eq!(
        stack.target_requests(),
        9_300,
        "the target's own count equals the summaries'"
    );
    let list = stack.get("/tests");
    assert_eq!(list.as_array().unwrap().len(), 2);
    let report = ureq::get(&format!("{}/tests/{id}/report", stack.api))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        report.contains("<svg") || report.contains("<html"),
        "an HTML report"
    );

    // A long Tsunami; one driver's process dies mid-test. The watcher marks its task
    // STOPPED (as ECS does), the schedule's DescribeTasks finds it, and the driver is
    // lost with the task's stop reason while the other's data is kept.
    let long = stack.post(json!({
        "name": "e2e lost", "target_url": ping, "test_type": "tsunami",
        "drivers": 2, "requests_per_driver": 4000, "concurrency": 4, "delay_ms": 5,
    }));
    let lid = long["id"].as_str().unwrap().to_string();
    let running = stack.wait(&lid, "sending", |v| {
        v["status"] == "running" && v["summary"]["requests"].as_u64().unwrap_or(0) > 200
    });
    let victim = running["drivers"][0]["id"].as_str().unwrap().to_string();
    let task_id = victim.trim_start_matches("task-");
    let tasks: Value = serde_json::from_str(
        &std::fs::read_to_string(stack.state.join("drivers/tasks.json")).unwrap(),
    )
    .unwrap();
    let pid = tasks
        .as_object()
        .unwrap()
        .values()
        .find(|t| t["task_id"] == task_id)
        .and_then(|t| t["pid"].as_u64())
        .expect("the victim's process in tasks.json");
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let view = stack.wait(&lid, "finished", finished);
    assert_eq!(view["status"], "completed", "{view}");
    let lost = view["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == victim.as_str())
        .unwrap();
    assert_eq!(lost["state"], "lost", "{view}");
    assert!(
        lost["note"]
            .as_str()
            .unwrap_or_default()
            .contains("Essential container in task exited"),
        "{lost}"
    );
    assert!(lost["missing_requests"].as_u64().unwrap() > 0);
    let other = view["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] != victim.as_str())
        .unwrap();
    assert_eq!(other["state"], "completed");
    assert_eq!(other["requests"], 4_000);
    assert_eq!(view["verdict"]["passed"], false);
}
