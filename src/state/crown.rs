//! The files Crown exchanges leave in the state directory, for operators and audits:
//!
//! - `mission_briefs/<stamp>.json` — the handshake razar sent, and
//!   `mission_briefs/<stamp>_response.json` — Crown's reply (or why there was none);
//!   at most [`KEEP_PAIRS`] pairs are kept, the oldest removed together with their files;
//! - `mission_briefs/<stamp>_<model>_launch.json` — a model launched because Crown lacked it;
//! - `interaction_log.jsonl` — one line per exchange: timestamp, initiator, action, summary.
//!
//! `<stamp>` is the UTC time with colons replaced (`2025-09-02T12-00-00.123456Z`), so names
//! sort by time and are valid on every file system. Every file is written atomically. The
//! Crown token is never given to this module, so it cannot end up in these files.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, write_atomic};

/// Brief/response pairs kept in `mission_briefs/`.
pub const KEEP_PAIRS: usize = 20;

/// Size past which `interaction_log.jsonl` is rotated to `interaction_log.jsonl.1`.
pub const INTERACTION_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;

pub const BRIEFS_DIR: &str = "mission_briefs";
pub const INTERACTION_LOG: &str = "interaction_log.jsonl";

/// One line of `interaction_log.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interaction {
    /// RFC 3339 UTC.
    pub timestamp: String,
    /// Who started the exchange: `razar`, `operator` or `crown`.
    pub initiator: String,
    /// `handshake`, `suggestions`, `model_launch`, `status_stream`, …
    pub action: String,
    pub response_summary: String,
}

/// The Crown files of one state directory.
#[derive(Debug, Clone)]
pub struct Archive {
    state_dir: PathBuf,
}

