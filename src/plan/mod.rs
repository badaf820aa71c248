//! Planning: a checked [`Graph`] plus what razar knows (exclusions, timing estimates) becomes a
//! [`Plan`]: an ordered, serialisable boot with a predicted timeline and the reason for every
//! decision. The executor runs a `Plan`, never a `Config`.
//!
//! Plans are deterministic: the same inputs give a byte-identical plan (no clocks, sorted maps).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rayon::prelude::*;
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
    /// Where the executor keeps its database and logs (absolute in memory; see
    /// [`Plan::to_json`] for the file form).
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
    /// Crown suggestions considered for this plan, applied or rejected, with provenance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suggestions: Vec<suggest::Outcome>,
}

/// One component in the plan, with everything the executor needs to run it.
///
/// In the plan file, fields that are empty or false are left out; reading fills them in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    pub kind: Kind,
    /// `None`: a milestone with no process (completes as soon as its dependencies do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
    pub priority: i64,
    /// Depth in the DAG: 0 for components without dependencies.
    pub wave: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<Probe>,
    pub restart: Restart,
    pub stop: Stop,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute in memory; see [`Plan::to_json`] for the file form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// Directories to put in front of `PATH` for the command, first first (a layer's
    /// virtual environment); absolute in memory, like `cwd`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub daemonizes: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<Command>,
    pub origin: Origin,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Predicted duration from spawn to ready (or completed), and where it came from.
    pub weight_ms: u64,
    pub weight_source: WeightSource,
    pub predicted_start_ms: u64,
    pub predicted_ready_ms: u64,
    /// Why the step sits where it does, most important first.
    pub reasons: Vec<Reason>,
    /// Set when the step cannot run because something it needs was excluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

