//! Crown's suggestions merged into a plan, each with its provenance, and the ones that cannot
//! be honoured rejected with the reason.
//!
//! A suggestion can only reorder, delay or skip declared components: `prioritize` and `defer`
//! move a component to the front or back of the components ready with it, `after` adds an
//! ordering edge, `skip` leaves a component out of this boot (its dependents are blocked) and
//! `parallelism` changes the slot limit. Anything else — an unknown action or component, an
//! edge that would close a cycle, an attempt to add a component or change a command — is
//! rejected, and the rejection is part of the plan. This module decides; it does no I/O
//! beyond reading a suggestions file, and knows nothing of sockets.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Options, Plan, Reason, ReasonKind};
use crate::config::{Condition, Dependency};
use crate::diag::{Diagnostics, Problem};
use crate::graph::{self, Graph};

/// One suggestion as Crown sends it. Fields razar does not know are kept in `extra` so a
/// suggestion trying to set a command can be recognised and rejected with that reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    /// `prioritize`, `defer`, `after`, `skip` or `parallelism`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// For `after`: the component that must be up before `component` starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// For `parallelism`: the new limit; for `prioritize`/`defer`: an explicit priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Suggestion {
    /// `prioritize api`, `after api redis`, `parallelism 2`: how plans name a suggestion.
    pub fn label(&self) -> String {
        let mut label = self.action.clone();
        for part in [self.component.as_deref(), self.after.as_deref()]
            .into_iter()
            .flatten()
        {
            label.push(' ');
            label.push_str(part);
        }
        if let Some(value) = &self.value {
            let _ = write!(label, " {value}");
        }
        label
    }
}

/// Where a suggestion came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum Source {
    /// Crown's reply to the handshake before the boot.
    Handshake { at: String },
    /// A `suggestions` message Crown sent during a boot.
    Message { at: String },
    /// A file given with `razar plan --suggestions FILE`.
    File { path: PathBuf },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Handshake { at } => write!(f, "handshake at {at}"),
            Source::Message { at } => write!(f, "message at {at}"),
            Source::File { path } => write!(f, "file {}", path.display()),
        }
    }
}

/// A suggestion with its provenance: what planning is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sourced {
    pub source: Source,
    pub suggestion: Suggestion,
}

/// What became of one suggestion: recorded in the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub source: Source,
    pub suggestion: Suggestion,
    pub applied: bool,
    /// What it changed, or why it was rejected.
    pub effect: String,
}

/// Actions razar honours, in the order docs list them.
pub const ACTIONS: [&str; 5] = ["prioritize", "defer", "after", "skip", "parallelism"];

/// The priority of razar's own tasks that run before the boot (model launches): no
/// suggestion moves a component ahead of them.
pub const RESERVED_PRIORITY: i64 = i64::MIN;

/// Largest `parallelism` a suggestion may set.
pub const MAX_PARALLELISM: u64 = 1024;

/// Fields that would change how a component runs: a suggestion carrying one is refused.
const COMMAND_FIELDS: [&str; 9] = [
    "command", "cmd", "argv", "args", "script", "exec", "env", "cwd", "launch",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Prioritize,
    Defer,
    After,
    Skip,
    Parallelism,
}

fn action(name: &str) -> Result<Action, String> {
    let key = name.trim().to_ascii_lowercase().replace('-', "_");
    match key.as_str() {
        "prioritize" | "prioritise" => Ok(Action::Prioritize),
        "defer" => Ok(Action::Defer),
        "after" => Ok(Action::After),
        "skip" => Ok(Action::Skip),
        "parallelism" => Ok(Action::Parallelism),
        k if k.starts_with("add")
            || k.starts_with("create")
            || matches!(k, "new" | "insert" | "spawn" | "register" | "declare") =>
        {
            Err(format!(
                "tries to add a component (`{name}`): suggestions can only reorder, delay or skip declared components"
            ))
        }
        k if k.contains("command")
            || matches!(
                k,
                "change" | "replace" | "modify" | "edit" | "update" | "patch" | "set" | "rewrite"
            ) =>
        {
            Err(format!(
                "tries to change a component (`{name}`): suggestions can never change a command"
            ))
        }
        _ => Err(format!(
            "unknown action `{name}` (razar knows {})",
            ACTIONS.join(", ")
        )),
    }
}

/// Builds the plan with `options.suggestions` merged in. Called by [`super::build`].
pub(super) fn build(graph: &Graph, selected: &BTreeSet<usize>, options: &Options) -> Plan {
    let merge = merge(graph, selected, options);
    let merged_graph = match merge.config_changed {
        // The merge only changes priorities and adds `after` edges, each checked for cycles
        // and unknown names; should the result still not compile, no suggestion is applied
        // rather than razar stopping on what Crown sent.
        true => match graph::compile(merge.config) {
            Ok(merged) => merged,
            Err(diags) => {
                let mut unmerged = options.clone();
                unmerged.suggestions.clear();
                let mut plan = super::build(graph, selected, &unmerged);
                plan.suggestions = merge
                    .outcomes
                    .into_iter()
                    .map(|mut outcome| {
                        outcome.applied = false;
                        outcome.effect = format!(
                            "not applied: the suggestions together do not make a valid graph ({})",
                            diags.to_string().trim_end().replace('\n', "; ")
                        );
                        outcome
                    })
                    .collect();
                return plan;
            }
        },
        false => graph.clone(),
    };
    let mut plan = super::build(&merged_graph, selected, &merge.options);
    for (name, reason) in merge.step_reasons {
        if let Some(step) = plan.steps.iter_mut().find(|s| s.name == name) {
            step.reasons.insert(0, reason);
        }
    }
    plan.suggestions = merge.outcomes;
    plan
}

