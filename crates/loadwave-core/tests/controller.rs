//! The controller core: registry, several tests at once, acknowledgements, re-delivered
//! and reordered batches, launcher answers.

use loadwave_core::{
    Acquired, ControllerCore, ControllerOptions, DriverPhase, DriverSlot, TestState, TestStatus,
};
use loadwave_proto::{Activity, Message, TestSpec, Tick, Topic, TriggerAction};
use loadwave_testkit::messages::{heartbeat, register, report};

const T0: u64 = 1_700_000_000_000;

fn spec(drivers: u32, requests: u64) -> TestSpec {
    let json = serde_json::json!({
        "target_url": "http://127.0.0.1:9/ping",
        "test_type": "avalanche",
        "drivers": drivers,
        "requests_per_driver": requests,
    });
    TestSpec::from_json(json.to_string().as_bytes()).unwrap()
}

/// A core holding pending test `id` whose drivers are `drivers` (assigned at `T0`).
fn with_test(core: &mut ControllerCore, id: &str, drivers: &[&str]) {
    let state = core.new_test(id, spec(drivers.len() as u32, 100), T0);
    core.insert(state, T0);
    let requests = core.driver_requests();
    assert!(
        requests
            .iter()
            .any(|r| r.test_id == id && r.count == drivers.len())
    );
    let slots = drivers.iter().map(|d| DriverSlot::id(*d)).collect();
    assert!(
        core.drivers_acquired(id, Acquired::Drivers(slots), T0)
            .is_empty()
    );
}

/// Writes every due snapshot, as a shell does after a step.
fn persist_all(core: &mut ControllerCore, now: u64) {
    for snapshot in core.snapshots_due(now, true, &format!("n{now}")) {
        core.snapshot_written(&snapshot, now);
    }
}

fn start(core: &mut ControllerCore, id: &str, drivers: &[&str], at: u64) {
    let configs = core
        .poll(at)
        .into_iter()
        .filter(|m| matches!(m, Message::TestConfig(c) if c.test_id == id))
        .count();
    assert!(
        configs == drivers.len() || configs == 0,
        "one configuration per driver"
    );
    for d in drivers {
        core.ingest(&register(d, Some(id)), at);
    }
    let out = core.poll(at);
    assert!(
        out.iter().any(|m| matches!(m, Message::Trigger(t) if t.test_id == id && matches!(t.action, TriggerAction::Start { .. }))),
        "{out:?}"
    );
    assert_eq!(core.test(id).unwrap().status(), TestStatus::Running);
}

/// Two tests run at once; each second both change and both are written. Deliveries
/// become acknowledgeable every second instead of waiting for both tests to be clean at
/// the same instant (the old controller never acknowledged anything then).
#[test]
fn overlapping_tests_do_not_hold_acknowledgements_back() {
    let mut core = ControllerCore::new(ControllerOptions::default());
    with_test(&mut core, "a", &["a1"]);
    with_test(&mut core, "b", &["b1"]);
    start(&mut core, "a", &["a1"], T0);
    start(&mut core, "b", &["b1"], T0);
    persist_all(&mut core, T0);

    let mut acked_through = 0;
    for second in 0..5u64 {
        let now = T0 + 1_000 * (second + 1);
        // A report for a, then one for b: the tickets of this second.
        let ta = core.ingest_payload(
            Topic::Metrics,
            &report("a", "a1", second, false, 10).encode(),
            now,
        );
        let tb = core.ingest_payload(
            Topic::Metrics,
            &report("b", "b1", second, false, 10).encode(),
            now,
        );
        assert!(tb > ta);
        // The other test keeps moving.
        core.ingest(
            &heartbeat("b1", Some("b"), now + 500, Activity::Running),
            now + 500,
        );
        // Nothing written yet: neither may be acknowledged.
        assert!(core.ack_watermark() < ta);
        // Only a's snapshot is due first (as if b's write were slow): a's delivery may
        // go, b's may not.
        let due = core.snapshots_due(now, true, "n");
        let a = due.iter().find(|s| s.id == "a").unwrap();
        core.snapshot_written(a, now);
        assert!(
            core.ack_watermark() >= ta,
            "a's report acknowledgeable once a is written"
        );
        assert!(core.ack_watermark() < tb);
        persist_all(&mut core, now);
        assert!(core.ack_watermark() >= tb);
        assert!(core.ack_watermark() > acked_through);
        acked_through = core.ack_watermark();
    }
    assert_eq!(core.test("a").unwrap().total().requests, 50);
}

