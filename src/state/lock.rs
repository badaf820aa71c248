//! The apply lock: one writer per state directory.
//!
//! `<state_dir>/razar.lock` is locked with `flock(LOCK_EX)`, which the kernel releases when the
//! holder dies, so a lock file left by a killed razar never blocks the next apply. The file
//! also names the holder (`pid start_time`, then `compact`, `release` or `down` for those
//! commands) for the
//! refusal message and for readers, which never hold the lock (they would block an apply that
//! starts at that moment): a reader trusts the named pid only while that exact process (pid and
//! start time) is alive and the file is locked, which it tries with a shared lock for an
//! instant (an apply starting then finds its lock refused with no holder named, and retries).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Paths, StateError, proc};

/// The process holding a state directory's apply lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub start_time: Option<u64>,
    pub role: Role,
}

/// What the process holding the lock is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `razar apply` (or `razar bench`, which boots the stack too).
    Apply,
    /// `razar compact`, rewriting the database: it runs nothing, and finishes on its own.
    Compact,
    /// `razar quarantine release`, updating the state for a moment.
    Release,
    /// `razar down` with no apply running, stopping what an earlier run left.
    Down,
}

impl Role {
    /// The word after `pid start_time` in the lock file (none for an apply).
    fn word(self) -> Option<&'static str> {
        match self {
            Role::Apply => None,
            Role::Compact => Some("compact"),
            Role::Release => Some("release"),
            Role::Down => Some("down"),
        }
    }

    fn from_word(word: Option<&str>) -> Role {
        match word {
            Some("compact") => Role::Compact,
            Some("release") => Role::Release,
            Some("down") => Role::Down,
            _ => Role::Apply,
        }
    }

    /// What a holder in this role is doing, for messages: `razar compact is rewriting the
    /// database`.
    pub fn doing(self) -> &'static str {
        match self {
            Role::Apply => "razar apply is running",
            Role::Compact => "razar compact is rewriting the database",
            Role::Release => "razar quarantine release is updating the state",
            Role::Down => "razar down is stopping what runs",
        }
    }
}

/// How long a refused lock is retried while no live holder is named in the file.
const HOLDER_PATIENCE: Duration = Duration::from_secs(1);

/// Held for as long as a [`Store`](super::Store) is open.
#[derive(Debug)]
pub(crate) struct ApplyLock {
    file: File,
    path: PathBuf,
}

