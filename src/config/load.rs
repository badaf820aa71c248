//! Reading files, detecting their format, merging declarations by component name, applying
//! defaults and resolving everything into a [`Config`].

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::document::{Document, ParseError};
use super::locate::Locator;
use super::{
    Backoff, Component, Condition, Config, Crown, Decl, Dependency, Format, Kind, Origin, Parsed,
    Restart, RestartMode, Stop, Text, abzu, blueprint, document, native, normalize, schema,
    valid_name,
};
use crate::diag::{Diagnostics, Problem};

/// Files larger than this are refused before parsing (a 100k-component config is ~10 MB).
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Readiness deadline for probes that set none.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A file razar read, kept for hashing and for locating problems.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub format: Format,
    pub text: Text,
    locator: Arc<Locator>,
}

impl PartialEq for SourceFile {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.format == other.format && self.text == other.text
    }
}

impl SourceFile {
    fn new(path: PathBuf, format: Format, text: Text) -> Self {
        let locator = Arc::new(Locator::new(text.clone()));
        Self {
            path,
            format,
            text,
            locator,
        }
    }
}

pub fn default_restart() -> Restart {
    Restart {
        policy: RestartMode::OnFailure,
        max_attempts: 3,
        backoff: Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            jitter: 0.2,
            reset_after: Duration::from_secs(60),
        },
    }
}

pub fn default_stop() -> Stop {
    Stop {
        signal: "SIGTERM".to_owned(),
        grace: Duration::from_secs(10),
        command: None,
    }
}

/// A problem at a component's declaration (for checks made after loading, e.g. in `graph`),
/// optionally at a field below it (`"/depends_on"`; `"/a|/b"` tries `/a`, then `/b`).
pub fn problem_at(config: &Config, origin: &Origin, field: &str, message: String) -> Problem {
    match config.sources.iter().find(|s| s.path == origin.file) {
        Some(source) => problem_in(source, origin, field, message),
        None => Problem::file(&origin.file, message),
    }
}

/// Loads, merges and checks the given files. Every problem is reported, none is fatal early.
pub fn load(paths: &[PathBuf]) -> Result<Config, Diagnostics> {
    let (config, diags) = load_partial(paths);
    diags.into_result()?;
    Ok(config.expect("a config is produced whenever no problem was found"))
}

/// Like [`load`], but returns what could be resolved alongside the problems, so later checks
/// (the dependency graph) can add theirs and the user sees everything in one run. The config
/// is `None` only when no file could be parsed at all.
pub fn load_partial(paths: &[PathBuf]) -> (Option<Config>, Diagnostics) {
    let mut diags = Diagnostics::new();
    let mut sources = Vec::new();
    let mut parsed = Vec::new();
    for path in paths {
        let Some(text) = read(path, &mut diags) else {
            continue;
        };
        diags.add_source(path, text.clone());
        let Some((format, input)) = parse(path, &text, &mut diags) else {
            continue;
        };
        let source = SourceFile::new(path.clone(), format, text.clone());
        if let Some(result) = convert(&source, input, &mut diags) {
            parsed.push((sources.len(), result));
        }
        sources.push(source);
    }
    if parsed.is_empty() {
        return (None, diags);
    }
    let config = merge(sources, parsed, &mut diags);
    (Some(config), diags)
}

