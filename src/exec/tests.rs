//! Scheduler tests: real processes (`sh -c`), real log files in temp dirs, events collected
//! in memory. Synchronisation is on events and files, never on sleeps.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::{
    Backoff, Command, Condition, Dependency, Kind, Origin, Probe, ProbeCheck, Restart, RestartMode,
    Stop,
};
use crate::plan::{Plan, Step, Strategy, Timeline, WeightSource};

fn step(name: &str, kind: Kind, script: Option<&str>) -> Step {
    Step {
        name: name.to_owned(),
        kind,
        command: script.map(|s| Command::Shell(s.to_owned())),
        depends_on: Vec::new(),
        priority: 0,
        wave: 0,
        ready: None,
        restart: Restart {
            policy: RestartMode::Never,
            max_attempts: 1,
            backoff: Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(200),
                jitter: 0.0,
                reset_after: Duration::from_secs(60),
            },
        },
        stop: Stop {
            signal: "SIGTERM".to_owned(),
            grace: Duration::from_secs(5),
            command: None,
        },
        env: BTreeMap::new(),
        cwd: None,
        path: Vec::new(),
        layer: None,
        daemonizes: false,
        optional: false,
        tests: None,
        origin: Origin::default(),
        notes: Vec::new(),
        weight_ms: 0,
        weight_source: WeightSource::Default,
        predicted_start_ms: 0,
        predicted_ready_ms: 0,
        reasons: Vec::new(),
        blocked: None,
        failures: None,
    }
}

fn task(name: &str, script: &str) -> Step {
    step(name, Kind::Task, Some(script))
}

fn service(name: &str, script: &str) -> Step {
    step(name, Kind::Service, Some(script))
}

fn after(mut s: Step, deps: &[(&str, Condition)]) -> Step {
    s.depends_on = deps
        .iter()
        .map(|(n, c)| Dependency {
            name: (*n).to_owned(),
            condition: *c,
        })
        .collect();
    s
}

fn plan(dir: &Path, parallelism: usize, steps: Vec<Step>) -> Plan {
    Plan {
        format: crate::plan::PLAN_FORMAT,
        config_hash: "test".to_owned(),
        sources: Vec::new(),
        strategy: Strategy::Priority,
        parallelism,
        targets: Vec::new(),
        state_dir: dir.to_path_buf(),
        steps,
        excluded: Vec::new(),
        timeline: Timeline {
            makespan_ms: 0,
            critical_path: Vec::new(),
            critical_path_ms: 0,
            total_work_ms: 0,
            lower_bound_ms: 0,
        },
        explored: None,
        suggestions: Vec::new(),
    }
}

fn file_probe(path: &Path) -> Probe {
    Probe {
        check: ProbeCheck::Exec(Command::Argv(vec![
            "test".to_owned(),
            "-e".to_owned(),
            path.display().to_string(),
        ])),
        interval: Duration::from_millis(20),
        timeout: Duration::from_secs(10),
    }
}

async fn execute(plan: &Plan, options: Options, shutdown: Shutdown) -> (Outcome, Vec<Event>) {
    let collect = event::Collect::default();
    let mut sink = collect.clone();
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        run(plan, options, shutdown, &mut sink),
    )
    .await
    .expect("the run ends")
    .expect("the plan is valid");
    let events = collect.0.lock().expect("no poisoned lock").clone();
    (outcome, events)
}

fn names(events: &[Event], pick: impl Fn(&EventKind) -> bool) -> Vec<String> {
    events
        .iter()
        .filter(|e| pick(&e.kind))
        .filter_map(|e| e.kind.component().map(str::to_owned))
        .collect()
}

fn position(events: &[Event], pick: impl Fn(&EventKind) -> bool) -> usize {
    events
        .iter()
        .position(|e| pick(&e.kind))
        .unwrap_or_else(|| panic!("event not found in {events:#?}"))
}

