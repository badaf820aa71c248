//! `razar apply` / `razar down` through the real binary: real processes, real sockets, state
//! in temp dirs; assertions from the `--json` event stream and the process table.

use std::time::Duration;

use razar::exec::{EventKind, Outcome};

use super::stack::{Stack, alive, eventually, free_port, group_members, is, tag};

const QUICK_RESTART: &str = "{policy: on-failure, max_attempts: 5, backoff: {initial: 100ms, max: 2s, jitter: 0, reset_after: 60s}}";

fn svc(name: &str, delay: f64, port: u16, deps: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    command: [python3, svc.py, \"{delay}\", \"{port}\"]\n    cwd: .\n    depends_on: {deps}\n    ready: {{tcp: \"127.0.0.1:{port}\", interval: 200ms, timeout: 20s}}\n{extra}"
    )
}

#[test]
fn diamond_dependents_start_after_readiness_within_the_parallelism_limit() {
    let (p_base, p_left, p_mid, p_right, p_top) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let config = format!(
        "parallelism: 2\ncomponents:\n{}{}{}{}{}",
        svc("base", 0.3, p_base, "[]", ""),
        svc("left", 0.1, p_left, "[base]", ""),
        svc("mid", 0.2, p_mid, "[base]", ""),
        svc("right", 0.4, p_right, "[base]", ""),
        svc(
            "top",
            0.05,
            p_top,
            "{left: ready, mid: ready, right: ready}",
            ""
        ),
    );
    let stack = Stack::new(&config);
    let run = stack.apply(&["--until-ready"]).finish();
    assert_eq!(run.code(), Some(0), "{}", run.show());

    let base_ready = run.position("base ready", is("ready", "base"));
    for branch in ["left", "mid", "right"] {
        assert!(
            run.position("spawn", is("spawned", branch)) > base_ready,
            "{}",
            run.show()
        );
        assert!(
            run.position("ready", is("ready", branch)) < run.position("top", is("spawned", "top")),
            "{}",
            run.show()
        );
    }
    // Components in their start-up phase (spawned, not ready) never exceed parallelism 2.
    let mut starting = 0;
    let mut peak = 0;
    for e in &run.events {
        match e.kind {
            EventKind::Spawned { .. } => starting += 1,
            EventKind::Ready { .. } => starting -= 1,
            _ => {}
        }
        peak = peak.max(starting);
    }
    assert_eq!(peak, 2, "{}", run.show());
    // A dependent starts within milliseconds of its last dependency's readiness.
    let top_spawned = &run.events[run.position("top", is("spawned", "top"))];
    let last_ready = run
        .events
        .iter()
        .filter(|e| {
            ["left", "mid", "right"]
                .iter()
                .any(|b| is("ready", b)(&e.kind))
        })
        .map(|e| e.at_ms)
        .max()
        .expect("branches ready");
    assert!(top_spawned.at_ms - last_ready < 100, "{}", run.show());
    // --until-ready without --keep-running stopped the stack: no process of any group is left.
    for pgid in run.groups() {
        assert!(
            group_members(pgid).is_empty(),
            "group {pgid} still has processes"
        );
    }
}

#[test]
fn a_service_that_crashes_twice_is_restarted_with_growing_backoff_and_ends_ready() {
    let port = free_port();
    let config = format!(
        "components:\n  - name: flaky\n    command: \"n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; if [ $n -lt 3 ]; then echo crash $n; exit 1; fi; exec python3 svc.py 0 {port}\"\n    cwd: .\n    ready: {{tcp: \"127.0.0.1:{port}\", interval: 100ms, timeout: 20s}}\n    restart: {QUICK_RESTART}\n"
    );
    let stack = Stack::new(&config);
    let run = stack.apply(&["--until-ready"]).finish();
    assert_eq!(run.code(), Some(0), "{}", run.show());
    let delays: Vec<(u32, u64)> = run
        .events
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
    assert_eq!(delays, vec![(2, 100), (3, 200)], "{}", run.show());
    let tails: Vec<Vec<String>> = run
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::AttemptFailed { log_tail, .. } => Some(log_tail.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        tails,
        vec![vec!["crash 1".to_owned()], vec!["crash 2".to_owned()]]
    );
    // The backoff really was waited: attempt 3 starts at least 100 + 200 ms after the first.
    let spawns: Vec<u64> = run
        .events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Spawned { .. }))
        .map(|e| e.at_ms)
        .collect();
    assert_eq!(spawns.len(), 3);
    assert!(
        spawns[1] - spawns[0] >= 100 && spawns[2] - spawns[1] >= 200,
        "{spawns:?}"
    );
    assert!(
        run.events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Ready { attempt: 3, .. }))
    );
    let log = std::fs::read_to_string(stack.state().join("logs/flaky.log")).expect("log");
    assert!(log.contains("crash 1") && log.contains("crash 2") && log.contains("listening on"));
}

