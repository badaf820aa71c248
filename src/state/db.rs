//! The database behind the store: the only file that names sled, so replacing it (sled calls
//! itself beta) touches nothing else. Values are JSON, keys are UTF-8 names or big-endian
//! sequence numbers.
//!
//! Trees: `meta` (format version, run sequence, crown handshake, last component),
//! `runs` (sequence → [`RunRecord`](super::RunRecord)), `components` (name → checkpoint),
//! `history` (name → the head of its ring of samples, see [`Head`]), `history_log` (a number
//! given in commit order → one sample and whose it is), `history_samples` (name, zero byte,
//! sequence number → one sample, as stored before `history_log`), `history_stats` (name → the
//! ring's statistics, derived when sled receives its head), `quarantine` (name → record).
//!
//! Durability: a sled flush costs ~70–120 µs here, too much for every event of a large boot,
//! and sled's unflushed writes live in razar's memory, lost if razar is killed. So every
//! [`Batch`] is first appended to `<state_dir>/db.journal` with one `write` (in the kernel's
//! page cache as soon as it returns: it survives razar being killed at any instant), and kept
//! in memory as the latest value of each key it writes; reads see those values first. sled
//! receives them at a checkpoint, which runs when the journal passes [`JOURNAL_CHECKPOINT`] and
//! on close: every key written since the last one is applied once (a component checkpointed
//! at spawn and again at exit costs sled one insert), sled is flushed, and the journal
//! emptied. A full journal is set aside as `db.journal.prev` and checkpointed by a thread
//! while commits go on into a new one. Opening the database replays the journals. They are
//! always ahead of sled, so a replay never moves state backwards.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::history::{
    Dropped, Head, LoggedSample, Sample, SampleEntry, Stored, log_key, sample_key,
};
use super::{Paths, StateError, files};

/// How long an apply waits for a reader (`razar status`, `razar plan`) that has the database
/// open for a moment.
const OPEN_PATIENCE: Duration = Duration::from_secs(5);

/// Journal size that triggers a checkpoint.
pub(crate) const JOURNAL_CHECKPOINT: u64 = 1 << 20;

/// Entries per sled batch when [`Db::copy_into`] copies a tree.
const COPY_BATCH: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tree {
    Meta,
    Runs,
    Components,
    History,
    Quarantine,
    /// The statistics of each history ring, kept by the database itself whenever sled
    /// receives a ring's head (see [`give_sled`]), for the read-only commands (an apply reads
    /// the heads, which its samples need). Derived when sled receives the head, so it lags a
    /// head still staged: read it right after opening (the journals are replayed then), and
    /// ask [`Db::ring_stats`] while recording.
    HistoryStats,
    /// Samples of the history rings written before [`Tree::HistoryLog`], each under its own
    /// key ([`sample_key`]); read and removed as their rings move on, never written anew.
    HistorySamples,
    /// The samples of the history rings, each under the number the database gave it at
    /// commit ([`log_key`]), so one boot's samples are adjacent keys; each ring's [`Head`]
    /// in `history` lists the numbers of its samples.
    HistoryLog,
}

const TREES: [Tree; 8] = [
    Tree::Meta,
    Tree::Runs,
    Tree::Components,
    Tree::History,
    Tree::Quarantine,
    Tree::HistoryStats,
    Tree::HistorySamples,
    Tree::HistoryLog,
];

/// The `meta` key saying the `history_stats` tree is complete: set once its statistics were
/// computed from every ring; [`give_sled`] keeps them current from then on.
pub(crate) const HISTORY_STATS_COMPLETE: &[u8] = b"history_stats";

impl Tree {
    fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::Runs => "runs",
            Tree::Components => "components",
            Tree::History => "history",
            Tree::Quarantine => "quarantine",
            Tree::HistoryStats => "history_stats",
            Tree::HistorySamples => "history_samples",
            Tree::HistoryLog => "history_log",
        }
    }

    fn from_name(name: &str) -> Option<Tree> {
        TREES.into_iter().find(|t| t.name() == name)
    }
}

enum Op {
    Put(Tree, Vec<u8>, Vec<u8>),
    Remove(Tree, Vec<u8>),
    /// One more sample for the history ring under this key: the journal holds only the
    /// sample; staging it stores the sample under its `history_log` number and updates the
    /// ring's [`Head`], which waits in [`Pending`] for the checkpoint.
    Sample(Vec<u8>, SampleEntry),
}

impl Op {
    /// Whether the op writes a history ring's head (see [`Db::settle_heads`]).
    fn touches_history(&self) -> bool {
        matches!(
            self,
            Op::Put(Tree::History, ..) | Op::Remove(Tree::History, _) | Op::Sample(..)
        )
    }
}

/// Writes that become durable together (one journal append).
#[derive(Default)]
pub(crate) struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    pub fn put<T: Serialize>(&mut self, tree: Tree, key: &[u8], value: &T) {
        let bytes = serde_json::to_vec(value).expect("state records serialise: plain data");
        self.ops.push(Op::Put(tree, key.to_vec(), bytes));
    }

    pub fn remove(&mut self, tree: Tree, key: &[u8]) {
        self.ops.push(Op::Remove(tree, key.to_vec()));
    }

    /// Adds one sample to the history ring of `key` (see [`Head::record`]).
    pub fn sample(&mut self, key: &[u8], entry: SampleEntry) {
        self.ops.push(Op::Sample(key.to_vec(), entry));
    }

    fn journal_lines(&self) -> Vec<u8> {
        // One line per operation, built in one buffer (this runs for every event of a boot).
        let size: usize = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Put(_, key, value) => 64 + 2 * key.len() + value.len(),
                Op::Sample(key, _) => 256 + 2 * key.len(),
                Op::Remove(_, key) => 64 + 2 * key.len(),
            })
            .sum();
        let mut out = Vec::with_capacity(size);
        for op in &self.ops {
            match op {
                Op::Put(tree, key, value) => {
                    line_start(&mut out, "put", *tree, key);
                    out.extend_from_slice(b",\"value\":");
                    out.extend_from_slice(value);
                    out.extend_from_slice(b"}\n");
                }
                Op::Sample(key, entry) => {
                    line_start(&mut out, "sample", Tree::History, key);
                    out.extend_from_slice(b",\"value\":");
                    serde_json::to_writer(&mut out, entry)
                        .expect("history samples serialise: plain data");
                    out.extend_from_slice(b"}\n");
                }
                Op::Remove(tree, key) => {
                    line_start(&mut out, "remove", *tree, key);
                    out.extend_from_slice(b"}\n");
                }
            }
        }
        out
    }
}

/// `{"op":"OP","tree":"TREE","key":"HEX"` (the caller ends the object).
fn line_start(out: &mut Vec<u8>, op: &str, tree: Tree, key: &[u8]) {
    out.extend_from_slice(b"{\"op\":\"");
    out.extend_from_slice(op.as_bytes());
    out.extend_from_slice(b"\",\"tree\":\"");
    out.extend_from_slice(tree.name().as_bytes());
    out.extend_from_slice(b"\",\"key\":\"");
    push_hex(out, key);
    out.push(b'"');
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses one journal line into an operation.
fn parse_line(line: &[u8]) -> Option<Op> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let tree = Tree::from_name(value.get("tree")?.as_str()?)?;
    let key = unhex(value.get("key")?.as_str()?)?;
    match value.get("op")?.as_str()? {
        "put" => Some(Op::Put(
            tree,
            key,
            serde_json::to_vec(value.get("value")?).ok()?,
        )),
        "remove" => Some(Op::Remove(tree, key)),
        "sample" if tree == Tree::History => Some(Op::Sample(
            key,
            serde_json::from_value(value.get("value")?.clone()).ok()?,
        )),
        _ => None,
    }
}

struct Journal {
    path: PathBuf,
    file: Option<File>,
    len: u64,
}

/// The latest value of one key that sled has not received yet.
enum Staged {
    Value(Vec<u8>),
    Removed,
    /// A history ring's head, kept as a value in memory and serialised once, at the
    /// checkpoint (the journal holds only the new samples).
    Head(Head),
}

impl Staged {
    /// The value's bytes as sled will hold them (`None`: removed).
    fn bytes(&self) -> Option<Vec<u8>> {
        match self {
            Staged::Value(bytes) => Some(bytes.clone()),
            Staged::Removed => None,
            Staged::Head(head) => {
                Some(serde_json::to_vec(head).expect("history heads serialise: plain data"))
            }
        }
    }
}

/// Writes that are in the journal but not yet in sled: per tree and key, the latest value.
type Pending = BTreeMap<(usize, Vec<u8>), Staged>;

/// History heads by key (see [`Db::clean`]).
type Heads = HashMap<Vec<u8>, Head>;

