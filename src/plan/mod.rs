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
    /// With the `explore` strategy: where the order came from and what it predicts against
    /// the critical-path schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explored: Option<Explored>,
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
    /// Failed attempts among the recorded ones (history of the current command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<Failures>,
}

/// How often a component failed, from history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failures {
    pub failed: usize,
    pub attempts: usize,
    /// failed / attempts.
    pub rate: f64,
    /// True when `rate` reaches the plan's flaky threshold.
    pub flaky: bool,
}

/// What the `explore` strategy achieved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Explored {
    pub source: ExploreSource,
    /// Predicted makespan of this order.
    pub makespan_ms: u64,
    /// Predicted makespan of the critical-path list schedule under the same weights.
    pub critical_path_makespan_ms: u64,
    /// Simulations the search ran (1 for a stored order).
    pub evaluations: usize,
    /// Steps that start earlier than in the critical-path order.
    pub moved: usize,
}

/// Where an explored order came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExploreSource {
    /// Found by the search while building this plan.
    Search,
    /// The best order an earlier search stored for this configuration (`razar bench`).
    Stored,
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

/// Failure rate from which a component is flagged flaky in the plan (`--flaky-threshold`).
pub const DEFAULT_FLAKY_THRESHOLD: f64 = 0.2;

/// What the planner is asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub targets: Vec<String>,
    pub parallelism: Option<usize>,
    pub strategy: Strategy,
    /// Components to leave out, with the reason (quarantine, downtime, skip).
    pub exclude: BTreeMap<String, String>,
    /// Predicted durations known from history, by component name.
    pub history: BTreeMap<String, (Duration, WeightSource)>,
    /// Failed and total recorded attempts by component name (history of the current command).
    pub failures: BTreeMap<String, (usize, usize)>,
    /// Failure rate (0..=1) from which a component is flagged flaky.
    pub flaky_threshold: f64,
    /// A start order (component names) an earlier search stored for this configuration;
    /// the `explore` strategy uses it when it predicts no worse than the critical path.
    pub explored: Option<Vec<String>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            targets: Vec::new(),
            parallelism: None,
            strategy: Strategy::default(),
            exclude: BTreeMap::new(),
            history: BTreeMap::new(),
            failures: BTreeMap::new(),
            flaky_threshold: DEFAULT_FLAKY_THRESHOLD,
            explored: None,
        }
    }
}

/// The strategy to plan with when none was asked for: what razar learned decides. A stored
/// explored order wins, then critical path once any component has history, else priority.
pub fn default_strategy(has_history: bool, has_explored: bool) -> Strategy {
    match (has_explored, has_history) {
        (true, _) => Strategy::Explore,
        (false, true) => Strategy::CriticalPath,
        (false, false) => Strategy::Priority,
    }
}

