//! Helpers shared by the integration tests: the real `razar` binary, fixtures copied into
//! temp dirs, snapshots of a directory tree, and the problems razar prints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The repository root (where Cargo.toml is).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A path under tests/fixtures/.
pub fn fixture(relative: &str) -> PathBuf {
    repo().join("tests/fixtures").join(relative)
}

/// The `razar` binary built for these tests, with a clean environment for its output.
pub fn razar() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(env!("CARGO_BIN_EXE_razar"));
    cmd.env_remove("RAZAR_LOG")
        .env_remove("CROWN_WS_URL")
        .env("NO_COLOR", "1");
    cmd
}

/// A temporary directory holding copies of fixtures; razar runs inside it.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temp dir can be created"),
        }
    }

    /// A sandbox holding copies of these fixtures (paths relative to tests/fixtures/),
    /// each under its own file name.
    pub fn with(fixtures: &[&str]) -> Self {
        let sandbox = Self::new();
        for relative in fixtures {
            let from = fixture(relative);
            let name = from.file_name().expect("fixtures are files");
            sandbox.copy(&from, Path::new(name));
        }
        sandbox
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn copy(&self, from: &Path, to: &Path) {
        let to = self.path().join(to);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).expect("sandbox directories can be created");
        }
        std::fs::copy(from, &to)
            .unwrap_or_else(|err| panic!("copy {} -> {}: {err}", from.display(), to.display()));
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("sandbox directories can be created");
        }
        std::fs::write(&path, contents).expect("sandbox files can be written");
        path
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name))
            .unwrap_or_else(|err| panic!("read {name}: {err}"))
    }

    /// `razar ARGS...` run inside the sandbox.
    pub fn run(&self, args: &[&str]) -> Output {
        razar()
            .current_dir(self.path())
            .args(args)
            .output()
            .expect("razar runs")
    }

    /// Every file and directory below the sandbox with its size and modification time.
    pub fn tree(&self) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("sandbox is readable") {
                let entry = entry.expect("sandbox entries are readable");
                let meta = entry.metadata().expect("sandbox metadata is readable");
                let relative = entry
                    .path()
                    .strip_prefix(self.path())
                    .expect("entries are below the sandbox")
                    .to_path_buf();
                out.insert(
                    relative,
                    (meta.len(), meta.modified().expect("mtime is available")),
                );
                if meta.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        out
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// One problem as razar prints it: `  × FILE:LINE:COL: MESSAGE` or `  × FILE: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Printed {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// The problems in razar's diagnostics output, in the order printed.
pub fn problems(stderr: &str) -> Vec<Printed> {
    stderr
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("× "))
        .map(|head| {
            // FILE:LINE:COL: MESSAGE, where FILE has no `: ` in it.
            let (location, message) = head.split_once(": ").unwrap_or((head, ""));
            let mut parts = location.rsplitn(3, ':');
            let (col, line, file) = (parts.next(), parts.next(), parts.next());
            match (
                file,
                line.and_then(|l| l.parse().ok()),
                col.and_then(|c| c.parse().ok()),
            ) {
                (Some(file), Some(line), Some(column)) => Printed {
                    file: file.to_owned(),
                    line: Some(line),
                    column: Some(column),
                    message: message.to_owned(),
                },
                _ => Printed {
                    file: location.to_owned(),
                    line: None,
                    column: None,
                    message: message.to_owned(),
                },
            }
        })
        .collect()
}

/// Asserts razar ended with exit code 2, printing every problem without panicking.
pub fn assert_bad_input(output: &Output) {
    let err = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(2),
        "expected exit code 2 (bad input)\nstderr:\n{err}"
    );
    assert!(!err.contains("panicked"), "razar panicked:\n{err}");
    assert!(
        err.contains("nothing was started or written"),
        "missing the summary line:\n{err}"
    );
    assert!(
        output.stdout.is_empty(),
        "bad input must print nothing on stdout:\n{}",
        stdout(output)
    );
}
