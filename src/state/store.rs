//! The writable store: the database plus the files mirroring it, held under the apply lock.
//!
//! [`Recorder`] turns each executor event into checkpoint updates, committed to the database
//! (journal first, see `db`) inside `emit`: before the executor proceeds, and so before the
//! reporter shows the event, every transition survives razar being killed. `razar_state.json`
//! is rewritten by a writer thread, coalesced to at most one rewrite per [`SNAPSHOT_INTERVAL`]
//! (more apart for large stacks), and once more when the store closes.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::crown::LaunchRecord;
use super::db::{Batch, Db, HISTORY_STATS_COMPLETE, Tree};
use super::files::{self, ApplyInfo, Existing, Snapshot, SnapshotEvents};
use super::history::{Outcome as SampleOutcome, Sample, SampleEntry};
use super::lock::{ApplyLock, Role};
use super::view::{self, Loaded};
use super::{
    BootSummary, ComponentRecord, CrownRecord, DATABASE_FORMAT, EXPLORED_LIMIT, EventNote,
    ExploredOrder, HistoryStats, LOG_TAIL_LIMIT, MODEL_LAUNCHES_KEPT, Paths, Phase, ProbeResult,
    QuarantineRecord, RunRecord, STATE_FORMAT, SUGGESTIONS_KEPT, StateError, Status,
    SuggestionRecord, View, now, proc,
};
use crate::classify;
use crate::config::Kind;
use crate::exec::{Event, EventKind, Prior, PriorStatus, Sink};
use crate::plan::Plan;
use crate::plan::suggest::Outcome as SuggestionOutcome;

/// Shortest time between two background rewrites of `razar_state.json` (longer when a
/// rewrite itself takes long, see `run_writer`).
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(250);

/// How often the writer, with nothing new to write, checks that `razar_state.json` is still
/// the file it wrote last (rewriting it if it was removed or replaced).
const SNAPSHOT_CHECK: Duration = Duration::from_secs(2);

/// Recent events kept in `razar_state.json`.
const EVENTS_KEPT: usize = 50;

/// Runs kept in the database.
const RUNS_KEPT: u64 = 200;

/// The state directory opened for writing. Holds the apply lock until dropped (together with
/// every [`Recorder`] made from it).
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

/// What the store knows, in memory, mirrored to the database as it changes and rendered into
/// `razar_state.json` by the writer.
struct Live {
    loaded: Loaded,
    events: VecDeque<EventNote>,
    /// Bumped on every change; the writer renders when it is ahead of `written`.
    changed: u64,
    written: u64,
    shutdown: bool,
    /// [`Store::close`] wrote the final snapshot.
    closed: bool,
    /// Which components and history statistics may differ from what the snapshot writer
    /// last rendered.
    dirty: Dirty,
}

/// Names whose component record or history statistics changed since the snapshot writer
/// last copied them, so a rewrite compares and copies only those instead of every entry.
/// Every change to `Loaded::components` or `Loaded::history` marks its name; `all` (set at
/// open) makes the writer compare everything.
#[derive(Default)]
struct Dirty {
    all: bool,
    components: BTreeSet<String>,
    history: BTreeSet<String>,
}

/// The rendered form of each component record and history statistic in the last snapshot,
/// with the value it was rendered from.
#[derive(Default)]
struct Fragments {
    components: BTreeMap<String, (ComponentRecord, Box<RawValue>)>,
    history: BTreeMap<String, (HistoryStats, Box<RawValue>)>,
    /// The last snapshot's text: its buffer is reused for the next one (a 2,000-component
    /// snapshot is ~1.7 MB, and a fresh buffer faults its pages in at every rewrite).
    text: Vec<u8>,
}

/// What changed since the last snapshot: new values, and names that are gone.
struct Changed {
    components: Entries<ComponentRecord>,
    history: Entries<HistoryStats>,
}

#[derive(PartialEq)]
struct Entries<T> {
    updated: Vec<(String, T)>,
    removed: Vec<String>,
}

/// The entries of `current` that `cache` lacks or holds a different value for.
fn changed_entries<T: Clone + PartialEq>(
    current: &BTreeMap<String, T>,
    cache: &BTreeMap<String, (T, Box<RawValue>)>,
) -> Entries<T> {
    let updated = current
        .iter()
        .filter(|(name, value)| cache.get(*name).is_none_or(|(cached, _)| cached != *value))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let removed = cache
        .keys()
        .filter(|name| !current.contains_key(*name))
        .cloned()
        .collect();
    Entries { updated, removed }
}

/// [`changed_entries`] looking only at `names` (every other entry unchanged since `cache`
/// was rendered): the same result for the cost of the few names a rewrite has to look at.
fn changed_among<T: Clone + PartialEq>(
    names: &BTreeSet<String>,
    current: &BTreeMap<String, T>,
    cache: &BTreeMap<String, (T, Box<RawValue>)>,
) -> Entries<T> {
    let mut entries = Entries {
        updated: Vec::new(),
        removed: Vec::new(),
    };
    for name in names {
        match (current.get(name), cache.get(name)) {
            (Some(value), Some((cached, _))) if value == cached => {}
            (Some(value), _) => entries.updated.push((name.clone(), value.clone())),
            (None, Some(_)) => entries.removed.push(name.clone()),
            (None, None) => {}
        }
    }
    entries
}

impl Fragments {
    fn update(&mut self, changed: Changed) {
        apply_entries(&mut self.components, changed.components);
        apply_entries(&mut self.history, changed.history);
    }
}

fn apply_entries<T: Serialize>(
    cache: &mut BTreeMap<String, (T, Box<RawValue>)>,
    entries: Entries<T>,
) {
    for name in entries.removed {
        cache.remove(&name);
    }
    for (name, value) in entries.updated {
        let raw = files::render_fragment(&value);
        cache.insert(name, (value, raw));
    }
}

struct Board {
    live: Mutex<Live>,
    wake: Condvar,
    /// Serialises snapshot writes so they land in generation order; holds the fragments of
    /// the last one.
    io: Mutex<Fragments>,
    paths: Paths,
    apply: ApplyInfo,
    /// The first error that kept state from being saved.
    failure: Mutex<Option<String>>,
    /// Device, inode and size of the last `razar_state.json` written (each write renames a
    /// new file into place). Locked alone, never while taking another lock.
    written_file: Mutex<Option<(u64, u64, u64)>>,
}

/// Device, inode and size of the file at `path`, if there is one.
fn file_identity(path: &Path) -> Option<(u64, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.len()))
}

