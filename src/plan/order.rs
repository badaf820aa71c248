//! Ordering strategies: which ready component starts first.
//!
//! - `priority`: Kahn's algorithm; among components ready together, lower priority first,
//!   then name.
//! - `critical-path`: each component's rank is the longest weighted path from it to any sink;
//!   list scheduling under the parallelism limit starts the highest-ranked ready component
//!   first (ties by priority, then name). The plan order is the simulated start order.
//! - `explore`: the critical-path schedule improved by a local search in simulation
//!   ([`super::explore`]), or an order a previous search stored for this configuration when it
//!   still predicts no worse than the critical-path schedule under the current weights.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use rayon::prelude::*;

use serde::{Deserialize, Serialize};

use super::simulate::{self, SimNode};
use super::{ExploreSource, Explored, Reason, ReasonKind, WeightSource};
use crate::config::Condition;
use crate::graph::Graph;

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Lower priority first among ready components, then name.
    #[default]
    Priority,
    /// Longest remaining weighted path first (uses history or estimates).
    CriticalPath,
    /// The critical-path order improved by a search in simulation (or the stored best order).
    Explore,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Priority => "priority",
            Strategy::CriticalPath => "critical-path",
            Strategy::Explore => "explore",
        }
    }
}

/// An order over component indices with the reasons behind each position.
pub(crate) struct Ordered {
    pub order: Vec<usize>,
    pub reasons: Vec<Vec<Reason>>,
    /// With `explore`: what the search (or the stored order) achieved.
    pub explored: Option<Explored>,
}

pub(crate) fn order(
    graph: &Graph,
    included: &[usize],
    weights: &[(u64, WeightSource)],
    parallelism: usize,
    strategy: Strategy,
    stored: Option<&[String]>,
) -> Ordered {
    let by_priority = priority_order(graph, included);
    match strategy {
        Strategy::Priority => by_priority,
        Strategy::CriticalPath => critical_path_order(graph, by_priority, weights, parallelism),
        Strategy::Explore => {
            let ranked = critical_path_order(graph, by_priority, weights, parallelism);
            explore_order(graph, ranked, weights, parallelism, stored)
        }
    }
}

/// The simulation's view of components in `order` (positions index `order`).
fn sim_nodes(graph: &Graph, order: &[usize], weights: &[(u64, WeightSource)]) -> Vec<SimNode> {
    let mut position = vec![usize::MAX; graph.len()];
    for (p, &i) in order.iter().enumerate() {
        position[i] = p;
    }
    order
        .iter()
        .map(|&i| SimNode {
            deps: {
                let mut deps: Vec<(usize, Condition)> = graph
                    .dependencies(i)
                    .filter(|(d, _)| position[*d] != usize::MAX)
                    .map(|(d, condition)| (position[d], condition))
                    .collect();
                deps.sort_unstable();
                deps
            },
            weight_ms: weights[i].0,
            holds_slot: graph.components()[i].command.is_some(),
        })
        .collect()
}

/// Starts from the critical-path order (whose plain simulation is the rank schedule) and
/// takes the stored order when it still predicts no worse, else searches.
fn explore_order(
    graph: &Graph,
    ranked: Ordered,
    weights: &[(u64, WeightSource)],
    parallelism: usize,
    stored: Option<&[String]>,
) -> Ordered {
    let nodes = sim_nodes(graph, &ranked.order, weights);
    let n = nodes.len();
    let identity: Vec<usize> = (0..n).collect();
    let baseline = simulate::simulate_keyed(&nodes, parallelism, &identity);
    let stored_key = stored.map(|names| {
        let at: BTreeMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(k, name)| (name.as_str(), k))
            .collect();
        // Steps the stored order does not know keep their rank order, after the known ones.
        ranked
            .order
            .iter()
            .enumerate()
            .map(|(p, &i)| {
                at.get(graph.components()[i].name.as_str())
                    .copied()
                    .unwrap_or(names.len() + p)
            })
            .collect::<Vec<usize>>()
    });
    let reuse = stored_key.and_then(|key| {
        let sim = simulate::simulate_keyed(&nodes, parallelism, &key);
        (sim.makespan_ms <= baseline.makespan_ms).then_some((key, sim))
    });
    let (key, sim, source, evaluations) = match reuse {
        Some((key, sim)) => (key, sim, ExploreSource::Stored, 1),
        None => {
            let found = super::explore::explore(&nodes, parallelism, &identity);
            let sim = simulate::simulate_keyed(&nodes, parallelism, &found.key);
            (found.key, sim, ExploreSource::Search, found.evaluations)
        }
    };
    debug_assert!(key.len() == n);
    let mut reasons_by_pos: Vec<Option<Vec<Reason>>> =
        ranked.reasons.into_iter().map(Some).collect();
    let mut order = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut moved = 0usize;
    for (new, &p) in sim.sequence.iter().enumerate() {
        let mut why = reasons_by_pos[p].take().unwrap_or_default();
        if new < p {
            moved += 1;
            why.insert(
                0,
                Reason {
                    kind: ReasonKind::CriticalPath,
                    text: format!(
                        "explored: starts {} place(s) earlier than rank order (#{} there)",
                        p - new,
                        p + 1
                    ),
                },
            );
        }
        order.push(ranked.order[p]);
        reasons.push(why);
    }
    Ordered {
        order,
        reasons,
        explored: Some(Explored {
            source,
            makespan_ms: sim.makespan_ms,
            critical_path_makespan_ms: baseline.makespan_ms,
            evaluations,
            moved,
        }),
    }
}

