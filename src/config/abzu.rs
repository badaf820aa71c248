//! ABZU's formats, read as ABZU wrote them: `razar/boot_config.json`,
//! `config/razar_config.yaml`, `razar_env.yaml` and `docs/component_priorities.yaml`.
//!
//! ABZU has no explicit dependencies: order comes from file order (boot_config) or from
//! priorities, which are stages. Each parser only translates; `load` merges and checks.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::locate::Locator;
use super::{Command, Decl, Kind, Origin, Parsed, Probe, ProbeCheck, Stop, native};
use crate::diag::Diagnostics;

fn origin(path: &Path, pointer: String) -> Origin {
    Origin {
        file: path.to_path_buf(),
        pointer: Some(pointer),
        line: None,
    }
}

fn typed<T: for<'de> Deserialize<'de>>(
    path: &Path,
    value: Value,
    locator: &Locator,
    diags: &mut Diagnostics,
) -> Option<T> {
    native::typed(path, &locator.text(), value, locator, diags)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BootConfig {
    components: Vec<BootComponent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BootComponent {
    name: String,
    command: Vec<String>,
    health_check: Vec<String>,
}

/// `boot_config.json`: file order is boot order; `health_check` becomes an exec probe run
/// after the command is launched (the command may exit: ABZU launched and did not wait).
pub(crate) fn parse_boot_config(
    path: &Path,
    value: Value,
    locator: &Locator,
    diags: &mut Diagnostics,
) -> Option<Parsed> {
    let config: BootConfig = typed(path, value, locator, diags)?;
    let decls = config
        .components
        .into_iter()
        .enumerate()
        .map(|(i, c)| Decl {
            name: c.name,
            kind: Some(Kind::Service),
            command: Some(Command::Argv(c.command)),
            ready: Some(Probe {
                check: ProbeCheck::Exec(Command::Argv(c.health_check)),
                interval: native::DEFAULT_PROBE_INTERVAL,
                timeout: std::time::Duration::ZERO,
            }),
            daemonizes: Some(true),
            stage: Some(i64::try_from(i).unwrap_or(i64::MAX)),
            priority: Some(i64::try_from(i).unwrap_or(i64::MAX)),
            notes: vec!["boot_config.json: launched, then its health_check run".to_owned()],
            origin: origin(path, format!("/components/{i}")),
            ..Decl::default()
        })
        .collect();
    Some(Parsed {
        decls,
        ..Parsed::default()
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(
    dead_code,
    reason = "ABZU's AI handover settings are read and validated, not used"
)]
struct RazarConfig {
    #[serde(default)]
    chakra: Option<String>,
    #[serde(default)]
    dependencies: Vec<Value>,
    #[serde(default)]
    enable_ai_handover: Option<bool>,
    #[serde(default)]
    ai_agent: Option<Value>,
    components: Vec<RazarComponent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RazarComponent {
    name: String,
    priority: i64,
    command: String,
    #[serde(default)]
    stop: Option<String>,
    #[serde(default)]
    quarantine_on_fail: Option<bool>,
}

/// `razar_config.yaml`: shell commands run to completion; priorities are stages.
pub(crate) fn parse_razar_config(
    path: &Path,
    value: Value,
    locator: &Locator,
    diags: &mut Diagnostics,
) -> Option<Parsed> {
    let config: RazarConfig = typed(path, value, locator, diags)?;
    let mut decls = Vec::with_capacity(config.components.len());
    for (i, c) in config.components.into_iter().enumerate() {
        let pointer = format!("/components/{i}");
        if c.command.trim().is_empty() {
            let text = locator.text();
            diags.push(
                locator
                    .problem(
                        path,
                        &text,
                        &format!("{pointer}/command"),
                        "empty command".to_owned(),
                    )
                    .with_hint("give the shell command that starts this component"),
            );
            continue;
        }
        let mut notes = Vec::new();
        if c.quarantine_on_fail == Some(true) {
            notes
                .push("quarantine_on_fail: quarantined once its attempts are exhausted".to_owned());
        }
        decls.push(Decl {
            name: c.name,
            kind: Some(Kind::Task),
            command: Some(Command::Shell(c.command)),
            priority: Some(c.priority),
            stage: Some(c.priority),
            stop: c.stop.map(|stop| Stop {
                command: Some(Command::Shell(stop)),
                ..super::load::default_stop()
            }),
            notes,
            origin: origin(path, pointer),
            ..Decl::default()
        });
    }
    Some(Parsed {
        decls,
        ..Parsed::default()
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RazarEnv {
    layers: std::collections::BTreeMap<String, Vec<String>>,
}

/// Name of the task that builds a layer's virtual environment.
pub fn layer_task(layer: &str) -> String {
    format!("venv.{layer}")
}

/// Where a layer's environment puts its executables (`python3`, installed scripts).
pub fn layer_bin(state_dir: &Path, layer: &str) -> std::path::PathBuf {
    state_dir.join("venv").join(layer).join("bin")
}

/// `razar_env.yaml`: each layer becomes a task building a virtual environment in
/// `venv/<layer>` under the state directory (its working directory) with the layer's
/// packages. The build is skipped when the environment already holds exactly these packages
/// (a marker file records them).
pub(crate) fn parse_razar_env(
    path: &Path,
    value: Value,
    locator: &Locator,
    diags: &mut Diagnostics,
) -> Option<Parsed> {
    let env: RazarEnv = typed(path, value, locator, diags)?;
    let decls = env
        .layers
        .into_iter()
        .map(|(layer, packages)| {
            let pointer = format!("/layers/{}", layer.replace('~', "~0").replace('/', "~1"));
            Decl {
                name: layer_task(&layer),
                kind: Some(Kind::Task),
                command: Some(Command::Shell(venv_script(&layer, &packages))),
                layer: Some(layer.clone()),
                notes: vec![format!(
                    "builds the `{layer}` Python environment: {}",
                    packages.join(", ")
                )],
                origin: origin(path, pointer),
                ..Decl::default()
            }
        })
        .collect();
    Some(Parsed {
        decls,
        ..Parsed::default()
    })
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

fn venv_script(layer: &str, packages: &[String]) -> String {
    let quoted: Vec<String> = packages.iter().map(|p| shell_quote(p)).collect();
    let wanted = shell_quote(&packages.join(" "));
    let dir = format!("venv/{}", shell_quote(layer));
    let install = if quoted.is_empty() {
        String::from("true")
    } else {
        format!(
            "\"$venv/bin/python\" -m pip install --disable-pip-version-check --quiet {}",
            quoted.join(" ")
        )
    };
    format!(
        "set -e; venv={dir}; \
         if [ -f \"$venv/.razar-packages\" ] && [ \"$(cat \"$venv/.razar-packages\")\" = {wanted} ]; then exit 0; fi; \
         python3 -m venv \"$venv\"; {install}; printf '%s' {wanted} > \"$venv/.razar-packages\""
    )
}

/// `docs/component_priorities.yaml`: `Title: {priority: P0..P5, criticality, issue_type}`.
/// Titles are normalised to config names; entries add metadata to components declared
/// elsewhere, or stand as milestones of their own.
pub(crate) fn parse_priorities(
    path: &Path,
    value: Value,
    locator: &Locator,
    diags: &mut Diagnostics,
) -> Option<Parsed> {
    let Value::Object(map) = value else {
        return None;
    };
    let mut decls = Vec::with_capacity(map.len());
    let text = locator.text();
    for (title, entry) in map {
        let pointer = format!("/{}", title.replace('~', "~0").replace('/', "~1"));
        let priority = entry
            .get("priority")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(level) = priority
            .strip_prefix('P')
            .and_then(|n| n.parse::<i64>().ok())
        else {
            diags.push(
                locator
                    .problem(
                        path,
                        &text,
                        &format!("{pointer}/priority"),
                        format!("priority `{priority}` is not P0..P9"),
                    )
                    .with_hint("write priorities as P0 (earliest) to P5"),
            );
            continue;
        };
        let criticality = entry.get("criticality").and_then(Value::as_str);
        let issue_type = entry.get("issue_type").and_then(Value::as_str);
        let mut notes = vec![format!("registry title: {title}")];
        if let Some(c) = criticality {
            notes.push(format!("criticality: {c}"));
        }
        if let Some(t) = issue_type {
            notes.push(format!("issue type: {t}"));
        }
        decls.push(Decl {
            name: super::normalize(&title),
            priority: Some(level),
            stage: Some(level),
            optional: criticality
                .is_some_and(|c| c.eq_ignore_ascii_case("optional"))
                .then_some(true),
            notes,
            origin: origin(path, pointer),
            ..Decl::default()
        });
    }
    Some(Parsed {
        decls,
        ..Parsed::default()
    })
}
