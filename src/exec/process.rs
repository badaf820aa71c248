//! Component processes: spawn one in its own process group with its environment and log
//! file, wait for it (as its parent, or through a pidfd when a resumed run adopted it), and
//! stop a whole group: optional stop command, stop signal, grace period, SIGKILL.
//!
//! This module runs processes; it does not decide when. The scheduler (`exec::run`) calls it.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use super::event::ExitInfo;
use super::logs::Logs;
use super::sys;
use crate::plan::Step;

/// How long a group may take to disappear after SIGKILL before razar stops waiting for it
/// (a process in uninterruptible sleep cannot die sooner; razar reports it and moves on).
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Converts a std exit status.
pub fn exit_info(status: std::process::ExitStatus) -> ExitInfo {
    ExitInfo {
        code: status.code(),
        signal: status.signal(),
    }
}

/// The environment a component (and its exec probe and stop command) runs with, on top of
/// razar's own: the step's `env`; the step's `path` directories and, for a step with
/// `layer: L`, `<state_dir>/venv/L/bin` first on `PATH`, with `VIRTUAL_ENV` set to the layer's
/// environment; and `RAZAR_STATE_DIR`, `RAZAR_COMPONENT`, `RAZAR_RUN_ID` (which also let a later
/// `--resume` or `razar down` recognise the process; the step cannot override them).
pub fn environment(step: &Step, state_dir: &Path, run_id: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = step
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut front: Vec<PathBuf> = step.path.clone();
    if let Some(layer) = &step.layer {
        let venv = state_dir.join("venv").join(layer);
        let bin = venv.join("bin");
        if !front.contains(&bin) {
            front.push(bin);
        }
        env.retain(|(k, _)| k != "VIRTUAL_ENV");
        env.push(("VIRTUAL_ENV".to_owned(), venv.display().to_string()));
    }
    if !front.is_empty() {
        let inherited = step
            .env
            .get("PATH")
            .cloned()
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_owned());
        let mut path: Vec<String> = front.iter().map(|d| d.display().to_string()).collect();
        path.push(inherited);
        env.retain(|(k, _)| k != "PATH");
        env.push(("PATH".to_owned(), path.join(":")));
    }
    env.retain(|(k, _)| {
        !matches!(
            k.as_str(),
            "RAZAR_STATE_DIR" | "RAZAR_COMPONENT" | "RAZAR_RUN_ID"
        )
    });
    env.push((
        "RAZAR_STATE_DIR".to_owned(),
        state_dir.display().to_string(),
    ));
    env.push(("RAZAR_COMPONENT".to_owned(), step.name.clone()));
    env.push(("RAZAR_RUN_ID".to_owned(), run_id.to_owned()));
    env
}

/// A running component process.
#[derive(Debug)]
pub enum Proc {
    /// Spawned by this run: razar is its parent and reaps it.
    Child(tokio::process::Child),
    /// Spawned by this run through [`sys::spawn`]: razar is its parent and reaps it when its
    /// pidfd says it exited.
    Own(Own),
    /// Adopted from an earlier run: watched through a pidfd; its exit status is unknowable.
    Adopted(AsyncFd<OwnedFd>),
    /// Adopted, but the kernel could not give a pidfd (or the process is a daemon's launcher
    /// that already exited): nothing to wait for.
    Detached,
}

impl Proc {
    /// Waits for the process to end. The exit status is known only for our own children.
    pub async fn wait(&mut self) -> Option<ExitInfo> {
        match self {
            Proc::Child(child) => child.wait().await.ok().map(exit_info),
            Proc::Own(own) => own.wait().await,
            Proc::Adopted(fd) => {
                // A pidfd becomes readable once the process has exited; it stays readable.
                if let Ok(mut guard) = fd.readable().await {
                    guard.retain_ready();
                }
                None
            }
            Proc::Detached => std::future::pending().await,
        }
    }
}

/// A child started by [`sys::spawn`], watched through its pidfd.
#[derive(Debug)]
pub struct Own {
    /// `None` only once dropped.
    pidfd: Option<AsyncFd<OwnedFd>>,
    exit: Option<ExitInfo>,
}

impl Own {
    fn new(pidfd: AsyncFd<OwnedFd>) -> Own {
        Own {
            pidfd: Some(pidfd),
            exit: None,
        }
    }

