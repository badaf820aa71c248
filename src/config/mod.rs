//! Loading: every supported configuration format becomes one validated [`Config`].
//!
//! Each format module turns a file into [`Decl`]s (what that file says about each component,
//! with source positions); [`load`] merges the declarations of all files by component name,
//! applies defaults and checks every field, reporting all problems at once. This module knows
//! nothing of graphs or plans: dependency *names* are checked later by `graph::compile`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod abzu;
pub mod address;
mod blueprint;
pub mod document;
mod load;
pub mod locate;
pub mod native;
mod schema;

pub use load::{SourceFile, default_restart, default_stop, load, load_partial, problem_at};

/// A component name: `[A-Za-z0-9_.-]{1,64}`, because names become file names.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && name != "."
        && name != ".."
}

/// The resolved configuration: what every loaded file says, merged and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Components started at once in their start-up phase.
    pub parallelism: usize,
    /// Absolute directory for the sled database, logs and audit files.
    pub state_dir: PathBuf,
    pub crown: Option<Crown>,
    /// Components in declaration order (first file first).
    pub components: Vec<Component>,
    /// The files this configuration was read from, with their contents (for hashing).
    pub sources: Vec<SourceFile>,
    /// Index into `components` by name (names are unique once loaded). FxHash: names
    /// come from the operator's own files, and it hashes them several times faster.
    by_name: rustc_hash::FxHashMap<String, usize>,
}

impl Config {
    /// The position of the component called `name` in `components`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn component(&self, name: &str) -> Option<&Component> {
        self.index_of(name).map(|i| &self.components[i])
    }

    /// Adds a component razar makes itself (a Crown model's launch task), findable by name
    /// like the declared ones; returns its index.
    pub fn push_component(&mut self, component: Component) -> usize {
        let index = self.components.len();
        self.by_name.insert(component.name.clone(), index);
        self.components.push(component);
        index
    }

    /// SHA-256 over every source file's path and bytes: the identity of these inputs.
    pub fn content_hash(&self) -> String {
        load::hash_sources(&self.sources)
    }
}

/// A service runs until stopped and is up once ready; a task runs to completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Service,
    Task,
}

/// How a component is started: argv exec'd directly, or a string run by `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum Command {
    Argv(Vec<String>),
    Shell(String),
}

// By hand rather than `#[serde(untagged)]`, which buffers every value before trying each
// variant: commands are on every component, and a 100k-component config has 100k of them.
impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Command;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a command: an argv list of strings, or a shell string")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Command, E> {
                Ok(Command::Shell(text.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Command, E> {
                Ok(Command::Shell(text))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Command, A::Error> {
                let mut argv = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                while let Some(word) = seq.next_element::<String>()? {
                    argv.push(word);
                }
                Ok(Command::Argv(argv))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Command {
    /// The argv to exec: a shell string becomes `sh -c STRING`.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Argv(argv) => argv.clone(),
            Command::Shell(script) => vec!["sh".to_owned(), "-c".to_owned(), script.clone()],
        }
    }

    /// Shown in plans: a shell string as written, argv joined with spaces.
    pub fn display(&self) -> String {
        match self {
            Command::Argv(argv) => argv.join(" "),
            Command::Shell(script) => script.clone(),
        }
    }
}

/// The state a dependency must reach before its dependent may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// Spawned (the process exists).
    Started,
    /// Readiness probe passed (services), or completed (tasks).
    Ready,
    /// Exited 0 (tasks only).
    Completed,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Started => "started",
            Condition::Ready => "ready",
            Condition::Completed => "completed",
        }
    }
}

/// An edge `name -> this component`, with the condition `name` must reach.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dependency {
    pub name: String,
    pub condition: Condition,
}

/// What makes a service ready.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeCheck {
    /// A TCP connect to `host:port` succeeds.
    Tcp(String),
    /// An HTTP GET of the URL answers 2xx.
    Http(String),
    /// The command exits 0.
    Exec(Command),
    /// A line of the component's output matches the regex.
    Log(String),
}

/// A readiness probe with its polling interval and overall deadline.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Probe {
    pub check: ProbeCheck,
    /// Longest pause between two checks (polling starts faster and backs off to this).
    #[serde(with = "millis")]
    pub interval: Duration,
    /// How long after spawning the component must be ready before the attempt fails.
    #[serde(with = "millis")]
    pub timeout: Duration,
}