#[test]
fn a_service_that_always_fails_is_quarantined_and_its_dependents_blocked() {
    let (p_dep, p_free) = (free_port(), free_port());
    let config = format!(
        "components:\n  - name: broken\n    command: \"echo 'ModuleNotFoundError: No module named yaml' >&2; exit 1\"\n    ready: {{tcp: \"127.0.0.1:{p_dep}\", timeout: 5s}}\n    restart: {{policy: on-failure, max_attempts: 3, backoff: {{initial: 50ms, max: 1s, jitter: 0.2, reset_after: 60s}}}}\n{}{}",
        svc("needs-broken", 0.0, p_dep, "[broken]", ""),
        svc("independent", 0.1, p_free, "[]", ""),
    );
    let stack = Stack::new(&config);
    let run = stack.apply(&["--until-ready"]).finish();
    assert_eq!(run.code(), Some(1), "{}", run.show());
    assert_eq!(run.count(is("spawned", "broken")), 3, "{}", run.show());
    let (attempts, tail) = run
        .events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Quarantined {
                attempts, log_tail, ..
            } => Some((*attempts, log_tail.clone())),
            _ => None,
        })
        .expect("quarantined");
    assert_eq!(attempts, 3);
    assert_eq!(tail, vec!["ModuleNotFoundError: No module named yaml"]);
    let reason = run
        .events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Blocked { component, reason } if component == "needs-broken" => {
                Some(reason.clone())
            }
            _ => None,
        })
        .expect("dependent blocked");
    assert!(
        reason.contains("`broken`") && reason.contains("quarantined"),
        "{reason}"
    );
    assert_eq!(run.count(is("spawned", "needs-broken")), 0);
    assert_eq!(run.count(is("ready", "independent")), 1, "{}", run.show());
    let log = std::fs::read_to_string(stack.state().join("logs/broken.log")).expect("log");
    let printed = log
        .lines()
        .filter(|l| *l == "ModuleNotFoundError: No module named yaml")
        .count();
    assert_eq!(printed, 3, "one line per attempt: {log}");
    assert_eq!(
        log.matches("--- razar run").count(),
        3,
        "one header per attempt"
    );
    let finished = run.events.last().expect("events");
    assert!(matches!(
        finished.kind,
        EventKind::RunFinished {
            outcome: Outcome::Failed,
            ..
        }
    ));

    // The quarantine is persisted: its record and a row in ABZU's log table.
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(stack.state().join("quarantine/broken.json")).expect("record"),
    )
    .expect("record is JSON");
    assert_eq!(record["component"], "broken", "{record}");
    assert_eq!(record["attempts"], 3, "{record}");
    let table = std::fs::read_to_string(stack.state().join("quarantine_log.md")).expect("log");
    assert!(table.contains("| broken | quarantined |"), "{table}");

    // The next plan leaves it out and blocks its dependent, with the reason.
    let plan = stack.run(&["plan", "-c", "razar.yaml", "--format", "json"]);
    assert_eq!(plan.status.code(), Some(0));
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("plan JSON");
    assert_eq!(plan["excluded"][0]["name"], "broken", "{plan}");
    // ... and so does the next apply: nothing of `broken` runs, the independent branch does.
    let next = stack.apply(&["--until-ready"]).finish();
    assert_eq!(next.code(), Some(1), "{}", next.show());
    assert_eq!(next.count(is("spawned", "broken")), 0);
    assert_eq!(next.count(is("skipped", "broken")), 1);
    assert_eq!(next.count(is("blocked", "needs-broken")), 1);
    assert_eq!(next.count(is("ready", "independent")), 1);

    // Released, it is planned again.
    stack.ok(&[
        "quarantine",
        "release",
        "broken",
        "-c",
        "razar.yaml",
        "--note",
        "fixed",
    ]);
    let plan = stack.run(&["plan", "-c", "razar.yaml", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("plan JSON");
    assert_eq!(plan["excluded"].as_array().map(Vec::len), Some(0), "{plan}");
    assert!(
        std::fs::read_to_string(stack.state().join("quarantine_log.md"))
            .expect("log")
            .contains("| broken | resolved |")
    );
}

#[test]
fn a_failing_task_blocks_its_dependents() {
    let port = free_port();
    let config = format!(
        "components:\n  - name: migrate\n    kind: task\n    command: \"echo 'relation users does not exist'; exit 3\"\n    restart: {{policy: never}}\n  - name: seed\n    kind: task\n    command: \"true\"\n    depends_on: [migrate]\n{}  - name: lint\n    kind: task\n    command: \"true\"\n",
        svc("api", 0.0, port, "{seed: completed}", ""),
    );
    let stack = Stack::new(&config);
    let run = stack.apply(&[]).finish();
    assert_eq!(run.code(), Some(1), "{}", run.show());
    let failed = run
        .events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::AttemptFailed {
                component,
                exit,
                log_tail,
                ..
            } if component == "migrate" => Some((exit.and_then(|x| x.code), log_tail.clone())),
            _ => None,
        })
        .expect("migrate failed");
    assert_eq!(
        failed,
        (Some(3), vec!["relation users does not exist".to_owned()])
    );
    for blocked in ["seed", "api"] {
        assert_eq!(run.count(is("blocked", blocked)), 1, "{}", run.show());
        assert_eq!(run.count(is("spawned", blocked)), 0);
    }
    assert_eq!(run.count(is("completed", "lint")), 1);
    assert_eq!(
        run.count(|k| tag(k) == "quarantined"),
        0,
        "policy never: no quarantine"
    );
}