fn is_false(flag: &bool) -> bool {
    !flag
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
    /// Crown suggestions to merge, in the order received (see [`suggest`]).
    pub suggestions: Vec<suggest::Sourced>,
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
            suggestions: Vec::new(),
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
///
/// `selected` must be closed under dependencies (as [`Graph::select`] returns it).
pub fn build(graph: &Graph, selected: &BTreeSet<usize>, options: &Options) -> Plan {
    if !options.suggestions.is_empty() {
        return suggest::build(graph, selected, options);
    }
    let config = graph.config();
    let components = graph.components();
    let n = components.len();
    let parallelism = options.parallelism.unwrap_or(config.parallelism).max(1);
    let weights: Vec<(u64, WeightSource)> = components.iter().map(|c| weight(c, options)).collect();
    let mut in_plan = vec![false; n];
    for &i in selected {
        in_plan[i] = true;
    }

    // Excluded components leave the plan; whatever depends on them, transitively, is blocked.
    let mut excluded = Vec::new();
    let mut is_excluded = vec![false; n];
    if !options.exclude.is_empty() {
        for &i in selected {
            if let Some(reason) = options.exclude.get(&components[i].name) {
                is_excluded[i] = true;
                excluded.push(Excluded {
                    name: components[i].name.clone(),
                    reason: reason.clone(),
                });
            }
        }
    }
    let mut blocked: Vec<Option<String>> = vec![None; n];
    if !excluded.is_empty() {
        for &i in graph.topological() {
            if !in_plan[i] || is_excluded[i] {
                continue;
            }
            let deps = graph.sorted_dependencies(i);
            let why = if let Some(&(d, _)) = deps.iter().find(|(d, _)| is_excluded[*d]) {
                let name = &components[d].name;
                Some(format!(
                    "blocked: depends on `{name}`, which is excluded ({})",
                    options.exclude[name]
                ))
            } else {
                deps.iter()
                    .find(|(d, _)| blocked[*d].is_some())
                    .map(|&(d, _)| {
                        format!(
                            "blocked: depends on `{}`, which is blocked",
                            components[d].name
                        )
                    })
            };
            blocked[i] = why;
        }
    }

    let included: Vec<usize> = graph
        .topological()
        .iter()
        .copied()
        .filter(|&i| in_plan[i] && !is_excluded[i])
        .collect();
    // A blocked step never runs: it weighs nothing in the ranks and the search, as in the
    // simulation below.
    let weights = if blocked.iter().any(Option::is_some) {
        let mut zeroed = weights;
        for (i, why) in blocked.iter().enumerate() {
            if why.is_some() {
                zeroed[i].0 = 0;
            }
        }
        zeroed
    } else {
        weights
    };
    let ordered = order::order(
        graph,
        &included,
        &weights,
        parallelism,
        options.strategy,
        options.explored.as_deref(),
    );
    let mut position = vec![usize::MAX; n];
    for (p, &i) in ordered.order.iter().enumerate() {
        position[i] = p;
    }

    // Simulate the schedule the executor will follow: ready steps start in plan order.
    let nodes: Vec<SimNode> = ordered
        .order
        .iter()
        .map(|&i| {
            let runs = blocked[i].is_none();
            // Excluded dependencies are not in the plan (their dependents are blocked).
            let mut deps: Vec<(usize, Condition)> = graph
                .dependencies(i)
                .filter(|(d, _)| position[*d] != usize::MAX)
                .map(|(d, condition)| (position[d], condition))
                .collect();
            // Ties on the critical path go to the dependency earliest in the plan.
            deps.sort_unstable();
            SimNode {
                deps,
                weight_ms: if runs { weights[i].0 } else { 0 },
                holds_slot: runs && components[i].command.is_some(),
            }
        })
        .collect();
    let sim = simulate(&nodes, parallelism);

    // Steps copy what the executor needs from each component; independent, so in parallel.
    let steps: Vec<Step> = ordered
        .order
        .par_iter()
        .zip(ordered.reasons.into_par_iter())
        .enumerate()
        .map(|(p, (&i, mut reasons))| {
            let c = &components[i];
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
            if let Some(why) = &blocked[i] {
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
                path: c.path.clone(),
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
                blocked: blocked[i].clone(),
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
                .map(|&p| components[ordered.order[p]].name.clone())
                .collect(),
            critical_path_ms,
            total_work_ms,
            lower_bound_ms,
        },
        explored: ordered.explored,
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

/// Why a plan file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    #[error("not a razar plan file (schemas/plan.schema.json)")]
    Syntax(#[source] serde_json::Error),
    #[error("plan file format {found} is not supported; this razar reads format {PLAN_FORMAT}")]
    Version { found: u32 },
}

impl Plan {
    /// The plan file form (`schemas/plan.schema.json`): JSON with one top-level field per
    /// line and one step per line, so a diff of two plans shows the steps that changed.
    ///
    /// Paths inside `base` (the directory the plan is made in: `state_dir`, each step's
    /// `cwd` and `path`) are written relative to it, so a plan checked into a repository stays valid in
    /// every clone; [`Plan::from_json`] resolves them against the directory it is run from.
    /// Paths elsewhere stay absolute.
    pub fn to_json(&self, base: &Path) -> String {
        let mut out = Vec::with_capacity(self.steps.len() * 700 + 1024);
        self.write_json(base, &mut out)
            .expect("writing into a Vec cannot fail");
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    /// Like [`Plan::to_json`], streamed to `out`: a 100k-step plan is ~70 MB, and is never
    /// held in memory whole.
    pub fn write_json(&self, base: &Path, out: &mut impl std::io::Write) -> std::io::Result<()> {
        // Every field, named: a field added to `Plan` does not compile until it is written.
        let Plan {
            format,
            config_hash,
            sources,
            strategy,
            parallelism,
            targets,
            state_dir,
            steps,
            excluded,
            timeline,
            explored,
            suggestions,
        } = self;
        let relative = |path: &Path| -> PathBuf {
            match path.strip_prefix(base) {
                Ok(rest) if rest.as_os_str().is_empty() => PathBuf::from("."),
                Ok(rest) => rest.to_path_buf(),
                Err(_) => path.to_path_buf(),
            }
        };
        fn field(
            out: &mut impl std::io::Write,
            name: &str,
            value: &impl Serialize,
        ) -> std::io::Result<()> {
            write!(out, "  \"{name}\": ")?;
            serde_json::to_writer(&mut *out, value).map_err(std::io::Error::other)?;
            out.write_all(b",\n")
        }
        out.write_all(b"{\n")?;
        field(out, "format", format)?;
        field(out, "config_hash", config_hash)?;
        field(out, "sources", sources)?;
        field(out, "strategy", strategy)?;
        field(out, "parallelism", parallelism)?;
        field(out, "targets", targets)?;
        field(out, "state_dir", &relative(state_dir))?;
        out.write_all(b"  \"steps\": [")?;
        // Steps are independent: render them in parallel, a batch at a time, so memory
        // stays bounded however long the plan.
        let mut first = true;
        for batch in steps.chunks(16 * 1024) {
            let pieces: Vec<String> = batch
                .par_chunks(256)
                .map(|chunk| {
                    let mut text = String::with_capacity(chunk.len() * 800);
                    for step in chunk {
                        text.push_str(",\n    ");
                        let moves = |p: &PathBuf| relative(p) != *p;
                        let line = if step.cwd.as_ref().is_some_and(moves)
                            || step.path.iter().any(moves)
                        {
                            let mut step = step.clone();
                            step.cwd = step.cwd.as_deref().map(relative);
                            step.path = step.path.iter().map(|p| relative(p)).collect();
                            serde_json::to_string(&step)
                        } else {
                            serde_json::to_string(step)
                        };
                        text.push_str(&line.expect("steps serialise: plain data, string keys"));
                    }
                    text
                })
                .collect();
            for piece in &pieces {
                // Each piece starts with a separator; the first of all has none.
                let skip = if first { 1 } else { 0 };
                first = false;
                out.write_all(&piece.as_bytes()[skip..])?;
            }
        }
        out.write_all(if steps.is_empty() {
            b"],\n"
        } else {
            b"\n  ],\n"
        })?;
        field(out, "excluded", excluded)?;
        // Only plans Crown shaped carry the field: other plans stay byte-identical.
        if !suggestions.is_empty() {
            field(out, "suggestions", suggestions)?;
        }
        write!(out, "  \"timeline\": ")?;
        serde_json::to_writer(&mut *out, timeline).map_err(std::io::Error::other)?;
        if let Some(explored) = explored {
            write!(out, ",\n  \"explored\": ")?;
            serde_json::to_writer(&mut *out, explored).map_err(std::io::Error::other)?;
        }
        out.write_all(b"\n}\n")
    }

    /// Reads a plan file written by [`Plan::to_json`], resolving relative paths against
    /// `base` (normally the current directory).
    pub fn from_json(text: &str, base: &Path) -> Result<Plan, PlanFileError> {
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        let version: Version = serde_json::from_str(text).map_err(PlanFileError::Syntax)?;
        if version.format != PLAN_FORMAT {
            return Err(PlanFileError::Version {
                found: version.format,
            });
        }
        let mut plan: Plan = serde_json::from_str(text).map_err(PlanFileError::Syntax)?;
        plan.state_dir = base.join(&plan.state_dir);
        for step in &mut plan.steps {
            if let Some(cwd) = &mut step.cwd {
                *cwd = base.join(&*cwd);
            }
            for dir in &mut step.path {
                *dir = base.join(&*dir);
            }
        }
        Ok(plan)
    }

    /// Step positions by name, for callers that look steps up repeatedly.
    pub fn index(&self) -> HashMap<&str, usize> {
        self.steps
            .iter()
            .enumerate()
            .map(|(p, s)| (s.name.as_str(), p))
            .collect()
    }

    /// The step called `name` (a linear scan: use [`Plan::index`] for many lookups).
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
            critical.to_json(Path::new("/")),
            plan_with(
                &g,
                &Options {
                    strategy: Strategy::CriticalPath,
                    ..Options::default()
                }
            )
            .to_json(Path::new("/")),
            "deterministic"
        );
    }

    #[test]
    fn blocked_steps_weigh_nothing_in_the_ranks() {
        // f is excluded: s (behind it) and its long estimate never run, so the critical path
        // is a's alone and nothing says s is on it.
        let (_dir, g) = graph(
            2,
            &[("a", 100, &[]), ("f", 100, &[]), ("s", 1000, &["a", "f"])],
        );
        let plan = plan_with(
            &g,
            &Options {
                strategy: Strategy::CriticalPath,
                exclude: [("f".to_owned(), "quarantined".to_owned())].into(),
                ..Options::default()
            },
        );
        let s = plan.step("s").expect("s planned");
        assert!(s.blocked.is_some());
        assert!(
            s.reasons.iter().all(|r| !r.text.contains("critical path")),
            "{:?}",
            s.reasons
        );
        assert_eq!(plan.timeline.critical_path, ["a"]);
        let a = plan.step("a").expect("a planned");
        assert_eq!(a.reasons[0].text, "on critical path, 100ms to go");
        assert!(!render_gantt_mermaid(&plan).contains("    s :"));
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
