//! Readiness probes: tcp and http in-process, exec (exit 0), and a log-line regex; and the
//! adaptive schedule they are polled on.
//!
//! Polling starts every millisecond and backs off in proportion to the time since the spawn:
//! the pause before the next check is 1/50 of the time elapsed, clamped between a floor (1 ms
//! in-process, 10 ms for exec probes, which spawn a process) and the probe's `interval`.
//! Readiness is thus detected within about 2% of the component's start-up time (and within a
//! millisecond or two for fast services) at a cost of about 35 checks per doubling of the wait.
//! When history predicts the time to ready, polling returns to the floor around that moment.
//! Probes only check; the scheduler decides what a result means.

use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::logs::LineReader;
use crate::config::address::{Target, host_port, http_url};
use crate::config::{Probe, ProbeCheck};

/// The floor of the polling pause for in-process probes (a tcp check costs about 40 µs).
const FAST_FLOOR: Duration = Duration::from_millis(1);
/// The floor for exec probes: each check spawns a process (about 1 ms of CPU).
const EXEC_FLOOR: Duration = Duration::from_millis(10);
/// The pause is this fraction of the time since the spawn (bounded detection delay).
const BACKOFF_DIVISOR: u32 = 50;

/// One probe result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    pub detail: String,
}

impl Outcome {
    fn ok(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            detail: detail.into(),
        }
    }

    fn fail(detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Where an exec probe runs and what a log probe reads.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The component's environment (exec probes run with it).
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// The component's log file and the offset where the current attempt starts.
    pub log: Option<(PathBuf, u64)>,
    /// Predicted time from spawn to ready (from history), to poll densely around it.
    pub predicted: Option<Duration>,
}

#[derive(Debug)]
enum Check {
    Tcp(Target),
    Http {
        target: Target,
        authority: String,
        path: String,
    },
    Exec {
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<PathBuf>,
    },
    Log {
        regex: Regex,
        reader: LineReader,
    },
}

/// A probe being polled for one attempt of one component.
#[derive(Debug)]
pub struct Prober {
    check: Check,
    interval: Duration,
    floor: Duration,
    spawned: Instant,
    next: Instant,
    predicted: Option<Duration>,
}

impl Prober {
    /// Prepares a probe for an attempt spawned at `spawned`. Fails on a probe that can never
    /// run (an unparsable address or regex), which `exec::check` reports before any spawn.
    pub fn new(probe: &Probe, context: Context, spawned: Instant) -> Result<Self, String> {
        let check = match &probe.check {
            ProbeCheck::Tcp(address) => Check::Tcp(host_port(address)?),
            ProbeCheck::Http(url) => {
                let (target, authority, path) = http_url(url)?;
                Check::Http {
                    target,
                    authority,
                    path,
                }
            }
            ProbeCheck::Exec(command) => {
                let argv = command.argv();
                if argv.is_empty() || argv[0].is_empty() {
                    return Err("exec probe has an empty command".to_owned());
                }
                Check::Exec {
                    argv,
                    env: context.env.clone(),
                    cwd: context.cwd.clone(),
                }
            }
            ProbeCheck::Log(pattern) => {
                let regex = Regex::new(pattern)
                    .map_err(|err| format!("log probe regex `{pattern}` is invalid: {err}"))?;
                let (path, offset) = context
                    .log
                    .clone()
                    .ok_or_else(|| "log probe without a log file".to_owned())?;
                Check::Log {
                    regex,
                    reader: LineReader::new(path, offset),
                }
            }
        };
        let floor = match check {
            Check::Exec { .. } => EXEC_FLOOR,
            _ => FAST_FLOOR,
        };
        Ok(Self {
            check,
            interval: probe.interval.max(floor),
            floor,
            spawned,
            next: spawned,
            predicted: context.predicted,
        })
    }

    /// Waits for the next scheduled check, runs it and schedules the one after. Dropping the
    /// future between checks loses nothing (the schedule is kept in `self`).
    pub async fn poll(&mut self) -> Outcome {
        tokio::time::sleep_until(self.next).await;
        let outcome = self.check_now().await;
        self.next = Instant::now() + self.pause();
        outcome
    }

    /// Runs one check at once, bounded by the per-check timeout.
    pub async fn check_now(&mut self) -> Outcome {
        let limit = self.check_timeout();
        match tokio::time::timeout(limit, run_check(&mut self.check)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::fail(format!(
                "no answer within {}",
                crate::duration::display(limit)
            )),
        }
    }