/// db <- api <- web, and an unrelated cache: the stop order is web, then api, then db.
fn chain_config(extra_web: &str) -> (String, [u16; 4]) {
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let config = format!(
        "components:\n{}{}{}{}",
        svc("db", 0.0, ports[0], "[]", ""),
        svc("api", 0.0, ports[1], "[db]", ""),
        svc("web", 0.0, ports[2], "[api]", extra_web),
        svc("cache", 0.0, ports[3], "[]", ""),
    );
    (config, ports)
}

#[test]
fn sigint_during_supervision_stops_in_reverse_dependency_order_and_leaves_nothing() {
    let (config, _) = chain_config("");
    let stack = Stack::new(&config);
    let mut apply = stack.apply(&[]);
    apply.wait_for("boot finished", |k| {
        matches!(k, EventKind::BootFinished { .. })
    });
    apply.signal(libc::SIGINT);
    let run = apply.finish();
    assert_eq!(run.code(), Some(0), "{}", run.show());
    let stopped = |n| run.position("stopped", is("stopped", n));
    let stopping = |n| run.position("stopping", is("stopping", n));
    assert!(stopped("web") < stopping("api"), "{}", run.show());
    assert!(stopped("api") < stopping("db"), "{}", run.show());
    assert!(
        stopping("cache") < stopped("web"),
        "unrelated ones stop concurrently"
    );
    assert_eq!(
        run.count(|k| matches!(k, EventKind::Stopped { forced: true, .. })),
        0
    );
    let groups = run.groups();
    assert_eq!(groups.len(), 4);
    for pgid in groups {
        assert!(
            group_members(pgid).is_empty(),
            "group {pgid} still has processes"
        );
    }
}

#[test]
fn a_service_ignoring_sigterm_is_killed_after_its_grace_period() {
    let port = free_port();
    let config = format!(
        "components:\n  - name: stubborn\n    command: [python3, svc.py, \"0\", \"{port}\", ignore_term]\n    cwd: .\n    ready: {{tcp: \"127.0.0.1:{port}\", timeout: 20s}}\n    stop: {{signal: SIGTERM, grace: 600ms}}\n"
    );
    let stack = Stack::new(&config);
    let mut apply = stack.apply(&[]);
    apply.wait_for("ready", is("ready", "stubborn"));
    apply.signal(libc::SIGTERM);
    let run = apply.finish();
    assert_eq!(run.code(), Some(0), "{}", run.show());
    let stopping = &run.events[run.position("stopping", is("stopping", "stubborn"))];
    let stopped = &run.events[run.position("stopped", is("stopped", "stubborn"))];
    assert!(
        matches!(stopped.kind, EventKind::Stopped { forced: true, .. }),
        "{}",
        run.show()
    );
    assert!(stopped.at_ms - stopping.at_ms >= 600, "{}", run.show());
    for pgid in run.groups() {
        assert!(group_members(pgid).is_empty());
    }
}

