//! Execution: a [`Plan`] becomes running processes, supervised until the run is stopped.
//!
//! One scheduler loop ([`run`]) owns all run state: which components wait, which are ready
//! to start (ordered by plan position), how many hold a start-up slot, every process and its
//! attempt counter. Per-attempt watcher tasks (child exit, readiness probe) and stop tasks
//! live in one `JoinSet` and only *report* to the loop through a channel; the loop decides
//! everything (start, restart, quarantine, block, stop) and emits one [`Event`] per
//! transition to a [`Sink`]. It never prints, never touches sled or sockets, and never reads a
//! `Config`. See `docs/execution.md` for the semantics.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{Condition, Kind};
use crate::plan::{Plan, Step, WeightSource};

pub mod event;
mod logs;
mod probe;
mod process;
mod restart;
pub mod signal;
pub(crate) mod sys;

pub use event::{Event, EventKind, ExitInfo, Outcome, Sink};
pub use logs::DEFAULT_MAX_BYTES as DEFAULT_LOG_MAX_BYTES;
pub use logs::RotationWatch;
pub use signal::{CancelReason, Shutdown};
pub use sys::Tagged;

/// A service without a readiness probe is ready once it has stayed alive this long after its
/// spawn: long enough to catch a command that is not found or crashes on start-up, short
/// enough not to slow a boot noticeably.
pub const LIVENESS_WINDOW: Duration = Duration::from_millis(100);

/// On resume, how long an adopted service's probe may take to pass before razar gives up on
/// it, kills its group and starts it afresh.
const ADOPT_PROBE_WINDOW: Duration = Duration::from_secs(2);

/// How often live log files are checked against the size cap, and daemons for being alive.
const ROTATE_EVERY: Duration = Duration::from_secs(2);

/// How often `--follow` reads new output.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

/// What an earlier, interrupted run left behind for one component, as the state store
/// recorded it; `apply --resume` passes these to the executor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Prior {
    pub status: PriorStatus,
    pub pid: Option<u32>,
    pub pgid: Option<u32>,
    /// Process start time in clock ticks since boot (/proc/PID/stat field 22).
    pub start_time: Option<u64>,
    pub attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PriorStatus {
    /// A task that exited 0: never run again on resume.
    Completed,
    /// A process was spawned and may still run (starting, ready, or being restarted).
    Running,
    /// Its last attempt in the latest run (or in the run that one resumed) failed, and a
    /// restart may have been scheduled: resumed, it goes on from its next attempt, so a crash
    /// of razar does not renew its restart budget.
    Failing,
    /// Anything else (waiting, blocked, stopped): start afresh.
    Other,
}

/// Receives the live output of components (`--follow`), line by line.
pub trait Output: Send {
    fn line(&mut self, component: &str, line: &str);
}

/// How to run a plan.
pub struct Options {
    /// Identifies this run (`RAZAR_RUN_ID` in every component's environment).
    pub run_id: String,
    /// Re-adopt what an earlier run left running (`--resume`).
    pub resume: bool,
    /// The earlier run's records, by component name (used with `resume`).
    pub priors: BTreeMap<String, Prior>,
    /// Return once every component is up (`--until-ready`) …
    pub until_ready: bool,
    /// … and leave the services running (`--keep-running`).
    pub keep_running: bool,
    /// Overrides the plan's parallelism.
    pub parallelism: Option<usize>,
    /// Size cap of one component log before rotation.
    pub log_max_bytes: u64,
    /// Where live output goes (`--follow`).
    pub follow: Option<Box<dyn Output>>,
    /// Changes to the boot while it runs (Crown's mid-boot suggestions, once judged): they
    /// apply to the steps that have not started yet.
    pub revisions: Option<mpsc::Receiver<Revision>>,
}

/// A change to a running boot, for the steps that have not started yet. Steps already
/// started (or done) are left as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Revision {
    /// The new start order, by step name (steps not listed keep their order, after these).
    pub order: Vec<String>,
    /// Dependencies to add, by step (an edge that would close a cycle is ignored).
    pub depends_on: BTreeMap<String, Vec<crate::config::Dependency>>,
    /// Steps left out of the rest of this boot, with the reason (their dependents block).
    pub skip: BTreeMap<String, String>,
    /// A new limit on components in their start-up phase.
    pub parallelism: Option<usize>,
}

impl Options {
    pub fn new(run_id: impl Into<String>) -> Self {
        Self {
            run_id: run_id.into(),
            resume: false,
            priors: BTreeMap::new(),
            until_ready: false,
            keep_running: false,
            parallelism: None,
            log_max_bytes: logs::DEFAULT_MAX_BYTES,
            follow: None,
            revisions: None,
        }
    }
}

/// Why a plan cannot be executed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The plan itself is inconsistent (a hand-edited or corrupted plan file): every problem.
    #[error("the plan cannot be executed: {}", .0.join("; "))]
    InvalidPlan(Vec<String>),
    #[error("cannot create the log directory `{path}`")]
    Logs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Checks that a plan can be executed: unique valid names, known dependencies, no cycle,
/// runnable probes and known stop signals. Every problem is returned, sorted.
pub fn check(plan: &Plan) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let mut index = HashMap::new();
    for (i, step) in plan.steps.iter().enumerate() {
        if !crate::config::valid_name(&step.name) {
            problems.push(format!(
                "step `{}` has an invalid name (only [A-Za-z0-9_.-], 1 to 64 characters)",
                step.name
            ));
        }
        if index.insert(step.name.as_str(), i).is_some() {
            problems.push(format!("step `{}` appears twice", step.name));
        }
    }
    let excluded: BTreeSet<&str> = plan.excluded.iter().map(|e| e.name.as_str()).collect();
    for step in &plan.steps {
        for dep in &step.depends_on {
            match index.get(dep.name.as_str()) {
                Some(&d) => {
                    let target = &plan.steps[d];
                    if target.kind == Kind::Service && dep.condition == Condition::Completed {
                        problems.push(format!(
                            "step `{}` waits for service `{}` to be `completed`, which a service never is",
                            step.name, dep.name
                        ));
                    }
                }
                None if excluded.contains(dep.name.as_str()) => {}
                None => problems.push(format!(
                    "step `{}` depends on `{}`, which is not in the plan",
                    step.name, dep.name
                )),
            }
        }
        if let Some(command) = &step.command
            && command.argv().first().is_none_or(|p| p.is_empty())
        {
            problems.push(format!("step `{}` has an empty command", step.name));
        }
        if let Some(probe) = &step.ready
            && let Err(err) = probe::validate(probe)
        {
            problems.push(format!("step `{}`: {err}", step.name));
        }
        if sys::signal_number(&step.stop.signal).is_none() {
            problems.push(format!(
                "step `{}` has an unknown stop signal `{}`",
                step.name, step.stop.signal
            ));
        }
    }
    if problems.is_empty() && topological_order(plan, &index).is_none() {
        problems.push("the plan's dependencies form a cycle".to_owned());
    }
    problems.sort();
    problems.dedup();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Kahn's algorithm over the plan's steps; `None` on a cycle.
fn topological_order(plan: &Plan, index: &HashMap<&str, usize>) -> Option<Vec<usize>> {
    let n = plan.steps.len();
    let mut indegree = vec![0usize; n];
    let mut dependents = vec![Vec::new(); n];
    for (i, step) in plan.steps.iter().enumerate() {
        for dep in &step.depends_on {
            if let Some(&d) = index.get(dep.name.as_str()) {
                indegree[i] += 1;
                dependents[d].push(i);
            }
        }
    }
    let mut queue: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = queue.pop() {
        order.push(i);
        for &d in &dependents[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                queue.push(d);
            }
        }
    }
    (order.len() == n).then_some(order)
}

/// Processes still running from an earlier run of this state directory (found by the
/// `RAZAR_STATE_DIR` and `RAZAR_COMPONENT` variables razar gives every component).
pub fn leftovers(state_dir: &Path) -> Vec<Tagged> {
    sys::tagged_processes(state_dir)
}

/// Whether a process with this pid is alive (not a zombie) and, if given, started at
/// `start_time`: identifies an apply, or a recorded component, across pid reuse.
pub fn process_alive(pid: u32, start_time: Option<u64>) -> bool {
    match start_time {
        Some(start) => sys::same_process(pid, start),
        None => sys::proc_stat(pid).is_some_and(|s| !s.is_zombie()),
    }
}