fn read(path: &Path, diags: &mut Diagnostics) -> Option<Text> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(err) => {
            diags.push(
                Problem::file(path, format!("cannot read config: {err}"))
                    .with_hint("pass an existing file with -c, e.g. `-c config/demo.yaml`"),
            );
            return None;
        }
    };
    if meta.is_dir() {
        diags.push(
            Problem::file(path, "is a directory, not a config file")
                .with_hint("pass the config file itself, e.g. `-c config/razar.yaml`"),
        );
        return None;
    }
    if meta.len() > MAX_FILE_BYTES {
        diags.push(
            Problem::file(
                path,
                format!(
                    "config is {} MiB; razar reads files up to {} MiB",
                    meta.len() / (1024 * 1024),
                    MAX_FILE_BYTES / (1024 * 1024)
                ),
            )
            .with_hint("split the components over several files and pass each with -c"),
        );
        return None;
    }
    // Read at most one byte past the limit: a pipe or a device (`-c /dev/stdin`) has no size
    // to check beforehand.
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes));
    if let Err(err) = read {
        diags.push(Problem::file(path, format!("cannot read config: {err}")));
        return None;
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        diags.push(
            Problem::file(
                path,
                format!(
                    "config is over {} MiB; razar reads files up to {} MiB",
                    MAX_FILE_BYTES / (1024 * 1024),
                    MAX_FILE_BYTES / (1024 * 1024)
                ),
            )
            .with_hint("split the components over several files and pass each with -c"),
        );
        return None;
    }
    // A UTF-8 byte order mark (some Windows editors write one) is not part of the text.
    if bytes.starts_with(b"\xef\xbb\xbf") {
        bytes.drain(..3);
    }
    match String::from_utf8(bytes) {
        Ok(text) if text.trim().is_empty() => {
            diags.push(
                Problem::file(path, "config file is empty")
                    .with_hint("declare at least `components:`; see docs/formats.md"),
            );
            None
        }
        Ok(text) if text.contains('\0') => {
            let offset = text.find('\0').unwrap_or(0);
            diags.push(
                Problem::at_offset(
                    path,
                    &text,
                    offset,
                    1,
                    "config contains a NUL byte: this is not a text file",
                )
                .with_hint("pass a YAML, JSON or Markdown config"),
            );
            None
        }
        Ok(text) => Some(Arc::from(text)),
        Err(err) => {
            let offset = err.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(err.as_bytes()).into_owned();
            diags.push(
                Problem::at_offset(
                    path,
                    &text,
                    offset,
                    1,
                    format!("config is not UTF-8 text (invalid byte at offset {offset})"),
                )
                .with_hint("save the file as UTF-8, or pass a YAML, JSON or Markdown config"),
            );
            None
        }
    }
}

/// Whether a file is read as JSON (by its extension) rather than YAML.
pub(crate) fn is_json(path: &Path) -> bool {
    file_name(path).ends_with(".json")
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

/// A parsed input: Markdown is read line by line by its own parser, every other format is a
/// YAML or JSON document.
enum Input<'a> {
    Markdown,
    Data(Document<'a>),
}

/// The format a file name announces (ABZU's files keep their names), if any.
fn format_by_name(path: &Path) -> Option<Format> {
    let name = file_name(path);
    let stem = name
        .rsplit_once('.')
        .map_or(name.as_str(), |(stem, _)| stem);
    match stem {
        "boot_config" => Some(Format::BootConfig),
        "razar_config" => Some(Format::RazarConfig),
        "razar_env" => Some(Format::RazarEnv),
        "component_priorities" => Some(Format::Priorities),
        _ if name.ends_with(".md") || name.ends_with(".markdown") => Some(Format::Blueprint),
        _ => None,
    }
}

/// Reads a file's text once: detects the format from the name, else from the content (a
/// blueprint's heading, or the top-level keys of the parsed document).
fn parse<'a>(path: &Path, text: &'a str, diags: &mut Diagnostics) -> Option<(Format, Input<'a>)> {
    let by_name = format_by_name(path);
    if by_name == Some(Format::Blueprint)
        || (by_name.is_none() && blueprint::has_startup_order(text))
    {
        return Some((Format::Blueprint, Input::Markdown));
    }
    let mut document = match document::parse(text, is_json(path)) {
        Ok(Ok(document)) => document,
        Ok(Err(other)) => {
            diags.push(not_a_mapping(path, text, &other));
            return None;
        }
        Err(err) => {
            diags.push(parse_problem(path, text, err));
            return None;
        }
    };
    let format = match by_name {
        Some(format) => format,
        None => detect(path, text, &mut document, diags)?,
    };
    Some((format, Input::Data(document)))
}