fn is<'a>(kind: &'a str, component: &'a str) -> impl Fn(&EventKind) -> bool + 'a {
    move |k| {
        let tag = serde_json::to_value(k).expect("events serialise")["event"].clone();
        tag == kind && k.component() == Some(component)
    }
}

#[tokio::test]
async fn diamond_respects_conditions_and_the_parallelism_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let steps = vec![
        task("prepare", "sleep 0.05"),
        after(
            task("left", "sleep 0.1"),
            &[("prepare", Condition::Completed)],
        ),
        after(
            task("right", "sleep 0.1"),
            &[("prepare", Condition::Completed)],
        ),
        after(
            task("extra", "sleep 0.1"),
            &[("prepare", Condition::Completed)],
        ),
        after(
            task("join", "true"),
            &[
                ("left", Condition::Completed),
                ("right", Condition::Completed),
                ("extra", Condition::Completed),
            ],
        ),
    ];
    let (outcome, events) = execute(&plan(d, 2, steps), Options::new("t"), Shutdown::new()).await;
    assert_eq!(outcome, Outcome::Success);
    let prepared = position(&events, is("completed", "prepare"));
    for branch in ["left", "right", "extra"] {
        assert!(position(&events, is("spawned", branch)) > prepared);
    }
    let join = position(&events, is("spawned", "join"));
    for branch in ["left", "right", "extra"] {
        assert!(position(&events, is("completed", branch)) < join);
    }
    // Never more than two tasks between spawn and completion.
    let mut running = 0i32;
    for e in &events {
        match e.kind {
            EventKind::Spawned { .. } => running += 1,
            EventKind::Completed { .. } => running -= 1,
            _ => {}
        }
        assert!(running <= 2, "parallelism exceeded at {e:?}");
    }
}

#[tokio::test]
async fn a_started_condition_lets_the_dependent_start_before_readiness() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let flag = d.join("dependent-ran");
    let mut slow = service("slow", "sleep 30");
    slow.ready = Some(file_probe(&flag));
    let steps = vec![
        slow,
        after(
            task("early", &format!("touch {}", flag.display())),
            &[("slow", Condition::Started)],
        ),
    ];
    let mut options = Options::new("t");
    options.until_ready = true;
    let (outcome, events) = execute(&plan(d, 4, steps), options, Shutdown::new()).await;
    assert_eq!(outcome, Outcome::Success, "{events:#?}");
    assert!(position(&events, is("spawned", "early")) < position(&events, is("ready", "slow")));
}