    async fn wait(&mut self) -> Option<ExitInfo> {
        while self.exit.is_none() {
            let pidfd = self.pidfd.as_ref()?;
            let mut guard = pidfd.readable().await.ok()?;
            match sys::reap(pidfd.get_ref().as_fd()) {
                Ok(Some(exit)) => self.exit = Some(exit),
                Ok(None) => guard.clear_ready(),
                Err(_) => return None,
            }
        }
        self.exit
    }
}

impl Drop for Own {
    /// A child nobody waits for any more is still reaped when it ends (as tokio does for
    /// its own children), so a long supervision leaves no zombies behind.
    fn drop(&mut self) {
        if self.exit.is_some() {
            return;
        }
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        if !matches!(sys::reap(pidfd.get_ref().as_fd()), Ok(None)) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut own = Own::new(pidfd);
                own.wait().await;
            });
        }
    }
}

/// Watches a process razar is not the parent of.
pub fn adopt(pid: u32) -> Proc {
    match sys::pidfd_open(pid).and_then(watch) {
        Ok(fd) => Proc::Adopted(fd),
        Err(err) => {
            tracing::warn!(pid, %err, "cannot open a pidfd; the adopted process is not watched");
            Proc::Detached
        }
    }
}

/// Registers a pidfd with the runtime, to learn when its process exits.
fn watch(pidfd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open and
    // refers to the same pidfd for the AsyncFd's whole life.
    unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// Where programs were found on `PATH`, so each spawn execs an absolute path.
///
/// Without it the child searches `PATH` itself (`execvp`), and every directory that lacks the
/// program costs a failed `execve` while razar waits for the vfork'd child: with a long
/// `PATH` that is a noticeable part of every spawn. Only hits are kept; a program that
/// vanished is looked up again after its spawn failed.
#[derive(Debug, Default)]
pub struct Programs {
    found: HashMap<(String, String), PathBuf>,
    /// razar's own environment as `KEY=VALUE` strings, read at the first spawn.
    environ: Option<Vec<CString>>,
    /// Whether the kernel gives pidfds and reaps through them (Linux 5.4 and later), which
    /// [`sys::spawn`]'s children are watched with; without, spawns go through
    /// `tokio::process`.
    pidfds: Option<bool>,
}

impl Programs {
    /// The absolute path `program` resolves to on `path`, when it can be known in advance
    /// (a bare name on a `PATH` of absolute directories).
    pub fn resolve(&mut self, program: &str, path: &str) -> Option<PathBuf> {
        if program.contains('/') || path.split(':').any(|dir| !dir.starts_with('/')) {
            return None;
        }
        let key = (path.to_owned(), program.to_owned());
        if let Some(found) = self.found.get(&key) {
            return Some(found.clone());
        }
        use std::os::unix::fs::PermissionsExt as _;
        let found = path
            .split(':')
            .map(|dir| Path::new(dir).join(program))
            .find(|candidate| {
                std::fs::metadata(candidate)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })?;
        self.found.insert(key, found.clone());
        Some(found)
    }

    fn forget(&mut self, program: &str, path: &str) {
        self.found.remove(&(path.to_owned(), program.to_owned()));
    }

    fn pidfds(&mut self) -> bool {
        *self.pidfds.get_or_insert_with(|| {
            // pidfd_open came with Linux 5.3, waitid(P_PIDFD) with 5.4: asked about razar
            // itself (not its own child), a kernel that knows P_PIDFD says ECHILD.
            sys::pidfd_open(std::process::id()).is_ok_and(|own| {
                sys::reap(own.as_fd()).is_err_and(|err| err.raw_os_error() == Some(libc::ECHILD))
            })
        })
    }

    /// razar's environment with `env` (`KEY=VALUE` strings) laid over it, as posix_spawn
    /// takes it.
    fn environment<'a>(&'a mut self, env: &'a [CString]) -> Vec<&'a CStr> {
        let base = self.environ.get_or_insert_with(|| {
            std::env::vars_os()
                .filter_map(|(k, v)| {
                    let mut entry = k.into_vec();
                    entry.push(b'=');
                    entry.extend_from_slice(v.as_bytes());
                    CString::new(entry).ok()
                })
                .collect()
        });
        // `NAME=`: names hold no `=`, values may.
        let overridden = |entry: &CStr| {
            let bytes = entry.to_bytes();
            let name = bytes
                .split_inclusive(|&b| b == b'=')
                .next()
                .unwrap_or(bytes);
            env.iter().any(|e| e.to_bytes().starts_with(name))
        };
        let mut out: Vec<&CStr> = base
            .iter()
            .map(CString::as_c_str)
            .filter(|entry| !overridden(entry))
            .collect();
        out.extend(env.iter().map(CString::as_c_str));
        out
    }
}

/// A freshly spawned attempt.
#[derive(Debug)]
pub struct Spawned {
    pub proc: Proc,
    pub pid: u32,
    pub pgid: u32,
    pub start_time: u64,
    /// Where this attempt's output starts in the log file.
    pub log_offset: u64,
}

/// Why a spawn failed, with the log offset of the attempt (its header and the error are in
/// the log).
#[derive(Debug)]
pub struct SpawnError {
    pub message: String,
    pub log_offset: u64,
}

/// Spawns `argv` in its own process group, stdout and stderr appended to the component's log,
/// stdin from /dev/null.
pub fn spawn(
    programs: &mut Programs,
    logs: &Logs,
    name: &str,
    header: &str,
    argv: &[String],
    env: &[(String, String)],
    cwd: Option<&Path>,
) -> Result<Spawned, SpawnError> {
    let (file, log_offset) = logs.open_attempt(name, header).map_err(|err| SpawnError {
        message: format!("cannot open its log `{}`: {err}", logs.path(name).display()),
        log_offset: 0,
    })?;
    let fail = |message: String| {
        use std::io::Write as _;
        let mut file = &file;
        let _ = writeln!(file, "razar: {message}");
        SpawnError {
            message,
            log_offset,
        }
    };
    let Some(program) = argv.first().filter(|p| !p.is_empty()) else {
        return Err(fail("the command is empty".to_owned()));
    };
    let search_path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default();
    let resolved = programs.resolve(program, &search_path);
    let direct = resolved
        .clone()
        .or_else(|| program.contains('/').then(|| PathBuf::from(program)));
    if let Some(path) = direct.filter(|_| programs.pidfds())
        && let Some(prepared) = Prepared::new(&path, argv, env, cwd)
    {
        let before = sys::boottime_ns();
        let started = {
            let envp = programs.environment(&prepared.env);
            sys::spawn(&sys::SpawnRequest {
                program: &prepared.program,
                argv: &prepared
                    .argv
                    .iter()
                    .map(CString::as_c_str)
                    .collect::<Vec<_>>(),
                envp: &envp,
                cwd: prepared.cwd.as_deref(),
                output: file.as_fd(),
            })
        };
        let pid = started.map_err(|err| {
            if resolved.is_some() {
                programs.forget(program, &search_path);
            }
            let place = cwd.map_or(String::new(), |c| format!(" in `{}`", c.display()));
            fail(format!("cannot start `{program}`{place}: {err}"))
        })?;
        let after = sys::boottime_ns();
        let pidfd = sys::pidfd_open(pid).and_then(watch).map_err(|err| {
            // Not left running unwatched: it is killed and reaped at once.
            let _ = sys::signal_group(pid, libc::SIGKILL);
            // SAFETY: waitpid(2) on our own child, with no status wanted.
            unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) };
            fail(format!("cannot watch `{program}` (pid {pid}): {err}"))
        })?;
        return Ok(Spawned {
            proc: Proc::Own(Own::new(pidfd)),
            pid,
            pgid: pid,
            start_time: start_time(pid, before, after),
            log_offset,
        });
    }
    let stderr = file
        .try_clone()
        .map_err(|err| fail(format!("cannot share its log descriptor: {err}")))?;
    let mut command = match &resolved {
        Some(path) => {
            let mut command = tokio::process::Command::new(path);
            // The program still sees the name it was given as argv[0].
            command.arg0(program);
            command
        }
        None => tokio::process::Command::new(program),
    };
    command
        .args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().map_err(|err| {
            fail(format!("cannot share its log descriptor: {err}"))
        })?))
        .stderr(Stdio::from(stderr))
        .process_group(0)
        // Components outlive razar when it is killed or runs with --keep-running.
        .kill_on_drop(false);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let before = sys::boottime_ns();
    let child = command.spawn().map_err(|err| {
        if resolved.is_some() {
            programs.forget(program, &search_path);
        }
        let place = cwd.map_or(String::new(), |c| format!(" in `{}`", c.display()));
        fail(format!("cannot start `{program}`{place}: {err}"))
    })?;
    let pid = child
        .id()
        .expect("a child that was just spawned has not been reaped");
    let after = sys::boottime_ns();
    Ok(Spawned {
        proc: Proc::Child(child),
        pid,
        pgid: pid,
        start_time: start_time(pid, before, after),
        log_offset,
    })
}