/// Detects the format of a document whose file name says nothing, from its top-level keys
/// (and its first component).
fn detect(
    path: &Path,
    text: &str,
    document: &mut Document<'_>,
    diags: &mut Diagnostics,
) -> Option<Format> {
    let first = match document.first_item() {
        Ok(first) => first,
        Err(err) => {
            diags.push(parse_problem(path, text, err));
            return None;
        }
    };
    let map = &document.header;
    let has_health_check = first.is_some_and(|c| c.get("health_check").is_some());
    let format = if map.contains_key("layers") && !document.has_list() {
        Format::RazarEnv
    } else if has_health_check {
        Format::BootConfig
    } else if ["enable_ai_handover", "chakra", "ai_agent"]
        .iter()
        .any(|k| map.contains_key(*k))
    {
        Format::RazarConfig
    } else if document.has_list() || map.contains_key("components") || map.contains_key("version") {
        Format::Native
    } else if !map.is_empty()
        && map.values().all(|v| {
            v.get("priority")
                .and_then(Value::as_str)
                .is_some_and(|p| p.starts_with('P'))
        })
    {
        Format::Priorities
    } else {
        diags.push(
            Problem::file(path, "cannot tell which config format this is")
                .with_hint("a razar config has a top-level `components:` list; see docs/formats.md for the ABZU formats"),
        );
        return None;
    };
    Some(format)
}

/// The problem with a document whose top level is not a mapping.
fn not_a_mapping(path: &Path, text: &str, value: &Value) -> Problem {
    let kind = match value {
        Value::Null => "empty (only comments)",
        Value::Array(_) => "a list",
        _ => "a single value",
    };
    let first = first_content_line(text);
    let line_len = text.lines().nth(first - 1).map_or(1, str::len);
    Problem::at(
        path,
        text,
        first,
        1,
        line_len,
        format!("config is {kind}, expected a mapping"),
    )
    .with_hint("a razar config starts with top-level keys such as `components:`")
}

/// 1-based number of the first line that is neither blank nor a comment (1 if none).
fn first_content_line(text: &str) -> usize {
    text.lines()
        .position(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && t != "---"
        })
        .map_or(1, |i| i + 1)
}

/// yaml_serde ends messages with " at line L column C"; the problem shows its own position
/// (which for a duplicate key is more precise), so the suffix goes.
fn without_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(at)
            if message[at + 9..]
                .split(" column ")
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) =>
        {
            &message[..at]
        }
        _ => message,
    }
}

/// A syntax error as a located problem, with a hint fitting its cause.
pub(super) fn parse_problem(path: &Path, text: &str, err: ParseError) -> Problem {
    let (message, offset) = match &err {
        ParseError::Json(err) => (
            format!("invalid JSON: {}", without_position(&err.to_string())),
            (err.line() > 0).then(|| crate::diag::offset_of(text, err.line(), err.column())),
        ),
        ParseError::Yaml(err) => (
            format!("invalid YAML: {}", without_position(&err.to_string())),
            err.location().map(|loc| loc.index()),
        ),
    };
    let hint = if message.contains("recursion limit") {
        "nesting is limited to 128 levels; a config never needs that many"
    } else if message.contains("repetition limit") {
        "anchors and aliases expand to too many nodes (an alias bomb?); write the values out"
    } else if message.contains("unknown anchor") {
        "define the anchor (`&name`) before the alias (`*name`) that uses it"
    } else if message.contains(document::DUPLICATE_KEY) {
        "each key may appear once per mapping; remove or merge the repeated one"
    } else {
        "fix the syntax at this position"
    };
    // The parser places a duplicate key at its mapping, and an alias bomb nowhere: point
    // at the repeated key, and at the first alias.
    let offset = if message.contains(document::DUPLICATE_KEY) {
        Locator::new(Arc::from(text))
            .first_duplicate_key()
            .or(offset)
    } else if offset.is_none() && message.contains("repetition limit") {
        Locator::new(Arc::from(text)).first_alias()
    } else {
        offset
    };
    let problem = match offset {
        Some(offset) => Problem::at_offset(path, text, offset, 1, message),
        None => Problem::file(path, message),
    };
    problem.with_hint(hint)
}

