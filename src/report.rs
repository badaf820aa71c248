//! Reporting a run: the only code that writes run progress to the terminal.
//!
//! Three forms of the same [`Event`] stream (see `docs/execution.md`):
//! - `--json`: one event per line on stdout (`schemas/events.schema.json`), flushed per line
//!   so another program can follow a boot as it happens;
//! - plain lines (stdout is not a terminal): one line per event, elapsed time first;
//! - live (a terminal): the notable events as lines, under them a status line redrawn in
//!   place with the components waiting / starting / ready / failed and the elapsed time.
//!
//! `--follow` output (components' own lines, prefixed with their name) goes through the same
//! screen so it never tears the status line. Nothing here reads or writes state.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::exec::{self, Event, EventKind, Outcome, Sink};

/// How events are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One JSON object per line.
    Json,
    /// One human line per event.
    Plain,
    /// Human lines plus a live status line (a terminal).
    Live,
}

/// Where a component stands, as far as the display is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Waiting,
    Starting,
    Ready,
    Failed,
    Blocked,
    Stopped,
}

/// The terminal: human lines and the status line share it.
struct Screen {
    out: Box<dyn Write + Send>,
    live: bool,
    status: String,
    /// The status line is on screen (and must be cleared before the next line).
    shown: bool,
    color: bool,
}

impl Screen {
    fn line(&mut self, text: &str) {
        if self.shown {
            let _ = write!(self.out, "\r\x1b[2K");
            self.shown = false;
        }
        let _ = writeln!(self.out, "{text}");
        if self.live && !self.status.is_empty() {
            let _ = write!(self.out, "{}", self.status);
            self.shown = true;
        }
        let _ = self.out.flush();
    }

    fn set_status(&mut self, status: String) {
        if !self.live {
            return;
        }
        self.status = status;
        let _ = write!(self.out, "\r\x1b[2K{}", self.status);
        self.shown = true;
        let _ = self.out.flush();
    }