/// Whether `pid` carries another state directory's `RAZAR_STATE_DIR` (see
/// [`sys::belongs_elsewhere`]).
pub fn belongs_elsewhere(pid: u32, state_dir: &Path) -> bool {
    sys::belongs_elsewhere(pid, state_dir)
}

/// Sends a signal (by name) to one process, e.g. `razar down` to the apply holding the lock.
pub fn send_signal(pid: u32, signal: &str) -> std::io::Result<()> {
    let number = sys::signal_number(signal)
        .ok_or_else(|| std::io::Error::other(format!("unknown signal `{signal}`")))?;
    sys::signal_process(pid, number)
}

/// Stops processes an earlier run left behind when no apply is running (`razar down`):
/// each component's group (and strays found by environment) gets its stop signal, then
/// SIGKILL after the grace period; dependents are stopped before their dependencies, unrelated
/// components concurrently. `groups` maps component names to recorded process groups.
pub async fn stop_leftovers(
    plan: &Plan,
    groups: &BTreeMap<String, u32>,
    shutdown: &Shutdown,
    sink: &mut dyn Sink,
) -> usize {
    let tagged = sys::tagged_processes(&plan.state_dir);
    let started = std::time::Instant::now();
    let index: HashMap<&str, usize> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    // What to stop, per component: its recorded group (if it still has members) and any
    // process found by environment.
    let mut targets: BTreeMap<String, (Option<u32>, Vec<u32>)> = BTreeMap::new();
    for (name, &pgid) in groups {
        if sys::group_alive(pgid) {
            targets.entry(name.clone()).or_default().0 = Some(pgid);
        }
    }
    for t in &tagged {
        let entry = targets.entry(t.component.clone()).or_default();
        let in_group = entry.0.is_some_and(|g| i64::from(g) == i64::from(t.pgrp));
        if !in_group {
            if t.pgrp > 1 && i64::from(t.pgrp) == i64::from(t.pid) && entry.0.is_none() {
                entry.0 = Some(t.pid);
            } else {
                entry.1.push(t.pid);
            }
        }
    }
    let count = targets.len();
    let mut emit = |kind: EventKind| {
        sink.emit(&Event {
            at_ms: started.elapsed().as_millis() as u64,
            time: now_rfc3339(),
            kind,
        });
    };
    // Dependents first: a component is stopped once nothing still running depends on it,
    // directly or through components that are not running.
    let mut dependents: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    if let Some(order) = topological_order(plan, &index) {
        for &i in order.iter().rev() {
            let step = &plan.steps[i];
            let mine: BTreeSet<&str> = dependents
                .get(step.name.as_str())
                .cloned()
                .unwrap_or_default();
            for dep in &step.depends_on {
                let entry = dependents.entry(dep.name.as_str()).or_default();
                entry.insert(step.name.as_str());
                entry.extend(mine.iter().copied());
            }
        }
    }
    let mut remaining: BTreeSet<String> = targets.keys().cloned().collect();
    let mut tasks = JoinSet::new();
    let mut in_flight = BTreeSet::new();
    loop {
        let ready: Vec<String> = remaining
            .iter()
            .filter(|name| {
                let after = dependents.get(name.as_str());
                !remaining.iter().chain(in_flight.iter()).any(|other| {
                    other != *name && after.is_some_and(|a| a.contains(other.as_str()))
                })
            })
            .cloned()
            .collect();
        for name in ready {
            remaining.remove(&name);
            let (pgid, strays) = targets[&name].clone();
            let step = index.get(name.as_str()).map(|&i| &plan.steps[i]);
            let (signal_name, grace) = step
                .map_or(("SIGTERM".to_owned(), Duration::from_secs(10)), |s| {
                    (s.stop.signal.clone(), s.stop.grace)
                });
            emit(EventKind::Stopping {
                component: name.clone(),
                signal: signal_name.clone(),
            });
            let spec = process::StopSpec {
                pgid: pgid.unwrap_or(0),
                strays,
                signal: sys::signal_number(&signal_name).unwrap_or(libc::SIGTERM),
                grace,
                command: None,
                kill_now: shutdown.reason() >= Some(CancelReason::SecondSignal),
            };
            in_flight.insert(name.clone());
            let force = shutdown.forced();
            tasks.spawn(async move {
                let forced = process::stop(spec, force).await;
                (name, forced)
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        if let Ok((name, forced)) = joined {
            in_flight.remove(&name);
            emit(EventKind::Stopped {
                component: name,
                exit: None,
                forced,
            });
        }
    }
    count
}

/// Runs `plan` to the end: boots it, supervises it until `shutdown` is requested (or, with
/// `until_ready`, until everything is up), stops it in reverse dependency order, and returns
/// how the run ended. Events go to `sink` in the order things happen.
pub async fn run(
    plan: &Plan,
    options: Options,
    shutdown: Shutdown,
    sink: &mut dyn Sink,
) -> Result<Outcome, RunError> {
    check(plan).map_err(RunError::InvalidPlan)?;
    let logs = logs::Logs::new(&plan.state_dir, options.log_max_bytes);
    let fresh = !logs.dir().exists();
    std::fs::create_dir_all(logs.dir()).map_err(|source| RunError::Logs {
        path: logs.dir().to_path_buf(),
        source: if logs.dir().is_file() {
            std::io::Error::other("a file is where razar keeps its log directory; move it away")
        } else {
            source
        },
    })?;
    if fresh {
        logs.create_ahead(
            plan.steps
                .iter()
                .filter(|s| s.command.is_some())
                .map(|s| s.name.as_str()),
        );
    }
    let mut run = Run::new(plan, options, shutdown, sink, logs);
    Ok(run.execute().await)
}

/// How far a component has got; dependency conditions are thresholds on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    None,
    Started,
    Ready,
    Completed,
}

impl Level {
    fn of(condition: Condition) -> Level {
        match condition {
            Condition::Started => Level::Started,
            Condition::Ready => Level::Ready,
            Condition::Completed => Level::Completed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Some dependency has not reached its condition.
    Waiting,
    /// Dependencies met; waits for a slot.
    Queued,
    /// Spawned, not ready (or a task still running): holds a slot.
    Starting,
    /// A service that passed its probe (or was adopted): supervised.
    Up,
    /// A task that exited 0, a milestone, or a task an earlier run completed.
    Completed,
    /// The attempt failed; its process group is being cleaned up before the next decision.
    Cleanup,
    /// Waiting for the backoff delay before the next attempt.
    Backoff,
    /// Ended for good: failed with no restart left (policy `never`).
    Failed,
    /// Attempts exhausted.
    Quarantined,
    /// Cannot run: a dependency failed or was excluded.
    Blocked,
    /// A service that exited cleanly and whose policy does not restart it.
    Down,
    /// Left out of the rest of the boot by a revision.
    Skipped,
    /// Being stopped by the shutdown.
    Stopping,
    Stopped,
}

/// The process of the current attempt.
#[derive(Debug)]
struct Live {
    serial: u64,
    pgid: u32,
    spawned_at: Instant,
    log_offset: u64,
    /// `Some` once the leader exited (`Some(None)`: status unknown, e.g. adopted).
    exited: Option<Option<ExitInfo>>,
    /// A stop or cleanup task is running for this group.
    stopping: bool,
    /// The stop task reported the group gone; whether it needed SIGKILL.
    gone: Option<bool>,
    /// Whether an exit will ever be reported (false for an adopted process without pidfd).
    watched: bool,
    /// A daemonizing service whose launcher exited and left processes running: supervised by
    /// checking its group (and processes carrying its environment) every few seconds.
    daemon: bool,
}

#[derive(Debug, Clone)]
struct Failure {
    reason: String,
    exit: Option<ExitInfo>,
}

#[derive(Debug)]
struct Node {
    /// (dependency, level it must reach)
    deps: Vec<(usize, Level)>,
    /// (dependent, level this node must reach for it)
    dependents: Vec<(usize, Level)>,
    unmet: usize,
    reached: Level,
    state: State,
    /// Attempts in the current restart budget (reset after a stable uptime).
    attempts: u32,
    /// Spawn counter: tells a stale report from the current attempt's.
    serial: u64,
    live: Option<Live>,
    /// Holds one of the `parallelism` start-up slots.
    slot: bool,
    /// Reached its boot outcome (up, completed, failed, quarantined, blocked or skipped).
    settled: bool,
    up_since: Option<Instant>,
    failure: Option<Failure>,
    /// Spawned (or adopted) in this run: its log is followed.
    spawned: bool,
}

/// What watcher and stop tasks report to the loop.
#[derive(Debug)]
enum Msg {
    Exited {
        idx: usize,
        serial: u64,
        exit: Option<ExitInfo>,
    },
    Probe {
        idx: usize,
        serial: u64,
        ok: bool,
        detail: String,
    },
    Ready {
        idx: usize,
        serial: u64,
    },
    NotReady {
        idx: usize,
        serial: u64,
        detail: String,
    },
    Gone {
        idx: usize,
        serial: u64,
        forced: bool,
    },
}

/// What woke the loop.
enum Wake {
    Msg(Msg),
    Revision(Option<Revision>),
    Shutdown(Option<CancelReason>),
    Timer,
    Rotate,
    Follow,
    Joined(Result<(), tokio::task::JoinError>),
}

struct Run<'a> {
    plan: &'a Plan,
    options: Options,
    shutdown: Shutdown,
    sink: &'a mut dyn Sink,
    logs: logs::Logs,
    started: std::time::Instant,
    nodes: Vec<Node>,
    /// Topological order of the steps (dependencies first).
    topo: Vec<usize>,
    /// Steps whose dependencies are met, as (rank, step): the next to start is the first.
    ready: BTreeSet<(usize, usize)>,
    /// Each step's place in the start order: its plan position, unless a revision moved it.
    rank: Vec<usize>,
    /// Milestones (no command) whose dependencies are met: completed without a slot.
    milestones: Vec<usize>,
    slots_used: usize,
    parallelism: usize,
    /// Restart timers: (due, step, serial).
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    tasks: JoinSet<()>,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    stopping: Option<CancelReason>,
    /// A signal arrived before the boot finished.
    interrupted: bool,
    boot_finished: bool,
    unsettled: usize,
    /// A non-optional component failed, was quarantined or blocked.
    failed: bool,
    rng: restart::Rng,
    follow: Vec<(usize, logs::LineReader)>,
    programs: process::Programs,
    /// Step positions by name.
    index: HashMap<String, usize>,
}

impl<'a> Run<'a> {
    fn new(
        plan: &'a Plan,
        options: Options,
        shutdown: Shutdown,
        sink: &'a mut dyn Sink,
        logs: logs::Logs,
    ) -> Self {
        let index: HashMap<&str, usize> = plan
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let mut nodes: Vec<Node> = plan
            .steps
            .iter()
            .map(|_| Node {
                deps: Vec::new(),
                dependents: Vec::new(),
                unmet: 0,
                reached: Level::None,
                state: State::Waiting,
                attempts: 0,
                serial: 0,
                live: None,
                slot: false,
                settled: false,
                up_since: None,
                failure: None,
                spawned: false,
            })
            .collect();
        for (i, step) in plan.steps.iter().enumerate() {
            for dep in &step.depends_on {
                if let Some(&d) = index.get(dep.name.as_str()) {
                    let level = Level::of(plan.steps[d].effective(dep.condition));
                    nodes[i].deps.push((d, level));
                    nodes[d].dependents.push((i, level));
                }
            }
            nodes[i].unmet = nodes[i].deps.len();
        }
        let topo = topological_order(plan, &index).expect("check() refused cyclic plans");
        let parallelism = options.parallelism.unwrap_or(plan.parallelism).max(1);
        // Channel capacity: reports are small; watchers wait (never drop) when it is full.
        let (tx, rx) = mpsc::channel(1024);
        let unsettled = nodes.len();
        Run {
            plan,
            options,
            shutdown,
            sink,
            logs,
            started: std::time::Instant::now(),
            nodes,
            topo,
            ready: BTreeSet::new(),
            rank: (0..plan.steps.len()).collect(),
            milestones: Vec::new(),
            slots_used: 0,
            parallelism,
            timers: BinaryHeap::new(),
            tasks: JoinSet::new(),
            tx,
            rx,
            stopping: None,
            interrupted: false,
            boot_finished: false,
            unsettled,
            failed: false,
            rng: restart::Rng::from_entropy(),
            follow: Vec::new(),
            programs: process::Programs::default(),
            index: plan
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.clone(), i))
                .collect(),
        }
    }

    fn step(&self, idx: usize) -> &'a Step {
        &self.plan.steps[idx]
    }

    fn emit(&mut self, kind: EventKind) {
        let event = Event {
            at_ms: self.started.elapsed().as_millis() as u64,
            time: now_rfc3339(),
            kind,
        };
        self.sink.emit(&event);
    }

    async fn execute(&mut self) -> Outcome {
        self.emit(EventKind::RunStarted {
            run_id: self.options.run_id.clone(),
            config_hash: self.plan.config_hash.clone(),
            strategy: self.plan.strategy.as_str().to_owned(),
            parallelism: self.parallelism,
            steps: self.plan.steps.len(),
            resumed: self.options.resume,
        });
        for excluded in &self.plan.excluded {
            self.emit(EventKind::Skipped {
                component: excluded.name.clone(),
                reason: excluded.reason.clone(),
            });
        }
        let excluded: BTreeMap<&str, &str> = self
            .plan
            .excluded
            .iter()
            .map(|e| (e.name.as_str(), e.reason.as_str()))
            .collect();
        for idx in 0..self.nodes.len() {
            let step = self.step(idx);
            let reason = step.blocked.clone().or_else(|| {
                step.depends_on.iter().find_map(|d| {
                    excluded.get(d.name.as_str()).map(|why| {
                        format!(
                            "blocked: depends on `{}`, which is excluded ({why})",
                            d.name
                        )
                    })
                })
            });
            if let Some(reason) = reason {
                self.block(idx, reason);
            }
        }
        if self.options.resume {
            self.resume().await;
        }
        for idx in 0..self.nodes.len() {
            if self.nodes[idx].state == State::Waiting && self.nodes[idx].unmet == 0 {
                self.enqueue(idx);
            }
        }
        if self.options.follow.is_some() {
            self.follow = (0..self.nodes.len())
                .map(|i| {
                    let name = &self.plan.steps[i].name;
                    let path = self.logs.path(name);
                    let offset = self.logs.len(name);
                    (i, logs::LineReader::new(path, offset))
                })
                .collect();
        }
        let outcome = self.supervise().await;
        self.follow_output();
        self.emit(EventKind::RunFinished {
            outcome,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        });
        outcome
    }

    /// The loop: start what can start, then wait for the next report, timer or signal.
    async fn supervise(&mut self) -> Outcome {
        let mut shutdown_rx = self.shutdown.subscribe();
        if let Some(reason) = *shutdown_rx.borrow_and_update() {
            self.begin_stop(reason);
        }
        let mut rotate = tokio::time::interval(ROTATE_EVERY);
        rotate.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut follow = tokio::time::interval(FOLLOW_EVERY);
        follow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let following = self.options.follow.is_some();
        let mut revisions = self.options.revisions.take();
        loop {
            self.schedule();
            if !self.boot_finished && self.unsettled == 0 {
                self.finish_boot();
            }
            if self.boot_finished && self.stopping.is_none() {
                if self.options.until_ready && self.options.keep_running {
                    // Leave everything running: watchers are dropped, processes are not.
                    return self.outcome();
                }
                if self.options.until_ready || !self.anything_to_supervise() {
                    self.begin_stop(CancelReason::Finished);
                }
            }
            if self.stopping.is_some() && self.nodes.iter().all(|n| n.live.is_none()) {
                return self.outcome();
            }
            let next_timer = self.timers.peek().map(|Reverse((due, _, _))| *due);
            let wake = tokio::select! {
                biased;
                changed = shutdown_rx.changed() => {
                    changed.expect("the run holds a Shutdown, so the sender outlives the loop");
                    Wake::Shutdown(*shutdown_rx.borrow_and_update())
                }
                Some(msg) = self.rx.recv() => Wake::Msg(msg),
                revision = recv_opt(&mut revisions) => Wake::Revision(revision),
                () = sleep_until_opt(next_timer) => Wake::Timer,
                Some(joined) = self.tasks.join_next() => Wake::Joined(joined),
                _ = rotate.tick() => Wake::Rotate,
                _ = follow.tick(), if following => Wake::Follow,
            };
            match wake {
                Wake::Shutdown(Some(reason)) => self.begin_stop(reason),
                Wake::Shutdown(None) => {}
                Wake::Msg(msg) => self.handle(msg),
                Wake::Revision(Some(revision)) => self.revise(revision),
                // The sender is gone: no more revisions.
                Wake::Revision(None) => revisions = None,
                Wake::Timer => self.fire_timers(),
                Wake::Joined(Err(err)) if err.is_panic() => {
                    std::panic::resume_unwind(err.into_panic());
                }
                Wake::Joined(_) => {}
                Wake::Rotate => {
                    self.rotate_logs();
                    self.check_daemons();
                }
                Wake::Follow => self.follow_output(),
            }
        }
    }

    fn outcome(&self) -> Outcome {
        if self.interrupted {
            Outcome::Interrupted
        } else if self.failed || !self.boot_finished {
            Outcome::Failed
        } else {
            Outcome::Success
        }
    }

    fn finish_boot(&mut self) {
        self.boot_finished = true;
        let mut ready = 0;
        let mut failed = 0;
        let mut blocked = 0;
        for node in &self.nodes {
            match node.state {
                State::Failed | State::Quarantined => failed += 1,
                State::Blocked => blocked += 1,
                _ if node.reached >= Level::Ready => ready += 1,
                _ => {}
            }
        }
        self.emit(EventKind::BootFinished {
            ready,
            failed,
            blocked,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        });
    }

    /// Whether anything still runs or may still start (after the boot).
    fn anything_to_supervise(&self) -> bool {
        self.nodes.iter().any(|n| {
            matches!(
                n.state,
                State::Waiting | State::Queued | State::Starting | State::Cleanup | State::Backoff
            ) || (n.state == State::Up
                && n.live
                    .as_ref()
                    .is_some_and(|l| l.exited.is_none() || l.daemon))
        })
    }

    fn settle(&mut self, idx: usize) {
        if !self.nodes[idx].settled {
            self.nodes[idx].settled = true;
            self.unsettled -= 1;
        }
    }

    fn mark_failed(&mut self, idx: usize) {
        if !self.step(idx).optional {
            self.failed = true;
        }
    }

    // ---- dependencies -------------------------------------------------------------------

    /// Records that `idx` reached `level`, releasing dependents whose condition now holds.
    fn reach(&mut self, idx: usize, level: Level) {
        let old = self.nodes[idx].reached;
        if level <= old {
            return;
        }
        self.nodes[idx].reached = level;
        let dependents = std::mem::take(&mut self.nodes[idx].dependents);
        for &(d, need) in &dependents {
            if old < need && need <= level {
                self.nodes[d].unmet -= 1;
                if self.nodes[d].unmet == 0 && self.nodes[d].state == State::Waiting {
                    self.enqueue(d);
                }
            }
        }
        self.nodes[idx].dependents = dependents;
    }

    fn enqueue(&mut self, idx: usize) {
        self.nodes[idx].state = State::Queued;
        if self.step(idx).command.is_none() {
            self.milestones.push(idx);
        } else {
            self.ready.insert((self.rank[idx], idx));
        }
    }

    fn block(&mut self, idx: usize, reason: String) {
        let node = &mut self.nodes[idx];
        if matches!(node.state, State::Blocked) {
            return;
        }
        node.state = State::Blocked;
        self.ready.remove(&(self.rank[idx], idx));
        self.mark_failed(idx);
        self.settle(idx);
        self.emit(EventKind::Blocked {
            component: self.step(idx).name.clone(),
            reason,
        });
        self.block_dependents(idx, "is blocked");
    }

    /// Blocks every waiting component that needs `idx` to reach a level it now never will.
    fn block_dependents(&mut self, idx: usize, why: &str) {
        let name = self.step(idx).name.clone();
        let reached = self.nodes[idx].reached;
        let dependents = self.nodes[idx].dependents.clone();
        for (d, need) in dependents {
            if reached < need && matches!(self.nodes[d].state, State::Waiting | State::Queued) {
                self.block(d, format!("blocked: depends on `{name}`, which {why}"));
            }
        }
    }

    // ---- starting -----------------------------------------------------------------------

    fn schedule(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        loop {
            while let Some(idx) = self.milestones.pop() {
                if self.nodes[idx].state == State::Queued {
                    self.complete(idx, 1, Duration::ZERO);
                }
            }
            if self.slots_used >= self.parallelism {
                break;
            }
            let Some((_, idx)) = self.ready.pop_first() else {
                break;
            };
            if self.nodes[idx].state == State::Queued {
                self.start(idx);
            }
        }
    }

    fn start(&mut self, idx: usize) {
        let step = self.step(idx);
        let command = step
            .command
            .as_ref()
            .expect("milestones are completed, never started");
        let attempt = {
            let node = &mut self.nodes[idx];
            node.attempts += 1;
            node.serial += 1;
            node.spawned = true;
            node.attempts
        };
        let serial = self.nodes[idx].serial;
        let argv = command.argv();
        let env = process::environment(step, &self.plan.state_dir, &self.options.run_id);
        let header = format!(
            "--- razar run {}: attempt {attempt} of `{}` at {}: {}",
            self.options.run_id,
            step.name,
            now_rfc3339(),
            command.display()
        );
        let spawned = process::spawn(
            &mut self.programs,
            &self.logs,
            &step.name,
            &header,
            &argv,
            &env,
            step.cwd.as_deref(),
        );
        let spawned = match spawned {
            Ok(spawned) => spawned,
            Err(err) => {
                // No process: no slot was taken and there is nothing to clean up.
                self.nodes[idx].state = State::Cleanup;
                self.nodes[idx].live = None;
                let tail = self.logs.tail(&step.name, err.log_offset, logs::TAIL_LINES);
                self.end_attempt(
                    idx,
                    Some(Failure {
                        reason: err.message,
                        exit: None,
                    }),
                    Some(tail),
                );
                return;
            }
        };
        let spawned_at = Instant::now();
        self.nodes[idx].slot = true;
        self.slots_used += 1;
        self.nodes[idx].state = State::Starting;
        self.nodes[idx].live = Some(Live {
            serial,
            pgid: spawned.pgid,
            spawned_at,
            log_offset: spawned.log_offset,
            exited: None,
            stopping: false,
            gone: None,
            watched: true,
            daemon: false,
        });
        self.emit(EventKind::Spawned {
            component: step.name.clone(),
            attempt,
            pid: spawned.pid,
            pgid: spawned.pgid,
            start_time: spawned.start_time,
        });
        self.reach(idx, Level::Started);

        let mut watch = Watch {
            idx,
            serial,
            proc: spawned.proc,
            prober: None,
            deadline: None,
            alive_at: None,
            daemonizes: step.daemonizes,
        };
        if step.kind == Kind::Service {
            match &step.ready {
                Some(probe) => {
                    let context = probe::Context {
                        env,
                        cwd: step.cwd.clone(),
                        log: Some((self.logs.path(&step.name), spawned.log_offset)),
                        predicted: predicted(step),
                    };
                    match probe::Prober::new(probe, context, spawned_at) {
                        Ok(prober) => {
                            watch.prober = Some(prober);
                            watch.deadline = Some(spawned_at + probe.timeout);
                        }
                        // check() validated every probe; a failure here is a bug, reported
                        // as the attempt's failure rather than a panic.
                        Err(err) => {
                            watch.deadline = Some(spawned_at);
                            tracing::error!(component = %step.name, %err, "probe cannot run");
                        }
                    }
                }
                None if !step.daemonizes => watch.alive_at = Some(spawned_at + LIVENESS_WINDOW),
                None => {}
            }
        }
        let tx = self.tx.clone();
        self.tasks.spawn(watch.run(tx));
    }

    fn complete(&mut self, idx: usize, attempt: u32, after: Duration) {
        self.release_slot(idx);
        self.nodes[idx].state = State::Completed;
        self.emit(EventKind::Completed {
            component: self.step(idx).name.clone(),
            attempt,
            after_ms: after.as_millis() as u64,
        });
        self.settle(idx);
        self.reach(idx, Level::Completed);
    }

    fn mark_ready(&mut self, idx: usize) {
        let Some(live) = &self.nodes[idx].live else {
            return;
        };
        let after = live.spawned_at.elapsed();
        self.release_slot(idx);
        let node = &mut self.nodes[idx];
        node.state = State::Up;
        node.up_since = Some(Instant::now());
        let attempt = node.attempts;
        self.emit(EventKind::Ready {
            component: self.step(idx).name.clone(),
            attempt,
            after_ms: after.as_millis() as u64,
        });
        self.settle(idx);
        self.reach(idx, Level::Ready);
        self.note_daemon(idx);
    }

    /// After a daemonizing service's launcher exited (and the service is up): if it left
    /// processes running, supervise them; if it left nothing (a command that only reports, as
    /// ABZU's boot_config entries do), there is nothing to supervise.
    fn note_daemon(&mut self, idx: usize) {
        let Some(live) = &self.nodes[idx].live else {
            return;
        };
        if !self.step(idx).daemonizes || live.exited.is_none() || live.daemon {
            return;
        }
        let pgid = live.pgid;
        let remains = sys::group_alive(pgid) || !self.strays(idx, pgid).is_empty();
        if let Some(live) = self.nodes[idx].live.as_mut() {
            live.daemon = remains;
        }
    }

    /// Supervision of daemons: one whose processes are all gone has exited.
    fn check_daemons(&mut self) {
        for idx in 0..self.nodes.len() {
            let Some(live) = &self.nodes[idx].live else {
                continue;
            };
            if self.nodes[idx].state != State::Up || !live.daemon || live.stopping {
                continue;
            }
            let pgid = live.pgid;
            if sys::group_alive(pgid) || !self.strays(idx, pgid).is_empty() {
                continue;
            }
            let uptime = self.nodes[idx]
                .up_since
                .map_or(Duration::ZERO, |t| t.elapsed());
            self.emit(EventKind::Exited {
                component: self.step(idx).name.clone(),
                exit: ExitInfo {
                    code: None,
                    signal: None,
                },
                uptime_ms: uptime.as_millis() as u64,
            });
            self.nodes[idx].failure = Some(Failure {
                reason: format!(
                    "its daemon is gone after {} up",
                    crate::duration::display(uptime)
                ),
                exit: None,
            });
            self.nodes[idx].state = State::Cleanup;
            if uptime >= self.step(idx).restart.backoff.reset_after {
                self.nodes[idx].up_since = None;
                self.nodes[idx].attempts = 0;
            }
            self.after_process(idx);
        }
    }

    fn release_slot(&mut self, idx: usize) {
        if std::mem::take(&mut self.nodes[idx].slot) {
            self.slots_used -= 1;
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((due, idx, serial))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            if self.stopping.is_none()
                && self.nodes[idx].state == State::Backoff
                && self.nodes[idx].serial == serial
            {
                self.nodes[idx].state = State::Queued;
                self.ready.insert((self.rank[idx], idx));
            }
        }
    }

    // ---- reports ------------------------------------------------------------------------

    fn is_current(&self, idx: usize, serial: u64) -> bool {
        self.nodes[idx]
            .live
            .as_ref()
            .is_some_and(|l| l.serial == serial)
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Probe {
                idx,
                serial,
                ok,
                detail,
            } => {
                if self.is_current(idx, serial) && self.nodes[idx].state == State::Starting {
                    self.emit(EventKind::Probe {
                        component: self.step(idx).name.clone(),
                        ok,
                        detail,
                    });
                }
            }
            Msg::Ready { idx, serial } => {
                if self.is_current(idx, serial) && self.nodes[idx].state == State::Starting {
                    self.mark_ready(idx);
                }
            }
            Msg::NotReady {
                idx,
                serial,
                detail,
            } => {
                if self.is_current(idx, serial) && self.nodes[idx].state == State::Starting {
                    let timeout = self
                        .step(idx)
                        .ready
                        .as_ref()
                        .map_or(Duration::ZERO, |p| p.timeout);
                    let reason = format!(
                        "not ready within {} (last probe: {detail})",
                        crate::duration::display(timeout)
                    );
                    self.fail_attempt(idx, Failure { reason, exit: None });
                }
            }
            Msg::Exited { idx, serial, exit } => self.on_exit(idx, serial, exit),
            Msg::Gone {
                idx,
                serial,
                forced,
            } => {
                if !self.is_current(idx, serial) {
                    return;
                }
                let live = self.nodes[idx].live.as_mut().expect("checked current");
                live.stopping = false;
                live.gone = Some(forced);
                if !live.watched {
                    live.exited.get_or_insert(None);
                }
                self.after_process(idx);
            }
        }
    }

    fn on_exit(&mut self, idx: usize, serial: u64, exit: Option<ExitInfo>) {
        if !self.is_current(idx, serial) {
            return;
        }
        let step = self.step(idx);
        let live = self.nodes[idx].live.as_mut().expect("checked current");
        live.exited = Some(exit);
        let spawned_at = live.spawned_at;
        let shown = exit.map_or_else(|| "status unknown".to_owned(), |e| e.to_string());
        let success = exit.is_some_and(|e| e.success());
        match self.nodes[idx].state {
            State::Starting if step.kind == Kind::Task => {
                if success {
                    let after = spawned_at.elapsed();
                    let attempt = self.nodes[idx].attempts;
                    self.complete(idx, attempt, after);
                    self.drop_if_gone(idx);
                } else {
                    self.fail_attempt(
                        idx,
                        Failure {
                            reason: format!("exited with {shown}"),
                            exit,
                        },
                    );
                }
            }
            // The launcher returned; the daemon it left decides readiness via the probe, or,
            // without one, the clean exit is readiness.
            State::Starting if step.daemonizes && success && step.ready.is_none() => {
                self.mark_ready(idx);
            }
            State::Starting if step.daemonizes && success => {}
            State::Starting => self.fail_attempt(
                idx,
                Failure {
                    reason: format!("exited before it was ready ({shown})"),
                    exit,
                },
            ),
            State::Up if step.daemonizes && success => self.note_daemon(idx),
            State::Up => {
                let uptime = self.nodes[idx]
                    .up_since
                    .map_or(Duration::ZERO, |t| t.elapsed());
                self.emit(EventKind::Exited {
                    component: step.name.clone(),
                    exit: exit.unwrap_or(ExitInfo {
                        code: None,
                        signal: None,
                    }),
                    uptime_ms: uptime.as_millis() as u64,
                });
                let failure = (!success).then(|| Failure {
                    reason: format!(
                        "exited after {} up ({shown})",
                        crate::duration::display(uptime)
                    ),
                    exit,
                });
                self.nodes[idx].failure = failure;
                self.nodes[idx].state = State::Cleanup;
                if uptime >= step.restart.backoff.reset_after {
                    // Stable long enough: the next start opens a fresh restart budget.
                    self.nodes[idx].up_since = None;
                    self.nodes[idx].attempts = 0;
                }
                self.after_process(idx);
            }
            State::Cleanup | State::Stopping => self.after_process(idx),
            _ => {}
        }
    }

    /// A component whose leader exited and whose group is empty has no live process left.
    fn drop_if_gone(&mut self, idx: usize) {
        if let Some(live) = &self.nodes[idx].live
            && live.exited.is_some()
            && !live.stopping
            && !sys::group_alive(live.pgid)
        {
            self.nodes[idx].live = None;
        }
    }

    /// The attempt failed: clean its group up, then decide (restart, quarantine, fail).
    fn fail_attempt(&mut self, idx: usize, failure: Failure) {
        self.nodes[idx].failure = Some(failure);
        self.nodes[idx].state = State::Cleanup;
        self.after_process(idx);
    }

    /// Drives a component whose process is ending (cleanup or shutdown) to its next state
    /// once the leader has exited and the group is empty.
    fn after_process(&mut self, idx: usize) {
        let Some(live) = &self.nodes[idx].live else {
            return;
        };
        if live.stopping {
            return;
        }
        let leader_gone = live.exited.is_some();
        let members = sys::group_alive(live.pgid)
            || (self.step(idx).daemonizes && !self.strays(idx, live.pgid).is_empty());
        if live.gone.is_none() && (members || !leader_gone) {
            // Something of this attempt still runs: stop it before deciding anything, so a
            // component never runs twice.
            let graceful = self.nodes[idx].state == State::Stopping;
            self.start_stop_task(idx, graceful);
            return;
        }
        if !leader_gone {
            // The group is gone but the watcher has not reported the exit yet.
            return;
        }
        let live = self.nodes[idx].live.take().expect("checked above");
        match self.nodes[idx].state {
            State::Cleanup => {
                let mut failure = self.nodes[idx].failure.take();
                if let Some(f) = &mut failure {
                    f.exit = f.exit.or(live.exited.flatten());
                }
                let tail = failure.as_ref().map(|_| {
                    self.logs
                        .tail(&self.step(idx).name, live.log_offset, logs::TAIL_LINES)
                });
                self.release_slot(idx);
                self.end_attempt(idx, failure, tail);
            }
            State::Stopping => {
                self.release_slot(idx);
                self.nodes[idx].state = State::Stopped;
                self.emit(EventKind::Stopped {
                    component: self.step(idx).name.clone(),
                    exit: live.exited.flatten(),
                    forced: live.gone.unwrap_or(false),
                });
                self.advance_stop();
            }
            _ => {
                self.release_slot(idx);
                self.advance_stop();
            }
        }
    }

    /// Decides what follows an ended attempt (`failure` is `None` for a clean exit).
    fn end_attempt(&mut self, idx: usize, failure: Option<Failure>, tail: Option<Vec<String>>) {
        let step = self.step(idx);
        let attempts = self.nodes[idx].attempts;
        let tail = tail.unwrap_or_default();
        if let Some(f) = &failure {
            self.emit(EventKind::AttemptFailed {
                component: step.name.clone(),
                attempt: attempts,
                reason: f.reason.clone(),
                exit: f.exit,
                log_tail: tail.clone(),
            });
        }
        if self.stopping.is_some() {
            self.nodes[idx].state = if failure.is_some() {
                State::Failed
            } else {
                State::Down
            };
            self.settle(idx);
            return;
        }
        if !restart::wants_restart(step.restart.policy, step.kind, failure.is_some()) {
            match &failure {
                Some(_) => {
                    self.nodes[idx].state = State::Failed;
                    self.mark_failed(idx);
                    self.settle(idx);
                    self.block_dependents(idx, "failed");
                }
                None => self.nodes[idx].state = State::Down,
            }
            return;
        }
        if attempts >= step.restart.max_attempts {
            let reason = failure.as_ref().map_or_else(
                || format!("exited {attempts} times in a row without staying up"),
                |f| f.reason.clone(),
            );
            self.emit(EventKind::Quarantined {
                component: step.name.clone(),
                attempts,
                reason,
                exit: failure.as_ref().and_then(|f| f.exit),
                log_tail: tail,
            });
            self.nodes[idx].state = State::Quarantined;
            self.mark_failed(idx);
            self.settle(idx);
            self.block_dependents(idx, "is quarantined");
            return;
        }
        let next_attempt = attempts + 1;
        let delay = restart::delay(&step.restart.backoff, next_attempt, &mut self.rng);
        self.emit(EventKind::RestartScheduled {
            component: step.name.clone(),
            next_attempt,
            delay_ms: delay.as_millis() as u64,
        });
        self.nodes[idx].state = State::Backoff;
        let serial = self.nodes[idx].serial;
        self.timers
            .push(Reverse((Instant::now() + delay, idx, serial)));
    }

    // ---- revisions ----------------------------------------------------------------------

    /// Applies a change to the boot to the steps that have not started yet.
    fn revise(&mut self, revision: Revision) {
        if self.stopping.is_some() {
            return;
        }
        let pending = |state: State| matches!(state, State::Waiting | State::Queued);
        if let Some(parallelism) = revision.parallelism {
            self.parallelism = parallelism.max(1);
        }
        // New start order: listed steps first, in the given order; the rest keep theirs.
        if !revision.order.is_empty() {
            let listed = revision.order.len();
            let mut rank: Vec<usize> = (0..self.nodes.len())
                .map(|i| listed + self.rank[i])
                .collect();
            for (position, name) in revision.order.iter().enumerate() {
                if let Some(&i) = self.index.get(name) {
                    rank[i] = position;
                }
            }
            let queued: Vec<usize> = self.ready.iter().map(|&(_, i)| i).collect();
            self.rank = rank;
            self.ready = queued.into_iter().map(|i| (self.rank[i], i)).collect();
        }
        for (name, deps) in &revision.depends_on {
            let Some(&idx) = self.index.get(name) else {
                continue;
            };
            if !pending(self.nodes[idx].state) {
                continue;
            }
            for dep in deps {
                let Some(&d) = self.index.get(&dep.name) else {
                    continue;
                };
                let level = Level::of(self.plan.steps[d].effective(dep.condition));
                if d == idx
                    || self.nodes[idx].deps.iter().any(|&(x, _)| x == d)
                    || self.depends_transitively(d, idx)
                {
                    tracing::warn!(step = %name, after = %dep.name, "revision edge ignored: duplicate or cycle");
                    continue;
                }
                self.nodes[idx].deps.push((d, level));
                self.nodes[d].dependents.push((idx, level));
                if self.nodes[d].reached < level {
                    self.nodes[idx].unmet += 1;
                    if self.nodes[idx].state == State::Queued {
                        self.nodes[idx].state = State::Waiting;
                        self.ready.remove(&(self.rank[idx], idx));
                        self.milestones.retain(|&m| m != idx);
                    }
                    if matches!(
                        self.nodes[d].state,
                        State::Failed | State::Quarantined | State::Blocked | State::Skipped
                    ) {
                        self.block(
                            idx,
                            format!("blocked: depends on `{}`, which will not run", dep.name),
                        );
                    }
                }
            }
        }
        self.topo = self.node_order();
        for (name, reason) in &revision.skip {
            let Some(&idx) = self.index.get(name) else {
                continue;
            };
            if !pending(self.nodes[idx].state) {
                continue;
            }
            self.nodes[idx].state = State::Skipped;
            self.ready.remove(&(self.rank[idx], idx));
            self.milestones.retain(|&m| m != idx);
            self.emit(EventKind::Skipped {
                component: name.clone(),
                reason: reason.clone(),
            });
            self.settle(idx);
            self.block_dependents(idx, &format!("is skipped ({reason})"));
        }
    }

    /// Whether `from` depends on `on`, directly or not.
    fn depends_transitively(&self, from: usize, on: usize) -> bool {
        let mut stack = vec![from];
        let mut seen = vec![false; self.nodes.len()];
        while let Some(i) = stack.pop() {
            if i == on {
                return true;
            }
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            stack.extend(self.nodes[i].deps.iter().map(|&(d, _)| d));
        }
        false
    }

    /// A dependencies-first order of the steps as the run knows them (revisions included).
    fn node_order(&self) -> Vec<usize> {
        let n = self.nodes.len();
        let mut indegree: Vec<usize> = self.nodes.iter().map(|node| node.deps.len()).collect();
        let mut queue: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = queue.pop() {
            order.push(i);
            for &(d, _) in &self.nodes[i].dependents {
                indegree[d] -= 1;
                if indegree[d] == 0 {
                    queue.push(d);
                }
            }
        }
        debug_assert_eq!(order.len(), n, "revisions never add a cycle");
        order
    }

    // ---- stopping -----------------------------------------------------------------------

    fn begin_stop(&mut self, reason: CancelReason) {
        if reason >= CancelReason::Signal && !self.boot_finished {
            self.interrupted = true;
        }
        let first = self.stopping.is_none();
        let was_forced = self.forced();
        if self.stopping.is_none_or(|r| r < reason) {
            self.stopping = Some(reason);
        }
        if self.forced() && !was_forced {
            // Stops already under way are cut short: their groups get SIGKILL now, not at
            // the end of their grace period.
            for idx in 0..self.nodes.len() {
                if self.nodes[idx]
                    .live
                    .as_ref()
                    .is_some_and(|l| l.stopping && l.gone.is_none())
                {
                    self.emit(EventKind::Stopping {
                        component: self.step(idx).name.clone(),
                        signal: "SIGKILL".to_owned(),
                    });
                }
            }
        }
        if first {
            // Nothing new starts: pending and backing-off components stay down. One waiting
            // for its restart had been running: it is reported stopped, not left "restarting".
            self.ready.clear();
            self.milestones.clear();
            self.timers.clear();
            for idx in 0..self.nodes.len() {
                if self.nodes[idx].state == State::Backoff {
                    self.nodes[idx].state = State::Stopped;
                    self.emit(EventKind::Stopped {
                        component: self.step(idx).name.clone(),
                        exit: None,
                        forced: false,
                    });
                }
            }
        }
        self.advance_stop();
    }

    fn forced(&self) -> bool {
        self.stopping >= Some(CancelReason::SecondSignal)
    }

    /// Starts stopping every running component none of whose (transitive) dependents still
    /// runs: dependents first, unrelated components concurrently. Forced: everything at once.
    fn advance_stop(&mut self) {
        if self.stopping.is_none() {
            return;
        }
        let forced = self.forced();
        // The processes carrying this state directory's environment, looked up once for the
        // components this call stops: a process that left its component's group (`setsid`)
        // is stopped with it, as `razar down` and the next apply's check would find it.
        let mut tagged: Option<Vec<sys::Tagged>> = None;
        // quiet[i]: neither i nor anything depending on it has a live process.
        let mut quiet = vec![true; self.nodes.len()];
        for pos in (0..self.topo.len()).rev() {
            let i = self.topo[pos];
            let deps_quiet = self.nodes[i].dependents.iter().all(|&(d, _)| quiet[d]);
            quiet[i] = deps_quiet && self.nodes[i].live.is_none();
            let Some(live) = &self.nodes[i].live else {
                continue;
            };
            if live.stopping || live.gone.is_some() {
                continue;
            }
            let pgid = live.pgid;
            if forced || deps_quiet {
                // A completed task that left processes behind stays completed (resume must
                // not run it again): its leftovers are ended without a stop of its own.
                if !matches!(self.nodes[i].state, State::Cleanup | State::Completed) {
                    self.nodes[i].state = State::Stopping;
                }
                let tagged =
                    tagged.get_or_insert_with(|| sys::tagged_processes(&self.plan.state_dir));
                let strays = strays_in(tagged, &self.plan.steps[i].name, pgid);
                self.start_stop_task_with(i, true, strays);
            }
        }
    }

    fn strays(&self, idx: usize, pgid: u32) -> Vec<u32> {
        strays_in(
            &sys::tagged_processes(&self.plan.state_dir),
            &self.step(idx).name,
            pgid,
        )
    }

    /// Spawns the task that empties the component's group. `graceful`: the shutdown's stop
    /// (stop command, stop signal, grace); otherwise an attempt's cleanup (stop signal, grace).
    /// Processes of a daemonizing component outside its group are stopped with it.
    fn start_stop_task(&mut self, idx: usize, graceful: bool) {
        let pgid = self.nodes[idx]
            .live
            .as_ref()
            .expect("stopping a live process")
            .pgid;
        let strays = if self.step(idx).daemonizes {
            self.strays(idx, pgid)
        } else {
            Vec::new()
        };
        self.start_stop_task_with(idx, graceful, strays);
    }

    /// [`Run::start_stop_task`] with the component's processes outside its group given.
    fn start_stop_task_with(&mut self, idx: usize, graceful: bool, strays: Vec<u32>) {
        let step = self.step(idx);
        let forced = self.forced();
        let pgid = {
            let live = self.nodes[idx]
                .live
                .as_mut()
                .expect("stopping a live process");
            live.stopping = true;
            live.pgid
        };
        let serial = self.nodes[idx].serial;
        let is_shutdown = graceful && self.nodes[idx].state == State::Stopping;
        if is_shutdown {
            self.emit(EventKind::Stopping {
                component: step.name.clone(),
                signal: if forced {
                    "SIGKILL".to_owned()
                } else {
                    step.stop.signal.clone()
                },
            });
        }
        let command = match (&step.stop.command, is_shutdown) {
            (Some(command), true) => Some(process::StopCommand {
                argv: command.argv(),
                env: process::environment(step, &self.plan.state_dir, &self.options.run_id),
                cwd: step.cwd.clone(),
                log: self.logs.path(&step.name),
            }),
            _ => None,
        };
        let spec = process::StopSpec {
            pgid,
            strays,
            signal: sys::signal_number(&step.stop.signal).unwrap_or(libc::SIGTERM),
            grace: step.stop.grace,
            command,
            kill_now: forced,
        };
        let force = self.shutdown.forced();
        let tx = self.tx.clone();
        self.tasks.spawn(async move {
            let forced = process::stop(spec, force).await;
            let _ = tx
                .send(Msg::Gone {
                    idx,
                    serial,
                    forced,
                })
                .await;
        });
    }

    // ---- resume -------------------------------------------------------------------------

    /// Starts stopping what an earlier run left of `name` (its recorded `group`, and the
    /// processes of `tagged` carrying its environment outside it) before anything starts.
    fn clean_up(
        &mut self,
        cleanup: &mut JoinSet<(String, bool)>,
        tagged: &[sys::Tagged],
        name: String,
        group: Option<u32>,
        signal: String,
        grace: Duration,
    ) {
        // No process is in group 0: without a group, every tagged process is a stray.
        let strays = strays_in(tagged, &name, group.unwrap_or(0));
        if group.is_none() && strays.is_empty() {
            return;
        }
        self.emit(EventKind::Stopping {
            component: name.clone(),
            signal: signal.clone(),
        });
        let spec = process::StopSpec {
            pgid: group.unwrap_or(0),
            strays,
            signal: sys::signal_number(&signal).unwrap_or(libc::SIGTERM),
            grace,
            command: None,
            kill_now: false,
        };
        let force = self.shutdown.forced();
        cleanup.spawn(async move { (name, process::stop(spec, force).await) });
    }

    /// Re-adopts what an earlier run left running (identity and probe checked), skips
    /// completed tasks, and clears out everything else of the earlier run before starting.
    async fn resume(&mut self) {
        let tagged = sys::tagged_processes(&self.plan.state_dir);
        let mut candidates: JoinSet<(usize, bool, String)> = JoinSet::new();
        let mut identified: BTreeMap<usize, (u32, u32)> = BTreeMap::new();
        // Daemonizing services identified by their daemon, their launcher gone.
        let mut daemons: BTreeSet<usize> = BTreeSet::new();
        for idx in 0..self.nodes.len() {
            let step = self.step(idx);
            let Some(prior) = self.options.priors.get(&step.name).cloned() else {
                continue;
            };
            if self.nodes[idx].state == State::Blocked {
                continue;
            }
            if prior.status == PriorStatus::Completed && step.kind == Kind::Task {
                self.nodes[idx].state = State::Completed;
                self.nodes[idx].attempts = prior.attempts;
                self.emit(EventKind::Skipped {
                    component: step.name.clone(),
                    reason: "completed by an earlier run".to_owned(),
                });
                self.settle(idx);
                self.reach(idx, Level::Completed);
                continue;
            }
            if prior.status == PriorStatus::Failing {
                self.nodes[idx].attempts = prior.attempts;
                continue;
            }
            let (PriorStatus::Running, Some(pid), Some(start_time)) =
                (prior.status, prior.pid, prior.start_time)
            else {
                continue;
            };
            let mut pgid = prior.pgid.unwrap_or(pid);
            let same = sys::proc_stat(pid).is_some_and(|s| {
                !s.is_zombie() && s.start_time == start_time && i64::from(s.pgrp) == i64::from(pgid)
            });
            if step.kind != Kind::Service {
                continue;
            }
            let mut pid = pid;
            if !same {
                // A daemonizing service's recorded pid is its launcher, gone once the daemon
                // runs: the daemon is known by the environment razar gave it (in the recorded
                // group if it stayed there).
                let daemon = tagged
                    .iter()
                    .filter(|t| t.component == step.name)
                    .min_by_key(|t| (i64::from(t.pgrp) != i64::from(pgid), t.pid));
                match daemon {
                    Some(d) if step.daemonizes => {
                        pid = d.pid;
                        pgid = u32::try_from(d.pgrp).unwrap_or(d.pid);
                        daemons.insert(idx);
                    }
                    _ => continue,
                }
            }
            identified.insert(idx, (pid, pgid));
            match &step.ready {
                None => {
                    candidates.spawn(async move { (idx, true, "alive".to_owned()) });
                }
                Some(probe) => {
                    let context = probe::Context {
                        env: process::environment(step, &self.plan.state_dir, &self.options.run_id),
                        cwd: step.cwd.clone(),
                        // A log probe cannot tell an old line from a new one: the start of
                        // the log counts, as the process is the one that wrote it.
                        log: Some((self.logs.path(&step.name), 0)),
                        predicted: None,
                    };
                    let Ok(mut prober) = probe::Prober::new(probe, context, Instant::now()) else {
                        continue;
                    };
                    let window = probe.timeout.min(ADOPT_PROBE_WINDOW);
                    let _ = candidates.spawn(async move {
                        let deadline = Instant::now() + window;
                        let mut last = String::new();
                        while Instant::now() < deadline {
                            match tokio::time::timeout_at(deadline, prober.poll()).await {
                                Ok(outcome) if outcome.ok => return (idx, true, outcome.detail),
                                Ok(outcome) => last = outcome.detail,
                                Err(_) => break,
                            }
                        }
                        (idx, false, last)
                    });
                }
            }
        }
        let mut adopt = BTreeSet::new();
        while let Some(joined) = candidates.join_next().await {
            if let Ok((idx, ok, detail)) = joined {
                if ok {
                    adopt.insert(idx);
                } else {
                    tracing::info!(component = %self.step(idx).name, %detail, "not adopted: probe fails");
                }
            }
        }
        // Adopt first, so their dependents see them up.
        for &idx in &adopt {
            let (pid, pgid) = identified[&idx];
            let prior_attempts = self.options.priors[&self.step(idx).name].attempts;
            let daemon = daemons.contains(&idx);
            // A daemon is supervised as after its launcher's exit: by checking its group and
            // environment every few seconds, not through one process.
            let proc = if daemon {
                process::Proc::Detached
            } else {
                process::adopt(pid)
            };
            let watched = !matches!(proc, process::Proc::Detached);
            self.nodes[idx].serial += 1;
            let serial = self.nodes[idx].serial;
            self.nodes[idx].attempts = prior_attempts.max(1);
            self.nodes[idx].spawned = true;
            self.nodes[idx].state = State::Up;
            self.nodes[idx].up_since = Some(Instant::now());
            self.nodes[idx].live = Some(Live {
                serial,
                pgid,
                spawned_at: Instant::now(),
                log_offset: self.logs.len(&self.step(idx).name),
                exited: daemon.then_some(None),
                stopping: false,
                gone: None,
                watched,
                daemon,
            });
            self.emit(EventKind::Adopted {
                component: self.step(idx).name.clone(),
                pid,
                pgid,
            });
            self.settle(idx);
            self.reach(idx, Level::Ready);
            let watch = Watch {
                idx,
                serial,
                proc,
                prober: None,
                deadline: None,
                alive_at: None,
                daemonizes: false,
            };
            let tx = self.tx.clone();
            self.tasks.spawn(watch.run(tx));
        }
        // Everything else an earlier run left is stopped before anything starts.
        let mut cleanup: JoinSet<(String, bool)> = JoinSet::new();
        for idx in 0..self.nodes.len() {
            if adopt.contains(&idx) {
                continue;
            }
            let step = self.step(idx);
            let group = identified.get(&idx).map(|&(_, pgid)| pgid).or_else(|| {
                self.options
                    .priors
                    .get(&step.name)
                    .and_then(|prior| recorded_group(prior, &self.plan.state_dir))
            });
            let (signal, grace) = (step.stop.signal.clone(), step.stop.grace);
            let name = step.name.clone();
            self.clean_up(&mut cleanup, &tagged, name, group, signal, grace);
        }
        // Components the configuration no longer declares (neither a step nor left out of a
        // plan made for all of it) can never be adopted: what they left running is stopped
        // too, with the defaults `razar down` uses for them. A plan for some targets does not
        // know the rest of the configuration: their processes are left to a later resume.
        if self.plan.targets.is_empty() {
            let known: BTreeSet<&str> = self
                .plan
                .steps
                .iter()
                .map(|s| s.name.as_str())
                .chain(self.plan.excluded.iter().map(|e| e.name.as_str()))
                .collect();
            let gone: BTreeSet<String> = self
                .options
                .priors
                .iter()
                .filter(|(_, p)| p.status == PriorStatus::Running)
                .map(|(name, _)| name.clone())
                .chain(tagged.iter().map(|t| t.component.clone()))
                .filter(|name| !known.contains(name.as_str()))
                .collect();
            for name in gone {
                let group = self
                    .options
                    .priors
                    .get(&name)
                    .and_then(|prior| recorded_group(prior, &self.plan.state_dir));
                let grace = crate::config::default_stop().grace;
                self.clean_up(&mut cleanup, &tagged, name, group, "SIGTERM".into(), grace);
            }
        }
        while let Some(joined) = cleanup.join_next().await {
            if let Ok((component, forced)) = joined {
                self.emit(EventKind::Stopped {
                    component,
                    exit: None,
                    forced,
                });
            }
        }
    }

    // ---- housekeeping -------------------------------------------------------------------

    fn rotate_logs(&mut self) {
        for idx in 0..self.nodes.len() {
            if self.nodes[idx].live.is_some()
                && let Err(err) = self.logs.rotate_if_needed(&self.plan.steps[idx].name)
            {
                tracing::warn!(component = %self.plan.steps[idx].name, %err, "cannot rotate log");
            }
        }
    }

    fn follow_output(&mut self) {
        let Some(output) = self.options.follow.as_mut() else {
            return;
        };
        for (idx, reader) in &mut self.follow {
            if !self.nodes[*idx].spawned {
                continue;
            }
            let name = &self.plan.steps[*idx].name;
            match reader.read_lines() {
                Ok(lines) => {
                    for line in lines {
                        output.line(name, &line);
                    }
                }
                Err(err) => tracing::debug!(component = %name, %err, "cannot follow log"),
            }
        }
    }
}

