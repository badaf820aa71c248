//! The state commands of the binary — `status`, `quarantine list|show|release`, `logs`,
//! `history` and `compact` — from parsed arguments to output text. Reading goes through
//! `state::read` (never creates or locks anything); only `quarantine release` and `compact`
//! write, under the apply lock.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use razar::Error;
use razar::graph::Graph;
use razar::state::{self, Paths, render};

use crate::cli::{QuarantineAction, StateArgs};

/// The state directory a command works on, and the config when one was read.
pub struct Target {
    pub dir: PathBuf,
    pub graph: Option<Graph>,
}

/// `--state-dir` wins (a config is then read only when `-c` is given); otherwise the config's
/// `state_dir`.
pub fn target(args: &StateArgs) -> Result<Target, Error> {
    match &args.state_dir {
        Some(dir) => {
            let graph = if args.config.files.is_empty() {
                None
            } else {
                Some(crate::load_graph(&args.config)?)
            };
            Ok(Target {
                dir: dir.clone(),
                graph,
            })
        }
        None => {
            let graph = crate::load_graph(&args.config)?;
            Ok(Target {
                dir: graph.config().state_dir.clone(),
                graph: Some(graph),
            })
        }
    }
}

fn components(target: &Target) -> Option<&[razar::config::Component]> {
    target.graph.as_ref().map(|g| g.components())
}

pub fn status(args: &StateArgs, json: bool) -> Result<String, Error> {
    let target = target(args)?;
    let view = state::read(&target.dir)?;
    let rows = render::status_rows(&view, components(&target));
    Ok(if json {
        render::status_json(&view, &rows)
    } else {
        render::status_text(&view, &rows)
    })
}

/// An unknown name as a usage error, with the nearest known one.
fn unknown(what: &str, name: &str, known: impl Iterator<Item = String>) -> Error {
    let known: Vec<String> = known.collect();
    let mut message = format!("{what} `{name}`");
    if let Some(near) = razar::graph::nearest(name, known.iter().map(String::as_str)) {
        message.push_str(&format!("; did you mean `{near}`?"));
    }
    Error::Usage(message)
}

fn check_name(name: &str) -> Result<(), Error> {
    if razar::config::valid_name(name) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "`{name}` is not a component name (names are 1 to 64 of A-Z a-z 0-9 _ . -)"
        )))
    }
}

pub fn quarantine(action: &QuarantineAction) -> Result<String, Error> {
    match action {
        QuarantineAction::List { state, json } => {
            let target = target(state)?;
            let view = state::read(&target.dir)?;
            Ok(if *json {
                render::quarantine_list_json(&view)
            } else {
                render::quarantine_list_text(&view)
            })
        }
        QuarantineAction::Show { state, name, json } => {
            check_name(name)?;
            let target = target(state)?;
            let view = state::read(&target.dir)?;
            let Some(record) = view.quarantine.get(name) else {
                return Err(state::StateError::NotQuarantined {
                    name: name.clone(),
                    known: view.quarantine.keys().cloned().collect(),
                }
                .into());
            };
            Ok(if *json {
                render::quarantine_show_json(record)
            } else {
                render::quarantine_show_text(record)
            })
        }
        QuarantineAction::Release { state, name, note } => {
            check_name(name)?;
            let target = target(state)?;
            // Releasing writes: refuse before creating anything when there is nothing to do.
            let view = state::read(&target.dir)?;
            if view.apply.is_none() && !view.quarantine.contains_key(name) {
                return Err(state::StateError::NotQuarantined {
                    name: name.clone(),
                    known: view.quarantine.keys().cloned().collect(),
                }
                .into());
            }
            let store = state::Store::open_as(&target.dir, state::Role::Release)?;
            let record = store.release(name, note.as_deref())?;
            drop(store);
            Ok(format!(
                "released `{name}` (quarantined since {}, {}: {}); the next plan includes it again\n",
                record.quarantined_at, record.class, record.reason
            ))
        }
    }
}

pub fn compact(args: &StateArgs) -> Result<String, Error> {
    let target = target(args)?;
    let started = std::time::Instant::now();
    let done = state::compact(&target.dir)?;
    Ok(format!(
        "compacted `{}`: {} -> {} on disk in {}\n",
        Paths::new(&target.dir).db().display(),
        size(done.before),
        size(done.after),
        razar::duration::display(started.elapsed())
    ))
}

/// A size in bytes for people: 512 B, 3.4 MB, 1.2 GB.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

