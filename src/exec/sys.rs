//! The operating-system seam of the executor: process groups, signals, `/proc` and pidfds.
//!
//! Everything here is Linux-specific and synchronous (a few syscalls or small `/proc` reads);
//! the rest of the executor calls these functions and never `libc` directly. Nothing here
//! decides *when* to signal or kill: that is the scheduler's job.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::event::ExitInfo;

/// What razar needs from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// One-letter state (`R`, `S`, `Z`, …).
    pub state: char,
    pub pgrp: i32,
    /// Start time in clock ticks since boot (field 22): with the pid, a process identity that
    /// survives pid reuse.
    pub start_time: u64,
}

impl ProcStat {
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Parses the text of `/proc/PID/stat`. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted from its last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // The first field after the name is field 3 (state), so field N is the (N - 3)th.
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    let start_time = fields.nth(16)?.parse().ok()?;
    Some(ProcStat {
        state,
        pgrp,
        start_time,
    })
}

/// The stat of a live (or zombie) process; `None` once it is gone.
///
/// Read into a stack buffer with as few syscalls as the kernel allows (usually one `read`):
/// the executor reads it for every process it spawns.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    // The line is at most ~52 numbers and a 16-byte name: 1 KiB is ample.
    let mut buf = [0u8; 1024];
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                // The kernel writes the whole line at once; its newline ends it.
                if buf[len - 1] == b'\n' {
                    break;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    parse_stat(std::str::from_utf8(&buf[..len]).ok()?)
}

/// The boot clock (`CLOCK_BOOTTIME`, a vDSO read, no syscall) in nanoseconds.
pub fn boottime_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// How far from a tick boundary both readings must be in [`start_time_between`].
const TICK_MARGIN_NS: u64 = 50_000;

/// The start time `/proc/PID/stat` gives (field 22) for a process forked between two
/// [`boottime_ns`] readings, when it is certain without reading `/proc`.
///
/// The kernel stamps a new process with the boot clock at fork and `/proc` shows that stamp
/// in clock ticks (`sysconf(_SC_CLK_TCK)`, 100 per second on Linux), rounded down. When both
/// readings, widened by a small margin, fall in the same tick, the stamp between them does
/// too, so the tick is known: the executor skips opening `/proc` for ~97% of its spawns.
/// `None` when the readings straddle a tick boundary (read `/proc` then).
pub fn start_time_between(before_ns: u64, after_ns: u64) -> Option<u64> {
    let tick_ns = 1_000_000_000 / clock_ticks_per_second()?;
    let first = before_ns.checked_sub(TICK_MARGIN_NS)? / tick_ns;
    let last = after_ns.checked_add(TICK_MARGIN_NS)? / tick_ns;
    (after_ns >= before_ns && first == last).then_some(first)
}

/// `sysconf(_SC_CLK_TCK)`: the unit of `/proc`'s process times.
fn clock_ticks_per_second() -> Option<u64> {
    static TICKS: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        u64::try_from(ticks)
            .ok()
            .filter(|&t| t > 0 && 1_000_000_000 % t == 0)
    })
}

/// Whether `pid` is still the process that was started at `start_time` (pids are reused).
pub fn same_process(pid: u32, start_time: u64) -> bool {
    proc_stat(pid).is_some_and(|s| !s.is_zombie() && s.start_time == start_time)
}

/// Maps a signal name (`SIGTERM`, `TERM`, `sigint`, or a number) to its number.
pub fn signal_number(name: &str) -> Option<i32> {
    let upper = name.trim().to_ascii_uppercase();
    if let Ok(n) = upper.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    Some(match bare {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        "PWR" => libc::SIGPWR,
        _ => return None,
    })
}

/// Sends `signal` to every process of group `pgid`. A group that no longer exists is not an
/// error (it already stopped).
pub fn signal_group(pgid: u32, signal: i32) -> io::Result<()> {
    let Ok(pgid) = i32::try_from(pgid) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // pgid 0 or 1 would address our own group or init's: never a component's.
    if pgid <= 1 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(-pgid, signal) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Sends `signal` to one process; gone is not an error.
pub fn signal_process(pid: u32, signal: i32) -> io::Result<()> {
    let Ok(pid) = i32::try_from(pid) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    if pid <= 1 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Whether a process with this pid exists (zombies included).
pub fn process_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether any live (non-zombie) process is left in group `pgid`.
///
/// `kill(-pgid, 0)` answers "no" cheaply in the common case; when it says "yes", the group
/// may hold only zombies waiting for a parent that does not reap them (orphans reparented to
/// an init that does not wait), so `/proc` decides.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(id) = i32::try_from(pgid) else {
        return false;
    };
    if id <= 1 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(-id, 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    !group_members(pgid).is_empty()
}

/// Live (non-zombie) processes of group `pgid`, from `/proc`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(pgid) = i32::try_from(pgid) else {
        return Vec::new();
    };
    proc_pids()
        .into_iter()
        .filter(|&pid| proc_stat(pid).is_some_and(|s| s.pgrp == pgid && !s.is_zombie()))
        .collect()
}