/// Checks a parsed document against its schema, then converts it into declarations.
fn convert(source: &SourceFile, input: Input<'_>, diags: &mut Diagnostics) -> Option<Parsed> {
    let path = &source.path;
    let text = &source.text;
    let document = match input {
        Input::Markdown => return blueprint::parse(path, text, diags),
        Input::Data(document) => document,
    };
    if source.format == Format::Native {
        return native::read(path, text, document, &source.locator, diags);
    }
    let value = match document.into_value() {
        Ok(value) => value,
        Err(err) => {
            diags.push(parse_problem(path, text, err));
            return None;
        }
    };
    let problems = schema::validate(source.format, &value);
    if !problems.is_empty() {
        for violation in problems {
            diags.push(
                source
                    .locator
                    .problem(path, text, &violation.pointer, violation.describe())
                    .with_hint(format!(
                        "see the {} schema, {}",
                        source.format.describe(),
                        source.format.schema_file()
                    )),
            );
        }
        return None;
    }
    match source.format {
        Format::BootConfig => abzu::parse_boot_config(path, value, &source.locator, diags),
        Format::RazarConfig => abzu::parse_razar_config(path, value, &source.locator, diags),
        Format::RazarEnv => abzu::parse_razar_env(path, value, &source.locator, diags),
        Format::Priorities => abzu::parse_priorities(path, value, &source.locator, diags),
        Format::Native | Format::Blueprint => {
            unreachable!("native documents and blueprints are read above")
        }
    }
}

/// What the merge knows about one component so far.
struct Merged {
    decl: Decl,
    /// Index of the source that declared the component first.
    first: usize,
    /// Index of the source that declared it last (a second declaration in the same file
    /// is a duplicate).
    last_src: usize,
    /// Which source set each field, for conflict messages.
    set_by: HashMap<String, usize>,
}