    /// Clears the status line for good (the last event line says how the run ended).
    fn finish(&mut self) {
        if self.shown {
            let _ = write!(self.out, "\r\x1b[2K");
            self.shown = false;
        }
        self.status.clear();
        let _ = self.out.flush();
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// Counts and timing behind the status line (kept incrementally: a big plan emits thousands
/// of events, and each must stay cheap).
struct Progress {
    phases: HashMap<String, Phase>,
    counts: BTreeMap<Phase, usize>,
    total: usize,
    started: Instant,
    finished: bool,
    name_width: usize,
}

impl Progress {
    fn count(&self, phase: Phase) -> usize {
        self.counts.get(&phase).copied().unwrap_or(0)
    }

    fn set(&mut self, component: &str, phase: Phase) {
        let old = match self.phases.get_mut(component) {
            Some(current) => Some(std::mem::replace(current, phase)),
            None => {
                self.phases.insert(component.to_owned(), phase);
                None
            }
        };
        if let Some(old) = old
            && let Some(n) = self.counts.get_mut(&old)
        {
            *n -= 1;
        }
        *self.counts.entry(phase).or_default() += 1;
    }

    fn status(&self, screen: &Screen) -> String {
        let known = self.phases.len();
        let waiting = self.total.saturating_sub(known) + self.count(Phase::Waiting);
        let starting = self.count(Phase::Starting);
        let ready = self.count(Phase::Ready);
        let failed = self.count(Phase::Failed) + self.count(Phase::Blocked);
        let stopped = self.count(Phase::Stopped);
        let mut text = format!(
            "{} {waiting} waiting · {} starting · {} ready · {} failed",
            screen.paint("1", "razar"),
            screen.paint("33", &starting.to_string()),
            screen.paint("32", &ready.to_string()),
            screen.paint("31", &failed.to_string()),
        );
        if stopped > 0 {
            text.push_str(&format!(" · {stopped} stopped"));
        }
        text.push_str(&format!(
            " · {}",
            clock(self.started.elapsed().as_millis() as u64)
        ));
        text
    }
}

struct Shared {
    screen: Mutex<Screen>,
    progress: Mutex<Progress>,
}

impl Shared {
    fn screen(&self) -> MutexGuard<'_, Screen> {
        // A panic while printing must not silence the rest of the run.
        self.screen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn redraw(&self) {
        let progress = self.progress();
        if progress.finished {
            return;
        }
        let mut screen = self.screen();
        let status = progress.status(&screen);
        screen.set_status(status);
    }
}

/// The reporter sink. Dropping it stops the status line's clock.
pub struct Reporter {
    mode: Mode,
    boot_hint: Option<String>,
    predicted: Option<Predicted>,
    shared: Arc<Shared>,
    ticker: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl Reporter {
    /// A reporter writing to stdout. `Live` only makes sense on a terminal; the caller
    /// decides (see `mode_for`).
    pub fn stdout(mode: Mode) -> Self {
        let color = mode == Mode::Live && std::env::var_os("NO_COLOR").is_none();
        Self::new(mode, Box::new(std::io::stdout()), color)
    }

    pub fn new(mode: Mode, out: Box<dyn Write + Send>, color: bool) -> Self {
        let shared = Arc::new(Shared {
            screen: Mutex::new(Screen {
                out,
                live: mode == Mode::Live,
                status: String::new(),
                shown: false,
                color,
            }),
            progress: Mutex::new(Progress {
                phases: HashMap::new(),
                counts: BTreeMap::new(),
                total: 0,
                started: Instant::now(),
                finished: false,
                name_width: 12,
            }),
        });
        // The elapsed time on the status line moves even when no event arrives.
        let ticker = (mode == Mode::Live).then(|| {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let tick = shared.clone();
            let handle = std::thread::spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::park_timeout(Duration::from_millis(250));
                    if !flag.load(Ordering::Relaxed) {
                        tick.redraw();
                    }
                }
            });
            (stop, handle)
        });
        Reporter {
            mode,
            boot_hint: None,
            predicted: None,
            shared,
            ticker,
        }
    }

    /// A line shown under "boot finished" in human modes (e.g. how to stop the stack).
    pub fn with_boot_hint(mut self, hint: impl Into<String>) -> Self {
        self.boot_hint = Some(hint.into());
        self
    }

    /// Compare the boot with the plan's predicted timeline: after "boot finished", human
    /// modes show per component the predicted and actual ready time.
    pub fn with_predictions(mut self, plan: &crate::plan::Plan) -> Self {
        self.predicted = Some(Predicted {
            makespan_ms: plan.timeline.makespan_ms,
            steps: plan
                .steps
                .iter()
                .filter(|s| s.command.is_some() && s.blocked.is_none())
                .map(|s| (s.name.clone(), s.predicted_ready_ms))
                .collect(),
            actual: BTreeMap::new(),
        });
        self
    }

    /// The display mode for a run: JSON if asked, live on a terminal, plain lines otherwise.
    pub fn mode_for(json: bool, terminal: bool) -> Mode {
        match (json, terminal) {
            (true, _) => Mode::Json,
            (false, true) => Mode::Live,
            (false, false) => Mode::Plain,
        }
    }

    /// The `--follow` output, shown through this reporter's screen (on stderr in JSON mode,
    /// so the event stream on stdout stays parseable).
    pub fn follower(&self) -> Box<dyn exec::Output> {
        match self.mode {
            Mode::Json => Box::new(Follower {
                shared: None,
                stderr: Some(std::io::stderr()),
                width: 12,
            }),
            _ => Box::new(Follower {
                shared: Some(self.shared.clone()),
                stderr: None,
                width: 12,
            }),
        }
    }

    /// A line that is not an event (e.g. "nothing to stop"); not shown in JSON mode.
    pub fn note(&mut self, text: &str) {
        if self.mode != Mode::Json {
            self.shared.screen().line(text);
        }
    }

