//! Text and JSON renderings of a [`View`] for `razar status`, `history` and `quarantine`.
//! Strings only: the binary decides where they go.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::{
    ComponentRecord, HistoryStats, ProbeResult, QuarantineRecord, Role, Source, Status, View,
    process_alive, process_uptime,
};
use crate::config::{Component, Kind};
use crate::exec::{ExitInfo, Outcome};

/// One row of `razar status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusRow {
    pub name: String,
    pub kind: Option<Kind>,
    /// `None`: in the config but never run.
    pub status: Option<Status>,
    pub pid: Option<u32>,
    /// Whether the recorded process (pid and start time) still runs.
    pub alive: Option<bool>,
    pub uptime_ms: Option<u64>,
    pub attempts: u32,
    pub restarts: u32,
    pub last_probe: Option<ProbeResult>,
    pub last_exit: Option<ExitInfo>,
    pub reason: Option<String>,
    pub quarantine: Option<QuarantineSummary>,
    /// False for components recorded in the state but absent from the given config.
    pub in_config: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuarantineSummary {
    pub since: String,
    pub class: crate::classify::Class,
    pub reason: String,
    pub hint: String,
}

/// The rows of `razar status`: the config's components in config order (when a config is
/// given), then anything else the state records, by name.
pub fn status_rows(view: &View, components: Option<&[Component]>) -> Vec<StatusRow> {
    let mut names: Vec<(String, Option<Kind>, Option<bool>)> = Vec::new();
    let mut seen = BTreeSet::new();
    if let Some(components) = components {
        for c in components {
            seen.insert(c.name.clone());
            names.push((c.name.clone(), Some(c.kind), Some(true)));
        }
    }
    let in_config = components.map(|_| false);
    for name in view.components.keys().chain(view.quarantine.keys()) {
        if seen.insert(name.clone()) {
            names.push((name.clone(), None, in_config));
        }
    }
    let mut rows: Vec<StatusRow> = names
        .into_iter()
        .map(|(name, kind, in_config)| {
            let rec = view.components.get(&name);
            let quarantine = view.quarantine.get(&name).map(|q| QuarantineSummary {
                since: q.quarantined_at.clone(),
                class: q.class,
                reason: q.reason.clone(),
                hint: q.hint.clone(),
            });
            row(name, kind, in_config, rec, quarantine)
        })
        .collect();
    // A daemonizing service's recorded pid is its launcher, which exits once the daemon runs:
    // the daemon is found by the environment razar gave it.
    let daemonizing: BTreeSet<&str> = components
        .unwrap_or_default()
        .iter()
        .filter(|c| c.daemonizes)
        .map(|c| c.name.as_str())
        .collect();
    let launchers_gone = rows
        .iter()
        .any(|r| r.alive == Some(false) && daemonizing.contains(r.name.as_str()));
    if launchers_gone {
        let tagged = crate::exec::leftovers(&view.dir);
        for r in rows
            .iter_mut()
            .filter(|r| r.alive == Some(false) && daemonizing.contains(r.name.as_str()))
        {
            if let Some(daemon) = tagged.iter().find(|t| t.component == r.name) {
                let start = super::proc::start_time(daemon.pid);
                r.pid = Some(daemon.pid);
                r.alive = Some(true);
                r.uptime_ms = start.and_then(process_uptime).map(crate::duration::millis);
            }
        }
    }
    rows
}

fn row(
    name: String,
    kind: Option<Kind>,
    in_config: Option<bool>,
    rec: Option<&ComponentRecord>,
    quarantine: Option<QuarantineSummary>,
) -> StatusRow {
    let Some(rec) = rec else {
        return StatusRow {
            name,
            kind,
            status: quarantine.as_ref().map(|_| Status::Quarantined),
            pid: None,
            alive: None,
            uptime_ms: None,
            attempts: 0,
            restarts: 0,
            last_probe: None,
            last_exit: None,
            reason: None,
            quarantine,
            in_config,
        };
    };
    let alive = rec.pid.map(|pid| process_alive(pid, rec.start_time));
    let uptime_ms = match (alive, rec.start_time) {
        (Some(true), Some(start)) => process_uptime(start).map(crate::duration::millis),
        _ => None,
    };
    StatusRow {
        name,
        kind: kind.or(rec.kind),
        status: Some(if quarantine.is_some() {
            Status::Quarantined
        } else {
            rec.status
        }),
        pid: rec.pid,
        alive,
        uptime_ms,
        attempts: rec.attempts,
        restarts: rec.restarts,
        last_probe: rec.last_probe.clone(),
        last_exit: rec.last_exit,
        reason: rec.reason.clone(),
        quarantine,
        in_config,
    }
}

fn source_name(source: &Source) -> &'static str {
    match source {
        Source::Empty => "empty",
        Source::Database => "database",
        Source::Snapshot { .. } => "razar_state.json",
    }
}

