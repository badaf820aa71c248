//! `razar status`, `quarantine`, `logs`, `history` and `plan`'s use of state, through the real
//! binary. The state is written by the library's store and recorder — the same calls `razar
//! apply` makes — with real sled databases, lock files and processes in temp dirs.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use razar::exec::{Event, EventKind, ExitInfo, Outcome, Sink};
use razar::state::Store;

const CONFIG: &str = r#"version: 1
state_dir: state
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
  - name: cron
    command: ["sleep", "602"]
"#;

struct Dir {
    tmp: tempfile::TempDir,
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn show(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// The line of stdout about `name` (a row of `razar status` or `quarantine list`).
    fn line_of(&self, name: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no line for {name}: {}", self.show()))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.show()))
    }
}

impl Dir {
    fn new() -> Dir {
        let tmp = tempfile::tempdir().expect("temp dir");
        std::fs::write(tmp.path().join("razar.yaml"), CONFIG).expect("write config");
        Dir { tmp }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    fn razar(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_razar"))
            .args(args)
            .current_dir(self.path())
            .env("NO_COLOR", "1")
            .output()
            .expect("razar runs");
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// A state directory after the boot of [`boot_with_quarantine`], finished: `db` and `cron`
    /// stand for the services still running (killed and reaped when dropped).
    fn after_a_boot() -> (Dir, Proc, Proc) {
        let dir = Dir::new();
        let db = Proc::sleep();
        let cron = Proc::sleep();
        {
            let store = Store::open(&dir.state()).expect("open");
            boot_with_quarantine(&dir, &store, db.pid(), cron.pid());
            finish(&store, &dir);
        }
        (dir, db, cron)
    }

    fn plan(&self) -> razar::plan::Plan {
        let out = self.razar(&["plan", "--format", "json"]);
        assert_eq!(out.code, Some(0), "{}", out.show());
        serde_json::from_str(&out.stdout).expect("plan JSON")
    }
}

fn event(at_ms: u64, kind: EventKind) -> Event {
    Event {
        at_ms,
        time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        kind,
    }
}

fn start_time(pid: u32) -> u64 {
    razar::state::start_time(pid).expect("process has a /proc entry")
}

/// A real process standing in for a component; killed and reaped on drop.
struct Proc(Child);

impl Proc {
    fn sleep() -> Proc {
        Proc(
            Command::new("sleep")
                .arg("300")
                .spawn()
                .expect("sleep runs"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Records what `razar apply` would for a boot where `db` comes up (as `db_proc`), `migrate`
/// completes, `api` fails three times and is quarantined, `web` is blocked and `cron` runs.
fn boot_with_quarantine(dir: &Dir, store: &Store, db_pid: u32, cron_pid: u32) {
    let plan = dir.plan();
    let mut rec = store.recorder(&plan);
    let mut at = 0;
    let mut emit = |kind: EventKind| {
        at += 10;
        rec.emit(&event(at, kind));
    };
    emit(EventKind::RunStarted {
        run_id: "run-1".into(),
        config_hash: plan.config_hash.clone(),
        strategy: "priority".into(),
        parallelism: 4,
        steps: plan.steps.len(),
        resumed: false,
    });
    let spawn = |name: &str, attempt: u32, pid: u32| EventKind::Spawned {
        component: name.into(),
        attempt,
        pid,
        pgid: pid,
        start_time: start_time(pid),
    };
    emit(spawn("migrate", 1, std::process::id()));
    emit(EventKind::Completed {
        component: "migrate".into(),
        attempt: 1,
        after_ms: 120,
    });
    emit(spawn("db", 1, db_pid));
    emit(EventKind::Probe {
        component: "db".into(),
        ok: true,
        detail: "tcp 127.0.0.1:5432 connected".into(),
    });
    emit(EventKind::Ready {
        component: "db".into(),
        attempt: 1,
        after_ms: 250,
    });
    emit(spawn("cron", 1, cron_pid));
    emit(EventKind::Ready {
        component: "cron".into(),
        attempt: 1,
        after_ms: 5,
    });
    let tail = vec![
        "Traceback (most recent call last):".to_owned(),
        "  File \"<frozen runpy>\", line 189, in _run_module_as_main".to_owned(),
        "ModuleNotFoundError: No module named 'api'".to_owned(),
    ];
    for attempt in 1..=3 {
        emit(spawn("api", attempt, std::process::id()));
        emit(EventKind::AttemptFailed {
            component: "api".into(),
            attempt,
            reason: "exited with exit code 1 before it was ready".into(),
            exit: Some(ExitInfo {
                code: Some(1),
                signal: None,
            }),
            log_tail: tail.clone(),
        });
        if attempt < 3 {
            emit(EventKind::RestartScheduled {
                component: "api".into(),
                next_attempt: attempt + 1,
                delay_ms: 100 * u64::from(attempt),
            });
        }
    }
    emit(EventKind::Quarantined {
        component: "api".into(),
        attempts: 3,
        reason: "exited with exit code 1 before it was ready".into(),
        exit: Some(ExitInfo {
            code: Some(1),
            signal: None,
        }),
        log_tail: tail,
    });
    emit(EventKind::Blocked {
        component: "web".into(),
        reason: "depends on `api`, which is quarantined".into(),
    });
    emit(EventKind::BootFinished {
        ready: 3,
        failed: 1,
        blocked: 1,
        elapsed_ms: 900,
    });
}

fn finish(store: &Store, dir: &Dir) {
    let plan = dir.plan();
    let mut rec = store.recorder(&plan);
    rec.emit(&event(
        1_000,
        EventKind::RunFinished {
            outcome: Outcome::Failed,
            elapsed_ms: 1_000,
        },
    ));
}

fn row<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["components"]
        .as_array()
        .expect("components")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no row for {name}: {status:#}"))
}

#[test]
fn after_an_interrupted_run_status_says_what_never_started() {
    let dir = Dir::new();
    {
        let store = Store::open(&dir.state()).expect("open");
        let plan = dir.plan();
        let mut rec = store.recorder(&plan);
        rec.emit(&event(
            0,
            EventKind::RunStarted {
                run_id: "run-1".into(),
                config_hash: plan.config_hash.clone(),
                strategy: "priority".into(),
                parallelism: 4,
                steps: plan.steps.len(),
                resumed: false,
            },
        ));
        rec.emit(&event(
            10,
            EventKind::RunFinished {
                outcome: Outcome::Interrupted,
                elapsed_ms: 10,
            },
        ));
    }
    let out = dir.razar(&["status"]);
    let web = out.line_of("web");
    assert!(web.contains("not started"), "{}", out.show());
    assert!(!web.contains("waiting"), "{}", out.show());
}

#[test]
fn status_reports_components_from_the_database_and_notices_dead_pids() {
    let (dir, mut db, _cron) = Dir::after_a_boot();
    let out = dir.razar(&["status", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    let status = out.json();
    assert_eq!(status["source"], "database");
    assert_eq!(status["apply"]["running"], false);
    assert_eq!(status["run"]["outcome"], "failed");
    let db_row = row(&status, "db");
    assert_eq!(db_row["status"], "ready");
    assert_eq!(db_row["pid"], db.pid());
    assert_eq!(db_row["alive"], true);
    assert!(db_row["uptime_ms"].is_u64(), "{db_row:#}");
    assert_eq!(db_row["last_probe"]["ok"], true);
    let api = row(&status, "api");
    assert_eq!(api["status"], "quarantined");
    assert_eq!(api["restarts"], 2);
    assert_eq!(api["quarantine"]["class"], "dependency");
    assert_eq!(row(&status, "web")["status"], "blocked");
    assert_eq!(row(&status, "migrate")["status"], "completed");

    let out = dir.razar(&["status"]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert!(out.stdout.contains("(from the database)"), "{}", out.show());
    assert!(
        out.stdout
            .contains("apply: not running; last run run-1 finished"),
        "{}",
        out.show()
    );
    let db_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("db "))
        .expect("db line");
    assert!(db_line.contains(&db.pid().to_string()), "{db_line}");
    assert!(!db_line.contains("gone"), "{db_line}");

    // The recorded process dies behind razar's back: status says so.
    db.kill();
    let status = dir.razar(&["status", "--json"]).json();
    assert_eq!(row(&status, "db")["alive"], false);
    assert_eq!(row(&status, "db")["uptime_ms"], serde_json::Value::Null);
    let out = dir.razar(&["status"]);
    let db_line = out.line_of("db");
    assert!(db_line.contains("gone (was ready)"), "{}", out.show());
    assert!(db_line.contains(&db.pid().to_string()), "{}", out.show());
}

#[test]
fn status_and_plan_work_while_an_apply_holds_the_state() {
    let dir = Dir::new();
    let db = Proc::sleep();
    let cron = Proc::sleep();
    // This test process plays the running apply: it holds the lock and the database.
    let store = Store::open(&dir.state()).expect("open");
    boot_with_quarantine(&dir, &store, db.pid(), cron.pid());
    store.sync().expect("snapshot written");

    let out = dir.razar(&["status", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    let status = out.json();
    assert_eq!(status["source"], "razar_state.json");
    assert_eq!(status["apply"]["running"], true);
    assert_eq!(status["apply"]["pid"], std::process::id());
    assert_eq!(status["run"]["phase"], "supervising");
    assert_eq!(row(&status, "db")["alive"], true);
    assert_eq!(row(&status, "api")["status"], "quarantined");
    let out = dir.razar(&["status"]);
    assert!(
        out.stdout.contains(&format!(
            "apply pid {} holds the database",
            std::process::id()
        )),
        "{}",
        out.show()
    );
    assert!(
        out.stdout
            .contains(&format!("apply: running (pid {})", std::process::id())),
        "{}",
        out.show()
    );

    // `plan` leaves the quarantined component out and blocks its dependents, from the
    // snapshot, while the database is locked.
    let plan = dir.plan();
    assert_eq!(plan.excluded.len(), 1);
    assert_eq!(plan.excluded[0].name, "api");
    assert!(
        plan.excluded[0].reason.contains("quarantined since"),
        "{:?}",
        plan.excluded
    );
    let web = plan.step("web").expect("web step");
    assert!(
        web.blocked.as_deref().unwrap_or("").contains("`api`"),
        "{web:?}"
    );
    assert!(plan.step("cron").expect("cron").blocked.is_none());

    // Writing needs the lock: release is refused, naming the holder.
    let out = dir.razar(&["quarantine", "release", "api"]);
    assert_eq!(out.code, Some(2), "{}", out.show());
    assert!(
        out.stderr
            .contains(&format!("pid {} holds the lock", std::process::id())),
        "{}",
        out.show()
    );
    assert!(dir.state().join("quarantine/api.json").exists());
    drop(store);
}

#[test]
fn quarantine_list_show_release_and_the_next_plan() {
    let (dir, _db, _cron) = Dir::after_a_boot();
    let out = dir.razar(&["quarantine", "list"]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    let api_line = out.line_of("api");
    assert!(api_line.contains("dependency"), "{api_line}");
    assert!(api_line.contains(" 3 "), "{api_line}");

    let out = dir.razar(&["quarantine", "show", "api"]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    for expected in [
        "class:    dependency (rule `python-import`)",
        "matched:  ModuleNotFoundError: No module named 'api'",
        "command:  python3 -m api",
        "| ModuleNotFoundError: No module named 'api'",
        "razar quarantine release api",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}\n{}",
            out.show()
        );
    }
    let record = dir.razar(&["quarantine", "show", "api", "--json"]).json();
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.state().join("quarantine/api.json")).expect("file"),
    )
    .expect("JSON");
    assert_eq!(record, file, "show --json prints the record file's content");

    let out = dir.razar(&["quarantine", "show", "web"]);
    assert_eq!(out.code, Some(2), "{}", out.show());
    assert!(
        out.stderr
            .contains("`web` is not quarantined (quarantined: api)"),
        "{}",
        out.show()
    );
    let out = dir.razar(&["quarantine", "show", "../etc"]);
    assert_eq!(out.code, Some(2), "{}", out.show());

    assert_eq!(dir.plan().excluded.len(), 1);
    let out = dir.razar(&[
        "quarantine",
        "release",
        "api",
        "--note",
        "installed the api package",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert!(out.stdout.contains("released `api`"), "{}", out.show());
    assert!(!dir.state().join("quarantine/api.json").exists());
    let log = std::fs::read_to_string(dir.state().join("quarantine_log.md")).expect("log");
    let rows: Vec<&str> = log.lines().filter(|l| l.starts_with("| 20")).collect();
    assert_eq!(rows.len(), 2, "{log}");
    assert!(
        rows[0].contains("| api | quarantined | dependency: "),
        "{log}"
    );
    assert!(
        rows[1].contains("| api | resolved | released: installed the api package |"),
        "{log}"
    );
    // Released with a fresh restart budget (a resume must not count the attempts that
    // quarantined it).
    let status = dir.razar(&["status", "--json"]).json();
    assert_eq!(row(&status, "api")["attempts"], 0, "{status:#}");
    let plan = dir.plan();
    assert!(plan.excluded.is_empty(), "{:?}", plan.excluded);
    assert!(plan.step("web").expect("web").blocked.is_none());
    let out = dir.razar(&["quarantine", "list"]);
    assert!(
        out.stdout.contains("nothing is quarantined"),
        "{}",
        out.show()
    );
    let out = dir.razar(&["quarantine", "release", "api"]);
    assert_eq!(out.code, Some(2), "{}", out.show());
}

#[test]
fn a_release_that_cannot_update_the_files_changes_nothing() {
    let (dir, _db, _cron) = Dir::after_a_boot();
    let record = dir.state().join("quarantine/api.json");
    let log = dir.state().join("quarantine_log.md");
    let log_before = std::fs::read_to_string(&log).expect("log");
    let still_quarantined = |why: &str| {
        let out = dir.razar(&["quarantine", "release", "api", "--note", "fixed"]);
        assert_eq!(out.code, Some(1), "{why}: {}", out.show());
        let list = dir.razar(&["quarantine", "list"]);
        assert!(
            list.stdout.lines().any(|l| l.starts_with("api ")),
            "{why}: {}",
            list.show()
        );
        let status = dir.razar(&["status", "--json"]).json();
        assert_eq!(row(&status, "api")["status"], "quarantined", "{why}");
    };
    // The log cannot take the row: nothing else is touched.
    std::fs::rename(&log, dir.path().join("log.md")).expect("move the log");
    std::fs::create_dir(&log).expect("a directory where the log goes");
    still_quarantined("log is a directory");
    assert!(record.is_file(), "the record file stays");
    std::fs::remove_dir(&log).expect("rmdir");
    std::fs::rename(dir.path().join("log.md"), &log).expect("restore the log");
    // The record file cannot be removed: the database keeps the quarantine and the log has
    // no `resolved` row.
    let saved = std::fs::read(&record).expect("record");
    std::fs::remove_file(&record).expect("rm");
    std::fs::create_dir(&record).expect("a directory where the record goes");
    still_quarantined("record is a directory");
    assert_eq!(std::fs::read_to_string(&log).expect("log"), log_before);
    std::fs::remove_dir(&record).expect("rmdir");
    std::fs::write(&record, saved).expect("restore the record");
    let out = dir.razar(&["quarantine", "release", "api", "--note", "fixed"]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert!(!record.exists());
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(
        log.contains("| api | resolved | released: fixed |"),
        "{log}"
    );
}

#[test]
fn a_quarantine_record_of_a_newer_razar_is_refused_naming_it() {
    let (dir, _db, _cron) = Dir::after_a_boot();
    let file = dir.state().join("quarantine/api.json");
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("record")).expect("JSON");
    record["version"] = serde_json::json!(2);
    std::fs::write(&file, record.to_string()).expect("write");
    let before = std::fs::read(&file).expect("record");
    let out = dir.razar(&["apply", "--until-ready"]);
    assert_eq!(out.code, Some(1), "{}", out.show());
    assert!(
        out.stderr.contains("api.json") && out.stderr.contains("written by a newer razar"),
        "{}",
        out.show()
    );
    assert!(!out.stdout.contains("spawned"), "{}", out.show());
    assert_eq!(
        std::fs::read(&file).expect("record"),
        before,
        "left as it was"
    );
}

#[test]
fn a_stale_lock_file_does_not_block_writers() {
    let (dir, _db, _cron) = Dir::after_a_boot();
    // A razar killed long ago: its pid is dead (a reaped child), the file remains.
    let mut gone = Proc::sleep();
    let dead = gone.pid();
    gone.kill();
    std::fs::write(dir.state().join("razar.lock"), format!("{dead} 1\n")).expect("stale lock");
    let status = dir.razar(&["status", "--json"]).json();
    assert_eq!(status["apply"]["running"], false);
    let out = dir.razar(&["quarantine", "release", "api"]);
    assert_eq!(out.code, Some(0), "{}", out.show());
}

#[test]
fn a_lock_file_naming_a_live_process_that_holds_no_lock_is_not_trusted() {
    let dir = Dir::new();
    drop(Store::open(&dir.state()).expect("open"));
    // A live process named in the file (with or without its start time) that holds no lock
    // on it: written by hand, or copied along with the state directory of a running apply.
    let bystander = Proc::sleep();
    let pid = bystander.pid();
    for line in [format!("{pid} {}\n", start_time(pid)), format!("{pid}\n")] {
        std::fs::write(dir.state().join("razar.lock"), &line).expect("lock file");
        let status = dir.razar(&["status", "--json"]).json();
        assert_eq!(status["apply"]["running"], false, "{line}");
        let out = dir.razar(&["down"]);
        assert_eq!(out.code, Some(0), "{line}: {}", out.show());
        assert!(
            !out.stdout.contains(&pid.to_string()),
            "{line}: {}",
            out.show()
        );
        assert!(
            razar::exec::process_alive(pid, Some(start_time(pid))),
            "{line}: razar down signalled a process holding no lock"
        );
    }
}

#[test]
fn history_shows_learned_durations_and_feeds_the_plan() {
    let (dir, _db, _cron) = Dir::after_a_boot();
    let out = dir.razar(&["history", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    let history = out.json();
    let entry = |name: &str| {
        history["components"]
            .as_array()
            .expect("components")
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name}: {history:#}"))
    };
    assert_eq!(entry("db")["p50_ms"], 250);
    assert_eq!(entry("db")["current"], true);
    assert_eq!(entry("api")["failures"], 3);
    assert_eq!(entry("api")["failure_rate"], 1.0);
    assert_eq!(entry("api")["p50_ms"], serde_json::Value::Null);

    let out = dir.razar(&["history", "db"]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    let line = out.line_of("db");
    assert!(line.contains("250ms"), "{line}");
    assert!(!out.stdout.contains("migrate"), "{}", out.show());
    let out = dir.razar(&["history", "dbb"]);
    assert_eq!(out.code, Some(2), "{}", out.show());
    assert!(out.stderr.contains("did you mean `db`?"), "{}", out.show());

    // The planner weighs components by what history measured.
    let plan = dir.plan();
    let db_step = plan.step("db").expect("db");
    assert_eq!(db_step.weight_ms, 250);
    assert_eq!(
        serde_json::to_value(db_step.weight_source).expect("json"),
        "history-p50"
    );

    // Changing db's command makes its history stale: not used, and marked.
    let changed = CONFIG.replace("[\"sleep\", \"600\"]", "[\"sleep\", \"700\"]");
    std::fs::write(dir.path().join("razar.yaml"), changed).expect("write");
    let plan = dir.plan();
    assert_ne!(
        serde_json::to_value(plan.step("db").expect("db").weight_source).expect("json"),
        "history-p50"
    );
    let out = dir.razar(&["history", "db"]);
    assert!(out.stdout.contains("command changed"), "{}", out.show());
}

#[test]
fn reading_commands_never_create_the_state_dir() {
    let dir = Dir::new();
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["history"],
        vec!["quarantine", "list"],
        vec!["plan"],
        vec!["logs", "db"],
    ] {
        let out = dir.razar(&args);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.show());
    }
    assert!(!dir.state().exists());
    let out = dir.razar(&["status"]);
    assert!(
        out.stdout.contains("nothing recorded yet"),
        "{}",
        out.show()
    );
    assert!(out.stdout.contains("never run"), "{}", out.show());
    let out = dir.razar(&["quarantine", "release", "api"]);
    assert_eq!(out.code, Some(2), "{}", out.show());
    assert!(!dir.state().exists(), "a refused release creates nothing");
    let out = dir.razar(&["logs", "nope"]);
    assert_eq!(out.code, Some(2), "{}", out.show());
}

#[test]
fn down_creates_no_state_dir_and_still_stops_what_carries_its_environment() {
    let dir = Dir::new();
    let out = dir.razar(&["down"]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert!(out.stdout.contains("is running"), "{}", out.show());
    assert!(
        !dir.state().exists(),
        "razar down created {:?}",
        dir.state()
    );
    // The state directory was removed while a component ran: its process is still found by
    // the environment razar gave it.
    let mut cron = Command::new("sleep")
        .arg("300")
        .env("RAZAR_STATE_DIR", dir.state())
        .env("RAZAR_COMPONENT", "cron")
        .spawn()
        .expect("sleep runs");
    let out = dir.razar(&["down"]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert!(out.stdout.contains("cron"), "{}", out.show());
    let status = cron.wait().expect("reaped");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM)
    );
    assert!(
        !dir.state().exists(),
        "razar down created {:?}",
        dir.state()
    );
}

#[test]
fn logs_that_cannot_be_read_are_an_error_naming_the_file() {
    let dir = Dir::new();
    drop(Store::open(&dir.state()).expect("open"));
    let logs = put_a_file_where_the_logs_go(&dir);
    let out = dir.razar(&["logs", "db"]);
    assert_eq!(out.code, Some(1), "{}", out.show());
    assert!(
        out.stderr
            .contains(&format!("cannot read `{}`", logs.join("db.log").display())),
        "{}",
        out.show()
    );
}

#[test]
fn a_missing_or_incomplete_database_is_said_so_and_left_alone() {
    let (dir, _db, _cron) = Dir::after_a_boot();
    // sled's own configuration file gone: refused, not recreated.
    let conf = dir.state().join("db/conf");
    let saved = std::fs::read(&conf).expect("conf");
    std::fs::remove_file(&conf).expect("rm conf");
    let out = dir.razar(&["status"]);
    assert_eq!(out.code, Some(1), "{}", out.show());
    assert!(out.stderr.contains("it is incomplete"), "{}", out.show());
    assert!(!conf.exists(), "a reader recreated {conf:?}");
    std::fs::write(&conf, saved).expect("restore conf");
    // The whole database gone: the snapshot answers, and says why.
    std::fs::remove_dir_all(dir.state().join("db")).expect("rm db");
    let out = dir.razar(&["status"]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert!(
        out.stdout.contains("there is no database at"),
        "{}",
        out.show()
    );
    assert!(!dir.state().join("db").exists());
}

#[test]
fn a_user_who_may_only_read_the_state_directory_gets_the_snapshot() {
    // Dropping to another user needs root (and util-linux's setpriv).
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 || which("setpriv").is_none() {
        eprintln!("skipped: needs root and setpriv to run razar as another user");
        return;
    }
    let as_nobody = || {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_razar"));
        command
    };
    // The build may live where that user cannot reach it (under /root, say).
    if !as_nobody()
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!(
            "skipped: user 65534 cannot run {}",
            env!("CARGO_BIN_EXE_razar")
        );
        return;
    }
    let (dir, _db, _cron) = Dir::after_a_boot();
    let status = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir.path())
        .status()
        .expect("chmod");
    assert!(status.success());
    let out = as_nobody()
        .args(["status", "--json"])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("setpriv runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(row(&status, "api")["status"], "quarantined", "{status:#}");
    let text = as_nobody()
        .arg("status")
        .current_dir(dir.path())
        .output()
        .expect("setpriv runs");
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("this user may not open the database"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

#[test]
fn logs_of_a_component_with_no_output_yet_says_so() {
    let dir = Dir::new();
    let logs = dir.state().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    // A new log directory gets empty files before the components write them.
    std::fs::write(logs.join("db.log"), "").expect("write");
    let out = dir.razar(&["logs", "db"]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert_eq!(out.stdout, "", "{}", out.show());
    assert!(
        out.stderr.contains("no output captured for `db` yet") && out.stderr.contains("is empty"),
        "{}",
        out.show()
    );
    std::fs::remove_file(logs.join("db.log")).expect("rm");
    let out = dir.razar(&["logs", "db"]);
    assert!(out.stderr.contains("does not exist"), "{}", out.show());
}

#[test]
fn damaged_state_is_reported_with_the_file_and_left_alone() {
    let dir = Dir::new();
    std::fs::create_dir_all(dir.state()).expect("mkdir");
    let path = dir.state().join("razar_state.json");
    std::fs::write(&path, "{\"version\": 1, \"generator\": ").expect("write");
    let out = dir.razar(&["status"]);
    assert_eq!(out.code, Some(1), "{}", out.show());
    assert!(out.stderr.contains("razar_state.json"), "{}", out.show());
    assert!(out.stderr.contains("corrupted"), "{}", out.show());
    assert!(!out.stderr.contains("panicked"), "{}", out.show());
    assert_eq!(
        std::fs::read_to_string(&path).expect("kept"),
        "{\"version\": 1, \"generator\": "
    );
    // A state directory written by a newer razar is refused, not rewritten.
    std::fs::write(&path, "{\"version\": 7}").expect("write");
    let out = dir.razar(&["status"]);
    assert_eq!(out.code, Some(1), "{}", out.show());
    assert!(out.stderr.contains("newer razar"), "{}", out.show());
}

#[test]
fn a_state_directory_that_is_not_one_is_refused_with_what_to_do() {
    let dir = Dir::new();
    std::fs::write(dir.state(), "mine").expect("write");
    for args in [
        vec!["apply", "--until-ready"],
        vec!["status"],
        vec!["plan"],
        vec!["down"],
        vec!["compact"],
    ] {
        let out = dir.razar(&args);
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.show());
        assert!(
            out.stderr.contains("is not a directory") && out.stderr.contains("`state_dir`"),
            "{args:?}: {}",
            out.show()
        );
    }
    assert_eq!(std::fs::read_to_string(dir.state()).expect("kept"), "mine");

    // A state file that cannot be written is named as itself, and nothing starts.
    std::fs::remove_file(dir.state()).expect("rm");
    std::fs::create_dir_all(dir.state().join("razar_state.json")).expect("mkdir");
    let out = dir.razar(&["apply", "--until-ready", "--json"]);
    assert_eq!(out.code, Some(1), "{}", out.show());
    assert!(
        out.stderr.contains("razar_state.json")
            && out
                .stderr
                .contains("a directory is where razar keeps a file; move it away")
            && !out.stderr.contains("panicked"),
        "{}",
        out.show()
    );
    assert!(!out.stdout.contains("\"spawned\""), "{}", out.show());

    // A file where the log directory goes: named, with what to do.
    std::fs::remove_dir(dir.state().join("razar_state.json")).expect("rmdir");
    put_a_file_where_the_logs_go(&dir);
    let out = dir.razar(&["apply", "--until-ready"]);
    assert_eq!(out.code, Some(1), "{}", out.show());
    assert!(
        out.stderr
            .contains("a file is where razar keeps its log directory; move it away"),
        "{}",
        out.show()
    );
}

/// Replaces the state directory's `logs/` with a file; returns its path.
fn put_a_file_where_the_logs_go(dir: &Dir) -> PathBuf {
    let logs = dir.state().join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::write(&logs, "not a directory").expect("a file where the logs go");
    logs
}

/// Reads lines from a child's stdout on a thread, so the test can wait with a deadline.
fn line_reader(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn expect_line(rx: &mpsc::Receiver<String>, wanted: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line == wanted => return,
            Ok(_) => {}
            Err(_) => panic!("`razar logs -f` never printed {wanted:?}"),
        }
    }
}

#[test]
fn logs_prints_rotated_then_current_output_and_follows_across_rotation() {
    let dir = Dir::new();
    let logs = dir.state().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    std::fs::write(logs.join("db.log.1"), "old 1\nold 2\n").expect("write");
    std::fs::write(logs.join("db.log"), "new 1\nnew 2\nnew 3\n").expect("write");
    let out = dir.razar(&["logs", "db"]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert_eq!(out.stdout, "old 1\nold 2\nnew 1\nnew 2\nnew 3\n");
    let out = dir.razar(&["logs", "db", "-n", "2"]);
    assert_eq!(out.stdout, "new 2\nnew 3\n");

    let mut child = Command::new(env!("CARGO_BIN_EXE_razar"))
        .args(["logs", "db", "-f", "-n", "1"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("razar logs -f runs");
    let rx = line_reader(&mut child);
    expect_line(&rx, "new 3");
    let append = |line: &str| {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(logs.join("db.log"))
            .expect("open log");
        writeln!(file, "{line}").expect("append");
    };
    append("live 1");
    expect_line(&rx, "live 1");
    // Rotation: the executor renames the log and starts a new one.
    append("last words of the old file");
    std::fs::rename(logs.join("db.log"), logs.join("db.log.1")).expect("rotate");
    std::fs::write(logs.join("db.log"), "fresh 1\n").expect("new log");
    expect_line(&rx, "last words of the old file");
    expect_line(&rx, "fresh 1");
    let _ = child.kill();
    let _ = child.wait();
}