    fn json(&self, event: &Event) {
        let line = serde_json::to_string(event).expect("events serialise: plain data");
        self.shared.screen().line(&line);
    }

    fn human(&mut self, event: &Event) {
        if let (
            Some(predicted),
            EventKind::Ready { component, .. } | EventKind::Completed { component, .. },
        ) = (&mut self.predicted, &event.kind)
        {
            predicted
                .actual
                .entry(component.clone())
                .or_insert(event.at_ms);
        }
        let mut progress = self.shared.progress();
        if let Some(name) = event.kind.component() {
            progress.name_width = progress.name_width.max(name.len().min(32));
        }
        let phase = match &event.kind {
            EventKind::RunStarted { steps, .. } => {
                progress.total = *steps;
                progress.started = Instant::now() - Duration::from_millis(event.at_ms);
                None
            }
            EventKind::Spawned { .. } => Some(Phase::Starting),
            EventKind::Ready { .. } | EventKind::Completed { .. } | EventKind::Adopted { .. } => {
                Some(Phase::Ready)
            }
            EventKind::Skipped { .. } => Some(Phase::Ready),
            EventKind::RestartScheduled { .. } => Some(Phase::Waiting),
            EventKind::Quarantined { .. } => Some(Phase::Failed),
            EventKind::AttemptFailed { .. } => None,
            EventKind::Exited { .. } => Some(Phase::Waiting),
            EventKind::Blocked { .. } => Some(Phase::Blocked),
            EventKind::Stopped { .. } => Some(Phase::Stopped),
            _ => None,
        };
        if let (Some(phase), Some(name)) = (phase, event.kind.component()) {
            progress.set(name, phase);
        }
        if let EventKind::AttemptFailed { component, .. } = &event.kind {
            // Failed for good unless a restart follows (which moves it back to waiting).
            progress.set(component, Phase::Failed);
        }
        let width = progress.name_width;
        let finished = matches!(event.kind, EventKind::RunFinished { .. });
        if finished {
            progress.finished = true;
        }
        let status = if self.mode == Mode::Live {
            progress.status(&self.shared.screen())
        } else {
            String::new()
        };
        drop(progress);

        let mut screen = self.shared.screen();
        let lines = describe(event, width, &screen, self.mode == Mode::Live);
        if self.mode == Mode::Live {
            screen.status = status;
        }
        if self.mode == Mode::Live && lines.is_empty() && !finished {
            let status = screen.status.clone();
            screen.set_status(status);
        }
        for line in lines {
            screen.line(&line);
        }
        if let (EventKind::BootFinished { elapsed_ms, .. }, Some(predicted)) =
            (&event.kind, &self.predicted)
        {
            for line in predicted.compare(*elapsed_ms) {
                screen.line(&format!("{:>9} {line}", ""));
            }
        }
        if let (EventKind::BootFinished { .. }, Some(hint)) = (&event.kind, &self.boot_hint) {
            screen.line(&format!("{:>9} {hint}", ""));
        }
        if finished {
            screen.finish();
        }
    }
}