#[test]
fn a_second_ctrl_c_kills_everything_at_once() {
    let ports = [free_port(), free_port(), free_port()];
    // web ignores SIGTERM: the orderly stop would wait its whole 60 s grace period.
    let config = format!(
        "components:\n{}{}  - name: web\n    command: [python3, svc.py, \"0\", \"{}\", ignore_term]\n    cwd: .\n    depends_on: [api]\n    ready: {{tcp: \"127.0.0.1:{}\"}}\n    stop: {{signal: SIGTERM, grace: 60s}}\n",
        svc("db", 0.0, ports[0], "[]", ""),
        svc("api", 0.0, ports[1], "[db]", ""),
        ports[2],
        ports[2],
    );
    let stack = Stack::new(&config);
    let mut apply = stack.apply(&[]);
    apply.wait_for("boot finished", |k| {
        matches!(k, EventKind::BootFinished { .. })
    });
    apply.signal(libc::SIGINT);
    apply.wait_for("web stopping", is("stopping", "web"));
    let second = std::time::Instant::now();
    apply.signal(libc::SIGINT);
    let run = apply.finish();
    assert!(
        second.elapsed() < Duration::from_secs(10),
        "the second Ctrl-C must not wait for the grace period"
    );
    assert_eq!(run.code(), Some(0), "{}", run.show());
    assert!(run
        .events
        .iter()
        .any(|e| matches!(&e.kind, EventKind::Stopped { component, forced: true, .. } if component == "web")));
    // The stop under way is reported cut short by the second signal.
    assert!(
        run.events.iter().any(|e| matches!(&e.kind,
            EventKind::Stopping { component, signal } if component == "web" && signal == "SIGKILL")),
        "{}",
        run.show()
    );
    for pgid in run.groups() {
        assert!(
            group_members(pgid).is_empty(),
            "group {pgid} still has processes"
        );
    }
}

#[test]
fn a_signal_during_the_boot_interrupts_with_exit_130() {
    let port = free_port();
    let config = format!(
        "components:\n  - name: slow\n    command: [python3, svc.py, \"30\", \"{port}\"]\n    cwd: .\n    ready: {{tcp: \"127.0.0.1:{port}\", timeout: 60s}}\n  - name: after-slow\n    command: \"exec sleep 30\"\n    depends_on: [slow]\n"
    );
    let stack = Stack::new(&config);
    let mut apply = stack.apply(&[]);
    apply.wait_for("slow spawned", is("spawned", "slow"));
    apply.signal(libc::SIGINT);
    let run = apply.finish();
    assert_eq!(run.code(), Some(130), "{}", run.show());
    assert_eq!(run.count(is("spawned", "after-slow")), 0);
    assert!(matches!(
        run.events.last().map(|e| &e.kind),
        Some(EventKind::RunFinished {
            outcome: Outcome::Interrupted,
            ..
        })
    ));
    for pgid in run.groups() {
        assert!(group_members(pgid).is_empty());
    }
}

#[test]
fn a_probe_that_never_passes_times_out_into_a_failed_attempt() {
    let port = free_port();
    let config = format!(
        "components:\n  - name: deaf\n    command: \"exec sleep 30\"\n    ready: {{tcp: \"127.0.0.1:{port}\", interval: 50ms, timeout: 500ms}}\n    restart: {{policy: never}}\n    stop: {{signal: SIGTERM, grace: 2s}}\n"
    );
    let stack = Stack::new(&config);
    let run = stack.apply(&["--until-ready"]).finish();
    assert_eq!(run.code(), Some(1), "{}", run.show());
    let spawned = &run.events[run.position("spawned", is("spawned", "deaf"))];
    let failed = &run.events[run.position("failed", is("attempt_failed", "deaf"))];
    let EventKind::AttemptFailed { reason, exit, .. } = &failed.kind else {
        unreachable!("matched attempt_failed");
    };
    assert!(reason.starts_with("not ready within 500ms"), "{reason}");
    assert!(
        reason.contains("refused"),
        "the last probe result is given: {reason}"
    );
    assert_eq!(exit.and_then(|e| e.signal), Some(libc::SIGTERM));
    assert!(failed.at_ms - spawned.at_ms >= 500, "{}", run.show());
    assert_eq!(
        run.count(is("probe", "deaf")),
        1,
        "probe results reported on change only"
    );
    for pgid in run.groups() {
        assert!(group_members(pgid).is_empty());
    }
}