/// A change that arrives while a snapshot is being written stays dirty.
#[test]
fn a_change_during_a_write_keeps_the_test_dirty() {
    let mut core = ControllerCore::new(ControllerOptions::default());
    with_test(&mut core, "a", &["a1"]);
    start(&mut core, "a", &["a1"], T0);
    let snapshot = core.snapshots_due(T0, true, "n").pop().unwrap();
    let ticket = core.ingest_payload(Topic::Metrics, &report("a", "a1", 0, false, 3).encode(), T0);
    core.snapshot_written(&snapshot, T0);
    assert!(!core.is_clean());
    assert!(core.ack_watermark() < ticket);
    persist_all(&mut core, T0);
    assert!(core.is_clean());
    assert!(core.ack_watermark() >= ticket);
}

/// The same batch twice, and in reverse order: the same result, and duplicates counted.
#[test]
fn redelivered_and_reordered_batches_change_nothing() {
    let batch: Vec<Message> = (0..4)
        .map(|seq| report("a", "a1", seq, seq == 3, 25))
        .chain((0..4).map(|seq| report("b", "b1", seq, seq == 3, 5)))
        .collect();
    let run = |order: &[Message], times: usize| {
        let mut core = ControllerCore::new(ControllerOptions::default());
        with_test(&mut core, "a", &["a1"]);
        with_test(&mut core, "b", &["b1"]);
        start(&mut core, "a", &["a1"], T0);
        start(&mut core, "b", &["b1"], T0);
        for _ in 0..times {
            for m in order {
                core.ingest(m, T0 + 4_000);
            }
        }
        core.poll(T0 + 4_000);
        core
    };
    let once = run(&batch, 1);
    let mut reversed = batch.clone();
    reversed.reverse();
    let twice_reversed = run(&reversed, 2);
    for id in ["a", "b"] {
        let (x, y) = (once.test(id).unwrap(), twice_reversed.test(id).unwrap());
        assert_eq!(x.status(), TestStatus::Completed, "{id}");
        assert_eq!(y.status(), TestStatus::Completed, "{id}");
        assert_eq!(x.total().requests, y.total().requests, "{id}");
        assert_eq!(
            x.view().summary.latency_ms.p99,
            y.view().summary.latency_ms.p99,
            "{id}"
        );
        assert_eq!(
            y.duplicates(),
            4,
            "{id}: every re-delivered report counted once"
        );
    }
    assert_eq!(once.test("a").unwrap().total().requests, 100);
    assert_eq!(once.test("b").unwrap().total().requests, 20);
}

/// Garbage and messages for unknown tests are counted and skipped.
#[test]
fn malformed_and_unknown_messages_are_counted() {
    let mut core = ControllerCore::new(ControllerOptions::default());
    core.ingest_payload(Topic::Metrics, b"\x00garbage", T0);
    core.ingest_payload(
        Topic::Metrics,
        &report("nope", "x", 0, true, 1).encode(),
        T0,
    );
    assert_eq!(core.stats().malformed, 1);
    assert_eq!(core.stats().unknown_test, 1);
    assert!(core.is_clean());
}

/// The registry: idle pool drivers are offered, held ones are not, silent ones go lost.
#[test]
fn the_registry_offers_idle_drivers_only() {
    let mut core = ControllerCore::new(ControllerOptions::default());
    for d in ["p1", "p2", "p3"] {
        core.ingest(&register(d, None), T0);
        core.ingest(&heartbeat(d, None, T0, Activity::Idle), T0);
    }
    assert_eq!(core.idle_drivers(T0), ["p1", "p2", "p3"]);
    with_test(&mut core, "a", &["p1", "p2"]);
    assert_eq!(core.idle_drivers(T0), ["p3"]);
    // 4 s later only p3 was heard from again.
    core.ingest(
        &heartbeat("p3", None, T0 + 4_000, Activity::Idle),
        T0 + 4_000,
    );
    let drivers = core.drivers(T0 + 4_000);
    let state = |id: &str| drivers.iter().find(|d| d.id == id).unwrap().state.clone();
    assert_eq!(state("p1"), "lost");
    assert_eq!(state("p3"), "idle");
}

