//! Store tests on real sled databases in temp dirs.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::exec::{Event, EventKind, ExitInfo, Outcome, PriorStatus, Sink};
use crate::plan::Plan;

const STATE_SCHEMA: &str = include_str!("../../schemas/razar_state.schema.json");
const QUARANTINE_SCHEMA: &str = include_str!("../../schemas/quarantine.schema.json");

const STACK: &str = r#"
version: 1
components:
  - name: migrate
    kind: task
    command: ["true"]
  - name: db
    command: ["sleep", "600"]
  - name: api
    command: ["python3", "-m", "api"]
    depends_on: [db, migrate]
  - name: web
    command: ["sleep", "601"]
    depends_on: [api]
  - name: marker
    depends_on: [migrate]
"#;

fn plan_of(dir: &Path, yaml: &str) -> Plan {
    let config = dir.join("razar.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let graph = crate::graph::load(&[config]).expect("test config is valid");
    let selected = graph.select(&[]).expect("no targets");
    crate::plan::build(&graph, &selected, &crate::plan::Options::default())
}

fn ev(at_ms: u64, kind: EventKind) -> Event {
    Event {
        at_ms,
        time: now(),
        kind,
    }
}

fn started(run_id: &str, resumed: bool) -> EventKind {
    EventKind::RunStarted {
        run_id: run_id.to_owned(),
        config_hash: "cafe".to_owned(),
        strategy: "priority".to_owned(),
        parallelism: 2,
        steps: 5,
        resumed,
    }
}

fn spawned(name: &str, attempt: u32, pid: u32) -> EventKind {
    EventKind::Spawned {
        component: name.to_owned(),
        attempt,
        pid,
        pgid: pid,
        start_time: proc::start_time(pid).unwrap_or(1),
    }
}

fn validate(schema: &str, value: &serde_json::Value) {
    let schema: serde_json::Value = serde_json::from_str(schema).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "schema violations: {errors:#?}\n{value:#}"
    );
}

fn state_json(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("razar_state.json")).expect("razar_state.json");
    serde_json::from_str(&text).expect("razar_state.json is JSON")
}

/// Waits (bounded) until `razar_state.json` satisfies `done`: the writer thread is
/// asynchronous, so tests synchronise on the file itself.
fn wait_for_state(dir: &Path, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("razar_state.json"))
            && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
            && done(&value)
        {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "razar_state.json never got there"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn open_creates_the_layout_and_a_valid_snapshot() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("state");
    let store = Store::open(&dir).expect("open");
    assert!(dir.join("db").is_dir());
    assert!(dir.join("razar.lock").is_file());
    let value = state_json(&dir);
    validate(STATE_SCHEMA, &value);
    assert_eq!(value["version"], 1);
    assert_eq!(value["apply"]["pid"], std::process::id());
    drop(store);
    // The final snapshot says nobody holds the directory any more.
    let value = state_json(&dir);
    assert_eq!(value["apply"], serde_json::Value::Null);
    assert_eq!(holder(&dir), None);
}

#[test]
fn a_second_open_is_refused_naming_the_holder() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = Store::open(tmp.path()).expect("open");
    match Store::open(tmp.path()) {
        Err(err @ StateError::Locked { .. }) => {
            assert!(err.is_usage());
            let text = err.to_string();
            assert!(
                text.contains(&format!("pid {}", std::process::id())),
                "{text}"
            );
        }
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("expected Locked, got a second store"),
    }
    drop(store);
    Store::open(tmp.path()).expect("free again once the first store is dropped");
}