#[test]
fn until_ready_with_keep_running_leaves_the_stack_up_for_razar_down() {
    let (config, ports) = chain_config("");
    let stack = Stack::new(&config);
    let run = stack.apply(&["--until-ready", "--keep-running"]).finish();
    assert_eq!(run.code(), Some(0), "{}", run.show());
    assert_eq!(run.count(|k| tag(k) == "stopping"), 0);
    let pids: Vec<u32> = run
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Spawned { pid, .. } => Some(pid),
            _ => None,
        })
        .collect();
    assert_eq!(pids.len(), 4);
    for pid in &pids {
        assert!(alive(*pid), "pid {pid} should still run");
    }
    for port in ports {
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("service still listening");
    }
    // A fresh apply refuses to start a second copy.
    let again = stack.run(&["apply", "-c", "razar.yaml", "--until-ready"]);
    assert_eq!(again.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("still running") && stderr.contains("razar down"),
        "{stderr}"
    );

    let down = stack.ok(&["down", "-c", "razar.yaml", "--json"]);
    let events: Vec<razar::exec::Event> = String::from_utf8_lossy(&down.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("event line"))
        .collect();
    let position = |what: &str, name: &str| {
        events
            .iter()
            .position(|e| is(what, name)(&e.kind))
            .unwrap_or_else(|| panic!("no {what} {name}: {}", super::stack::render(&events)))
    };
    assert!(position("stopped", "web") < position("stopping", "api"));
    assert!(position("stopped", "api") < position("stopping", "db"));
    for pgid in run.groups() {
        assert!(
            group_members(pgid).is_empty(),
            "group {pgid} still has processes"
        );
    }
    let nothing = stack.run(&["down", "-c", "razar.yaml"]);
    assert_eq!(nothing.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&nothing.stdout).contains("nothing"));
}

#[test]
fn the_stop_also_ends_processes_that_left_their_component_group() {
    // `setsid` puts the child in a session and group of its own: the group's SIGTERM misses
    // it, the environment razar gave the component still names it.
    let stack = Stack::new(
        "components:\n  - {name: forker, command: \"setsid sleep 311 & exec sleep 310\"}\n",
    );
    let run = stack.apply(&["--until-ready"]).finish();
    assert_eq!(run.code(), Some(0), "{}", run.show());
    let left = razar::exec::leftovers(&stack.state());
    assert!(left.is_empty(), "still running: {left:?}");
    let again = stack.apply(&["--until-ready"]).finish();
    assert_eq!(again.code(), Some(0), "{}", again.show());
}

#[test]
fn log_lines_on_a_stderr_that_is_no_terminal_carry_no_colour_codes() {
    let stack = Stack::new("components:\n  - {name: job, kind: task, command: [\"true\"]}\n");
    let out = stack
        .command(&["apply", "-c", "razar.yaml", "--until-ready"])
        .env("RAZAR_LOG", "debug")
        .env_remove("NO_COLOR")
        .output()
        .expect("razar runs");
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DEBUG"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr}");
}

#[test]
fn an_apply_that_finds_its_database_gone_says_so() {
    let stack = Stack::new("components:\n  - {name: job, kind: task, command: [\"true\"]}\n");
    let run = stack.apply(&["--until-ready"]).finish();
    assert_eq!(run.code(), Some(0), "{}", run.show());
    std::fs::remove_dir_all(stack.state().join("db")).expect("rm db");
    let again = stack.run(&["apply", "-c", "razar.yaml", "--until-ready"]);
    assert_eq!(again.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("there was no state database at") && stderr.contains("started a new one"),
        "{stderr}"
    );
}