/// A launcher that has too few drivers: asked again until the wait is over, then the
/// test fails naming the counts; drivers that arrive for a stopped test are handed back.
#[test]
fn launcher_answers_drive_the_test() {
    let options = ControllerOptions::default();
    let mut core = ControllerCore::new(options);
    let state = core.new_test("a", spec(2, 10), T0);
    core.insert(state, T0);
    assert_eq!(core.driver_requests().len(), 1);
    assert!(core.driver_requests().is_empty(), "handed out once");
    core.drivers_acquired("a", Acquired::NotYet { available: 1 }, T0 + 1_000);
    assert_eq!(core.test("a").unwrap().status(), TestStatus::Pending);
    assert_eq!(core.driver_requests().len(), 1, "asked again");
    let late = T0 + options.driver_wait_ms + 1;
    core.drivers_acquired("a", Acquired::NotYet { available: 1 }, late);
    let view = core.view("a").unwrap();
    assert_eq!(view.status, TestStatus::Failed);
    assert!(view.error.unwrap().contains("needs 2 drivers, but only 1"));

    let state = core.new_test("b", spec(1, 10), T0);
    core.insert(state, T0);
    core.driver_requests();
    core.request_stop("b", T0).unwrap();
    let unused = core.drivers_acquired(
        "b",
        Acquired::Drivers(vec![DriverSlot {
            id: "task-1".into(),
            handle: Some("arn:task/1".into()),
        }]),
        T0,
    );
    assert_eq!(unused.len(), 1, "a stopped test's drivers are released");
}

/// A running driver whose task stopped is lost a heartbeat timeout later with the reason; the test ends with the
/// others' data and names it; a stop is re-sent until drivers act on it.
#[test]
fn a_stopped_task_makes_its_driver_lost_with_the_reason() {
    let mut core = ControllerCore::new(ControllerOptions::default());
    let state = core.new_test("a", spec(2, 10), T0);
    core.insert(state, T0);
    core.driver_requests();
    let slots = vec![
        DriverSlot {
            id: "task-1".into(),
            handle: Some("arn:task/1".into()),
        },
        DriverSlot {
            id: "task-2".into(),
            handle: Some("arn:task/2".into()),
        },
    ];
    core.drivers_acquired("a", Acquired::Drivers(slots), T0);
    start(&mut core, "a", &["task-1", "task-2"], T0);
    core.ingest(&report("a", "task-1", 0, true, 10), T0 + 1_000);
    core.driver_gone(
        "a",
        "arn:task/2",
        "ECS task stopped: Essential container in task exited",
    );
    core.poll(T0 + 1_000);
    // Its final report may still be on the way: a heartbeat timeout's grace.
    assert_eq!(core.view("a").unwrap().status, TestStatus::Running);
    core.poll(T0 + 4_100);
    let view = core.view("a").unwrap();
    assert_eq!(view.status, TestStatus::Completed);
    let lost = view.drivers.iter().find(|d| d.id == "task-2").unwrap();
    assert_eq!(lost.state, DriverPhase::Lost);
    assert!(
        lost.note
            .as_deref()
            .unwrap()
            .contains("Essential container")
    );
    let verdict = view.verdict.unwrap();
    assert!(!verdict.passed);
    assert!(
        verdict
            .reasons
            .iter()
            .any(|r| r.contains("task-2") && r.contains("Essential container")),
        "{:?}",
        verdict.reasons
    );
    let finished = core.take_finished();
    assert_eq!(finished.len(), 1);
    assert_eq!(
        finished[0].1.len(),
        2,
        "both tasks handed to the launcher to stop"
    );
    assert_eq!(view.summary.requests, 10);
}