/// Every pid in `/proc`.
pub fn proc_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// A process started by razar for some state directory, found through its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub pid: u32,
    pub pgrp: i32,
    pub component: String,
}

/// Live processes whose environment says they belong to a component of `state_dir`
/// (`RAZAR_STATE_DIR` and `RAZAR_COMPONENT`, set by razar on every component): what an
/// earlier run left running, including daemons that left their process group.
pub fn tagged_processes(state_dir: &Path) -> Vec<Tagged> {
    let want_dir = format!("RAZAR_STATE_DIR={}", state_dir.display());
    let own = std::process::id();
    let mut found = Vec::new();
    for pid in proc_pids() {
        if pid == own {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let mut in_dir = false;
        let mut component = None;
        for var in environ.split(|&b| b == 0) {
            if var == want_dir.as_bytes() {
                in_dir = true;
            } else if let Some(name) = var.strip_prefix(b"RAZAR_COMPONENT=") {
                component = Some(String::from_utf8_lossy(name).into_owned());
            }
        }
        if let (true, Some(component)) = (in_dir, component)
            && let Some(stat) = proc_stat(pid)
            && !stat.is_zombie()
        {
            found.push(Tagged {
                pid,
                pgrp: stat.pgrp,
                component,
            });
        }
    }
    found.sort_by_key(|t| t.pid);
    found
}

/// Whether `pid` runs with a `RAZAR_STATE_DIR` other than `state_dir`: a process of another
/// state directory's stack (one copied with its records, say), never to be signalled for
/// this one. `false` when its environment cannot be read or names no state directory.
pub fn belongs_elsewhere(pid: u32, state_dir: &Path) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    use std::os::unix::ffi::OsStrExt;
    let Some(theirs) = environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"RAZAR_STATE_DIR="))
    else {
        return false;
    };
    let theirs = Path::new(std::ffi::OsStr::from_bytes(theirs));
    if theirs == state_dir {
        return false;
    }
    // The same directory may be reached by another path (a symlink).
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canonical(theirs) != canonical(state_dir)
}

/// A pidfd for `pid`: becomes readable when the process exits, whether or not razar is its
/// parent (how resumed runs supervise adopted components).
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).expect("the kernel returns descriptors that fit an int");
    // SAFETY: the descriptor was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What [`spawn`] starts, prepared by the caller: the program's path (no `PATH` search),
/// `argv` and the whole environment as `KEY=VALUE` strings.
pub struct SpawnRequest<'a> {
    pub program: &'a CStr,
    pub argv: &'a [&'a CStr],
    pub envp: &'a [&'a CStr],
    pub cwd: Option<&'a CStr>,
    /// Where the process's stdout and stderr go (stdin is `/dev/null`).
    pub output: BorrowedFd<'a>,
}