struct Merge {
    config: crate::config::Config,
    config_changed: bool,
    options: Options,
    step_reasons: Vec<(String, Reason)>,
    outcomes: Vec<Outcome>,
}

/// Applies each suggestion in order to a copy of the configuration and options.
fn merge(graph: &Graph, selected: &BTreeSet<usize>, options: &Options) -> Merge {
    let mut config = graph.config().clone();
    let mut merged = options.clone();
    merged.suggestions.clear();
    let index: BTreeMap<&str, usize> = graph
        .components()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    // Dependencies by index, kept current as `after` edges are added (cycle checks).
    let mut deps: Vec<Vec<usize>> = (0..graph.len())
        .map(|i| graph.dependencies(i).map(|(d, _)| d).collect())
        .collect();
    let mut config_changed = false;
    let mut step_reasons = Vec::new();
    let mut outcomes = Vec::with_capacity(options.suggestions.len());

    for Sourced { source, suggestion } in &options.suggestions {
        let verdict = judge(
            suggestion,
            &Ctx {
                graph,
                selected,
                index: &index,
                options,
            },
            &mut config,
            &mut merged,
            &mut deps,
        );
        let reason_text = suggestion
            .reason
            .as_deref()
            .filter(|r| !r.trim().is_empty())
            .unwrap_or("no reason given");
        let (applied, effect) = match verdict {
            Ok(Applied {
                effect,
                changes_config,
            }) => {
                config_changed |= changes_config;
                (true, effect)
            }
            Err(why) => (false, why),
        };
        if let Some(name) = suggestion.component.as_deref()
            && index.contains_key(name)
        {
            let text = if applied {
                format!(
                    "Crown: {} — {reason_text} ({effect}; {source})",
                    suggestion.label()
                )
            } else {
                format!(
                    "Crown suggestion rejected: {} — {effect} ({source})",
                    suggestion.label()
                )
            };
            step_reasons.push((
                name.to_owned(),
                Reason {
                    kind: ReasonKind::Crown,
                    text,
                },
            ));
        }
        outcomes.push(Outcome {
            source: source.clone(),
            suggestion: suggestion.clone(),
            applied,
            effect,
        });
    }
    // Later reasons were pushed later but are inserted at the front: reverse so the plan lists
    // them in the order the suggestions came.
    step_reasons.reverse();
    Merge {
        config,
        config_changed,
        options: merged,
        step_reasons,
        outcomes,
    }
}

struct Ctx<'a> {
    graph: &'a Graph,
    selected: &'a BTreeSet<usize>,
    index: &'a BTreeMap<&'a str, usize>,
    options: &'a Options,
}

struct Applied {
    effect: String,
    changes_config: bool,
}

impl Ctx<'_> {
    /// The index of a component a suggestion may act on, or why it may not.
    fn component(
        &self,
        field: &str,
        name: Option<&str>,
        merged: &Options,
    ) -> Result<usize, String> {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return Err(format!("no `{field}` named"));
        };
        let Some(&i) = self.index.get(name) else {
            let mut why = format!("unknown component `{name}`");
            if let Some(near) = graph::nearest(
                name,
                self.graph.components().iter().map(|c| c.name.as_str()),
            ) {
                let _ = write!(why, " (did you mean `{near}`?)");
            }
            return Err(why);
        };
        if self.graph.components()[i].origin.is_model_launch() {
            return Err(model_launch_refusal(name));
        }
        if !self.selected.contains(&i) {
            return Err(format!(
                "`{name}` is not part of this boot (not needed by the targets)"
            ));
        }
        if let Some(reason) = merged.exclude.get(name) {
            return Err(format!(
                "`{name}` is already left out of this boot ({reason})"
            ));
        }
        Ok(i)
    }
}

/// Why a suggestion may not name razar's launch of a Crown model: the launch goes first and no
/// component waits for it (docs/crown-protocol.md), whatever Crown says.
fn model_launch_refusal(name: &str) -> String {
    format!(
        "`{name}` is razar's launch of a Crown model, not a declared component: suggestions cannot move, delay or skip it, nor make a component wait for it"
    )
}

/// Suggestions can only reorder, delay or skip declared components: one that carries a
/// command field is refused whole, at planning time and mid-boot alike.
fn refuse_command_change(suggestion: &Suggestion) -> Result<(), String> {
    match COMMAND_FIELDS
        .iter()
        .find(|f| suggestion.extra.contains_key(**f))
    {
        Some(field) => Err(format!(
            "tries to change a command (`{field}`): suggestions can only reorder, delay or skip declared components"
        )),
        None => Ok(()),
    }
}