    /// How long one check may take: twice the interval, between 1 s and 30 s.
    fn check_timeout(&self) -> Duration {
        (self.interval * 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    fn pause(&self) -> Duration {
        let elapsed = self.spawned.elapsed();
        if let Some(predicted) = self.predicted {
            // Poll at the floor from 80% to 120% of the predicted time to ready.
            let low = predicted.mul_f64(0.8);
            let high = predicted.mul_f64(1.2);
            if elapsed >= low && elapsed <= high {
                return self.floor;
            }
        }
        (elapsed / BACKOFF_DIVISOR).clamp(self.floor, self.interval)
    }
}

async fn run_check(check: &mut Check) -> Outcome {
    match check {
        Check::Tcp(target) => match connect(target).await {
            Ok(_) => Outcome::ok(format!("connected to {}", target.label())),
            Err(err) => Outcome::fail(format!("{}: {err}", target.label())),
        },
        Check::Http {
            target,
            authority,
            path,
        } => http_get(target, authority, path).await,
        Check::Exec { argv, env, cwd } => exec(argv, env, cwd.as_deref()).await,
        Check::Log { regex, reader } => match reader.read_lines() {
            Ok(lines) => match lines.iter().find(|l| regex.is_match(l)) {
                Some(line) => Outcome::ok(format!("log line matched: {line}")),
                None => Outcome::fail(format!("no log line matches `{}` yet", regex.as_str())),
            },
            Err(err) => Outcome::fail(format!("cannot read the log: {err}")),
        },
    }
}

async fn connect(target: &Target) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
    // Probes exchange a few bytes: do not wait for Nagle.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A plain HTTP/1.1 GET; a 2xx status line is success. Only the status line is read.
async fn http_get(target: &Target, authority: &str, path: &str) -> Outcome {
    let url = format!("http://{authority}{path}");
    let mut stream = match connect(target).await {
        Ok(stream) => stream,
        Err(err) => return Outcome::fail(format!("GET {url}: {err}")),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: razar-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    if let Err(err) = stream.write_all(request.as_bytes()).await {
        return Outcome::fail(format!("GET {url}: {err}"));
    }
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    loop {
        if let Some(end) = head.iter().position(|&b| b == b'\n') {
            head.truncate(end);
            break;
        }
        if head.len() > 8192 {
            return Outcome::fail(format!("GET {url}: no status line in the first 8 KiB"));
        }
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(err) => return Outcome::fail(format!("GET {url}: {err}")),
        }
    }
    let line = String::from_utf8_lossy(&head).trim().to_owned();
    let mut parts = line.split_whitespace();
    let (Some(version), Some(status)) = (parts.next(), parts.next()) else {
        return Outcome::fail(format!("GET {url}: not an HTTP response ({line:?})"));
    };
    if !version.starts_with("HTTP/") {
        return Outcome::fail(format!("GET {url}: not an HTTP response ({line:?})"));
    }
    match status.parse::<u16>() {
        Ok(code) if (200..300).contains(&code) => Outcome::ok(format!("GET {url}: {line}")),
        Ok(_) => Outcome::fail(format!("GET {url}: {line}")),
        Err(_) => Outcome::fail(format!("GET {url}: not an HTTP response ({line:?})")),
    }
}

async fn exec(argv: &[String], env: &[(String, String)], cwd: Option<&std::path::Path>) -> Outcome {
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let shown = argv.join(" ");
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => return Outcome::fail(format!("`{shown}`: cannot start: {err}")),
    };
    // If this future is dropped (timeout, attempt over), kill_on_drop ends the leader; the
    // guard ends whatever the probe started in its group.
    let guard = GroupGuard(child.id());
    let status = child.wait().await;
    drop(guard);
    match status {
        Ok(status) if status.success() => Outcome::ok(format!("`{shown}` exited 0")),
        Ok(status) => Outcome::fail(format!("`{shown}`: {}", super::process::exit_info(status))),
        Err(err) => Outcome::fail(format!("`{shown}`: {err}")),
    }
}

/// Kills an exec probe's process group when the probe is abandoned.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = super::sys::signal_group(pgid, libc::SIGKILL);
        }
    }
}

