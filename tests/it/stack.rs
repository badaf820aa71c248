//! Helpers for executor tests: a temp directory holding a config and small service scripts,
//! `razar apply --json` run as a real child process whose event stream is read live, and
//! process-table checks. Tests synchronise on events, never on sleeps.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use razar::exec::{Event, EventKind};

/// How long any single wait in these tests may take before the test fails (generous: the CI
/// machine is a loaded 2-core box).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A Python service: sleeps `delay` seconds, then listens on `port` and accepts forever.
/// `SIGTERM` ends it unless `ignore_term` is given.
pub const SERVICE_PY: &str = r#"
import os, signal, socket, sys, time
delay, port = float(sys.argv[1]), int(sys.argv[2])
if len(sys.argv) > 3 and sys.argv[3] == "ignore_term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(f"starting on {port} after {delay}s", flush=True)
time.sleep(delay)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(16)
print(f"listening on {port}", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"#;

/// A temp directory with `razar.yaml`, the service script and the state directory `state/`.
pub struct Stack {
    pub dir: tempfile::TempDir,
}

impl Stack {
    pub fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("svc.py"), SERVICE_PY).expect("write svc.py");
        let stack = Stack { dir };
        stack.write_config(config);
        stack
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> PathBuf {
        self.path().join("razar.yaml")
    }

    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    pub fn write_config(&self, config: &str) {
        let text = format!("version: 1\nstate_dir: state\n{config}");
        std::fs::write(self.config(), text).expect("write config");
    }

    /// `razar ARGS...` run in the stack's directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_razar"));
        cmd.args(args)
            .current_dir(self.path())
            .env_remove("RAZAR_LOG");
        cmd
    }

    /// Starts `razar apply -c razar.yaml --json ARGS...` and reads its events as they come.
    pub fn apply(&self, args: &[&str]) -> Apply {
        let mut all = vec!["apply", "-c", "razar.yaml", "--json"];
        all.extend_from_slice(args);
        Apply::spawn(self.command(&all))
    }

    /// `razar apply PLAN_FILE --until-ready`, to completion.
    pub fn apply_plan_file(&self, plan: &str) -> std::process::Output {
        self.run(&["apply", plan, "--until-ready"])
    }

    /// Runs `razar ARGS...` to completion.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().expect("run razar")
    }

    /// [`Stack::run`] for a command that must succeed (its stderr shown if it does not).
    pub fn ok(&self, args: &[&str]) -> std::process::Output {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "razar {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// A free TCP port on 127.0.0.1 for a service to take, released at once. Picked below the
/// kernel's ephemeral range (32768 and up by default) and never twice in this process: a port
/// from there (`bind` to port 0) could be handed, before the service binds it, to another
/// test's port-0 bind or to the client end of a probe's connection, and the service would then
/// fail to start.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Spread over the range by pid, so test processes running side by side rarely meet.
    let offset = std::process::id().wrapping_mul(7919) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free port left below the ephemeral range");
        let port = u16::try_from(LOW + (offset + n) % SPAN).expect("below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running `razar apply --json`.
pub struct Apply {
    pub child: Child,
    rx: mpsc::Receiver<Event>,
    pub events: Vec<Event>,
    stderr: Option<std::thread::JoinHandle<String>>,
    stdout: Option<std::thread::JoinHandle<()>>,
}

impl Apply {
    pub fn spawn(mut command: Command) -> Apply {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn razar");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let stdout = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event: Event = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not an event line ({e}): {line}"));
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        Apply {
            child,
            rx,
            events: Vec::new(),
            stderr: Some(stderr),
            stdout: Some(stdout),
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pids fit in i32")
    }

    /// Waits for the first event (since the start) matching `pick`, and returns it.
    pub fn wait_for(&mut self, what: &str, pick: impl Fn(&EventKind) -> bool) -> Event {
        if let Some(e) = self.events.iter().find(|e| pick(&e.kind)) {
            return e.clone();
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(event) => {
                    self.events.push(event.clone());
                    if pick(&event.kind) {
                        return event;
                    }
                }
                Err(_) => panic!(
                    "timed out waiting for {what}; events so far:\n{}",
                    render(&self.events)
                ),
            }
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "cannot signal razar");
    }

    /// Waits for razar to exit (within `PATIENCE`) and collects every remaining event.
    pub fn finish(mut self) -> Finished {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait razar") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "razar did not exit; events so far:\n{}",
                    render(&self.events)
                );
            }
            match self.rx.recv_timeout(Duration::from_millis(20)) {
                Ok(event) => self.events.push(event),
                Err(_) => continue,
            }
        };
        if let Some(handle) = self.stdout.take() {
            let _ = handle.join();
        }
        self.events.extend(self.rx.try_iter());
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Finished {
            status,
            events: std::mem::take(&mut self.events),
            stderr,
        }
    }
}

impl Drop for Apply {
    fn drop(&mut self) {
        // A failed test must not leave razar (or its stack) running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A finished `razar apply`.
pub struct Finished {
    pub status: ExitStatus,
    pub events: Vec<Event>,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn position(&self, what: &str, pick: impl Fn(&EventKind) -> bool) -> usize {
        self.events
            .iter()
            .position(|e| pick(&e.kind))
            .unwrap_or_else(|| panic!("no {what} in:\n{}", render(&self.events)))
    }

    pub fn count(&self, pick: impl Fn(&EventKind) -> bool) -> usize {
        self.events.iter().filter(|e| pick(&e.kind)).count()
    }

    /// Every process group razar spawned during the run.
    pub fn groups(&self) -> Vec<u32> {
        self.events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::Spawned { pgid, .. } | EventKind::Adopted { pgid, .. } => Some(pgid),
                _ => None,
            })
            .collect()
    }

    pub fn show(&self) -> String {
        format!("{}\nstderr:\n{}", render(&self.events), self.stderr)
    }
}

pub fn render(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| serde_json::to_string(e).expect("events serialise"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The event's kind tag (`"spawned"`, `"ready"`, …).
pub fn tag(kind: &EventKind) -> String {
    serde_json::to_value(kind).expect("events serialise")["event"]
        .as_str()
        .expect("tagged")
        .to_owned()
}

/// A matcher for `tag` events about `component`.
pub fn is<'a>(event: &'a str, component: &'a str) -> impl Fn(&EventKind) -> bool + 'a {
    move |k| tag(k) == event && k.component() == Some(component)
}

/// Live (non-zombie) processes of a process group, from /proc.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let zombie = matches!(fields.first(), Some(&"Z") | Some(&"X"));
        if !zombie && fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
            found.push(pid);
        }
    }
    found
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with(['Z', 'X']))
        })
        .is_some_and(|zombie| !zombie)
}

/// Polls `condition` until it holds (process-table state has no event to wait on).
pub fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    let mut pause = Duration::from_millis(1);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