#[tokio::test]
async fn a_failing_task_blocks_its_dependents_and_independent_branches_continue() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let steps = vec![
        task(
            "migrate",
            "echo 'relation users does not exist' >&2; exit 4",
        ),
        after(task("api", "true"), &[("migrate", Condition::Completed)]),
        after(task("web", "true"), &[("api", Condition::Completed)]),
        task("other", "true"),
    ];
    let (outcome, events) = execute(&plan(d, 2, steps), Options::new("t"), Shutdown::new()).await;
    assert_eq!(outcome, Outcome::Failed);
    let failed = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::AttemptFailed {
                component,
                exit,
                log_tail,
                ..
            } if component == "migrate" => Some((*exit, log_tail.clone())),
            _ => None,
        })
        .expect("migrate failed");
    assert_eq!(failed.0.and_then(|e| e.code), Some(4));
    assert_eq!(failed.1, vec!["relation users does not exist"]);
    let blocked: BTreeMap<String, String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Blocked { component, reason } => Some((component.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    assert!(
        blocked["api"].contains("`migrate`, which failed"),
        "{blocked:?}"
    );
    assert!(
        blocked["web"].contains("`api`, which is blocked"),
        "{blocked:?}"
    );
    assert_eq!(
        names(&events, |k| matches!(k, EventKind::Completed { .. })),
        vec!["other"]
    );
    assert!(
        names(&events, |k| matches!(k, EventKind::Spawned { .. }))
            .iter()
            .all(|n| n != "api")
    );
}

#[tokio::test]
async fn restarts_with_growing_backoff_until_the_service_stays_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let counter = d.join("count");
    // Fails on its first two starts, then stays up.
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -ge 3 ] || exit 1; exec sleep 30",
        c = counter.display()
    );
    let mut flaky = service("flaky", &script);
    flaky.restart.policy = RestartMode::OnFailure;
    flaky.restart.max_attempts = 5;
    let mut options = Options::new("t");
    options.until_ready = true;
    let (outcome, events) = execute(&plan(d, 2, vec![flaky]), options, Shutdown::new()).await;
    assert_eq!(outcome, Outcome::Success, "{events:#?}");
    let delays: Vec<(u32, u64)> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::RestartScheduled {
                next_attempt,
                delay_ms,
                ..
            } => Some((next_attempt, delay_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(delays, vec![(2, 20), (3, 40)]);
    let ready = events
        .iter()
        .find_map(|e| match e.kind {
            EventKind::Ready { attempt, .. } => Some(attempt),
            _ => None,
        })
        .expect("ready");
    assert_eq!(ready, 3);
}

#[tokio::test]
async fn exhausted_attempts_quarantine_and_block_dependents() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let mut broken = service("broken", "echo 'ImportError: no module named yaml'; exit 1");
    broken.restart.policy = RestartMode::Always;
    broken.restart.max_attempts = 3;
    let steps = vec![
        broken,
        after(
            service("needs-broken", "sleep 30"),
            &[("broken", Condition::Ready)],
        ),
        service("independent", "sleep 30"),
    ];
    let mut options = Options::new("t");
    options.until_ready = true;
    let (outcome, events) = execute(&plan(d, 2, steps), options, Shutdown::new()).await;
    assert_eq!(outcome, Outcome::Failed);
    let quarantined = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Quarantined {
                component,
                attempts,
                log_tail,
                ..
            } => Some((component.clone(), *attempts, log_tail.clone())),
            _ => None,
        })
        .expect("quarantined");
    assert_eq!(quarantined.0, "broken");
    assert_eq!(quarantined.1, 3);
    assert_eq!(quarantined.2, vec!["ImportError: no module named yaml"]);
    assert_eq!(
        names(&events, |k| matches!(k, EventKind::Spawned { .. }))
            .iter()
            .filter(|n| *n == "broken")
            .count(),
        3
    );
    let reason = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Blocked { component, reason } if component == "needs-broken" => {
                Some(reason.clone())
            }
            _ => None,
        })
        .expect("dependent blocked");
    assert!(reason.contains("quarantined"), "{reason}");
    assert!(
        names(&events, |k| matches!(k, EventKind::Ready { .. }))
            .contains(&"independent".to_owned())
    );
}

#[tokio::test]
async fn a_probe_that_never_passes_times_out_into_a_failed_attempt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let mut mute = service("mute", "exec sleep 30");
    mute.ready = Some(Probe {
        timeout: Duration::from_millis(300),
        ..file_probe(&d.join("never"))
    });
    let (outcome, events) =
        execute(&plan(d, 2, vec![mute]), Options::new("t"), Shutdown::new()).await;
    assert_eq!(outcome, Outcome::Failed);
    let (reason, exit) = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::AttemptFailed { reason, exit, .. } => Some((reason.clone(), *exit)),
            _ => None,
        })
        .expect("attempt failed");
    assert!(reason.starts_with("not ready within 300ms"), "{reason}");
    assert_eq!(exit.and_then(|e| e.signal), Some(libc::SIGTERM));
}