/// Checks that a probe can run at all (address, URL and regex syntax).
pub fn validate(probe: &Probe) -> Result<(), String> {
    match &probe.check {
        ProbeCheck::Tcp(address) => host_port(address).map(|_| ()),
        ProbeCheck::Http(url) => http_url(url).map(|_| ()),
        ProbeCheck::Exec(command) => {
            let argv = command.argv();
            if argv.first().is_none_or(|a| a.is_empty()) {
                Err("exec probe has an empty command".to_owned())
            } else {
                Ok(())
            }
        }
        ProbeCheck::Log(pattern) => Regex::new(pattern)
            .map(|_| ())
            .map_err(|err| format!("log probe regex `{pattern}` is invalid: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Command;

    fn probe(check: ProbeCheck) -> Probe {
        Probe {
            check,
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn tcp_probe_sees_a_listener_and_its_absence() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let p = probe(ProbeCheck::Tcp(addr.to_string()));
        let mut prober = Prober::new(&p, Context::default(), Instant::now()).expect("probe");
        assert!(prober.check_now().await.ok);
        drop(listener);
        let outcome = prober.check_now().await;
        assert!(!outcome.ok);
        assert!(
            outcome.detail.contains(&addr.to_string()),
            "{}",
            outcome.detail
        );
    }

    /// Serves one canned HTTP response per connection.
    async fn serve(response: &'static str) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_probe_wants_a_2xx_status() {
        let ok = serve("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").await;
        let bad = serve("HTTP/1.0 503 Service Unavailable\r\n\r\n").await;
        let garbage = serve("SSH-2.0-OpenSSH\r\n").await;
        for (addr, want) in [(ok, true), (bad, false), (garbage, false)] {
            let p = probe(ProbeCheck::Http(format!("http://{addr}/health")));
            let mut prober = Prober::new(&p, Context::default(), Instant::now()).expect("probe");
            let outcome = prober.check_now().await;
            assert_eq!(outcome.ok, want, "{addr}: {}", outcome.detail);
        }
    }

    #[tokio::test]
    async fn exec_probe_uses_the_exit_status() {
        for (script, want) in [("exit 0", true), ("exit 3", false)] {
            let p = probe(ProbeCheck::Exec(Command::Shell(script.to_owned())));
            let mut prober = Prober::new(&p, Context::default(), Instant::now()).expect("probe");
            let outcome = prober.check_now().await;
            assert_eq!(outcome.ok, want, "{}", outcome.detail);
        }
        let p = probe(ProbeCheck::Exec(Command::Argv(vec![
            "/nonexistent/razar-probe".to_owned(),
        ])));
        let mut prober = Prober::new(&p, Context::default(), Instant::now()).expect("probe");
        let outcome = prober.check_now().await;
        assert!(
            !outcome.ok && outcome.detail.contains("cannot start"),
            "{}",
            outcome.detail
        );
    }

    #[tokio::test]
    async fn log_probe_matches_lines_of_the_current_attempt_only() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("svc.log");
        std::fs::write(&path, "listening on 1\n").expect("write");
        let offset = std::fs::metadata(&path).expect("meta").len();
        let p = probe(ProbeCheck::Log("listening on \\d+".to_owned()));
        let context = Context {
            log: Some((path.clone(), offset)),
            ..Context::default()
        };
        let mut prober = Prober::new(&p, context, Instant::now()).expect("probe");
        assert!(
            !prober.check_now().await.ok,
            "an earlier attempt's line must not count"
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        writeln!(file, "listening on 2").expect("write");
        assert!(prober.check_now().await.ok);
    }

    #[test]
    fn polling_backs_off_in_proportion_to_elapsed_time() {
        let p = probe(ProbeCheck::Tcp("127.0.0.1:1".to_owned()));
        let now = Instant::now();
        let fresh = Prober::new(&p, Context::default(), now).expect("probe");
        assert_eq!(fresh.pause(), FAST_FLOOR);
        let later =
            Prober::new(&p, Context::default(), now - Duration::from_millis(600)).expect("probe");
        let pause = later.pause();
        assert!(
            pause >= Duration::from_millis(12) && pause <= Duration::from_millis(16),
            "{pause:?}"
        );
        let much_later =
            Prober::new(&p, Context::default(), now - Duration::from_secs(60)).expect("probe");
        assert_eq!(
            much_later.pause(),
            Duration::from_millis(100),
            "capped at the interval"
        );
        let predicted = Context {
            predicted: Some(Duration::from_secs(60)),
            ..Context::default()
        };
        let dense = Prober::new(&p, predicted, now - Duration::from_secs(60)).expect("probe");
        assert_eq!(
            dense.pause(),
            FAST_FLOOR,
            "dense polling around the predicted time"
        );
    }

    #[test]
    fn invalid_probes_are_refused_before_running() {
        assert!(validate(&probe(ProbeCheck::Log("(".to_owned()))).is_err());
        assert!(validate(&probe(ProbeCheck::Tcp("nope".to_owned()))).is_err());
        assert!(validate(&probe(ProbeCheck::Http("ftp://x".to_owned()))).is_err());
        assert!(validate(&probe(ProbeCheck::Tcp("127.0.0.1:5".to_owned()))).is_ok());
    }
}
