//! Planning: a checked [`Graph`] plus what razar knows (exclusions, timing estimates) becomes a
//! [`Plan`]: an ordered, serialisable boot with a predicted timeline and the reason for every
//! decision. The executor runs a `Plan`, never a `Config`.
//!
//! Plans are deterministic: the same inputs give a byte-identical plan (no clocks, sorted maps).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{
    Command, Component, Condition, Dependency, Kind, Origin, Probe, Restart, Stop,
};
use crate::graph::Graph;

pub mod explore;
mod order;
mod render;
pub mod simulate;
pub mod suggest;

pub use order::Strategy;
pub use render::{render_gantt_mermaid, render_text};
pub use simulate::{SimNode, Simulation, simulate};

/// Version of the plan file format (`schemas/plan.schema.json`).
pub const PLAN_FORMAT: u32 = 1;

/// Predicted time to ready for a component with neither history nor `estimate:`.
pub const DEFAULT_ESTIMATE: Duration = Duration::from_secs(1);

/// An ordered boot: the steps to run, what was left out and why, and the predicted timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub format: u32,
    /// SHA-256 of the configuration files this plan was built from (staleness check).
    pub config_hash: String,
    /// The configuration files, as given on the command line.
    pub sources: Vec<PathBuf>,
    pub strategy: Strategy,
    pub parallelism: usize,
    /// Components asked for on the command line (empty: all).
    pub targets: Vec<String>,
    pub state_dir: PathBuf,
    /// Steps in boot order: the executor starts ready steps in this order.
    pub steps: Vec<Step>,
    /// Components left out of this boot (quarantined, under downtime, skipped), with why.
    pub excluded: Vec<Excluded>,
    pub timeline: Timeline,
    /// Crown suggestions considered for this plan, applied or rejected, with provenance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suggestions: Vec<suggest::Outcome>,
}

/// One component in the plan, with everything the executor needs to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    pub kind: Kind,
    /// `None`: a milestone with no process (completes as soon as its dependencies do).
    pub command: Option<Command>,
    pub depends_on: Vec<Dependency>,
    pub priority: i64,
    /// Depth in the DAG: 0 for components without dependencies.
    pub wave: usize,
    pub ready: Option<Probe>,
    pub restart: Restart,
    pub stop: Stop,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    pub layer: Option<String>,
    pub daemonizes: bool,
    pub optional: bool,
    pub tests: Option<Command>,
    pub origin: Origin,
    pub notes: Vec<String>,
    /// Predicted duration from spawn to ready (or completed), and where it came from.
    pub weight_ms: u64,
    pub weight_source: WeightSource,
    pub predicted_start_ms: u64,
    pub predicted_ready_ms: u64,
    /// Why the step sits where it does, most important first.
    pub reasons: Vec<Reason>,
    /// Set when the step cannot run because something it needs was excluded.
    pub blocked: Option<String>,
}

impl Step {
    /// The condition a dependent effectively waits for on this step: `ready` on a task
    /// means `completed`.
    pub fn effective(&self, condition: Condition) -> Condition {
        match (self.kind, condition) {
            (Kind::Task, Condition::Ready) => Condition::Completed,
            (_, c) => c,
        }
    }
}

/// Where a step's predicted duration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightSource {
    /// Median of past boots.
    HistoryP50,
    /// 90th percentile of past boots (`--pessimistic`).
    HistoryP90,
    /// The config's `estimate:`.
    Estimate,
    /// No information: razar's default.
    Default,
    /// A milestone without a command takes no time.
    Milestone,
}

/// One reason behind a planning decision, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub kind: ReasonKind,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReasonKind {
    /// Waits for dependencies.
    Dependency,
    /// Ordered by priority among ready components.
    Priority,
    /// On or near the critical path.
    CriticalPath,
    /// A Crown suggestion.
    Crown,
    /// Excluded or blocked by a quarantine.
    Quarantine,
    /// History says it fails often.
    Flaky,
    /// Selected by a target on the command line.
    Target,
}

/// A component left out of the boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Excluded {
    pub name: String,
    pub reason: String,
}

/// The simulated boot: when each step is predicted to start and be ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub makespan_ms: u64,
    /// Longest weighted chain of dependencies, first to last.
    pub critical_path: Vec<String>,
    pub critical_path_ms: u64,
    pub total_work_ms: u64,
    /// max(critical path, total work / parallelism): no schedule can beat it.
    pub lower_bound_ms: u64,
}

/// What the planner is asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub targets: Vec<String>,
    pub parallelism: Option<usize>,
    pub strategy: Strategy,
    /// Components to leave out, with the reason (quarantine, downtime, skip).
    pub exclude: BTreeMap<String, String>,
    /// Predicted durations known from history, by component name.
    pub history: BTreeMap<String, (Duration, WeightSource)>,
    /// Crown suggestions to merge, in the order received (see [`suggest`]).
    pub suggestions: Vec<suggest::Sourced>,
}