#[tokio::test]
async fn a_service_exiting_before_ready_is_a_failed_attempt_unless_it_daemonizes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let marker = d.join("daemon-up");
    let mut quitter = service("quitter", "exit 0");
    quitter.ready = Some(file_probe(&d.join("never")));
    let mut launcher = service(
        "launcher",
        &format!(
            "(sleep 0.2; touch {}; exec sleep 30) & exit 0",
            marker.display()
        ),
    );
    launcher.daemonizes = true;
    launcher.ready = Some(file_probe(&marker));
    let mut options = Options::new("t");
    options.until_ready = true;
    let (outcome, events) = execute(
        &plan(d, 2, vec![quitter, launcher]),
        options,
        Shutdown::new(),
    )
    .await;
    assert_eq!(outcome, Outcome::Failed);
    assert!(events.iter().any(|e| matches!(&e.kind,
        EventKind::AttemptFailed { component, reason, .. }
            if component == "quitter" && reason.contains("exited before it was ready"))));
    assert!(
        events.iter().any(
            |e| matches!(&e.kind, EventKind::Ready { component, .. } if component == "launcher")
        )
    );
    // The daemon the launcher left behind was stopped with the stack.
    assert!(events.iter().any(
        |e| matches!(&e.kind, EventKind::Stopped { component, .. } if component == "launcher")
    ));
    assert!(leftovers(d).is_empty(), "{:?}", leftovers(d));
}

#[tokio::test]
async fn milestones_complete_as_soon_as_their_dependencies_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let steps = vec![
        task("a", "true"),
        after(
            step("stage", Kind::Task, None),
            &[("a", Condition::Completed)],
        ),
        after(task("b", "true"), &[("stage", Condition::Completed)]),
    ];
    let (outcome, events) = execute(&plan(d, 1, steps), Options::new("t"), Shutdown::new()).await;
    assert_eq!(outcome, Outcome::Success);
    assert_eq!(
        names(&events, |k| matches!(k, EventKind::Completed { .. })),
        vec!["a", "stage", "b"]
    );
    assert!(
        !names(&events, |k| matches!(k, EventKind::Spawned { .. })).contains(&"stage".to_owned())
    );
}

#[tokio::test]
async fn shutdown_stops_dependents_before_their_dependencies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let steps = vec![
        service("db", "exec sleep 30"),
        after(service("api", "exec sleep 30"), &[("db", Condition::Ready)]),
        after(
            service("web", "exec sleep 30"),
            &[("api", Condition::Ready)],
        ),
        service("cache", "exec sleep 30"),
    ];
    let plan = plan(d, 4, steps);
    let shutdown = Shutdown::new();
    let collect = event::Collect::default();
    let mut sink = collect.clone();
    let stopper = shutdown.clone();
    let watcher = collect.clone();
    let run_fut = run(&plan, Options::new("t"), shutdown, &mut sink);
    let trigger = async move {
        // Ask for the stop once the boot has finished.
        loop {
            let done = watcher
                .0
                .lock()
                .expect("no poisoned lock")
                .iter()
                .any(|e| matches!(e.kind, EventKind::BootFinished { .. }));
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stopper.signal_received();
        std::future::pending::<()>().await;
    };
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::select! {
            outcome = run_fut => outcome,
            () = trigger => unreachable!("the trigger never ends"),
        }
    })
    .await
    .expect("the run ends")
    .expect("valid plan");
    assert_eq!(outcome, Outcome::Success);
    let events = collect.0.lock().expect("no poisoned lock").clone();
    let stopped = |n| position(&events, is("stopped", n));
    let stopping = |n| position(&events, is("stopping", n));
    assert!(stopped("web") < stopping("api"));
    assert!(stopped("api") < stopping("db"));
    // Unrelated components are stopped concurrently with the first wave.
    assert!(stopping("cache") < stopped("web"));
}

#[tokio::test]
async fn check_reports_every_problem_of_a_broken_plan() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut bad_signal = task("a", "true");
    bad_signal.stop.signal = "SIGNOPE".to_owned();
    let steps = vec![
        bad_signal,
        after(task("b", "true"), &[("ghost", Condition::Completed)]),
        task("../evil", "true"),
        task("b", "true"),
    ];
    let problems = check(&plan(dir.path(), 1, steps)).expect_err("invalid");
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(problems.iter().any(|p| p.contains("`ghost`")));
    assert!(problems.iter().any(|p| p.contains("appears twice")));
    assert!(problems.iter().any(|p| p.contains("invalid name")));
    assert!(problems.iter().any(|p| p.contains("SIGNOPE")));
    let cyclic = vec![
        after(task("x", "true"), &[("y", Condition::Completed)]),
        after(task("y", "true"), &[("x", Condition::Completed)]),
    ];
    let problems = check(&plan(dir.path(), 1, cyclic)).expect_err("cycle");
    assert!(problems[0].contains("cycle"));
}

