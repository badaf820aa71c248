//! Reading files, detecting their format, merging declarations by component name, applying
//! defaults and resolving everything into a [`Config`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::locate::Locator;
use super::{
    Backoff, Component, Condition, Config, Crown, Decl, Dependency, Format, Kind, Origin, Parsed,
    Restart, RestartMode, Stop, Text, abzu, blueprint, native, normalize, schema, valid_name,
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
    let Some(source) = config.sources.iter().find(|s| s.path == origin.file) else {
        return Problem::file(&origin.file, message);
    };
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
        let Some(format) = detect(path, &text, &mut diags) else {
            continue;
        };
        let source = SourceFile::new(path.clone(), format, text);
        if let Some(result) = parse_source(&source, &mut diags) {
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
        diags.push(Problem::file(path, "is a directory, not a config file"));
        return None;
    }
    if meta.len() > MAX_FILE_BYTES {
        diags.push(Problem::file(
            path,
            format!(
                "config is {} MiB; razar reads files up to 64 MiB",
                meta.len() / (1024 * 1024)
            ),
        ));
        return None;
    }
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) => {
            diags.push(Problem::file(path, format!("cannot read config: {err}")));
            return None;
        }
    };
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
                .with_hint("save the file as UTF-8"),
            );
            None
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Detects the format from the file name, then from the content.
fn detect(path: &Path, text: &str, diags: &mut Diagnostics) -> Option<Format> {
    let name = file_name(path);
    let stem = name
        .rsplit_once('.')
        .map_or(name.as_str(), |(stem, _)| stem);
    let by_name = match stem {
        "boot_config" => Some(Format::BootConfig),
        "razar_config" => Some(Format::RazarConfig),
        "razar_env" => Some(Format::RazarEnv),
        "component_priorities" => Some(Format::Priorities),
        _ if name.ends_with(".md") || name.ends_with(".markdown") => Some(Format::Blueprint),
        _ => None,
    };
    if by_name.is_some() {
        return by_name;
    }
    // By content: parse loosely and look at the top-level keys.
    let value: Option<Value> = serde_yaml::from_str(text).ok();
    let Some(Value::Object(map)) = value else {
        // Not a mapping (or not parsable): the native parser reports the precise error.
        return Some(Format::Native);
    };
    let has_health_check = map
        .get("components")
        .and_then(Value::as_array)
        .is_some_and(|items| items.iter().any(|c| c.get("health_check").is_some()));
    let format = if map.contains_key("layers") && !map.contains_key("components") {
        Format::RazarEnv
    } else if has_health_check {
        Format::BootConfig
    } else if ["enable_ai_handover", "chakra", "ai_agent"]
        .iter()
        .any(|k| map.contains_key(*k))
    {
        Format::RazarConfig
    } else if map.contains_key("components") || map.contains_key("version") {
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

/// Parses YAML or JSON text into a JSON value, reporting syntax errors with their position.
fn parse_value(source: &SourceFile, diags: &mut Diagnostics) -> Option<Value> {
    let path = &source.path;
    let text = &source.text;
    let is_json = file_name(path).ends_with(".json");
    let result = if is_json {
        serde_json::from_str::<Value>(text).map_err(|err| {
            let problem = Problem::at(
                path,
                text,
                err.line(),
                err.column(),
                1,
                format!("invalid JSON: {err}"),
            );
            problem.with_hint("fix the syntax at this position")
        })
    } else {
        serde_yaml::from_str::<Value>(text).map_err(|err| {
            let message = format!("invalid YAML: {err}");
            let problem = match err.location() {
                Some(loc) => Problem::at_offset(path, text, loc.index(), 1, message),
                None => Problem::file(path, message),
            };
            problem.with_hint("fix the syntax at this position")
        })
    };
    match result {
        Ok(Value::Object(map)) => Some(Value::Object(map)),
        Ok(other) => {
            let kind = match other {
                Value::Null => "empty",
                Value::Array(_) => "a list",
                _ => "a single value",
            };
            diags.push(
                Problem::file(path, format!("config is {kind}, expected a mapping"))
                    .with_hint("a razar config starts with top-level keys such as `components:`"),
            );
            None
        }
        Err(problem) => {
            diags.push(problem);
            None
        }
    }
}

fn parse_source(source: &SourceFile, diags: &mut Diagnostics) -> Option<Parsed> {
    let path = &source.path;
    let text = &source.text;
    if source.format == Format::Blueprint {
        return blueprint::parse(path, text, diags);
    }
    let value = parse_value(source, diags)?;
    let problems = schema::validate(source.format, &value);
    if !problems.is_empty() {
        for (pointer, message) in problems {
            diags.push(
                source
                    .locator
                    .problem(path, text, &pointer, message)
                    .with_hint(format!(
                        "see the {} schema in schemas/",
                        source.format.describe()
                    )),
            );
        }
        return None;
    }
    match source.format {
        Format::Native => native::parse(path, text, value, &source.locator, diags),
        Format::BootConfig => abzu::parse_boot_config(path, value, &source.locator, diags),
        Format::RazarConfig => abzu::parse_razar_config(path, value, &source.locator, diags),
        Format::RazarEnv => abzu::parse_razar_env(path, value, diags),
        Format::Priorities => abzu::parse_priorities(path, value, &source.locator, diags),
        Format::Blueprint => unreachable!("blueprints are parsed above"),
    }
}

/// What the merge knows about one component so far.
struct Merged {
    decl: Decl,
    /// Index of the source that declared the component first.
    first: usize,
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
    let mut merged: Vec<Merged> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut by_normalized: HashMap<String, usize> = HashMap::new();
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
                Some((q, other)) if q != p => diags.push(conflict_file(
                    &sources,
                    src,
                    other,
                    format!("`parallelism` is {p} here but {q} in"),
                )),
                None => parallelism = Some((p, src)),
                _ => {}
            }
        }
        if let Some(dir_setting) = &settings.state_dir {
            let resolved = absolutize(&dir, dir_setting);
            match &state_dir {
                Some((other_dir, other)) if *other_dir != resolved => diags.push(conflict_file(
                    &sources,
                    src,
                    *other,
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
                Some((_, other)) => diags.push(conflict_file(
                    &sources,
                    src,
                    *other,
                    "`crown` is configured here and in".to_owned(),
                )),
                None => crown = Some((c.clone(), src)),
            }
        }
        implied_stages(&mut file.decls);
        let metadata = matches!(source.format, Format::Priorities | Format::Blueprint);
        let mut seen_here: HashMap<String, usize> = HashMap::new();
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
                diags.push(
                    problem_in(source, &decl.origin, "/name", format!("invalid component name `{}`", decl.name.escape_debug()))
                        .with_hint("names may use only A-Z a-z 0-9 _ . - (1 to 64 characters), because they become file names"),
                );
                continue;
            }
            if let Some(&first) = seen_here.get(&decl.name) {
                let first_origin = &merged[first].decl.origin;
                diags.push(
                    problem_in(
                        source,
                        &decl.origin,
                        "/name",
                        format!("duplicate component name `{}`", decl.name),
                    )
                    .with_hint(format!(
                        "`{}` is already declared at {}; rename one of them",
                        decl.name,
                        line_of(&sources, first_origin)
                    )),
                );
                continue;
            }
            let key = normalize(&decl.name);
            let existing = by_name
                .get(&decl.name)
                .copied()
                .or_else(|| metadata.then(|| by_normalized.get(&key).copied()).flatten())
                .or_else(|| {
                    by_normalized.get(&key).copied().filter(|&i| {
                        matches!(
                            sources_of(&sources, &merged[i].decl.origin),
                            Some(Format::Priorities | Format::Blueprint)
                        )
                    })
                });
            match existing {
                Some(i) => {
                    seen_here.insert(decl.name.clone(), i);
                    merge_into(&mut merged[i], decl, src, &sources, diags);
                }
                None => {
                    let index = merged.len();
                    by_name.insert(decl.name.clone(), index);
                    by_normalized.entry(key).or_insert(index);
                    seen_here.insert(decl.name.clone(), index);
                    merged.push(Merged {
                        decl,
                        first: src,
                        set_by: HashMap::new(),
                    });
                }
            }
        }
    }
    // Stage-implied edges were computed per file with that file's names; metadata names may
    // since have been matched to other spellings, so map them through the merge.
    let canonical: HashMap<String, String> = merged
        .iter()
        .map(|m| (normalize(&m.decl.name), m.decl.name.clone()))
        .collect();
    let state_dir = state_dir.map_or_else(|| first_dir.join(".razar"), |(d, _)| d);
    let state_dir = absolutize(&std::env::current_dir().unwrap_or_default(), &state_dir);
    let components = merged
        .into_iter()
        .map(|m| resolve(m, &canonical, &layers))
        .collect();
    Config {
        parallelism: parallelism.map_or_else(default_parallelism, |(p, _)| p),
        state_dir,
        crown: crown.map(|(c, _)| c),
        components,
        sources,
    }
}