struct Shared {
    board: Arc<Board>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The outcome of the first `razar_state.json` of this opening, which the writer thread
    /// writes as it starts (see [`Store::open_deferred`]); taken by [`Store::opened`].
    first_write: Mutex<Option<std::sync::mpsc::Receiver<Result<(), StateError>>>>,
    db: Db,
    // Dropped last: the lock outlives the database handle.
    _lock: ApplyLock,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind; keep going.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Board {
    fn fail(&self, err: &StateError) {
        let mut message = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        tracing::error!("state not saved: {message}");
        lock(&self.failure).get_or_insert(message);
    }

    /// Copies what the snapshot needs out of `live` (held locked by the caller, so kept
    /// short): everything but the components and history statistics the cache already has
    /// rendered as they are now; those are left empty here.
    fn snapshot_parts(
        &self,
        live: &mut Live,
        apply: Option<ApplyInfo>,
        cache: &Fragments,
    ) -> (Snapshot<(), ()>, Changed) {
        let dirty = std::mem::take(&mut live.dirty);
        let l = &live.loaded;
        let changed = if dirty.all {
            Changed {
                components: changed_entries(&l.components, &cache.components),
                history: changed_entries(&l.history, &cache.history),
            }
        } else {
            let changed = Changed {
                components: changed_among(&dirty.components, &l.components, &cache.components),
                history: changed_among(&dirty.history, &l.history, &cache.history),
            };
            // A change that did not mark its name would leave the snapshot stale: the tests
            // (debug builds) compare with the full comparison at every rewrite.
            debug_assert!(
                changed.components == changed_entries(&l.components, &cache.components)
                    && changed.history == changed_entries(&l.history, &cache.history),
                "a component record or history statistic changed without being marked dirty"
            );
            changed
        };
        let parts = Snapshot {
            version: STATE_FORMAT,
            generator: format!("razar {}", env!("CARGO_PKG_VERSION")),
            updated_at: now(),
            state_dir: self.paths.dir.clone(),
            apply,
            run: l.run.clone(),
            last_component: l.last_component.clone(),
            capabilities: l.crown.capabilities.clone(),
            downtime: l.crown.downtime.clone(),
            launched_models: l.launched_models.clone(),
            model_launches: l.model_launches.clone(),
            suggestions: l.suggestions.clone(),
            handshake: l.crown.clone(),
            components: (),
            quarantine: l.quarantine.clone(),
            history: (),
            events: live.events.iter().cloned().collect(),
        };
        (parts, changed)
    }

    /// Renders and writes the snapshot now, unless a newer one is already on disk. Only the
    /// components (and statistics) that changed since the last rewrite are rendered again,
    /// and the state is locked only while they are copied, never while rendering.
    fn write_snapshot(&self, apply: Option<ApplyInfo>) -> Result<(), StateError> {
        let mut cache = lock(&self.io);
        let (parts, changed, generation) = {
            let mut live = lock(&self.live);
            if live.written >= live.changed {
                return Ok(());
            }
            let (parts, changed) = self.snapshot_parts(&mut live, apply, &cache);
            (parts, changed, live.changed)
        };
        cache.update(changed);
        let mut text = std::mem::take(&mut cache.text);
        files::render_snapshot(
            &parts.with_entries(
                files::Rendered(&cache.components),
                files::Rendered(&cache.history),
            ),
            &mut text,
        );
        let result = files::write_snapshot_file(&self.paths.state_json(), &text);
        if result.is_ok() {
            *lock(&self.written_file) = file_identity(&self.paths.state_json());
        }
        cache.text = text;
        let mut live = lock(&self.live);
        live.written = live.written.max(generation);
        result
    }

    /// Whether `razar_state.json` is no longer the file this store wrote last.
    fn snapshot_replaced(&self) -> bool {
        let last = *lock(&self.written_file);
        last.is_some() && file_identity(&self.paths.state_json()) != last
    }

    /// The writer thread: writes the snapshot at once (its outcome sent to `first`), then
    /// rewrites it when something changed, at most once per [`SNAPSHOT_INTERVAL`], until shut
    /// down.
    fn run_writer(self: Arc<Self>, first: std::sync::mpsc::Sender<Result<(), StateError>>) {
        let mut first = Some(first);
        loop {
            // The first snapshot is written at once; later ones wait for a change.
            if first.is_none() {
                let mut live = lock(&self.live);
                while live.changed <= live.written && !live.shutdown {
                    let (guard, waited) = self
                        .wake
                        .wait_timeout(live, SNAPSHOT_CHECK)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    live = guard;
                    // Removed or replaced behind razar's back (readers would take a missing
                    // file for an apply with nothing recorded): write it again.
                    if waited.timed_out() && self.snapshot_replaced() {
                        live.changed += 1;
                    }
                }
                if live.shutdown {
                    return;
                }
            }
            let began = std::time::Instant::now();
            let written = self.write_snapshot(Some(self.apply));
            match first.take() {
                Some(first) => {
                    let _ = first.send(written);
                }
                None => {
                    if let Err(err) = written {
                        self.fail(&err);
                    }
                }
            }
            // A large stack's snapshot takes a while to render and write: keep the writer
            // under about a fifth of one core.
            let pause = SNAPSHOT_INTERVAL.max(began.elapsed() * 4);
            let live = lock(&self.live);
            if live.shutdown {
                return;
            }
            let _ = self.wake.wait_timeout_while(live, pause, |l| !l.shutdown);
        }
    }
}

impl Shared {
    /// Stops the snapshot writer thread and waits for it.
    fn stop_writer(&self) {
        lock(&self.board.live).shutdown = true;
        self.board.wake.notify_all();
        if let Some(writer) = lock(&self.writer).take() {
            let _ = writer.join();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop_writer();
        {
            let mut live = lock(&self.board.live);
            if !live.closed {
                live.changed += 1;
            }
        }
        // The final snapshot says no apply holds the directory any more (written already
        // when the store was closed and nothing changed since).
        if let Err(err) = self.board.write_snapshot(None) {
            self.board.fail(&err);
        }
        if let Err(err) = self.db.checkpoint() {
            self.board.fail(&err);
        }
    }
}

/// Opens the database (refusing one from a newer razar, marking a new or older one with this
/// razar's format, see [`DATABASE_FORMAT`]) and loads what it holds.
pub(super) fn open_database(paths: &Paths) -> Result<(Db, Loaded), StateError> {
    let db = Db::open_patiently(paths)?;
    match db.get::<u64>(Tree::Meta, b"format")? {
        Some(found) if found > DATABASE_FORMAT => {
            return Err(StateError::Newer {
                path: paths.db(),
                found,
                reads: DATABASE_FORMAT,
            });
        }
        Some(DATABASE_FORMAT) => {}
        _ => {
            let mut batch = Batch::default();
            batch.put(Tree::Meta, b"format", &DATABASE_FORMAT);
            db.commit(batch)?;
        }
    }
    let loaded = view::load(&db, true)?;
    // A database from before the `history_stats` tree: fill it from the rings just read, so
    // the next opening reads only the statistics.
    if db.get::<bool>(Tree::Meta, HISTORY_STATS_COMPLETE)? != Some(true) {
        let mut batch = Batch::default();
        for (name, stats) in &loaded.history {
            batch.put(Tree::HistoryStats, name.as_bytes(), stats);
        }
        batch.put(Tree::Meta, HISTORY_STATS_COMPLETE, &true);
        db.commit(batch)?;
    }
    Ok((db, loaded))
}

impl Store {
    /// Opens the state directory for writing: creates it, the database and the files on first
    /// use; takes the apply lock (refused with [`StateError::Locked`] naming the holder's pid);
    /// repairs files that went missing or bad from the database (a damaged `razar_state.json`
    /// is moved aside, not deleted).
    pub fn open(state_dir: &Path) -> Result<Store, StateError> {
        Store::open_as(state_dir, Role::Apply)
    }

