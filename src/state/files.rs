//! Operator-facing files: the `razar_state.json` snapshot, `quarantine/<name>.json` records and
//! the `quarantine_log.md` table (ABZU's format). Whole files are replaced atomically (temp
//! file + rename); the log is append-only.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    ComponentRecord, CrownRecord, EventNote, HistoryStats, Paths, QuarantineRecord, RunRecord,
    STATE_FORMAT, StateError,
};

/// `razar_state.json`: everything razar knows, for operators, for ABZU-era tools (the keys
/// `last_component`, `capabilities`, `downtime`, `launched_models`, `handshake` and `events`
/// keep ABZU's meaning) and for read-only commands while an apply holds the database.
/// Schema: `schemas/razar_state.schema.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Snapshot<
    C = BTreeMap<String, ComponentRecord>,
    H = BTreeMap<String, HistoryStats>,
> {
    pub version: u32,
    pub generator: String,
    pub updated_at: String,
    pub state_dir: PathBuf,
    /// The apply holding the state directory when this was written, if any.
    pub apply: Option<ApplyInfo>,
    pub run: Option<RunRecord>,
    /// The last component that became ready or completed (ABZU resumed from it).
    pub last_component: String,
    pub capabilities: Vec<String>,
    pub downtime: serde_json::Map<String, serde_json::Value>,
    pub launched_models: Vec<String>,
    /// Every model launch with its outcome (absent from files of older razars).
    #[serde(default)]
    pub model_launches: Vec<super::crown::LaunchRecord>,
    /// The latest judged Crown suggestions (absent from files of older razars).
    #[serde(default)]
    pub suggestions: Vec<super::SuggestionRecord>,
    pub handshake: CrownRecord,
    /// Written from per-component fragments the store keeps between rewrites (`C` is then
    /// [`Rendered`]), read as records.
    pub components: C,
    pub quarantine: BTreeMap<String, QuarantineRecord>,
    pub history: H,
    /// Recent events, oldest first.
    pub events: Vec<EventNote>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApplyInfo {
    pub pid: u32,
    pub start_time: Option<u64>,
}

/// What an existing `razar_state.json` turned out to be, read as `T` (the whole [`Snapshot`],
/// or only the part a caller uses).
pub(crate) enum Existing<T = Snapshot> {
    Missing,
    Ours(Box<T>),
    /// A JSON object without razar's `version`: ABZU's file, whose keys razar carries over.
    Foreign(serde_json::Map<String, serde_json::Value>),
    /// Not parseable: the detail says why.
    Unreadable(String),
}

/// The part of a snapshot an apply carries over when it opens the store: the recent events
/// (everything else is rebuilt from the database). Other keys are skipped, not parsed.
#[derive(Debug, Deserialize)]
pub(crate) struct SnapshotEvents {
    pub events: Vec<EventNote>,
}

/// Only the `version` of a snapshot; the rest of the text is skipped without building it.
#[derive(Deserialize)]
struct VersionOnly {
    #[serde(default)]
    version: Option<serde_json::Value>,
}

/// Reads `razar_state.json` as `T`. A file from a newer razar is an error (it must not be
/// replaced).
pub(crate) fn read_snapshot<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Existing<T>, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Missing),
        Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
            return Ok(Existing::Unreadable("not UTF-8".to_owned()));
        }
        Err(err) => return Err(StateError::io(path, err)),
    };
    if !text.trim_start().starts_with('{') {
        return Ok(match serde_json::from_str::<serde_json::Value>(&text) {
            Err(err) => Existing::Unreadable(err.to_string()),
            Ok(_) => Existing::Unreadable("not a JSON object".to_owned()),
        });
    }
    let head: VersionOnly = match serde_json::from_str(&text) {
        Ok(head) => head,
        Err(err) => return Ok(Existing::Unreadable(err.to_string())),
    };
    let Some(version) = head.version else {
        return Ok(match serde_json::from_str(&text) {
            Ok(map) => Existing::Foreign(map),
            Err(err) => Existing::Unreadable(err.to_string()),
        });
    };
    match version.as_u64() {
        Some(v) if v > u64::from(STATE_FORMAT) => {
            return Err(StateError::Newer {
                path: path.to_path_buf(),
                found: v,
                reads: u64::from(STATE_FORMAT),
            });
        }
        Some(_) => {}
        None => return Ok(Existing::Unreadable("`version` is not a number".to_owned())),
    }
    match serde_json::from_str::<T>(&text) {
        Ok(snapshot) => Ok(Existing::Ours(Box::new(snapshot))),
        Err(err) => Ok(Existing::Unreadable(err.to_string())),
    }
}