#[tokio::test]
async fn components_get_their_environment_and_layer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let out = d.join("env.txt");
    let mut probe_env = task(
        "envcheck",
        &format!(
            "echo \"$RAZAR_COMPONENT $RAZAR_RUN_ID $GREETING $VIRTUAL_ENV\" > {}; echo \"$PATH\" >> {}",
            out.display(),
            out.display()
        ),
    );
    probe_env.env.insert("GREETING".to_owned(), "hi".to_owned());
    probe_env.layer = Some("ml".to_owned());
    let (outcome, _) = execute(
        &plan(d, 1, vec![probe_env]),
        Options::new("run-7"),
        Shutdown::new(),
    )
    .await;
    assert_eq!(outcome, Outcome::Success);
    let text = std::fs::read_to_string(&out).expect("written");
    let mut lines = text.lines();
    let venv = d.join("venv/ml");
    assert_eq!(
        lines.next(),
        Some(format!("envcheck run-7 hi {}", venv.display()).as_str())
    );
    assert!(
        lines
            .next()
            .expect("PATH")
            .starts_with(&format!("{}:", venv.join("bin").display()))
    );
}

/// Spawned pids/pgids/start times by component, from an event list.
fn spawned(events: &[Event]) -> BTreeMap<String, (u32, u32, u64)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Spawned {
                component,
                pid,
                pgid,
                start_time,
                ..
            } => Some((component.clone(), (*pid, *pgid, *start_time))),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn resume_adopts_live_services_skips_completed_tasks_and_restarts_the_rest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let runs = d.join("migrate-runs");
    let steps = vec![
        service("db", "exec sleep 30"),
        after(
            task("migrate", &format!("echo run >> {}", runs.display())),
            &[("db", Condition::Ready)],
        ),
        after(
            service("api", "exec sleep 30"),
            &[("migrate", Condition::Completed)],
        ),
        service("worker", "exec sleep 30"),
    ];
    let plan = plan(d, 4, steps);
    let mut first = Options::new("run-1");
    first.until_ready = true;
    first.keep_running = true;
    let (outcome, events) = execute(&plan, first, Shutdown::new()).await;
    assert_eq!(outcome, Outcome::Success);
    let before = spawned(&events);
    let prior = |name: &str, status: PriorStatus| {
        let (pid, pgid, start_time) = before[name];
        Prior {
            status,
            pid: Some(pid),
            pgid: Some(pgid),
            start_time: Some(start_time),
            attempts: 1,
        }
    };
    // razar "died": db still runs, migrate completed, api was killed behind razar's back,
    // worker's record names a process that is not the one running (start time differs).
    let (api_pid, ..) = before["api"];
    sys::signal_group(api_pid, libc::SIGKILL).expect("kill api");
    // SIGKILL is delivered asynchronously: wait until the process is gone (or a zombie).
    while sys::proc_stat(api_pid).is_some_and(|s| !s.is_zombie()) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut worker = prior("worker", PriorStatus::Running);
    worker.start_time = worker.start_time.map(|t| t + 1);
    let priors = BTreeMap::from([
        ("db".to_owned(), prior("db", PriorStatus::Running)),
        (
            "migrate".to_owned(),
            prior("migrate", PriorStatus::Completed),
        ),
        ("api".to_owned(), prior("api", PriorStatus::Running)),
        ("worker".to_owned(), worker),
    ]);
    let mut second = Options::new("run-2");
    second.resume = true;
    second.priors = priors;
    second.until_ready = true;
    let (outcome, events) = execute(&plan, second, Shutdown::new()).await;
    assert_eq!(outcome, Outcome::Success, "{events:#?}");
    let adopted: Vec<(String, u32)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Adopted { component, pid, .. } => Some((component.clone(), *pid)),
            _ => None,
        })
        .collect();
    assert_eq!(adopted, vec![("db".to_owned(), before["db"].0)]);
    assert!(events.iter().any(|e| matches!(&e.kind,
        EventKind::Skipped { component, reason } if component == "migrate" && reason.contains("earlier run"))));
    let again = spawned(&events);
    assert!(!again.contains_key("db") && !again.contains_key("migrate"));
    assert!(again.contains_key("api"));
    // worker's old process was not identified, so it is cleaned up (found by its environment)
    // before a new one starts: never two at once.
    let old_worker = before["worker"].0;
    assert!(
        position(&events, is("stopped", "worker")) < position(&events, is("spawned", "worker"))
    );
    assert!(!sys::same_process(old_worker, before["worker"].2));
    assert_eq!(
        std::fs::read_to_string(&runs)
            .expect("runs")
            .lines()
            .count(),
        1,
        "migrate ran once"
    );
    // The adopted db was stopped with the stack, though razar is not its parent.
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.kind, EventKind::Stopped { component, .. } if component == "db"))
    );
    assert!(!sys::group_alive(before["db"].1));
    assert!(leftovers(d).is_empty(), "{:?}", leftovers(d));
}