    /// [`Store::open`], except that the first `razar_state.json` is rendered and written by
    /// the writer thread while the caller goes on (an apply plans meanwhile; ~10 ms for 2,000
    /// components). [`Store::opened`] returns its outcome; [`Store::close`] reports it too if
    /// nobody asked.
    pub fn open_deferred(state_dir: &Path) -> Result<Store, StateError> {
        Self::open_deferred_as(state_dir, Role::Apply)
    }

    /// [`Store::open`] for a command other than an apply (`quarantine release`, `razar
    /// down`), named so in the lock file: others wait for it instead of taking it for an
    /// apply to signal.
    pub fn open_as(state_dir: &Path, role: Role) -> Result<Store, StateError> {
        let store = Store::open_deferred_as(state_dir, role)?;
        store.opened()?;
        Ok(store)
    }

    fn open_deferred_as(state_dir: &Path, role: Role) -> Result<Store, StateError> {
        let paths = Paths::new(state_dir);
        paths.dir_exists()?;
        std::fs::create_dir_all(&paths.dir).map_err(|e| StateError::io(&paths.dir, e))?;
        let apply_lock = ApplyLock::acquire(&paths, role)?;
        let db_was_there = paths.db().exists();
        // The old snapshot is read on a second thread while this one opens the database.
        let state_json = paths.state_json();
        let (opened, existing) = std::thread::scope(|scope| {
            let existing = scope.spawn(|| files::read_snapshot::<SnapshotEvents>(&state_json));
            let opened = open_database(&paths);
            let existing = existing
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (opened, existing)
        });
        let (db, mut loaded) = opened?;
        let mut events = VecDeque::new();
        let mut notes = Vec::new();

        // razar_state.json: carry over what it holds that the database does not (ABZU's keys,
        // recent events); keep anything unreadable or foreign next to it.
        match existing? {
            Existing::Missing => {}
            Existing::Ours(snapshot) => {
                if !db_was_there {
                    tracing::warn!(
                        "there was no state database at `{}` (razar_state.json, written by a razar that had one, is there): started a new one; history and run records start over, quarantine records are read again from quarantine/",
                        paths.db().display()
                    );
                    notes.push("the state database was missing: a new one was started".to_owned());
                }
                events.extend(snapshot.events);
            }
            Existing::Unreadable(detail) => {
                let moved = files::move_aside(&state_json, "corrupt")?;
                tracing::warn!(
                    "`{}` was unreadable ({detail}); moved to `{}` and rewritten from the database",
                    state_json.display(),
                    moved.display()
                );
                notes.push(format!(
                    "unreadable razar_state.json ({detail}) moved to {}",
                    moved.display()
                ));
            }
            Existing::Foreign(map) => {
                let moved = files::move_aside(&state_json, "abzu")?;
                let mut batch = Batch::default();
                import_abzu(&mut batch, &mut loaded, &map);
                db.commit(batch)?;
                notes.push(format!(
                    "ABZU razar_state.json imported; original kept as {}",
                    moved.display()
                ));
            }
        }

        // quarantine/: the database is the truth; recreate missing files, and import records
        // whose file exists but the database lacks (e.g. after the database was moved aside).
        let (on_disk, foreign) = files::read_quarantine_dir(&paths)?;
        for (path, why) in foreign {
            tracing::warn!(
                "`{}` is not a razar quarantine record ({why}); left as is",
                path.display()
            );
        }
        let mut batch = Batch::default();
        for record in on_disk {
            if !loaded.quarantine.contains_key(&record.component) {
                batch.put(Tree::Quarantine, record.component.as_bytes(), &record);
                notes.push(format!(
                    "quarantine record of `{}` imported from its file",
                    record.component
                ));
                loaded
                    .quarantine
                    .insert(record.component.clone(), record.clone());
            }
        }
        db.commit(batch)?;
        for record in loaded.quarantine.values() {
            if !paths.quarantine_file(&record.component).exists() {
                files::write_quarantine(&paths, record)?;
            }
        }
        db.checkpoint()?;

        let at = now();
        for detail in notes {
            events.push_back(EventNote {
                event: "state_repaired".to_owned(),
                timestamp: at.clone(),
                component: None,
                model: None,
                detail: Some(detail),
            });
        }
        while events.len() > EVENTS_KEPT {
            events.pop_front();
        }
        let me = std::process::id();
        let board = Arc::new(Board {
            live: Mutex::new(Live {
                loaded,
                events,
                changed: 1,
                written: 0,
                shutdown: false,
                closed: false,
                dirty: Dirty {
                    all: true,
                    ..Dirty::default()
                },
            }),
            wake: Condvar::new(),
            io: Mutex::new(Fragments::default()),
            paths,
            apply: ApplyInfo {
                pid: me,
                start_time: proc::start_time(me),
            },
            failure: Mutex::new(None),
            written_file: Mutex::new(None),
        });
        let (first, first_write) = std::sync::mpsc::channel();
        let writer = {
            let board = Arc::clone(&board);
            std::thread::Builder::new()
                .name("razar-state".to_owned())
                .spawn(move || board.run_writer(first))
                .map_err(|e| StateError::io(&state_json, e))?
        };
        Ok(Store {
            shared: Arc::new(Shared {
                board,
                writer: Mutex::new(Some(writer)),
                first_write: Mutex::new(Some(first_write)),
                db,
                _lock: apply_lock,
            }),
        })
    }

    pub fn paths(&self) -> &Paths {
        &self.shared.board.paths
    }