impl Sink for Reporter {
    fn emit(&mut self, event: &Event) {
        match self.mode {
            Mode::Json => self.json(event),
            Mode::Plain | Mode::Live => self.human(event),
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.ticker.take() {
            stop.store(true, Ordering::Relaxed);
            handle.thread().unpark();
            let _ = handle.join();
        }
        self.shared.screen().finish();
    }
}

/// The plan's predicted ready times and the actual ones seen so far.
struct Predicted {
    makespan_ms: u64,
    /// Predicted ready time by component (steps that run a process).
    steps: BTreeMap<String, u64>,
    actual: BTreeMap<String, u64>,
}

/// Components listed in the comparison; beyond it only the largest differences are shown.
const COMPARE_ROWS: usize = 12;

impl Predicted {
    /// "predicted vs actual" lines: the boot as a whole, then the components whose actual
    /// ready time differs most from the prediction.
    fn compare(&self, elapsed_ms: u64) -> Vec<String> {
        let signed = |delta: i64| {
            let sign = if delta < 0 { "-" } else { "+" };
            format!("{sign}{}", millis(delta.unsigned_abs()))
        };
        let mut rows: Vec<(&str, u64, u64, i64)> = self
            .steps
            .iter()
            .filter_map(|(name, &predicted)| {
                let actual = *self.actual.get(name)?;
                Some((
                    name.as_str(),
                    predicted,
                    actual,
                    actual as i64 - predicted as i64,
                ))
            })
            .collect();
        if rows.is_empty() {
            return Vec::new();
        }
        let mut lines = vec![format!(
            "predicted {} vs actual {} ({}); ready at, predicted → actual:",
            millis(self.makespan_ms),
            millis(elapsed_ms),
            signed(elapsed_ms as i64 - self.makespan_ms as i64)
        )];
        let total = rows.len();
        rows.sort_by_key(|r| (std::cmp::Reverse(r.3.unsigned_abs()), r.0));
        let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).min(32);
        for (name, predicted, actual, delta) in rows.iter().take(COMPARE_ROWS) {
            lines.push(format!(
                "  {name:<width$}  {:>8} → {:>8}  {}",
                millis(*predicted),
                millis(*actual),
                signed(*delta)
            ));
        }
        if total > COMPARE_ROWS {
            lines.push(format!(
                "  … {} more within {} of their prediction",
                total - COMPARE_ROWS,
                millis(rows[COMPARE_ROWS].3.unsigned_abs())
            ));
        }
        lines
    }
}

/// Prints `--follow` lines as `name | line`.
struct Follower {
    shared: Option<Arc<Shared>>,
    stderr: Option<std::io::Stderr>,
    width: usize,
}

impl exec::Output for Follower {
    fn line(&mut self, component: &str, line: &str) {
        self.width = self.width.max(component.len().min(32));
        let text = format!("{component:>width$} | {line}", width = self.width);
        if let Some(shared) = &self.shared {
            shared.screen().line(&text);
        } else if let Some(stderr) = &mut self.stderr {
            let _ = writeln!(stderr, "{text}");
        }
    }
}

/// `12.345s` / `3m 04.5s`: the elapsed-time column.
fn clock(ms: u64) -> String {
    if ms < 60_000 {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    } else {
        format!("{}m {:04.1}s", ms / 60_000, (ms % 60_000) as f64 / 1000.0)
    }
}

/// `exit code 3`, `signal 15 (SIGTERM)`.
fn exit_text(exit: &exec::ExitInfo) -> String {
    match (exit.code, exit.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => {
            let name = match signal {
                1 => " (SIGHUP)",
                2 => " (SIGINT)",
                3 => " (SIGQUIT)",
                6 => " (SIGABRT)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                13 => " (SIGPIPE)",
                15 => " (SIGTERM)",
                _ => "",
            };
            format!("signal {signal}{name}")
        }
        (None, None) => "exit status unknown".to_owned(),
    }
}

fn millis(ms: u64) -> String {
    crate::duration::display(Duration::from_millis(ms))
}