#[test]
fn every_transition_is_checkpointed_and_the_snapshot_validates() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let plan = plan_of(tmp.path(), STACK);
    let dir = tmp.path().join("state");
    let store = Store::open(&dir).expect("open");
    let mut rec = store.recorder(&plan);
    let me = std::process::id();
    let events = [
        started("r1", false),
        spawned("migrate", 1, me),
        EventKind::Completed {
            component: "migrate".into(),
            attempt: 1,
            after_ms: 12,
        },
        EventKind::Completed {
            component: "marker".into(),
            attempt: 1,
            after_ms: 0,
        },
        spawned("db", 1, me),
        EventKind::Probe {
            component: "db".into(),
            ok: true,
            detail: "tcp 127.0.0.1:5 connected".into(),
        },
        EventKind::Ready {
            component: "db".into(),
            attempt: 1,
            after_ms: 40,
        },
        spawned("api", 1, me),
        EventKind::AttemptFailed {
            component: "api".into(),
            attempt: 1,
            reason: "exited before ready".into(),
            exit: Some(ExitInfo {
                code: Some(1),
                signal: None,
            }),
            log_tail: vec!["ModuleNotFoundError: No module named 'api'".into()],
        },
        EventKind::RestartScheduled {
            component: "api".into(),
            next_attempt: 2,
            delay_ms: 200,
        },
        spawned("api", 2, me),
        EventKind::AttemptFailed {
            component: "api".into(),
            attempt: 2,
            reason: "exited before ready".into(),
            exit: Some(ExitInfo {
                code: Some(1),
                signal: None,
            }),
            log_tail: vec!["ModuleNotFoundError: No module named 'api'".into()],
        },
        EventKind::Quarantined {
            component: "api".into(),
            attempts: 2,
            reason: "exited before ready".into(),
            exit: Some(ExitInfo {
                code: Some(1),
                signal: None,
            }),
            log_tail: vec![
                "Traceback (most recent call last):".into(),
                "ModuleNotFoundError: No module named 'api'".into(),
            ],
        },
        EventKind::Blocked {
            component: "web".into(),
            reason: "depends on `api`, which is quarantined".into(),
        },
        EventKind::BootFinished {
            ready: 2,
            failed: 1,
            blocked: 1,
            elapsed_ms: 300,
        },
        EventKind::Stopping {
            component: "db".into(),
            signal: "SIGTERM".into(),
        },
        EventKind::Stopped {
            component: "db".into(),
            exit: Some(ExitInfo {
                code: None,
                signal: Some(15),
            }),
            forced: false,
        },
        EventKind::RunFinished {
            outcome: Outcome::Failed,
            elapsed_ms: 400,
        },
    ];
    for (i, kind) in events.into_iter().enumerate() {
        rec.emit(&ev(i as u64 * 10, kind));
    }
    assert_eq!(store.failure(), None);

    // Closing the store (the end of an apply) writes the final snapshot before returning.
    store.close().expect("close");
    let value = state_json(&dir);
    validate(STATE_SCHEMA, &value);
    assert_eq!(value["apply"], serde_json::Value::Null);
    assert_eq!(value["run"]["outcome"], "failed");
    assert_eq!(value["run"]["boot"]["blocked"], 1);
    assert_eq!(value["components"]["migrate"]["status"], "completed");
    assert_eq!(value["components"]["db"]["status"], "stopped");
    assert_eq!(value["components"]["db"]["pid"], serde_json::Value::Null);
    assert_eq!(
        value["components"]["db"]["last_probe"]["detail"],
        "tcp 127.0.0.1:5 connected"
    );
    assert_eq!(value["components"]["api"]["status"], "quarantined");
    assert_eq!(value["components"]["api"]["restarts"], 1);
    assert_eq!(value["components"]["web"]["status"], "blocked");
    assert_eq!(value["last_component"], "db");
    assert_eq!(value["quarantine"]["api"]["class"], "dependency");
    assert_eq!(value["history"]["migrate"]["samples"], 1);
    assert_eq!(value["history"]["api"]["failures"], 2);
    assert!(
        value["history"].get("marker").is_none(),
        "milestones have no history"
    );
    let events = value["events"].as_array().expect("events list");
    assert_eq!(
        events.last().map(|e| &e["event"]),
        Some(&"run_finished".into())
    );

    // The database holds the same facts after the store is closed and reopened.
    drop(rec);
    drop(store);
    let view = read(&dir).expect("read");
    assert_eq!(view.source, Source::Database);
    assert_eq!(view.components["db"].status, Status::Stopped);
    assert_eq!(view.components["api"].attempts, 2);
    assert_eq!(view.history["db"].p50_ms, Some(40));
    assert_eq!(view.run.as_ref().map(|r| r.id.as_str()), Some("r1"));
}

#[test]
fn quarantine_writes_record_file_and_log_rows_and_release_undoes_them() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let plan = plan_of(tmp.path(), STACK);
    let dir = tmp.path().join("state");
    let store = Store::open(&dir).expect("open");
    let mut rec = store.recorder(&plan);
    rec.emit(&ev(0, started("r1", false)));
    rec.emit(&ev(
        5,
        EventKind::Quarantined {
            component: "api".into(),
            attempts: 3,
            reason: "exited with exit code 1 | before ready".into(),
            exit: Some(ExitInfo {
                code: Some(1),
                signal: None,
            }),
            log_tail: (0..80)
                .map(|i| format!("line {i}"))
                .chain(["OSError: [Errno 98] Address already in use".to_owned()])
                .collect(),
        },
    ));
    let file = dir.join("quarantine/api.json");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("record file")).expect("json");
    validate(QUARANTINE_SCHEMA, &record);
    assert_eq!(record["class"], "resource");
    assert_eq!(record["rule"], "port-in-use");
    assert_eq!(record["attempts"], 3);
    assert_eq!(
        record["log_tail"].as_array().map(Vec::len),
        Some(LOG_TAIL_LIMIT)
    );
    let log = std::fs::read_to_string(dir.join("quarantine_log.md")).expect("log");
    assert!(log.starts_with("# Quarantine Log\n"));
    assert!(log.contains("| Timestamp (UTC) | Component | Action | Details |\n"));
    let row = log.lines().last().expect("a row");
    assert!(
        row.contains("| api | quarantined | resource: exited with exit code 1 \\| before ready (log: OSError: [Errno 98] Address already in use); another process holds the port"),
        "{row}"
    );
    // ABZU's row shape: seconds-precision UTC timestamp in the first cell.
    let stamp = row.split('|').nth(1).expect("timestamp cell").trim();
    assert!(stamp.ends_with('Z') && stamp.len() == 20, "{stamp}");
    assert!(store.exclusions()["api"].contains("razar quarantine release api"));

    match store.release("web", None) {
        Err(StateError::NotQuarantined { known, .. }) => assert_eq!(known, vec!["api"]),
        other => panic!("expected NotQuarantined, got {other:?}"),
    }
    let released = store
        .release("api", Some("pinned the port"))
        .expect("release");
    assert_eq!(released.component, "api");
    assert!(!file.exists());
    assert!(store.exclusions().is_empty());
    let log = std::fs::read_to_string(dir.join("quarantine_log.md")).expect("log");
    let rows: Vec<&str> = log.lines().filter(|l| l.starts_with("| 2")).collect();
    assert_eq!(rows.len(), 2, "{log}");
    assert!(rows[1].contains("| api | resolved | released: pinned the port |"));
    drop(rec);
    drop(store);
    assert!(read(&dir).expect("read").quarantine.is_empty());
}