/// `razar status --json`.
pub fn status_json(view: &View, rows: &[StatusRow]) -> String {
    let (applying, compacting) = match view.apply {
        Some(holder) if holder.role == Role::Compact => (None, Some(holder)),
        Some(holder) if holder.role != Role::Apply => (None, None),
        holder => (holder, None),
    };
    let value = json!({
        "state_dir": view.dir,
        "source": source_name(&view.source),
        "snapshot_written_at": match &view.source {
            Source::Snapshot { updated_at } => Some(updated_at.clone()),
            _ => None,
        },
        "apply": {
            "running": applying.is_some(),
            "pid": applying.map(|h| h.pid),
        },
        "compaction": compacting.map(|h| json!({"pid": h.pid})),
        "run": view.run,
        "last_component": view.last_component,
        "components": rows,
    });
    let mut text = serde_json::to_string_pretty(&value).expect("status serialises: plain data");
    text.push('\n');
    text
}

fn human_ms(ms: u64) -> String {
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let secs = ms / 1_000;
    if secs < 60 {
        return format!("{:.1}s", ms as f64 / 1_000.0);
    }
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "success",
        Outcome::Failed => "failed",
        Outcome::Interrupted => "interrupted",
    }
}

/// The line about the apply and the latest run.
fn apply_line(view: &View) -> String {
    let run = view.run.as_ref();
    match (view.apply, run) {
        (Some(holder), _) if holder.role == Role::Compact => format!(
            "apply: not running; razar compact (pid {}) is rewriting the database",
            holder.pid
        ),
        (Some(holder), _) if holder.role != Role::Apply => format!(
            "apply: not running; {} (pid {})",
            holder.role.doing(),
            holder.pid
        ),
        (Some(holder), Some(run)) => format!(
            "apply: running (pid {}), run {} started {}, {}",
            holder.pid,
            run.id,
            run.started_at,
            match run.phase {
                super::Phase::Booting => "booting",
                super::Phase::Supervising => "supervising",
                super::Phase::Stopping => "stopping",
                super::Phase::Finished => "finishing",
            }
        ),
        (Some(holder), None) => format!("apply: running (pid {})", holder.pid),
        (None, None) => "apply: not running; no run recorded".to_owned(),
        (None, Some(run)) => match (&run.finished_at, run.outcome) {
            (Some(finished), Some(outcome)) => format!(
                "apply: not running; last run {} finished {} ({}{})",
                run.id,
                finished,
                outcome_name(outcome),
                run.elapsed_ms
                    .map(|ms| format!(", {}", human_ms(ms)))
                    .unwrap_or_default()
            ),
            _ => format!(
                "apply: not running; last run {} (pid {}) stopped without finishing: `razar apply --resume` continues it",
                run.id, run.pid
            ),
        },
    }
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `razar status`.
pub fn status_text(view: &View, rows: &[StatusRow]) -> String {
    let mut out = format!("{}\n{}\n", view.describe_source(), apply_line(view));
    if rows.is_empty() {
        out.push_str("no components recorded\n");
        return out;
    }
    out.push('\n');
    // Once the last run finished and no apply runs, a component still `waiting` was never
    // started by it (the run was interrupted, or stopped on a failure first).
    let run_over = view.apply.is_none_or(|h| h.role != Role::Apply)
        && view.run.as_ref().is_some_and(|r| r.finished_at.is_some());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let pid = r.pid.map_or("-".to_owned(), |pid| pid.to_string());
            let probe = match &r.last_probe {
                Some(p) if p.ok => format!("ok: {}", p.detail),
                Some(p) => format!("failing: {}", p.detail),
                None => "-".to_owned(),
            };
            let note = match (&r.quarantine, &r.reason, r.in_config) {
                (Some(q), _, _) => format!(
                    "{}: {} (`razar quarantine show {}`)",
                    q.class, q.reason, r.name
                ),
                (None, _, Some(false)) => "not in this config".to_owned(),
                (None, Some(reason), _) => reason.clone(),
                (None, None, _) => String::new(),
            };
            vec![
                r.name.clone(),
                r.kind
                    .map_or("-", |k| match k {
                        Kind::Service => "service",
                        Kind::Task => "task",
                    })
                    .to_owned(),
                match (r.status, r.alive) {
                    (None, _) => "never run".to_owned(),
                    // The record says it runs, but its process is gone: nobody supervised it.
                    (Some(s), Some(false)) => format!("gone (was {s})"),
                    (Some(Status::Waiting), _) if run_over => "not started".to_owned(),
                    (Some(s), _) => s.as_str().to_owned(),
                },
                pid,
                r.uptime_ms.map_or("-".to_owned(), human_ms),
                r.restarts.to_string(),
                truncate(&probe, 40),
                truncate(&note, 80),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "COMPONENT",
            "KIND",
            "STATUS",
            "PID",
            "UPTIME",
            "RESTARTS",
            "PROBE",
            "NOTE",
        ],
        &cells,
    ));
    out
}