/// The staged values of one tree's keys (`None`: removed), laid over sled's when reading.
type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

pub(crate) struct Db {
    path: PathBuf,
    db: sled::Db,
    trees: [sled::Tree; 8],
    /// The `history_log` number the next sample gets: one past the highest in sled or staged.
    next_logged: AtomicU64,
    journal: Mutex<Journal>,
    pending: Mutex<Pending>,
    /// The background flush of the last checkpoint started by a commit: it gives sled the
    /// writes in [`Db::inflight`], flushes it, then removes the journal they came from
    /// (`db.journal.prev`).
    flusher: Mutex<Option<JoinHandle<Result<(), StateError>>>>,
    /// The staged writes a background checkpoint is giving sled: read between
    /// [`Db::pending`] and sled until the flush thread is done with them.
    inflight: Arc<Mutex<Option<Arc<Pending>>>>,
    /// History heads as sled holds them, read at open for an apply ([`Db::all_history_stats`]
    /// with `keep`, or [`Db::keep_heads_in_background`]) so a component's first sample of the
    /// boot finds its head in memory. An entry leaves when the head is taken or its key
    /// written; sled is read for the others.
    clean: Mutex<Heads>,
    /// The thread reading the heads for [`Db::clean`] (see [`Db::keep_heads_in_background`]):
    /// joined before the first write that touches history, so nothing it read can be older
    /// than a head written since.
    heads_reader: Mutex<Option<JoinHandle<Heads>>>,
    /// Opened by a read-only command ([`Db::open_to_read`]): the journals are read into memory
    /// and never applied to sled, emptied or set aside, and nothing is committed.
    read_only: bool,
}

/// Why opening failed: another process has the database open, or something else.
pub(crate) enum OpenError {
    Busy,
    Failed(StateError),
}