pub fn history(args: &StateArgs, name: Option<&str>, json: bool) -> Result<String, Error> {
    let target = target(args)?;
    let view = state::read(&target.dir)?;
    let components = components(&target);
    if let Some(name) = name {
        check_name(name)?;
        if !view.history.contains_key(name) {
            let in_config = components.is_some_and(|cs| cs.iter().any(|c| c.name == name));
            if !in_config {
                return Err(unknown(
                    "no history for",
                    name,
                    view.history.keys().cloned().chain(
                        components
                            .unwrap_or_default()
                            .iter()
                            .map(|c| c.name.clone()),
                    ),
                ));
            }
        }
    }
    let entries: Vec<_> = view
        .history
        .iter()
        .filter(|(n, _)| name.is_none_or(|wanted| wanted == n.as_str()))
        .map(|(n, stats)| {
            (
                n.clone(),
                stats.clone(),
                render::history_current(n, stats, components),
            )
        })
        .collect();
    if let (Some(name), false, true) = (name, json, entries.is_empty()) {
        // One component asked for and nothing learned of it: say why, not that the whole
        // state has no history.
        let milestone = components
            .unwrap_or_default()
            .iter()
            .any(|c| c.name == name && c.command.is_none());
        let why = if milestone {
            format!("`{name}` is a milestone: it runs nothing, so there is no time to learn")
        } else {
            format!("no samples for `{name}` yet: every `razar apply` that runs it adds one")
        };
        return Ok(format!(
            "{}
{why}
",
            view.describe_source()
        ));
    }
    Ok(if json {
        render::history_json(&view, &entries)
    } else {
        render::history_text(&view, &entries)
    })
}

/// How often `logs -f` looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