#[test]
fn priors_report_completed_tasks_and_live_pids_and_resume_keeps_them() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let plan = plan_of(tmp.path(), STACK);
    let dir = tmp.path().join("state");
    let me = std::process::id();
    {
        let store = Store::open(&dir).expect("open");
        let mut rec = store.recorder(&plan);
        rec.emit(&ev(0, started("r1", false)));
        rec.emit(&ev(1, spawned("migrate", 1, me)));
        rec.emit(&ev(
            2,
            EventKind::Completed {
                component: "migrate".into(),
                attempt: 1,
                after_ms: 1,
            },
        ));
        rec.emit(&ev(3, spawned("db", 2, me)));
        rec.emit(&ev(4, spawned("api", 1, me)));
        rec.emit(&ev(
            5,
            EventKind::AttemptFailed {
                component: "api".into(),
                attempt: 1,
                reason: "boom".into(),
                exit: Some(ExitInfo {
                    code: Some(3),
                    signal: None,
                }),
                log_tail: vec![],
            },
        ));
        let priors = store.priors();
        assert_eq!(priors["migrate"].status, PriorStatus::Completed);
        assert_eq!(priors["db"].status, PriorStatus::Running);
        assert_eq!(priors["db"].pid, Some(me));
        assert_eq!(priors["db"].start_time, proc::start_time(me));
        assert_eq!(priors["db"].attempts, 2);
        // Its attempt 1 failed in this run: a resume goes on from attempt 2.
        assert_eq!(priors["api"].status, PriorStatus::Failing);
        assert_eq!(priors["api"].attempts, 1);
        assert_eq!(priors["web"].status, PriorStatus::Other);
    }
    // A resumed run keeps the completed task and the running service until the executor
    // says otherwise.
    {
        let store = Store::open(&dir).expect("reopen");
        let mut rec = store.recorder(&plan);
        rec.emit(&ev(0, started("r2", true)));
        let priors = store.priors();
        assert_eq!(priors["migrate"].status, PriorStatus::Completed);
        assert_eq!(priors["db"].status, PriorStatus::Running);
        // Should this run die too before api's next attempt, the next resume still counts.
        assert_eq!(priors["api"].status, PriorStatus::Failing);
        assert_eq!(priors["api"].attempts, 1);
        rec.emit(&ev(
            1,
            EventKind::Skipped {
                component: "migrate".into(),
                reason: "completed by an earlier run".into(),
            },
        ));
        rec.emit(&ev(
            2,
            EventKind::Adopted {
                component: "db".into(),
                pid: me,
                pgid: me,
            },
        ));
        let priors = store.priors();
        assert_eq!(
            priors["migrate"].status,
            PriorStatus::Completed,
            "skip keeps completion"
        );
        assert_eq!(priors["db"].pid, Some(me));
        assert!(store.view().components["db"].adopted);
    }
    // A fresh run starts the task afresh, but never forgets a process that still runs; one
    // that is gone is forgotten.
    let mut web = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep runs");
    let web_pid = web.id();
    {
        let store = Store::open(&dir).expect("reopen");
        let mut rec = store.recorder(&plan);
        rec.emit(&ev(0, spawned("web", 1, web_pid)));
    }
    web.kill().expect("kill");
    web.wait().expect("reap");
    {
        let store = Store::open(&dir).expect("reopen");
        let mut rec = store.recorder(&plan);
        assert_eq!(store.priors()["web"].status, PriorStatus::Running);
        rec.emit(&ev(0, started("r3", false)));
        let priors = store.priors();
        assert_eq!(priors["migrate"].status, PriorStatus::Other);
        assert_eq!(
            priors["api"].status,
            PriorStatus::Other,
            "a fresh run starts over"
        );
        assert_eq!(priors["db"].status, PriorStatus::Running);
        assert_eq!(priors["web"].status, PriorStatus::Other);
        assert_eq!(priors["web"].pid, None);
        assert_eq!(store.view().components["migrate"].status, Status::Waiting);
        assert_eq!(store.view().components["web"].status, Status::Waiting);
    }
}