impl ApplyLock {
    /// Takes the lock of `paths.dir` (which must exist) for `role`, or says who holds it.
    pub(crate) fn acquire(paths: &Paths, role: Role) -> Result<ApplyLock, StateError> {
        let path = paths.lock();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StateError::io(&path, e))?;
        // A refused flock with nobody named in the file is transient: a holder that locked an
        // instant ago and has not written its pid yet, one that is releasing (it empties the
        // file first), or a child forked by a holder in the instant before its `exec` closes the
        // inherited descriptor. Keep trying for a moment; refuse as soon as a live holder is
        // named.
        let deadline = Instant::now() + HOLDER_PATIENCE;
        loop {
            // SAFETY: flock on a file descriptor this function owns.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(StateError::io(&path, err));
            }
            let holder = read_holder(&path);
            if holder.is_some() || Instant::now() >= deadline {
                return Err(StateError::Locked {
                    dir: paths.dir.clone(),
                    pid: holder.map(|h| h.pid),
                    role: holder.map_or(Role::Apply, |h| h.role),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let me = std::process::id();
        let start = proc::start_time(me);
        // Razars that know no role read the first two fields: an apply's line stays as it was.
        let line = match (start, role.word()) {
            (Some(start), None) => format!("{me} {start}\n"),
            (None, None) => format!("{me}\n"),
            (Some(start), Some(word)) => format!("{me} {start} {word}\n"),
            (None, Some(word)) => format!("{me} - {word}\n"),
        };
        let write = (|| {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(line.as_bytes())
        })();
        write.map_err(|e| StateError::io(&path, e))?;
        Ok(ApplyLock { file, path })
    }
}

impl Drop for ApplyLock {
    fn drop(&mut self) {
        // Empty the file while still holding the lock, so readers stop naming this process; the
        // kernel releases the flock when the file closes just after.
        if let Err(err) = self.file.set_len(0) {
            tracing::warn!("cannot clear `{}`: {err}", self.path.display());
        }
    }
}

fn read_holder(path: &Path) -> Option<Holder> {
    let mut text = String::new();
    let mut file = File::open(path).ok()?;
    file.read_to_string(&mut text).ok()?;
    let mut fields = text.split_whitespace();
    let pid: u32 = fields.next()?.parse().ok()?;
    let start_time = fields.next().and_then(|s| s.parse().ok());
    let role = Role::from_word(fields.next());
    (proc::process_alive(pid, start_time) && locked(&file)).then_some(Holder {
        pid,
        start_time,
        role,
    })
}

/// Whether some process holds `file`'s lock. The file only names the holder: a live process
/// it names may hold nothing (the name was left by a holder that could not empty the file, or
/// the file was copied with its state directory, or written by hand), and signalling it would
/// hit a process that has nothing to do with this directory. Tried with a shared lock, which
/// an exclusive holder refuses; taken for an instant only, and only when the file names a live
/// process. Where locks cannot be tried (`flock` failing otherwise), the name is trusted.
fn locked(file: &File) -> bool {
    // SAFETY: flock on a file descriptor `file` owns; the lock (if granted) goes with it.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc != 0 {
        // Refused (EWOULDBLOCK: held), or locks cannot be tried here: trust the name.
        return true;
    }
    // SAFETY: as above; releases the shared lock this call just took.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
    false
}

/// The live process holding the apply lock of `dir`, if any. Never creates or locks anything.
pub fn holder(dir: &Path) -> Option<Holder> {
    read_holder(&Paths::new(dir).lock())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(dir.path());
        let first = ApplyLock::acquire(&paths, Role::Apply).expect("first lock");
        assert_eq!(holder(dir.path()).map(|h| h.pid), Some(std::process::id()));
        // flock locks belong to open file descriptions: a second open in the same process
        // conflicts just as another process would.
        match ApplyLock::acquire(&paths, Role::Apply) {
            Err(StateError::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        assert_eq!(holder(dir.path()), None);
        let again = ApplyLock::acquire(&paths, Role::Apply).expect("lock is free after release");
        drop(again);
    }

    #[test]
    fn each_role_is_named_in_the_file_and_in_the_refusal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(dir.path());
        for (role, says) in [
            (
                Role::Release,
                "razar quarantine release is updating the state",
            ),
            (Role::Down, "razar down is stopping what runs"),
            (Role::Compact, "razar compact is rewriting the database"),
        ] {
            let lock = ApplyLock::acquire(&paths, role).expect("lock");
            assert_eq!(holder(dir.path()).map(|h| h.role), Some(role));
            let refused = ApplyLock::acquire(&paths, Role::Apply).expect_err("held");
            assert!(refused.to_string().contains(says), "{refused}");
            drop(lock);
        }
    }

    #[test]
    fn a_live_process_named_in_the_file_without_the_lock_is_no_holder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(dir.path());
        let me = std::process::id();
        let line = format!("{me} {}\n", proc::start_time(me).expect("start time"));
        std::fs::write(paths.lock(), &line).expect("write");
        assert_eq!(holder(dir.path()), None);
        let lock = ApplyLock::acquire(&paths, Role::Apply).expect("lock");
        assert_eq!(holder(dir.path()).map(|h| h.pid), Some(me));
        drop(lock);
    }

    #[test]
    fn a_compaction_names_itself_as_the_holder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(dir.path());
        let lock = ApplyLock::acquire(&paths, Role::Compact).expect("lock");
        let named = holder(dir.path()).expect("held");
        assert_eq!((named.pid, named.role), (std::process::id(), Role::Compact));
        assert!(named.start_time.is_some());
        let refused = ApplyLock::acquire(&paths, Role::Apply).expect_err("held");
        assert!(
            matches!(
                refused,
                StateError::Locked {
                    role: Role::Compact,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert!(refused.to_string().contains("razar compact"), "{refused}");
        drop(lock);
        // An apply's line is what razars before roles wrote.
        let lock = ApplyLock::acquire(&paths, Role::Apply).expect("lock");
        let line = std::fs::read_to_string(paths.lock()).expect("read");
        assert_eq!(line.split_whitespace().count(), 2, "{line}");
        assert_eq!(holder(dir.path()).map(|h| h.role), Some(Role::Apply));
        drop(lock);
    }

    #[test]
    fn a_lock_held_by_an_unnamed_process_for_a_moment_is_waited_for() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(dir.path());
        let first = ApplyLock::acquire(&paths, Role::Apply).expect("first lock");
        // What a fork in the holder leaves for an instant: the lock held, the file emptied.
        std::fs::write(paths.lock(), "").expect("empty the file");
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(first);
        });
        let second =
            ApplyLock::acquire(&paths, Role::Apply).expect("acquired once the holder let go");
        release.join().expect("release thread");
        drop(second);
    }

    #[test]
    fn a_stale_lock_file_of_a_dead_process_is_ignored() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(dir.path());
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("`true` runs");
        let dead = child.id();
        child.wait().expect("child exits");
        std::fs::write(paths.lock(), format!("{dead} 12345\n")).expect("write stale lock");
        assert_eq!(holder(dir.path()), None, "a dead pid holds nothing");
        // A live pid with the wrong start time is a reused pid, not the holder.
        let me = std::process::id();
        std::fs::write(paths.lock(), format!("{me} 1\n")).expect("write reused pid");
        assert_eq!(holder(dir.path()), None);
        let lock = ApplyLock::acquire(&paths, Role::Apply).expect("stale file does not block");
        assert_eq!(holder(dir.path()).map(|h| h.pid), Some(me));
        drop(lock);
    }
}
