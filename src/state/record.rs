//! The records razar persists, shared by the database, `razar_state.json` and quarantine
//! files: one serde shape each, so every copy of a fact reads the same.

use serde::{Deserialize, Serialize};

use crate::classify::Class;
use crate::config::Kind;
use crate::exec::{ExitInfo, Outcome};

/// Where a component stands, as its last event left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// In the plan, not started yet.
    Waiting,
    /// Spawned, not ready (service) or not exited (task) yet.
    Starting,
    /// A service whose probe passed.
    Ready,
    /// A task that exited 0 (or a milestone reached).
    Completed,
    /// The last attempt failed; a restart may follow.
    Failed,
    /// Waiting for the backoff delay before the next attempt.
    Restarting,
    /// Attempts exhausted: left out of later plans until released.
    Quarantined,
    /// Cannot run: something it depends on failed or was excluded.
    Blocked,
    /// Not run in the last run (excluded, or completed by an earlier run).
    Skipped,
    /// A service that was up exited during supervision.
    Exited,
    Stopping,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Starting => "starting",
            Status::Ready => "ready",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Restarting => "restarting",
            Status::Quarantined => "quarantined",
            Status::Blocked => "blocked",
            Status::Skipped => "skipped",
            Status::Exited => "exited",
            Status::Stopping => "stopping",
            Status::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last readiness probe result of a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeResult {
    pub ok: bool,
    pub detail: String,
    pub at: String,
}

/// One component's checkpoint: what razar knows of it, updated on every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentRecord {
    pub kind: Option<Kind>,
    pub status: Status,
    /// The run that last touched it.
    pub run_id: Option<String>,
    /// Hash of the command it ran (see `state::command_hash`); `None` for milestones.
    pub command_hash: Option<String>,
    /// The process razar last spawned or adopted, while it may still run.
    pub pid: Option<u32>,
    pub pgid: Option<u32>,
    /// Process start time in clock ticks since boot (/proc/PID/stat field 22).
    pub start_time: Option<u64>,
    /// Attempt number of the last spawn (the executor counts them, resets after stable uptime).
    pub attempts: u32,
    /// Spawns after the first since the last fresh run.
    pub restarts: u32,
    /// Spawns since the last fresh run (restarts = spawns - 1).
    pub spawns: u32,
    /// True when `apply --resume` re-adopted the running process.
    pub adopted: bool,
    pub spawned_at: Option<String>,
    pub ready_at: Option<String>,
    pub completed_at: Option<String>,
    /// When the next attempt starts, while restarting.
    pub next_attempt_at: Option<String>,
    pub updated_at: String,
    pub last_probe: Option<ProbeResult>,
    pub last_exit: Option<ExitInfo>,
    /// Why it failed, is blocked or was skipped.
    pub reason: Option<String>,
}

impl ComponentRecord {
    pub fn new(kind: Option<Kind>, command_hash: Option<String>, at: &str) -> Self {
        ComponentRecord {
            kind,
            status: Status::Waiting,
            run_id: None,
            command_hash,
            pid: None,
            pgid: None,
            start_time: None,
            attempts: 0,
            restarts: 0,
            spawns: 0,
            adopted: false,
            spawned_at: None,
            ready_at: None,
            completed_at: None,
            next_attempt_at: None,
            updated_at: at.to_owned(),
            last_probe: None,
            last_exit: None,
            reason: None,
        }
    }
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Booting,
    Supervising,
    Stopping,
    Finished,
}

/// The `BootFinished` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSummary {
    pub ready: usize,
    pub failed: usize,
    pub blocked: usize,
    pub elapsed_ms: u64,
}

/// One run of `razar apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    pub id: String,
    pub config_hash: String,
    pub strategy: String,
    pub parallelism: usize,
    pub steps: usize,
    pub resumed: bool,
    /// The razar process that ran it.
    pub pid: u32,
    pub started_at: String,
    pub phase: Phase,
    pub boot: Option<BootSummary>,
    pub finished_at: Option<String>,
    pub outcome: Option<Outcome>,
    pub elapsed_ms: Option<u64>,
}

/// A quarantined component: `quarantine/<name>.json` and the database hold the same record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineRecord {
    pub version: u32,
    pub component: String,
    pub quarantined_at: String,
    pub run_id: Option<String>,
    /// The command that failed, as the plan shows it.
    pub command: Option<String>,
    pub attempts: u32,
    pub reason: String,
    pub exit: Option<ExitInfo>,
    pub class: Class,
    /// The classification rule that decided `class` (docs/state.md lists them).
    pub rule: String,
    /// The log line the rule matched.
    pub matched: Option<String>,
    pub hint: String,
    pub log_tail: Vec<String>,
}

/// What the Crown handshake said (ABZU's `handshake` block): ABZU's three keys, plus whatever
/// else the Crown link records about the exchange (`outcome`, `at`, `url`, `attempts`,
/// `suggestions`, `mission_brief`, `error`, …), kept as given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CrownRecord {
    pub acknowledgement: String,
    pub capabilities: Vec<String>,
    pub downtime: serde_json::Map<String, serde_json::Value>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl CrownRecord {
    /// Reads the Crown link's record of a handshake. A missing or `null` acknowledgement (no
    /// reply) is ABZU's empty string; capabilities that are not strings are dropped.
    pub fn from_value(value: &serde_json::Value) -> CrownRecord {
        let mut extra = value.as_object().cloned().unwrap_or_default();
        let acknowledgement = extra
            .remove("acknowledgement")
            .and_then(|a| a.as_str().map(str::to_owned))
            .unwrap_or_default();
        let capabilities = extra
            .remove("capabilities")
            .and_then(|c| {
                c.as_array().map(|items| {
                    items
                        .iter()
                        .filter_map(|i| i.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default();
        let downtime = extra
            .remove("downtime")
            .and_then(|d| d.as_object().cloned())
            .unwrap_or_default();
        CrownRecord {
            acknowledgement,
            capabilities,
            downtime,
            extra,
        }
    }
}

/// One line of the recent-events list in `razar_state.json` (ABZU's `events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventNote {
    pub event: String,
    pub timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The best start order a search found for one configuration (`razar bench --strategies
/// explore`), so later plans reuse it: keyed by the configuration's content hash, the
/// parallelism and the targets it was found for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExploredOrder {
    pub config_hash: String,
    pub parallelism: usize,
    pub targets: Vec<String>,
    /// Component names in start order.
    pub order: Vec<String>,
    pub makespan_ms: u64,
    pub critical_path_makespan_ms: u64,
    /// When it was stored (RFC 3339).
    pub found_at: String,
}

impl ExploredOrder {
    /// The store key: one order per configuration, parallelism and target selection.
    pub fn key(config_hash: &str, parallelism: usize, targets: &[String]) -> String {
        format!("{config_hash}:{parallelism}:{}", targets.join(","))
    }
}

/// A Crown suggestion razar judged, as the store keeps it (`razar plan` lists the latest):
/// where it came from (handshake, mid-boot message or file), whether it was applied and
/// what it changed or why it was rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuggestionRecord {
    /// When razar judged it (RFC 3339 UTC).
    pub recorded_at: String,
    #[serde(flatten)]
    pub outcome: crate::plan::suggest::Outcome,
}