#[tokio::test]
async fn an_adopted_service_that_dies_is_restarted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let mut db = service("db", "exec sleep 30");
    db.restart.policy = RestartMode::OnFailure;
    db.restart.max_attempts = 5;
    let plan = plan(d, 2, vec![db]);
    let mut first = Options::new("run-1");
    first.until_ready = true;
    first.keep_running = true;
    let (_, events) = execute(&plan, first, Shutdown::new()).await;
    let (pid, pgid, start_time) = spawned(&events)["db"];
    let priors = BTreeMap::from([(
        "db".to_owned(),
        Prior {
            status: PriorStatus::Running,
            pid: Some(pid),
            pgid: Some(pgid),
            start_time: Some(start_time),
            attempts: 1,
        },
    )]);
    let shutdown = Shutdown::new();
    let collect = event::Collect::default();
    let mut sink = collect.clone();
    let mut options = Options::new("run-2");
    options.resume = true;
    options.priors = priors;
    let watcher = collect.clone();
    let stopper = shutdown.clone();
    let driver = async move {
        let wait = |pick: fn(&EventKind) -> bool| {
            let watcher = watcher.clone();
            async move {
                while !watcher
                    .0
                    .lock()
                    .expect("lock")
                    .iter()
                    .any(|e| pick(&e.kind))
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        wait(|k| matches!(k, EventKind::Adopted { .. })).await;
        sys::signal_group(pgid, libc::SIGKILL).expect("kill the adopted db");
        wait(|k| matches!(k, EventKind::Ready { .. })).await;
        stopper.signal_received();
        std::future::pending::<()>().await;
    };
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::select! {
            outcome = run(&plan, options, shutdown.clone(), &mut sink) => outcome,
            () = driver => unreachable!("the driver never ends"),
        }
    })
    .await
    .expect("the run ends")
    .expect("valid plan");
    assert_eq!(outcome, Outcome::Success);
    let events = collect.0.lock().expect("lock").clone();
    let exited = position(&events, is("exited", "db"));
    assert!(position(&events, is("restart_scheduled", "db")) > exited);
    let respawned = spawned(&events)["db"].0;
    assert_ne!(respawned, pid);
    assert!(leftovers(d).is_empty());
}