/// Builds the plan for the selected part of `graph`.
pub fn build(graph: &Graph, selected: &BTreeSet<usize>, options: &Options) -> Plan {
    if !options.suggestions.is_empty() {
        return suggest::build(graph, selected, options);
    }
    let config = graph.config();
    let parallelism = options.parallelism.unwrap_or(config.parallelism).max(1);
    let weights: Vec<(u64, WeightSource)> = graph
        .components()
        .iter()
        .map(|c| weight(c, options))
        .collect();

    // Excluded components leave the plan; whatever depends on them, transitively, is blocked.
    let mut excluded = Vec::new();
    let mut blocked: BTreeMap<usize, String> = BTreeMap::new();
    for &i in selected {
        let component = &graph.components()[i];
        if let Some(reason) = options.exclude.get(&component.name) {
            excluded.push(Excluded {
                name: component.name.clone(),
                reason: reason.clone(),
            });
        }
    }
    let excluded_set: BTreeSet<usize> = selected
        .iter()
        .copied()
        .filter(|&i| options.exclude.contains_key(&graph.components()[i].name))
        .collect();
    for &i in selected {
        if excluded_set.contains(&i) {
            continue;
        }
        if let Some((d, _)) = graph
            .sorted_dependencies(i)
            .into_iter()
            .find(|(d, _)| excluded_set.contains(d))
        {
            let name = &graph.components()[d].name;
            blocked.insert(
                i,
                format!(
                    "blocked: depends on `{name}`, which is excluded ({})",
                    options.exclude[name]
                ),
            );
        }
    }
    // Blocking propagates: walk in topological order (wave order suffices).
    let mut by_wave: Vec<usize> = selected
        .iter()
        .copied()
        .filter(|i| !excluded_set.contains(i))
        .collect();
    by_wave.sort_by_key(|&i| (graph.wave(i), i));
    for &i in &by_wave {
        if blocked.contains_key(&i) {
            continue;
        }
        if let Some((d, _)) = graph
            .sorted_dependencies(i)
            .into_iter()
            .find(|(d, _)| blocked.contains_key(d))
        {
            let name = &graph.components()[d].name;
            blocked.insert(i, format!("blocked: depends on `{name}`, which is blocked"));
        }
    }

    let included: Vec<usize> = by_wave;
    let ordered = order::order(graph, &included, &weights, parallelism, options.strategy);
    let position: BTreeMap<usize, usize> = ordered
        .order
        .iter()
        .enumerate()
        .map(|(p, &i)| (i, p))
        .collect();

    // Simulate the schedule the executor will follow: ready steps start in plan order.
    let nodes: Vec<SimNode> = ordered
        .order
        .iter()
        .map(|&i| {
            let component = &graph.components()[i];
            SimNode {
                deps: graph
                    .sorted_dependencies(i)
                    .into_iter()
                    .filter_map(|(d, condition)| position.get(&d).map(|&p| (p, condition)))
                    .collect(),
                weight_ms: if blocked.contains_key(&i) {
                    0
                } else {
                    weights[i].0
                },
                holds_slot: component.command.is_some() && !blocked.contains_key(&i),
            }
        })
        .collect();
    let sim = simulate(&nodes, parallelism);

    let steps: Vec<Step> = ordered
        .order
        .iter()
        .enumerate()
        .map(|(p, &i)| {
            let c = &graph.components()[i];
            let mut reasons = ordered.reasons[p].clone();
            if let Some(why) = blocked.get(&i) {
                reasons.insert(
                    0,
                    Reason {
                        kind: ReasonKind::Quarantine,
                        text: why.clone(),
                    },
                );
            }
            Step {
                name: c.name.clone(),
                kind: c.kind,
                command: c.command.clone(),
                depends_on: c.depends_on.clone(),
                priority: c.priority,
                wave: graph.wave(i),
                ready: c.ready.clone(),
                restart: c.restart.clone(),
                stop: c.stop.clone(),
                env: c.env.clone(),
                cwd: c.cwd.clone(),
                layer: c.layer.clone(),
                daemonizes: c.daemonizes,
                optional: c.optional,
                tests: c.tests.clone(),
                origin: c.origin.clone(),
                notes: c.notes.clone(),
                weight_ms: weights[i].0,
                weight_source: weights[i].1,
                predicted_start_ms: sim.start_ms[p],
                predicted_ready_ms: sim.ready_ms[p],
                reasons,
                blocked: blocked.get(&i).cloned(),
            }
        })
        .collect();

    let total_work_ms: u64 = nodes
        .iter()
        .filter(|n| n.holds_slot)
        .map(|n| n.weight_ms)
        .sum();
    let (critical_path_ms, critical) = simulate::critical_path(&nodes);
    let lower_bound_ms = critical_path_ms.max(total_work_ms.div_ceil(parallelism as u64));
    Plan {
        format: PLAN_FORMAT,
        config_hash: config.content_hash(),
        sources: config.sources.iter().map(|s| s.path.clone()).collect(),
        strategy: options.strategy,
        parallelism,
        targets: options.targets.clone(),
        state_dir: config.state_dir.clone(),
        steps,
        excluded,
        timeline: Timeline {
            makespan_ms: sim.makespan_ms,
            critical_path: critical
                .iter()
                .map(|&p| graph.components()[ordered.order[p]].name.clone())
                .collect(),
            critical_path_ms,
            total_work_ms,
            lower_bound_ms,
        },
        suggestions: Vec::new(),
    }
}

fn weight(component: &Component, options: &Options) -> (u64, WeightSource) {
    if component.command.is_none() {
        return (0, WeightSource::Milestone);
    }
    if let Some((duration, source)) = options.history.get(&component.name) {
        return (crate::duration::millis(*duration), *source);
    }
    match component.estimate {
        Some(estimate) => (crate::duration::millis(estimate), WeightSource::Estimate),
        None => (
            crate::duration::millis(DEFAULT_ESTIMATE),
            WeightSource::Default,
        ),
    }
}

impl Plan {
    /// The plan file form: pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut text =
            serde_json::to_string_pretty(self).expect("plans serialise: plain data, string keys");
        text.push('\n');
        text
    }

    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    pub fn dependency_count(&self) -> usize {
        self.steps.iter().map(|s| s.depends_on.len()).sum()
    }
}
