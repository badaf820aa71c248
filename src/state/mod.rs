//! State: the only code that touches the sled database or writes razar's files in the state
//! directory (`razar_state.json`, `quarantine/`, `quarantine_log.md`, the apply lock).
//!
//! Writers go through [`Store`], which holds the apply lock for its whole life; its
//! [`Recorder`] is the executor's first [`Sink`](crate::exec::Sink) and checkpoints every
//! transition before returning. Readers go through [`read`], which never creates anything and
//! works while an apply runs (sled is then locked by the apply, so it reads the files the apply
//! keeps current). sled stays behind this module: no sled type appears in its interface.
//!
//! Layout of a state directory (see docs/state.md):
//!
//! ```text
//! <state_dir>/db/                 sled: runs, component checkpoints, history, quarantine, crown
//! <state_dir>/razar.lock          the apply lock (flock) and the pid holding it
//! <state_dir>/razar_state.json    snapshot, schemas/razar_state.schema.json
//! <state_dir>/quarantine/<name>.json, quarantine_log.md
//! <state_dir>/logs/<name>.log     component output (written by the executor)
//! <state_dir>/mission_briefs/     Crown handshakes and model launches; interaction_log.jsonl
//!                                 one line per Crown exchange (both written by `crown`)
//! ```

use std::path::{Path, PathBuf};

mod compact;
pub mod crown;
mod db;
mod files;
mod history;
mod lock;
mod proc;
mod record;
pub mod render;
mod store;
mod view;

pub use compact::{Compacted, compact};
pub use history::{
    HistoryStats, Outcome as SampleOutcome, Sample, command_hash, percentile, weights,
};
pub use lock::{Holder, Role, holder};
pub use proc::{process_alive, process_uptime, start_time};
pub use record::{
    BootSummary, ComponentRecord, CrownRecord, EventNote, ExploredOrder, Phase, ProbeResult,
    QuarantineRecord, RunRecord, Status, SuggestionRecord,
};
pub use store::{Recorder, Store};
pub use view::{Source, View, read};

/// Version of the documents razar writes in a state directory: the `razar_state.json`
/// snapshot and quarantine records.
pub const STATE_FORMAT: u32 = 1;

/// Version of the database's layout (its `meta` key `format`). 2: history samples stored under
/// numbers in commit order (`history_log`); a database of format 1 is marked 2 when a
/// [`Store`] opens it (the samples stored before are still read). A razar that reads up to an earlier
/// format refuses the database rather than misreading its history.
pub const DATABASE_FORMAT: u64 = 2;

/// Samples kept per component (a ring: the oldest is dropped).
pub const HISTORY_LIMIT: usize = 100;

/// Explored orders kept (the oldest found is dropped beyond this).
pub const EXPLORED_LIMIT: usize = 32;

/// Judged Crown suggestions kept (the oldest is dropped beyond this).
pub const SUGGESTIONS_KEPT: usize = 50;

/// Model launch outcomes kept (the oldest is dropped beyond this).
pub const MODEL_LAUNCHES_KEPT: usize = 20;

/// Log lines kept in a quarantine record.
pub const LOG_TAIL_LIMIT: usize = 50;

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another process holds the apply lock of this state directory.
    #[error("{}", locked_text(dir, *pid, *role))]
    Locked {
        dir: PathBuf,
        pid: Option<u32>,
        role: Role,
    },
    /// A file of the state directory (or the directory itself) cannot be read or written.
    #[error("cannot use `{}` (razar's state){}", path.display(), io_hint(source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The configured state directory is something else than a directory.
    #[error("the state directory `{}` is not a directory; move that file away, or set `state_dir` in the configuration to a directory", path.display())]
    NotADirectory { path: PathBuf },
    /// The database cannot be opened or written; razar left it as it was.
    #[error("state database `{}` cannot be used: {detail}; razar did not modify it (move it aside to start afresh: history and quarantine records would be lost)", path.display())]
    Database { path: PathBuf, detail: String },
    /// The database is there but this user may not open it (sled opens it for writing).
    #[error("razar may not open the state database `{}` ({detail}): run it as the user that owns the state directory, or set `state_dir` to one of yours", path.display())]
    NoPermission { path: PathBuf, detail: String },
    /// A record or file does not parse.
    #[error("`{}` is corrupted ({detail}); razar did not modify it", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("`{}` was written by a newer razar (format {found}, this razar reads up to {reads}); upgrade razar", path.display())]
    Newer {
        path: PathBuf,
        found: u64,
        reads: u64,
    },
    #[error("`{name}` is not quarantined{}", known_text(known))]
    NotQuarantined { name: String, known: Vec<String> },
    /// `razar compact` could not finish; the database is as it was.
    #[error("cannot compact `{}`: {detail}; the database was left as it was", path.display())]
    Compact { path: PathBuf, detail: String },
    /// A command that works on the database found none.
    #[error("there is no state database at `{}` (`razar apply` creates it)", path.display())]
    NoDatabase { path: PathBuf },
}