#[test]
fn history_follows_the_command_and_feeds_planner_weights() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("state");
    let one =
        "version: 1\ncomponents:\n  - name: job\n    kind: task\n    command: [\"sleep\", \"1\"]\n";
    let two =
        "version: 1\ncomponents:\n  - name: job\n    kind: task\n    command: [\"sleep\", \"2\"]\n";
    let run = |yaml: &str, durations: &[u64]| {
        let plan = plan_of(tmp.path(), yaml);
        let store = Store::open(&dir).expect("open");
        let mut rec = store.recorder(&plan);
        rec.emit(&ev(0, started("r", false)));
        for (i, &ms) in durations.iter().enumerate() {
            rec.emit(&ev(
                ms,
                EventKind::Completed {
                    component: "job".into(),
                    attempt: i as u32 + 1,
                    after_ms: ms,
                },
            ));
        }
        store.history()
    };
    let stats = run(one, &[100, 300, 200]);
    assert_eq!(stats["job"].samples, 3);
    assert_eq!(stats["job"].p50_ms, Some(200));
    assert_eq!(stats["job"].p90_ms, Some(300));

    let config = tmp.path().join("razar.yaml");
    std::fs::write(&config, one).expect("write");
    let graph = crate::graph::load(std::slice::from_ref(&config)).expect("valid");
    let w = weights(&stats, graph.components(), false);
    assert_eq!(
        w["job"],
        (
            Duration::from_millis(200),
            crate::plan::WeightSource::HistoryP50
        )
    );
    assert_eq!(
        weights(&stats, graph.components(), true)["job"].0,
        Duration::from_millis(300)
    );
    // The changed command gets no weight from the old samples...
    std::fs::write(&config, two).expect("write");
    let changed = crate::graph::load(&[config]).expect("valid");
    assert!(weights(&stats, changed.components(), false).is_empty());
    // ...and its first run starts the ring afresh.
    let stats = run(two, &[50]);
    assert_eq!(stats["job"].samples, 1);
    assert_eq!(stats["job"].p50_ms, Some(50));
}

#[test]
fn history_statistics_are_kept_with_the_rings_and_filled_in_for_an_older_database() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("state");
    let plan = plan_of(tmp.path(), STACK);
    {
        let store = Store::open(&dir).expect("open");
        let mut rec = store.recorder(&plan);
        rec.emit(&ev(0, started("r1", false)));
        for (i, ms) in [30u64, 10, 20].into_iter().enumerate() {
            rec.emit(&ev(
                ms,
                EventKind::Completed {
                    component: "migrate".into(),
                    attempt: i as u32 + 1,
                    after_ms: ms,
                },
            ));
        }
        store.close().expect("close");
    }
    let paths = Paths::new(&dir);
    let expected = {
        let db = db::Db::open_patiently(&paths).expect("open");
        let ring = db.ring(b"migrate").expect("get").expect("a ring");
        let stats = ring.stats().expect("statistics");
        assert_eq!(
            db.get::<HistoryStats>(db::Tree::HistoryStats, b"migrate")
                .expect("get"),
            Some(stats.clone()),
            "the statistics are written with the ring"
        );
        assert_eq!(
            db.get::<bool>(db::Tree::Meta, db::HISTORY_STATS_COMPLETE)
                .expect("get"),
            Some(true)
        );
        // What a razar from before the statistics tree leaves: rings only.
        let mut batch = db::Batch::default();
        batch.remove(db::Tree::HistoryStats, b"migrate");
        batch.remove(db::Tree::Meta, db::HISTORY_STATS_COMPLETE);
        db.commit(batch).expect("commit");
        db.checkpoint().expect("checkpoint");
        stats
    };
    // Opening digests the rings once and fills the tree in...
    let store = Store::open(&dir).expect("reopen");
    assert_eq!(store.history()["migrate"], expected);
    drop(store);
    let db = db::Db::open_patiently(&paths).expect("open");
    assert_eq!(
        db.get::<HistoryStats>(db::Tree::HistoryStats, b"migrate")
            .expect("get"),
        Some(expected.clone())
    );
    // ...and the next opening reads it, not the rings (a marked record shows which).
    let mut marked = expected.clone();
    marked.samples = 99;
    let mut batch = db::Batch::default();
    batch.put(db::Tree::HistoryStats, b"migrate", &marked);
    db.commit(batch).expect("commit");
    db.checkpoint().expect("checkpoint");
    drop(db);
    assert_eq!(read(&dir).expect("read").history["migrate"], marked);
}

#[test]
fn the_snapshot_follows_events_without_an_explicit_flush() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let plan = plan_of(tmp.path(), STACK);
    let dir = tmp.path().join("state");
    let store = Store::open(&dir).expect("open");
    let mut rec = store.recorder(&plan);
    rec.emit(&ev(0, started("r1", false)));
    rec.emit(&ev(1, spawned("db", 1, std::process::id())));
    rec.emit(&ev(
        2,
        EventKind::Ready {
            component: "db".into(),
            attempt: 1,
            after_ms: 1,
        },
    ));
    let value = wait_for_state(&dir, |v| v["components"]["db"]["status"] == "ready");
    validate(STATE_SCHEMA, &value);
    // Read-only access while the store is open goes through the snapshot.
    let view = read(&dir).expect("read while open");
    assert!(matches!(view.source, Source::Snapshot { .. }));
    assert_eq!(view.apply.map(|h| h.pid), Some(std::process::id()));
    assert_eq!(view.components["db"].status, Status::Ready);
    drop(rec);
    drop(store);
}

#[test]
fn reading_never_creates_the_state_dir() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("nothing-here");
    let view = read(&dir).expect("read");
    assert_eq!(view.source, Source::Empty);
    assert!(view.components.is_empty());
    assert!(!dir.exists());
}