/// A trigger that never reached a driver is re-sent a second later (a publish lost to a
/// crash between writing the state and publishing cannot strand a test).
#[test]
fn triggers_are_resent_until_drivers_act_on_them() {
    let mut core = ControllerCore::new(ControllerOptions::default());
    with_test(&mut core, "a", &["a1"]);
    start(&mut core, "a", &["a1"], T0);
    assert!(core.poll(T0 + 500).is_empty(), "not before a second");
    let again = core.poll(T0 + 1_000);
    assert!(
        matches!(&again[..], [Message::Trigger(t)] if matches!(t.action, TriggerAction::Start { .. }))
    );
    // Once the driver says it runs, no more starts.
    core.ingest(
        &heartbeat("a1", Some("a"), T0 + 1_100, Activity::Running),
        T0 + 1_100,
    );
    assert!(core.poll(T0 + 3_000).is_empty());
    // A stop is re-sent while the driver still runs.
    core.request_stop("a", T0 + 3_000).unwrap();
    assert_eq!(core.poll(T0 + 3_000).len(), 1);
    let again = core.poll(T0 + 4_000);
    assert!(matches!(&again[..], [Message::Trigger(t)] if t.action == TriggerAction::Stop));
}

/// A test that ends as it sends its stop (here: stopped while its driver was configured
/// and not yet started) is not polled again; while its driver still says it is configured
/// for it (the stop was lost on the way), the stop goes out again once a second.
#[test]
fn a_finished_tests_stop_is_resent_while_its_driver_still_holds_it() {
    let mut core = ControllerCore::new(ControllerOptions::default());
    with_test(&mut core, "a", &["a1"]);
    core.poll(T0);
    core.ingest(&register("a1", Some("a")), T0);
    core.ingest(
        &heartbeat("a1", Some("a"), T0 + 100, Activity::Configured),
        T0 + 100,
    );
    core.request_stop("a", T0 + 200).unwrap();
    assert_eq!(core.test("a").unwrap().status(), TestStatus::Stopped);
    let stop = |m: &Message| matches!(m, Message::Trigger(t) if t.test_id == "a" && t.action == TriggerAction::Stop);
    // The first stop: the one the shell may lose.
    assert!(core.poll(T0 + 200).iter().any(stop));
    core.ingest(
        &heartbeat("a1", Some("a"), T0 + 1_100, Activity::Configured),
        T0 + 1_100,
    );
    assert!(core.poll(T0 + 1_200).iter().any(stop), "sent again");
    assert!(
        !core.poll(T0 + 1_500).iter().any(stop),
        "at most once a second"
    );
    // Once the driver is idle, nothing more.
    core.ingest(
        &heartbeat("a1", None, T0 + 2_100, Activity::Idle),
        T0 + 2_100,
    );
    assert!(!core.poll(T0 + 2_300).iter().any(stop));
    assert_eq!(core.idle_drivers(T0 + 2_300), vec!["a1".to_string()]);
}

/// Ticks move every running test's bus clock, so silent drivers are found lost.
#[test]
fn ticks_find_silent_drivers() {
    let mut core = ControllerCore::new(ControllerOptions::default());
    with_test(&mut core, "a", &["a1"]);
    start(&mut core, "a", &["a1"], T0);
    for s in 1..=5 {
        core.ingest(
            &Message::Tick(Tick {
                orchestrator_id: "o".into(),
                sent_at_ms: T0 + s * 1_000,
            }),
            T0 + s * 1_000,
        );
        core.poll(T0 + s * 1_000);
    }
    let view = core.view("a").unwrap();
    assert_eq!(view.drivers[0].state, DriverPhase::Lost);
    assert_eq!(view.status, TestStatus::Failed);
    let _: &TestState = core.test("a").unwrap();
}

/// A running test is stopped once it reaches the deployment's maximum duration.
#[test]
fn the_maximum_duration_stops_a_running_test() {
    let options = ControllerOptions {
        limits: loadwave_core::Limits {
            max_duration_s: Some(60),
            ..loadwave_core::Limits::none()
        },
        ..ControllerOptions::default()
    };
    let mut core = ControllerCore::new(options);
    with_test(&mut core, "a", &["a1"]);
    start(&mut core, "a", &["a1"], T0);
    core.ingest(
        &heartbeat("a1", Some("a"), T0 + 1_000, Activity::Running),
        T0 + 1_000,
    );
    let start_at = core.view("a").unwrap().start_at_ms.unwrap();
    assert!(core.poll(start_at + 59_000).is_empty());
    let out = core.poll(start_at + 60_000);
    assert!(
        matches!(&out[..], [Message::Trigger(t)] if t.action == TriggerAction::Stop),
        "{out:?}"
    );
    let mut stopped = report("a", "a1", 0, true, 5);
    if let Message::Metrics(r) = &mut stopped {
        r.stopped = true;
    }
    core.ingest(&stopped, start_at + 60_100);
    core.poll(start_at + 60_100);
    let view = core.view("a").unwrap();
    assert_eq!(view.status, TestStatus::Stopped);
    assert!(view.error.unwrap().contains("LOADWAVE_MAX_DURATION_S"));
}