/// "after a (ready), b (completed)": the dependencies in the plan and what each must reach.
fn dependency_reason(graph: &Graph, i: usize, members: &[bool]) -> Reason {
    let mut text = String::new();
    for (d, condition) in graph.sorted_dependencies(i) {
        if !members[d] {
            continue;
        }
        let dep = &graph.components()[d];
        let effective = match (dep.kind, condition) {
            (crate::config::Kind::Task, Condition::Ready) => Condition::Completed,
            (_, c) => c,
        };
        text.push_str(if text.is_empty() { "after " } else { ", " });
        text.push_str(&dep.name);
        text.push_str(" (");
        text.push_str(effective.as_str());
        text.push(')');
    }
    if text.is_empty() {
        text.push_str("no dependencies");
    }
    Reason {
        kind: ReasonKind::Dependency,
        text,
    }
}

/// Kahn's algorithm with a ready set ordered by (priority, name).
fn priority_order(graph: &Graph, included: &[usize]) -> Ordered {
    let components = graph.components();
    let n = components.len();
    let mut members = vec![false; n];
    for &i in included {
        members[i] = true;
    }
    // Dependencies in the plan not yet ordered, by component index.
    let mut remaining = vec![0usize; n];
    for &i in included {
        remaining[i] = graph.dependencies(i).filter(|(d, _)| members[*d]).count();
    }
    let key = |i: usize| Reverse((components[i].priority, components[i].name.as_str(), i));
    let mut ready: BinaryHeap<Reverse<(i64, &str, usize)>> = BinaryHeap::new();
    // For each component that entered the ready set: how many had left it by then, and
    // how many others were waiting with it.
    let mut waited = vec![(0usize, 0usize); n];
    let mut pops = 0usize;
    for &i in included {
        if remaining[i] == 0 {
            ready.push(key(i));
        }
    }
    let mut order = Vec::with_capacity(included.len());
    // Per position: how many ready components were ordered before it while it waited, and
    // how many waited with it. The reasons are worded afterwards, in parallel.
    let mut contest = Vec::with_capacity(included.len());
    while let Some(Reverse((_, _, i))) = ready.pop() {
        let (pushed_at, peers) = waited[i];
        contest.push((pops - pushed_at, ready.len() + peers));
        pops += 1;
        order.push(i);
        for dependent in graph.dependents(i) {
            if !members[dependent] {
                continue;
            }
            remaining[dependent] -= 1;
            if remaining[dependent] == 0 {
                ready.push(key(dependent));
                waited[dependent] = (pops, ready.len() - 1);
            }
        }
    }
    let reasons = order
        .par_iter()
        .zip(contest.par_iter())
        .map(|(&i, &(ahead, others))| {
            let priority = components[i].priority;
            let text = if ahead == 1 {
                format!("priority {priority}: 1 ready component ranked before it")
            } else if ahead > 1 {
                format!("priority {priority}: {ahead} ready components ranked before it")
            } else if others > 0 {
                format!("priority {priority}: first among the ready components")
            } else {
                format!("priority {priority}")
            };
            vec![
                dependency_reason(graph, i, &members),
                Reason {
                    kind: ReasonKind::Priority,
                    text,
                },
            ]
        })
        .collect();
    debug_assert_eq!(order.len(), included.len(), "graph is acyclic");
    Ordered {
        order,
        reasons,
        explored: None,
    }
}

/// List scheduling by rank (longest weighted path to a sink), ties by priority order.
fn critical_path_order(
    graph: &Graph,
    topo: Ordered,
    weights: &[(u64, WeightSource)],
    parallelism: usize,
) -> Ordered {
    let nodes = sim_nodes(graph, &topo.order, weights);
    let ranks = simulate::ranks(&nodes);
    let (_, critical) = simulate::critical_path(&nodes);
    let on_path: std::collections::BTreeSet<usize> = critical.into_iter().collect();
    // Key: highest rank first, then the priority order's position.
    let mut by_rank: Vec<usize> = (0..nodes.len()).collect();
    by_rank.sort_by_key(|&p| (Reverse(ranks[p]), p));
    let mut key = vec![0usize; nodes.len()];
    for (k, &p) in by_rank.iter().enumerate() {
        key[p] = k;
    }
    let sim = simulate::simulate_keyed(&nodes, parallelism, &key);
    let mut reasons_by_pos: Vec<Option<Vec<Reason>>> = topo.reasons.into_iter().map(Some).collect();
    let mut order = Vec::with_capacity(nodes.len());
    let mut reasons = Vec::with_capacity(nodes.len());
    for p in sim.sequence {
        let i = topo.order[p];
        let mut why = reasons_by_pos[p].take().unwrap_or_default();
        // Keep the dependency reason; replace the priority one by the rank.
        why.retain(|r| r.kind == ReasonKind::Dependency);
        let to_go = crate::duration::display(std::time::Duration::from_millis(ranks[p]));
        let text = if on_path.contains(&p) {
            format!("on critical path, {to_go} to go")
        } else {
            format!("rank {to_go}: longest chain from here to the end")
        };
        why.insert(
            0,
            Reason {
                kind: ReasonKind::CriticalPath,
                text,
            },
        );
        why.push(Reason {
            kind: ReasonKind::Priority,
            text: format!("priority {} breaks ties", graph.components()[i].priority),
        });
        order.push(i);
        reasons.push(why);
    }
    Ordered {
        order,
        reasons,
        explored: None,
    }
}