pub fn logs(
    args: &StateArgs,
    name: &str,
    follow: bool,
    lines: Option<usize>,
    out: &mut dyn Write,
) -> Result<(), Error> {
    check_name(name)?;
    let target = target(args)?;
    let paths = Paths::new(&target.dir);
    let log = paths.log_file(name);
    let rotated = paths.rotated_log_file(name);
    // An empty log counts as none: a new log directory gets its files created ahead of the
    // components that write them.
    // Only a log that is not there is "no output yet"; any other failure (no permission, a
    // file where the log directory goes) is an error naming the file.
    let absent = |path: &Path| -> Result<Option<std::fs::Metadata>, Error> {
        match std::fs::metadata(path) {
            Ok(meta) => Ok(Some(meta)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(read_error(path, source)),
        }
    };
    let log_size = absent(&log)?.map(|m| m.len());
    let rotated_exists = absent(&rotated)?.is_some();
    if log_size.unwrap_or(0) == 0 && !rotated_exists {
        if let Some(graph) = &target.graph
            && graph.index_of(name).is_none()
        {
            return Err(unknown(
                "unknown component",
                name,
                graph.components().iter().map(|c| c.name.clone()),
            ));
        }
        if !follow {
            let state = if log_size.is_some() {
                "is empty"
            } else {
                "does not exist"
            };
            eprintln!(
                "no output captured for `{name}` yet (`{}` {state})",
                log.display()
            );
            return Ok(());
        }
    }
    // Open before reading, so nothing written in between is missed when following.
    let mut current = match std::fs::File::open(&log) {
        Ok(file) => Some(file),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(read_error(&log, source)),
    };
    let mut text = Vec::new();
    if rotated_exists {
        text.extend(read_all(&rotated)?);
    }
    if let Some(file) = current.as_mut() {
        file.read_to_end(&mut text).map_err(|source| Error::Read {
            path: log.clone(),
            source,
        })?;
    }
    let shown = match lines {
        Some(n) => last_lines(&text, n),
        None => &text[..],
    };
    if out.write_all(shown).and_then(|()| out.flush()).is_err() || !follow {
        return Ok(());
    }
    follow_file(&log, current, out)
}

fn read_all(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The tail of `text` holding its last `n` lines.
fn last_lines(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut newlines = 0;
    for (i, &b) in body.iter().enumerate().rev() {
        if b == b'\n' {
            newlines += 1;
            if newlines == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

/// Prints what is appended to `path` until the output closes.
fn follow_file(
    path: &Path,
    current: Option<std::fs::File>,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let mut follower = Follower::new(path, current);
    while follower.step(out)? {
        std::thread::sleep(FOLLOW_POLL);
    }
    Ok(())
}

/// Follows one log file. When the executor rotates the log (copies it to `.log.1`, then
/// truncates it), the rest of the copy is printed from where this left off, then the log from
/// its start; a log truncated by someone else, or replaced by another file, is read from its
/// start.
struct Follower {
    path: PathBuf,
    current: Option<std::fs::File>,
    rotations: razar::exec::RotationWatch,
    buf: Vec<u8>,
}

impl Follower {
    /// Follows `path` from the position of `current` (the log, opened before what was already
    /// shown was read), or from the start of the log once it appears.
    fn new(path: &Path, current: Option<std::fs::File>) -> Self {
        Self {
            path: path.to_path_buf(),
            current,
            rotations: razar::exec::RotationWatch::new(path),
            buf: vec![0u8; 64 * 1024],
        }
    }

    /// Prints what was appended since the last step; `false` once `out` is closed.
    fn step(&mut self, out: &mut dyn Write) -> Result<bool, Error> {
        loop {
            if let Some(file) = self.current.as_mut() {
                if self.rotations.rotated() {
                    let position = file
                        .stream_position()
                        .map_err(|source| read_error(&self.path, source))?;
                    if let Ok(mut copy) = std::fs::File::open(self.rotations.copy()) {
                        copy.seek(SeekFrom::Start(position))
                            .map_err(|source| read_error(self.rotations.copy(), source))?;
                        if !copy_out(&mut copy, self.rotations.copy(), &mut self.buf, out)? {
                            return Ok(false);
                        }
                    }
                    file.seek(SeekFrom::Start(0))
                        .map_err(|source| read_error(&self.path, source))?;
                }
                if !copy_out(file, &self.path, &mut self.buf, out)? {
                    return Ok(false);
                }
            }
            let on_disk = std::fs::metadata(&self.path).ok();
            match (&mut self.current, on_disk) {
                (None, Some(_)) => {
                    self.current = std::fs::File::open(&self.path).ok();
                    if self.current.is_some() {
                        continue;
                    }
                }
                (Some(file), Some(meta)) => {
                    let open = file
                        .metadata()
                        .map_err(|source| read_error(&self.path, source))?;
                    if open.ino() != meta.ino() || open.dev() != meta.dev() {
                        // Replaced: the old file was drained above; go on with the new one.
                        self.current = std::fs::File::open(&self.path).ok();
                        continue;
                    }
                    if self.rotations.pending() {
                        continue;
                    }
                    let position = file.stream_position().unwrap_or(0);
                    if meta.len() < position {
                        let _ = file.seek(SeekFrom::Start(0));
                        continue;
                    }
                }
                (_, None) => {}
            }
            return Ok(true);
        }
    }
}

fn read_error(path: &Path, source: std::io::Error) -> Error {
    Error::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Copies `file` from its position to its end into `out`; `false` once `out` is closed.
fn copy_out(
    file: &mut std::fs::File,
    path: &Path,
    buf: &mut [u8],
    out: &mut dyn Write,
) -> Result<bool, Error> {
    loop {
        let n = file.read(buf).map_err(|source| read_error(path, source))?;
        if n == 0 {
            return Ok(true);
        }
        if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn following_a_log_across_rotations_skips_nothing() {
        use std::fs::OpenOptions;
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("chatty.log");
        let copy = dir.path().join("chatty.log.1");
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open");
        // As the executor rotates: a fresh copy renamed over `.log.1`, then the truncation.
        let rotate = |writer: &std::fs::File| {
            let tmp = dir.path().join(".chatty.log.1.tmp");
            std::fs::copy(&log, &tmp).expect("copy");
            std::fs::rename(&tmp, &copy).expect("rename");
            writer.set_len(0).expect("truncate");
        };
        let mut expected = String::new();
        let mut write = |writer: &mut std::fs::File, range: std::ops::Range<usize>| {
            for i in range {
                let line = format!("line {i}\n");
                writer.write_all(line.as_bytes()).expect("write");
                expected.push_str(&line);
            }
        };
        let mut follower = Follower::new(&log, std::fs::File::open(&log).ok());
        let mut out = Vec::new();
        write(&mut writer, 0..10);
        assert!(follower.step(&mut out).expect("step"));
        // Unread lines at each rotation, and the log grows past the follower's position
        // before it looks again.
        for round in 1..4 {
            write(&mut writer, round * 1000..round * 1000 + 100);
            rotate(&writer);
            write(&mut writer, round * 1000 + 100..round * 1000 + 300);
            assert!(follower.step(&mut out).expect("step"));
        }
        assert_eq!(String::from_utf8(out).expect("utf-8"), expected);
    }

    #[test]
    fn last_lines_counts_from_the_end() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(last_lines(b"a\nb\n", 0), b"");
    }
}