    /// Everything the store knows, as read-only commands see it.
    pub fn view(&self) -> View {
        let live = lock(&self.shared.board.live);
        View::from_loaded(
            self.paths().dir.clone(),
            super::Source::Database,
            Some(super::Holder {
                pid: self.shared.board.apply.pid,
                start_time: self.shared.board.apply.start_time,
                role: Role::Apply,
            }),
            live.loaded.clone(),
        )
    }

    /// What the latest run left for each component, for `apply --resume`: tasks that
    /// completed in it, and every process that may still run (from any run: a pid is never
    /// forgotten until an event says its process is gone).
    pub fn priors(&self) -> BTreeMap<String, Prior> {
        let live = lock(&self.shared.board.live);
        let run_id = live.loaded.run.as_ref().map(|r| r.id.as_str());
        live.loaded
            .components
            .iter()
            .map(|(name, rec)| {
                let completed = rec.status == Status::Completed
                    && rec.kind != Some(Kind::Service)
                    && rec.run_id.as_deref() == run_id;
                let latest = rec.run_id.as_deref() == run_id;
                let status = if completed {
                    PriorStatus::Completed
                } else if rec.pid.is_some() {
                    PriorStatus::Running
                } else if latest
                    && rec.attempts > 0
                    && matches!(
                        rec.status,
                        Status::Failed | Status::Restarting | Status::Waiting
                    )
                {
                    // Failed in the latest run, or in the run it resumed (a resume's start
                    // sets it waiting and keeps its attempts; a fresh run's resets them).
                    PriorStatus::Failing
                } else {
                    PriorStatus::Other
                };
                (
                    name.clone(),
                    Prior {
                        status,
                        pid: rec.pid,
                        pgid: rec.pgid,
                        start_time: rec.start_time,
                        attempts: rec.attempts,
                    },
                )
            })
            .collect()
    }

    /// Per component: samples, p50/p90, failure rate, last seen (latest command only).
    pub fn history(&self) -> BTreeMap<String, HistoryStats> {
        lock(&self.shared.board.live).loaded.history.clone()
    }

    pub fn quarantine(&self) -> BTreeMap<String, QuarantineRecord> {
        lock(&self.shared.board.live).loaded.quarantine.clone()
    }

    /// Components later plans must leave out, with the reason (`plan::Options.exclude`).
    pub fn exclusions(&self) -> BTreeMap<String, String> {
        view::exclusions(&lock(&self.shared.board.live).loaded.quarantine)
    }

    /// Releases a quarantined component: removes its record and file and appends a
    /// `resolved` row to the log.
    pub fn release(&self, name: &str, note: Option<&str>) -> Result<QuarantineRecord, StateError> {
        let board = &self.shared.board;
        let db = &self.shared.db;
        let mut live = lock(&board.live);
        let Some(record) = live.loaded.quarantine.get(name).cloned() else {
            return Err(StateError::NotQuarantined {
                name: name.to_owned(),
                known: live.loaded.quarantine.keys().cloned().collect(),
            });
        };
        let at = now();
        // The files first, so a release that fails has changed nothing the next run would
        // undo: the log must take a row, and the record file must go (a file left behind would
        // bring the quarantine back at the next apply). A failure after the file is gone
        // leaves the database's record, which rewrites the file at the next apply.
        files::check_log_writable(&board.paths)?;
        files::remove_quarantine(&board.paths, name)?;
        let mut batch = Batch::default();
        batch.remove(Tree::Quarantine, name.as_bytes());
        let mut component = live.loaded.components.get(name).cloned();
        if let Some(rec) = component.as_mut() {
            rec.status = Status::Waiting;
            // A fresh restart budget: a resume must not count the attempts that quarantined it.
            rec.attempts = 0;
            rec.reason = Some(format!("released from quarantine at {at}"));
            rec.updated_at = at.clone();
            batch.put(Tree::Components, name.as_bytes(), rec);
        }
        db.commit(batch)?;
        if let Some(rec) = component {
            live.loaded.components.insert(name.to_owned(), rec);
            live.dirty.components.insert(name.to_owned());
        }
        live.loaded.quarantine.remove(name);
        let details = match note {
            Some(note) if !note.trim().is_empty() => format!("released: {note}"),
            _ => "released by the operator".to_owned(),
        };
        files::append_log_row(
            &board.paths,
            &files::log_timestamp(&at),
            name,
            "resolved",
            &details,
        )?;
        push_note(&mut live, "released", &at, Some(name), Some(details));
        live.changed += 1;
        drop(live);
        board.write_snapshot(Some(board.apply))?;
        Ok(record)
    }

    /// Records a Crown handshake: ABZU's `handshake`, `capabilities` and `downtime` keys of
    /// `razar_state.json`. `handshake` is the Crown link's record of the exchange (see
    /// [`CrownRecord::from_value`]).
    pub fn record_handshake(&self, handshake: &serde_json::Value) -> Result<(), StateError> {
        let crown = CrownRecord::from_value(handshake);
        let mut live = lock(&self.shared.board.live);
        let at = crown
            .extra
            .get("at")
            .and_then(|a| a.as_str())
            .map_or_else(now, str::to_owned);
        let mut batch = Batch::default();
        batch.put(Tree::Meta, b"crown", &crown);
        self.shared.db.commit(batch)?;
        let detail = match crown.extra.get("outcome").and_then(|o| o.as_str()) {
            Some(outcome) if outcome != "ok" => outcome.to_owned(),
            _ => format!("ack `{}`", crown.acknowledgement),
        };
        live.loaded.crown = crown;
        push_note(&mut live, "handshake", &at, None, Some(detail));
        self.bump(live);
        Ok(())
    }

    /// Best start orders found by `explore`, by [`ExploredOrder::key`].
    pub fn explored(&self) -> BTreeMap<String, ExploredOrder> {
        lock(&self.shared.board.live).loaded.explored.clone()
    }

    /// Stores the best start order found for a configuration (replacing the one stored under
    /// the same key), keeping at most [`EXPLORED_LIMIT`] configurations.
    pub fn record_explored(&self, order: ExploredOrder) -> Result<(), StateError> {
        let mut live = lock(&self.shared.board.live);
        let mut all = live.loaded.explored.clone();
        all.insert(
            ExploredOrder::key(&order.config_hash, order.parallelism, &order.targets),
            order,
        );
        while all.len() > EXPLORED_LIMIT {
            let oldest = all
                .iter()
                .min_by(|a, b| a.1.found_at.cmp(&b.1.found_at))
                .map(|(key, _)| key.clone())
                .expect("more than the limit means not empty");
            all.remove(&oldest);
        }
        let mut batch = Batch::default();
        batch.put(Tree::Meta, b"explored", &all);
        self.shared.db.commit(batch)?;
        live.loaded.explored = all;
        self.bump(live);
        Ok(())
    }

