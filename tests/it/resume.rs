//! `razar apply --resume` after razar itself was SIGKILLed mid-boot: adopted services keep
//! their pids, completed tasks do not run again, the rest is started, and no component ever
//! has two processes. Checked from the event streams and the process table.

use razar::exec::EventKind;

use super::stack::{Stack, alive, free_port, group_members, is};

/// Processes whose environment names `component` and the stack's state directory.
fn processes_of(stack: &Stack, component: &str) -> Vec<u32> {
    let want_dir = format!("RAZAR_STATE_DIR={}", stack.state().display());
    let want_name = format!("RAZAR_COMPONENT={component}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
        if vars.contains(&want_dir.as_bytes()) && vars.contains(&want_name.as_bytes()) && alive(pid)
        {
            found.push(pid);
        }
    }
    found
}

fn pid_of(events: &[razar::exec::Event], component: &str) -> u32 {
    events
        .iter()
        .rev()
        .find_map(|e| match &e.kind {
            EventKind::Spawned {
                component: c, pid, ..
            } if c == component => Some(*pid),
            EventKind::Adopted {
                component: c, pid, ..
            } if c == component => Some(*pid),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no pid for {component}"))
}

#[test]
fn resume_after_sigkill_adopts_skips_and_starts_without_running_anything_twice() {
    let (db, api, web) = (free_port(), free_port(), free_port());
    // api hangs on its first start (listens only after 60 s), so razar is killed mid-boot with
    // api still starting; a later start listens at once.
    let config = format!(
        "components:
  - name: db
    command: [python3, svc.py, \"0\", \"{db}\"]
    cwd: .
    ready: {{tcp: \"127.0.0.1:{db}\"}}
  - name: migrate
    kind: task
    command: \"echo migrated >> migrations.txt\"
    cwd: .
    depends_on: [db]
  - name: api
    command: \"n=$(cat api-starts 2>/dev/null || echo 0); n=$((n+1)); echo $n > api-starts; if [ $n -eq 1 ]; then exec python3 svc.py 60 {api}; else exec python3 svc.py 0 {api}; fi\"
    cwd: .
    depends_on: {{migrate: completed}}
    ready: {{tcp: \"127.0.0.1:{api}\", timeout: 120s}}
  - name: web
    command: [python3, svc.py, \"0\", \"{web}\"]
    cwd: .
    depends_on: [api]
    ready: {{tcp: \"127.0.0.1:{web}\"}}
"
    );
    let stack = Stack::new(&config);
    let mut first = stack.apply(&[]);
    first.wait_for("api spawned", is("spawned", "api"));
    first.signal(libc::SIGKILL);
    let killed = first.finish();
    assert_eq!(killed.status.code(), None, "razar died of SIGKILL");
    let db_pid = pid_of(&killed.events, "db");
    let old_api = pid_of(&killed.events, "api");
    assert!(alive(db_pid) && alive(old_api), "components outlive razar");
    assert_eq!(killed.count(is("completed", "migrate")), 1);

    // Without --resume, a fresh apply refuses to start a second copy.
    let fresh = stack.run(&["apply", "-c", "razar.yaml", "--until-ready"]);
    assert_eq!(fresh.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&fresh.stderr).contains("--resume"));

    let mut resumed = stack.apply(&["--resume"]);
    resumed.wait_for("boot finished", |k| {
        matches!(k, EventKind::BootFinished { .. })
    });
    // One process per component, while the stack runs.
    for component in ["db", "api", "web"] {
        let pids = processes_of(&stack, component);
        assert_eq!(pids.len(), 1, "{component}: {pids:?}");
    }
    assert_eq!(processes_of(&stack, "db"), vec![db_pid], "db kept its pid");
    assert!(!alive(old_api), "the hung api was cleaned up");
    resumed.signal(libc::SIGINT);
    let run = resumed.finish();
    assert_eq!(run.code(), Some(0), "{}", run.show());

    let started = run.events.first().expect("events");
    assert!(matches!(
        started.kind,
        EventKind::RunStarted { resumed: true, .. }
    ));
    assert!(run.events.iter().any(|e| matches!(&e.kind,
        EventKind::Adopted { component, pid, .. } if component == "db" && *pid == db_pid)));
    assert_eq!(run.count(is("spawned", "db")), 0, "{}", run.show());
    assert_eq!(run.count(is("skipped", "migrate")), 1, "{}", run.show());
    assert_eq!(run.count(is("spawned", "migrate")), 0);
    let migrations = std::fs::read_to_string(stack.path().join("migrations.txt")).expect("file");
    assert_eq!(migrations.lines().count(), 1, "migrate ran once");
    // The old api is stopped before the new one starts; web starts for the first time.
    assert!(
        run.position("old api stopped", is("stopped", "api"))
            < run.position("api spawned", is("spawned", "api"))
    );
    assert_eq!(run.count(is("ready", "api")), 1);
    assert_eq!(run.count(is("ready", "web")), 1);
    // Ctrl-C stopped everything, the adopted db included (razar is not its parent).
    for group in killed.groups().into_iter().chain(run.groups()) {
        assert!(
            group_members(group).is_empty(),
            "group {group} still has processes"
        );
    }
    for component in ["db", "api", "web"] {
        assert!(
            processes_of(&stack, component).is_empty(),
            "{component} left running"
        );
    }
}

#[test]
fn resume_stops_what_the_configuration_no_longer_declares() {
    let stack = Stack::new(
        "components:\n  - {name: keep, command: [sleep, \"321\"]}\n  - {name: removed, command: [sleep, \"322\"]}\n",
    );
    let first = stack.apply(&["--until-ready", "--keep-running"]).finish();
    assert_eq!(first.code(), Some(0), "{}", first.show());
    let keep = pid_of(&first.events, "keep");
    let removed = pid_of(&first.events, "removed");
    stack.write_config(
        "components:\n  - {name: keep, command: [sleep, \"321\"]}\n  - {name: added, command: [sleep, \"323\"]}\n",
    );
    // A fresh apply is refused, with advice that works for each leftover.
    let refused = stack.run(&["apply", "-c", "razar.yaml", "--until-ready"]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!(
            "keep (pid {keep}): `razar apply --resume` adopts them"
        )) && stderr.contains(&format!(
            "removed (pid {removed}), which the configuration no longer declares"
        )),
        "{stderr}"
    );
    let resumed = stack
        .apply(&["--resume", "--until-ready", "--keep-running"])
        .finish();
    assert_eq!(resumed.code(), Some(0), "{}", resumed.show());
    assert_eq!(pid_of(&resumed.events, "keep"), keep, "keep is adopted");
    assert!(
        resumed
            .events
            .iter()
            .any(|e| is("stopped", "removed")(&e.kind)),
        "{}",
        resumed.show()
    );
    assert!(!alive(removed), "removed still runs");
    assert!(processes_of(&stack, "removed").is_empty());
    assert_eq!(processes_of(&stack, "added").len(), 1);
    let down = stack.run(&["down", "-c", "razar.yaml"]);
    assert_eq!(down.status.code(), Some(0));
    assert!(processes_of(&stack, "keep").is_empty());
    assert!(processes_of(&stack, "added").is_empty());
}

#[test]
fn a_resumed_run_goes_on_counting_the_attempts_of_a_failing_component() {
    let stack = Stack::new(
        "components:
  - name: failer
    command: \"echo try >> tries.txt; exit 2\"
    cwd: .
    restart: {policy: on-failure, max_attempts: 2, backoff: {initial: 30s, max: 30s, jitter: 0}}
",
    );
    let mut first = stack.apply(&[]);
    // Attempt 1 failed and attempt 2 waits 30 s: razar dies meanwhile.
    first.wait_for("restart scheduled", is("restart_scheduled", "failer"));
    first.signal(libc::SIGKILL);
    let killed = first.finish();
    assert_eq!(killed.status.code(), None, "razar died of SIGKILL");
    let resumed = stack.apply(&["--resume", "--until-ready"]).finish();
    assert_eq!(resumed.code(), Some(1), "{}", resumed.show());
    let attempts: Vec<u32> = resumed
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Spawned {
                component, attempt, ..
            } if component == "failer" => Some(*attempt),
            _ => None,
        })
        .collect();
    // The resumed run starts attempt 2, the last one: its failure quarantines at once.
    assert_eq!(attempts, [2], "{}", resumed.show());
    assert_eq!(resumed.count(is("quarantined", "failer")), 1);
    let tries = std::fs::read_to_string(stack.path().join("tries.txt")).expect("file");
    assert_eq!(
        tries.lines().count(),
        2,
        "max_attempts counts across the resume"
    );
}

#[test]
fn a_daemonizing_service_is_seen_running_and_adopted_by_its_daemon() {
    let port = free_port();
    let stack = Stack::new(&format!(
        "components:
  - name: dmn
    daemonizes: true
    command: \"python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 & exit 0\"
    ready: {{tcp: \"127.0.0.1:{port}\", timeout: 10s}}
"
    ));
    let first = stack.apply(&["--until-ready", "--keep-running"]).finish();
    assert_eq!(first.code(), Some(0), "{}", first.show());
    let daemon = processes_of(&stack, "dmn");
    assert_eq!(daemon.len(), 1, "{daemon:?}");
    // The launcher exited; status finds the daemon.
    let status = stack.ok(&["status", "-c", "razar.yaml", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    let row = &status["components"][0];
    assert_eq!(row["alive"], true, "{status:#}");
    assert_eq!(row["pid"], daemon[0], "{status:#}");
    // A resume adopts it instead of stopping and launching it again.
    let resumed = stack
        .apply(&["--resume", "--until-ready", "--keep-running"])
        .finish();
    assert_eq!(resumed.code(), Some(0), "{}", resumed.show());
    assert_eq!(resumed.count(is("adopted", "dmn")), 1, "{}", resumed.show());
    assert_eq!(
        resumed.count(is("stopping", "dmn")),
        0,
        "{}",
        resumed.show()
    );
    assert_eq!(resumed.count(is("spawned", "dmn")), 0, "{}", resumed.show());
    assert_eq!(processes_of(&stack, "dmn"), daemon);
    let down = stack.run(&["down", "-c", "razar.yaml"]);
    assert_eq!(down.status.code(), Some(0));
    assert!(
        processes_of(&stack, "dmn").is_empty(),
        "the daemon was stopped"
    );
}

#[test]
fn reading_commands_leave_the_journal_of_a_killed_apply_alone() {
    let stack = Stack::new("components:\n  - {name: svc, command: [sleep, \"331\"]}\n");
    let mut first = stack.apply(&[]);
    first.wait_for("boot finished", |k| {
        matches!(k, EventKind::BootFinished { .. })
    });
    first.signal(libc::SIGKILL);
    let killed = first.finish();
    assert_eq!(killed.status.code(), None, "razar died of SIGKILL");
    let journal = stack.state().join("db.journal");
    let mut before = std::fs::read(&journal).expect("journal");
    assert!(!before.is_empty(), "the killed apply left its journal");
    // An unreadable entry after the good ones: readers read up to it and leave it there.
    before.extend_from_slice(b"{not json\n");
    std::fs::write(&journal, &before).expect("append");
    for args in [
        vec!["status", "-c", "razar.yaml", "--json"],
        vec!["history", "-c", "razar.yaml", "--json"],
        vec!["plan", "-c", "razar.yaml"],
        vec!["quarantine", "list", "-c", "razar.yaml"],
    ] {
        let out = stack.ok(&args);
        assert_eq!(
            std::fs::read(&journal).expect("journal"),
            before,
            "{args:?}"
        );
        if args[0] == "status" {
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
            assert_eq!(status["components"][0]["status"], "ready", "{status:#}");
        }
        if args[0] == "history" {
            // The sample of svc's readiness is in the journal only.
            let history: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
            assert_eq!(history["components"][0]["samples"], 1, "{history:#}");
        }
    }
    let names: Vec<String> = std::fs::read_dir(stack.state())
        .expect("state dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("damaged")),
        "a reader set the journal aside: {names:?}"
    );
    let down = stack.run(&["down", "-c", "razar.yaml"]);
    assert_eq!(down.status.code(), Some(0));
}

#[test]
fn a_removed_snapshot_is_written_again_while_the_stack_runs() {
    let stack = Stack::new("components:\n  - {name: svc, command: [sleep, \"341\"]}\n");
    let mut apply = stack.apply(&[]);
    apply.wait_for("boot finished", |k| {
        matches!(k, EventKind::BootFinished { .. })
    });
    let snapshot = stack.state().join("razar_state.json");
    // Once the snapshot shows the boot finished, nothing in the stack changes any more.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&snapshot).unwrap_or_default();
        let shown: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if shown["run"]["phase"] == "supervising" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::remove_file(&snapshot).expect("rm razar_state.json");
    // Nothing happens in the stack: the writer notices on its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !snapshot.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "razar_state.json was not written again"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = stack.ok(&["status", "-c", "razar.yaml", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    assert_eq!(status["components"][0]["status"], "ready", "{status:#}");
    apply.signal(libc::SIGINT);
    let run = apply.finish();
    assert_eq!(run.code(), Some(0), "{}", run.show());
}

#[test]
fn razar_down_stops_the_stack_even_when_its_state_is_damaged() {
    let stack = Stack::new("components:\n  - {name: svc, command: [sleep, \"351\"]}\n");
    let run = stack.apply(&["--until-ready", "--keep-running"]).finish();
    assert_eq!(run.code(), Some(0), "{}", run.show());
    assert_eq!(processes_of(&stack, "svc").len(), 1);
    // A record no razar can read (`svc`'s checkpoint replaced by a bare string).
    let mut journal = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(stack.state().join("db.journal"))
        .expect("journal");
    std::io::Write::write_all(
        &mut journal,
        b"{\"op\":\"put\",\"tree\":\"components\",\"key\":\"737663\",\"value\":\"oops\"}\n",
    )
    .expect("append");
    let status = stack.run(&["status", "-c", "razar.yaml"]);
    assert_eq!(status.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&status.stderr).contains("to start afresh, move it"),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let down = stack.run(&["down", "-c", "razar.yaml"]);
    assert_eq!(down.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(
        stderr.contains("is corrupted") && stderr.contains("without recording it"),
        "{stderr}"
    );
    assert!(processes_of(&stack, "svc").is_empty(), "svc still runs");
}

#[test]
fn razar_down_on_a_copied_state_directory_leaves_the_original_stack_alone() {
    let stack = Stack::new("components:\n  - {name: svc, command: [sleep, \"361\"]}\n");
    let run = stack.apply(&["--until-ready", "--keep-running"]).finish();
    assert_eq!(run.code(), Some(0), "{}", run.show());
    let svc = pid_of(&run.events, "svc");
    // A copy of the state directory, with its records naming the original's processes.
    let copy = stack.path().join("copy");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(stack.state())
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success());
    std::fs::write(
        stack.path().join("copy.yaml"),
        "version: 1\nstate_dir: copy\ncomponents:\n  - {name: svc, command: [sleep, \"361\"]}\n",
    )
    .expect("write config");
    let down = stack.run(&["down", "-c", "copy.yaml"]);
    assert_eq!(down.status.code(), Some(0));
    assert!(
        alive(svc),
        "razar down on the copy stopped the original's svc"
    );
    let down = stack.run(&["down", "-c", "razar.yaml"]);
    assert_eq!(down.status.code(), Some(0));
    assert!(!alive(svc), "svc still runs");
}