/// The human lines for one event (none for the noisy ones in live mode).
fn describe(event: &Event, width: usize, screen: &Screen, live: bool) -> Vec<String> {
    let at = format!("{:>9}", clock(event.at_ms));
    let row = |verb: &str, code: &str, name: &str, detail: String| {
        let verb = screen.paint(code, &format!("{verb:<10}"));
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!("  {detail}")
        };
        format!("{at} {verb} {name:<width$}{detail}")
            .trim_end()
            .to_owned()
    };
    let tail = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .map(|l| format!("{:>9}   {} {l}", "", screen.paint("2", "│")))
            .collect()
    };
    match &event.kind {
        EventKind::RunStarted {
            run_id,
            strategy,
            parallelism,
            steps,
            resumed,
            ..
        } => vec![format!(
            "{at} {} run {run_id}: {steps} step(s), parallelism {parallelism}, strategy {strategy}",
            if *resumed { "resuming" } else { "starting" }
        )],
        EventKind::Adopted {
            component,
            pid,
            pgid,
        } => vec![row(
            "adopted",
            "32",
            component,
            format!("still running from an earlier run (pid {pid}, group {pgid})"),
        )],
        EventKind::Skipped { component, reason } => {
            vec![row("skipped", "2", component, reason.clone())]
        }
        EventKind::Blocked { component, reason } => {
            vec![row("blocked", "31", component, reason.clone())]
        }
        EventKind::Spawned {
            component,
            attempt,
            pid,
            ..
        } => {
            if live {
                return Vec::new();
            }
            let again = if *attempt > 1 {
                format!(", attempt {attempt}")
            } else {
                String::new()
            };
            vec![row("started", "33", component, format!("pid {pid}{again}"))]
        }
        EventKind::Ready {
            component,
            after_ms,
            ..
        } => vec![row(
            "ready",
            "32",
            component,
            format!("after {}", millis(*after_ms)),
        )],
        EventKind::Completed {
            component,
            after_ms,
            ..
        } => vec![row(
            "completed",
            "32",
            component,
            format!("after {}", millis(*after_ms)),
        )],
        EventKind::Probe {
            component,
            ok,
            detail,
        } => {
            if live {
                return Vec::new();
            }
            let verb = if *ok { "probe ok" } else { "probe" };
            vec![row(verb, "2", component, detail.clone())]
        }
        EventKind::AttemptFailed {
            component,
            attempt,
            reason,
            log_tail,
            ..
        } => {
            let mut lines = vec![row(
                "failed",
                "31",
                component,
                format!("attempt {attempt}: {reason}"),
            )];
            lines.extend(tail(log_tail));
            lines
        }
        EventKind::RestartScheduled {
            component,
            next_attempt,
            delay_ms,
        } => vec![row(
            "restart",
            "33",
            component,
            format!("attempt {next_attempt} in {}", millis(*delay_ms)),
        )],
        EventKind::Quarantined {
            component,
            attempts,
            reason,
            ..
        } => vec![row(
            "quarantine",
            "1;31",
            component,
            format!(
                "after {attempts} attempt(s): {reason}; release with `razar quarantine release {component}`"
            ),
        )],
        EventKind::Exited {
            component,
            exit,
            uptime_ms,
        } => vec![row(
            "exited",
            "31",
            component,
            format!("{} after {} up", exit_text(exit), millis(*uptime_ms)),
        )],
        EventKind::BootFinished {
            ready,
            failed,
            blocked,
            elapsed_ms,
        } => vec![format!(
            "{at} boot finished in {}: {ready} up, {failed} failed, {blocked} blocked",
            millis(*elapsed_ms),
        )],
        EventKind::Stopping { component, signal } => {
            vec![row("stopping", "33", component, signal.clone())]
        }
        EventKind::Stopped {
            component,
            exit,
            forced,
        } => {
            let how = match (exit, forced) {
                (_, true) => "killed (SIGKILL)".to_owned(),
                (Some(exit), false) => exit_text(exit),
                (None, false) => String::new(),
            };
            vec![row("stopped", "2", component, how)]
        }
        EventKind::RunFinished {
            outcome,
            elapsed_ms,
        } => {
            let text = match outcome {
                Outcome::Success => screen.paint("32", "success"),
                Outcome::Failed => screen.paint("31", "failed"),
                Outcome::Interrupted => screen.paint("33", "interrupted"),
            };
            vec![format!(
                "{at} run finished: {text} after {}",
                millis(*elapsed_ms)
            )]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::ExitInfo;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .expect("no poisoned lock")
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("no poisoned lock")).into_owned()
        }
    }

    fn event(at_ms: u64, kind: EventKind) -> Event {
        Event {
            at_ms,
            time: "2025-01-01T00:00:00.000Z".to_owned(),
            kind,
        }
    }

    fn sample() -> Vec<Event> {
        vec![
            event(
                0,
                EventKind::RunStarted {
                    run_id: "r1".into(),
                    config_hash: "h".into(),
                    strategy: "priority".into(),
                    parallelism: 2,
                    steps: 2,
                    resumed: false,
                },
            ),
            event(
                3,
                EventKind::Spawned {
                    component: "db".into(),
                    attempt: 1,
                    pid: 100,
                    pgid: 100,
                    start_time: 5,
                },
            ),
            event(
                250,
                EventKind::AttemptFailed {
                    component: "db".into(),
                    attempt: 1,
                    reason: "exited before it was ready (exit code 1)".into(),
                    exit: Some(ExitInfo {
                        code: Some(1),
                        signal: None,
                    }),
                    log_tail: vec!["port already in use".into()],
                },
            ),
            event(
                251,
                EventKind::Blocked {
                    component: "api".into(),
                    reason: "blocked: depends on `db`, which failed".into(),
                },
            ),
            event(
                260,
                EventKind::RunFinished {
                    outcome: Outcome::Failed,
                    elapsed_ms: 260,
                },
            ),
        ]
    }

    #[test]
    fn plain_lines_show_failures_with_their_log_tail() {
        let buffer = Buffer::default();
        let mut reporter = Reporter::new(Mode::Plain, Box::new(buffer.clone()), false);
        for e in sample() {
            reporter.emit(&e);
        }
        drop(reporter);
        let text = buffer.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(
            lines[1].contains("started") && lines[1].contains("db") && lines[1].contains("pid 100")
        );
        assert!(
            lines[2].contains("failed")
                && lines[2].contains("attempt 1: exited before it was ready")
        );
        assert!(lines[3].ends_with("│ port already in use"), "{}", lines[3]);
        assert!(lines[4].contains("blocked") && lines[4].contains("which failed"));
        assert!(lines[5].contains("run finished: failed"));
        assert!(!text.contains('\x1b'), "no escape codes off a terminal");
    }

    #[test]
    fn json_mode_writes_one_parseable_event_per_line() {
        let buffer = Buffer::default();
        let mut reporter = Reporter::new(Mode::Json, Box::new(buffer.clone()), false);
        for e in sample() {
            reporter.emit(&e);
        }
        drop(reporter);
        let text = buffer.text();
        let parsed: Vec<Event> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is an event"))
            .collect();
        assert_eq!(parsed, sample());
    }

    #[test]
    fn live_mode_keeps_a_status_line_under_the_events() {
        let buffer = Buffer::default();
        let mut reporter = Reporter::new(Mode::Live, Box::new(buffer.clone()), false);
        let events = sample();
        reporter.emit(&events[0]);
        reporter.emit(&events[1]);
        let text = buffer.text();
        let last = text.rsplit("\x1b[2K").next().expect("status line");
        assert!(
            last.contains("1 waiting · 1 starting · 0 ready · 0 failed"),
            "{last:?}"
        );
        for e in &events[2..] {
            reporter.emit(e);
        }
        drop(reporter);
        let text = buffer.text();
        assert!(
            text.contains("0 waiting · 0 starting · 0 ready · 2 failed"),
            "{text:?}"
        );
        assert!(
            text.ends_with("\r\x1b[2K"),
            "the status line is cleared at the end"
        );
    }

    /// One event of every kind. The match below stops compiling when a kind is added, so the
    /// schema test cannot silently miss it.
    fn every_kind() -> Vec<EventKind> {
        let exit = Some(ExitInfo {
            code: None,
            signal: Some(9),
        });
        let kinds = vec![
            EventKind::RunStarted {
                run_id: "r".into(),
                config_hash: "h".into(),
                strategy: "critical-path".into(),
                parallelism: 2,
                steps: 3,
                resumed: true,
            },
            EventKind::Adopted {
                component: "a".into(),
                pid: 1,
                pgid: 1,
            },
            EventKind::Skipped {
                component: "a".into(),
                reason: "r".into(),
            },
            EventKind::Blocked {
                component: "a".into(),
                reason: "r".into(),
            },
            EventKind::Spawned {
                component: "a".into(),
                attempt: 1,
                pid: 2,
                pgid: 2,
                start_time: 3,
            },
            EventKind::Ready {
                component: "a".into(),
                attempt: 1,
                after_ms: 5,
            },
            EventKind::Completed {
                component: "a".into(),
                attempt: 1,
                after_ms: 5,
            },
            EventKind::Probe {
                component: "a".into(),
                ok: false,
                detail: "refused".into(),
            },
            EventKind::AttemptFailed {
                component: "a".into(),
                attempt: 1,
                reason: "r".into(),
                exit,
                log_tail: vec!["x".into()],
            },
            EventKind::RestartScheduled {
                component: "a".into(),
                next_attempt: 2,
                delay_ms: 200,
            },
            EventKind::Quarantined {
                component: "a".into(),
                attempts: 3,
                reason: "r".into(),
                exit: None,
                log_tail: Vec::new(),
            },
            EventKind::Exited {
                component: "a".into(),
                exit: ExitInfo {
                    code: Some(1),
                    signal: None,
                },
                uptime_ms: 10,
            },
            EventKind::BootFinished {
                ready: 1,
                failed: 0,
                blocked: 0,
                elapsed_ms: 9,
            },
            EventKind::Stopping {
                component: "a".into(),
                signal: "SIGTERM".into(),
            },
            EventKind::Stopped {
                component: "a".into(),
                exit: None,
                forced: true,
            },
            EventKind::RunFinished {
                outcome: Outcome::Interrupted,
                elapsed_ms: 10,
            },
        ];
        for kind in &kinds {
            match kind {
                EventKind::RunStarted { .. }
                | EventKind::Adopted { .. }
                | EventKind::Skipped { .. }
                | EventKind::Blocked { .. }
                | EventKind::Spawned { .. }
                | EventKind::Ready { .. }
                | EventKind::Completed { .. }
                | EventKind::Probe { .. }
                | EventKind::AttemptFailed { .. }
                | EventKind::RestartScheduled { .. }
                | EventKind::Quarantined { .. }
                | EventKind::Exited { .. }
                | EventKind::BootFinished { .. }
                | EventKind::Stopping { .. }
                | EventKind::Stopped { .. }
                | EventKind::RunFinished { .. } => {}
            }
        }
        kinds
    }

    #[test]
    fn the_events_schema_describes_every_json_line() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../schemas/events.schema.json"))
                .expect("the schema is JSON");
        let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
        let buffer = Buffer::default();
        let mut reporter = Reporter::new(Mode::Json, Box::new(buffer.clone()), false);
        for kind in every_kind() {
            reporter.emit(&event(7, kind));
        }
        drop(reporter);
        let text = buffer.text();
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{line}: {errors:?}");
        }
        // And the schema is not vacuous: a wrong field is refused.
        let bad = serde_json::json!({"event": "ready", "at_ms": 1, "time": "2025-01-01T00:00:00.000Z", "component": "../x", "attempt": 1, "after_ms": 2});
        assert!(!validator.is_valid(&bad));
        let unknown = serde_json::json!({"event": "exploded", "at_ms": 1, "time": "2025-01-01T00:00:00.000Z"});
        assert!(!validator.is_valid(&unknown));
    }

    #[test]
    fn clock_formats() {
        assert_eq!(clock(1234), "1.234s");
        assert_eq!(clock(125_500), "2m 05.5s");
    }
}
