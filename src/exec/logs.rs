//! Component log files: `<state_dir>/logs/<name>.log`, size-capped with one rotation to
//! `<name>.log.1`, read back for failure tails, log-line probes and `--follow`.
//!
//! Components write to their log file directly (stdout and stderr share one descriptor opened
//! with `O_APPEND`), not through a pipe to razar: output is never lost while razar is busy,
//! and a service keeps logging when razar itself dies and is later resumed. Rotation is
//! therefore copy-then-truncate (the writer keeps its descriptor and continues at the new end);
//! the lines written between the copy and the truncation are lost, which the size cap makes
//! rare. This module only touches files; it never prints.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Default cap of one log file before it is rotated.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// Lines of output carried in failure events.
pub const TAIL_LINES: usize = 20;

/// Longest line kept in a tail or passed to a probe (longer ones are cut, marked with `…`).
const MAX_LINE: usize = 1000;

/// The log directory of a run.
#[derive(Debug, Clone)]
pub struct Logs {
    dir: PathBuf,
    max_bytes: u64,
}

impl Logs {
    pub fn new(state_dir: &Path, max_bytes: u64) -> Self {
        Self {
            dir: state_dir.join("logs"),
            max_bytes: max_bytes.max(1024),
        }
    }

    /// Creates the (empty) log files of `names` on a thread of their own, in order, while the
    /// boot starts: in a new log directory, creating a file is the most expensive part of a
    /// spawn (~60 µs each on ext4 for 2,000 of them), and the scheduler then finds most of them
    /// made. A file the scheduler needs first it creates itself, as always; failures here
    /// are left for the spawn to report.
    pub fn create_ahead<'a>(&self, names: impl Iterator<Item = &'a str>) {
        let paths: Vec<PathBuf> = names.map(|name| self.path(name)).collect();
        let _ = std::thread::Builder::new()
            .name("razar-logs".to_owned())
            .spawn(move || {
                for path in paths {
                    let _ = OpenOptions::new().create(true).append(true).open(path);
                }
            });
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<state_dir>/logs/<name>.log`. Names are `[A-Za-z0-9_.-]`, so this stays in the dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    fn rotated(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log.1"))
    }

    /// Opens the log for a new attempt: rotates it if it is over the cap, appends `header`
    /// (one line) and returns the file and the offset where this attempt's output starts.
    pub fn open_attempt(&self, name: &str, header: &str) -> io::Result<(File, u64)> {
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(name))
        };
        let mut file = match open() {
            Ok(file) => file,
            // The directory was removed under razar: create it again.
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.dir)?;
                open()?
            }
            Err(err) => return Err(err),
        };
        // The size of the open file decides the rotation (one `fstat`, no second lookup of
        // the path); the file stays open across it and appends at the new end.
        if file.metadata()?.len() > self.max_bytes {
            self.rotate(name, &file)?;
        }
        // One write for the header line.
        let mut line = String::with_capacity(header.len() + 1);
        line.push_str(header);
        line.push('\n');
        file.write_all(line.as_bytes())?;
        let offset = file.seek(SeekFrom::End(0))?;
        Ok((file, offset))
    }

    /// Copies the log to `<name>.log.1` and truncates it when it exceeds the cap.
    /// Returns whether it rotated.
    pub fn rotate_if_needed(&self, name: &str) -> io::Result<bool> {
        let path = self.path(name);
        let len = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err),
        };
        if len <= self.max_bytes {
            return Ok(false);
        }
        self.rotate(name, &OpenOptions::new().write(true).open(&path)?)?;
        Ok(true)
    }

    /// Copies the log (open as `file`) to `<name>.log.1`, then truncates it.
    fn rotate(&self, name: &str, file: &File) -> io::Result<()> {
        // Copy to a temporary name and rename, so `<name>.log.1` is always a whole file.
        let tmp = self.dir.join(format!(".{name}.log.1.tmp"));
        std::fs::copy(self.path(name), &tmp)?;
        std::fs::rename(&tmp, self.rotated(name))?;
        file.set_len(0)
    }

    /// The last `lines` lines written since `from` (the attempt's offset). If the file was
    /// rotated since, the tail of what is there now.
    pub fn tail(&self, name: &str, from: u64, lines: usize) -> Vec<String> {
        tail_file(&self.path(name), from, lines).unwrap_or_default()
    }

    /// The current length of a log (where a reader of new output starts).
    pub fn len(&self, name: &str) -> u64 {
        std::fs::metadata(self.path(name)).map_or(0, |m| m.len())
    }
}

fn tail_file(path: &Path, from: u64, lines: usize) -> io::Result<Vec<String>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let from = if from > len { 0 } else { from };
    // 64 KiB is plenty for 20 lines of ordinary output.
    let start = from.max(len.saturating_sub(64 * 1024));
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(len - start).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    // Reading from the middle of the file may start in the middle of a line.
    if start > from && !all.is_empty() {
        all.remove(0);
    }
    let skip = all.len().saturating_sub(lines);
    Ok(all[skip..].iter().map(|l| clip(l)).collect())
}

fn clip(line: &str) -> String {
    let line = line.trim_end_matches('\r');
    if line.len() <= MAX_LINE {
        return line.to_owned();
    }
    let mut end = MAX_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

/// Notices the rotations of one log. A rotation copies the log to a new `<name>.log.1` (a
/// temporary file renamed over the old copy) before truncating it, so a `.log.1` that is
/// another file than at the last look means the log was rotated meanwhile, and that copy
/// holds the end of what a reader of the log had not read yet (from the reader's offset up to
/// the copy, as the log was just before its truncation).
#[derive(Debug)]
pub struct RotationWatch {
    rotated: PathBuf,
    seen: Option<Identity>,
}

/// A file's device, inode and change time: a rotated copy is a new file each time (its inode
/// may be one an older copy had, its change time is not).
type Identity = (u64, u64, i64, i64);

impl RotationWatch {
    /// Watches the rotations of `log` from now on.
    pub fn new(log: &Path) -> Self {
        let mut name = log.file_name().unwrap_or_default().to_owned();
        name.push(".1");
        let rotated = log.with_file_name(name);
        let seen = identity(&rotated);
        Self { rotated, seen }
    }

    /// Whether the log was rotated since the last call (or since [`RotationWatch::new`]).
    pub fn rotated(&mut self) -> bool {
        let now = identity(&self.rotated);
        let changed = now.is_some() && now != self.seen;
        self.seen = now;
        changed
    }

    /// Whether [`RotationWatch::rotated`] would say so now (without taking note of it).
    pub fn pending(&self) -> bool {
        let now = identity(&self.rotated);
        now.is_some() && now != self.seen
    }

    /// The rotated copy: `<log>.1`.
    pub fn copy(&self) -> &Path {
        &self.rotated
    }
}

/// The [`Identity`] of the file at `path`, if there is one.
fn identity(path: &Path) -> Option<Identity> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Reads the complete lines appended to a log since the last call, across its rotations.
#[derive(Debug)]
pub struct LineReader {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    rotations: RotationWatch,
    /// Reading the rotated copy (at `offset`) before going on with the log from its start.
    in_copy: bool,
}

/// Most bytes one [`LineReader::read_lines`] call reads, so a chatty component never stalls
/// its caller.
const READ_CHUNK: u64 = 1 << 20;

impl LineReader {
    pub fn new(path: PathBuf, offset: u64) -> Self {
        let rotations = RotationWatch::new(&path);
        Self {
            path,
            offset,
            partial: Vec::new(),
            rotations,
            in_copy: false,
        }
    }

    /// New complete lines (a trailing partial line waits for its newline). When the log was
    /// rotated, the rest of the rotated copy comes first (from where this reader was), then
    /// the log from its start; a log that shrank without a rotation (truncated by someone
    /// else) is read again from its start.
    pub fn read_lines(&mut self) -> io::Result<Vec<String>> {
        self.note_rotation();
        let mut budget = READ_CHUNK;
        if self.in_copy {
            let copy = self.rotations.copy().to_path_buf();
            let (read, at_end) = match File::open(&copy) {
                Ok(mut file) => self.read_from(&mut file, budget)?,
                Err(err) if err.kind() == io::ErrorKind::NotFound => (0, true),
                Err(err) => return Err(err),
            };
            budget -= read;
            if !at_end {
                return Ok(self.complete_lines());
            }
            self.in_copy = false;
            self.offset = 0;
        }
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(self.complete_lines()),
            Err(err) => return Err(err),
        };
        if file.metadata()?.len() < self.offset {
            // Rotated between the look above and now (the copy is renamed into place before
            // the log is truncated), or truncated by someone else.
            self.note_rotation();
            if self.in_copy {
                return self.read_lines();
            }
            self.offset = 0;
            self.partial.clear();
        }
        self.read_from(&mut file, budget)?;
        Ok(self.complete_lines())
    }

    /// Turns to the rotated copy if the log was rotated since the last look: at the same
    /// offset while reading the log (the copy is the log as it was), from its start while
    /// already in an older copy (the new copy holds everything logged since that one).
    fn note_rotation(&mut self) {
        if self.rotations.rotated() {
            if self.in_copy {
                self.offset = 0;
            }
            self.in_copy = true;
        }
    }

    /// Reads up to `budget` bytes of `file` from the offset into the partial line; returns
    /// how many, and whether that reached the end of the file.
    fn read_from(&mut self, file: &mut File, budget: u64) -> io::Result<(u64, bool)> {
        let len = file.metadata()?.len();
        if len <= self.offset {
            return Ok((0, true));
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let want = (len - self.offset).min(budget);
        let read = file.take(want).read_to_end(&mut self.partial)? as u64;
        self.offset += read;
        Ok((read, self.offset >= len))
    }

    /// The complete lines in the partial buffer, which keeps the unfinished rest.
    fn complete_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut start = 0;
        for (i, &b) in self.partial.iter().enumerate() {
            if b == b'\n' {
                lines.push(clip(&String::from_utf8_lossy(&self.partial[start..i])));
                start = i + 1;
            }
        }
        self.partial.drain(..start);
        if self.partial.len() > 64 * 1024 {
            // A "line" this long is binary noise: pass it on rather than buffer forever.
            lines.push(clip(&String::from_utf8_lossy(&self.partial)));
            self.partial.clear();
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_append_with_headers_and_tails_cover_only_the_attempt() {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = Logs::new(dir.path(), DEFAULT_MAX_BYTES);
        let (mut file, first) = logs.open_attempt("api", "--- attempt 1").expect("open");
        writeln!(file, "old line").expect("write");
        let (mut file, second) = logs.open_attempt("api", "--- attempt 2").expect("open");
        assert!(second > first);
        for i in 0..30 {
            writeln!(file, "line {i}").expect("write");
        }
        let tail = logs.tail("api", second, TAIL_LINES);
        assert_eq!(tail.len(), 20);
        assert_eq!(tail[0], "line 10");
        assert_eq!(tail[19], "line 29");
        let short = logs.tail("api", second, 100);
        assert!(!short.iter().any(|l| l == "old line"), "{short:?}");
    }

    #[test]
    fn log_files_created_ahead_are_the_ones_attempts_then_append_to() {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = Logs::new(dir.path(), DEFAULT_MAX_BYTES);
        std::fs::create_dir_all(logs.dir()).expect("mkdir");
        let names = ["a", "b", "c"];
        logs.create_ahead(names.into_iter());
        // Racing the thread for the first file is fine: whoever comes second opens it.
        let (_, offset) = logs.open_attempt("a", "--- attempt 1").expect("open");
        assert_eq!(
            offset, 14,
            "output starts after the header, at the file's start"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !names.iter().all(|n| logs.path(n).exists()) {
            assert!(std::time::Instant::now() < deadline, "never created");
            std::thread::yield_now();
        }
        assert_eq!(
            std::fs::read_to_string(logs.path("a")).expect("read"),
            "--- attempt 1\n"
        );
        assert_eq!(std::fs::metadata(logs.path("c")).expect("c").len(), 0);
    }

    #[test]
    fn rotation_keeps_one_old_file_and_the_writer_continues() {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = Logs::new(dir.path(), 1024);
        let (mut file, _) = logs.open_attempt("chatty", "--- attempt 1").expect("open");
        for i in 0..100 {
            writeln!(file, "line number {i:04}").expect("write");
        }
        assert!(logs.rotate_if_needed("chatty").expect("rotate"));
        let old = std::fs::read_to_string(dir.path().join("logs/chatty.log.1")).expect("rotated");
        assert!(old.contains("line number 0099"));
        assert_eq!(logs.len("chatty"), 0);
        // The component's descriptor (O_APPEND) writes at the new end, not at its old offset.
        writeln!(file, "after rotation").expect("write");
        let now = std::fs::read_to_string(logs.path("chatty")).expect("log");
        assert_eq!(now, "after rotation\n");
        assert!(!logs.rotate_if_needed("chatty").expect("no rotation"));
    }

    #[test]
    fn line_reader_waits_for_newlines_and_survives_rotation() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x.log");
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open");
        let mut reader = LineReader::new(path.clone(), 0);
        assert!(reader.read_lines().expect("read").is_empty());
        write!(file, "hello wor").expect("write");
        assert!(reader.read_lines().expect("read").is_empty());
        writeln!(file, "ld\nsecond").expect("write");
        assert_eq!(
            reader.read_lines().expect("read"),
            vec!["hello world", "second"]
        );
        file.set_len(0).expect("truncate");
        writeln!(file, "fresh").expect("write");
        assert_eq!(reader.read_lines().expect("read"), vec!["fresh"]);
    }

    #[test]
    fn a_reader_behind_a_rotation_reads_the_rest_of_the_copy_then_the_new_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = Logs::new(dir.path(), 1024);
        let (mut file, offset) = logs.open_attempt("chatty", "header").expect("open");
        let mut reader = LineReader::new(logs.path("chatty"), offset);
        let mut expected = Vec::new();
        let mut write = |file: &mut File, range: std::ops::Range<usize>| {
            for i in range {
                writeln!(file, "line {i}").expect("write");
                expected.push(format!("line {i}"));
            }
        };
        write(&mut file, 0..10);
        let mut got = reader.read_lines().expect("read");
        // Unread lines are in the log when it is rotated; then the log grows past the
        // reader's old offset before the reader looks again (its length alone would not show
        // the rotation).
        write(&mut file, 10..200);
        assert!(logs.rotate_if_needed("chatty").expect("rotate"));
        write(&mut file, 200..300);
        assert!(logs.len("chatty") > reader.offset);
        got.extend(reader.read_lines().expect("read"));
        write(&mut file, 300..310);
        got.extend(reader.read_lines().expect("read"));
        assert_eq!(got, expected);
        // A truncation by someone else (no new copy) is read again from the start.
        file.set_len(0).expect("truncate");
        writeln!(file, "fresh").expect("write");
        assert_eq!(reader.read_lines().expect("read"), vec!["fresh"]);
    }

    #[test]
    fn long_lines_are_clipped_on_a_char_boundary() {
        let line = "é".repeat(MAX_LINE);
        let clipped = clip(&line);
        assert!(clipped.ends_with('…'));
        assert!(clipped.len() <= MAX_LINE + '…'.len_utf8());
    }
}