fn judge(
    suggestion: &Suggestion,
    ctx: &Ctx<'_>,
    config: &mut crate::config::Config,
    merged: &mut Options,
    deps: &mut [Vec<usize>],
) -> Result<Applied, String> {
    refuse_command_change(suggestion)?;
    let action = action(&suggestion.action)?;
    let applied = |effect: String| Applied {
        effect,
        changes_config: false,
    };
    match action {
        Action::Prioritize | Action::Defer => {
            let i = ctx.component("component", suggestion.component.as_deref(), merged)?;
            // `RESERVED_PRIORITY` belongs to razar's own pre-boot tasks (model launches):
            // suggestions order declared components among themselves, after those.
            let priorities = ctx
                .selected
                .iter()
                .map(|&s| config.components[s].priority)
                .filter(|&p| p != RESERVED_PRIORITY);
            let target = match &suggestion.value {
                None => match action {
                    Action::Prioritize => priorities.min().unwrap_or(0).saturating_sub(1),
                    _ => priorities.max().unwrap_or(0).saturating_add(1),
                },
                Some(Value::Number(n)) if n.as_i64().is_some() => {
                    n.as_i64().expect("checked by the guard")
                }
                Some(other) => {
                    return Err(format!("`value` must be an integer priority, not {other}"));
                }
            };
            let target = target.max(RESERVED_PRIORITY + 1);
            let component = &mut config.components[i];
            let before = component.priority;
            component.priority = target;
            Ok(Applied {
                effect: format!("priority {before} → {target}"),
                changes_config: true,
            })
        }
        Action::After => {
            let i = ctx.component("component", suggestion.component.as_deref(), merged)?;
            let a = ctx.component("after", suggestion.after.as_deref(), merged)?;
            let (name, first) = (
                ctx.graph.components()[i].name.clone(),
                ctx.graph.components()[a].name.clone(),
            );
            if i == a {
                return Err(format!("`{name}` cannot start after itself"));
            }
            if path(deps, i, a).is_some() {
                return Ok(applied(format!(
                    "already so: `{name}` depends on `{first}`"
                )));
            }
            if let Some(chain) = path(deps, a, i) {
                // In boot order, as config cycles are printed: `x -> y` means y waits for x.
                let names: Vec<&str> = chain
                    .iter()
                    .rev()
                    .map(|&k| ctx.graph.components()[k].name.as_str())
                    .collect();
                return Err(format!(
                    "would create a cycle: {} -> {name}",
                    names.join(" -> ")
                ));
            }
            deps[i].push(a);
            config.components[i].depends_on.push(Dependency {
                name: first.clone(),
                condition: Condition::Ready,
            });
            Ok(Applied {
                effect: format!("`{name}` now waits for `{first}`"),
                changes_config: true,
            })
        }
        Action::Skip => {
            let i = ctx.component("component", suggestion.component.as_deref(), merged)?;
            let name = ctx.graph.components()[i].name.clone();
            let why = match suggestion
                .reason
                .as_deref()
                .filter(|r| !r.trim().is_empty())
            {
                Some(reason) => format!("Crown: skip {name} — {reason}"),
                None => format!("Crown: skip {name}"),
            };
            merged.exclude.insert(name, why);
            Ok(applied("left out of this boot".to_owned()))
        }
        Action::Parallelism => {
            let limit = match &suggestion.value {
                Some(Value::Number(n)) => n.as_u64().filter(|v| (1..=MAX_PARALLELISM).contains(v)),
                _ => None,
            }
            .ok_or_else(|| format!("`value` must be an integer from 1 to {MAX_PARALLELISM}"))?;
            if let Some(explicit) = ctx.options.parallelism {
                return Err(format!(
                    "the command line's --parallelism {explicit} takes precedence"
                ));
            }
            let before = merged.parallelism.unwrap_or(config.parallelism);
            let limit = usize::try_from(limit).expect("at most MAX_PARALLELISM");
            merged.parallelism = Some(limit);
            Ok(applied(format!("parallelism {before} → {limit}")))
        }
    }
}

/// Changes to a running boot, for the steps that have not started yet: what Crown's
/// mid-boot `suggestions` amount to once judged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    /// Every step name in the new start order: steps already started keep their place at the
    /// front; the rest follow in dependency order, lower priority first.
    pub order: Vec<String>,
    /// New priorities, by step.
    pub priority: BTreeMap<String, i64>,
    /// Dependencies added by `after`, by step.
    pub depends_on: BTreeMap<String, Vec<Dependency>>,
    /// Steps left out of the rest of this boot, with the reason (their dependents block).
    pub skip: BTreeMap<String, String>,
    pub parallelism: Option<usize>,
    pub outcomes: Vec<Outcome>,
}

impl Revision {
    /// Whether anything changes.
    pub fn is_empty(&self) -> bool {
        self.priority.is_empty()
            && self.depends_on.is_empty()
            && self.skip.is_empty()
            && self.parallelism.is_none()
    }

