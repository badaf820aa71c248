//! Reading state without writing it: what `razar status`, `plan`, `history` and `quarantine
//! list|show` see. Never creates the state directory or takes the apply lock.
//!
//! While an apply runs it holds the database (sled locks it), so readers take the same facts
//! from the `razar_state.json` it keeps current; otherwise they open the database, the source
//! of truth, for a moment. [`View::source`] says which one answered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::crown::LaunchRecord;
use super::db::{Db, HISTORY_STATS_COMPLETE, OpenError, Tree};
use super::files::{self, Existing};
use super::lock::{self, Holder, Role};
use super::{
    ComponentRecord, CrownRecord, DATABASE_FORMAT, ExploredOrder, HistoryStats, Paths,
    QuarantineRecord, RunRecord, StateError, SuggestionRecord,
};

/// How long a reader retries a busy database while no apply holds the state directory.
const READ_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// Everything persisted, as loaded from the database (or a snapshot).
#[derive(Debug, Clone, Default)]
pub(crate) struct Loaded {
    pub run: Option<RunRecord>,
    pub run_seq: Option<u64>,
    pub components: BTreeMap<String, ComponentRecord>,
    pub quarantine: BTreeMap<String, QuarantineRecord>,
    pub history: BTreeMap<String, HistoryStats>,
    pub crown: CrownRecord,
    pub launched_models: Vec<String>,
    /// Every model launch with its outcome, oldest first.
    pub model_launches: Vec<LaunchRecord>,
    /// The latest judged Crown suggestions, oldest first.
    pub suggestions: Vec<SuggestionRecord>,
    pub last_component: String,
    /// Best start orders found by `explore`, by [`ExploredOrder::key`] (database only: the
    /// snapshot an apply keeps current does not carry them).
    pub explored: BTreeMap<String, ExploredOrder>,
}

fn utf8(key: Vec<u8>) -> String {
    String::from_utf8_lossy(&key).into_owned()
}

/// Reads what the database holds. `recording`: for an apply, whose samples will need the
/// history heads (kept in memory by the database: read on a thread of their own while the
/// apply plans, or first, to fill in a statistics tree an earlier razar left incomplete).
pub(crate) fn load(db: &Db, recording: bool) -> Result<Loaded, StateError> {
    let run_seq = db.get::<u64>(Tree::Meta, b"run_seq")?;
    let run = match run_seq {
        Some(seq) => db.get::<RunRecord>(Tree::Runs, &seq.to_be_bytes())?,
        None => None,
    };
    // The history statistics are read on a second thread while this one reads the component
    // and quarantine records.
    let stats_kept = db
        .get::<bool>(Tree::Meta, HISTORY_STATS_COMPLETE)?
        .unwrap_or(false);
    let (components, quarantine, history) = std::thread::scope(|scope| {
        let history = scope.spawn(|| {
            if stats_kept {
                // An apply's samples need the heads, read meanwhile on a thread of their own.
                if recording {
                    db.keep_heads_in_background()?;
                }
                db.all::<HistoryStats>(Tree::HistoryStats)
            } else {
                db.all_history_stats(recording)
            }
        });
        let components = db.all::<ComponentRecord>(Tree::Components);
        let quarantine = db.all::<QuarantineRecord>(Tree::Quarantine);
        let history = history
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (components, quarantine, history)
    });
    let components = components?.into_iter().map(|(k, v)| (utf8(k), v)).collect();
    let quarantine = quarantine?.into_iter().map(|(k, v)| (utf8(k), v)).collect();
    let mut history: BTreeMap<String, HistoryStats> = history?
        .into_iter()
        .map(|(k, stats)| (utf8(k), stats))
        .collect();
    // Samples an interrupted apply journalled: an apply gives them to sled at open (which
    // derives their statistics); a reader, which never does, lays them over.
    if !recording {
        for (key, stats) in db.staged_ring_stats() {
            match stats {
                Some(stats) => history.insert(utf8(key), stats),
                None => history.remove(&utf8(key)),
            };
        }
    }
    Ok(Loaded {
        run,
        run_seq,
        components,
        quarantine,
        history,
        crown: db.get(Tree::Meta, b"crown")?.unwrap_or_default(),
        launched_models: db.get(Tree::Meta, b"launched_models")?.unwrap_or_default(),
        model_launches: db.get(Tree::Meta, b"model_launches")?.unwrap_or_default(),
        suggestions: db.get(Tree::Meta, b"suggestions")?.unwrap_or_default(),
        last_component: db.get(Tree::Meta, b"last_component")?.unwrap_or_default(),
        explored: db.get(Tree::Meta, b"explored")?.unwrap_or_default(),
    })
}