impl<C, H> Snapshot<C, H> {
    /// The same snapshot with other component and history entries (e.g. rendered ones).
    pub(crate) fn with_entries<C2, H2>(self, components: C2, history: H2) -> Snapshot<C2, H2> {
        Snapshot {
            version: self.version,
            generator: self.generator,
            updated_at: self.updated_at,
            state_dir: self.state_dir,
            apply: self.apply,
            run: self.run,
            last_component: self.last_component,
            capabilities: self.capabilities,
            downtime: self.downtime,
            launched_models: self.launched_models,
            model_launches: self.model_launches,
            suggestions: self.suggestions,
            handshake: self.handshake,
            components,
            quarantine: self.quarantine,
            history,
            events: self.events,
        }
    }
}

/// Values rendered by [`render_fragment`], by name (each with the value it was rendered
/// from), written as the JSON object they came from: the store keeps them between rewrites
/// of `razar_state.json`, so a rewrite renders only what changed.
pub(crate) struct Rendered<'a, T>(pub &'a BTreeMap<String, (T, Box<serde_json::value::RawValue>)>);

impl<T> Serialize for Rendered<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, (_, raw))| (name, raw)))
    }
}

/// A snapshot as written: components and history statistics as pre-rendered fragments.
pub(crate) type RenderedSnapshot<'a> =
    Snapshot<Rendered<'a, ComponentRecord>, Rendered<'a, HistoryStats>>;

/// One value rendered as it appears inside `components` or `history` of a pretty-printed
/// snapshot (two levels deep), so a snapshot assembled from such fragments reads exactly like
/// one rendered whole.
pub(crate) fn render_fragment<T: Serialize>(value: &T) -> Box<serde_json::value::RawValue> {
    use serde_json::ser::{Formatter, PrettyFormatter, Serializer};
    let mut out = Vec::with_capacity(512);
    // The formatter opens the two enclosing objects itself, so that the value's own lines
    // come out indented as deep as they sit in the snapshot; their braces are dropped.
    let mut formatter = PrettyFormatter::new();
    let opened = formatter
        .begin_object(&mut out)
        .and_then(|()| formatter.begin_object(&mut out));
    let rendered = opened
        .map_err(serde_json::Error::io)
        .and_then(|()| value.serialize(&mut Serializer::with_formatter(&mut out, formatter)));
    rendered.expect("state records serialise: plain data");
    out.drain(..2);
    let text = String::from_utf8(out).expect("serde_json writes UTF-8");
    serde_json::value::RawValue::from_string(text).expect("a serialised value is valid JSON")
}

/// Renders the whole snapshot's text into `out`, replacing what it held: the last snapshot's
/// buffer, so its memory is neither grown again nor faulted in afresh.
pub(crate) fn render_snapshot(snapshot: &RenderedSnapshot<'_>, out: &mut Vec<u8>) {
    out.clear();
    serde_json::to_writer_pretty(&mut *out, snapshot).expect("the snapshot serialises: plain data");
    out.push(b'\n');
}

/// Writes a file atomically (temp file, fsync, rename).
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StateError> {
    state_error(path, crate::error::write_atomic(path, contents))
}

/// Writes `razar_state.json` atomically without syncing it: the database is the truth, and an
/// unreadable snapshot is rebuilt from it when the store opens.
pub(crate) fn write_snapshot_file(path: &Path, contents: &[u8]) -> Result<(), StateError> {
    state_error(path, crate::error::write_mirror(path, contents))
}