    /// The plan as revised: steps reordered, priorities and dependencies changed, skipped
    /// steps excluded, and the outcomes recorded.
    pub fn apply(&self, plan: &mut Plan) {
        for step in &mut plan.steps {
            if let Some(&priority) = self.priority.get(&step.name) {
                step.priority = priority;
            }
            if let Some(extra) = self.depends_on.get(&step.name) {
                step.depends_on.extend(extra.iter().cloned());
            }
        }
        let position: BTreeMap<&str, usize> = self
            .order
            .iter()
            .enumerate()
            .map(|(p, n)| (n.as_str(), p))
            .collect();
        plan.steps
            .sort_by_key(|s| position.get(s.name.as_str()).copied().unwrap_or(usize::MAX));
        for (name, reason) in &self.skip {
            plan.steps.retain(|s| &s.name != name);
            plan.excluded.push(super::Excluded {
                name: name.clone(),
                reason: reason.clone(),
            });
        }
        if let Some(parallelism) = self.parallelism {
            plan.parallelism = parallelism;
        }
        for outcome in &self.outcomes {
            if let Some(step) = outcome
                .suggestion
                .component
                .as_deref()
                .and_then(|name| plan.steps.iter_mut().find(|s| s.name == name))
            {
                let text = if outcome.applied {
                    format!(
                        "Crown: {} — {} ({}; {})",
                        outcome.suggestion.label(),
                        outcome
                            .suggestion
                            .reason
                            .as_deref()
                            .unwrap_or("no reason given"),
                        outcome.effect,
                        outcome.source
                    )
                } else {
                    format!(
                        "Crown suggestion rejected: {} — {} ({})",
                        outcome.suggestion.label(),
                        outcome.effect,
                        outcome.source
                    )
                };
                step.reasons.insert(
                    0,
                    Reason {
                        kind: ReasonKind::Crown,
                        text,
                    },
                );
            }
        }
        plan.suggestions.extend(self.outcomes.iter().cloned());
    }
}