/// When a component that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    Never,
    OnFailure,
    Always,
}

/// Exponential, capped, jittered backoff between attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    #[serde(with = "millis")]
    pub initial: Duration,
    #[serde(with = "millis")]
    pub max: Duration,
    /// Fraction of each delay randomised, 0.0 to 1.0.
    pub jitter: f64,
    /// Uptime after which the attempt counter resets.
    #[serde(with = "millis")]
    pub reset_after: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restart {
    pub policy: RestartMode,
    /// Attempts in total (the first start included) before quarantine.
    pub max_attempts: u32,
    pub backoff: Backoff,
}

/// How a component is stopped: a signal to its process group, then SIGKILL after `grace`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stop {
    /// Signal name, e.g. `SIGTERM`.
    pub signal: String,
    #[serde(with = "millis")]
    pub grace: Duration,
    /// Run before signalling, as ABZU's `stop:` command did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
}

/// Where a declaration came from: its file, and either a JSON pointer into it (YAML/JSON
/// formats: the line is only computed when a diagnostic needs it) or a 1-based line.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Origin {
    pub file: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

impl Origin {
    /// Whether this is razar's task launching a Crown model (`crown.models[i]`), not a
    /// declared component.
    pub fn is_model_launch(&self) -> bool {
        self.pointer
            .as_deref()
            .is_some_and(|p| p.starts_with("/crown/models/"))
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        match (&self.line, &self.pointer) {
            (Some(line), _) => write!(f, ":{line}"),
            (None, Some(pointer)) => write!(f, "#{pointer}"),
            (None, None) => Ok(()),
        }
    }
}

/// One resolved component.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    pub name: String,
    pub kind: Kind,
    /// `None` for a component only named by a metadata format (blueprint, priority registry):
    /// it is a milestone that completes at once, like a ninja `phony` edge.
    pub command: Option<Command>,
    pub depends_on: Vec<Dependency>,
    /// Lower boots earlier among components ready at the same moment.
    pub priority: i64,
    pub ready: Option<Probe>,
    pub restart: Restart,
    pub stop: Stop,
    pub env: BTreeMap<String, String>,
    /// Absolute working directory.
    pub cwd: Option<PathBuf>,
    /// Absolute directories to put in front of `PATH` when running the command (the `bin`
    /// of its layer's virtual environment).
    pub path: Vec<PathBuf>,
    /// The Python environment layer the component runs in.
    pub layer: Option<String>,
    pub tests: Option<Command>,
    /// Predicted time to ready (or completion) for components without history.
    pub estimate: Option<Duration>,
    /// The command may exit 0 before readiness (it launches a daemon, as ABZU's boot_config
    /// entries do); readiness is then decided by the probe alone.
    pub daemonizes: bool,
    /// Declared optional (ABZU's blueprint and priority registry say so).
    pub optional: bool,
    /// Free text from metadata formats (e.g. a blueprint's health check prose).
    pub notes: Vec<String>,
    pub origin: Origin,
}

/// Crown link settings (see docs/crown-protocol.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Crown {
    /// `None` means: read `CROWN_WS_URL` at connect time.
    pub url: Option<String>,
    pub required: bool,
    /// Name of the environment variable holding the bearer token (never the token itself).
    pub token_env: Option<String>,
    #[serde(with = "millis")]
    pub timeout: Duration,
    pub retries: u32,
    pub models: Vec<Model>,
}

/// A model Crown should have; launched before the boot when Crown does not advertise it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub capability: String,
    pub aliases: Vec<String>,
    pub launch: Command,
}