impl Db {
    /// Opens (creating) the database, waiting up to [`OPEN_PATIENCE`] while another process
    /// has it open.
    pub fn open_patiently(paths: &Paths) -> Result<Db, StateError> {
        let deadline = Instant::now() + OPEN_PATIENCE;
        loop {
            match Db::open(paths) {
                Ok(db) => return Ok(db),
                Err(OpenError::Failed(err)) => return Err(err),
                Err(OpenError::Busy) if Instant::now() >= deadline => {
                    return Err(StateError::Database {
                        path: paths.db(),
                        detail: "another process keeps it open".to_owned(),
                    });
                }
                Err(OpenError::Busy) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// One attempt to open (creating) the database, replaying the journal an earlier razar
    /// left.
    pub fn open(paths: &Paths) -> Result<Db, OpenError> {
        Self::open_as(paths, false)
    }

    /// One attempt to open an existing database for a read-only command: the journals an
    /// earlier razar left are read into memory (reads see them), never applied to sled,
    /// emptied or set aside, which only the lock's holder does. A database missing one of
    /// sled's own files is refused rather than recreated. (sled itself still writes at open:
    /// it zeroes the torn end of its log and rewrites its snapshot file, keeping its data.)
    pub fn open_to_read(paths: &Paths) -> Result<Db, OpenError> {
        for file in ["conf", "db"] {
            let needed = paths.db().join(file);
            if !needed.exists() {
                return Err(OpenError::Failed(StateError::Database {
                    path: paths.db(),
                    detail: format!("it is incomplete: `{}` is missing", needed.display()),
                }));
            }
        }
        Self::open_as(paths, true)
    }

    fn open_as(paths: &Paths, read_only: bool) -> Result<Db, OpenError> {
        let path = paths.db();
        let failed = |detail: String| {
            OpenError::Failed(StateError::Database {
                path: path.clone(),
                detail,
            })
        };
        // sled may panic on some corruptions instead of returning an error; a damaged
        // database must end in a message, not a crash.
        let opened = std::panic::catch_unwind(|| {
            // No background flusher thread: razar flushes at its checkpoints, and its journal
            // keeps whatever sled has not flushed yet.
            sled::Config::new().path(&path).flush_every_ms(None).open()
        });
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(sled::Error::Io(err))) if err.to_string().contains("could not acquire lock") => {
                return Err(OpenError::Busy);
            }
            Ok(Err(sled::Error::Io(err)))
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                return Err(OpenError::Failed(StateError::NoPermission {
                    path: path.clone(),
                    detail: err.to_string(),
                }));
            }
            Ok(Err(err)) => return Err(failed(err.to_string())),
            Err(_) => {
                return Err(failed(
                    "the database library panicked while opening it".into(),
                ));
            }
        };
        let open_tree = |tree: Tree| {
            db.open_tree(tree.name())
                .map_err(|err| failed(format!("tree `{}`: {err}", tree.name())))
        };
        let trees = [
            open_tree(Tree::Meta)?,
            open_tree(Tree::Runs)?,
            open_tree(Tree::Components)?,
            open_tree(Tree::History)?,
            open_tree(Tree::Quarantine)?,
            open_tree(Tree::HistoryStats)?,
            open_tree(Tree::HistorySamples)?,
            open_tree(Tree::HistoryLog)?,
        ];
        let next_logged = match trees[Tree::HistoryLog as usize].last() {
            Ok(Some((key, _))) => key
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| failed("tree `history_log`: a key is not a sample number".into()))?
                .saturating_add(1),
            Ok(None) => 0,
            Err(err) => return Err(failed(format!("tree `history_log`: {err}"))),
        };
        let db = Db {
            path: path.clone(),
            db,
            trees,
            next_logged: AtomicU64::new(next_logged),
            journal: Mutex::new(Journal {
                path: paths.journal(),
                file: None,
                len: 0,
            }),
            pending: Mutex::new(Pending::new()),
            flusher: Mutex::new(None),
            inflight: Arc::new(Mutex::new(None)),
            clean: Mutex::new(HashMap::new()),
            heads_reader: Mutex::new(None),
            read_only,
        };
        db.replay().map_err(OpenError::Failed)?;
        Ok(db)
    }

    /// Applies what the journals hold beyond sled (`db.journal.prev`, left by a checkpoint
    /// whose flush had not finished, then `db.journal`), then checkpoints. A torn last line
    /// (razar killed mid-append) is ignored; an unreadable line stops the replay of that
    /// journal, which is kept aside for inspection.
    fn replay(&self) -> Result<(), StateError> {
        let current = lock(&self.journal).path.clone();
        let journals = [previous_journal(&current), current];
        let mut replayed = Vec::new();
        for path in &journals {
            if let Some(damaged) = self.replay_file(path)? {
                replayed.push((path, damaged));
            }
        }
        if replayed.is_empty() {
            return Ok(());
        }
        if self.read_only {
            for (path, damaged) in replayed {
                if damaged {
                    tracing::warn!(
                        "`{}` has an unreadable entry; read up to it (the next `razar apply` keeps the journal aside)",
                        path.display()
                    );
                }
            }
            return Ok(());
        }
        self.apply_pending()?;
        self.flush_sled()?;
        for (path, damaged) in replayed {
            if damaged {
                let kept = files::move_aside(path, "damaged")?;
                tracing::warn!(
                    "`{}` has an unreadable entry; replay stopped there and the journal was kept as `{}`",
                    path.display(),
                    kept.display()
                );
            } else if *path == journals[0] {
                remove_if_present(path)?;
            } else {
                self.truncate_journal()?;
            }
        }
        Ok(())
    }

    /// Stages the entries of one journal file: `None` when it is missing or empty, else
    /// whether it has an unreadable entry.
    fn replay_file(&self, path: &Path) -> Result<Option<bool>, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(StateError::io(path, err)),
        };
        if bytes.is_empty() {
            return Ok(None);
        }
        let complete = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(end) => &bytes[..=end],
            None => &[][..],
        };
        let mut applied = 0usize;
        let mut damaged = false;
        for line in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match parse_line(line) {
                Some(op) => {
                    self.stage(op);
                    applied += 1;
                }
                None => {
                    damaged = true;
                    break;
                }
            }
        }
        tracing::info!(
            "replayed {applied} journal entries from `{}`",
            path.display()
        );
        Ok(Some(damaged))
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees[tree as usize]
    }

    fn error(&self, what: String) -> StateError {
        StateError::Database {
            path: self.path.clone(),
            detail: what,
        }
    }

    fn corrupt(&self, tree: Tree, key: &[u8], err: impl std::fmt::Display) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            detail: format!(
                "record `{}/{}`: {err}; to start afresh, move it and the db.journal files beside it away: history and run records are lost, quarantine/ and razar_state.json are read again",
                tree.name(),
                String::from_utf8_lossy(key)
            ),
        }
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        tree: Tree,
        key: &[u8],
    ) -> Result<Option<T>, StateError> {
        let value = match self.staged_bytes(tree, key) {
            Some(value) => value,
            None => self
                .tree(tree)
                .get(key)
                .map_err(|err| self.error(format!("cannot read `{}`: {err}", tree.name())))?
                .map(|bytes| bytes.to_vec()),
        };
        value
            .map(|bytes| serde_json::from_slice(&bytes).map_err(|err| self.corrupt(tree, key, err)))
            .transpose()
    }

    /// The bytes of the latest staged value of a key (pending, else in flight to sled), if
    /// one is staged (`Some(None)`: removed).
    fn staged_bytes(&self, tree: Tree, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.staged_in(&lock(&self.pending), tree, key)
    }

    /// [`Db::staged_bytes`] with `pending` already locked by the caller.
    fn staged_in(&self, pending: &Pending, tree: Tree, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let slot = (tree as usize, key.to_vec());
        if let Some(value) = pending.get(&slot) {
            return Some(value.bytes());
        }
        self.in_flight(&slot)?.get(&slot).map(Staged::bytes)
    }

    /// The statistics of every history ring, in key order (a ring in the earlier format read
    /// without building its samples). With `keep`, the heads are kept in memory for the
    /// samples of the boot to come.
    pub fn all_history_stats(
        &self,
        keep: bool,
    ) -> Result<Vec<(Vec<u8>, super::HistoryStats)>, StateError> {
        let mut out = Vec::new();
        let mut heads = HashMap::new();
        self.each(Tree::History, |key, bytes| {
            let stats = match serde_json::from_slice::<Head>(bytes) {
                Ok(head) => {
                    let stats = head.stats();
                    if keep {
                        heads.insert(key.to_vec(), head);
                    }
                    stats
                }
                Err(_) => {
                    Stored::stats_of(bytes).map_err(|err| self.corrupt(Tree::History, key, err))?
                }
            };
            if let Some(stats) = stats {
                out.push((key.to_vec(), stats));
            }
            Ok(())
        })?;
        if keep {
            *lock(&self.clean) = heads;
        }
        Ok(out)
    }

    /// Reads the history heads into memory on a thread of their own, for the samples of the
    /// boot to come (what [`Db::all_history_stats`] does with `keep`, off the caller's path: an
    /// apply reads the statistics tree to plan, and parsing 2,000 heads took ~8 ms of its
    /// start). A head that cannot be read is left out; its ring is read (and the problem
    /// reported) when its next sample comes. Writes to history wait for the thread.
    pub fn keep_heads_in_background(&self) -> Result<(), StateError> {
        self.settle_heads();
        let overlay = self.overlay(&lock(&self.pending), Tree::History, &[]);
        let tree = self.tree(Tree::History).clone();
        let reader = std::thread::Builder::new()
            .name("razar-heads".to_owned())
            .spawn(move || {
                let mut heads = HashMap::new();
                let _ = each_over(&tree, &overlay, &[], |key, bytes| {
                    if let Ok(head) = serde_json::from_slice::<Head>(bytes) {
                        heads.insert(key.to_vec(), head);
                    }
                    Ok::<(), sled::Error>(())
                });
                heads
            })
            .map_err(|err| self.error(format!("cannot start a thread to read history: {err}")))?;
        *lock(&self.heads_reader) = Some(reader);
        Ok(())
    }

    /// Waits for [`Db::keep_heads_in_background`]'s thread, if one runs, and keeps what it
    /// read.
    fn settle_heads(&self) {
        let Some(reader) = lock(&self.heads_reader).take() else {
            return;
        };
        let heads = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        lock(&self.clean).extend(heads);
    }

    /// Calls `f` with every record of a tree as it stands (sled's, overlaid with the staged
    /// ones, removed ones left out), in key order. sled's values are read in place, not
    /// copied.
    fn each(
        &self,
        tree: Tree,
        f: impl FnMut(&[u8], &[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let overlay = self.overlay(&lock(&self.pending), tree, &[]);
        self.each_over(&overlay, tree, &[], f)
    }

    /// The staged values of the keys of `tree` that start with `prefix` (in flight to sled,
    /// overlaid with `pending`; `None`: removed). Taken before sled is read: writes the flush
    /// thread gives sled after this point are then overlaid from here, and before it they are
    /// in sled already.
    fn overlay(&self, pending: &Pending, tree: Tree, prefix: &[u8]) -> Overlay {
        let inflight = lock(&self.inflight).clone();
        let mut overlay = Overlay::new();
        let from = (tree as usize, prefix.to_vec());
        for staged in inflight.iter().map(|i| &**i).chain([pending]) {
            let keys = staged
                .range(&from..)
                .take_while(|((t, key), _)| *t == tree as usize && key.starts_with(prefix));
            for ((_, key), value) in keys {
                overlay.insert(key.clone(), value.bytes());
            }
        }
        overlay
    }

    /// Calls `f` with the records of `tree` whose keys start with `prefix`, sled's overlaid
    /// with `overlay` (see [`Db::overlay`]), in key order.
    fn each_over(
        &self,
        overlay: &Overlay,
        tree: Tree,
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        each_over(self.tree(tree), overlay, prefix, &mut f).map_err(|err| match err {
            Scan::Read(err) => self.error(format!("cannot read `{}`: {err}", tree.name())),
            Scan::Stopped(err) => err,
        })
    }

    /// Every record of a tree, in key order.
    pub fn all<T: DeserializeOwned>(&self, tree: Tree) -> Result<Vec<(Vec<u8>, T)>, StateError> {
        let mut out = Vec::new();
        self.each(tree, |key, bytes| {
            let value =
                serde_json::from_slice(bytes).map_err(|err| self.corrupt(tree, key, err))?;
            out.push((key.to_vec(), value));
            Ok(())
        })?;
        Ok(out)
    }

    /// Makes `op` the latest value of its key in [`Pending`]. A sample is stored under its
    /// `history_log` number and recorded in its ring's head (see [`Head::record`]); one
    /// already recorded (a journal replayed over a checkpoint that reached sled) is skipped.
    fn stage(&self, op: Op) {
        let mut pending = lock(&self.pending);
        if let Op::Put(Tree::History, key, _) | Op::Remove(Tree::History, key) = &op {
            lock(&self.clean).remove(key);
        }
        match op {
            Op::Put(tree, key, value) => {
                pending.insert((tree as usize, key), Staged::Value(value));
            }
            Op::Remove(tree, key) => {
                pending.insert((tree as usize, key), Staged::Removed);
            }
            Op::Sample(key, entry) => {
                if let Some(number) = entry.logged {
                    self.next_logged.fetch_max(number + 1, Ordering::Relaxed);
                }
                let head = self.take_head(&mut pending, &key);
                let seq = match (entry.seq, &head) {
                    (Some(seq), Some(head)) if seq < head.next => None,
                    (Some(seq), _) => Some(seq),
                    (None, Some(head)) => {
                        (!self.holds(&pending, &key, head, &entry.sample)).then_some(head.next)
                    }
                    (None, None) => Some(0),
                };
                let Some(seq) = seq else {
                    if let Some(head) = head {
                        pending.insert((Tree::History as usize, key), Staged::Head(head));
                    }
                    return;
                };
                // A journal from before `history_log` gave no number: one is given now.
                let logged = entry
                    .logged
                    .unwrap_or_else(|| self.next_logged.fetch_add(1, Ordering::Relaxed));
                let (head, dropped) =
                    Head::record(head, &entry.command_hash, seq, logged, &entry.sample);
                for old in dropped {
                    let slot = match old {
                        Dropped::Sample(seq) => {
                            (Tree::HistorySamples as usize, sample_key(&key, seq))
                        }
                        Dropped::Logged(number) => {
                            (Tree::HistoryLog as usize, log_key(number).to_vec())
                        }
                    };
                    pending.insert(slot, Staged::Removed);
                }
                let logged_sample = LoggedSample {
                    component: String::from_utf8_lossy(&key).into_owned(),
                    seq,
                    sample: entry.sample,
                };
                let bytes = serde_json::to_vec(&logged_sample)
                    .expect("history samples serialise: plain data");
                pending.insert(
                    (Tree::HistoryLog as usize, log_key(logged).to_vec()),
                    Staged::Value(bytes),
                );
                pending.insert((Tree::History as usize, key), Staged::Head(head));
            }
        }
    }

    /// Takes the head of the history ring of `key` out of `pending`, loading it from the
    /// writes in flight or sled if it is not staged. A ring in the earlier whole-ring format
    /// is converted: its samples are staged under their own `history_samples` keys, numbered
    /// from 0 (see [`Head`]). `None` when there is no ring, or it cannot be read (history is
    /// statistics: losing it must not stop a boot; the ring starts afresh).
    fn take_head(&self, pending: &mut Pending, key: &[u8]) -> Option<Head> {
        let slot = (Tree::History as usize, key.to_vec());
        let stored = match pending.remove(&slot) {
            Some(Staged::Head(head)) => return Some(head),
            Some(Staged::Value(bytes)) => self.history_from(key, &bytes),
            Some(Staged::Removed) => None,
            // Still on its way to sled: the in-flight value is the latest. (Once the flush
            // thread drops it, sled has it.)
            None => match self.in_flight(&slot).as_ref().and_then(|i| i.get(&slot)) {
                Some(Staged::Head(head)) => return Some(head.clone()),
                Some(Staged::Value(bytes)) => self.history_from(key, bytes),
                Some(Staged::Removed) => None,
                None => match lock(&self.clean).remove(key) {
                    Some(head) => return Some(head),
                    None => self.stored_history(key),
                },
            },
        };
        match stored? {
            Stored::Head(head) => Some(head),
            Stored::Ring(ring) => {
                let head = Head::from_ring(&ring)?;
                for (seq, sample) in ring.samples.iter().enumerate() {
                    let bytes =
                        serde_json::to_vec(sample).expect("history samples serialise: plain data");
                    pending.insert(
                        (Tree::HistorySamples as usize, sample_key(key, seq as u64)),
                        Staged::Value(bytes),
                    );
                }
                Some(head)
            }
        }
    }

    /// Whether the ring `head` of `key` keeps `sample` already: how a sample journalled
    /// without a sequence number (by a razar from before them) is not counted twice.
    fn holds(&self, pending: &Pending, key: &[u8], head: &Head, sample: &Sample) -> bool {
        let prefix = sample_key(key, 0);
        let prefix = &prefix[..key.len() + 1];
        let overlay = self.overlay(pending, Tree::HistorySamples, prefix);
        let mut found = false;
        let scanned = self.each_over(&overlay, Tree::HistorySamples, prefix, |k, bytes| {
            let seq = k[prefix.len()..]
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(u64::MAX);
            if (head.first..head.unlogged_end()).contains(&seq) {
                found |= serde_json::from_slice::<Sample>(bytes).is_ok_and(|s| s == *sample);
            }
            Ok(())
        });
        if let Err(err) = scanned {
            tracing::warn!("{err}");
        }
        found
            || head.logged.iter().any(|&number| {
                self.bytes_over(pending, Tree::HistoryLog, &log_key(number))
                    .and_then(|bytes| serde_json::from_slice::<LoggedSample>(&bytes).ok())
                    .is_some_and(|logged| logged.sample == *sample)
            })
    }

    /// The value of `key` as it stands, staged (`pending` locked by the caller) or sled's;
    /// `None` if it has none or sled cannot be read.
    fn bytes_over(&self, pending: &Pending, tree: Tree, key: &[u8]) -> Option<Vec<u8>> {
        if let Some(staged) = self.staged_in(pending, tree, key) {
            return staged;
        }
        match self.tree(tree).get(key) {
            Ok(bytes) => bytes.map(|b| b.to_vec()),
            Err(err) => {
                tracing::warn!("cannot read `{}`: {err}", tree.name());
                None
            }
        }
    }

    /// The history record sled holds for `key`; `None` if it has none or it cannot be read.
    fn stored_history(&self, key: &[u8]) -> Option<Stored> {
        match self.tree(Tree::History).get(key) {
            Ok(Some(bytes)) => self.history_from(key, &bytes),
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(
                    "history of `{}` unreadable ({err}); started afresh",
                    String::from_utf8_lossy(key)
                );
                None
            }
        }
    }

    /// The writes a background checkpoint is still giving sled, if they hold `slot`.
    fn in_flight(&self, slot: &(usize, Vec<u8>)) -> Option<Arc<Pending>> {
        lock(&self.inflight)
            .clone()
            .filter(|inflight| inflight.contains_key(slot))
    }

    /// Gives every history sample of the batch its sequence number (the next of its ring),
    /// so the journal records it and a replay can tell whether sled has it already, and its
    /// `history_log` number (the next in commit order). The heads read for this stay staged
    /// (a ring in the earlier format, converted).
    fn number_samples(&self, batch: &mut Batch) {
        let mut pending = None;
        let mut given: Vec<(Vec<u8>, u64)> = Vec::new();
        for op in &mut batch.ops {
            let Op::Sample(key, entry) = op else { continue };
            if entry.logged.is_none() {
                entry.logged = Some(self.next_logged.fetch_add(1, Ordering::Relaxed));
            }
            if entry.seq.is_some() {
                continue;
            }
            let seq = match given.iter_mut().find(|(k, _)| k == key) {
                Some((_, next)) => std::mem::replace(next, *next + 1),
                None => {
                    let pending = pending.get_or_insert_with(|| lock(&self.pending));
                    let head = self.take_head(pending, key);
                    let next = head.as_ref().map_or(0, |head| head.next);
                    if let Some(head) = head {
                        pending.insert((Tree::History as usize, key.clone()), Staged::Head(head));
                    }
                    given.push((key.clone(), next + 1));
                    next
                }
            };
            entry.seq = Some(seq);
        }
    }

    /// The statistics of the rings whose head is staged (journalled, not yet given to sled,
    /// so not yet in `history_stats`): `None` for a ring removed or emptied. A read-only
    /// command lays these over the `history_stats` tree, since it never checkpoints.
    pub fn staged_ring_stats(&self) -> Vec<(Vec<u8>, Option<super::HistoryStats>)> {
        lock(&self.pending)
            .iter()
            .filter(|((tree, _), _)| *tree == Tree::History as usize)
            .map(|((_, key), staged)| {
                let stats = match staged {
                    Staged::Head(head) => head.stats(),
                    Staged::Value(bytes) => Stored::stats_of(bytes).ok().flatten(),
                    Staged::Removed => None,
                };
                (key.clone(), stats)
            })
            .collect()
    }

    /// The statistics of the history ring of `key`: from the head staged in memory (there is
    /// one right after a sample for it was committed), else as stored.
    pub fn ring_stats(&self, key: &[u8]) -> Result<Option<super::HistoryStats>, StateError> {
        let staged = match lock(&self.pending).get(&(Tree::History as usize, key.to_vec())) {
            Some(Staged::Head(head)) => Some(head.stats()),
            _ => None,
        };
        match staged {
            Some(stats) => Ok(stats),
            None => match self.history_bytes(key)? {
                Some(bytes) => {
                    Stored::stats_of(&bytes).map_err(|err| self.corrupt(Tree::History, key, err))
                }
                None => Ok(None),
            },
        }
    }

    /// The bytes of the `history` record of `key` as it stands (staged, else sled's).
    fn history_bytes(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        match self.staged_bytes(Tree::History, key) {
            Some(value) => Ok(value),
            None => self
                .tree(Tree::History)
                .get(key)
                .map(|bytes| bytes.map(|b| b.to_vec()))
                .map_err(|err| self.error(format!("cannot read `history`: {err}"))),
        }
    }

    /// The history ring of `key` as it stands, whole (its head and the samples it keeps).
    #[cfg(test)]
    pub fn ring(&self, key: &[u8]) -> Result<Option<super::history::Ring>, StateError> {
        let Some(bytes) = self.history_bytes(key)? else {
            return Ok(None);
        };
        let head = match Stored::parse(&bytes).map_err(|e| self.corrupt(Tree::History, key, e))? {
            Stored::Ring(ring) => return Ok(Some(ring)),
            Stored::Head(head) => head,
        };
        let mut ring = super::history::Ring::new(head.command_hash.clone());
        let from = sample_key(key, head.first);
        let to = sample_key(key, head.unlogged_end());
        let prefix = &from[..key.len() + 1];
        let pending = lock(&self.pending);
        let overlay = self.overlay(&pending, Tree::HistorySamples, prefix);
        self.each_over(&overlay, Tree::HistorySamples, prefix, |k, bytes| {
            if (from.as_slice()..to.as_slice()).contains(&k) {
                let sample = serde_json::from_slice(bytes)
                    .map_err(|e| self.corrupt(Tree::HistorySamples, k, e))?;
                ring.samples.push_back(sample);
            }
            Ok(())
        })?;
        for &number in &head.logged {
            let key = log_key(number);
            let bytes = self
                .bytes_over(&pending, Tree::HistoryLog, &key)
                .ok_or_else(|| self.corrupt(Tree::HistoryLog, &key, "missing"))?;
            let logged: LoggedSample = serde_json::from_slice(&bytes)
                .map_err(|e| self.corrupt(Tree::HistoryLog, &key, e))?;
            ring.samples.push_back(logged.sample);
        }
        Ok(Some(ring))
    }

    fn history_from(&self, key: &[u8], bytes: &[u8]) -> Option<Stored> {
        match Stored::parse(bytes) {
            Ok(stored) => Some(stored),
            Err(err) => {
                tracing::warn!(
                    "history of `{}` in `{}` unreadable ({err}); started afresh",
                    String::from_utf8_lossy(key),
                    self.path.display()
                );
                None
            }
        }
    }

    /// Makes `batch` durable against razar being killed (one journal append); sled receives it
    /// at the next checkpoint.
    pub fn commit(&self, batch: Batch) -> Result<(), StateError> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        if self.read_only {
            return Err(
                self.error("a read-only command tried to write to the state database".to_owned())
            );
        }
        let mut batch = batch;
        if batch.ops.iter().any(Op::touches_history) {
            self.settle_heads();
        }
        self.number_samples(&mut batch);
        let bytes = batch.journal_lines();
        let checkpoint = {
            let mut journal = lock(&self.journal);
            let journal = &mut *journal;
            if journal.file.is_none() {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&journal.path)
                    .map_err(|e| StateError::io(&journal.path, e))?;
                journal.len = file.metadata().map(|m| m.len()).unwrap_or(0);
                journal.file = Some(file);
            }
            let file = journal
                .file
                .as_mut()
                .expect("the journal file was opened just above");
            file.write_all(&bytes)
                .map_err(|e| StateError::io(&journal.path, e))?;
            journal.len += bytes.len() as u64;
            journal.len >= JOURNAL_CHECKPOINT
        };
        for op in batch.ops {
            self.stage(op);
        }
        if checkpoint {
            self.checkpoint_in_background()?;
        }
        Ok(())
    }

    /// Copies every tree sled holds into a new database at `dest` (which must not exist yet),
    /// flushes the copy and checks it against this database entry by entry. Only the live
    /// entries are copied, not the space sled's log has accumulated around them (see
    /// `Store::compact`). Call it after a checkpoint, with no commits meanwhile, so that sled
    /// holds everything the journal did.
    pub fn copy_into(&self, dest: &Path) -> Result<(), StateError> {
        let failed = |detail: String| StateError::Compact {
            path: self.path.clone(),
            detail: format!("its copy `{}`: {detail}", dest.display()),
        };
        let created = std::panic::catch_unwind(|| {
            sled::Config::new()
                .path(dest)
                .create_new(true)
                .flush_every_ms(None)
                .open()
        });
        let copy = match created {
            Ok(Ok(copy)) => copy,
            Ok(Err(err)) => return Err(failed(format!("cannot create it: {err}"))),
            Err(_) => return Err(failed("sled panicked creating it".to_owned())),
        };
        let names = self.db.tree_names();
        let pair = |name: &sled::IVec| -> Result<(sled::Tree, sled::Tree), StateError> {
            let shown = String::from_utf8_lossy(name);
            let from = self
                .db
                .open_tree(name)
                .map_err(|err| self.error(format!("tree `{shown}`: {err}")))?;
            let to = copy
                .open_tree(name)
                .map_err(|err| failed(format!("tree `{shown}`: {err}")))?;
            Ok((from, to))
        };
        for name in &names {
            let (from, to) = pair(name)?;
            let mut batch = sled::Batch::default();
            let mut batched = 0;
            for entry in from.iter() {
                let (key, value) = entry.map_err(|err| self.error(err.to_string()))?;
                batch.insert(key, value);
                batched += 1;
                if batched == COPY_BATCH {
                    to.apply_batch(std::mem::take(&mut batch))
                        .map_err(|err| failed(err.to_string()))?;
                    batched = 0;
                }
            }
            to.apply_batch(batch)
                .map_err(|err| failed(err.to_string()))?;
        }
        copy.flush()
            .map_err(|err| failed(format!("cannot flush: {err}")))?;
        for name in &names {
            let (from, to) = pair(name)?;
            let (mut original, mut copied) = (from.iter(), to.iter());
            loop {
                match (original.next(), copied.next()) {
                    (None, None) => break,
                    (Some(Ok(a)), Some(Ok(b))) if a == b => {}
                    _ => {
                        return Err(failed(format!(
                            "the copy of tree `{}` differs from the original",
                            String::from_utf8_lossy(name)
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Keeps sled's page cache alive for the rest of the process. Dropping the last handle
    /// frees every cached node one by one and fsyncs the file again (~14 ms once 2,000
    /// components have full history rings): wasted work for a process that exits next, whose
    /// memory the kernel takes back at once. sled's file lock then lasts until the process
    /// exits, so this is only for a process that will not open this database again.
    pub fn keep_until_exit(&self) {
        std::mem::forget(self.db.clone());
    }

    fn flush_sled(&self) -> Result<(), StateError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|err| self.error(format!("cannot flush: {err}")))
    }

    fn truncate_journal(&self) -> Result<(), StateError> {
        let mut journal = lock(&self.journal);
        let path = journal.path.clone();
        match journal.file.as_mut() {
            Some(file) => file.set_len(0).map_err(|e| StateError::io(&path, e))?,
            None => match OpenOptions::new().write(true).open(&path) {
                Ok(file) => file.set_len(0).map_err(|e| StateError::io(&path, e))?,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(StateError::io(&path, err)),
            },
        }
        journal.len = 0;
        Ok(())
    }

    /// Applies the writes sled has not received yet (each key once, one batch per tree),
    /// flushes sled to disk, then empties the journal it made redundant; waits for a
    /// background flush still running. Callers must not commit concurrently (the store
    /// commits under one lock).
    pub fn checkpoint(&self) -> Result<(), StateError> {
        self.wait_for_flush()?;
        // Every commit stages its writes, so nothing staged means the journal holds nothing
        // sled lacks: no flush needed.
        if lock(&self.pending).is_empty() {
            return Ok(());
        }
        self.apply_pending()?;
        self.flush_sled()?;
        self.truncate_journal()
    }

    /// The checkpoint a commit starts when the journal is full: the staged writes move to
    /// [`Db::inflight`] (still read from there) and the journal is renamed `db.journal.prev`,
    /// so commits go on into a fresh one while a thread gives sled those writes, flushes it
    /// (tens of milliseconds on a busy disk) and then removes the old journal. A crash before
    /// the flush finished leaves both journals, and opening replays them in order.
    fn checkpoint_in_background(&self) -> Result<(), StateError> {
        self.wait_for_flush()?;
        // The journal is set aside first: if that fails, the staged writes stay pending (and
        // in the journal) for the next checkpoint.
        let previous = {
            let mut journal = lock(&self.journal);
            let previous = previous_journal(&journal.path);
            if journal.len > 0 {
                std::fs::rename(&journal.path, &previous)
                    .map_err(|e| StateError::io(&journal.path, e))?;
            }
            journal.file = None;
            journal.len = 0;
            previous
        };
        let staged = Arc::new(std::mem::take(&mut *lock(&self.pending)));
        *lock(&self.inflight) = Some(Arc::clone(&staged));
        let trees = self.trees.clone();
        let sled = self.db.clone();
        let path = self.path.clone();
        let inflight = Arc::clone(&self.inflight);
        let flush = std::thread::Builder::new()
            .name("razar-flush".to_owned())
            .spawn(move || {
                let failed = |detail: String| StateError::Database {
                    path: path.clone(),
                    detail,
                };
                give_sled(&trees, &staged).map_err(failed)?;
                // sled has the writes (in memory): reads find them there from now on.
                *lock(&inflight) = None;
                sled.flush()
                    .map_err(|err| failed(format!("cannot flush: {err}")))?;
                remove_if_present(&previous)
            })
            .map_err(|e| self.error(format!("cannot start the flush thread: {e}")))?;
        *lock(&self.flusher) = Some(flush);
        Ok(())
    }

    /// Waits for the background flush, if one runs, and returns its error.
    fn wait_for_flush(&self) -> Result<(), StateError> {
        let Some(flush) = lock(&self.flusher).take() else {
            return Ok(());
        };
        flush
            .join()
            .unwrap_or_else(|_| Err(self.error("the flush thread panicked".to_owned())))
    }

    /// Gives sled every staged write (each key once, one batch per tree), in memory: it
    /// reaches the disk at the next flush.
    fn apply_pending(&self) -> Result<(), StateError> {
        let pending = std::mem::take(&mut *lock(&self.pending));
        give_sled(&self.trees, &pending).map_err(|detail| self.error(detail))
    }
}

/// Applies `staged` to sled's trees (each key once, one batch per tree), in memory: it
/// reaches the disk at the next flush. The error says which tree failed.
fn give_sled(trees: &[sled::Tree; 8], staged: &Pending) -> Result<(), String> {
    let mut batches: [sled::Batch; 8] = Default::default();
    let stats = Tree::HistoryStats as usize;
    for ((tree, key), value) in staged {
        let bytes = value.bytes();
        if *tree == Tree::History as usize {
            // A ring's statistics go with it (before any written explicitly, which win).
            match stats_of(value, bytes.as_deref()) {
                Some(value) => batches[stats].insert(key.as_slice(), value),
                None => batches[stats].remove(key.as_slice()),
            }
        }
        match bytes {
            Some(value) => batches[*tree].insert(key.as_slice(), value),
            None => batches[*tree].remove(key.as_slice()),
        }
    }
    for ((tree, batch), sled_tree) in TREES.into_iter().zip(batches).zip(trees) {
        sled_tree
            .apply_batch(batch)
            .map_err(|err| format!("cannot write `{}`: {err}", tree.name()))?;
    }
    Ok(())
}

/// Why [`each_over`] stopped: sled could not be read, or the caller's function failed.
enum Scan<E> {
    Read(sled::Error),
    Stopped(E),
}

/// Calls `f` with the records of `tree` whose keys start with `prefix`, sled's overlaid with
/// `overlay` (see [`Db::overlay`]), in key order. sled's values are read in place.
fn each_over<E>(
    tree: &sled::Tree,
    overlay: &Overlay,
    prefix: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
) -> Result<(), Scan<E>> {
    let mut f = |key: &[u8], bytes: &[u8]| f(key, bytes).map_err(Scan::Stopped);
    let mut staged = overlay.iter().peekable();
    for item in tree.scan_prefix(prefix) {
        let (key, bytes) = item.map_err(Scan::Read)?;
        // Staged keys that sort before this one (new keys) come first.
        while let Some((k, v)) = staged.next_if(|(k, _)| k.as_slice() < key.as_ref()) {
            if let Some(v) = v {
                f(k, v)?;
            }
        }
        match staged.next_if(|(k, _)| k.as_slice() == key.as_ref()) {
            Some((k, Some(v))) => f(k, v)?,
            Some((_, None)) => {}
            None => f(&key, &bytes)?,
        }
    }
    for (k, v) in staged {
        if let Some(v) = v {
            f(k, v)?;
        }
    }
    Ok(())
}

impl Drop for Db {
    fn drop(&mut self) {
        self.settle_heads();
        if let Err(err) = self.wait_for_flush() {
            tracing::error!("{err}");
        }
    }
}

/// The statistics record of a staged history ring (`bytes`: as sled will hold it); `None`
/// for a removed, empty or unreadable ring.
fn stats_of(staged: &Staged, bytes: Option<&[u8]>) -> Option<Vec<u8>> {
    let stats = match staged {
        Staged::Head(head) => head.stats(),
        _ => Stored::stats_of(bytes?).ok()?,
    }?;
    Some(serde_json::to_vec(&stats).expect("history statistics serialise: plain data"))
}

/// The journal a background checkpoint set aside until sled is flushed.
fn previous_journal(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(".prev");
    PathBuf::from(name)
}

fn remove_if_present(path: &Path) -> Result<(), StateError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(StateError::io(path, err)),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Paths {
    /// The database's write-ahead journal.
    pub fn journal(&self) -> PathBuf {
        self.dir.join("db.journal")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_round_trip() {
        let mut batch = Batch::default();
        batch.put(
            Tree::Components,
            b"api",
            &serde_json::json!({"status": "ready"}),
        );
        batch.put(Tree::Runs, &7u64.to_be_bytes(), &"run");
        batch.remove(Tree::Quarantine, b"api");
        let text = batch.journal_lines();
        let ops: Vec<Op> = text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| parse_line(l).expect("parses"))
            .collect();
        assert_eq!(ops.len(), 3);
        match &ops[1] {
            Op::Put(Tree::Runs, key, value) => {
                assert_eq!(key, &7u64.to_be_bytes().to_vec());
                assert_eq!(value, b"\"run\"");
            }
            _ => panic!("second op is the run put"),
        }
        assert!(matches!(&ops[2], Op::Remove(Tree::Quarantine, key) if key == b"api"));
        assert!(
            parse_line(b"{\"op\":\"put\",\"tree\":\"nope\",\"key\":\"00\",\"value\":1}").is_none()
        );
    }

    #[test]
    fn committed_writes_are_in_the_journal_before_sled_is_flushed() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(tmp.path());
        let db = Db::open_patiently(&paths).expect("open");
        let mut batch = Batch::default();
        batch.put(Tree::Components, b"a", &1u32);
        db.commit(batch).expect("commit");
        // What a killed razar leaves: the journal, whatever sled had flushed or not.
        let other = tempfile::tempdir().expect("temp dir");
        let other_paths = Paths::new(other.path());
        std::fs::copy(paths.journal(), other_paths.journal()).expect("copy");
        let replayed = Db::open_patiently(&other_paths).expect("open copy");
        assert_eq!(
            replayed.get::<u32>(Tree::Components, b"a").expect("get"),
            Some(1)
        );
        assert_eq!(
            std::fs::metadata(other_paths.journal())
                .expect("journal")
                .len(),
            0,
            "a replayed journal is emptied once sled is flushed"
        );
        db.checkpoint().expect("checkpoint");
        assert_eq!(
            std::fs::metadata(paths.journal()).expect("journal").len(),
            0
        );
    }

    #[test]
    fn a_full_journal_is_set_aside_and_flushed_in_the_background() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(tmp.path());
        let db = Db::open_patiently(&paths).expect("open");
        let value = "x".repeat(1000);
        let mut n = 0u32;
        // Commit until a checkpoint started: the journal was renamed and begun afresh.
        while lock(&db.journal).len > 0 || n == 0 {
            let mut batch = Batch::default();
            batch.put(Tree::Components, &n.to_be_bytes(), &value);
            db.commit(batch).expect("commit");
            n += 1;
            assert!(
                u64::from(n) * 1000 < 2 * JOURNAL_CHECKPOINT,
                "no checkpoint began"
            );
        }
        // Commits go on while (or after) the flush runs.
        let mut batch = Batch::default();
        batch.put(Tree::Components, b"late", &7u32);
        db.commit(batch).expect("commit");
        db.wait_for_flush().expect("background flush");
        assert!(
            !previous_journal(&paths.journal()).exists(),
            "the flushed journal is removed"
        );
        assert_eq!(
            db.get::<String>(Tree::Components, &0u32.to_be_bytes())
                .expect("get"),
            Some(value.clone())
        );
        assert_eq!(
            db.get::<u32>(Tree::Components, b"late").expect("get"),
            Some(7)
        );
        drop(db);
        let reopened = Db::open_patiently(&paths).expect("reopen");
        assert_eq!(
            reopened.get::<u32>(Tree::Components, b"late").expect("get"),
            Some(7)
        );
        assert_eq!(
            reopened
                .get::<String>(Tree::Components, &(n - 1).to_be_bytes())
                .expect("get"),
            Some(value)
        );
    }

    #[test]
    fn a_journal_that_cannot_be_set_aside_keeps_its_writes_for_the_next_checkpoint() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(tmp.path());
        let db = Db::open_patiently(&paths).expect("open");
        // A directory where the set-aside journal goes makes the rename fail.
        let blocker = previous_journal(&paths.journal());
        std::fs::create_dir(&blocker).expect("mkdir");
        let value = "x".repeat(1000);
        let mut n = 0u32;
        let refused = loop {
            let mut batch = Batch::default();
            batch.put(Tree::Components, &n.to_be_bytes(), &value);
            n += 1;
            if let Err(err) = db.commit(batch) {
                break err;
            }
            assert!(
                u64::from(n) * 1000 < 2 * JOURNAL_CHECKPOINT,
                "no checkpoint began"
            );
        };
        assert!(refused.to_string().contains("db.journal"), "{refused}");
        // Nothing was lost: every write is still read, and reaches sled at the next checkpoint.
        for i in 0..n {
            assert_eq!(
                db.get::<String>(Tree::Components, &i.to_be_bytes())
                    .expect("get"),
                Some(value.clone())
            );
        }
        std::fs::remove_dir(&blocker).expect("rmdir");
        db.checkpoint().expect("checkpoint");
        drop(db);
        std::fs::remove_file(paths.journal()).expect("no journal to replay");
        let reopened = Db::open_patiently(&paths).expect("reopen");
        assert_eq!(
            reopened.all::<String>(Tree::Components).expect("all").len(),
            n as usize
        );
    }

    #[test]
    fn a_journal_left_by_an_unfinished_flush_is_replayed_before_the_current_one() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(tmp.path());
        // What razar killed during a background flush leaves: both journals, the older one
        // set aside, sled without their writes.
        let line = |key: &[u8], value: u32| {
            let mut batch = Batch::default();
            batch.put(Tree::Components, key, &value);
            batch.journal_lines()
        };
        let mut previous = line(b"a", 1);
        previous.extend(line(b"b", 1));
        std::fs::write(previous_journal(&paths.journal()), previous).expect("write prev");
        std::fs::write(paths.journal(), line(b"b", 2)).expect("write journal");
        let db = Db::open_patiently(&paths).expect("open");
        assert_eq!(db.get::<u32>(Tree::Components, b"a").expect("get"), Some(1));
        assert_eq!(
            db.get::<u32>(Tree::Components, b"b").expect("get"),
            Some(2),
            "the current journal is newer"
        );
        assert!(!previous_journal(&paths.journal()).exists());
        assert_eq!(
            std::fs::metadata(paths.journal()).expect("journal").len(),
            0
        );
    }

    /// Commits `key`'s history as a razar from before sample keys stored it: the ring whole,
    /// with these durations.
    fn put_whole_ring(
        db: &Db,
        key: &[u8],
        durations: impl IntoIterator<Item = u64>,
    ) -> super::super::history::Ring {
        let mut ring = super::super::history::Ring::new("h".into());
        for ms in durations {
            ring.push(entry(ms).sample);
        }
        let mut batch = Batch::default();
        batch.put(Tree::History, key, &ring);
        db.commit(batch).expect("commit");
        ring
    }

    /// Commits one history sample for `key`.
    fn add_sample(db: &Db, key: &[u8], entry: SampleEntry) {
        let mut batch = Batch::default();
        batch.sample(key, entry);
        db.commit(batch).expect("commit");
    }

    fn entry(ms: u64) -> SampleEntry {
        SampleEntry {
            command_hash: "h".into(),
            seq: None,
            logged: None,
            sample: super::super::history::Sample {
                at: format!("2025-01-01T00:00:00.{ms:03}Z"),
                run_id: Some("r".into()),
                attempt: 1,
                duration_ms: ms,
                outcome: super::super::history::Outcome::Completed,
            },
        }
    }

    #[test]
    fn every_record_is_sleds_overlaid_with_the_staged_ones_in_key_order() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(tmp.path());
        let db = Db::open_patiently(&paths).expect("open");
        let mut batch = Batch::default();
        for (key, value) in [(b"a", 1u32), (b"c", 3), (b"e", 5)] {
            batch.put(Tree::Components, key, &value);
        }
        db.commit(batch).expect("commit");
        db.checkpoint().expect("checkpoint");
        let mut batch = Batch::default();
        batch.put(Tree::Components, b"b", &2u32);
        batch.remove(Tree::Components, b"c");
        batch.put(Tree::Components, b"e", &50u32);
        batch.put(Tree::Components, b"f", &6u32);
        batch.put(Tree::Runs, b"a", &0u32);
        db.commit(batch).expect("commit");
        let all = db.all::<u32>(Tree::Components).expect("all");
        let expected: Vec<(Vec<u8>, u32)> = [(b"a", 1), (b"b", 2), (b"e", 50), (b"f", 6)]
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v))
            .collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn writes_in_flight_to_sled_are_read_and_built_on() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(tmp.path());
        let db = Db::open_patiently(&paths).expect("open");
        for ms in 1..=3 {
            let mut batch = Batch::default();
            batch.sample(b"t", entry(ms));
            batch.put(Tree::Components, b"c", &ms);
            db.commit(batch).expect("commit");
        }
        // What a background checkpoint holds while its thread has not given sled the writes
        // yet: nothing pending, everything in flight, sled without it.
        let staged = std::mem::take(&mut *lock(&db.pending));
        *lock(&db.inflight) = Some(Arc::new(staged));
        assert_eq!(db.get::<u64>(Tree::Components, b"c").expect("get"), Some(3));
        let all = db.all::<u64>(Tree::Components).expect("all");
        assert_eq!(all, vec![(b"c".to_vec(), 3)]);
        add_sample(&db, b"t", entry(4));
        let ring = db.ring(b"t").expect("get").expect("ring");
        let durations: Vec<u64> = ring.samples.iter().map(|s| s.duration_ms).collect();
        assert_eq!(
            durations,
            [1, 2, 3, 4],
            "the new sample extends the ring in flight"
        );
    }

    #[test]
    fn a_sample_journals_only_itself_and_replays_once() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(tmp.path());
        let db = Db::open_patiently(&paths).expect("open");
        for ms in 0..60 {
            add_sample(&db, b"t", entry(ms));
        }
        let journal = std::fs::read(paths.journal()).expect("journal");
        let lines: Vec<&[u8]> = journal
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 60);
        assert!(
            lines.iter().all(|l| l.len() < 300),
            "each line holds one sample, not the ring"
        );
        let ring = db.ring(b"t").expect("get").expect("ring");
        assert_eq!(ring.samples.len(), 60);

        // Killed after the checkpoint reached sled but before the journal was emptied: the
        // replay must not count those attempts twice.
        db.checkpoint().expect("checkpoint");
        std::fs::write(paths.journal(), &journal).expect("restore journal");
        let mut batch = Batch::default();
        batch.sample(b"t", entry(60));
        let mut text = journal.clone();
        text.extend_from_slice(&batch.journal_lines());
        std::fs::write(paths.journal(), &text).expect("journal");
        drop(db);
        let db = Db::open_patiently(&paths).expect("reopen");
        let ring = db.ring(b"t").expect("get").expect("ring");
        assert_eq!(ring.samples.len(), 61);
        assert_eq!(ring.samples.back().map(|s| s.duration_ms), Some(60));
        db.checkpoint().expect("checkpoint");
        let numbers: Vec<u64> = logged(&db).iter().map(|(n, _, _)| *n).collect();
        assert_eq!(
            numbers,
            (0..61).collect::<Vec<u64>>(),
            "each sample once, under the number it was journalled with"
        );

        // A changed command starts the ring afresh, in the journal as in memory.
        let mut changed = entry(61);
        changed.command_hash = "other".into();
        add_sample(&db, b"t", changed);
        drop(db);
        let journal = std::fs::read(paths.journal()).expect("journal");
        let other = tempfile::tempdir().expect("temp dir");
        let other_paths = Paths::new(other.path());
        std::fs::write(other_paths.journal(), &journal).expect("copy");
        let db = Db::open_patiently(&other_paths).expect("open copy");
        let ring = db.ring(b"t").expect("get").expect("ring");
        assert_eq!(
            (ring.command_hash.as_str(), ring.samples.len()),
            ("other", 1)
        );
    }

    /// The `history_log` keys in sled, as numbers, and whose samples they hold.
    fn logged(db: &Db) -> Vec<(u64, String, u64)> {
        db.tree(Tree::HistoryLog)
            .iter()
            .map(|entry| {
                let (key, value) = entry.expect("read");
                let number = u64::from_be_bytes(key.as_ref().try_into().expect("8 bytes"));
                let sample: LoggedSample = serde_json::from_slice(&value).expect("sample");
                (number, sample.component, sample.seq)
            })
            .collect()
    }

    #[test]
    fn a_ring_keeps_its_last_hundred_samples_in_the_log_a_boots_samples_side_by_side() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(tmp.path());
        let db = Db::open_patiently(&paths).expect("open");
        // Two components sampled in turn, as a boot does.
        for ms in 0..250 {
            for name in [b"t", b"u"] {
                add_sample(&db, name, entry(ms));
            }
        }
        db.checkpoint().expect("checkpoint");
        let ring = db.ring(b"t").expect("get").expect("ring");
        let durations: Vec<u64> = ring.samples.iter().map(|s| s.duration_ms).collect();
        assert_eq!(durations, (150..250).collect::<Vec<u64>>());
        // Numbered in commit order: the samples kept are the last 200 numbers, the two rings
        // interleaved; the ones the rings dropped are removed.
        let log = logged(&db);
        assert_eq!(
            log.iter().map(|(n, _, _)| *n).collect::<Vec<_>>(),
            (300..500).collect::<Vec<u64>>()
        );
        assert_eq!(log[0], (300, "t".to_owned(), 150));
        assert_eq!(log[1], (301, "u".to_owned(), 150));
        assert!(db.tree(Tree::HistorySamples).is_empty());
        let head = db.history_bytes(b"t").expect("get").expect("head");
        assert!(
            head.len() < 2048,
            "the head holds durations and sample numbers, not samples: {} bytes",
            head.len()
        );
        assert_eq!(
            db.get::<super::super::HistoryStats>(Tree::HistoryStats, b"t")
                .expect("get"),
            ring.stats(),
            "the statistics tree follows the head"
        );

        // A changed command starts afresh and removes the old command's samples.
        let mut changed = entry(7);
        changed.command_hash = "other".into();
        add_sample(&db, b"t", changed);
        db.checkpoint().expect("checkpoint");
        let ring = db.ring(b"t").expect("get").expect("ring");
        assert_eq!(
            (ring.command_hash.as_str(), ring.samples.len()),
            ("other", 1)
        );
        let log = logged(&db);
        assert_eq!(log.iter().filter(|(_, c, _)| c == "t").count(), 1);
        assert_eq!(log.iter().filter(|(_, c, _)| c == "u").count(), 100);
    }

    #[test]
    fn a_ring_stored_before_the_log_moves_into_it_as_it_goes_on() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(tmp.path());
        let db = Db::open_patiently(&paths).expect("open");
        // A full ring from before the log: converted at its next sample, its 100 samples
        // under `history_samples`.
        put_whole_ring(&db, b"t", 0..100);
        db.checkpoint().expect("checkpoint");
        let durations = |db: &Db| -> Vec<u64> {
            let ring = db.ring(b"t").expect("get").expect("ring");
            ring.samples.iter().map(|s| s.duration_ms).collect()
        };
        for ms in 100..150 {
            add_sample(&db, b"t", entry(ms));
        }
        db.checkpoint().expect("checkpoint");
        assert_eq!(durations(&db), (50..150).collect::<Vec<u64>>());
        assert_eq!(
            db.tree(Tree::HistorySamples).len(),
            50,
            "the oldest left first"
        );
        assert_eq!(db.tree(Tree::HistoryLog).len(), 50);

        for ms in 150..260 {
            add_sample(&db, b"t", entry(ms));
        }
        db.checkpoint().expect("checkpoint");
        assert_eq!(durations(&db), (160..260).collect::<Vec<u64>>());
        assert!(db.tree(Tree::HistorySamples).is_empty());
        assert_eq!(db.tree(Tree::HistoryLog).len(), 100);

        // A command change with samples in both places (in sled) removes them all.
        let tmp = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(tmp.path());
        let db = Db::open_patiently(&paths).expect("open");
        put_whole_ring(&db, b"t", 0..100);
        for ms in 100..110 {
            add_sample(&db, b"t", entry(ms));
        }
        db.checkpoint().expect("checkpoint");
        assert_eq!(db.tree(Tree::HistorySamples).len(), 90);
        assert_eq!(db.tree(Tree::HistoryLog).len(), 10);
        let mut changed = entry(7);
        changed.command_hash = "other".into();
        add_sample(&db, b"t", changed);
        db.checkpoint().expect("checkpoint");
        assert_eq!(durations(&db), [7]);
        assert!(db.tree(Tree::HistorySamples).is_empty());
        assert_eq!(db.tree(Tree::HistoryLog).len(), 1);
    }

    #[test]
    fn a_ring_in_the_whole_ring_format_is_converted_at_its_next_sample() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(tmp.path());
        let db = Db::open_patiently(&paths).expect("open");
        // What a razar from before sample keys left: the ring whole under its name.
        let legacy = put_whole_ring(&db, b"t", [30, 10, 20]);
        db.checkpoint().expect("checkpoint");
        assert_eq!(
            db.ring_stats(b"t").expect("stats"),
            legacy.stats(),
            "read as it is until its next sample"
        );

        add_sample(&db, b"t", entry(40));
        db.checkpoint().expect("checkpoint");
        let mut expected = legacy.clone();
        expected.push(entry(40).sample);
        assert_eq!(db.ring(b"t").expect("get"), Some(expected.clone()));
        assert_eq!(db.ring_stats(b"t").expect("stats"), expected.stats());
        assert_eq!(
            db.tree(Tree::HistorySamples).len(),
            3,
            "the converted samples"
        );
        assert_eq!(db.tree(Tree::HistoryLog).len(), 1, "the new one");
        assert!(matches!(
            Stored::parse(&db.history_bytes(b"t").expect("get").expect("head")),
            Ok(Stored::Head(Head {
                first: 0,
                next: 4,
                ..
            }))
        ));

        // A journal from before sequence numbers, replayed over it: the sample the ring
        // keeps already is not counted twice, the new one is.
        let mut batch = Batch::default();
        batch.sample(b"t", entry(10));
        batch.sample(b"t", entry(50));
        let text = batch.journal_lines();
        assert!(!String::from_utf8_lossy(&text).contains("\"seq\""));
        drop(db);
        std::fs::write(paths.journal(), &text).expect("journal");
        let db = Db::open_patiently(&paths).expect("reopen");
        expected.push(entry(50).sample);
        assert_eq!(db.ring(b"t").expect("get"), Some(expected));
    }

    /// A database in `dir` whose rings `t` and `u` hold samples of 1, 2 and 3 ms, all in
    /// sled, opened again.
    fn two_rings_reopened(dir: &Path) -> Db {
        let paths = Paths::new(dir);
        {
            let db = Db::open_patiently(&paths).expect("open");
            for ms in [1, 2, 3] {
                let mut batch = Batch::default();
                batch.sample(b"t", entry(ms));
                batch.sample(b"u", entry(ms));
                db.commit(batch).expect("commit");
            }
            db.checkpoint().expect("checkpoint");
        }
        Db::open_patiently(&paths).expect("reopen")
    }

    /// The durations of the samples the ring of `key` keeps, oldest first.
    fn durations(db: &Db, key: &[u8]) -> Vec<u64> {
        let ring = db.ring(key).expect("get").expect("ring");
        ring.samples.iter().map(|s| s.duration_ms).collect()
    }

    #[test]
    fn heads_kept_at_open_serve_the_next_sample_until_their_key_is_written() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let db = two_rings_reopened(tmp.path());
        let stats = db.all_history_stats(true).expect("stats");
        assert_eq!(stats.len(), 2);
        assert_eq!(lock(&db.clean).len(), 2, "both heads kept");

        add_sample(&db, b"t", entry(4));
        assert!(!lock(&db.clean).contains_key(b"t".as_slice()), "taken");
        assert_eq!(durations(&db, b"t"), [1, 2, 3, 4]);

        // A ring written as a whole replaces the kept head: the next sample builds on it.
        put_whole_ring(&db, b"u", [9]);
        db.checkpoint().expect("checkpoint");
        add_sample(&db, b"u", entry(10));
        assert_eq!(durations(&db, b"u"), [9, 10]);
    }

    #[test]
    fn heads_read_in_the_background_serve_the_next_sample_and_never_outlive_a_write() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let db = two_rings_reopened(tmp.path());
        db.keep_heads_in_background().expect("reader started");

        // A write to history waits for the reader first: the head it read for `u` is gone
        // with the write, and cannot come back later.
        put_whole_ring(&db, b"u", [9]);
        assert!(lock(&db.heads_reader).is_none(), "joined by the write");
        assert!(lock(&db.clean).contains_key(b"t".as_slice()), "kept");
        assert!(!lock(&db.clean).contains_key(b"u".as_slice()), "dropped");
        db.checkpoint().expect("checkpoint");

        add_sample(&db, b"t", entry(4));
        assert!(!lock(&db.clean).contains_key(b"t".as_slice()), "taken");
        assert_eq!(durations(&db, b"t"), [1, 2, 3, 4]);
        add_sample(&db, b"u", entry(10));
        assert_eq!(durations(&db, b"u"), [9, 10]);
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_a_damaged_one_kept_aside() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(tmp.path());
        let mut batch = Batch::default();
        batch.put(Tree::Meta, b"x", &5u32);
        let mut text = batch.journal_lines();
        text.extend_from_slice(b"{\"op\":\"put\",\"tree\":\"meta\",\"key\":\"79\",\"val");
        std::fs::write(paths.journal(), &text).expect("write");
        let db = Db::open_patiently(&paths).expect("open");
        assert_eq!(db.get::<u32>(Tree::Meta, b"x").expect("get"), Some(5));
        assert_eq!(db.get::<u32>(Tree::Meta, b"y").expect("get"), None);
        drop(db);

        let tmp = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(tmp.path());
        let mut text = batch.journal_lines();
        text.extend_from_slice(b"garbage\n");
        std::fs::write(paths.journal(), &text).expect("write");
        let db = Db::open_patiently(&paths).expect("open");
        assert_eq!(db.get::<u32>(Tree::Meta, b"x").expect("get"), Some(5));
        let kept = std::fs::read_dir(tmp.path())
            .expect("list")
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("db.journal.damaged-")
            });
        assert!(kept, "the damaged journal is kept for inspection");
    }
}