#[test]
fn an_unreadable_snapshot_is_moved_aside_not_destroyed() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    std::fs::write(dir.join("razar_state.json"), "{ not json").expect("write");
    // Readers say what is wrong and change nothing.
    let err = read(dir).expect_err("corrupt snapshot");
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("razar_state.json"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("razar_state.json")).expect("still there"),
        "{ not json"
    );
    // The next writer keeps the damaged file next to a fresh one.
    let store = Store::open(dir).expect("open");
    let kept: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains("razar_state.json.corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        std::fs::read_to_string(&kept[0]).expect("kept"),
        "{ not json"
    );
    validate(STATE_SCHEMA, &state_json(dir));
    assert!(
        store.view().components.is_empty(),
        "nothing invented from a damaged file"
    );
}

#[test]
fn a_snapshot_from_a_newer_razar_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = tmp.path().join("razar_state.json");
    std::fs::write(&path, "{\"version\": 99}").expect("write");
    let err = Store::open(tmp.path()).err().expect("refused");
    assert!(matches!(err, StateError::Newer { found: 99, .. }), "{err}");
    assert_eq!(
        std::fs::read_to_string(&path).expect("kept"),
        "{\"version\": 99}"
    );
}

#[test]
fn a_damaged_database_is_an_error_not_a_panic_and_is_left_alone() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    drop(Store::open(dir).expect("create"));
    let conf = dir.join("db/conf");
    std::fs::write(&conf, "segment_size: banana\n").expect("damage");
    let before = std::fs::read(&conf).expect("read");
    let err = read(dir).expect_err("damaged db");
    assert!(matches!(err, StateError::Database { .. }), "{err}");
    let err = Store::open(dir).err().expect("damaged db");
    assert!(err.to_string().contains("did not modify it"), "{err}");
    assert_eq!(std::fs::read(&conf).expect("read"), before);
}

#[test]
fn a_corrupted_record_names_itself() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    {
        let db = super::db::Db::open_patiently(&Paths::new(dir)).expect("db");
        let mut batch = super::db::Batch::default();
        batch.put(super::db::Tree::Components, b"api", &"not a record");
        db.commit(batch).expect("commit");
        db.checkpoint().expect("checkpoint");
    }
    let err = read(dir).expect_err("bad record");
    assert!(err.to_string().contains("components/api"), "{err}");
}

#[test]
fn abzu_state_keys_are_carried_over() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let abzu = r#"{"last_component": "crown_router", "capabilities": ["GLM4V"],
        "downtime": {"vision": {"description": "maintenance"}}, "launched_models": ["GLM4V"],
        "handshake": {"acknowledgement": "ok", "capabilities": ["GLM4V"], "downtime": {}},
        "glm4v_present": true, "events": []}"#;
    std::fs::write(dir.join("razar_state.json"), abzu).expect("write");
    let store = Store::open(dir).expect("open");
    let value = state_json(dir);
    validate(STATE_SCHEMA, &value);
    assert_eq!(value["last_component"], "crown_router");
    assert_eq!(value["capabilities"], serde_json::json!(["GLM4V"]));
    assert_eq!(value["handshake"]["acknowledgement"], "ok");
    assert_eq!(value["downtime"]["vision"]["description"], "maintenance");
    assert_eq!(value["launched_models"], serde_json::json!(["GLM4V"]));
    let kept = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("razar_state.json.abzu-")
        });
    assert!(kept, "the ABZU original is kept");
    store
        .record_handshake(&serde_json::json!({
            "outcome": "ok",
            "at": "2025-09-02T12:00:00.000Z",
            "url": "ws://127.0.0.1:8765/crown",
            "attempts": 1,
            "acknowledgement": "ok",
            "protocol": 1,
            "capabilities": ["GLM4V", "vision"],
            "downtime": {"vision": {"description": "maintenance"}},
            "suggestions": [{"action": "prioritize", "component": "api", "reason": "hot path"}],
            "mission_brief": "2025-09-02T12-00-00.000Z",
        }))
        .expect("record handshake");
    let launch = |model: &str, outcome: &str, exit: Option<crate::exec::ExitInfo>| {
        crate::state::crown::LaunchRecord {
            event: "model_launch".to_owned(),
            model: model.to_owned(),
            step: format!("crown-model.{model}"),
            command: "sh launch.sh".to_owned(),
            outcome: outcome.to_owned(),
            at: "2025-09-02T12:00:01.000Z".to_owned(),
            after_ms: (outcome == "completed").then_some(1200),
            detail: (outcome == "failed").then(|| "exited with code 3".to_owned()),
            exit,
            log_tail: Vec::new(),
        }
    };
    store
        .record_model_launch(&launch("GLM4V", "completed", None))
        .expect("record launch");
    let failed = crate::exec::ExitInfo {
        code: Some(3),
        signal: None,
    };
    store
        .record_model_launch(&launch("Whisper", "failed", Some(failed)))
        .expect("record launch");
    store.sync().expect("sync");
    let value = state_json(dir);
    validate(STATE_SCHEMA, &value);
    assert_eq!(
        value["capabilities"],
        serde_json::json!(["GLM4V", "vision"])
    );
    assert_eq!(
        value["handshake"]["mission_brief"],
        "2025-09-02T12-00-00.000Z"
    );
    assert_eq!(value["handshake"]["suggestions"][0]["component"], "api");
    // Only the successful launch is one of ABZU's launched models; both are recorded.
    assert_eq!(value["launched_models"], serde_json::json!(["GLM4V"]));
    assert_eq!(value["model_launches"][1]["outcome"], "failed");
    assert_eq!(value["model_launches"][1]["exit"]["code"], 3);
    let view = store.view();
    assert_eq!(view.model_launches.len(), 2);
    assert_eq!(view.model_launches[1].exit, Some(failed));
    // An offline handshake: no acknowledgement, the reason kept.
    store
        .record_handshake(&serde_json::json!({
            "outcome": "offline", "at": "2025-09-02T12:01:00.000Z", "attempts": 3,
            "error": "connection refused", "acknowledgement": null,
        }))
        .expect("record handshake");
    store.sync().expect("sync");
    let value = state_json(dir);
    validate(STATE_SCHEMA, &value);
    assert_eq!(value["handshake"]["acknowledgement"], "");
    assert_eq!(value["handshake"]["error"], "connection refused");
    let events = value["events"].as_array().expect("events");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "model_launch" && e["model"] == "GLM4V"),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e["event"] == "model_launch"
            && e["model"] == "Whisper"
            && e["detail"] == "failed (exit code 3): exited with code 3"),
        "{events:#?}"
    );
    assert_eq!(events.last().map(|e| &e["detail"]), Some(&"offline".into()));
}