/// Judges suggestions received during a boot against the steps of `plan` not yet `started`
/// (`fixed_parallelism`: set from the command line, which takes precedence).
pub fn revise(
    plan: &Plan,
    started: &BTreeSet<String>,
    suggestions: &[Sourced],
    fixed_parallelism: Option<usize>,
) -> Revision {
    let index: BTreeMap<&str, usize> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut deps: Vec<Vec<usize>> = plan
        .steps
        .iter()
        .map(|s| {
            s.depends_on
                .iter()
                .filter_map(|d| index.get(d.name.as_str()).copied())
                .collect()
        })
        .collect();
    let mut priority: Vec<i64> = plan.steps.iter().map(|s| s.priority).collect();
    // The plan's order (critical path, explore or priority) stays the order of the steps
    // Crown did not move: a prioritized step goes before them (the latest first), a deferred
    // one after them.
    let mut bucket: Vec<i64> = vec![0; plan.steps.len()];
    let mut moves = 0i64;
    let mut revision = Revision::default();
    let pending = |i: usize| !started.contains(&plan.steps[i].name);
    for Sourced { source, suggestion } in suggestions {
        let step = |field: &str, name: Option<&str>, skip: &BTreeMap<String, String>| {
            let Some(name) = name.filter(|n| !n.is_empty()) else {
                return Err(format!("no `{field}` named"));
            };
            let Some(&i) = index.get(name) else {
                let mut why = format!("`{name}` is not a step of this boot");
                if let Some(near) = graph::nearest(name, plan.steps.iter().map(|s| s.name.as_str()))
                {
                    let _ = write!(why, " (did you mean `{near}`?)");
                }
                return Err(why);
            };
            if plan.steps[i].origin.is_model_launch() {
                return Err(model_launch_refusal(name));
            }
            if let Some(reason) = plan.steps[i].blocked.as_ref().or(skip.get(name)) {
                return Err(format!("`{name}` will not run in this boot ({reason})"));
            }
            Ok(i)
        };
        let verdict = (|| -> Result<String, String> {
            refuse_command_change(suggestion)?;
            let action = action(&suggestion.action)?;
            let not_started = |i: usize| {
                if pending(i) {
                    Ok(i)
                } else {
                    Err(format!(
                        "`{}` has already started: mid-boot suggestions apply to steps not yet started",
                        plan.steps[i].name
                    ))
                }
            };
            match action {
                Action::Prioritize | Action::Defer => {
                    let i = not_started(step(
                        "component",
                        suggestion.component.as_deref(),
                        &revision.skip,
                    )?)?;
                    let others = (0..plan.steps.len())
                        .filter(|&k| pending(k))
                        .map(|k| priority[k])
                        .filter(|&p| p != RESERVED_PRIORITY);
                    let target = match &suggestion.value {
                        None if action == Action::Prioritize => {
                            others.min().unwrap_or(0).saturating_sub(1)
                        }
                        None => others.max().unwrap_or(0).saturating_add(1),
                        Some(Value::Number(n)) if n.as_i64().is_some() => {
                            n.as_i64().expect("checked by the guard")
                        }
                        Some(other) => {
                            return Err(format!(
                                "`value` must be an integer priority, not {other}"
                            ));
                        }
                    }
                    .max(RESERVED_PRIORITY + 1);
                    let before = priority[i];
                    priority[i] = target;
                    moves += 1;
                    bucket[i] = if action == Action::Prioritize {
                        -moves
                    } else {
                        moves
                    };
                    revision.priority.insert(plan.steps[i].name.clone(), target);
                    Ok(format!("priority {before} → {target}"))
                }
                Action::After => {
                    let i = not_started(step(
                        "component",
                        suggestion.component.as_deref(),
                        &revision.skip,
                    )?)?;
                    let a = step("after", suggestion.after.as_deref(), &revision.skip)?;
                    let (name, first) = (&plan.steps[i].name, &plan.steps[a].name);
                    if i == a {
                        return Err(format!("`{name}` cannot start after itself"));
                    }
                    if path(&deps, i, a).is_some() {
                        return Ok(format!("already so: `{name}` depends on `{first}`"));
                    }
                    if let Some(chain) = path(&deps, a, i) {
                        let names: Vec<&str> = chain
                            .iter()
                            .rev()
                            .map(|&k| plan.steps[k].name.as_str())
                            .collect();
                        return Err(format!(
                            "would create a cycle: {} -> {name}",
                            names.join(" -> ")
                        ));
                    }
                    deps[i].push(a);
                    revision
                        .depends_on
                        .entry(name.clone())
                        .or_default()
                        .push(Dependency {
                            name: first.clone(),
                            condition: Condition::Ready,
                        });
                    Ok(format!("`{name}` now waits for `{first}`"))
                }
                Action::Skip => {
                    let i = not_started(step(
                        "component",
                        suggestion.component.as_deref(),
                        &revision.skip,
                    )?)?;
                    let name = plan.steps[i].name.clone();
                    let why = match suggestion
                        .reason
                        .as_deref()
                        .filter(|r| !r.trim().is_empty())
                    {
                        Some(reason) => format!("Crown: skip {name} — {reason}"),
                        None => format!("Crown: skip {name}"),
                    };
                    revision.skip.insert(name, why);
                    Ok("left out of the rest of this boot".to_owned())
                }
                Action::Parallelism => {
                    let limit = match &suggestion.value {
                        Some(Value::Number(n)) => {
                            n.as_u64().filter(|v| (1..=MAX_PARALLELISM).contains(v))
                        }
                        _ => None,
                    }
                    .ok_or_else(|| {
                        format!("`value` must be an integer from 1 to {MAX_PARALLELISM}")
                    })?;
                    if let Some(explicit) = fixed_parallelism {
                        return Err(format!(
                            "the command line's --parallelism {explicit} takes precedence"
                        ));
                    }
                    let before = revision.parallelism.unwrap_or(plan.parallelism);
                    let limit = usize::try_from(limit).expect("at most MAX_PARALLELISM");
                    revision.parallelism = Some(limit);
                    Ok(format!("parallelism {before} → {limit}"))
                }
            }
        })();
        let (applied, effect) = match verdict {
            Ok(effect) => (true, effect),
            Err(why) => (false, why),
        };
        revision.outcomes.push(Outcome {
            source: source.clone(),
            suggestion: suggestion.clone(),
            applied,
            effect,
        });
    }
    // Started steps keep their place; the rest in dependency order, (bucket, position).
    let mut order: Vec<usize> = (0..plan.steps.len()).filter(|&i| !pending(i)).collect();
    let waiting: BTreeSet<usize> = (0..plan.steps.len()).filter(|&i| pending(i)).collect();
    let mut left: BTreeMap<usize, usize> = waiting
        .iter()
        .map(|&i| (i, deps[i].iter().filter(|d| waiting.contains(d)).count()))
        .collect();
    let mut ready: BTreeSet<(i64, usize)> = left
        .iter()
        .filter(|&(_, &n)| n == 0)
        .map(|(&i, _)| (bucket[i], i))
        .collect();
    while let Some(&(p, i)) = ready.iter().next() {
        ready.remove(&(p, i));
        order.push(i);
        for (k, d) in deps.iter().enumerate() {
            if d.contains(&i)
                && let Some(n) = left.get_mut(&k)
            {
                *n -= 1;
                if *n == 0 {
                    ready.insert((bucket[k], k));
                }
            }
        }
    }
    debug_assert_eq!(order.len(), plan.steps.len(), "cycles were refused above");
    revision.order = order.iter().map(|&i| plan.steps[i].name.clone()).collect();
    revision
}

/// A dependency chain from `from` down to `to` (`from` depends on … on `to`), if any.
fn path(deps: &[Vec<usize>], from: usize, to: usize) -> Option<Vec<usize>> {
    let mut parent: BTreeMap<usize, usize> = BTreeMap::new();
    let mut stack = vec![from];
    let mut seen = BTreeSet::from([from]);
    while let Some(node) = stack.pop() {
        if node == to {
            let mut chain = vec![to];
            let mut at = to;
            while let Some(&p) = parent.get(&at) {
                chain.push(p);
                at = p;
            }
            chain.reverse();
            return Some(chain);
        }
        for &d in &deps[node] {
            if seen.insert(d) {
                parent.insert(d, node);
                stack.push(d);
            }
        }
    }
    None
}