/// Which copy of the state answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Nothing recorded yet (no state directory, or an empty one).
    Empty,
    /// The database.
    Database,
    /// `razar_state.json`, written at `updated_at` (an apply holds the database).
    Snapshot { updated_at: String },
}

/// A read-only picture of a state directory.
#[derive(Debug, Clone)]
pub struct View {
    pub dir: PathBuf,
    pub source: Source,
    /// The live process holding the directory, if any: an apply, or a compaction (see its
    /// `role`).
    pub apply: Option<Holder>,
    pub run: Option<RunRecord>,
    pub components: BTreeMap<String, ComponentRecord>,
    pub quarantine: BTreeMap<String, QuarantineRecord>,
    pub history: BTreeMap<String, HistoryStats>,
    pub crown: CrownRecord,
    pub launched_models: Vec<String>,
    /// Every model launch with its outcome (the latest [`super::MODEL_LAUNCHES_KEPT`]), oldest first.
    pub model_launches: Vec<LaunchRecord>,
    /// The latest judged Crown suggestions (at most [`super::SUGGESTIONS_KEPT`]), oldest first.
    pub suggestions: Vec<SuggestionRecord>,
    pub last_component: String,
    /// Best start orders found by `explore`, by [`ExploredOrder::key`].
    pub explored: BTreeMap<String, ExploredOrder>,
    /// Why the database was not read although no apply holds it (the snapshot answered).
    pub unread_database: Option<String>,
}

impl View {
    pub(crate) fn from_loaded(
        dir: PathBuf,
        source: Source,
        apply: Option<Holder>,
        loaded: Loaded,
    ) -> View {
        View {
            dir,
            source,
            apply,
            run: loaded.run,
            components: loaded.components,
            quarantine: loaded.quarantine,
            history: loaded.history,
            crown: loaded.crown,
            launched_models: loaded.launched_models,
            model_launches: loaded.model_launches,
            suggestions: loaded.suggestions,
            last_component: loaded.last_component,
            explored: loaded.explored,
            unread_database: None,
        }
    }

    fn empty(dir: &Path, apply: Option<Holder>) -> View {
        View::from_loaded(dir.to_path_buf(), Source::Empty, apply, Loaded::default())
    }

    /// Components later plans leave out (`plan::Options.exclude`), with the reason.
    pub fn exclusions(&self) -> BTreeMap<String, String> {
        exclusions(&self.quarantine)
    }

    /// One line saying where this information came from.
    pub fn describe_source(&self) -> String {
        let dir = self.dir.display();
        match (&self.source, &self.apply) {
            (Source::Snapshot { updated_at }, Some(holder)) if holder.role != Role::Apply => {
                format!(
                    "state: {dir} (from razar_state.json written {updated_at}: {} (pid {}))",
                    holder.role.doing(),
                    holder.pid
                )
            }
            (Source::Empty, Some(holder)) if holder.role != Role::Apply => format!(
                "state: {dir} ({} (pid {}); nothing to read until it finishes)",
                holder.role.doing(),
                holder.pid
            ),
            (Source::Empty, Some(holder)) => format!(
                "state: {dir} (apply pid {} holds the database and razar_state.json is not there: the apply is starting, or the file was removed and is written again within seconds)",
                holder.pid
            ),
            (Source::Empty, None) => format!("state: {dir} (nothing recorded yet)"),
            (Source::Database, _) => format!("state: {dir} (from the database)"),
            (Source::Snapshot { updated_at }, Some(holder)) => format!(
                "state: {dir} (from razar_state.json written {updated_at}: apply pid {} holds the database)",
                holder.pid
            ),
            (Source::Snapshot { updated_at }, None) if self.unread_database.is_some() => format!(
                "state: {dir} (from razar_state.json written {updated_at}: {})",
                self.unread_database.as_deref().unwrap_or_default()
            ),
            (Source::Snapshot { updated_at }, None) if !Paths::new(&self.dir).db().exists() => {
                format!(
                    "state: {dir} (from razar_state.json written {updated_at}: there is no database at `{}`; the next `razar apply` starts a new one)",
                    Paths::new(&self.dir).db().display()
                )
            }
            (Source::Snapshot { updated_at }, None) => format!(
                "state: {dir} (from razar_state.json written {updated_at}: the database was busy)"
            ),
        }
    }
}