fn merge(
    sources: Vec<SourceFile>,
    parsed: Vec<(usize, Parsed)>,
    diags: &mut Diagnostics,
) -> Config {
    let first_dir = sources
        .first()
        .and_then(|s| s.path.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut parallelism: Option<(usize, usize)> = None;
    let mut state_dir: Option<(PathBuf, usize)> = None;
    let mut crown: Option<(Crown, usize)> = None;
    // Sized once: growing a vector of 100k declarations by doubling copies it ~17 times.
    let declared: usize = parsed.iter().map(|(_, p)| p.decls.len()).sum();
    let mut merged: Vec<Merged> = Vec::with_capacity(declared);
    let mut by_name: FxHashMap<String, usize> =
        FxHashMap::with_capacity_and_hasher(declared, Default::default());
    let mut by_normalized: Option<HashMap<String, usize>> = sources
        .iter()
        .any(|s| matches!(s.format, Format::Priorities | Format::Blueprint))
        .then(HashMap::new);
    let mut layers: BTreeMap<String, String> = BTreeMap::new();

    for (src, mut file) in parsed {
        let source = &sources[src];
        let dir = source
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let settings = &file.settings;
        if let Some(p) = settings.parallelism {
            match parallelism {
                Some((q, other)) if q != p => diags.push(conflict_setting(
                    &sources,
                    src,
                    other,
                    "parallelism",
                    format!("`parallelism` is {p} here but {q} in"),
                )),
                None => parallelism = Some((p, src)),
                _ => {}
            }
        }
        if let Some(dir_setting) = &settings.state_dir {
            let resolved = absolutize(&dir, dir_setting);
            match &state_dir {
                Some((other_dir, other)) if *other_dir != resolved => diags.push(conflict_setting(
                    &sources,
                    src,
                    *other,
                    "state_dir",
                    format!(
                        "`state_dir` is {} here but {} in",
                        resolved.display(),
                        other_dir.display()
                    ),
                )),
                None => state_dir = Some((resolved, src)),
                _ => {}
            }
        }
        if let Some(c) = &settings.crown {
            match &crown {
                Some((existing, other)) if existing != c => diags.push(conflict_setting(
                    &sources,
                    src,
                    *other,
                    "crown",
                    "`crown` is configured differently here and in".to_owned(),
                )),
                Some(_) => {}
                None => crown = Some((c.clone(), src)),
            }
        }
        implied_stages(&mut file.decls);
        let metadata = matches!(source.format, Format::Priorities | Format::Blueprint);
        for mut decl in file.decls {
            // Per-file defaults.
            if decl.command.is_some() {
                if decl.restart.is_none() {
                    decl.restart = settings.defaults.restart.clone();
                }
                if decl.stop.is_none() {
                    decl.stop = settings.defaults.stop.clone();
                }
            }
            if let Some(dir_setting) = &decl.cwd {
                decl.cwd = Some(absolutize(&dir, dir_setting));
            }
            if source.format == Format::RazarEnv
                && let Some(layer) = &decl.layer
            {
                layers.insert(layer.clone(), decl.name.clone());
            }
            if !valid_name(&decl.name) {
                diags.push(invalid_name(source, &decl));
                continue;
            }
            // Metadata titles ("Memory Store") match config names (`memory_store`) by
            // normalisation; configs without metadata files never pay for that.
            let key = by_normalized.as_ref().map(|_| normalize(&decl.name));
            let normalized_match = |merged: &[Merged]| {
                let i = *by_normalized.as_ref()?.get(key.as_ref()?)?;
                let other_is_metadata = matches!(
                    sources[merged[i].first].format,
                    Format::Priorities | Format::Blueprint
                );
                (metadata || other_is_metadata).then_some(i)
            };
            let existing = by_name
                .get(&decl.name)
                .copied()
                .or_else(|| normalized_match(&merged));
            match existing {
                // The same file naming one component twice is a duplicate, not a merge.
                Some(i) if merged[i].last_src == src => {
                    let first_origin = &merged[i].decl.origin;
                    diags.push(
                        problem_in(
                            source,
                            &decl.origin,
                            "/name",
                            format!("duplicate component name `{}`", decl.name),
                        )
                        .with_hint(format!(
                            "`{}` is already declared at {}; rename or remove one of them",
                            merged[i].decl.name,
                            line_of(&sources, first_origin)
                        )),
                    );
                }
                Some(i) => {
                    merged[i].last_src = src;
                    merge_into(&mut merged[i], decl, src, &sources, diags);
                }
                None => {
                    let index = merged.len();
                    by_name.insert(decl.name.clone(), index);
                    if let (Some(map), Some(key)) = (&mut by_normalized, key) {
                        map.entry(key).or_insert(index);
                    }
                    merged.push(Merged {
                        decl,
                        first: src,
                        last_src: src,
                        set_by: HashMap::new(),
                    });
                }
            }
        }
    }
    // Stage-implied edges were computed per file with that file's names; metadata names may
    // since have been matched to other spellings, so map them through the merge.
    let canonical: HashMap<String, String> = if by_normalized.is_some() {
        merged
            .iter()
            .map(|m| (normalize(&m.decl.name), m.decl.name.clone()))
            .collect()
    } else {
        HashMap::new()
    };
    let state_dir = state_dir.map_or_else(|| first_dir.join(".razar"), |(d, _)| d);
    let state_dir = absolutize(&std::env::current_dir().unwrap_or_default(), &state_dir);
    // Pushed into an exact-size vector: collecting in place would keep the larger
    // `Merged` allocation (grown by doubling) alive for the config's lifetime.
    let mut components: Vec<Component> = Vec::with_capacity(merged.len());
    for m in merged {
        // With razar_env.yaml layers given, a layer none of them declares is a mistake (the
        // component would run without any environment); with none given, layers are not
        // known and not checked.
        if !layers.is_empty()
            && let Some(layer) = &m.decl.layer
            && !layers.contains_key(layer)
            && let Some(source) = sources.iter().find(|s| s.path == m.decl.origin.file)
        {
            let known: Vec<&str> = layers.keys().map(String::as_str).collect();
            diags.push(
                problem_in(
                    source,
                    &m.decl.origin,
                    "/layer",
                    format!(
                        "`{}` runs in layer `{layer}`, which no razar_env.yaml given declares",
                        m.decl.name
                    ),
                )
                .with_hint(format!("the layers declared are: {}", known.join(", "))),
            );
        }
        components.push(resolve(m, &canonical, &layers, &state_dir));
    }
    let by_name = components
        .iter()
        .enumerate()
        .map(|(i, c): (usize, &Component)| (c.name.clone(), i))
        .collect();
    Config {
        parallelism: parallelism.map_or_else(default_parallelism, |(p, _)| p),
        state_dir,
        crown: crown.map(|(c, _)| c),
        components,
        sources,
        by_name,
    }
}

fn invalid_name(source: &SourceFile, decl: &Decl) -> Problem {
    let name = &decl.name;
    let why = if name.is_empty() {
        "it is empty".to_owned()
    } else if name.len() > 64 {
        format!("it is {} bytes long", name.len())
    } else if name == "." || name == ".." || name.contains('/') || name.contains('\\') {
        "it could name a different directory".to_owned()
    } else {
        match name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            Some(c) if c.is_whitespace() => "spaces are not allowed".to_owned(),
            Some(c) => format!("`{}` is not allowed", c.escape_debug()),
            None => "it is reserved".to_owned(),
        }
    };
    problem_in(
        source,
        &decl.origin,
        "/name",
        format!("invalid component name `{}`: {why}", name.escape_debug()),
    )
    .with_hint(
        "names may use only A-Z a-z 0-9 _ . - (1 to 64 characters), because they become file names",
    )
}