#[test]
fn quarantine_files_are_restored_from_the_database_and_imported_into_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let plan = plan_of(tmp.path(), STACK);
    let dir = tmp.path().join("state");
    {
        let store = Store::open(&dir).expect("open");
        let mut rec = store.recorder(&plan);
        rec.emit(&ev(0, started("r1", false)));
        rec.emit(&ev(
            1,
            EventKind::Quarantined {
                component: "api".into(),
                attempts: 1,
                reason: "exited with exit code 2".into(),
                exit: None,
                log_tail: vec![],
            },
        ));
    }
    let file = dir.join("quarantine/api.json");
    let text = std::fs::read_to_string(&file).expect("file");
    std::fs::remove_file(&file).expect("operator deletes the file");
    drop(Store::open(&dir).expect("reopen"));
    assert_eq!(std::fs::read_to_string(&file).expect("restored"), text);

    // The database is lost; the file brings the quarantine back.
    std::fs::remove_dir_all(dir.join("db")).expect("lose db");
    let store = Store::open(&dir).expect("reopen");
    assert!(store.quarantine().contains_key("api"));
    std::fs::write(dir.join("quarantine/other.json"), "{}").expect("foreign file");
    drop(store);
    let store = Store::open(&dir).expect("foreign files are left alone");
    assert!(!store.quarantine().contains_key("other"));
    assert!(dir.join("quarantine/other.json").exists());
}

/// Environment variable telling [`crash_child`] where to record.
const CRASH_DIR: &str = "RAZAR_TEST_CRASH_DIR";

/// Not a test on its own: [`kill_9_loses_no_checkpoint`] runs it in a child process and
/// SIGKILLs it after it prints `checkpointed`.
#[test]
#[ignore = "child process of kill_9_loses_no_checkpoint"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let plan = plan_of(&dir, STACK);
    let store = Store::open(&dir.join("state")).expect("open");
    let mut rec = store.recorder(&plan);
    let me = std::process::id();
    rec.emit(&ev(0, started("crashed", false)));
    rec.emit(&ev(1, spawned("migrate", 1, me)));
    rec.emit(&ev(
        2,
        EventKind::Completed {
            component: "migrate".into(),
            attempt: 1,
            after_ms: 1,
        },
    ));
    rec.emit(&ev(3, spawned("db", 1, me)));
    println!("checkpointed");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn kill_9_loses_no_checkpoint() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "state::tests::crash_child",
            "--ignored",
            "--nocapture",
        ])
        .env(CRASH_DIR, tmp.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn child");
    let child_pid = child.id();
    let stdout = child.stdout.take().expect("piped");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let ready = lines.any(|l| l.map(|l| l.contains("checkpointed")).unwrap_or(false));
    assert!(ready, "child never checkpointed");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child_pid as i32, libc::SIGKILL) };
    child.wait().expect("reap");

    let dir = tmp.path().join("state");
    let store = Store::open(&dir).expect("a killed holder leaves no lock behind");
    let priors: BTreeMap<String, crate::exec::Prior> = store.priors();
    assert_eq!(priors["migrate"].status, PriorStatus::Completed);
    assert_eq!(priors["db"].status, PriorStatus::Running);
    assert_eq!(priors["db"].pid, Some(child_pid));
    // The history sample, journalled with its sequence number, is replayed once.
    let history = store.history();
    assert_eq!(
        (history["migrate"].samples, history["migrate"].p50_ms),
        (1, Some(1))
    );
    drop(store);
    let store = Store::open(&dir).expect("reopen");
    assert_eq!(store.history()["migrate"].samples, 1, "not counted twice");
    let view = store.view();
    assert_eq!(view.run.as_ref().map(|r| r.id.as_str()), Some("crashed"));
    assert_eq!(view.run.as_ref().and_then(|r| r.finished_at.clone()), None);
}