/// The plan's suggestions as text lines, for `razar plan`.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    for outcome in &plan.suggestions {
        let verdict = if outcome.applied {
            "applied"
        } else {
            "rejected"
        };
        let _ = write!(
            out,
            "  crown {verdict}: {} — {}",
            outcome.suggestion.label(),
            outcome.effect
        );
        if let Some(reason) = outcome.suggestion.reason.as_deref()
            && !reason.trim().is_empty()
        {
            let _ = write!(out, " (Crown's reason: {reason})");
        }
        let _ = writeln!(out, " [{}]", outcome.source);
    }
    out
}

/// The suggestions file format: the `suggestions` message Crown sends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(rename = "type")]
    kind: String,
    items: Vec<Suggestion>,
}

/// Reads a suggestions file (`{"type": "suggestions", "items": [...]}`), reporting problems
/// with their line and column. What the suggestions ask for is judged later, by planning.
pub fn load_file(path: &Path) -> Result<Vec<Sourced>, Diagnostics> {
    let hint = r#"a suggestions file is {"type": "suggestions", "items": [{"action": "prioritize", "component": "api", "reason": "…"}]}"#;
    let (file, text): (File, String) = read_json(path, "suggestions file", hint)?;
    if file.kind != "suggestions" {
        let mut diags = Diagnostics::new();
        diags.add_source(path, std::sync::Arc::from(text.as_str()));
        let locator = crate::config::locate::Locator::new(std::sync::Arc::from(text.as_str()));
        diags.push(
            locator
                .problem(
                    path,
                    &text,
                    "/type",
                    format!("`type` is `{}`, not `suggestions`", file.kind),
                )
                .with_hint(r#"set "type": "suggestions""#),
        );
        return Err(diags);
    }
    Ok(file
        .items
        .into_iter()
        .map(|suggestion| Sourced {
            source: Source::File {
                path: path.to_path_buf(),
            },
            suggestion,
        })
        .collect())
}

/// Reads a JSON input file into `T`, reporting a problem at the line and column where the
/// text or its shape goes wrong. Returns the text too, for later diagnostics.
pub fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
    hint: &str,
) -> Result<(T, String), Diagnostics> {
    let mut diags = Diagnostics::new();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            diags.push(Problem::file(path, format!("cannot read {what}: {err}")).with_hint(hint));
            return Err(diags);
        }
    };
    diags.add_source(path, std::sync::Arc::from(text.as_str()));
    let mut de = serde_json::Deserializer::from_str(&text);
    // Trailing garbage after the document is an error too.
    let parsed: Result<T, (String, serde_json::Error)> =
        match serde_path_to_error::deserialize(&mut de) {
            Ok(value) => de.end().map(|()| value).map_err(|err| (String::new(), err)),
            Err(err) => Err((pointer_of(err.path()), err.into_inner())),
        };
    match parsed {
        Ok(value) => Ok((value, text)),
        Err((pointer, inner)) => {
            let problem = if inner.is_syntax() || inner.is_eof() {
                Problem::at(
                    path,
                    &text,
                    inner.line(),
                    inner.column(),
                    1,
                    format!("invalid JSON: {}", strip_position(&inner.to_string())),
                )
            } else {
                let locator =
                    crate::config::locate::Locator::new(std::sync::Arc::from(text.as_str()));
                locator.problem(path, &text, &pointer, strip_position(&inner.to_string()))
            };
            diags.push(problem.with_hint(hint));
            Err(diags)
        }
    }
}

/// serde_path_to_error's path as a JSON pointer (`items[2].action` → `/items/2/action`).
fn pointer_of(path: &serde_path_to_error::Path) -> String {
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => {
                let _ = write!(pointer, "/{index}");
            }
            serde_path_to_error::Segment::Map { key } => {
                let _ = write!(pointer, "/{}", key.replace('~', "~0").replace('/', "~1"));
            }
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
        }
    }
    pointer
}

/// serde_json appends " at line L column C": the diagnostic shows the position already.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(yaml: &str) -> Graph {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("razar.yaml");
        std::fs::write(&path, yaml).expect("write config");
        graph::load(&[path]).expect("valid config")
    }

    const STACK: &str = "
version: 1
parallelism: 4
components:
  - {name: redis, command: [redis-server]}
  - {name: db, command: [postgres]}
  - {name: api, command: [api], depends_on: [redis]}
  - {name: worker, command: [worker], depends_on: [api]}
  - {name: web, command: [web], depends_on: [db]}