/// Starts a process in a new process group with posix_spawn(3) (glibc: `clone` with
/// `CLONE_VM | CLONE_VFORK`, the child's `exec` errors reported back), its signal mask empty
/// and SIGPIPE back to its default, as the standard library does. Returns its pid.
///
/// Unlike `std::process::Command`, the environment comes ready-made: the standard library
/// copies razar's whole environment into a map and back into C strings on every spawn,
/// which cost about 6 µs of the scheduler thread per spawn of a 2,000-task boot.
pub fn spawn(request: &SpawnRequest<'_>) -> io::Result<u32> {
    fn check(rc: libc::c_int) -> io::Result<()> {
        match rc {
            0 => Ok(()),
            err => Err(io::Error::from_raw_os_error(err)),
        }
    }
    fn pointers(strings: &[&CStr]) -> Vec<*mut libc::c_char> {
        strings
            .iter()
            .map(|s| s.as_ptr().cast_mut())
            .chain([std::ptr::null_mut()])
            .collect()
    }
    let argv = pointers(request.argv);
    let envp = pointers(request.envp);
    let output = request.output.as_raw_fd();
    // SAFETY: the file actions and attributes are initialised before use and destroyed on
    // every path; every pointer handed to posix_spawn (program, the NULL-terminated argv and
    // envp arrays, the paths) points into strings borrowed for this whole call.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut actions))?;
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        if let Err(err) = check(libc::posix_spawnattr_init(&mut attr)) {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(err);
        }
        let result = (|| {
            check(libc::posix_spawn_file_actions_addopen(
                &mut actions,
                0,
                c"/dev/null".as_ptr(),
                libc::O_RDONLY,
                0,
            ))?;
            check(libc::posix_spawn_file_actions_adddup2(
                &mut actions,
                output,
                1,
            ))?;
            check(libc::posix_spawn_file_actions_adddup2(
                &mut actions,
                output,
                2,
            ))?;
            if let Some(cwd) = request.cwd {
                check(libc::posix_spawn_file_actions_addchdir_np(
                    &mut actions,
                    cwd.as_ptr(),
                ))?;
            }
            let flags = libc::POSIX_SPAWN_SETPGROUP
                | libc::POSIX_SPAWN_SETSIGMASK
                | libc::POSIX_SPAWN_SETSIGDEF;
            check(libc::posix_spawnattr_setflags(
                &mut attr,
                flags as libc::c_short,
            ))?;
            check(libc::posix_spawnattr_setpgroup(&mut attr, 0))?;
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            check(libc::posix_spawnattr_setsigmask(&mut attr, &set))?;
            libc::sigaddset(&mut set, libc::SIGPIPE);
            check(libc::posix_spawnattr_setsigdefault(&mut attr, &set))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(
                &mut pid,
                request.program.as_ptr(),
                &actions,
                &attr,
                argv.as_ptr(),
                envp.as_ptr(),
            ))?;
            Ok(u32::try_from(pid).expect("posix_spawn returns a positive pid"))
        })();
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        result
    }
}

/// How the child behind `pidfd` ended, reaping it: `None` while it still runs.
pub fn reap(pidfd: BorrowedFd<'_>) -> io::Result<Option<ExitInfo>> {
    // SAFETY: waitid(2) fills the zeroed siginfo it is given; P_PIDFD names the child by a
    // descriptor this process holds.
    let info = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        );
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        info
    };
    // SAFETY: after waitid the pid and status fields of a SIGCHLD siginfo are set (the pid
    // is 0 when WNOHANG found the child still running).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => ExitInfo {
            code: Some(status),
            signal: None,
        },
        _ => ExitInfo {
            code: None,
            signal: Some(status),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let text = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let stat = parse_stat(text).expect("well-formed stat line");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.pgrp, 4242);
        assert_eq!(stat.start_time, 987654);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_process_is_found_and_identified() {
        let me = std::process::id();
        let stat = proc_stat(me).expect("our own /proc entry exists");
        assert!(same_process(me, stat.start_time));
        assert!(!same_process(me, stat.start_time + 1));
        assert!(process_exists(me));
    }

    #[test]
    fn start_times_known_from_the_boot_clock_match_proc() {
        let mut known = 0;
        for _ in 0..200 {
            let before = boottime_ns().expect("the boot clock");
            let mut child = std::process::Command::new("true")
                .spawn()
                .expect("spawn true");
            let after = boottime_ns().expect("the boot clock");
            // Not reaped yet: /proc still has it (as a zombie once it exits).
            let stat = proc_stat(child.id()).expect("the child's /proc entry");
            if let Some(derived) = start_time_between(before, after) {
                assert_eq!(derived, stat.start_time, "before {before} after {after}");
                known += 1;
            }
            child.wait().expect("reap true");
        }
        // A spawn takes well under a millisecond, a tick is 10 ms: most land inside one.
        assert!(known > 100, "only {known} of 200 start times were known");
    }

    #[test]
    fn readings_across_a_tick_boundary_give_no_start_time() {
        let tick = 1_000_000_000 / clock_ticks_per_second().expect("clock ticks");
        assert_eq!(
            start_time_between(5 * tick + 1_000_000, 5 * tick + 2_000_000),
            Some(5)
        );
        assert_eq!(
            start_time_between(6 * tick - 10_000, 6 * tick + 10_000),
            None
        );
        assert_eq!(
            start_time_between(6 * tick - 10_000, 6 * tick - 5_000),
            None
        );
        assert_eq!(start_time_between(6 * tick + 5_000, 6 * tick + 9_000), None);
        assert_eq!(start_time_between(7 * tick, 6 * tick), None);
    }

    #[test]
    fn signal_names_and_numbers() {
        assert_eq!(signal_number("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("int"), Some(libc::SIGINT));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("SIGNOPE"), None);
        assert_eq!(signal_number("0"), None);
    }

    #[test]
    fn refuses_to_signal_our_own_group_or_init() {
        assert!(signal_group(0, 0).is_err());
        assert!(signal_group(1, 0).is_err());
        assert!(signal_process(1, 0).is_err());
    }
}