#[test]
fn a_saved_plan_runs_as_saved_and_is_refused_once_stale() {
    let stack = Stack::new(
        "components:\n  - name: hello\n    kind: task\n    command: \"echo hello > hello.txt\"\n    cwd: .\n",
    );
    stack.ok(&["plan", "-c", "razar.yaml", "-o", "plan.json"]);
    let run = stack.apply_plan_file("plan.json");
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stack.path().join("hello.txt").exists());

    // The configuration changes: the saved plan no longer describes it.
    std::fs::remove_file(stack.path().join("hello.txt")).expect("remove");
    let text = std::fs::read_to_string(stack.config()).expect("config");
    std::fs::write(stack.config(), text.replace("echo hello", "echo goodbye")).expect("edit");
    let stale = stack.apply_plan_file("plan.json");
    assert_eq!(stale.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&stale.stderr);
    assert!(
        stderr.contains("stale") && stderr.contains("razar plan"),
        "{stderr}"
    );
    assert!(!stack.path().join("hello.txt").exists(), "nothing ran");

    // A hand-edited plan that cannot run is refused before the state directory is touched.
    let fresh = Stack::new("components:\n  - name: hello\n    kind: task\n    command: \"true\"\n");
    let plan = fresh.run(&["plan", "-c", "razar.yaml", "-o", "plan.json"]);
    assert_eq!(plan.status.code(), Some(0));
    let mut edited: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fresh.path().join("plan.json")).expect("plan"),
    )
    .expect("plan JSON");
    edited["steps"][0]["depends_on"] =
        serde_json::json!([{"name": "ghost", "condition": "completed"}]);
    std::fs::write(fresh.path().join("plan.json"), edited.to_string()).expect("write");
    let refused = fresh.apply_plan_file("plan.json");
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("`ghost`, which is not in the plan"),
        "{stderr}"
    );
    assert!(!fresh.state().exists(), "nothing written");

    // A plan file with targets, or something that is not a plan, is a usage error.
    let mixed = stack.run(&["apply", "plan.json", "hello"]);
    assert_eq!(mixed.status.code(), Some(2));
    std::fs::write(stack.path().join("junk.json"), "{\"not\": \"a plan\"}").expect("write");
    let junk = stack.run(&["apply", "junk.json"]);
    assert_eq!(junk.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&junk.stderr).contains("not a razar plan file"));

    // Run from another directory, the plan's relative configuration path is not there.
    let elsewhere = stack.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    let plan_path = stack.path().join("plan.json");
    let out = stack
        .command(&[
            "apply",
            plan_path.to_str().expect("UTF-8 path"),
            "--until-ready",
        ])
        .current_dir(&elsewhere)
        .output()
        .expect("razar runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("its configuration file") && stderr.contains("is not there"),
        "{stderr}"
    );
    // A plan file that does not exist, where there is no default config either.
    let out = stack
        .command(&["apply", "nosuch.json"])
        .current_dir(&elsewhere)
        .output()
        .expect("razar runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`nosuch.json` is not an existing plan file"),
        "{stderr}"
    );
}

#[test]
fn follow_prefixes_live_output_with_the_component_name() {
    let stack = Stack::new(
        "components:\n  - name: greeter\n    kind: task\n    command: \"echo hello from greeter; echo to stderr >&2\"\n",
    );
    let out = stack.ok(&["apply", "-c", "razar.yaml", "--follow"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("greeter | hello from greeter"), "{stdout}");
    assert!(stdout.contains("greeter | to stderr"), "{stdout}");
    assert!(stdout.contains("completed"), "{stdout}");
}

#[test]
fn the_demo_stack_boots_and_stops_cleanly() {
    // config/demo.yaml with its fixed ports moved to free ones and its state dir in a temp dir.
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.yaml"))
        .expect("demo config");
    let mut text = demo.replace("../.razar", "./state");
    for fixed in ["18300", "18301", "18302"] {
        text = text.replace(fixed, &free_port().to_string());
    }
    let stack = Stack::new("");
    std::fs::write(stack.config(), text).expect("write demo");
    let run = stack.apply(&["--until-ready"]).finish();
    assert_eq!(run.code(), Some(0), "{}", run.show());
    for name in ["catalog", "users", "gateway"] {
        assert_eq!(run.count(is("ready", name)), 1, "{}", run.show());
    }
    assert_eq!(run.count(is("completed", "smoke")), 1);
    let gateway = run.position("gateway", is("spawned", "gateway"));
    assert!(run.position("catalog", is("ready", "catalog")) < gateway);
    assert!(run.position("users", is("ready", "users")) < gateway);
    for pgid in run.groups() {
        assert!(group_members(pgid).is_empty());
    }
}

#[test]
fn abzu_fixtures_boot_the_way_abzu_ran_them() {
    let stack = Stack::new("");
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/abzu");
    for file in ["boot_config.json", "razar_config.yaml"] {
        std::fs::copy(format!("{fixtures}/{file}"), stack.path().join(file)).expect("copy");
    }
    // boot_config.json runs `python`, as ABZU did; where only `python3` exists, a `python`
    // next to the fixtures stands in for it.
    let shims = stack.path().join("bin");
    std::fs::create_dir_all(&shims).expect("bin dir");
    let python3 = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("python3"))
        .find(|p| p.is_file())
        .expect("python3 on PATH");
    std::os::unix::fs::symlink(&python3, shims.join("python")).expect("python shim");
    let path = std::env::join_paths(std::iter::once(shims).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    // boot_config.json: each command launched, then its health_check run.
    let mut command =
        stack.command(&["apply", "-c", "boot_config.json", "--json", "--until-ready"]);
    command.env("PATH", &path);
    let boot = super::stack::Apply::spawn(command).finish();
    assert_eq!(boot.code(), Some(0), "{}", boot.show());
    let basic = boot.position("basic ready", is("ready", "basic_service"));
    assert!(basic < boot.position("complex", is("spawned", "complex_service")));
    assert_eq!(boot.count(is("ready", "complex_service")), 1);
    let log =
        std::fs::read_to_string(stack.path().join(".razar/logs/basic_service.log")).expect("log");
    assert!(log.contains("basic service running"), "{log}");

    // razar_config.yaml: every command run to completion, stage by stage.
    let stages =
        super::stack::Apply::spawn(stack.command(&["apply", "-c", "razar_config.yaml", "--json"]))
            .finish();
    assert_eq!(stages.code(), Some(0), "{}", stages.show());
    let order: Vec<String> = stages
        .events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Completed { .. }))
        .filter_map(|e| e.kind.component().map(str::to_owned))
        .collect();
    assert_eq!(order.len(), 7);
    assert_eq!(order[0], "memory_store");
    let pos = |n: &str| order.iter().position(|o| o == n).expect("completed");
    for stage2 in ["chat_gateway", "crown_llm", "vision_adapter"] {
        assert!(pos(stage2) < pos("audio_device"));
    }
    assert!(pos("audio_device") < pos("avatar") && pos("avatar") < pos("video"));
}

