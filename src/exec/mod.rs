//! Execution: a [`Plan`](crate::plan::Plan) becomes running processes (in progress).

pub mod event;

pub use event::{Event, EventKind, ExitInfo, Outcome, Sink};

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
    /// Anything else (waiting, failed, blocked, stopped): start afresh.
    Other,
}