/// A finished test whose last snapshot is written is held as its list line alone; the list
/// comes in pages, newest first, from those lines.
#[test]
fn finished_tests_are_list_lines_and_the_list_comes_in_pages() {
    let mut core = ControllerCore::new(ControllerOptions::default());
    for id in ["t1", "t2", "t3", "t4", "t5"] {
        with_test(&mut core, id, &[&format!("{id}-d")]);
    }
    start(&mut core, "t5", &["t5-d"], T0);
    for id in ["t1", "t2", "t3"] {
        core.drivers_acquired(id, Acquired::Failed("no tasks".into()), T0);
    }
    persist_all(&mut core, T0);
    for id in ["t1", "t2", "t3"] {
        assert!(core.test(id).is_none(), "{id} left memory");
        assert_eq!(core.summary(id).unwrap().status, TestStatus::Failed);
        assert_eq!(core.is_finished(id), Some(true));
        assert!(matches!(
            core.request_stop(id, T0),
            Err(loadwave_core::StopError::Finished { .. })
        ));
    }
    assert!(core.test("t4").is_some() && core.test("t5").is_some());
    let ids = |items: Vec<loadwave_core::TestListItem>| -> Vec<String> {
        items.into_iter().map(|i| i.id).collect()
    };
    let page = |limit: usize, cursor: Option<&str>| loadwave_core::ListQuery {
        limit: Some(limit),
        cursor: cursor.map(str::to_string),
    };
    assert_eq!(ids(core.list(&page(2, None))), ["t5", "t4"]);
    assert_eq!(ids(core.list(&page(2, Some("t4")))), ["t3", "t2"]);
    assert_eq!(ids(core.list(&page(2, Some("t2")))), ["t1"]);
    assert_eq!(
        ids(core.list(&loadwave_core::ListQuery::default())),
        ["t5", "t4", "t3", "t2", "t1"]
    );
    // Limits outside the range are brought into it.
    assert_eq!(core.list(&page(0, None)).len(), 1);
    assert_eq!(core.test_counts()["failed"], 3);
    // A late report for a test held as a line is dropped quietly.
    core.ingest(&report("t1", "t1-d", 0, true, 1), T0);
    assert_eq!(core.stats().unknown_test, 0);
    assert!(core.is_clean());
}

/// Sealed seconds of a running test leave memory once written and behind every driver;
/// restored from what was written, the test is whole again.
#[test]
fn written_sealed_seconds_leave_memory() {
    let mut core = ControllerCore::new(ControllerOptions::default());
    with_test(&mut core, "a", &["a1"]);
    start(&mut core, "a", &["a1"], T0);
    let start_at = core.test("a").unwrap().view().start_at_ms.unwrap();
    let mut shadow: Option<TestState> = None;
    let mut chunks: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    let seconds = 400u64;
    for second in 0..seconds {
        let now = start_at + (second + 1) * 1_000;
        core.ingest(&heartbeat("a1", Some("a"), now, Activity::Running), now);
        let m = report("a", "a1", second, false, 3);
        core.ingest(&m, now);
        match &mut shadow {
            None => shadow = core.test("a").cloned(),
            Some(s) => {
                s.observe_clock(now);
                s.apply(&m);
            }
        }
        for snapshot in core.snapshots_due(now, true, &format!("n{second}")) {
            for c in &snapshot.chunks {
                chunks.insert(c.name.clone(), c.body.clone());
            }
            core.snapshot_written(&snapshot, now);
        }
    }
    let held = core.test("a").unwrap();
    assert!(!held.is_complete());
    // The window a late bucket may come in (30 s timeout + 120 s), a chunk and the tail.
    let kept = held.view().timeline.len();
    assert!(kept < 200, "{kept} seconds in memory");
    let shadow = shadow.unwrap();
    assert_eq!(held.total().requests, shadow.total().requests);
    // Viewed with the sealed seconds read apart (as `GET /tests/{id}` does, outside the
    // lock), it is the same test, and nothing came back into memory.
    let reader = held.chunk_reader();
    let mut sealed = std::collections::BTreeMap::new();
    for (k, name) in held.unloaded_chunks() {
        sealed.extend(reader.read(k, &chunks[&name]).unwrap());
    }
    assert_eq!(held.view_with_sealed(Some(&sealed)), shadow.view());
    assert!(!held.is_complete());
    // Read back from what was written, it is the same test.
    let unloaded = held.unloaded_chunks();
    for (k, name) in unloaded {
        core.restore_chunk("a", k, &chunks[&name]).unwrap();
    }
    assert!(core.test("a").unwrap().is_complete());
    assert_eq!(core.test("a").unwrap().view(), shadow.view());
}