impl Archive {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
        }
    }

    pub fn briefs_dir(&self) -> PathBuf {
        self.state_dir.join(BRIEFS_DIR)
    }

    pub fn interaction_log(&self) -> PathBuf {
        self.state_dir.join(INTERACTION_LOG)
    }

    /// Archives a handshake — the message sent and the reply (or the failure record) — then
    /// drops the oldest pairs beyond [`KEEP_PAIRS`]. Returns the stamp naming the pair.
    pub fn record_handshake(
        &self,
        at: SystemTime,
        sent: &Value,
        response: &Value,
    ) -> Result<String, Error> {
        let dir = self.briefs_dir();
        std::fs::create_dir_all(&dir).map_err(|source| Error::Write {
            path: dir.clone(),
            source,
        })?;
        let stamp = self.free_stamp(at);
        write_atomic(&dir.join(format!("{stamp}.json")), &pretty(sent))?;
        write_atomic(
            &dir.join(format!("{stamp}_response.json")),
            &pretty(response),
        )?;
        self.rotate()?;
        Ok(stamp)
    }

    /// Archives the outcome of a model launch next to the handshake that caused it.
    pub fn record_launch(
        &self,
        stamp: &str,
        model: &str,
        record: &Value,
    ) -> Result<PathBuf, Error> {
        let path = self
            .briefs_dir()
            .join(format!("{stamp}_{}_launch.json", file_safe(model)));
        write_atomic(&path, &pretty(record))?;
        Ok(path)
    }

    /// Appends one line to `interaction_log.jsonl` (one `write` of a whole line, so
    /// concurrent writers never interleave within a line).
    pub fn log(&self, entry: &Interaction) -> Result<(), Error> {
        let path = self.interaction_log();
        let wrap = |source| Error::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.state_dir).map_err(wrap)?;
        let mut line = serde_json::to_string(entry).expect("interaction entries serialise");
        line.push('\n');
        // Capped like a component's log: past the cap the file becomes `.1` (replacing the
        // previous one) and a new one starts, so a chatty Crown cannot fill the disk.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() >= INTERACTION_LOG_MAX_BYTES) {
            let mut rotated = path.clone().into_os_string();
            rotated.push(".1");
            std::fs::rename(&path, rotated).map_err(wrap)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(wrap)?;
        file.write_all(line.as_bytes()).map_err(wrap)
    }

    /// Every line of the interaction log that parses (a torn last line is skipped).
    pub fn interactions(&self) -> Vec<Interaction> {
        std::fs::read_to_string(self.interaction_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The stamps of the archived pairs, oldest first.
    pub fn pairs(&self) -> Vec<String> {
        let groups = self.groups();
        groups
            .into_iter()
            .filter(|(_, files)| files.iter().any(|f| f.is_brief))
            .map(|(stamp, _)| stamp)
            .collect()
    }

    /// Archive files grouped by stamp (files that razar did not name are left out).
    fn groups(&self) -> BTreeMap<String, Vec<Archived>> {
        let mut groups: BTreeMap<String, Vec<Archived>> = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(self.briefs_dir()) else {
            return groups;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(base) = name.strip_suffix(".json") else {
                continue;
            };
            let (stamp, rest) = match base.split_once('_') {
                Some((stamp, rest)) => (stamp, Some(rest)),
                None => (base, None),
            };
            // Only the names razar writes: the brief, `_response` and `_<model>_launch`.
            let ours = rest.is_none_or(|r| r == "response" || r.ends_with("_launch"));
            if !is_stamp(stamp) || !ours {
                continue;
            }
            groups.entry(stamp.to_owned()).or_default().push(Archived {
                path: entry.path(),
                is_brief: rest.is_none(),
            });
        }
        groups
    }

    /// Removes the oldest pairs (with their launch records) beyond [`KEEP_PAIRS`].
    fn rotate(&self) -> Result<(), Error> {
        let groups = self.groups();
        let pairs: Vec<&String> = groups
            .iter()
            .filter(|(_, files)| files.iter().any(|f| f.is_brief))
            .map(|(stamp, _)| stamp)
            .collect();
        let excess = pairs.len().saturating_sub(KEEP_PAIRS);
        for stamp in pairs.into_iter().take(excess) {
            for file in &groups[stamp] {
                match std::fs::remove_file(&file.path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(Error::Write {
                            path: file.path.clone(),
                            source,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// A stamp for `at` that no archived file uses yet.
    fn free_stamp(&self, at: SystemTime) -> String {
        let base = stamp(at);
        let taken = self.groups();
        if !taken.contains_key(&base) {
            return base;
        }
        (1..)
            .map(|n| format!("{base}-{n}"))
            .find(|candidate| !taken.contains_key(candidate))
            .expect("some numbered stamp is free")
    }
}

/// One model launch to watch for: the plan step running it and the model it launches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub step: String,
    pub model: String,
    pub command: String,
}

/// The outcome of a model launch, as archived in `<stamp>_<model>_launch.json` and recorded
/// as a `model_launch` event (`schemas/crown/model_launch.schema.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchRecord {
    pub event: String,
    pub model: String,
    pub step: String,
    pub command: String,
    /// `completed`, `failed` or `blocked`.
    pub outcome: String,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How the launch command ended, when it failed after running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<crate::exec::ExitInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
}

impl LaunchRecord {
    /// `completed in 1.2s`, `failed (exit code 3): …`, `not_run: …`: the outcome in a line.
    pub fn summary(&self) -> String {
        let mut text = self.outcome.clone();
        if let Some(ms) = self.after_ms {
            text.push_str(&format!(
                " in {}",
                crate::duration::display(std::time::Duration::from_millis(ms))
            ));
        }
        if let Some(exit) = &self.exit {
            text.push_str(&format!(" ({exit})"));
        }
        if let Some(detail) = &self.detail {
            text.push_str(": ");
            text.push_str(detail);
        }
        text
    }
}

/// A sink that archives the outcome of each model launch step when the executor reports it,
/// and logs the launch in `interaction_log.jsonl`. Write failures are logged, never fatal:
/// the boot goes on.
pub struct LaunchRecorder {
    archive: Archive,
    stamp: String,
    launches: Vec<Launch>,
    records: Vec<LaunchRecord>,
    hook: Option<LaunchHook>,
}

/// Called with each launch outcome, e.g. to record a `model_launch` event in the store.
pub type LaunchHook = Box<dyn FnMut(&LaunchRecord) + Send>;

impl LaunchRecorder {
    /// `stamp`: the handshake whose reply caused the launches.
    pub fn new(archive: Archive, stamp: String, launches: Vec<Launch>) -> Self {
        Self {
            archive,
            stamp,
            launches,
            records: Vec::new(),
            hook: None,
        }
    }

    /// Also hands every outcome to `hook`.
    pub fn with_hook(mut self, hook: LaunchHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Every launch outcome recorded so far.
    pub fn records(&self) -> &[LaunchRecord] {
        &self.records
    }

    /// Archives, logs and hands on one outcome: `ended` says how the step ended (`outcome`
    /// plus what is known of it); the launch's identity and the time are filled in here.
    fn record(&mut self, launch: &Launch, time: &str, ended: LaunchRecord) {
        let record = LaunchRecord {
            event: "model_launch".to_owned(),
            model: launch.model.clone(),
            step: launch.step.clone(),
            command: launch.command.clone(),
            at: time.to_owned(),
            ..ended
        };
        let (outcome, after_ms, detail) = (
            record.outcome.as_str(),
            record.after_ms,
            record.detail.clone(),
        );
        let value = serde_json::to_value(&record).expect("launch records serialise");
        if let Err(err) = self
            .archive
            .record_launch(&self.stamp, &launch.model, &value)
        {
            tracing::warn!(target: "razar::crown", "cannot archive the launch of `{}`: {err}", launch.model);
        }
        let summary = match (outcome, after_ms, detail) {
            ("completed", Some(ms), _) => format!(
                "`{}` launched in {}",
                launch.model,
                crate::duration::display(std::time::Duration::from_millis(ms))
            ),
            (_, _, Some(detail)) => format!("`{}` launch {outcome}: {detail}", launch.model),
            _ => format!("`{}` launch {outcome}", launch.model),
        };
        if let Err(err) = self.archive.log(&Interaction {
            timestamp: time.to_owned(),
            initiator: "razar".to_owned(),
            action: "model_launch".to_owned(),
            response_summary: summary,
        }) {
            tracing::warn!(target: "razar::crown", "cannot log the launch of `{}`: {err}", launch.model);
        }
        if let Some(hook) = self.hook.as_mut() {
            hook(&record);
        }
        self.records.push(record);
    }
}

impl crate::exec::Sink for LaunchRecorder {
    fn emit(&mut self, event: &crate::exec::Event) {
        use crate::exec::EventKind;
        let Some(component) = event.kind.component() else {
            return;
        };
        let Some(launch) = self.launches.iter().find(|l| l.step == component).cloned() else {
            return;
        };
        match &event.kind {
            EventKind::Completed { after_ms, .. } => {
                self.record(
                    &launch,
                    &event.time,
                    LaunchRecord {
                        after_ms: Some(*after_ms),
                        ..ended("completed")
                    },
                );
            }
            EventKind::AttemptFailed {
                reason,
                exit,
                log_tail,
                ..
            }
            | EventKind::Quarantined {
                reason,
                exit,
                log_tail,
                ..
            } => {
                // A launch has one attempt: its failure is final.
                if self.records.iter().any(|r| r.step == launch.step) {
                    return;
                }
                self.record(
                    &launch,
                    &event.time,
                    LaunchRecord {
                        detail: Some(reason.clone()),
                        exit: *exit,
                        log_tail: log_tail.clone(),
                        ..ended("failed")
                    },
                );
            }
            EventKind::Blocked { reason, .. } | EventKind::Skipped { reason, .. } => {
                self.record(
                    &launch,
                    &event.time,
                    LaunchRecord {
                        detail: Some(reason.clone()),
                        ..ended("not_run")
                    },
                );
            }
            _ => {}
        }
    }
}

/// A launch record with only its outcome set (`LaunchRecorder::record` fills in the rest).
fn ended(outcome: &str) -> LaunchRecord {
    LaunchRecord {
        event: String::new(),
        model: String::new(),
        step: String::new(),
        command: String::new(),
        outcome: outcome.to_owned(),
        at: String::new(),
        after_ms: None,
        detail: None,
        exit: None,
        log_tail: Vec::new(),
    }
}

struct Archived {
    path: PathBuf,
    is_brief: bool,
}

/// `2025-09-02T12:00:00.123456Z` → `2025-09-02T12-00-00.123456Z`.
pub fn stamp(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at)
        .to_string()
        .replace(':', "-")
}

/// Whether a file-name prefix is a stamp razar (or ABZU) wrote: `YYYY-MM-DDTHH-MM-SS…Z`,
/// optionally followed by `-N`.
fn is_stamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 20
        && bytes[..4].iter().all(u8::is_ascii_digit)
        && bytes[4] == b'-'
        && bytes[10] == b'T'
        && text.contains('Z')
        && bytes
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'T' | b'Z' | b'.'))
}

/// A model name as a file-name part: anything outside `[A-Za-z0-9.-]` becomes `-`.
fn file_safe(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if safe.is_empty() || safe.chars().all(|c| c == '.') {
        "model".to_owned()
    } else {
        safe
    }
}

fn pretty(value: &Value) -> Vec<u8> {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    text.push('\n');
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn pairs_rotate_together_with_their_launch_records() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = Archive::new(dir.path());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let first = archive
            .record_handshake(
                t0,
                &serde_json::json!({"n": 0}),
                &serde_json::json!({"ack": "ok"}),
            )
            .expect("archived");
        archive
            .record_launch(&first, "GLM-4.1V", &serde_json::json!({"ok": true}))
            .expect("launch archived");
        std::fs::write(archive.briefs_dir().join("notes.txt"), "operator notes").unwrap();
        // A file of the operator's with the pair's stamp is not razar's to remove.
        let notes = format!("{first}_operator-notes.json");
        std::fs::write(archive.briefs_dir().join(&notes), "{}").unwrap();
        for n in 1..=KEEP_PAIRS {
            archive
                .record_handshake(
                    t0 + Duration::from_secs(n as u64),
                    &serde_json::json!({"n": n}),
                    &serde_json::json!({"ack": "ok"}),
                )
                .expect("archived");
        }
        let pairs = archive.pairs();
        assert_eq!(pairs.len(), KEEP_PAIRS);
        assert!(!pairs.contains(&first));
        let names: Vec<String> = std::fs::read_dir(archive.briefs_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), KEEP_PAIRS * 2 + 2, "{names:?}");
        assert!(
            !names.iter().any(|n| n.starts_with(&first) && *n != notes),
            "{names:?}"
        );
        assert!(names.contains(&"notes.txt".to_owned()));
        assert!(names.contains(&notes), "{names:?}");
    }

    #[test]
    fn handshakes_in_the_same_microsecond_get_distinct_stamps() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = Archive::new(dir.path());
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = archive
            .record_handshake(t, &Value::Null, &Value::Null)
            .unwrap();
        let b = archive
            .record_handshake(t, &Value::Null, &Value::Null)
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(a, "2023-11-14T22-13-20.000000Z");
        assert_eq!(archive.pairs(), vec![a, b]);
    }

    #[test]
    fn the_interaction_log_appends_whole_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = Archive::new(dir.path());
        for action in ["handshake", "suggestions"] {
            archive
                .log(&Interaction {
                    timestamp: "2025-01-01T00:00:00Z".to_owned(),
                    initiator: "razar".to_owned(),
                    action: action.to_owned(),
                    response_summary: "ok".to_owned(),
                })
                .unwrap();
        }
        let entries = archive.interactions();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].action, "suggestions");
    }

    #[test]
    fn the_interaction_log_is_rotated_past_its_cap() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = Archive::new(dir.path());
        let log = archive.interaction_log();
        // A log at its cap: the next line starts a new one, the old one kept as `.1`.
        let full = "x".repeat(usize::try_from(INTERACTION_LOG_MAX_BYTES).unwrap());
        std::fs::write(&log, format!("{full}\n")).unwrap();
        archive
            .log(&Interaction {
                timestamp: "2025-01-01T00:00:00Z".to_owned(),
                initiator: "crown".to_owned(),
                action: "suggestions".to_owned(),
                response_summary: "1 suggestion(s)".to_owned(),
            })
            .unwrap();
        assert_eq!(archive.interactions().len(), 1);
        let rotated = dir.path().join(format!("{INTERACTION_LOG}.1"));
        assert_eq!(
            std::fs::metadata(rotated).unwrap().len(),
            INTERACTION_LOG_MAX_BYTES + 1
        );
    }

    #[test]
    fn launch_outcomes_are_archived_and_logged_once() {
        use crate::exec::{Event, EventKind, Sink};
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = Archive::new(dir.path());
        let stamp = archive
            .record_handshake(SystemTime::now(), &Value::Null, &Value::Null)
            .unwrap();
        let launch = |step: &str, model: &str| Launch {
            step: step.to_owned(),
            model: model.to_owned(),
            command: "bash launch.sh".to_owned(),
        };
        let mut recorder = LaunchRecorder::new(
            archive.clone(),
            stamp.clone(),
            vec![
                launch("crown-model.GLM4V", "GLM4V"),
                launch("crown-model.W", "W"),
            ],
        );
        let event = |kind| Event {
            at_ms: 1,
            time: "2025-10-04T09:15:02.183Z".to_owned(),
            kind,
        };
        recorder.emit(&event(EventKind::Completed {
            component: "crown-model.GLM4V".to_owned(),
            attempt: 1,
            after_ms: 1200,
        }));
        for _ in 0..2 {
            recorder.emit(&event(EventKind::AttemptFailed {
                component: "crown-model.W".to_owned(),
                attempt: 1,
                reason: "exit code 127".to_owned(),
                exit: None,
                log_tail: vec!["launch.sh: not found".to_owned()],
            }));
        }
        recorder.emit(&event(EventKind::Completed {
            component: "api".to_owned(),
            attempt: 1,
            after_ms: 5,
        }));
        assert_eq!(recorder.records().len(), 2);
        let file = archive
            .briefs_dir()
            .join(format!("{stamp}_GLM4V_launch.json"));
        let saved: LaunchRecord =
            serde_json::from_slice(&std::fs::read(file).expect("archived")).unwrap();
        assert_eq!(saved.outcome, "completed");
        assert_eq!(saved.after_ms, Some(1200));
        let log = archive.interactions();
        assert_eq!(log.len(), 2);
        assert_eq!(log[1].response_summary, "`W` launch failed: exit code 127");
        // The launch records rotate with their handshake pair.
        assert_eq!(archive.pairs(), vec![stamp]);
    }

    #[test]
    fn model_names_become_safe_file_names() {
        assert_eq!(file_safe("GLM-4.1V"), "GLM-4.1V");
        assert_eq!(file_safe("../x y"), "..-x-y");
        assert_eq!(file_safe(".."), "model");
        assert_eq!(file_safe("a_b"), "a-b");
    }
}
