//! Ordering strategies: which ready component starts first.
//!
//! - `priority`: Kahn's algorithm; among components ready together, lower priority first,
//!   then name.
//! - `critical-path`: each component's rank is the longest weighted path from it to any sink;
//!   list scheduling under the parallelism limit starts the highest-ranked ready component
//!   first (ties by priority, then name). The plan order is the simulated start order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rayon::prelude::*;

use serde::{Deserialize, Serialize};

use super::simulate::{self, SimNode};
use super::{Reason, ReasonKind, WeightSource};
use crate::config::Condition;
use crate::graph::Graph;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Lower priority first among ready components, then name.
    #[default]
    Priority,
    /// Longest remaining weighted path first (uses history or estimates).
    CriticalPath,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Priority => "priority",
            Strategy::CriticalPath => "critical-path",
        }
    }
}

/// An order over component indices with the reasons behind each position.
pub(crate) struct Ordered {
    pub order: Vec<usize>,
    pub reasons: Vec<Vec<Reason>>,
}

pub(crate) fn order(
    graph: &Graph,
    included: &[usize],
    weights: &[(u64, WeightSource)],
    parallelism: usize,
    strategy: Strategy,
) -> Ordered {
    let by_priority = priority_order(graph, included);
    match strategy {
        Strategy::Priority => by_priority,
        Strategy::CriticalPath => critical_path_order(graph, by_priority, weights, parallelism),
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
    Ordered { order, reasons }
}

/// List scheduling by rank (longest weighted path to a sink), ties by priority order.
fn critical_path_order(
    graph: &Graph,
    topo: Ordered,
    weights: &[(u64, WeightSource)],
    parallelism: usize,
) -> Ordered {
    let mut position = vec![usize::MAX; graph.len()];
    for (p, &i) in topo.order.iter().enumerate() {
        position[i] = p;
    }
    let nodes: Vec<SimNode> = topo
        .order
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
        .collect();
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
    Ordered { order, reasons }
}