/// Made-up driver ids cannot grow the registry without bound.
#[test]
fn the_registry_is_bounded() {
    let mut core = ControllerCore::new(ControllerOptions::default());
    let max = loadwave_core::MAX_REGISTERED_DRIVERS;
    for i in 0..max + 5 {
        core.ingest(&register(&format!("x{i}"), None), T0);
    }
    core.ingest(&heartbeat("y", None, T0, Activity::Idle), T0);
    assert_eq!(core.drivers(T0).len(), max);
    assert_eq!(core.stats().registry_full, 6);
    // Known drivers are still heard.
    core.ingest(&heartbeat("x0", None, T0 + 500, Activity::Idle), T0 + 500);
    assert_eq!(
        core.drivers(T0 + 500)
            .iter()
            .find(|d| d.id == "x0")
            .unwrap()
            .last_seen_ms,
        T0 + 500
    );
}

/// A report that breaks a bound is counted, in the controller and in the test's view.
#[test]
fn rejected_reports_are_counted() {
    let mut core = ControllerCore::new(ControllerOptions::default());
    with_test(&mut core, "a", &["a1"]);
    start(&mut core, "a", &["a1"], T0);
    let mut far = report("a", "a1", 0, false, 1);
    if let Message::Metrics(r) = &mut far {
        r.buckets[0].second = u32::MAX;
    }
    for _ in 0..3 {
        core.ingest_payload(Topic::Metrics, &far.encode(), T0);
    }
    assert_eq!(core.stats().rejected, 3);
    assert_eq!(core.view("a").unwrap().rejected_messages, 3);
    assert!(core.view("a").unwrap().timeline.is_empty());
}

/// A heartbeat claiming a send time far ahead would move every test's bus clock, and with
/// it the seconds reports may be about: it is rejected.
#[test]
fn a_heartbeat_from_the_future_is_rejected() {
    let mut core = ControllerCore::new(ControllerOptions::default());
    with_test(&mut core, "a", &["a1"]);
    start(&mut core, "a", &["a1"], T0);
    let before = core.test("a").unwrap().max_second();
    core.ingest(
        &heartbeat("a1", Some("a"), u64::MAX / 2, Activity::Running),
        T0 + 1_000,
    );
    assert_eq!(core.stats().rejected, 1);
    assert_eq!(core.test("a").unwrap().max_second(), before);
    // One from a clock a little ahead is fine.
    core.ingest(
        &heartbeat("a1", Some("a"), T0 + 30_000, Activity::Running),
        T0 + 1_000,
    );
    assert_eq!(core.stats().rejected, 1);
}

/// Rejections are logged at most once a second, with how many were held back.
#[test]
fn the_log_limiter_lets_one_line_a_second_through() {
    let mut log = loadwave_core::LogLimiter::default();
    assert_eq!(log.allow(T0), Some(0));
    assert_eq!(log.allow(T0 + 10), None);
    assert_eq!(log.allow(T0 + 999), None);
    assert_eq!(log.allow(T0 + 1_000), Some(2));
    assert_eq!(log.allow(T0 + 1_500), None);
    // A clock that went back does not silence it.
    assert_eq!(log.allow(T0), Some(1));
}