fn state_error(path: &Path, result: Result<(), crate::Error>) -> Result<(), StateError> {
    result.map_err(|err| match err {
        crate::Error::Write { path, source } => StateError::Io { path, source },
        other => StateError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

/// Moves a file aside to `<name>.<suffix>-<unix seconds>` (never overwriting) and returns
/// where it went, so a damaged or foreign file is kept for the operator, not destroyed.
pub(crate) fn move_aside(path: &Path, suffix: &str) -> Result<PathBuf, StateError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut target = path.with_file_name(format!("{file_name}.{suffix}-{secs}"));
    let mut n = 1;
    while target.exists() {
        target = path.with_file_name(format!("{file_name}.{suffix}-{secs}.{n}"));
        n += 1;
    }
    std::fs::rename(path, &target).map_err(|err| StateError::io(path, err))?;
    Ok(target)
}

pub(crate) fn write_quarantine(paths: &Paths, record: &QuarantineRecord) -> Result<(), StateError> {
    let mut text =
        serde_json::to_string_pretty(record).expect("quarantine records serialise: plain data");
    text.push('\n');
    write_atomic(&paths.quarantine_file(&record.component), text.as_bytes())
}

pub(crate) fn remove_quarantine(paths: &Paths, name: &str) -> Result<(), StateError> {
    let path = paths.quarantine_file(name);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(StateError::io(&path, err)),
    }
}

/// Files in `quarantine/` that are not razar records, with why (left untouched).
pub(crate) type Foreign = Vec<(PathBuf, String)>;

/// The quarantine records found in `quarantine/`, and the files that are not razar records.
pub(crate) fn read_quarantine_dir(
    paths: &Paths,
) -> Result<(Vec<QuarantineRecord>, Foreign), StateError> {
    let dir = paths.quarantine_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Vec::new(), Vec::new()));
        }
        Err(err) => return Err(StateError::io(&dir, err)),
    };
    let mut records = Vec::new();
    let mut foreign = Vec::new();
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for path in files {
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                serde_json::from_str::<QuarantineRecord>(&text).map_err(|e| e.to_string())
            });
        match parsed {
            // A newer razar's record: refused, not imported as this razar reads it.
            Ok(record) if record.version > STATE_FORMAT => {
                return Err(StateError::Newer {
                    path,
                    found: u64::from(record.version),
                    reads: u64::from(STATE_FORMAT),
                });
            }
            Ok(record) if path.file_stem().and_then(|s| s.to_str()) == Some(&record.component) => {
                records.push(record)
            }
            Ok(record) => foreign.push((
                path,
                format!("names component `{}`, not its file name", record.component),
            )),
            Err(detail) => foreign.push((path, detail)),
        }
    }
    Ok((records, foreign))
}

const LOG_HEADER: &str = "# Quarantine Log

Components razar quarantined (restart attempts exhausted) are recorded in `quarantine/` and below.
Their dependents are blocked and later plans leave them out.

## Restoring components

To reinstate a component once it is fixed, run
`razar quarantine release NAME --note \"what was fixed\"`: it removes `quarantine/NAME.json` and
appends a `resolved` entry to this log. The next plan includes the component again.

| Timestamp (UTC) | Component | Action | Details |
|-----------------|-----------|--------|---------|
";

/// A table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// Fails as appending a row to `quarantine_log.md` would (the file is created if missing and
/// left as it is otherwise), so a change that must be logged can check first.
pub(crate) fn check_log_writable(paths: &Paths) -> Result<(), StateError> {
    let path = paths.quarantine_log();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map(drop)
        .map_err(|err| StateError::io(&path, err))
}