/// The start time of a child spawned between two boot-clock readings: known from the clock,
/// or else from /proc (the child cannot have been reaped yet, so /proc still has it, perhaps
/// as a zombie).
fn start_time(pid: u32, before: Option<u64>, after: Option<u64>) -> u64 {
    before
        .zip(after)
        .and_then(|(before, after)| sys::start_time_between(before, after))
        .or_else(|| sys::proc_stat(pid).map(|s| s.start_time))
        .unwrap_or(0)
}

/// A spawn's strings as posix_spawn takes them: `argv[0]` the name the program was given.
struct Prepared {
    program: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: Option<CString>,
}

impl Prepared {
    /// `None` when a string holds a NUL byte (the standard library's spawn then reports it).
    fn new(
        path: &Path,
        argv: &[String],
        env: &[(String, String)],
        cwd: Option<&Path>,
    ) -> Option<Prepared> {
        Some(Prepared {
            program: CString::new(path.as_os_str().as_bytes()).ok()?,
            argv: argv
                .iter()
                .map(|arg| CString::new(arg.as_bytes()).ok())
                .collect::<Option<_>>()?,
            env: env
                .iter()
                .map(|(k, v)| CString::new(format!("{k}={v}")).ok())
                .collect::<Option<_>>()?,
            cwd: match cwd {
                Some(dir) => Some(CString::new(dir.as_os_str().as_bytes()).ok()?),
                None => None,
            },
        })
    }
}