    /// Records a model launch with its outcome (a `model_launch` event, and the record kept
    /// under `model_launches`); a completed one also joins ABZU's `launched_models`.
    pub fn record_model_launch(&self, launch: &LaunchRecord) -> Result<(), StateError> {
        let mut live = lock(&self.shared.board.live);
        let mut launches = live.loaded.model_launches.clone();
        launches.push(launch.clone());
        let excess = launches.len().saturating_sub(MODEL_LAUNCHES_KEPT);
        launches.drain(..excess);
        let mut models = live.loaded.launched_models.clone();
        if launch.outcome == "completed" && !models.contains(&launch.model) {
            models.push(launch.model.clone());
        }
        let mut batch = Batch::default();
        batch.put(Tree::Meta, b"model_launches", &launches);
        batch.put(Tree::Meta, b"launched_models", &models);
        self.shared.db.commit(batch)?;
        live.loaded.model_launches = launches;
        live.loaded.launched_models = models;
        push_note(
            &mut live,
            "model_launch",
            &launch.at,
            None,
            Some(launch.summary()),
        );
        if let Some(note) = live.events.back_mut() {
            note.model = Some(launch.model.clone());
        }
        self.bump(live);
        Ok(())
    }

    /// Records judged Crown suggestions with their provenance and verdict, keeping the latest
    /// [`SUGGESTIONS_KEPT`]; each also becomes a `suggestion` event.
    pub fn record_suggestions(&self, outcomes: &[SuggestionOutcome]) -> Result<(), StateError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let at = now();
        let mut live = lock(&self.shared.board.live);
        let mut kept = live.loaded.suggestions.clone();
        kept.extend(outcomes.iter().map(|outcome| SuggestionRecord {
            recorded_at: at.clone(),
            outcome: outcome.clone(),
        }));
        let excess = kept.len().saturating_sub(SUGGESTIONS_KEPT);
        kept.drain(..excess);
        let mut batch = Batch::default();
        batch.put(Tree::Meta, b"suggestions", &kept);
        self.shared.db.commit(batch)?;
        live.loaded.suggestions = kept;
        for outcome in outcomes {
            let verdict = if outcome.applied {
                "applied"
            } else {
                "rejected"
            };
            push_note(
                &mut live,
                "suggestion",
                &at,
                outcome.suggestion.component.as_deref(),
                Some(format!(
                    "{verdict}: {} — {} ({})",
                    outcome.suggestion.label(),
                    outcome.effect,
                    outcome.source
                )),
            );
        }
        self.bump(live);
        Ok(())
    }

    fn bump(&self, mut live: MutexGuard<'_, Live>) {
        live.changed += 1;
        drop(live);
        self.shared.board.wake.notify_all();
    }

    /// The first error that kept state from being saved, if any (the sink cannot return
    /// errors: `apply` checks this after the run and fails if state was lost).
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.board.failure).clone()
    }

    /// Ends the apply's hold on the state: stops the snapshot writer, checkpoints the
    /// database and writes the final `razar_state.json` (no apply holding it), reporting what
    /// fails. Dropping the store does the same, logging failures instead; after `close` it has
    /// nothing left to do.
    pub fn close(&self) -> Result<(), StateError> {
        let first = self.opened();
        self.shared.stop_writer();
        let board = &self.shared.board;
        {
            let mut live = lock(&board.live);
            live.changed += 1;
            live.closed = true;
        }
        // The database's checkpoint (sled's batch and flush) and the final snapshot's render
        // touch nothing in common: both at once.
        let (checkpoint, snapshot) = std::thread::scope(|scope| {
            let checkpoint = scope.spawn(|| self.shared.db.checkpoint());
            let snapshot = board.write_snapshot(None);
            let checkpoint = checkpoint
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (checkpoint, snapshot)
        });
        first.and(checkpoint).and(snapshot)
    }

    /// [`Store::close`] for a process that exits right after (`razar apply`): once the close
    /// succeeded, sled has every write and has flushed it, so its in-memory cache is left
    /// for the kernel to reclaim instead of being freed piece by piece (see
    /// `Db::keep_until_exit`). The apply lock is still released when the store is dropped.
    /// The database stays locked until the process exits: do not open it again in-process.
    pub fn close_for_exit(&self) -> Result<(), StateError> {
        self.close()?;
        self.shared.db.keep_until_exit();
        Ok(())
    }

    /// Waits for the first `razar_state.json` of this opening (see [`Store::open_deferred`])
    /// and returns whether it could be written; later calls return `Ok`.
    pub fn opened(&self) -> Result<(), StateError> {
        let Some(first) = lock(&self.shared.first_write).take() else {
            return Ok(());
        };
        first.recv().unwrap_or_else(|_| {
            Err(StateError::io(
                &self.paths().state_json(),
                std::io::Error::other("the snapshot writer stopped before writing it"),
            ))
        })
    }

    /// Makes everything durable and rewrites `razar_state.json` now.
    pub fn sync(&self) -> Result<(), StateError> {
        self.shared.db.checkpoint()?;
        lock(&self.shared.board.live).changed += 1;
        self.shared
            .board
            .write_snapshot(Some(self.shared.board.apply))
    }

    /// The sink that checkpoints a run of `plan`. Put it first in the executor's fan-out.
    pub fn recorder(&self, plan: &Plan) -> Recorder {
        let steps = plan
            .steps
            .iter()
            .map(|step| {
                (
                    step.name.clone(),
                    StepInfo {
                        kind: step.kind,
                        command_hash: step
                            .command
                            .as_ref()
                            .map(|c| super::command_hash(step.kind, c)),
                        command: step.command.as_ref().map(|c| c.display()),
                    },
                )
            })
            .collect();
        Recorder {
            shared: Arc::clone(&self.shared),
            steps,
            spawned_at_ms: HashMap::new(),
            sampled: Vec::new(),
            on_failure: None,
        }
    }
}

/// Carries ABZU's keys over from its `razar_state.json` when the database has none yet.
fn import_abzu(
    batch: &mut Batch,
    loaded: &mut Loaded,
    map: &serde_json::Map<String, serde_json::Value>,
) {
    if loaded.crown == CrownRecord::default() {
        let mut crown = CrownRecord::default();
        if let Some(ack) = map
            .get("handshake")
            .and_then(|h| h.get("acknowledgement"))
            .and_then(|a| a.as_str())
        {
            crown.acknowledgement = ack.to_owned();
        }
        if let Some(caps) = map.get("capabilities").and_then(|c| c.as_array()) {
            crown.capabilities = caps
                .iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect();
        }
        if let Some(downtime) = map.get("downtime").and_then(|d| d.as_object()) {
            crown.downtime = downtime.clone();
        }
        batch.put(Tree::Meta, b"crown", &crown);
        loaded.crown = crown;
    }
    if loaded.launched_models.is_empty()
        && let Some(models) = map.get("launched_models").and_then(|m| m.as_array())
    {
        loaded.launched_models = models
            .iter()
            .filter_map(|m| m.as_str().map(str::to_owned))
            .collect();
        batch.put(Tree::Meta, b"launched_models", &loaded.launched_models);
    }
    if loaded.last_component.is_empty()
        && let Some(last) = map.get("last_component").and_then(|l| l.as_str())
    {
        loaded.last_component = last.to_owned();
        batch.put(Tree::Meta, b"last_component", &loaded.last_component);
    }
}