fn default_parallelism() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// `path` made absolute against `base` (itself made absolute against the current
/// directory), with `.` and `..` resolved lexically so plans show `/srv/app/.razar`, not
/// `/srv/app/config/../.razar`.
fn absolutize(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else if base.is_absolute() {
        base.join(path)
    } else {
        std::env::current_dir()
            .unwrap_or_default()
            .join(base)
            .join(path)
    };
    let mut clean = PathBuf::new();
    for part in joined.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !clean.pop() {
                    clean.push(part);
                }
            }
            other => clean.push(other),
        }
    }
    clean
}

/// A problem at a declaration of `source`, at `field` below it when that exists there
/// (`"/a|/b"` tries `/a`, then `/b`), else at the declaration itself.
fn problem_in(source: &SourceFile, origin: &Origin, field: &str, message: String) -> Problem {
    match (&origin.pointer, origin.line) {
        (Some(pointer), _) => {
            let candidates: Vec<String> =
                field.split('|').map(|f| format!("{pointer}{f}")).collect();
            let chosen = candidates
                .iter()
                .find(|c| source.locator.exists(c))
                .unwrap_or(&candidates[0]);
            source
                .locator
                .problem(&source.path, &source.text, chosen, message)
        }
        (None, Some(line)) => {
            let line_len = source
                .text
                .lines()
                .nth(line.saturating_sub(1))
                .map_or(1, str::len);
            Problem::at(&source.path, &source.text, line, 1, line_len, message)
        }
        (None, None) => Problem::file(&source.path, message),
    }
}

fn line_of(sources: &[SourceFile], origin: &Origin) -> String {
    let line = match (origin.line, &origin.pointer) {
        (Some(line), _) => Some(line),
        (None, Some(pointer)) => sources
            .iter()
            .find(|s| s.path == origin.file)
            .map(|s| s.locator.line(pointer)),
        (None, None) => None,
    };
    match line {
        Some(line) => format!("{}:{line}", origin.file.display()),
        None => origin.file.display().to_string(),
    }
}