/// How to stop one component.
#[derive(Debug, Clone)]
pub struct StopSpec {
    pub pgid: u32,
    /// Processes of the component outside its group (daemons that called setsid), found by
    /// their environment.
    pub strays: Vec<u32>,
    pub signal: i32,
    pub grace: Duration,
    /// Run first, as ABZU's `stop:` command did; its output goes to the component's log.
    pub command: Option<StopCommand>,
    /// Skip the stop command and the grace period: SIGKILL at once.
    pub kill_now: bool,
}

#[derive(Debug, Clone)]
pub struct StopCommand {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub log: PathBuf,
}

/// Stops a component: stop command, stop signal to the group, up to `grace` for it to empty,
/// then SIGKILL. `force` resolving (a second Ctrl-C) skips straight to SIGKILL. Returns whether
/// SIGKILL was needed.
pub async fn stop(spec: StopSpec, force: impl std::future::Future<Output = ()>) -> bool {
    tokio::pin!(force);
    let mut forced = spec.kill_now;
    if !forced && let Some(command) = &spec.command {
        tokio::select! {
            () = run_stop_command(command, spec.grace) => {}
            () = &mut force => forced = true,
        }
    }
    if !forced {
        let deadline = Instant::now() + spec.grace;
        let _ = sys::signal_group(spec.pgid, spec.signal);
        for &pid in &spec.strays {
            let _ = sys::signal_process(pid, spec.signal);
        }
        tokio::select! {
            () = wait_gone(&spec) => return false,
            () = tokio::time::sleep_until(deadline) => {}
            () = &mut force => {}
        }
        forced = true;
    }
    debug_assert!(forced);
    let _ = sys::signal_group(spec.pgid, libc::SIGKILL);
    for &pid in &spec.strays {
        let _ = sys::signal_process(pid, libc::SIGKILL);
    }
    if tokio::time::timeout(KILL_WAIT, wait_gone(&spec))
        .await
        .is_err()
    {
        tracing::warn!(
            pgid = spec.pgid,
            "process group still present after SIGKILL"
        );
    }
    true
}

/// Whether anything of the component is still alive.
fn alive(spec: &StopSpec) -> bool {
    sys::group_alive(spec.pgid)
        || spec
            .strays
            .iter()
            .any(|&pid| sys::proc_stat(pid).is_some_and(|s| !s.is_zombie()))
}