/// What to do about the I/O errors an operator can fix, after the path they name.
fn io_hint(err: &std::io::Error) -> &'static str {
    match err.kind() {
        std::io::ErrorKind::IsADirectory => {
            ": a directory is where razar keeps a file; move it away"
        }
        std::io::ErrorKind::NotADirectory => {
            ": a file is where razar keeps a directory; move it away"
        }
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            ": run razar as the user that owns the state directory, or set `state_dir` to one of yours"
        }
        _ => "",
    }
}

fn locked_text(dir: &Path, pid: Option<u32>, role: Role) -> String {
    let holder = match pid {
        Some(pid) => format!("pid {pid} holds the lock"),
        None => "a process whose pid could not be read holds the lock".to_owned(),
    };
    match role {
        Role::Apply => format!(
            "another razar apply is running on `{}` ({holder}); wait for it to finish or stop it with `razar down`",
            dir.display()
        ),
        Role::Compact => format!(
            "razar compact is rewriting the database of `{}` ({holder}); try again once it finishes",
            dir.display()
        ),
        Role::Release | Role::Down => format!(
            "{} of `{}` ({holder}); try again once it finishes",
            role.doing(),
            dir.display()
        ),
    }
}

fn known_text(known: &[String]) -> String {
    if known.is_empty() {
        " (nothing is quarantined)".to_owned()
    } else {
        format!(" (quarantined: {})", known.join(", "))
    }
}

impl StateError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        StateError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the command cannot run now because another apply holds the state directory,
    /// or was asked about something that does not exist: usage, exit code 2.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            StateError::Locked { .. }
                | StateError::NotQuarantined { .. }
                | StateError::NoDatabase { .. }
        )
    }
}

/// The files of one state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Paths { dir: dir.into() }
    }

    /// Whether the state directory exists; one that exists as something else than a
    /// directory is refused ([`StateError::NotADirectory`]).
    pub(crate) fn dir_exists(&self) -> Result<bool, StateError> {
        match std::fs::metadata(&self.dir) {
            Ok(meta) if meta.is_dir() => Ok(true),
            Ok(_) => Err(StateError::NotADirectory {
                path: self.dir.clone(),
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(StateError::io(&self.dir, err)),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.join("db")
    }

    pub fn lock(&self) -> PathBuf {
        self.dir.join("razar.lock")
    }

    pub fn state_json(&self) -> PathBuf {
        self.dir.join("razar_state.json")
    }

    pub fn quarantine_dir(&self) -> PathBuf {
        self.dir.join("quarantine")
    }

    pub fn quarantine_file(&self, name: &str) -> PathBuf {
        self.quarantine_dir().join(format!("{name}.json"))
    }

    pub fn quarantine_log(&self) -> PathBuf {
        self.dir.join("quarantine_log.md")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// `<state_dir>/logs/<name>.log`; the executor rotates it to `<name>.log.1`.
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.logs_dir().join(format!("{name}.log"))
    }

    pub fn rotated_log_file(&self, name: &str) -> PathBuf {
        self.logs_dir().join(format!("{name}.log.1"))
    }
}

/// Current wall-clock time, RFC 3339 UTC with milliseconds (as events carry it).
pub(crate) fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests;
