//! The errors razar's commands end with, and nothing else: the binary maps each to an exit
//! code in one place (`main.rs`).

use std::path::PathBuf;

use crate::diag::Diagnostics;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration (or another input file) is invalid: every problem found.
    #[error("invalid input")]
    Invalid(Diagnostics),
    /// The command line asks for something that cannot be done.
    #[error("{0}")]
    Usage(String),
    #[error("cannot write `{path}`")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Crown is `required` but could not be reached (or refused the handshake).
    #[error("{0}")]
    CrownUnavailable(String),
    /// The state directory (database, lock, state files) cannot be used.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("cannot read `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<Diagnostics> for Error {
    fn from(diags: Diagnostics) -> Self {
        Error::Invalid(diags)
    }
}

/// Writes a file atomically: a temporary file in the same directory, synced, then a rename,
/// so a reader (or a crash, even of the machine) never sees half a file.
pub fn write_atomic(path: &std::path::Path, contents: &[u8]) -> Result<(), Error> {
    replace_file(path, contents, true)
}

/// Like [`write_atomic`] without the sync: for files razar rebuilds from its database when
/// they are unreadable (`razar_state.json`), where a sync per rewrite would only add latency.
/// A reader still never sees half a file; after a power loss the file may be older or empty.
pub fn write_mirror(path: &std::path::Path, contents: &[u8]) -> Result<(), Error> {
    replace_file(path, contents, false)
}

fn replace_file(path: &std::path::Path, contents: &[u8], sync: bool) -> Result<(), Error> {
    use std::io::Write as _;
    let wrap = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(wrap)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(contents)?;
        if sync {
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(wrap)
}