/// Polls until the group and strays are gone: every 1 ms at first, backing off to 50 ms.
async fn wait_gone(spec: &StopSpec) {
    let mut pause = Duration::from_millis(1);
    while alive(spec) {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

async fn run_stop_command(command: &StopCommand, limit: Duration) {
    let Some(program) = command.argv.first() else {
        return;
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&command.log);
    let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
        Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
        Err(_) => (Stdio::null(), Stdio::null()),
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&command.argv[1..])
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &command.cwd {
        cmd.current_dir(cwd);
    }
    let Ok(mut child) = cmd.spawn() else {
        tracing::warn!(command = %command.argv.join(" "), "cannot run the stop command");
        return;
    };
    let pgid = child.id();
    if tokio::time::timeout(limit, child.wait()).await.is_err()
        && let Some(pgid) = pgid
    {
        let _ = sys::signal_group(pgid, libc::SIGKILL);
        let _ = child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(script: &str) -> Vec<String> {
        vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()]
    }

    /// Spawns `argv` as attempt 1 of `name`, with razar's environment and working directory.
    fn plain(logs: &Logs, name: &str, argv: &[String]) -> Result<Spawned, SpawnError> {
        spawn(
            &mut Programs::default(),
            logs,
            name,
            "--- attempt 1",
            argv,
            &[],
            None,
        )
    }

    #[tokio::test]
    async fn spawns_in_its_own_group_with_output_in_the_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = Logs::new(dir.path(), super::super::logs::DEFAULT_MAX_BYTES);
        let env = vec![("GREETING".to_owned(), "hello".to_owned())];
        let mut spawned = spawn(
            &mut Programs::default(),
            &logs,
            "greeter",
            "--- attempt 1",
            &argv("echo $GREETING; echo oops >&2; exit 3"),
            &env,
            Some(dir.path()),
        )
        .expect("spawn");
        assert_eq!(spawned.pid, spawned.pgid);
        let exit = spawned.proc.wait().await.expect("exit status of a child");
        assert_eq!(exit.code, Some(3));
        let tail = logs.tail("greeter", spawned.log_offset, 10);
        assert_eq!(tail, vec!["hello", "oops"]);
    }

    #[tokio::test]
    async fn a_spawned_process_gets_the_environment_signals_and_stdin_it_would_from_std() {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = Logs::new(dir.path(), super::super::logs::DEFAULT_MAX_BYTES);
        let mut programs = Programs::default();
        assert!(
            programs.pidfds(),
            "this kernel gives pidfds: the direct spawn is tested"
        );
        let env = vec![
            ("GREETING".to_owned(), "hello=world".to_owned()),
            ("HOME".to_owned(), "/razar-home".to_owned()),
        ];
        // SigBlk: the blocked mask; SigIgn bit 13 (0x1000): SIGPIPE ignored. Read with
        // builtins: a shell blocks every signal for a moment around each fork, and a child
        // reading its status then would see that.
        let script = "echo \"$GREETING $HOME ${PATH:+path}\"; pwd; cat; \
                      while read -r line; do case $line in Sig[BI]*) echo \"$line\";; esac; \
                      done < /proc/$$/status; kill -TERM $$";
        let mut spawned = spawn(
            &mut programs,
            &logs,
            "env",
            "--- attempt 1",
            &argv(script),
            &env,
            Some(dir.path()),
        )
        .expect("spawn");
        assert!(matches!(spawned.proc, Proc::Own(_)));
        let exit = spawned.proc.wait().await.expect("exit status of a child");
        assert_eq!((exit.code, exit.signal), (None, Some(libc::SIGTERM)));
        assert_eq!(spawned.proc.wait().await, Some(exit), "the status is kept");
        let tail = logs.tail("env", spawned.log_offset, 10);
        assert_eq!(tail[0], "hello=world /razar-home path", "{tail:?}");
        assert_eq!(
            Path::new(&tail[1]).canonicalize().expect("cwd"),
            dir.path().canonicalize().expect("dir")
        );
        let mask = |name: &str| {
            let line = tail.iter().find(|l| l.starts_with(name)).expect(name);
            u64::from_str_radix(line.split_whitespace().nth(1).expect("mask"), 16).expect("hex")
        };
        assert_eq!(mask("SigBlk"), 0, "{tail:?}");
        assert_eq!(mask("SigIgn") & (1 << (libc::SIGPIPE - 1)), 0, "{tail:?}");
    }

    #[tokio::test]
    async fn a_child_nobody_waits_for_is_still_reaped_when_it_ends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = Logs::new(dir.path(), super::super::logs::DEFAULT_MAX_BYTES);
        let spawned = plain(&logs, "sleeper", &argv("exec sleep 30")).expect("spawn");
        assert!(matches!(spawned.proc, Proc::Own(_)));
        let pid = spawned.pid;
        drop(spawned);
        sys::signal_group(pid, libc::SIGKILL).expect("kill");
        // Gone from the process table once reaped (a zombie keeps its /proc entry).
        let deadline = Instant::now() + Duration::from_secs(10);
        while sys::proc_stat(pid).is_some() {
            assert!(Instant::now() < deadline, "pid {pid} was never reaped");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_missing_program_is_reported_in_the_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = Logs::new(dir.path(), super::super::logs::DEFAULT_MAX_BYTES);
        let err = plain(&logs, "ghost", &["/nonexistent/razar-ghost".to_owned()])
            .expect_err("cannot spawn");
        assert!(
            err.message
                .contains("cannot start `/nonexistent/razar-ghost`")
        );
        let tail = logs.tail("ghost", err.log_offset, 10);
        assert!(tail[0].contains("cannot start"), "{tail:?}");
    }

    #[tokio::test]
    async fn stop_kills_a_group_that_ignores_the_stop_signal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = Logs::new(dir.path(), super::super::logs::DEFAULT_MAX_BYTES);
        // The shell ignores TERM and so does its background child.
        let mut spawned = plain(
            &logs,
            "stubborn",
            &argv("trap '' TERM; sleep 30 & echo started; wait"),
        )
        .expect("spawn");
        let mut reader =
            super::super::logs::LineReader::new(logs.path("stubborn"), spawned.log_offset);
        while reader.read_lines().expect("read").is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let pgid = spawned.pgid;
        let started = Instant::now();
        let forced = stop(
            StopSpec {
                pgid,
                strays: Vec::new(),
                signal: libc::SIGTERM,
                grace: Duration::from_millis(300),
                command: None,
                kill_now: false,
            },
            std::future::pending(),
        )
        .await;
        assert!(forced);
        assert!(started.elapsed() >= Duration::from_millis(300));
        let exit = spawned.proc.wait().await.expect("child exit");
        assert_eq!(exit.signal, Some(libc::SIGKILL));
        assert!(!sys::group_alive(pgid));
    }

    #[tokio::test]
    async fn stop_signals_the_whole_group_and_returns_once_it_is_empty() {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = Logs::new(dir.path(), super::super::logs::DEFAULT_MAX_BYTES);
        let mut spawned =
            plain(&logs, "polite", &argv("sleep 30 & sleep 30 & wait")).expect("spawn");
        let pgid = spawned.pgid;
        let forced = stop(
            StopSpec {
                pgid,
                strays: Vec::new(),
                signal: libc::SIGTERM,
                grace: Duration::from_secs(20),
                command: None,
                kill_now: false,
            },
            std::future::pending(),
        )
        .await;
        assert!(!forced);
        assert!(
            !sys::group_alive(pgid),
            "the background sleeps got SIGTERM too"
        );
        let _ = spawned.proc.wait().await;
    }

    #[test]
    fn programs_are_found_on_path_once() {
        let mut programs = Programs::default();
        let path = "/nonexistent-razar-dir:/usr/bin:/bin";
        let found = programs.resolve("sh", path).expect("sh is installed");
        assert!(found.is_absolute() && found.ends_with("sh"));
        assert_eq!(programs.resolve("sh", path), Some(found));
        assert_eq!(
            programs.resolve("./local", path),
            None,
            "paths are not searched"
        );
        assert_eq!(
            programs.resolve("sh", "relative:/bin"),
            None,
            "cwd-dependent PATH"
        );
        assert_eq!(programs.resolve("razar-no-such-program", path), None);
    }

    #[tokio::test]
    async fn adopted_processes_are_watched_through_a_pidfd() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .expect("spawn sleep");
        let mut proc = adopt(child.id());
        assert!(matches!(proc, Proc::Adopted(_)));
        let waited = tokio::time::timeout(Duration::from_secs(10), proc.wait()).await;
        assert_eq!(waited, Ok(None), "exit seen, status unknown");
        let _ = child.wait();
    }
}
