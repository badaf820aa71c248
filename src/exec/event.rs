//! What the executor reports: one [`Event`] per state transition of a run.
//!
//! The executor never prints or persists anything itself: it hands each event to a [`Sink`].
//! Sinks are called in order, so the state store (first) checkpoints every transition before
//! the reporter (next) shows it. `schemas/events.schema.json` describes the `--json` lines.

use serde::{Deserialize, Serialize};

/// One thing that happened during a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the run started.
    pub at_ms: u64,
    /// Wall-clock time, RFC 3339 UTC with milliseconds.
    pub time: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
}

impl ExitInfo {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(signal)) => write!(f, "killed by signal {signal}"),
            (None, None) => write!(f, "unknown exit"),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every selected component came up (and, if supervised, was stopped on request).
    Success,
    /// A component failed or was quarantined.
    Failed,
    /// Stopped by a signal or `razar down` before the boot finished.
    Interrupted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    RunStarted {
        run_id: String,
        /// The plan's `config_hash`.
        config_hash: String,
        strategy: String,
        parallelism: usize,
        steps: usize,
        resumed: bool,
    },
    /// Resume found this component still running from an earlier run and supervises it.
    Adopted {
        component: String,
        pid: u32,
        pgid: u32,
    },
    /// Not run in this run (a task completed by an earlier run, an excluded component).
    Skipped {
        component: String,
        reason: String,
    },
    /// Cannot run: something it depends on failed or was excluded.
    Blocked {
        component: String,
        reason: String,
    },
    Spawned {
        component: String,
        attempt: u32,
        pid: u32,
        pgid: u32,
        /// Process start time in clock ticks since boot (/proc/PID/stat field 22): with the
        /// pid, identifies the process across razar restarts.
        start_time: u64,
    },
    /// A service's readiness probe passed.
    Ready {
        component: String,
        attempt: u32,
        after_ms: u64,
    },
    /// A task exited 0 (or a milestone was reached).
    Completed {
        component: String,
        attempt: u32,
        after_ms: u64,
    },
    /// Probe results are reported when they change, not on every poll.
    Probe {
        component: String,
        ok: bool,
        detail: String,
    },
    AttemptFailed {
        component: String,
        attempt: u32,
        reason: String,
        exit: Option<ExitInfo>,
        log_tail: Vec<String>,
    },
    RestartScheduled {
        component: String,
        next_attempt: u32,
        delay_ms: u64,
    },
    /// Attempts exhausted: the component is quarantined and its dependents blocked.
    Quarantined {
        component: String,
        attempts: u32,
        reason: String,
        exit: Option<ExitInfo>,
        log_tail: Vec<String>,
    },
    /// A service that was up exited during supervision.
    Exited {
        component: String,
        exit: ExitInfo,
        uptime_ms: u64,
    },
    /// Every selected component is up, failed or blocked.
    BootFinished {
        ready: usize,
        failed: usize,
        blocked: usize,
        elapsed_ms: u64,
    },
    Stopping {
        component: String,
        signal: String,
    },
    Stopped {
        component: String,
        exit: Option<ExitInfo>,
        forced: bool,
    },
    RunFinished {
        outcome: Outcome,
        elapsed_ms: u64,
    },
}

impl EventKind {
    /// The component this event concerns, if any.
    pub fn component(&self) -> Option<&str> {
        match self {
            EventKind::Adopted { component, .. }
            | EventKind::Skipped { component, .. }
            | EventKind::Blocked { component, .. }
            | EventKind::Spawned { component, .. }
            | EventKind::Ready { component, .. }
            | EventKind::Completed { component, .. }
            | EventKind::Probe { component, .. }
            | EventKind::AttemptFailed { component, .. }
            | EventKind::RestartScheduled { component, .. }
            | EventKind::Quarantined { component, .. }
            | EventKind::Exited { component, .. }
            | EventKind::Stopping { component, .. }
            | EventKind::Stopped { component, .. } => Some(component),
            EventKind::RunStarted { .. }
            | EventKind::BootFinished { .. }
            | EventKind::RunFinished { .. } => None,
        }
    }
}

/// Receives every event of a run, in order, on the scheduler's thread. Implementations must
/// not block for long: the boot waits for them.
pub trait Sink: Send {
    fn emit(&mut self, event: &Event);
}

/// Fans events out to several sinks in order (state first, then reporter, then Crown).
#[derive(Default)]
pub struct Fanout(pub Vec<Box<dyn Sink>>);

impl Sink for Fanout {
    fn emit(&mut self, event: &Event) {
        for sink in &mut self.0 {
            sink.emit(event);
        }
    }
}

/// Collects events in memory (tests, `razar bench`).
#[derive(Debug, Default, Clone)]
pub struct Collect(pub std::sync::Arc<std::sync::Mutex<Vec<Event>>>);

impl Sink for Collect {
    fn emit(&mut self, event: &Event) {
        if let Ok(mut events) = self.0.lock() {
            events.push(event.clone());
        }
    }
}