/// Serde adapter writing durations as whole milliseconds (plans must be byte-stable).
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(crate::duration::millis(*duration))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// What a single file says about one component, before merging and defaults.
///
/// Every field is optional so metadata formats (priorities, blueprint) can contribute only
/// what they know; `load` merges the declarations of all files and reports conflicts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decl {
    pub name: String,
    pub kind: Option<Kind>,
    pub command: Option<Command>,
    /// `None`: not declared by this file (implicit stage ordering may apply).
    pub depends_on: Option<Vec<Dependency>>,
    pub priority: Option<i64>,
    pub ready: Option<Probe>,
    pub restart: Option<Restart>,
    pub stop: Option<Stop>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    pub layer: Option<String>,
    pub tests: Option<Command>,
    pub estimate: Option<Duration>,
    pub daemonizes: Option<bool>,
    pub optional: Option<bool>,
    pub notes: Vec<String>,
    /// Stage for formats whose order is implied (ABZU): a component with no explicit
    /// dependencies depends on every component of the nearest lower stage of the same file.
    pub stage: Option<i64>,
    /// Dependencies implied by `stage` (filled by `load`; explicit `depends_on` wins).
    pub stage_deps: Vec<Dependency>,
    pub origin: Origin,
}

/// Top-level settings a file may carry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub parallelism: Option<usize>,
    pub state_dir: Option<PathBuf>,
    pub crown: Option<Crown>,
    /// Defaults applied to the components of *this* file.
    pub defaults: Defaults,
}

/// Native `defaults:` block.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Defaults {
    pub ready_timeout: Option<Duration>,
    pub restart: Option<Restart>,
    pub stop: Option<Stop>,
}

/// The result of parsing one file with one format.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub settings: Settings,
    pub decls: Vec<Decl>,
}

/// The formats razar reads, detected from file name and content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// razar.yaml / razar.json
    Native,
    /// ABZU `razar/boot_config.json`
    BootConfig,
    /// ABZU `config/razar_config.yaml`
    RazarConfig,
    /// ABZU `razar_env.yaml`
    RazarEnv,
    /// ABZU `docs/component_priorities.yaml`
    Priorities,
    /// ABZU `docs/system_blueprint.md`
    Blueprint,
}

impl Format {
    pub fn describe(self) -> &'static str {
        match self {
            Format::Native => "razar config",
            Format::BootConfig => "ABZU boot_config.json",
            Format::RazarConfig => "ABZU razar_config.yaml",
            Format::RazarEnv => "ABZU razar_env.yaml",
            Format::Priorities => "ABZU component_priorities.yaml",
            Format::Blueprint => "ABZU system_blueprint.md",
        }
    }

    /// The schema describing this format, as shipped in `schemas/`.
    pub fn schema_file(self) -> &'static str {
        match self {
            Format::Native => "schemas/razar.schema.json",
            Format::BootConfig => "schemas/boot_config.schema.json",
            Format::RazarConfig => "schemas/razar_config.schema.json",
            Format::RazarEnv => "schemas/razar_env.schema.json",
            Format::Priorities => "schemas/component_priorities.schema.json",
            Format::Blueprint => "docs/formats.md (Markdown has no schema)",
        }
    }
}

/// Normalises a human title or config name for matching: "Memory Store" = `memory_store`.
/// Lowercase; every run of non-alphanumerics becomes one `_`; parenthesised asides dropped.
pub fn normalize(title: &str) -> String {
    let mut depth = 0usize;
    let mut out = String::with_capacity(title.len());
    let mut gap = false;
    for ch in title.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            c if c.is_ascii_alphanumeric() => {
                if gap && !out.is_empty() {
                    out.push('_');
                }
                gap = false;
                out.push(c.to_ascii_lowercase());
            }
            _ => gap = true,
        }
    }
    out
}

/// Shared handle on a file's text for diagnostics.
pub type Text = Arc<str>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_a_directory_are_invalid() {
        assert!(valid_name("api"));
        assert!(valid_name("memory_store.v2-x"));
        assert!(!valid_name(""));
        assert!(!valid_name("../x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(".."));
        assert!(!valid_name("ünïcode"));
        assert!(!valid_name(&"a".repeat(65)));
    }

    #[test]
    fn normalize_matches_titles_to_config_names() {
        assert_eq!(normalize("Memory Store"), "memory_store");
        assert_eq!(normalize("CROWN LLM"), "crown_llm");
        assert_eq!(normalize("Vision Adapter (YOLOE)"), "vision_adapter");
        assert_eq!(normalize("memory_store"), "memory_store");
        assert_eq!(
            normalize("  Operator-Console  Service "),
            "operator_console_service"
        );
    }
}