/// The process group a prior run recorded for a component, if it still has members and is
/// ours: only a group whose leader is gone, or is still the recorded process, is (a reused pid
/// leading another group must not be signalled).
fn recorded_group(prior: &Prior, state_dir: &Path) -> Option<u32> {
    let pgid = prior.pgid.or(prior.pid)?;
    let leader_ours = match (prior.pid, prior.start_time) {
        (Some(pid), Some(start)) if pid == pgid => {
            !sys::process_exists(pid) || sys::same_process(pid, start)
        }
        _ => !sys::process_exists(pgid),
    };
    // Records copied with a state directory name another directory's processes.
    let elsewhere = sys::belongs_elsewhere(pgid, state_dir);
    (leader_ours && !elsewhere && sys::group_alive(pgid)).then_some(pgid)
}

/// The processes of `tagged` that carry `component`'s environment outside its group `pgid`.
fn strays_in(tagged: &[sys::Tagged], component: &str, pgid: u32) -> Vec<u32> {
    tagged
        .iter()
        .filter(|t| t.component == component && i64::from(t.pgrp) != i64::from(pgid))
        .map(|t| t.pid)
        .collect()
}

/// The predicted time to ready, when it comes from history (polling is densest around it).
fn predicted(step: &Step) -> Option<Duration> {
    matches!(
        step.weight_source,
        WeightSource::HistoryP50 | WeightSource::HistoryP90
    )
    .then(|| Duration::from_millis(step.weight_ms))
}