pub(crate) fn exclusions(
    quarantine: &BTreeMap<String, QuarantineRecord>,
) -> BTreeMap<String, String> {
    quarantine
        .iter()
        .map(|(name, record)| {
            (
                name.clone(),
                format!(
                    "quarantined since {} ({}: {}); release with `razar quarantine release {name}`",
                    files::log_timestamp(&record.quarantined_at),
                    record.class,
                    record.reason
                ),
            )
        })
        .collect()
}

/// Reads the state of `dir` without modifying it: from the database when no apply holds it,
/// else from `razar_state.json`. A missing directory reads as empty.
pub fn read(dir: &Path) -> Result<View, StateError> {
    let paths = Paths::new(dir);
    if !paths.dir_exists()? {
        return Ok(View::empty(dir, None));
    }
    let mut apply = lock::holder(dir);
    let mut unread = None;
    if apply.is_none() && paths.db().exists() {
        // Busy with no apply named: another reader has the database open, an apply is
        // starting, or a process forked an instant ago still holds an inherited descriptor.
        // All are brief: retry for a moment, and go to the snapshot once an apply is named.
        let deadline = std::time::Instant::now() + READ_PATIENCE;
        loop {
            match Db::open_to_read(&paths) {
                Ok(db) => {
                    if let Some(found) = db.get::<u64>(Tree::Meta, b"format")?
                        && found > DATABASE_FORMAT
                    {
                        return Err(StateError::Newer {
                            path: paths.db(),
                            found,
                            reads: DATABASE_FORMAT,
                        });
                    }
                    let loaded = load(&db, false)?;
                    return Ok(View::from_loaded(
                        dir.to_path_buf(),
                        Source::Database,
                        None,
                        loaded,
                    ));
                }
                // This user may not open the database (sled opens it for writing): the
                // snapshot, readable by more users, answers instead.
                Err(OpenError::Failed(StateError::NoPermission { detail, .. }))
                    if paths.state_json().exists() =>
                {
                    unread = Some(format!("this user may not open the database: {detail}"));
                    break;
                }
                Err(OpenError::Failed(err)) => return Err(err),
                Err(OpenError::Busy) => {
                    apply = lock::holder(dir);
                    if apply.is_some() || std::time::Instant::now() >= deadline {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
    }
    let state_json = paths.state_json();
    match files::read_snapshot::<files::Snapshot>(&state_json)? {
        Existing::Ours(snapshot) => {
            let snapshot = *snapshot;
            let loaded = Loaded {
                run: snapshot.run,
                run_seq: None,
                components: snapshot.components,
                quarantine: snapshot.quarantine,
                history: snapshot.history,
                crown: snapshot.handshake,
                launched_models: snapshot.launched_models,
                model_launches: snapshot.model_launches,
                suggestions: snapshot.suggestions,
                last_component: snapshot.last_component,
                explored: BTreeMap::new(),
            };
            let mut view = View::from_loaded(
                dir.to_path_buf(),
                Source::Snapshot {
                    updated_at: snapshot.updated_at,
                },
                apply,
                loaded,
            );
            view.unread_database = unread;
            Ok(view)
        }
        Existing::Missing | Existing::Foreign(_) => Ok(View::empty(dir, apply)),
        Existing::Unreadable(detail) => Err(StateError::Corrupt {
            path: state_json,
            detail: format!(
                "{detail}; {}",
                match apply {
                    Some(h) => format!(
                        "the apply running as pid {} rewrites it on its next event",
                        h.pid
                    ),
                    None => "the next `razar apply` moves it aside and rewrites it".to_owned(),
                }
            ),
        }),
    }
}
