//! What razar learned, turned into planner input: history weights (p50, or p90 when
//! pessimistic), failure counts for the flaky flag, the stored explored order, and the
//! strategy to use when none was asked for. Shared by `plan`, `apply` and `bench` so they
//! plan the same boot from the same facts. Reads what the state module hands it; never
//! touches the state directory itself.

use std::collections::BTreeMap;

use crate::graph::Graph;
use crate::plan::{self, Strategy};
use crate::state::{ExploredOrder, HistoryStats};

/// How the operator asked to plan (`--strategy`, `--pessimistic`, `--flaky-threshold`).
#[derive(Debug, Clone)]
pub struct Learning {
    /// `None`: chosen by [`plan::default_strategy`] from what is known.
    pub strategy: Option<Strategy>,
    pub pessimistic: bool,
    pub flaky_threshold: f64,
}

impl Default for Learning {
    fn default() -> Self {
        Learning {
            strategy: None,
            pessimistic: false,
            flaky_threshold: plan::DEFAULT_FLAKY_THRESHOLD,
        }
    }
}

/// Planner options for `graph` from what the state holds. `parallelism` and `targets` pick
/// the explored order stored for exactly this boot.
pub fn options(
    graph: &Graph,
    targets: Vec<String>,
    parallelism: Option<usize>,
    learning: &Learning,
    history: &BTreeMap<String, HistoryStats>,
    explored: &BTreeMap<String, ExploredOrder>,
    exclude: BTreeMap<String, String>,
) -> plan::Options {
    let components = graph.components();
    let weights = crate::state::weights(history, components, learning.pessimistic);
    let failures: BTreeMap<String, (usize, usize)> = components
        .iter()
        .filter_map(|c| {
            let stats = history.get(&c.name)?;
            let command = c.command.as_ref()?;
            stats
                .matches(c.kind, command)
                .then(|| (c.name.clone(), (stats.failures, stats.samples)))
        })
        .collect();
    let effective_parallelism = parallelism.unwrap_or(graph.config().parallelism).max(1);
    let stored = explored
        .get(&ExploredOrder::key(
            &graph.config().content_hash(),
            effective_parallelism,
            &targets,
        ))
        .map(|record| record.order.clone());
    let strategy = learning
        .strategy
        .unwrap_or_else(|| plan::default_strategy(!weights.is_empty(), stored.is_some()));
    plan::Options {
        targets,
        parallelism,
        strategy,
        exclude,
        history: weights,
        failures,
        flaky_threshold: learning.flaky_threshold,
        explored: if strategy == Strategy::Explore {
            stored
        } else {
            None
        },
        suggestions: Vec::new(),
    }
}

/// The record that stores `plan`'s order when the search found one that beats the
/// critical-path schedule (an order taken from the store, an order no better than the
/// critical path, or any other strategy gives `None`).
pub fn explored_record(plan: &plan::Plan) -> Option<ExploredOrder> {
    let explored = plan.explored.as_ref()?;
    let better = explored.makespan_ms < explored.critical_path_makespan_ms;
    (explored.source == plan::ExploreSource::Search && better).then(|| ExploredOrder {
        config_hash: plan.config_hash.clone(),
        parallelism: plan.parallelism,
        targets: plan.targets.clone(),
        order: plan.steps.iter().map(|s| s.name.clone()).collect(),
        makespan_ms: explored.makespan_ms,
        critical_path_makespan_ms: explored.critical_path_makespan_ms,
        found_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
    })
}