#[tokio::test]
async fn a_completed_task_that_left_a_process_behind_stays_completed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let steps = vec![
        task("spawner", "sleep 30 & echo started"),
        after(
            service("api", "exec sleep 30"),
            &[("spawner", Condition::Completed)],
        ),
    ];
    let mut options = Options::new("t");
    options.until_ready = true;
    let (outcome, events) = execute(&plan(d, 2, steps), options, Shutdown::new()).await;
    assert_eq!(outcome, Outcome::Success, "{events:#?}");
    let (_, spawner_group, _) = spawned(&events)["spawner"];
    assert!(
        !sys::group_alive(spawner_group),
        "its background sleep was ended"
    );
    assert!(
        !names(&events, |k| matches!(
            k,
            EventKind::Stopping { .. } | EventKind::Stopped { .. }
        ))
        .contains(&"spawner".to_owned()),
        "no stop events would turn the completed task into a stopped one"
    );
}

/// Starts `sleep 30` tagged as `component` of state dir `dir`, in its own process group, as
/// an earlier run would have left it.
fn leftover(dir: &Path, component: &str) -> std::process::Child {
    use std::os::unix::process::CommandExt as _;
    std::process::Command::new("sleep")
        .arg("30")
        .env("RAZAR_STATE_DIR", dir)
        .env("RAZAR_COMPONENT", component)
        .process_group(0)
        .spawn()
        .expect("spawn sleep")
}

#[tokio::test]
async fn leftovers_are_stopped_dependents_first_even_across_a_gap() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    // web -> api -> db, with api not running: web must still stop before db.
    let steps = vec![
        service("db", "exec sleep 30"),
        after(service("api", "exec sleep 30"), &[("db", Condition::Ready)]),
        after(
            service("web", "exec sleep 30"),
            &[("api", Condition::Ready)],
        ),
    ];
    let plan = plan(d, 2, steps);
    let mut db = leftover(d, "db");
    let mut web = leftover(d, "web");
    // Wait until the scan sees both (on a machine busy spawning, /proc can lag the spawn).
    let expected = BTreeSet::from(["db".to_owned(), "web".to_owned()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let found = loop {
        let found: BTreeSet<String> = leftovers(d).into_iter().map(|t| t.component).collect();
        if found == expected || std::time::Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(found, expected);
    let collect = event::Collect::default();
    let mut sink = collect.clone();
    let stopped = stop_leftovers(&plan, &BTreeMap::new(), &Shutdown::new(), &mut sink).await;
    assert_eq!(stopped, 2);
    let events = collect.0.lock().expect("lock").clone();
    assert!(position(&events, is("stopped", "web")) < position(&events, is("stopping", "db")));
    assert!(leftovers(d).is_empty());
    let _ = db.wait();
    let _ = web.wait();
}

#[tokio::test]
async fn a_daemon_left_by_its_launcher_is_supervised_and_restarted_when_it_dies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let marker = d.join("daemon-up");
    let mut launcher = service(
        "launcher",
        &format!("(touch {}; exec sleep 30) & exit 0", marker.display()),
    );
    launcher.daemonizes = true;
    launcher.ready = Some(file_probe(&marker));
    launcher.restart.policy = RestartMode::OnFailure;
    launcher.restart.max_attempts = 5;
    // A boot_config-style entry that reports and leaves nothing: nothing to supervise.
    let mut reporter = service("reporter", "echo done");
    reporter.daemonizes = true;
    let plan = plan(d, 2, vec![launcher, reporter]);
    let shutdown = Shutdown::new();
    let collect = event::Collect::default();
    let mut sink = collect.clone();
    let watcher = collect.clone();
    let stopper = shutdown.clone();
    let driver = async move {
        let count = |pick: fn(&EventKind) -> bool| {
            watcher
                .0
                .lock()
                .expect("lock")
                .iter()
                .filter(|e| pick(&e.kind))
                .count()
        };
        while count(|k| matches!(k, EventKind::BootFinished { .. })) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let pgid = watcher
            .0
            .lock()
            .expect("lock")
            .iter()
            .find_map(|e| match &e.kind {
                EventKind::Spawned {
                    component, pgid, ..
                } if component == "launcher" => Some(*pgid),
                _ => None,
            })
            .expect("launcher spawned");
        sys::signal_group(pgid, libc::SIGKILL).expect("kill the daemon");
        while count(|k| matches!(k, EventKind::Ready { component, .. } if component == "launcher"))
            < 2
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stopper.signal_received();
        std::future::pending::<()>().await;
    };
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::select! {
            outcome = run(&plan, Options::new("t"), shutdown.clone(), &mut sink) => outcome,
            () = driver => unreachable!("the driver never ends"),
        }
    })
    .await
    .expect("the run ends")
    .expect("valid plan");
    assert_eq!(outcome, Outcome::Success);
    let events = collect.0.lock().expect("lock").clone();
    let exited = position(&events, is("exited", "launcher"));
    assert!(position(&events, is("restart_scheduled", "launcher")) > exited);
    assert_eq!(
        names(&events, |k| matches!(k, EventKind::Exited { .. })),
        vec!["launcher"]
    );
    assert!(leftovers(d).is_empty(), "{:?}", leftovers(d));
}