/// A top-level setting given differently by two files: located at the later one, naming
/// the earlier one with its line.
fn conflict_setting(
    sources: &[SourceFile],
    here: usize,
    other: usize,
    key: &str,
    message: String,
) -> Problem {
    let source = &sources[here];
    let first = &sources[other];
    let pointer = format!("/{key}");
    let at = format!("{}:{}", first.path.display(), first.locator.line(&pointer));
    source
        .locator
        .problem(
            &source.path,
            &source.text,
            &pointer,
            format!("{message} {at}"),
        )
        .with_hint(format!(
            "`{key}` is set in both {} and {}; set it in one file only, or to the same value",
            first.path.display(),
            source.path.display()
        ))
}

/// Within one file, a staged declaration without explicit dependencies depends on every
/// declaration of the nearest lower stage (ABZU's "priorities are stages").
fn implied_stages(decls: &mut [Decl]) {
    let mut stages: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for decl in decls.iter() {
        if let Some(stage) = decl.stage {
            stages.entry(stage).or_default().push(decl.name.clone());
        }
    }
    for decl in decls.iter_mut() {
        let (Some(stage), None) = (decl.stage, &decl.depends_on) else {
            continue;
        };
        if let Some((&below_stage, below)) = stages.range(..stage).next_back() {
            decl.notes.push(format!(
                "stage {stage}: starts after every component of stage {below_stage}"
            ));
            decl.stage_deps = below
                .iter()
                .map(|name| Dependency {
                    name: name.clone(),
                    condition: Condition::Ready,
                })
                .collect();
        }
    }
}

macro_rules! merge_field {
    ($merged:expr, $decl:expr, $field:ident, $src:expr, $sources:expr, $diags:expr) => {
        if let Some(value) = $decl.$field.take() {
            let field = stringify!($field);
            let other = $merged.set_by.get(field).copied().unwrap_or($merged.first);
            match &$merged.decl.$field {
                Some(existing) if *existing != value => {
                    $diags.push(field_conflict(
                        $sources,
                        &$merged.decl,
                        &$decl,
                        field,
                        other,
                        $src,
                    ));
                }
                Some(_) => {}
                None => {
                    $merged.decl.$field = Some(value);
                    $merged.set_by.insert(field.to_owned(), $src);
                }
            }
        }
    };
}

fn field_conflict(
    sources: &[SourceFile],
    kept: &Decl,
    new: &Decl,
    field: &str,
    first: usize,
    src: usize,
) -> Problem {
    let source = &sources[src];
    // Where the kept value was written, when that file's declaration is the kept origin.
    let there = match &kept.origin.pointer {
        Some(pointer) if kept.origin.file == sources[first].path => format!(
            "{}:{}",
            sources[first].path.display(),
            sources[first].locator.line(&format!("{pointer}/{field}"))
        ),
        _ => line_of(sources, &kept.origin),
    };
    problem_in(
        source,
        &new.origin,
        &format!("/{field}"),
        format!(
            "conflicting definitions of `{}`: `{field}` here differs from {there}",
            kept.name
        ),
    )
    .with_hint(format!(
        "component `{}` is declared in both {} and {}; make the `{field}` values agree or define it in one file",
        kept.name,
        sources[first].path.display(),
        source.path.display()
    ))
}