fn push_note(
    live: &mut Live,
    event: &str,
    at: &str,
    component: Option<&str>,
    detail: Option<String>,
) {
    live.events.push_back(EventNote {
        event: event.to_owned(),
        timestamp: at.to_owned(),
        component: component.map(str::to_owned),
        model: None,
        detail,
    });
    while live.events.len() > EVENTS_KEPT {
        live.events.pop_front();
    }
}

/// What the recorder needs to know of a plan step.
struct StepInfo {
    kind: Kind,
    command_hash: Option<String>,
    command: Option<String>,
}

/// Called with the error when a checkpoint cannot be saved.
type FailureHook = Box<dyn FnMut(&str) + Send>;

/// The executor's checkpointing sink (see the module docs for the durability rules).
pub struct Recorder {
    shared: Arc<Shared>,
    steps: HashMap<String, StepInfo>,
    /// `at_ms` of each component's latest spawn in this run, for failure durations.
    spawned_at_ms: HashMap<String, u64>,
    /// Components given a history sample by the event being recorded: their statistics are
    /// refreshed from the head the database staged, once the event is committed.
    sampled: Vec<String>,
    on_failure: Option<FailureHook>,
}

impl Recorder {
    /// Cancels `token` when a checkpoint cannot be saved (see [`Recorder::on_failure`]).
    pub fn cancel_on_failure(self, token: CancellationToken) -> Self {
        self.on_failure(move |_| token.cancel())
    }

    /// Calls `hook` with the error, once, when a checkpoint cannot be saved: continuing a
    /// boot whose state is lost would break `--resume`'s promise that nothing runs twice, so
    /// `apply` should stop the run (e.g. `move |_| shutdown.request(CancelReason::Signal)`).
    pub fn on_failure(mut self, hook: impl FnMut(&str) + Send + 'static) -> Self {
        self.on_failure = Some(Box::new(hook));
        self
    }

