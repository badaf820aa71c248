//! The native format: `razar.yaml` / `razar.json` (see docs/formats.md).
//!
//! Raw serde types mirror the file exactly (`deny_unknown_fields`), and `schemas/razar.schema.json`
//! describes the same shape; `read` turns a document into [`Decl`]s and [`Settings`],
//! reporting every field problem with its position. Merging and defaults happen in `load`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::document::Document;
use super::locate::Locator;
use super::{
    Backoff, Command, Condition, Crown, Decl, Defaults, Dependency, Format, Kind, Model, Origin,
    Parsed, Probe, ProbeCheck, Restart, RestartMode, Settings, Stop, schema,
};
use crate::diag::{Diagnostics, Problem};

/// The whole document's shape. Documents are read as a [`RawHeader`] plus one
/// [`RawComponent`] per item; this type serves to locate a value of the wrong type with
/// serde_path_to_error when that fails.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(
    dead_code,
    reason = "only deserialized, to find where a document stops matching the raw types"
)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub parallelism: Option<usize>,
    #[serde(default)]
    pub state_dir: Option<String>,
    #[serde(default)]
    pub defaults: Option<RawDefaults>,
    #[serde(default)]
    pub crown: Option<RawCrown>,
    #[serde(default)]
    pub components: Vec<RawComponent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDefaults {
    #[serde(default)]
    pub ready_timeout: Option<RawDuration>,
    #[serde(default)]
    pub restart: Option<RawRestart>,
    #[serde(default)]
    pub stop: Option<RawStop>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawComponent {
    pub name: String,
    #[serde(default)]
    pub kind: Option<Kind>,
    #[serde(default)]
    pub command: Option<Command>,
    #[serde(default)]
    pub depends_on: Option<RawDepends>,
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub ready: Option<RawProbe>,
    #[serde(default)]
    pub restart: Option<RawRestart>,
    #[serde(default)]
    pub stop: Option<RawStop>,
    #[serde(default)]
    pub env: BTreeMap<String, RawScalar>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub layer: Option<String>,
    #[serde(default)]
    pub tests: Option<Command>,
    #[serde(default)]
    pub estimate: Option<RawDuration>,
    #[serde(default)]
    pub daemonizes: Option<bool>,
    #[serde(default)]
    pub optional: Option<bool>,
}

/// `depends_on: [a, b]` or `depends_on: {a: ready, b: completed}`.
#[derive(Debug)]
pub(crate) enum RawDepends {
    List(Vec<String>),
    Map(BTreeMap<String, Condition>),
}

impl<'de> Deserialize<'de> for RawDepends {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawDepends;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a list of component names, or a map of name to started|ready|completed",
                )
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawDepends, A::Error> {
                let mut names = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(RawDepends::List(names))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawDepends, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((name, condition)) = map.next_entry::<String, Condition>()? {
                    out.insert(name, condition);
                }
                Ok(RawDepends::Map(out))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProbe {
    #[serde(default)]
    pub tcp: Option<String>,
    #[serde(default)]
    pub http: Option<String>,
    #[serde(default)]
    pub exec: Option<Command>,
    #[serde(default)]
    pub log: Option<String>,
    #[serde(default)]
    pub interval: Option<RawDuration>,
    #[serde(default)]
    pub timeout: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRestart {
    #[serde(default)]
    pub policy: Option<RestartMode>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub backoff: Option<RawBackoff>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackoff {
    #[serde(default)]
    pub initial: Option<RawDuration>,
    #[serde(default)]
    pub max: Option<RawDuration>,
    #[serde(default)]
    pub jitter: Option<f64>,
    #[serde(default)]
    pub reset_after: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStop {
    #[serde(default)]
    pub signal: Option<String>,
    #[serde(default)]
    pub grace: Option<RawDuration>,
    #[serde(default)]
    pub command: Option<Command>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCrown {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub required: Option<bool>,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub timeout: Option<RawDuration>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub models: Vec<RawModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModel {
    pub capability: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub launch: Command,
}

/// `10s`, `250ms` or a number of seconds.
#[derive(Debug)]
pub(crate) enum RawDuration {
    Seconds(f64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as `10s` or `250ms`, or a number of seconds")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(text.to_owned()))
            }
            fn visit_f64<E: serde::de::Error>(self, secs: f64) -> Result<RawDuration, E> {
                Ok(RawDuration::Seconds(secs))
            }
            fn visit_u64<E: serde::de::Error>(self, secs: u64) -> Result<RawDuration, E> {
                Ok(RawDuration::Seconds(secs as f64))
            }
            fn visit_i64<E: serde::de::Error>(self, secs: i64) -> Result<RawDuration, E> {
                Ok(RawDuration::Seconds(secs as f64))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Environment values may be written as strings, numbers or booleans; all become strings.
#[derive(Debug)]
pub(crate) struct RawScalar(String);

impl<'de> Deserialize<'de> for RawScalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawScalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawScalar, E> {
                Ok(RawScalar(text.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<RawScalar, E> {
                Ok(RawScalar(text))
            }
            fn visit_bool<E: serde::de::Error>(self, flag: bool) -> Result<RawScalar, E> {
                Ok(RawScalar(flag.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<RawScalar, E> {
                Ok(RawScalar(n.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<RawScalar, E> {
                Ok(RawScalar(n.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<RawScalar, E> {
                // The text as written is gone (`3.10` arrives as 3.1, `1e3` as 1000): passing
                // the number's own form on could change the value a program reads.
                Err(E::custom(format_args!(
                    "an environment value written as a number with a fraction or an exponent is read as `{n}`, which may not be what the program should see (`3.10` would become `3.1`): quote it to pass it as written"
                )))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A problem found while converting, at a JSON pointer, located in the source afterwards
/// (items are converted on several threads before their position in the list is known).
struct Pending {
    pointer: String,
    message: String,
    hint: Option<String>,
}

/// Field-level conversion, collecting problems at JSON pointers.
#[derive(Default)]
struct Ctx {
    problems: Vec<Pending>,
}

impl Ctx {
    fn problem(&mut self, pointer: &str, message: String, hint: Option<&str>) {
        self.problems.push(Pending {
            pointer: pointer.to_owned(),
            message,
            hint: hint.map(str::to_owned),
        });
    }

    /// Locates every collected problem; `prefix` is prepended to their pointers.
    fn report(
        self,
        prefix: &str,
        path: &Path,
        text: &str,
        locator: &Locator,
        diags: &mut Diagnostics,
    ) {
        for pending in self.problems {
            let pointer = format!("{prefix}{}", pending.pointer);
            let mut problem = locator.problem(path, text, &pointer, pending.message);
            if let Some(hint) = pending.hint {
                problem = problem.with_hint(hint);
            }
            diags.push(problem);
        }
    }

    fn duration(&mut self, pointer: &str, raw: Option<RawDuration>) -> Option<Duration> {
        let parsed = match raw? {
            RawDuration::Seconds(secs) => crate::duration::from_secs(secs),
            RawDuration::Text(text) => crate::duration::parse(&text),
        };
        match parsed {
            Ok(duration) => Some(duration),
            Err(message) => {
                self.problem(pointer, format!("unparsable duration: {message}"), None);
                None
            }
        }
    }

    fn command(&mut self, pointer: &str, command: Option<Command>) -> Option<Command> {
        let command = command?;
        let empty = match &command {
            Command::Argv(argv) => argv.is_empty() || argv[0].trim().is_empty(),
            Command::Shell(script) => script.trim().is_empty(),
        };
        if empty {
            self.problem(
                pointer,
                "empty command".to_owned(),
                Some("give an argv list such as [\"redis-server\", \"--port\", \"6390\"] or a shell string"),
            );
            return None;
        }
        let nul = match &command {
            Command::Argv(argv) => argv.iter().any(|a| a.contains('\0')),
            Command::Shell(script) => script.contains('\0'),
        };
        if nul {
            self.problem(
                pointer,
                "command contains a NUL byte, which no program can be given".to_owned(),
                None,
            );
            return None;
        }
        Some(command)
    }

    /// Environment variables as `KEY=VALUE` can carry them: a name that is empty or holds `=`
    /// or a NUL byte, or a value with a NUL byte, is a problem.
    fn env(&mut self, raw: BTreeMap<String, RawScalar>) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for (key, RawScalar(value)) in raw {
            let pointer = format!("/env/{}", key.replace('~', "~0").replace('/', "~1"));
            if key.is_empty() || key.contains(['=', '\0']) {
                self.problem(
                    &pointer,
                    format!("`{key}` cannot be an environment variable name"),
                    Some("names are non-empty, without `=` or NUL bytes, e.g. `REDIS_URL`"),
                );
            } else if value.contains('\0') {
                self.problem(
                    &pointer,
                    format!(
                        "the value of `{key}` contains a NUL byte, which no environment can carry"
                    ),
                    None,
                );
            } else {
                env.insert(key, value);
            }
        }
        env
    }

    /// A restart policy: the fields `raw` sets, the rest from `base` (the file's defaults).
    fn restart(
        &mut self,
        pointer: &str,
        raw: Option<RawRestart>,
        base: &Restart,
    ) -> Option<Restart> {
        let raw = raw?;
        let backoff = raw.backoff.map_or(base.backoff.clone(), |b| {
            let jitter = b.jitter.unwrap_or(base.backoff.jitter);
            if !(0.0..=1.0).contains(&jitter) {
                self.problem(
                    &format!("{pointer}/backoff/jitter"),
                    format!("jitter `{jitter}` is outside 0.0..=1.0"),
                    Some("jitter is the fraction of each delay that is randomised, e.g. 0.2"),
                );
            }
            Backoff {
                initial: self
                    .duration(&format!("{pointer}/backoff/initial"), b.initial)
                    .unwrap_or(base.backoff.initial),
                max: self
                    .duration(&format!("{pointer}/backoff/max"), b.max)
                    .unwrap_or(base.backoff.max),
                jitter: jitter.clamp(0.0, 1.0),
                reset_after: self
                    .duration(&format!("{pointer}/backoff/reset_after"), b.reset_after)
                    .unwrap_or(base.backoff.reset_after),
            }
        });
        let max_attempts = raw.max_attempts.unwrap_or(base.max_attempts);
        if max_attempts == 0 {
            self.problem(
                &format!("{pointer}/max_attempts"),
                "`max_attempts` must be at least 1 (it counts the first start)".to_owned(),
                None,
            );
        }
        Some(Restart {
            policy: raw.policy.unwrap_or(base.policy),
            max_attempts: max_attempts.max(1),
            backoff,
        })
    }

    /// A stop policy: the fields `raw` sets, the rest from `base` (the file's defaults).
    fn stop(&mut self, pointer: &str, raw: Option<RawStop>, base: &Stop) -> Option<Stop> {
        let raw = raw?;
        let signal = match raw.signal {
            Some(signal) => {
                let normalized = normalize_signal(&signal);
                if normalized.is_none() {
                    self.problem(
                        &format!("{pointer}/signal"),
                        format!("unknown stop signal `{signal}`"),
                        Some("use one of SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGKILL, SIGUSR1, SIGUSR2"),
                    );
                }
                normalized.unwrap_or(base.signal.clone())
            }
            None => base.signal.clone(),
        };
        Some(Stop {
            signal,
            grace: self
                .duration(&format!("{pointer}/grace"), raw.grace)
                .unwrap_or(base.grace),
            command: self
                .command(&format!("{pointer}/command"), raw.command)
                .or_else(|| base.command.clone()),
        })
    }
}

/// Accepts `SIGTERM`, `TERM` or `term`; returns the canonical `SIGTERM` form.
pub fn normalize_signal(name: &str) -> Option<String> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    const KNOWN: [&str; 8] = [
        "TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2", "WINCH",
    ];
    KNOWN.contains(&bare).then(|| format!("SIG{bare}"))
}

/// The top level of a native document, without its components (converted one by one).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    parallelism: Option<usize>,
    #[serde(default)]
    state_dir: Option<String>,
    #[serde(default)]
    defaults: Option<RawDefaults>,
    #[serde(default)]
    crown: Option<RawCrown>,
}

/// What became of one list item.
enum Item {
    Converted(Box<Decl>, Ctx),
    /// Schema violations, with pointers relative to the item, and the item's name when it
    /// has one (the component still exists for the graph checks: its dependents are not
    /// reported as depending on an unknown component).
    Invalid(Vec<schema::Violation>, Option<String>),
    /// Passed the schema but not the raw types (the schema is looser somewhere): located
    /// by a second, path-tracking pass.
    Untyped,
}

/// Reads a native document: checks the top level against the schema, then each component
/// (against `#/$defs/component`) and converts it, in parallel. Every problem is reported.
pub(crate) fn read(
    path: &Path,
    text: &str,
    mut document: Document<'_>,
    locator: &Locator,
    diags: &mut Diagnostics,
) -> Option<Parsed> {
    let hint = format!(
        "see the {} schema, {}",
        Format::Native.describe(),
        Format::Native.schema_file()
    );
    let header = Value::Object(std::mem::take(&mut document.header));
    let mut header_valid = true;
    for violation in schema::validate(Format::Native, &header) {
        header_valid = false;
        diags.push(
            locator
                .problem(path, text, &violation.pointer, violation.describe())
                .with_hint(hint.clone()),
        );
    }
    // A header value of the wrong type is located in the whole document (`RawConfig`): the
    // text holds the components too, which the header type does not know.
    let raw: Option<RawHeader> = if header_valid {
        match RawHeader::deserialize(header) {
            Ok(raw) => Some(raw),
            Err(_) => {
                locate_type_error::<RawConfig>(path, text, locator, diags);
                None
            }
        }
    } else {
        None
    };
    let mut ctx = Ctx::default();
    let settings = raw.map(|raw| settings(&mut ctx, raw));
    ctx.report("", path, text, locator, diags);
    let (base_restart, base_stop, ready_timeout) = match &settings {
        Some(s) => (
            s.defaults
                .restart
                .clone()
                .unwrap_or_else(super::load::default_restart),
            s.defaults
                .stop
                .clone()
                .unwrap_or_else(super::load::default_stop),
            s.defaults.ready_timeout,
        ),
        None => (
            super::load::default_restart(),
            super::load::default_stop(),
            None,
        ),
    };
    let converted = document.items(|value| {
        let violations = schema::validate_component(&value);
        if !violations.is_empty() {
            let name = value.get("name").and_then(Value::as_str).map(str::to_owned);
            return Item::Invalid(violations, name);
        }
        let Ok(raw) = RawComponent::deserialize(value) else {
            return Item::Untyped;
        };
        let mut ctx = Ctx::default();
        let decl = component(&mut ctx, raw, &base_restart, &base_stop, ready_timeout);
        Item::Converted(Box::new(decl), ctx)
    });
    let items = match converted {
        Ok(items) => items,
        Err(err) => {
            diags.push(super::load::parse_problem(path, text, err));
            return None;
        }
    };
    let mut decls = Vec::with_capacity(items.len());
    let mut untyped = false;
    for (i, item) in items.into_iter().enumerate() {
        let at = format!("/components/{i}");
        match item {
            Item::Converted(decl, ctx) => {
                ctx.report(&at, path, text, locator, diags);
                let mut decl = *decl;
                decl.origin = Origin {
                    file: path.to_path_buf(),
                    pointer: Some(at),
                    line: None,
                };
                decls.push(decl);
            }
            Item::Invalid(violations, name) => {
                if let Some(name) = name {
                    decls.push(Decl {
                        name,
                        origin: Origin {
                            file: path.to_path_buf(),
                            pointer: Some(at.clone()),
                            line: None,
                        },
                        ..Decl::default()
                    });
                }
                for mut violation in violations {
                    violation.pointer.insert_str(0, &at);
                    diags.push(
                        locator
                            .problem(path, text, &violation.pointer, violation.describe())
                            .with_hint(hint.clone()),
                    );
                }
            }
            Item::Untyped => untyped = true,
        }
    }
    if untyped {
        locate_type_error::<RawConfig>(path, text, locator, diags);
        return None;
    }
    // Problems found so far are recorded and make the load fail; what could be read still
    // goes on to the name and graph checks, so the user sees every problem in one run.
    Some(Parsed {
        settings: settings.unwrap_or_default(),
        decls,
    })
}

/// Top-level settings of one file.
fn settings(ctx: &mut Ctx, raw: RawHeader) -> Settings {
    if let Some(version) = raw.version
        && version != 1
    {
        ctx.problem(
            "/version",
            format!("unsupported config version `{version}`"),
            Some("this razar reads version 1"),
        );
    }
    if raw.parallelism == Some(0) {
        ctx.problem(
            "/parallelism",
            "`parallelism` must be at least 1".to_owned(),
            None,
        );
    }
    let builtin_restart = super::load::default_restart();
    let builtin_stop = super::load::default_stop();
    let defaults = match raw.defaults {
        Some(d) => Defaults {
            ready_timeout: ctx.duration("/defaults/ready_timeout", d.ready_timeout),
            restart: ctx.restart("/defaults/restart", d.restart, &builtin_restart),
            stop: ctx.stop("/defaults/stop", d.stop, &builtin_stop),
        },
        None => Defaults::default(),
    };
    let crown = raw.crown.map(|c| Crown {
        url: c.url,
        required: c.required.unwrap_or(false),
        token_env: c.token_env,
        timeout: match ctx.duration("/crown/timeout", c.timeout) {
            Some(Duration::ZERO) => {
                ctx.problem(
                    "/crown/timeout",
                    "`timeout` is 0: no handshake could ever be answered".to_owned(),
                    Some("give Crown time to answer, e.g. `timeout: 5s`"),
                );
                Duration::from_secs(5)
            }
            timeout => timeout.unwrap_or(Duration::from_secs(5)),
        },
        retries: c.retries.unwrap_or(3),
        models: c
            .models
            .into_iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let launch = ctx.command(&format!("/crown/models/{i}/launch"), Some(m.launch))?;
                Some(Model {
                    capability: m.capability,
                    aliases: m.aliases,
                    launch,
                })
            })
            .collect(),
    });
    Settings {
        parallelism: raw.parallelism,
        state_dir: raw.state_dir.map(Into::into),
        crown,
        defaults,
    }
}

/// One component's declaration; problems go to `ctx` with pointers relative to it. A
/// component's `restart:`/`stop:` override the file's defaults field by field, and a probe
/// without `timeout` takes the file's `defaults.ready_timeout`.
fn component(
    ctx: &mut Ctx,
    c: RawComponent,
    base_restart: &Restart,
    base_stop: &Stop,
    ready_timeout: Option<Duration>,
) -> Decl {
    let mut ready = c.ready.and_then(|p| probe(ctx, "/ready", p));
    if let (Some(probe), Some(timeout)) = (&mut ready, ready_timeout)
        && probe.timeout == Duration::ZERO
    {
        probe.timeout = timeout;
    }
    let depends_on = c.depends_on.map(|d| match d {
        RawDepends::List(names) => names
            .into_iter()
            .map(|name| Dependency {
                name,
                condition: Condition::Ready,
            })
            .collect(),
        RawDepends::Map(map) => map
            .into_iter()
            .map(|(name, condition)| Dependency { name, condition })
            .collect(),
    });
    Decl {
        name: c.name,
        kind: c.kind,
        command: ctx.command("/command", c.command),
        depends_on,
        priority: c.priority,
        ready,
        restart: ctx.restart("/restart", c.restart, base_restart),
        stop: ctx.stop("/stop", c.stop, base_stop),
        env: ctx.env(c.env),
        cwd: c.cwd.map(Into::into),
        layer: c.layer,
        tests: ctx.command("/tests", c.tests),
        estimate: ctx.duration("/estimate", c.estimate),
        daemonizes: c.daemonizes,
        optional: c.optional,
        notes: Vec::new(),
        stage: None,
        stage_deps: Vec::new(),
        origin: Origin::default(),
    }
}

fn probe(ctx: &mut Ctx, pointer: &str, raw: RawProbe) -> Option<Probe> {
    let mut checks = Vec::new();
    if let Some(addr) = raw.tcp {
        if !addr.contains(':') {
            ctx.problem(
                &format!("{pointer}/tcp"),
                format!("tcp probe `{addr}` has no port"),
                Some("write host:port, e.g. 127.0.0.1:6379"),
            );
        } else if let Err(err) = super::address::host_port(&addr) {
            ctx.problem(
                &format!("{pointer}/tcp"),
                format!("tcp probe: {err}"),
                Some("write host:port with a port from 1 to 65535, e.g. 127.0.0.1:6379"),
            );
        }
        checks.push(ProbeCheck::Tcp(addr));
    }
    if let Some(url) = raw.http {
        if !url.starts_with("http://") {
            ctx.problem(
                &format!("{pointer}/http"),
                format!("http probe `{url}` is not an http:// URL"),
                Some("probes speak plain HTTP on the local machine, e.g. http://127.0.0.1:8000/health"),
            );
        } else if let Err(err) = super::address::http_url(&url) {
            ctx.problem(
                &format!("{pointer}/http"),
                format!("http probe: {err}"),
                Some("write http://host[:port]/path with a port from 1 to 65535, e.g. http://127.0.0.1:8000/health"),
            );
        }
        checks.push(ProbeCheck::Http(url));
    }
    if let Some(command) = ctx.command(&format!("{pointer}/exec"), raw.exec) {
        checks.push(ProbeCheck::Exec(command));
    }
    if let Some(pattern) = raw.log {
        if let Err(err) = regex::Regex::new(&pattern) {
            ctx.problem(
                &format!("{pointer}/log"),
                format!("invalid log regex: {err}"),
                None,
            );
        }
        checks.push(ProbeCheck::Log(pattern));
    }
    let interval = ctx.duration(&format!("{pointer}/interval"), raw.interval);
    let timeout = ctx.duration(&format!("{pointer}/timeout"), raw.timeout);
    if checks.len() != 1 {
        ctx.problem(
            pointer,
            format!(
                "a probe needs exactly one of tcp, http, exec, log (found {})",
                checks.len()
            ),
            None,
        );
        return None;
    }
    if timeout == Some(Duration::ZERO) {
        ctx.problem(
            &format!("{pointer}/timeout"),
            "a readiness timeout of zero can never pass".to_owned(),
            Some("give the component time to become ready, e.g. `30s`"),
        );
    }
    let check = checks.pop().expect("exactly one check, tested above");
    Some(Probe {
        check,
        interval: interval.unwrap_or(DEFAULT_PROBE_INTERVAL),
        // Zero means "not set here": `load` fills in the readiness deadline default.
        timeout: timeout.unwrap_or(Duration::ZERO),
    })
}

/// Longest pause between readiness checks unless a probe sets `interval`.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Deserializes a schema-checked document into its raw type. Valid input pays for no path
/// tracking: only when deserializing fails is the text parsed again, to find where.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    value: Value,
    locator: &Locator,
    diags: &mut Diagnostics,
) -> Option<T> {
    match T::deserialize(value) {
        Ok(typed) => Some(typed),
        Err(_) => {
            locate_type_error::<T>(path, text, locator, diags);
            None
        }
    }
}

/// Parses `text` again and deserializes it into `T` with serde_path_to_error, reporting
/// where the first value of the wrong type is.
pub(crate) fn locate_type_error<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    locator: &Locator,
    diags: &mut Diagnostics,
) {
    let again: Result<Value, String> = if super::load::is_json(path) {
        super::document::json(text).map_err(|e| e.to_string())
    } else {
        super::document::yaml(text).map_err(|e| e.to_string())
    };
    let problem = match again.map(serde_path_to_error::deserialize::<_, T>) {
        Ok(Err(located)) => locator.problem(
            path,
            text,
            &pointer_of(located.path()),
            located.inner().to_string(),
        ),
        Ok(Ok(_)) => Problem::file(path, "the config does not match razar's types"),
        Err(message) => Problem::file(path, message),
    };
    diags.push(problem);
}

/// Builds a JSON pointer from serde_path_to_error's path.
pub(crate) fn pointer_of(path: &serde_path_to_error::Path) -> String {
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            serde_path_to_error::Segment::Map { key }
            | serde_path_to_error::Segment::Enum { variant: key } => {
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    pointer
}