#[test]
fn log_files_are_size_capped_with_one_rotation() {
    // The executor's cap is 10 MiB: a chatty service writes more than that, razar's periodic
    // check rotates the log to `.log.1`, and the service keeps its descriptor.
    let stack = Stack::new(
        "components:\n  - name: chatty\n    command: \"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 11000000; exec sleep 30\"\n",
    );
    let mut apply = stack.apply(&[]);
    apply.wait_for("ready", is("ready", "chatty"));
    let rotated = stack.state().join("logs/chatty.log.1");
    eventually("the log is rotated", || rotated.exists());
    let current = stack.state().join("logs/chatty.log");
    assert!(std::fs::metadata(&current).expect("log").len() < 10 * 1024 * 1024);
    apply.signal(libc::SIGTERM);
    let run = apply.finish();
    assert_eq!(run.code(), Some(0), "{}", run.show());
}

#[test]
fn a_second_apply_is_refused_and_razar_down_stops_the_running_one() {
    let (config, _) = chain_config("");
    let stack = Stack::new(&config);
    let mut first = stack.apply(&[]);
    first.wait_for("boot finished", |k| {
        matches!(k, EventKind::BootFinished { .. })
    });
    let second = stack.run(&["apply", "-c", "razar.yaml", "--until-ready"]);
    assert_eq!(second.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("another razar apply") && stderr.contains(&first.pid().to_string()),
        "the refusal names the holder: {stderr}"
    );
    // `razar down` from another terminal: the running apply stops its stack in order.
    let down = stack.ok(&["down", "-c", "razar.yaml"]);
    assert!(String::from_utf8_lossy(&down.stdout).contains(&format!("pid {}", first.pid())));
    let run = first.finish();
    assert_eq!(run.code(), Some(0), "{}", run.show());
    assert!(run.position("web", is("stopped", "web")) < run.position("db", is("stopping", "db")));
    for pgid in run.groups() {
        assert!(
            group_members(pgid).is_empty(),
            "group {pgid} still has processes"
        );
    }
}