#[test]
fn abzu_files_verbatim_are_taken_over() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let abzu_state = include_str!("../../tests/fixtures/abzu/razar_state.json");
    let abzu_log = include_str!("../../tests/fixtures/abzu/quarantine_log.md");
    std::fs::write(dir.join("razar_state.json"), abzu_state).expect("write");
    std::fs::write(dir.join("quarantine_log.md"), abzu_log).expect("write");
    let plan = plan_of(dir, STACK);
    let store = Store::open(dir).expect("ABZU's state file is recognised, not refused");
    validate(STATE_SCHEMA, &state_json(dir));
    let mut rec = store.recorder(&plan);
    rec.emit(&ev(0, started("r1", false)));
    rec.emit(&ev(
        1,
        EventKind::Quarantined {
            component: "api".into(),
            attempts: 1,
            reason: "exited with exit code 1".into(),
            exit: None,
            log_tail: vec![
                "ImportError: cannot import name 'run_validated_task' (most likely due to a circular import)".into(),
            ],
        },
    ));
    // ABZU's log keeps its content and its table gets our row, in its format.
    let log = std::fs::read_to_string(dir.join("quarantine_log.md")).expect("log");
    assert!(
        log.starts_with(abzu_log),
        "ABZU's rows are kept as they were"
    );
    let added = &log[abzu_log.len()..];
    assert_eq!(added.lines().count(), 1, "{added}");
    let cells: Vec<&str> = added.trim_end().split(" | ").collect();
    assert_eq!(cells.len(), 4, "{added}");
    assert_eq!(cells[1], "api");
    assert_eq!(cells[2], "quarantined");
    assert!(cells[3].starts_with("dependency: "), "{added}");
}

#[test]
fn the_quarantine_schema_is_the_state_schemas_record() {
    let state: serde_json::Value = serde_json::from_str(STATE_SCHEMA).expect("JSON");
    let quarantine: serde_json::Value = serde_json::from_str(QUARANTINE_SCHEMA).expect("JSON");
    let record = &state["$defs"]["quarantine_record"];
    for key in ["type", "required", "additionalProperties", "properties"] {
        assert_eq!(
            record[key], quarantine[key],
            "`{key}` differs between the two schemas"
        );
    }
    assert_eq!(
        state["$defs"]["exit_info"],
        quarantine["$defs"]["exit_info"]
    );
    assert_eq!(
        state["properties"]["version"]["const"],
        serde_json::json!(STATE_FORMAT)
    );
    assert_eq!(
        state["$defs"]["history_stats"]["properties"]["samples"]["maximum"],
        serde_json::json!(HISTORY_LIMIT)
    );
    assert_eq!(
        record["properties"]["log_tail"]["maxItems"],
        serde_json::json!(LOG_TAIL_LIMIT)
    );
}

#[test]
fn a_checkpoint_that_cannot_be_saved_is_reported_and_stops_the_run() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let plan = plan_of(tmp.path(), STACK);
    let dir = tmp.path().join("state");
    let store = Store::open(&dir).expect("open");
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = std::sync::Arc::clone(&failures);
    let mut rec = store
        .recorder(&plan)
        .on_failure(move |err| seen.lock().expect("lock").push(err.to_owned()));
    rec.emit(&ev(0, started("r1", false)));
    assert_eq!(store.failure(), None);
    // Something else took the quarantine directory's name: the record file cannot be written.
    std::fs::write(dir.join("quarantine"), "in the way").expect("write");
    rec.emit(&ev(
        1,
        EventKind::Quarantined {
            component: "api".into(),
            attempts: 1,
            reason: "boom".into(),
            exit: None,
            log_tail: vec![],
        },
    ));
    let failure = store.failure().expect("the failure is reported");
    assert!(failure.contains("quarantine"), "{failure}");
    assert_eq!(failures.lock().expect("lock").len(), 1, "the hook ran once");
    // The database still got the record: the truth is intact.
    assert!(store.quarantine().contains_key("api"));
}

#[test]
fn a_lost_checkpoint_cancels_the_token() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let plan = plan_of(tmp.path(), STACK);
    let dir = tmp.path().join("state");
    let store = Store::open(&dir).expect("open");
    let token = tokio_util::sync::CancellationToken::new();
    let mut rec = store.recorder(&plan).cancel_on_failure(token.clone());
    rec.emit(&ev(0, started("r1", false)));
    assert!(!token.is_cancelled());
    std::fs::write(dir.join("quarantine"), "in the way").expect("write");
    rec.emit(&ev(
        1,
        EventKind::Quarantined {
            component: "api".into(),
            attempts: 1,
            reason: "boom".into(),
            exit: None,
            log_tail: vec![],
        },
    ));
    assert!(token.is_cancelled());
}

