//! `razar compact`: rewrites a state directory's database without the space sled leaves
//! behind. sled never gives back the log space its rewritten pages held, so the database grows
//! by more than the live data on every boot (see docs/state.md, "Disk use").
//!
//! The live entries are copied into `<state_dir>/db.compacting`, flushed and checked entry by
//! entry against the original; then the two directories trade places in one `renameat2` with
//! `RENAME_EXCHANGE`, and the old one (now `db.compacting`) is removed. A crash at any moment
//! leaves a whole database at `db`: before the exchange the original, after it the checked
//! copy. A `db.compacting` left by an interrupted compaction is never the live database; the
//! next compaction removes it.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::lock::{ApplyLock, Role};
use super::store::open_database;
use super::{Paths, StateError};

/// The database's size on disk (allocated blocks) before and after a compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub before: u64,
    pub after: u64,
}

/// Compacts the database of `state_dir`. Takes the apply lock (refused while an apply runs,
/// as a second apply is), replays the journal and checkpoints, so the copy holds everything;
/// refuses a database written by a newer razar.
pub fn compact(state_dir: &Path) -> Result<Compacted, StateError> {
    let paths = Paths::new(state_dir);
    paths.dir_exists()?;
    let live = paths.db();
    if !live.is_dir() {
        return Err(StateError::NoDatabase { path: live });
    }
    let _lock = ApplyLock::acquire(&paths, Role::Compact)?;
    let spare = paths.dir.join("db.compacting");
    remove_dir_if_present(&spare)?;
    let before = disk_usage(&live)?;
    {
        let (db, _) = open_database(&paths)?;
        db.checkpoint()?;
        if let Err(err) = db.copy_into(&spare) {
            drop(db);
            let _ = std::fs::remove_dir_all(&spare);
            return Err(err);
        }
        // Dropping the handle closes sled: the directories can trade places.
    }
    if let Err(err) = exchange(&live, &spare) {
        let _ = std::fs::remove_dir_all(&spare);
        return Err(StateError::Compact {
            path: live,
            detail: format!("the checked copy cannot be swapped in ({err})"),
        });
    }
    // Either side of the swap is a whole database: an unsynced swap that a power loss undoes
    // leaves the original, which is only a warning.
    if let Err(err) = sync_dir(&paths.dir) {
        tracing::warn!("the compacted database is in place, but {err}");
    }
    if let Err(err) = std::fs::remove_dir_all(&spare) {
        tracing::warn!(
            "the database was compacted, but its old copy `{}` could not be removed: {err}",
            spare.display()
        );
    }
    Ok(Compacted {
        before,
        after: disk_usage(&live)?,
    })
}

/// Swaps two directories in one step.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let c = |path: &Path| {
        CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("a path with a NUL byte"))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: renameat2(2) with two NUL-terminated paths that live across the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|err| format!("`{}` could not be synced: {err}", dir.display()))
}

fn remove_dir_if_present(path: &Path) -> Result<(), StateError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(StateError::io(path, err)),
    }
}

/// Bytes allocated to the files under `dir` (what `du` counts).
fn disk_usage(dir: &Path) -> Result<u64, StateError> {
    let mut total = 0;
    let mut pending: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).map_err(|e| StateError::io(&next, e))? {
            let entry = entry.map_err(|e| StateError::io(&next, e))?;
            let meta = entry
                .metadata()
                .map_err(|e| StateError::io(&entry.path(), e))?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    Ok(total)
}