";

    fn plan_with(g: &Graph, items: &[Value], options: Options) -> Plan {
        let suggestions = items
            .iter()
            .map(|item| Sourced {
                source: Source::Handshake {
                    at: "2025-01-01T00:00:00Z".to_owned(),
                },
                suggestion: serde_json::from_value(item.clone()).expect("suggestion shape"),
            })
            .collect();
        let selected = g.select(&options.targets).expect("targets exist");
        super::super::build(
            g,
            &selected,
            &Options {
                suggestions,
                ..options
            },
        )
    }

    fn order(plan: &Plan) -> Vec<&str> {
        plan.steps.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn prioritize_moves_a_component_first_among_the_ready_ones() {
        let g = graph(STACK);
        let plain = plan_with(&g, &[], Options::default());
        assert_eq!(order(&plain)[..2], ["db", "redis"]);
        let plan = plan_with(
            &g,
            &[
                serde_json::json!({"action": "prioritize", "component": "redis", "reason": "cache first"}),
            ],
            Options::default(),
        );
        assert_eq!(order(&plan)[0], "redis");
        let redis = plan.step("redis").expect("redis planned");
        assert_eq!(redis.reasons[0].kind, ReasonKind::Crown);
        assert!(
            redis.reasons[0]
                .text
                .starts_with("Crown: prioritize redis — cache first"),
            "{:?}",
            redis.reasons
        );
        assert!(plan.suggestions[0].applied);
    }

    #[test]
    fn after_adds_an_edge_the_executor_will_wait_on() {
        let g = graph(STACK);
        let plan = plan_with(
            &g,
            &[serde_json::json!({"action": "after", "component": "web", "after": "worker"})],
            Options::default(),
        );
        let web = plan.step("web").expect("web planned");
        assert!(web.depends_on.iter().any(|d| d.name == "worker"));
        assert_eq!(order(&plan).last(), Some(&"web"));
    }

    #[test]
    fn an_after_closing_a_cycle_is_rejected_with_the_cycle() {
        let g = graph(STACK);
        let plan = plan_with(
            &g,
            &[serde_json::json!({"action": "after", "component": "redis", "after": "worker"})],
            Options::default(),
        );
        let outcome = &plan.suggestions[0];
        assert!(!outcome.applied);
        assert_eq!(
            outcome.effect,
            "would create a cycle: redis -> api -> worker -> redis"
        );
        assert!(plan.step("redis").expect("planned").depends_on.is_empty());
    }

    #[test]
    fn skip_excludes_and_blocks_dependents() {
        let g = graph(STACK);
        let plan = plan_with(
            &g,
            &[serde_json::json!({"action": "skip", "component": "api", "reason": "flaky"})],
            Options::default(),
        );
        assert_eq!(plan.excluded[0].name, "api");
        assert_eq!(plan.excluded[0].reason, "Crown: skip api — flaky");
        assert!(plan.step("worker").expect("planned").blocked.is_some());
    }

    #[test]
    fn parallelism_yields_to_the_command_line() {
        let g = graph(STACK);
        let item = serde_json::json!({"action": "parallelism", "value": 1});
        let plan = plan_with(&g, std::slice::from_ref(&item), Options::default());
        assert_eq!(plan.parallelism, 1);
        assert!(plan.suggestions[0].applied);
        let plan = plan_with(
            &g,
            &[item],
            Options {
                parallelism: Some(3),
                ..Options::default()
            },
        );
        assert_eq!(plan.parallelism, 3);
        assert!(!plan.suggestions[0].applied);
        assert!(plan.suggestions[0].effect.contains("--parallelism 3"));
    }

    #[test]
    fn what_cannot_be_honoured_is_rejected_with_why() {
        let g = graph(STACK);
        let plan = plan_with(
            &g,
            &[
                serde_json::json!({"action": "prioritize", "component": "apii"}),
                serde_json::json!({"action": "teleport", "component": "api"}),
                serde_json::json!({"action": "add_component", "component": "miner"}),
                serde_json::json!({"action": "prioritize", "component": "api", "command": ["sh", "-c", "evil"]}),
                serde_json::json!({"action": "set_command", "component": "api"}),
                serde_json::json!({"action": "parallelism", "value": 0}),
            ],
            Options::default(),
        );
        let effects: Vec<&str> = plan.suggestions.iter().map(|o| o.effect.as_str()).collect();
        assert!(plan.suggestions.iter().all(|o| !o.applied), "{effects:?}");
        assert!(effects[0].contains("unknown component `apii` (did you mean `api`?)"));
        assert!(effects[1].contains("unknown action `teleport`"));
        assert!(effects[2].contains("tries to add a component"));
        assert!(effects[3].contains("tries to change a command (`command`)"));
        assert!(effects[4].contains("can never change a command"));
        assert!(effects[5].contains("from 1 to 1024"));
        // Nothing changed: same order and commands as without suggestions.
        let plain = plan_with(&g, &[], Options::default());
        assert_eq!(order(&plan), order(&plain));
        assert_eq!(
            plan.step("api").unwrap().command,
            plain.step("api").unwrap().command
        );
        // Rejections naming a known step show up in its reasons.
        assert!(
            plan.step("api")
                .unwrap()
                .reasons
                .iter()
                .any(|r| r.text.contains("rejected"))
        );
    }

    #[test]
    fn suggestions_outside_the_selection_are_rejected() {
        let g = graph(STACK);
        let plan = plan_with(
            &g,
            &[serde_json::json!({"action": "prioritize", "component": "web"})],
            Options {
                targets: vec!["worker".to_owned()],
                ..Options::default()
            },
        );
        assert!(plan.suggestions[0].effect.contains("not part of this boot"));
    }

    /// Suggestions as a mid-boot message carried them.
    fn mid_boot(items: Vec<serde_json::Value>) -> Vec<Sourced> {
        items
            .into_iter()
            .map(|item| Sourced {
                source: Source::Message {
                    at: "2025-01-01T00:00:01Z".to_owned(),
                },
                suggestion: serde_json::from_value(item).unwrap(),
            })
            .collect()
    }

    #[test]
    fn mid_boot_suggestions_cannot_touch_a_model_launch() {
        let g = graph(STACK);
        let mut plan = plan_with(&g, &[], Options::default());
        // As crown::session makes it: a step whose origin is `crown.models[0]`.
        plan.steps[4].origin.pointer = Some("/crown/models/0".to_owned());
        let launch = plan.steps[4].name.clone();
        let items = mid_boot(vec![
            serde_json::json!({"action": "after", "component": "web", "after": launch}),
            serde_json::json!({"action": "skip", "component": launch}),
        ]);
        let revision = revise(&plan, &BTreeSet::new(), &items, None);
        for outcome in &revision.outcomes {
            assert!(!outcome.applied, "{outcome:?}");
            assert!(
                outcome
                    .effect
                    .contains("is razar's launch of a Crown model"),
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn mid_boot_suggestions_only_move_steps_not_yet_started() {
        let g = graph(STACK);
        let plan = plan_with(&g, &[], Options::default());
        assert_eq!(order(&plan), ["db", "redis", "api", "web", "worker"]);
        let started: BTreeSet<String> = ["db".to_owned(), "redis".to_owned()].into();
        let items = mid_boot(vec![
            serde_json::json!({"action": "prioritize", "component": "worker"}),
            serde_json::json!({"action": "defer", "component": "db"}),
            serde_json::json!({"action": "after", "component": "web", "after": "worker", "reason": "shared disk"}),
            serde_json::json!({"action": "after", "component": "api", "after": "web"}),
            serde_json::json!({"action": "skip", "component": "ghost"}),
            serde_json::json!({"action": "prioritize", "component": "api", "command": ["rm", "-rf", "/"]}),
        ]);
        let revision = revise(&plan, &started, &items, None);
        let applied: Vec<bool> = revision.outcomes.iter().map(|o| o.applied).collect();
        assert_eq!(applied, [true, false, true, false, false, false]);
        assert!(revision.outcomes[1].effect.contains("already started"));
        // Mid-boot as at planning time, a suggestion carrying a command is refused whole.
        assert!(
            revision.outcomes[5]
                .effect
                .contains("tries to change a command (`command`)")
        );
        assert_eq!(
            revision.outcomes[3].effect,
            "would create a cycle: api -> worker -> web -> api"
        );
        assert!(
            revision.outcomes[4]
                .effect
                .contains("not a step of this boot")
        );
        // worker still waits for api, and web now waits for worker.
        assert_eq!(revision.order, ["db", "redis", "api", "worker", "web"]);
        let mut revised = plan.clone();
        revision.apply(&mut revised);
        assert_eq!(order(&revised), ["db", "redis", "api", "worker", "web"]);
        let web = revised.step("web").unwrap();
        assert!(web.depends_on.iter().any(|d| d.name == "worker"));
        assert!(
            web.reasons[0]
                .text
                .starts_with("Crown: after web worker — shared disk")
        );
        assert_eq!(revised.suggestions.len(), 6);
    }

    #[test]
    fn a_plan_without_suggestions_serialises_without_the_field() {
        let g = graph(STACK);
        let plan = plan_with(&g, &[], Options::default());
        assert!(!plan.to_json(Path::new("/")).contains("\"suggestions\""));
    }

    #[test]
    fn a_plan_with_suggestions_round_trips_through_its_file() {
        let g = graph(STACK);
        let plan = plan_with(
            &g,
            &[serde_json::json!({"action": "skip", "component": "web", "reason": "r"})],
            Options::default(),
        );
        let text = plan.to_json(Path::new("/"));
        assert!(text.contains("\"suggestions\""));
        let back = Plan::from_json(&text, Path::new("/")).expect("reads back");
        assert_eq!(back.suggestions, plan.suggestions);
    }

    #[test]
    fn suggestions_files_report_position_of_problems() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.json");
        std::fs::write(
            &path,
            "{\"type\": \"suggestions\",\n \"items\": [{\"component\": \"api\"}]}\n",
        )
        .unwrap();
        let err = load_file(&path).unwrap_err().to_string();
        assert!(err.contains("s.json:2:"), "{err}");
        assert!(err.contains("missing field `action`"), "{err}");
        std::fs::write(&path, "{\"type\": \"suggestions\", \"items\": [\n").unwrap();
        let err = load_file(&path).unwrap_err().to_string();
        assert!(err.contains("invalid JSON"), "{err}");
        std::fs::write(
            &path,
            r#"{"type": "suggestions", "items": [{"action": "skip", "component": "api"}]}"#,
        )
        .unwrap();
        let items = load_file(&path).expect("valid file");
        assert_eq!(items[0].suggestion.action, "skip");
        assert_eq!(items[0].source, Source::File { path: path.clone() });
    }
}
