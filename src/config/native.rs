//! The native format: `razar.yaml` / `razar.json` (see docs/formats.md).
//!
//! Raw serde types mirror the file exactly (`deny_unknown_fields`), and `schemas/razar.schema.json`
//! describes the same shape; [`parse`] turns a document into [`Decl`]s and [`Settings`],
//! reporting every field problem with its position. Merging and defaults happen in `load`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::locate::Locator;
use super::{
    Backoff, Command, Condition, Crown, Decl, Defaults, Dependency, Kind, Model, Origin, Parsed,
    Probe, ProbeCheck, Restart, RestartMode, Settings, Stop,
};
use crate::diag::Diagnostics;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawDepends {
    List(Vec<String>),
    Map(BTreeMap<String, Condition>),
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
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawDuration {
    Seconds(f64),
    Text(String),
}

/// Environment values may be written as strings, numbers or booleans.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawScalar {
    Text(String),
    Number(serde_json::Number),
    Bool(bool),
}

impl RawScalar {
    fn into_string(self) -> String {
        match self {
            RawScalar::Text(text) => text,
            RawScalar::Number(number) => number.to_string(),
            RawScalar::Bool(flag) => flag.to_string(),
        }
    }
}

/// Field-level conversion with problem reporting at JSON pointers.
struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    locator: &'a Locator,
    diags: &'a mut Diagnostics,
}

impl Ctx<'_> {
    fn problem(&mut self, pointer: &str, message: String, hint: Option<&str>) {
        let mut problem = self.locator.problem(self.path, self.text, pointer, message);
        if let Some(hint) = hint {
            problem = problem.with_hint(hint);
        }
        self.diags.push(problem);
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
        Some(command)
    }

    fn restart(&mut self, pointer: &str, raw: Option<RawRestart>) -> Option<Restart> {
        let raw = raw?;
        let base = super::load::default_restart();
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

    fn stop(&mut self, pointer: &str, raw: Option<RawStop>) -> Option<Stop> {
        let raw = raw?;
        let base = super::load::default_stop();
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
            command: self.command(&format!("{pointer}/command"), raw.command),
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

/// Converts a validated native document into declarations and settings.
pub(crate) fn parse(
    path: &Path,
    text: &str,
    value: Value,
    locator: &Locator,
    diags: &mut Diagnostics,
) -> Option<Parsed> {
    let raw: RawConfig = match serde_path_to_error::deserialize(value) {
        Ok(raw) => raw,
        Err(err) => {
            let pointer = pointer_of(err.path());
            diags.push(locator.problem(path, text, &pointer, err.inner().to_string()));
            return None;
        }
    };
    let mut ctx = Ctx {
        path,
        text,
        locator,
        diags,
    };
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
    let defaults = match raw.defaults {
        Some(d) => Defaults {
            ready_timeout: ctx.duration("/defaults/ready_timeout", d.ready_timeout),
            restart: ctx.restart("/defaults/restart", d.restart),
            stop: ctx.stop("/defaults/stop", d.stop),
        },
        None => Defaults::default(),
    };
    let crown = raw.crown.map(|c| Crown {
        url: c.url,
        required: c.required.unwrap_or(false),
        token_env: c.token_env,
        timeout: ctx
            .duration("/crown/timeout", c.timeout)
            .unwrap_or(Duration::from_secs(5)),
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
    let mut decls = Vec::with_capacity(raw.components.len());
    for (i, c) in raw.components.into_iter().enumerate() {
        let at = format!("/components/{i}");
        let ready = c
            .ready
            .and_then(|p| probe(&mut ctx, &format!("{at}/ready"), p));
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
        let command = ctx.command(&format!("{at}/command"), c.command);
        decls.push(Decl {
            name: c.name,
            kind: c.kind,
            command,
            depends_on,
            priority: c.priority,
            ready,
            restart: ctx.restart(&format!("{at}/restart"), c.restart),
            stop: ctx.stop(&format!("{at}/stop"), c.stop),
            env: c
                .env
                .into_iter()
                .map(|(k, v)| (k, v.into_string()))
                .collect(),
            cwd: c.cwd.map(Into::into),
            layer: c.layer,
            tests: ctx.command(&format!("{at}/tests"), c.tests),
            estimate: ctx.duration(&format!("{at}/estimate"), c.estimate),
            daemonizes: c.daemonizes,
            optional: c.optional,
            notes: Vec::new(),
            stage: None,
            stage_deps: Vec::new(),
            origin: Origin {
                file: path.to_path_buf(),
                pointer: Some(at),
                line: None,
            },
        });
    }
    // Readiness deadline default is per file: a probe without `timeout` takes the file's
    // `defaults.ready_timeout`.
    if let Some(ready_timeout) = defaults.ready_timeout {
        for decl in &mut decls {
            if let Some(probe) = &mut decl.ready
                && probe.timeout == Duration::ZERO
            {
                probe.timeout = ready_timeout;
            }
        }
    }
    Some(Parsed {
        settings: Settings {
            parallelism: raw.parallelism,
            state_dir: raw.state_dir.map(Into::into),
            crown,
            defaults,
        },
        decls,
    })
}

fn probe(ctx: &mut Ctx<'_>, pointer: &str, raw: RawProbe) -> Option<Probe> {
    let mut checks = Vec::new();
    if let Some(addr) = raw.tcp {
        if !addr.contains(':') {
            ctx.problem(
                &format!("{pointer}/tcp"),
                format!("tcp probe `{addr}` has no port"),
                Some("write host:port, e.g. 127.0.0.1:6379"),
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