#[test]
fn a_state_file_that_cannot_be_written_is_reported_by_opened_and_by_open() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("state");
    std::fs::create_dir_all(&dir).expect("mkdir");
    // The temporary file razar_state.json is written through, taken by a directory.
    let blocker = dir.join(format!(".razar_state.json.tmp.{}", std::process::id()));
    std::fs::create_dir(&blocker).expect("mkdir");
    let store = Store::open_deferred(&dir).expect("opens; the file is written behind");
    let err = store.opened().expect_err("the first write failed");
    assert!(err.to_string().contains("razar_state.json"), "{err}");
    assert!(store.opened().is_ok(), "reported once");
    drop(store);
    let err = Store::open(&dir)
        .err()
        .expect("open waits for the first write");
    assert!(err.to_string().contains("razar_state.json"), "{err}");
    std::fs::remove_dir(&blocker).expect("rmdir");
    let store = Store::open_deferred(&dir).expect("open");
    store.opened().expect("written");
    assert!(dir.join("razar_state.json").exists());
}

#[test]
fn a_database_of_the_earlier_format_is_upgraded_and_one_from_a_newer_razar_refused() {
    use super::db::{Batch, Db, Tree};
    let tmp = tempfile::tempdir().expect("temp dir");
    let paths = Paths::new(tmp.path());
    let set_format = |format: u64| {
        let db = Db::open_patiently(&paths).expect("open");
        let mut batch = Batch::default();
        batch.put(Tree::Meta, b"format", &format);
        db.commit(batch).expect("commit");
        db.checkpoint().expect("checkpoint");
    };
    let format = || {
        let db = Db::open_patiently(&paths).expect("open");
        db.get::<u64>(Tree::Meta, b"format").expect("get")
    };
    Store::open(tmp.path())
        .expect("open")
        .close()
        .expect("close");
    assert_eq!(format(), Some(DATABASE_FORMAT), "a new database");

    // What a razar from before `history_log` left: read, and marked with this format.
    set_format(1);
    assert!(read(tmp.path()).is_ok(), "read as it is");
    assert_eq!(format(), Some(1), "a reader changes nothing");
    Store::open(tmp.path())
        .expect("open")
        .close()
        .expect("close");
    assert_eq!(format(), Some(DATABASE_FORMAT));

    // A newer razar's database: refused by an apply and by the readers, and left alone.
    set_format(DATABASE_FORMAT + 1);
    for err in [
        Store::open(tmp.path()).err().expect("refused"),
        read(tmp.path()).expect_err("refused"),
    ] {
        assert!(
            matches!(err, StateError::Newer { found, reads: DATABASE_FORMAT, .. } if found == DATABASE_FORMAT + 1),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade razar"), "{err}");
    }
    assert_eq!(format(), Some(DATABASE_FORMAT + 1));
}

/// Key and value pairs of one sled tree, in key order.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Every entry of every tree of the database at `db`, as sled holds it, by tree name.
fn sled_contents(db: &Path) -> BTreeMap<Vec<u8>, Entries> {
    let sled = sled::open(db).expect("open sled");
    sled.tree_names()
        .into_iter()
        .map(|name| {
            let tree = sled.open_tree(&name).expect("tree");
            let entries = tree
                .iter()
                .map(|entry| {
                    let (k, v) = entry.expect("entry");
                    (k.to_vec(), v.to_vec())
                })
                .collect();
            (name.to_vec(), entries)
        })
        .collect()
}

#[test]
fn compaction_copies_every_entry_including_the_journal_and_shrinks_the_database() {
    use super::db::{Batch, Db, Tree};
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("state");
    let plan = plan_of(tmp.path(), STACK);
    for boot in 0..30u64 {
        let store = Store::open(&dir).expect("open");
        let mut rec = store.recorder(&plan);
        rec.emit(&ev(0, started(&format!("r{boot}"), false)));
        rec.emit(&ev(1, spawned("migrate", 1, std::process::id())));
        rec.emit(&ev(
            9,
            EventKind::Completed {
                component: "migrate".into(),
                attempt: 1,
                after_ms: 8 + boot,
            },
        ));
        drop(rec);
        store.close().expect("close");
    }
    // Refused while the directory is held, like a second apply; nothing is touched.
    let held = Store::open(&dir).expect("open");
    assert!(matches!(compact(&dir), Err(StateError::Locked { .. })));
    held.close().expect("close");
    drop(held);

    let mut expected = sled_contents(&dir.join("db"));
    // A last write only in the journal, as a killed razar leaves it: the compaction replays it.
    {
        let db = Db::open_patiently(&Paths::new(&dir)).expect("open");
        let mut batch = Batch::default();
        batch.put(Tree::Meta, b"unflushed", &7u32);
        db.commit(batch).expect("commit");
    }
    let meta = expected.get_mut(b"meta".as_slice()).expect("meta tree");
    meta.push((b"unflushed".to_vec(), b"7".to_vec()));
    meta.sort();

    let done = compact(&dir).expect("compact");
    assert!(done.after < done.before, "{done:?}");
    assert_eq!(sled_contents(&dir.join("db")), expected);
    assert!(!dir.join("db.compacting").exists());
    assert_eq!(
        std::fs::metadata(dir.join("db.journal"))
            .expect("journal")
            .len(),
        0,
        "everything is in sled"
    );
    // And the store reads it as before.
    let store = Store::open(&dir).expect("open");
    assert_eq!(store.history()["migrate"].samples, 30);

    let empty = tmp.path().join("empty");
    assert!(matches!(
        compact(&empty),
        Err(StateError::NoDatabase { .. })
    ));
    assert!(!empty.exists(), "nothing created");
}