/// Builds the plan for the selected part of `graph`.
pub fn build(graph: &Graph, selected: &BTreeSet<usize>, options: &Options) -> Plan {
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
    let ordered = order::order(
        graph,
        &included,
        &weights,
        parallelism,
        options.strategy,
        options.explored.as_deref(),
    );
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
            let failures = options
                .failures
                .get(&c.name)
                .and_then(|&(failed, attempts)| {
                    (attempts > 0).then(|| {
                        let rate = failed as f64 / attempts as f64;
                        Failures {
                            failed,
                            attempts,
                            rate,
                            flaky: failed > 0 && rate >= options.flaky_threshold,
                        }
                    })
                });
            if let Some(f) = failures.filter(|f| f.flaky) {
                reasons.insert(
                    0,
                    Reason {
                        kind: ReasonKind::Flaky,
                        text: format!(
                            "flaky: failed {} of last {} attempts ({:.0}%)",
                            f.failed,
                            f.attempts,
                            f.rate * 100.0
                        ),
                    },
                );
            }
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
                failures,
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
        explored: ordered.explored,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Tasks `name: (estimate ms, dependencies)` at `parallelism`, as a loaded graph.
    fn graph(parallelism: usize, tasks: &[(&str, u64, &[&str])]) -> (tempfile::TempDir, Graph) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut yaml = format!("version: 1\nparallelism: {parallelism}\ncomponents:\n");
        for (name, ms, deps) in tasks {
            yaml.push_str(&format!(
                "  - name: {name}\n    kind: task\n    command: [\"sleep\", \"{ms}\"]\n    estimate: {ms}ms\n    depends_on: [{}]\n",
                deps.join(", ")
            ));
        }
        let path = dir.path().join("razar.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let graph = crate::graph::load(&[path]).expect("valid config");
        (dir, graph)
    }

    fn plan_with(graph: &Graph, options: &Options) -> Plan {
        let all = graph.select(&[]).expect("no targets");
        build(graph, &all, options)
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.steps.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn critical_path_starts_the_long_chain_first_and_reaches_the_optimum() {
        // Two slots; a and b (300 ms each) come first by name, but c → d (100 + 500 ms) is
        // the long chain. Optimum 600 ms: c, a at 0; d at 100; b at 300.
        let (_dir, g) = graph(
            2,
            &[
                ("a", 300, &[]),
                ("b", 300, &[]),
                ("c", 100, &[]),
                ("d", 500, &["c"]),
            ],
        );
        let by_priority = plan_with(&g, &Options::default());
        assert_eq!(by_priority.timeline.makespan_ms, 900);
        let critical = plan_with(
            &g,
            &Options {
                strategy: Strategy::CriticalPath,
                ..Options::default()
            },
        );
        assert_eq!(names(&critical), ["c", "a", "d", "b"]);
        assert_eq!(critical.timeline.makespan_ms, 600);
        assert_eq!(critical.timeline.lower_bound_ms, 600);
        assert_eq!(critical.timeline.critical_path, ["c", "d"]);
        let c = critical.step("c").expect("c planned");
        assert_eq!(c.reasons[0].text, "on critical path, 600ms to go");
        let d = critical.step("d").expect("d planned");
        assert_eq!((d.predicted_start_ms, d.predicted_ready_ms), (100, 600));
        assert_eq!(
            critical.to_json(),
            plan_with(
                &g,
                &Options {
                    strategy: Strategy::CriticalPath,
                    ..Options::default()
                }
            )
            .to_json(),
            "deterministic"
        );
    }

    #[test]
    fn history_weights_override_estimates() {
        // By estimate, a is the long one; history says b takes far longer.
        let (_dir, g) = graph(1, &[("a", 500, &[]), ("b", 100, &[]), ("c", 100, &["b"])]);
        let mut options = Options {
            strategy: Strategy::CriticalPath,
            ..Options::default()
        };
        options.history.insert(
            "b".to_owned(),
            (Duration::from_millis(900), WeightSource::HistoryP50),
        );
        let plan = plan_with(&g, &options);
        assert_eq!(
            plan.step("b").map(|s| s.weight_source),
            Some(WeightSource::HistoryP50)
        );
        assert_eq!(
            plan.step("a").map(|s| s.weight_source),
            Some(WeightSource::Estimate)
        );
        assert_eq!(names(&plan)[0], "b");
        assert_eq!(plan.timeline.makespan_ms, 1500);
    }

    #[test]
    fn explore_beats_the_rank_schedule_and_its_stored_order_is_reused() {
        // Longest-first list scheduling of 5, 4, 3, 3, 3 on two slots takes 10 units; the
        // optimum is 9 (5 + 4 | 3 + 3 + 3).
        let (_dir, g) = graph(
            2,
            &[
                ("j5", 500, &[]),
                ("j4", 400, &[]),
                ("k1", 300, &[]),
                ("k2", 300, &[]),
                ("k3", 300, &[]),
            ],
        );
        let critical = plan_with(
            &g,
            &Options {
                strategy: Strategy::CriticalPath,
                ..Options::default()
            },
        );
        assert_eq!(critical.timeline.makespan_ms, 1000);
        let explore = Options {
            strategy: Strategy::Explore,
            ..Options::default()
        };
        let found = plan_with(&g, &explore);
        assert_eq!(found.timeline.makespan_ms, 900);
        let explored = found.explored.clone().expect("explore reports its search");
        assert_eq!(explored.source, ExploreSource::Search);
        assert_eq!(
            (explored.makespan_ms, explored.critical_path_makespan_ms),
            (900, 1000)
        );
        assert!(explored.moved > 0);
        assert!(
            found
                .steps
                .iter()
                .any(|s| s.reasons[0].text.starts_with("explored: starts"))
        );

        let stored = Options {
            explored: Some(names(&found).iter().map(|n| (*n).to_owned()).collect()),
            ..explore.clone()
        };
        let reused = plan_with(&g, &stored);
        assert_eq!(
            reused.explored.as_ref().map(|e| e.source),
            Some(ExploreSource::Stored)
        );
        assert_eq!(names(&reused), names(&found));
        assert_eq!(reused.timeline.makespan_ms, 900);

        // A stored order that is worse than the critical path under today's weights is
        // dropped for a fresh search.
        let worse = Options {
            explored: Some(["k1", "k2", "k3", "j4", "j5"].map(str::to_owned).to_vec()),
            ..explore
        };
        let searched = plan_with(&g, &worse);
        assert_eq!(
            searched.explored.map(|e| e.source),
            Some(ExploreSource::Search)
        );
        assert_eq!(searched.timeline.makespan_ms, 900);
    }

    #[test]
    fn failure_rates_are_shown_and_flaky_components_flagged() {
        let (_dir, g) = graph(
            2,
            &[("steady", 100, &[]), ("shaky", 100, &[]), ("new", 100, &[])],
        );
        let mut options = Options::default();
        options.failures.insert("steady".to_owned(), (1, 10));
        options.failures.insert("shaky".to_owned(), (3, 10));
        let plan = plan_with(&g, &options);
        let shaky = plan.step("shaky").expect("planned");
        assert_eq!(shaky.reasons[0].kind, ReasonKind::Flaky);
        assert_eq!(
            shaky.reasons[0].text,
            "flaky: failed 3 of last 10 attempts (30%)"
        );
        let steady = plan.step("steady").expect("planned");
        assert_eq!(
            steady.failures.map(|f| (f.failed, f.flaky)),
            Some((1, false))
        );
        assert!(steady.reasons.iter().all(|r| r.kind != ReasonKind::Flaky));
        assert_eq!(plan.step("new").and_then(|s| s.failures), None);
        let strict = plan_with(
            &g,
            &Options {
                flaky_threshold: 0.1,
                ..options
            },
        );
        assert_eq!(
            strict
                .step("steady")
                .and_then(|s| s.failures)
                .map(|f| f.flaky),
            Some(true)
        );
    }

    #[test]
    fn the_default_strategy_follows_what_is_known() {
        assert_eq!(default_strategy(false, false), Strategy::Priority);
        assert_eq!(default_strategy(true, false), Strategy::CriticalPath);
        assert_eq!(default_strategy(true, true), Strategy::Explore);
    }
}