fn sources_of(sources: &[SourceFile], origin: &Origin) -> Option<Format> {
    sources
        .iter()
        .find(|s| s.path == origin.file)
        .map(|s| s.format)
}

fn default_parallelism() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

fn absolutize(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        let joined = base.join(path);
        if joined.is_absolute() {
            joined
        } else {
            std::env::current_dir().unwrap_or_default().join(joined)
        }
    }
}

fn problem_in(source: &SourceFile, origin: &Origin, field: &str, message: String) -> Problem {
    match (&origin.pointer, origin.line) {
        (Some(pointer), _) => source.locator.problem(
            &source.path,
            &source.text,
            &format!("{pointer}{field}"),
            message,
        ),
        (None, Some(line)) => {
            let len = source
                .text
                .lines()
                .nth(line.saturating_sub(1))
                .map_or(1, str::len);
            Problem::at(&source.path, &source.text, line, 1, len, message)
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

fn conflict_file(sources: &[SourceFile], here: usize, other: usize, message: String) -> Problem {
    Problem::file(
        &sources[here].path,
        format!("{message} {}", sources[other].path.display()),
    )
    .with_hint("set it in one file only")
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
    problem_in(
        source,
        &new.origin,
        &format!("/{field}"),
        format!(
            "conflicting definitions of `{}`: `{field}` differs from {}",
            kept.name,
            sources[first].path.display()
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
                name: canonical
                    .get(&normalize(&d.name))
                    .cloned()
                    .unwrap_or_else(|| d.name.clone()),
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
    if let Some(layer) = &layer
        && let Some(task) = layers.get(layer)
        && !depends_on.iter().any(|d| &d.name == task)
    {
        depends_on.push(Dependency {
            name: task.clone(),
            condition: Condition::Completed,
        });
    }
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
        cwd: decl.cwd,
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