    fn record(&mut self, event: &Event) -> Result<(), StateError> {
        let shared = Arc::clone(&self.shared);
        let db = &shared.db;
        let board = &shared.board;
        let mut live = lock(&board.live);
        let at = event.time.as_str();
        let mut touched: Vec<String> = Vec::new();
        let mut batch = Batch::default();
        let mut quarantined: Option<QuarantineRecord> = None;

        match &event.kind {
            EventKind::RunStarted {
                run_id,
                config_hash,
                strategy,
                parallelism,
                steps,
                resumed,
            } => {
                let seq = db.get::<u64>(Tree::Meta, b"run_seq")?.unwrap_or(0) + 1;
                let run = RunRecord {
                    id: run_id.clone(),
                    config_hash: config_hash.clone(),
                    strategy: strategy.clone(),
                    parallelism: *parallelism,
                    steps: *steps,
                    resumed: *resumed,
                    pid: board.apply.pid,
                    started_at: at.to_owned(),
                    phase: Phase::Booting,
                    boot: None,
                    finished_at: None,
                    outcome: None,
                    elapsed_ms: None,
                };
                batch.put(Tree::Meta, b"run_seq", &seq);
                if seq > RUNS_KEPT {
                    batch.remove(Tree::Runs, &(seq - RUNS_KEPT).to_be_bytes());
                }
                live.loaded.run = Some(run);
                live.loaded.run_seq = Some(seq);
                for (name, step) in &self.steps {
                    let rec = live
                        .loaded
                        .components
                        .entry(name.clone())
                        .or_insert_with(|| {
                            ComponentRecord::new(Some(step.kind), step.command_hash.clone(), at)
                        });
                    rec.kind = Some(step.kind);
                    rec.command_hash = step.command_hash.clone();
                    rec.run_id = Some(run_id.clone());
                    rec.updated_at = at.to_owned();
                    // A recorded process that is gone (the machine rebooted, someone killed
                    // it) holds nothing any more.
                    let holds_process = rec
                        .pid
                        .is_some_and(|pid| proc::process_alive(pid, rec.start_time));
                    if !holds_process {
                        rec.pid = None;
                        rec.pgid = None;
                        rec.start_time = None;
                    }
                    if *resumed {
                        // Completed tasks stay completed (the executor skips them); processes
                        // that may still run keep their pid until adopted or replaced.
                        if !holds_process
                            && !matches!(rec.status, Status::Completed | Status::Quarantined)
                        {
                            rec.status = Status::Waiting;
                            rec.reason = None;
                            rec.next_attempt_at = None;
                        }
                    } else {
                        rec.spawns = 0;
                        rec.restarts = 0;
                        rec.adopted = false;
                        if !holds_process {
                            let kind = rec.kind;
                            let hash = rec.command_hash.clone();
                            let run = rec.run_id.clone();
                            *rec = ComponentRecord::new(kind, hash, at);
                            rec.run_id = run;
                        }
                    }
                    touched.push(name.clone());
                }
                self.spawned_at_ms.clear();
            }
            EventKind::Adopted {
                component,
                pid,
                pgid,
            } => {
                let kind = self.kind_of(component);
                let rec = self.component(&mut live, component, at);
                if rec.pid != Some(*pid) {
                    rec.start_time = proc::start_time(*pid);
                }
                rec.pid = Some(*pid);
                rec.pgid = Some(*pgid);
                rec.status = if kind == Some(Kind::Task) {
                    Status::Starting
                } else {
                    Status::Ready
                };
                rec.adopted = true;
                rec.spawns = rec.spawns.max(1);
                rec.reason = None;
                touched.push(component.clone());
            }
            EventKind::Skipped { component, reason } => {
                let rec = self.component(&mut live, component, at);
                if !matches!(rec.status, Status::Completed | Status::Quarantined) {
                    rec.status = Status::Skipped;
                }
                rec.reason = Some(reason.clone());
                touched.push(component.clone());
            }
            EventKind::Blocked { component, reason } => {
                let rec = self.component(&mut live, component, at);
                if rec.status != Status::Quarantined {
                    rec.status = Status::Blocked;
                }
                rec.reason = Some(reason.clone());
                touched.push(component.clone());
            }
            EventKind::Spawned {
                component,
                attempt,
                pid,
                pgid,
                start_time,
            } => {
                let rec = self.component(&mut live, component, at);
                if rec.spawns > 0 {
                    rec.restarts += 1;
                }
                rec.spawns += 1;
                rec.status = Status::Starting;
                rec.attempts = *attempt;
                rec.pid = Some(*pid);
                rec.pgid = Some(*pgid);
                rec.start_time = Some(*start_time);
                rec.adopted = false;
                rec.spawned_at = Some(at.to_owned());
                rec.ready_at = None;
                rec.completed_at = None;
                rec.next_attempt_at = None;
                rec.last_exit = None;
                rec.reason = None;
                self.spawned_at_ms.insert(component.clone(), event.at_ms);
                touched.push(component.clone());
            }
            EventKind::Ready {
                component,
                attempt,
                after_ms,
            } => {
                let rec = self.component(&mut live, component, at);
                rec.status = Status::Ready;
                rec.ready_at = Some(at.to_owned());
                live.loaded.last_component = component.clone();
                batch.put(Tree::Meta, b"last_component", component);
                self.sample(
                    &live,
                    &mut batch,
                    component,
                    at,
                    *attempt,
                    *after_ms,
                    SampleOutcome::Ready,
                );
                touched.push(component.clone());
            }
            EventKind::Completed {
                component,
                attempt,
                after_ms,
            } => {
                let kind = self.kind_of(component);
                let rec = self.component(&mut live, component, at);
                rec.status = Status::Completed;
                rec.completed_at = Some(at.to_owned());
                if kind != Some(Kind::Service) {
                    rec.pid = None;
                    rec.pgid = None;
                    rec.start_time = None;
                }
                live.loaded.last_component = component.clone();
                batch.put(Tree::Meta, b"last_component", component);
                self.sample(
                    &live,
                    &mut batch,
                    component,
                    at,
                    *attempt,
                    *after_ms,
                    SampleOutcome::Completed,
                );
                touched.push(component.clone());
            }
            EventKind::Probe {
                component,
                ok,
                detail,
            } => {
                let rec = self.component(&mut live, component, at);
                rec.last_probe = Some(ProbeResult {
                    ok: *ok,
                    detail: detail.clone(),
                    at: at.to_owned(),
                });
                touched.push(component.clone());
            }
            EventKind::AttemptFailed {
                component,
                attempt,
                reason,
                exit,
                ..
            } => {
                let rec = self.component(&mut live, component, at);
                rec.status = Status::Failed;
                rec.reason = Some(reason.clone());
                rec.last_exit = *exit;
                if exit.is_some() {
                    rec.pid = None;
                    rec.pgid = None;
                    rec.start_time = None;
                }
                let duration = self
                    .spawned_at_ms
                    .get(component)
                    .map_or(0, |&spawned| event.at_ms.saturating_sub(spawned));
                self.sample(
                    &live,
                    &mut batch,
                    component,
                    at,
                    *attempt,
                    duration,
                    SampleOutcome::Failed,
                );
                touched.push(component.clone());
            }
            EventKind::RestartScheduled {
                component,
                next_attempt,
                delay_ms,
            } => {
                let rec = self.component(&mut live, component, at);
                rec.status = Status::Restarting;
                rec.next_attempt_at = Some(after(at, *delay_ms));
                rec.reason = Some(format!(
                    "attempt {next_attempt} in {}",
                    crate::duration::display(Duration::from_millis(*delay_ms))
                ));
                touched.push(component.clone());
            }
            EventKind::Quarantined {
                component,
                attempts,
                reason,
                exit,
                log_tail,
            } => {
                let command = self.steps.get(component).and_then(|s| s.command.clone());
                let rec = self.component(&mut live, component, at);
                rec.status = Status::Quarantined;
                rec.attempts = *attempts;
                rec.reason = Some(reason.clone());
                if exit.is_some() {
                    rec.last_exit = *exit;
                    rec.pid = None;
                    rec.pgid = None;
                    rec.start_time = None;
                }
                let tail: Vec<String> = log_tail
                    .iter()
                    .skip(log_tail.len().saturating_sub(LOG_TAIL_LIMIT))
                    .cloned()
                    .collect();
                let class = classify::classify(&tail, reason, *exit);
                let record = QuarantineRecord {
                    version: STATE_FORMAT,
                    component: component.clone(),
                    quarantined_at: at.to_owned(),
                    run_id: live.loaded.run.as_ref().map(|r| r.id.clone()),
                    command,
                    attempts: *attempts,
                    reason: reason.clone(),
                    exit: *exit,
                    class: class.class,
                    rule: class.rule,
                    matched: class.matched,
                    hint: class.hint.replace("NAME", component),
                    log_tail: tail,
                };
                batch.put(Tree::Quarantine, component.as_bytes(), &record);
                live.loaded
                    .quarantine
                    .insert(component.clone(), record.clone());
                quarantined = Some(record);
                touched.push(component.clone());
            }
            EventKind::Exited {
                component,
                exit,
                uptime_ms,
            } => {
                let rec = self.component(&mut live, component, at);
                rec.status = Status::Exited;
                rec.last_exit = Some(*exit);
                rec.pid = None;
                rec.pgid = None;
                rec.start_time = None;
                rec.reason = Some(format!(
                    "{exit} after {} up",
                    crate::duration::display(Duration::from_millis(*uptime_ms))
                ));
                touched.push(component.clone());
            }
            EventKind::BootFinished {
                ready,
                failed,
                blocked,
                elapsed_ms,
            } => {
                if let Some(run) = live.loaded.run.as_mut() {
                    run.boot = Some(BootSummary {
                        ready: *ready,
                        failed: *failed,
                        blocked: *blocked,
                        elapsed_ms: *elapsed_ms,
                    });
                    run.phase = Phase::Supervising;
                }
            }
            EventKind::Stopping { component, signal } => {
                if let Some(run) = live.loaded.run.as_mut() {
                    run.phase = Phase::Stopping;
                }
                let rec = self.component(&mut live, component, at);
                rec.status = Status::Stopping;
                rec.reason = Some(format!("stopping with {signal}"));
                touched.push(component.clone());
            }
            EventKind::Stopped {
                component,
                exit,
                forced,
            } => {
                let rec = self.component(&mut live, component, at);
                rec.status = Status::Stopped;
                rec.last_exit = *exit;
                rec.pid = None;
                rec.pgid = None;
                rec.start_time = None;
                rec.reason = forced.then(|| "killed after the stop grace period".to_owned());
                touched.push(component.clone());
            }
            EventKind::RunFinished {
                outcome,
                elapsed_ms,
            } => {
                if let Some(run) = live.loaded.run.as_mut() {
                    run.phase = Phase::Finished;
                    run.finished_at = Some(at.to_owned());
                    run.outcome = Some(*outcome);
                    run.elapsed_ms = Some(*elapsed_ms);
                }
            }
        }

        let run_changed = matches!(
            event.kind,
            EventKind::RunStarted { .. }
                | EventKind::BootFinished { .. }
                | EventKind::Stopping { .. }
                | EventKind::RunFinished { .. }
        );
        if let (true, Some(run), Some(seq)) = (run_changed, &live.loaded.run, live.loaded.run_seq) {
            batch.put(Tree::Runs, &seq.to_be_bytes(), run);
        }
        for name in &touched {
            if let Some(rec) = live.loaded.components.get(name) {
                batch.put(Tree::Components, name.as_bytes(), rec);
            }
        }
        // Marked before the commit: a failed commit still leaves the records changed in
        // memory, and the snapshot shows what razar holds.
        live.dirty.components.extend(touched);
        db.commit(batch)?;
        for name in self.sampled.drain(..) {
            if let Some(stats) = db.ring_stats(name.as_bytes())? {
                live.dirty.history.insert(name.clone());
                live.loaded.history.insert(name, stats);
            }
        }
        if !matches!(event.kind, EventKind::Probe { .. }) {
            let (name, detail) = note_of(&event.kind);
            push_note(&mut live, name, at, event.kind.component(), detail);
        }
        // The writer needs waking only for the first change since its last rewrite; later
        // ones find it already due (a wake-up per event would cost a futex call each).
        let first_change = live.changed == live.written;
        live.changed += 1;
        drop(live);
        if first_change {
            board.wake.notify_all();
        }

        if let Some(record) = quarantined {
            files::write_quarantine(&board.paths, &record)?;
            files::append_log_row(
                &board.paths,
                &files::log_timestamp(&record.quarantined_at),
                &record.component,
                "quarantined",
                &files::quarantine_details(&record),
            )?;
        }
        Ok(())
    }