#[test]
fn compact_keeps_every_record_and_is_refused_while_an_apply_runs() {
    let (config, _) = chain_config("");
    let stack = Stack::new(&config);
    let history = || {
        let out = stack.ok(&["history", "-c", "razar.yaml", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let samples = |history: &serde_json::Value| -> Vec<(String, u64)> {
        let all = history["components"].as_array().expect("components");
        all.iter()
            .map(|c| {
                (
                    c["name"].as_str().expect("name").to_owned(),
                    c["samples"].as_u64().expect("samples"),
                )
            })
            .collect()
    };
    for _ in 0..3 {
        let run = stack.apply(&["--until-ready"]).finish();
        assert_eq!(run.code(), Some(0), "{}", run.show());
    }
    let before = history();
    let status_before = stack.ok(&["status", "-c", "razar.yaml", "--json"]);
    // A leftover of a compaction killed halfway: never the live database, removed.
    let leftover = stack.state().join("db.compacting");
    std::fs::create_dir_all(&leftover).expect("leftover");
    std::fs::write(leftover.join("junk"), b"x").expect("leftover file");

    let inode = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(stack.state().join("db"))
            .expect("db")
            .ino()
    };
    let original = inode();
    let out = stack.ok(&["compact", "-c", "razar.yaml"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("compacted `"),
        "{out:?}"
    );
    assert_ne!(inode(), original, "the copy took the database's place");
    assert!(!leftover.exists(), "the old copy and the leftover are gone");
    assert_eq!(history(), before, "the history reads the same");
    let status_after = stack.ok(&["status", "-c", "razar.yaml", "--json"]);
    assert_eq!(
        status_after.stdout, status_before.stdout,
        "the status reads the same"
    );

    // The compacted database takes the next boot's samples like any other.
    let mut apply = stack.apply(&[]);
    apply.wait_for("boot finished", |k| {
        matches!(k, EventKind::BootFinished { .. })
    });
    let refused = stack.run(&["compact", "-c", "razar.yaml"]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("another razar apply") && stderr.contains(&apply.pid().to_string()),
        "the refusal names the holder: {stderr}"
    );
    apply.signal(libc::SIGINT);
    let run = apply.finish();
    assert_eq!(run.code(), Some(0), "{}", run.show());
    let grown: Vec<(String, u64)> = samples(&before)
        .into_iter()
        .map(|(n, s)| (n, s + 1))
        .collect();
    assert_eq!(samples(&history()), grown, "one more sample each");

    let none = stack.run(&["compact", "--state-dir", "no-such-dir"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("there is no state database"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
}

/// Holds `razar.lock` as a running `razar compact` would (its own pid, start time and role),
/// until a line arrives on its stdin.
const HOLD_AS_COMPACTION: &str = r#"
import fcntl, os, sys
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
start = open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]
f.seek(0); f.truncate(); f.write(f"{os.getpid()} {start} compact\n"); f.flush()
print("held", flush=True)
sys.stdin.readline()
f.truncate(0)
"#;

#[test]
fn a_running_compaction_is_named_and_razar_down_waits_for_it() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let stack = Stack::new("components:\n  - {name: job, kind: task, command: [\"true\"]}\n");
    let run = stack.apply(&["--until-ready"]).finish();
    assert_eq!(run.code(), Some(0), "{}", run.show());
    let mut holder = std::process::Command::new("python3")
        .args(["-c", HOLD_AS_COMPACTION])
        .arg(stack.state().join("razar.lock"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut held = String::new();
    BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut held)
        .expect("read");
    assert_eq!(held.trim(), "held");
    let pid = holder.id().to_string();

    let refused = stack.run(&["apply", "-c", "razar.yaml", "--until-ready"]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("razar compact is rewriting") && stderr.contains(&pid),
        "{stderr}"
    );
    let status = stack.ok(&["status", "-c", "razar.yaml"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!(
            "razar compact (pid {pid}) is rewriting the database"
        )),
        "{text}"
    );
    let status = stack.ok(&["status", "-c", "razar.yaml", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(json["apply"]["running"], false, "{json:#}");
    assert_eq!(json["compaction"]["pid"].to_string(), pid, "{json:#}");

    // `razar down` does not signal the compaction: it waits for it, then finds nothing running.
    let mut down = stack
        .command(&["down", "-c", "razar.yaml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("razar down");
    let mut lines = BufReader::new(down.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("read");
    assert!(
        first.contains("waiting: razar compact is rewriting the database"),
        "{first}"
    );
    writeln!(holder.stdin.take().expect("stdin")).expect("release");
    assert!(holder.wait().expect("holder exits").success());
    let rest: Vec<String> = lines.map(|l| l.expect("read")).collect();
    assert!(down.wait().expect("down exits").success(), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("nothing of")), "{rest:?}");
}

#[test]
fn an_apply_leaves_every_checkpoint_in_the_database_when_it_exits() {
    let stack = Stack::new(
        "components:\n  - {name: prep, kind: task, command: [\"true\"]}\n  - {name: work, kind: task, command: [\"true\"], depends_on: [prep]}\n",
    );
    for boot in 1..=2u64 {
        let run = stack.apply(&["--until-ready"]).finish();
        assert_eq!(run.code(), Some(0), "{}", run.show());
        // The last checkpoint reached sled and was flushed before razar exited (it leaves
        // sled's cache to the kernel): nothing is left for the next opening to replay.
        let journal = std::fs::metadata(stack.state().join("db.journal")).expect("journal");
        assert_eq!(journal.len(), 0, "boot {boot} left its journal unapplied");
        // And the database is unlocked: a reader opens it and finds this boot's samples.
        let out = stack.ok(&["history", "-c", "razar.yaml", "--json"]);
        let history: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        for name in ["prep", "work"] {
            let entry = history["components"]
                .as_array()
                .and_then(|all| all.iter().find(|c| c["name"] == name))
                .unwrap_or_else(|| panic!("no {name}: {history:#}"));
            assert_eq!(
                entry["samples"], boot,
                "{name} after boot {boot}: {history:#}"
            );
        }
    }
}