/// Appends one row to `quarantine_log.md`, creating it with ABZU's header when missing.
pub(crate) fn append_log_row(
    paths: &Paths,
    timestamp: &str,
    component: &str,
    action: &str,
    details: &str,
) -> Result<(), StateError> {
    let path = paths.quarantine_log();
    let existing = match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(StateError::io(&path, err)),
    };
    let mut text = String::new();
    match &existing {
        None => text.push_str(LOG_HEADER),
        Some(bytes) if bytes.is_empty() => text.push_str(LOG_HEADER),
        Some(bytes) if !bytes.ends_with(b"\n") => text.push('\n'),
        Some(_) => {}
    }
    text.push_str(&format!(
        "| {} | {} | {} | {} |\n",
        cell(timestamp),
        cell(component),
        cell(action),
        cell(details)
    ));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        file.write_all(text.as_bytes())?;
        file.sync_data()
    };
    write().map_err(|err| StateError::io(&path, err))
}

/// Seconds-precision UTC timestamp, as ABZU's log writes it.
pub(crate) fn log_timestamp(rfc3339: &str) -> String {
    match humantime::parse_rfc3339_weak(rfc3339) {
        Ok(time) => humantime::format_rfc3339_seconds(time).to_string(),
        Err(_) => rfc3339.to_owned(),
    }
}

/// The `Details` cell of a quarantine row: `class: reason (log: line); hint`, as ABZU's rows
/// read (`dependency: circular import …; refactor imports …`).
pub(crate) fn quarantine_details(record: &QuarantineRecord) -> String {
    let mut details = format!("{}: {}", record.class, record.reason);
    if let Some(line) = &record.matched
        && line != &record.reason
    {
        details.push_str(&format!(" (log: {line})"));
    }
    details.push_str("; ");
    details.push_str(&record.hint.replace("NAME", &record.component));
    details
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Kind;
    use crate::state::history::Outcome;

    #[test]
    fn a_snapshot_assembled_from_fragments_reads_exactly_like_one_rendered_whole() {
        let mut record = ComponentRecord::new(
            Some(Kind::Service),
            Some("abc".into()),
            "2025-01-02T03:04:05.678Z",
        );
        record.reason = Some("line one\nline \"two\"".into());
        let stats = HistoryStats {
            command_hash: "abc".into(),
            samples: 3,
            failures: 1,
            failure_rate: 1.0 / 3.0,
            p50_ms: Some(40),
            p90_ms: Some(90),
            min_ms: Some(10),
            max_ms: Some(90),
            last_seen: "2025-01-02T03:04:05.678Z".into(),
            last_outcome: Outcome::Ready,
        };
        let whole: Snapshot = Snapshot {
            version: STATE_FORMAT,
            generator: "razar test".into(),
            updated_at: "2025-01-02T03:04:05.678Z".into(),
            state_dir: PathBuf::from("/tmp/state"),
            apply: Some(ApplyInfo {
                pid: 42,
                start_time: Some(7),
            }),
            run: None,
            last_component: "api".into(),
            capabilities: vec!["gpu".into()],
            downtime: serde_json::Map::new(),
            launched_models: Vec::new(),
            model_launches: Vec::new(),
            suggestions: Vec::new(),
            handshake: CrownRecord::default(),
            components: [
                ("api".to_owned(), record.clone()),
                ("db".to_owned(), record),
            ]
            .into_iter()
            .collect(),
            quarantine: BTreeMap::new(),
            history: [("api".to_owned(), stats)].into_iter().collect(),
            events: Vec::new(),
        };
        let mut expected = serde_json::to_string_pretty(&whole).expect("render");
        expected.push('\n');
        fn fragments<T: Clone + Serialize>(
            values: &BTreeMap<String, T>,
        ) -> BTreeMap<String, (T, Box<serde_json::value::RawValue>)> {
            values
                .iter()
                .map(|(k, v)| (k.clone(), (v.clone(), render_fragment(v))))
                .collect()
        }
        let components = fragments(&whole.components);
        let history = fragments(&whole.history);
        let rendered = whole
            .clone()
            .with_entries(Rendered(&components), Rendered(&history));
        // Whatever the buffer held before, and however large, the text is the same.
        for held in [0, 10, expected.len(), 10 * expected.len()] {
            let mut out = vec![b'x'; held];
            render_snapshot(&rendered, &mut out);
            assert_eq!(String::from_utf8(out).expect("UTF-8"), expected);
        }
    }
}