/// Watches one attempt: the process's exit, its readiness probe (or liveness window) and the
/// probe deadline. Reports to the loop; decides nothing.
struct Watch {
    idx: usize,
    serial: u64,
    proc: process::Proc,
    prober: Option<probe::Prober>,
    deadline: Option<Instant>,
    /// A service without probe is ready at this instant if still alive.
    alive_at: Option<Instant>,
    daemonizes: bool,
}

impl Watch {
    async fn run(mut self, tx: mpsc::Sender<Msg>) {
        let (idx, serial) = (self.idx, self.serial);
        let mut exited = false;
        let mut probing = self.prober.is_some() || self.deadline.is_some();
        let mut last: Option<(bool, String)> = None;
        loop {
            if exited && !probing && self.alive_at.is_none() {
                return;
            }
            tokio::select! {
                exit = self.proc.wait(), if !exited => {
                    exited = true;
                    let clean = exit.is_some_and(|e| e.success());
                    if tx.send(Msg::Exited { idx, serial, exit }).await.is_err() {
                        return;
                    }
                    self.alive_at = None;
                    if !(self.daemonizes && clean) {
                        return;
                    }
                }
                outcome = poll(&mut self.prober), if probing && self.prober.is_some() => {
                    if last.as_ref().is_none_or(|(ok, _)| *ok != outcome.ok) {
                        let msg = Msg::Probe { idx, serial, ok: outcome.ok, detail: outcome.detail.clone() };
                        if tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                    let ok = outcome.ok;
                    last = Some((outcome.ok, outcome.detail));
                    if ok {
                        probing = false;
                        if tx.send(Msg::Ready { idx, serial }).await.is_err() {
                            return;
                        }
                    }
                }
                () = sleep_until_opt(self.deadline), if probing => {
                    probing = false;
                    let detail = last.take().map_or_else(|| "no result yet".to_owned(), |(_, d)| d);
                    if tx.send(Msg::NotReady { idx, serial, detail }).await.is_err() {
                        return;
                    }
                }
                () = sleep_until_opt(self.alive_at), if self.alive_at.is_some() => {
                    self.alive_at = None;
                    if tx.send(Msg::Ready { idx, serial }).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

async fn poll(prober: &mut Option<probe::Prober>) -> probe::Outcome {
    match prober {
        Some(prober) => prober.poll().await,
        None => std::future::pending().await,
    }
}

async fn recv_opt(rx: &mut Option<mpsc::Receiver<Revision>>) -> Option<Revision> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Wall-clock time for events: RFC 3339, UTC, milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests;