    fn kind_of(&self, name: &str) -> Option<Kind> {
        self.steps.get(name).map(|s| s.kind)
    }

    fn component<'a>(&self, live: &'a mut Live, name: &str, at: &str) -> &'a mut ComponentRecord {
        let step = self.steps.get(name);
        let rec = live
            .loaded
            .components
            .entry(name.to_owned())
            .or_insert_with(|| {
                ComponentRecord::new(
                    step.map(|s| s.kind),
                    step.and_then(|s| s.command_hash.clone()),
                    at,
                )
            });
        rec.updated_at = at.to_owned();
        rec
    }

    /// Adds one attempt to the component's history ring (started afresh when its command
    /// changed); its statistics are refreshed once the event is committed.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per outcome, all fields needed"
    )]
    fn sample(
        &mut self,
        live: &Live,
        batch: &mut Batch,
        name: &str,
        at: &str,
        attempt: u32,
        duration_ms: u64,
        outcome: SampleOutcome,
    ) {
        let Some(hash) = self.steps.get(name).and_then(|s| s.command_hash.clone()) else {
            // Milestones (no command) and components outside the plan have no history.
            return;
        };
        // Only the sample goes to the journal; the database gives it its sequence number and
        // its `history_log` number, stages it under that number with the ring's updated
        // head, and sled receives both at the next checkpoint.
        batch.sample(
            name.as_bytes(),
            SampleEntry {
                command_hash: hash,
                seq: None,
                logged: None,
                sample: Sample {
                    at: at.to_owned(),
                    run_id: live.loaded.run.as_ref().map(|r| r.id.clone()),
                    attempt,
                    duration_ms,
                    outcome,
                },
            },
        );
        self.sampled.push(name.to_owned());
    }
}

impl Sink for Recorder {
    fn emit(&mut self, event: &Event) {
        if let Err(err) = self.record(event) {
            self.shared.board.fail(&err);
            if let Some(mut hook) = self.on_failure.take() {
                hook(&err.to_string());
            }
        }
    }
}

/// `at` plus `delay_ms`, as RFC 3339.
fn after(at: &str, delay_ms: u64) -> String {
    match humantime::parse_rfc3339_weak(at) {
        Ok(time) => {
            humantime::format_rfc3339_millis(time + Duration::from_millis(delay_ms)).to_string()
        }
        Err(_) => at.to_owned(),
    }
}

/// The `events` entry of an event: its name and a short detail.
fn note_of(kind: &EventKind) -> (&'static str, Option<String>) {
    match kind {
        EventKind::RunStarted {
            run_id, resumed, ..
        } => (
            "run_started",
            Some(if *resumed {
                format!("run {run_id} (resumed)")
            } else {
                format!("run {run_id}")
            }),
        ),
        EventKind::Adopted { pid, .. } => ("adopted", Some(format!("pid {pid}"))),
        EventKind::Skipped { reason, .. } => ("skipped", Some(reason.clone())),
        EventKind::Blocked { reason, .. } => ("blocked", Some(reason.clone())),
        EventKind::Spawned { attempt, pid, .. } => {
            ("spawned", Some(format!("attempt {attempt}, pid {pid}")))
        }
        EventKind::Ready { after_ms, .. } => ("ready", Some(format!("after {after_ms} ms"))),
        EventKind::Completed { after_ms, .. } => {
            ("completed", Some(format!("after {after_ms} ms")))
        }
        EventKind::Probe { detail, .. } => ("probe", Some(detail.clone())),
        EventKind::AttemptFailed { reason, .. } => ("attempt_failed", Some(reason.clone())),
        EventKind::RestartScheduled {
            next_attempt,
            delay_ms,
            ..
        } => (
            "restart_scheduled",
            Some(format!("attempt {next_attempt} in {delay_ms} ms")),
        ),
        EventKind::Quarantined { reason, .. } => ("quarantined", Some(reason.clone())),
        EventKind::Exited { exit, .. } => ("exited", Some(exit.to_string())),
        EventKind::BootFinished {
            ready,
            failed,
            blocked,
            ..
        } => (
            "boot_finished",
            Some(format!("{ready} up, {failed} failed, {blocked} blocked")),
        ),
        EventKind::Stopping { signal, .. } => ("stopping", Some(signal.clone())),
        EventKind::Stopped { exit, forced, .. } => (
            "stopped",
            Some(match (exit, forced) {
                (_, true) => "killed (SIGKILL)".to_owned(),
                (Some(exit), false) => exit.to_string(),
                (None, false) => "stopped".to_owned(),
            }),
        ),
        EventKind::RunFinished { outcome, .. } => (
            "run_finished",
            Some(
                serde_json::to_value(outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            ),
        ),
    }
}