fn merge_into(
    merged: &mut Merged,
    mut decl: Decl,
    src: usize,
    sources: &[SourceFile],
    diags: &mut Diagnostics,
) {
    merge_field!(merged, decl, kind, src, sources, diags);
    merge_field!(merged, decl, command, src, sources, diags);
    merge_field!(merged, decl, depends_on, src, sources, diags);
    merge_field!(merged, decl, priority, src, sources, diags);
    merge_field!(merged, decl, ready, src, sources, diags);
    merge_field!(merged, decl, restart, src, sources, diags);
    merge_field!(merged, decl, stop, src, sources, diags);
    merge_field!(merged, decl, cwd, src, sources, diags);
    merge_field!(merged, decl, layer, src, sources, diags);
    merge_field!(merged, decl, tests, src, sources, diags);
    merge_field!(merged, decl, estimate, src, sources, diags);
    merge_field!(merged, decl, daemonizes, src, sources, diags);
    merge_field!(merged, decl, optional, src, sources, diags);
    for (key, value) in std::mem::take(&mut decl.env) {
        match merged.decl.env.get(&key) {
            Some(existing) if *existing != value => {
                diags.push(field_conflict(
                    sources,
                    &merged.decl,
                    &decl,
                    &format!("env/{key}"),
                    merged.first,
                    src,
                ));
            }
            _ => {
                merged.decl.env.insert(key, value);
            }
        }
    }
    merged.decl.notes.append(&mut decl.notes);
    for dep in decl.stage_deps.drain(..) {
        if !merged.decl.stage_deps.contains(&dep) {
            merged.decl.stage_deps.push(dep);
        }
    }
    // A definition with a command is the one users look for in diagnostics.
    if sources[src].format != Format::Priorities && sources[src].format != Format::Blueprint {
        let metadata_first = matches!(
            sources[merged.first].format,
            Format::Priorities | Format::Blueprint
        );
        if metadata_first {
            merged.decl.origin = decl.origin;
            merged.decl.name = decl.name;
            merged.first = src;
        }
    }
}

fn resolve(
    merged: Merged,
    canonical: &HashMap<String, String>,
    layers: &BTreeMap<String, String>,
    state_dir: &Path,
) -> Component {
    let Merged { decl, .. } = merged;
    let kind = decl.kind.unwrap_or(if decl.command.is_some() {
        Kind::Service
    } else {
        Kind::Task
    });
    let mut depends_on = match decl.depends_on {
        Some(explicit) => explicit,
        None => decl
            .stage_deps
            .iter()
            .map(|d| Dependency {
                name: if canonical.is_empty() {
                    d.name.clone()
                } else {
                    canonical
                        .get(&normalize(&d.name))
                        .cloned()
                        .unwrap_or_else(|| d.name.clone())
                },
                condition: d.condition,
            })
            .collect(),
    };
    // A component of a Python layer runs inside that layer's environment, built first.
    let layer = decl
        .layer
        .clone()
        .or_else(|| layers.contains_key(&decl.name).then(|| decl.name.clone()))
        .filter(|layer| layers.get(layer) != Some(&decl.name));
    let mut path = Vec::new();
    if let Some(layer) = &layer
        && let Some(task) = layers.get(layer)
    {
        if !depends_on.iter().any(|d| &d.name == task) {
            depends_on.push(Dependency {
                name: task.clone(),
                condition: Condition::Completed,
            });
        }
        path.push(abzu::layer_bin(state_dir, layer));
    }
    // A layer's build task runs in the state directory, where its environment lives.
    let builds_layer = layers.values().any(|task| *task == decl.name);
    let cwd = match decl.cwd {
        None if builds_layer => Some(state_dir.to_path_buf()),
        cwd => cwd,
    };
    let mut ready = decl.ready;
    if let Some(probe) = &mut ready
        && probe.timeout == Duration::ZERO
    {
        probe.timeout = DEFAULT_READY_TIMEOUT;
    }
    Component {
        name: decl.name,
        kind,
        command: decl.command,
        depends_on,
        priority: decl.priority.unwrap_or(0),
        ready,
        restart: decl.restart.unwrap_or_else(default_restart),
        stop: decl.stop.unwrap_or_else(default_stop),
        env: decl.env,
        cwd,
        path,
        layer,
        tests: decl.tests,
        estimate: decl.estimate,
        daemonizes: decl.daemonizes.unwrap_or(false),
        optional: decl.optional.unwrap_or(false),
        notes: decl.notes,
        origin: decl.origin,
    }
}

/// SHA-256 over every source's format and bytes, in order.
pub fn hash_sources(sources: &[SourceFile]) -> String {
    let mut hasher = Sha256::new();
    for source in sources {
        hasher.update(format!("{:?}\n{}\n", source.format, source.text.len()).as_bytes());
        hasher.update(source.text.as_bytes());
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}