fn truncate(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let cut: String = one_line.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

/// Whether a component's history was measured with its current command: `Some(false)` when
/// the command changed since (the history restarts on its next run), `None` when unknown.
pub fn history_current(
    name: &str,
    stats: &HistoryStats,
    components: Option<&[Component]>,
) -> Option<bool> {
    let component = components?.iter().find(|c| c.name == name)?;
    let command = component.command.as_ref()?;
    Some(stats.matches(component.kind, command))
}

/// `razar history`.
pub fn history_text(view: &View, entries: &[(String, HistoryStats, Option<bool>)]) -> String {
    let mut out = format!("{}\n", view.describe_source());
    if entries.is_empty() {
        out.push_str("no history recorded yet: every `razar apply` adds a sample per component\n");
        return out;
    }
    out.push('\n');
    let cells: Vec<Vec<String>> = entries
        .iter()
        .map(|(name, s, current)| {
            vec![
                name.clone(),
                s.samples.to_string(),
                s.p50_ms.map_or("-".to_owned(), human_ms),
                s.p90_ms.map_or("-".to_owned(), human_ms),
                format!(
                    "{}/{} ({:.0}%)",
                    s.failures,
                    s.samples,
                    s.failure_rate * 100.0
                ),
                s.last_seen.clone(),
                match current {
                    Some(false) => "command changed: history restarts on its next run".to_owned(),
                    _ => String::new(),
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "COMPONENT",
            "SAMPLES",
            "P50",
            "P90",
            "FAILED",
            "LAST SEEN",
            "NOTE",
        ],
        &cells,
    ));
    out
}

/// `razar history --json`.
pub fn history_json(view: &View, entries: &[(String, HistoryStats, Option<bool>)]) -> String {
    let components: Vec<serde_json::Value> = entries
        .iter()
        .map(|(name, stats, current)| {
            let mut value = serde_json::to_value(stats).expect("stats serialise: plain data");
            if let serde_json::Value::Object(map) = &mut value {
                map.insert("name".to_owned(), json!(name));
                map.insert("current".to_owned(), json!(current));
            }
            value
        })
        .collect();
    let value = json!({
        "state_dir": view.dir,
        "source": source_name(&view.source),
        "components": components,
    });
    let mut text = serde_json::to_string_pretty(&value).expect("history serialises");
    text.push('\n');
    text
}

/// `razar quarantine list`.
pub fn quarantine_list_text(view: &View) -> String {
    let mut out = format!("{}\n", view.describe_source());
    if view.quarantine.is_empty() {
        out.push_str("nothing is quarantined\n");
        return out;
    }
    out.push('\n');
    let cells: Vec<Vec<String>> = view
        .quarantine
        .values()
        .map(|q| {
            vec![
                q.component.clone(),
                q.class.to_string(),
                q.attempts.to_string(),
                q.quarantined_at.clone(),
                truncate(&q.reason, 80),
            ]
        })
        .collect();
    out.push_str(&table(
        &["COMPONENT", "CLASS", "ATTEMPTS", "SINCE", "REASON"],
        &cells,
    ));
    out
}

/// `razar quarantine list --json`.
pub fn quarantine_list_json(view: &View) -> String {
    let records: Vec<&QuarantineRecord> = view.quarantine.values().collect();
    let mut text = serde_json::to_string_pretty(&records).expect("records serialise");
    text.push('\n');
    text
}

/// `razar quarantine show NAME`.
pub fn quarantine_show_text(record: &QuarantineRecord) -> String {
    let mut out = format!(
        "{}: quarantined since {}{}\n",
        record.component,
        record.quarantined_at,
        record
            .run_id
            .as_ref()
            .map(|r| format!(" (run {r})"))
            .unwrap_or_default()
    );
    let mut field = |label: &str, value: String| {
        out.push_str(&format!("  {label:<9} {value}\n"));
    };
    field(
        "class:",
        format!("{} (rule `{}`)", record.class, record.rule),
    );
    field("reason:", record.reason.clone());
    if let Some(exit) = record.exit {
        field("exit:", exit.to_string());
    }
    field("attempts:", record.attempts.to_string());
    if let Some(command) = &record.command {
        field("command:", command.clone());
    }
    if let Some(line) = &record.matched {
        field("matched:", line.clone());
    }
    field("hint:", record.hint.clone());
    field(
        "release:",
        format!(
            "razar quarantine release {} --note \"what was fixed\"",
            record.component
        ),
    );
    if record.log_tail.is_empty() {
        out.push_str("  log tail: (empty)\n");
    } else {
        out.push_str("  log tail:\n");
        for line in &record.log_tail {
            out.push_str(&format!("    | {line}\n"));
        }
    }
    out
}

pub fn quarantine_show_json(record: &QuarantineRecord) -> String {
    let mut text = serde_json::to_string_pretty(record).expect("records serialise");
    text.push('\n');
    text
}