#[tokio::test]
async fn a_revision_reorders_skips_and_adds_dependencies_to_steps_not_yet_started() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let gate = d.join("gate");
    // `first` holds the only slot until the test opens the gate; meanwhile a revision moves
    // `c` before `b`, makes `b` wait for `e`, and skips `d` (and so blocks `after-d`).
    let steps = vec![
        task(
            "first",
            &format!("while [ ! -e {} ]; do sleep 0.01; done", gate.display()),
        ),
        after(task("b", "true"), &[("first", Condition::Completed)]),
        after(task("c", "true"), &[("first", Condition::Completed)]),
        after(task("d", "true"), &[("first", Condition::Completed)]),
        after(task("after-d", "true"), &[("d", Condition::Completed)]),
        after(task("e", "true"), &[("first", Condition::Completed)]),
    ];
    let plan = plan(d, 1, steps);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut options = Options::new("t");
    options.revisions = Some(rx);
    let collect = event::Collect::default();
    let mut sink = collect.clone();
    let watcher = collect.clone();
    let driver = async move {
        while !watcher.0.lock().expect("lock").iter().any(
            |e| matches!(&e.kind, EventKind::Spawned { component, .. } if component == "first"),
        ) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let revision = Revision {
            order: ["first", "c", "e", "b", "d", "after-d"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            depends_on: BTreeMap::from([(
                "b".to_owned(),
                vec![crate::config::Dependency {
                    name: "e".to_owned(),
                    condition: Condition::Completed,
                }],
            )]),
            skip: BTreeMap::from([("d".to_owned(), "under maintenance".to_owned())]),
            parallelism: None,
        };
        tx.send(revision).await.expect("the run reads revisions");
        // A revision that would close a cycle (e after b, b after e) is ignored.
        let cycle = Revision {
            depends_on: BTreeMap::from([(
                "e".to_owned(),
                vec![crate::config::Dependency {
                    name: "b".to_owned(),
                    condition: Condition::Completed,
                }],
            )]),
            ..Revision::default()
        };
        tx.send(cycle).await.expect("the run reads revisions");
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(&gate, "").expect("open the gate");
        std::future::pending::<()>().await;
    };
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::select! {
            outcome = run(&plan, options, Shutdown::new(), &mut sink) => outcome,
            () = driver => unreachable!("the driver never ends"),
        }
    })
    .await
    .expect("the run ends")
    .expect("valid plan");
    let events = collect.0.lock().expect("lock").clone();
    // after-d is blocked by the skip: the run is not a full success.
    assert_eq!(outcome, Outcome::Failed, "{events:#?}");
    assert_eq!(
        names(&events, |k| matches!(k, EventKind::Spawned { .. })),
        vec!["first", "c", "e", "b"]
    );
    assert!(events.iter().any(|e| matches!(&e.kind,
        EventKind::Skipped { component, reason } if component == "d" && reason == "under maintenance")));
    assert!(events.iter().any(|e| matches!(&e.kind,
        EventKind::Blocked { component, reason } if component == "after-d" && reason.contains("skipped"))));
}
