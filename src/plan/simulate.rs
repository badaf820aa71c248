//! The predicted timeline: a discrete-event simulation of the executor's schedule (ready
//! steps start in plan order while a slot is free; a slot is held from spawn to ready), the
//! critical path and the lower bound. Pure functions over plan positions: no clocks.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::config::Condition;

/// One step as the simulation sees it; `deps` are plan positions of earlier steps.
#[derive(Debug, Clone)]
pub struct SimNode {
    pub deps: Vec<(usize, Condition)>,
    pub weight_ms: u64,
    /// Milestones and blocked steps take no slot and no time.
    pub holds_slot: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Simulation {
    pub start_ms: Vec<u64>,
    pub ready_ms: Vec<u64>,
    pub makespan_ms: u64,
    /// Positions in the order they started.
    pub sequence: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    // Ready sorts before Started at equal times so released slots are reused at once.
    Ready(usize),
}

/// Simulates the list schedule: at every moment, eligible steps start in plan-position order
/// while fewer than `parallelism` steps are starting.
pub fn simulate(nodes: &[SimNode], parallelism: usize) -> Simulation {
    let identity: Vec<usize> = (0..nodes.len()).collect();
    simulate_keyed(nodes, parallelism, &identity)
}

/// Like [`simulate`], but eligible steps start in ascending `key` order (ties by position).
pub fn simulate_keyed(nodes: &[SimNode], parallelism: usize, key: &[usize]) -> Simulation {
    let n = nodes.len();
    let mut dependents: Vec<Vec<(usize, Condition)>> = vec![Vec::new(); n];
    let mut remaining = vec![0usize; n];
    for (p, node) in nodes.iter().enumerate() {
        remaining[p] = node.deps.len();
        for &(d, condition) in &node.deps {
            dependents[d].push((p, condition));
        }
    }
    let mut start_ms = vec![0u64; n];
    let mut ready_ms = vec![0u64; n];
    // Eligible steps waiting for a slot, and eligible slot-free steps.
    let mut eligible: BinaryHeap<Reverse<(usize, usize)>> = BinaryHeap::new();
    let mut free_heap: BinaryHeap<Reverse<(usize, usize)>> = BinaryHeap::new();
    let push = |slot: &mut BinaryHeap<Reverse<(usize, usize)>>,
                slot_free: &mut BinaryHeap<Reverse<(usize, usize)>>,
                p: usize| {
        if nodes[p].holds_slot {
            slot.push(Reverse((key[p], p)));
        } else {
            slot_free.push(Reverse((key[p], p)));
        }
    };
    let mut sequence = Vec::with_capacity(n);
    let mut events: BinaryHeap<Reverse<(u64, Ev)>> = BinaryHeap::new();
    let mut free = parallelism.max(1);
    let mut now = 0u64;
    let mut started = 0usize;
    for (p, &left) in remaining.iter().enumerate() {
        if left == 0 {
            push(&mut eligible, &mut free_heap, p);
        }
    }
    // Steps whose `started` dependents became eligible while starting others.
    let mut newly: Vec<usize> = Vec::new();
    loop {
        // Start everything that can start now: slot-free steps (milestones) at once, the
        // others in key order while a slot is free. Starting a step may make `started`
        // dependents eligible at this same moment, hence the loop.
        loop {
            let pick = match (free_heap.peek(), eligible.peek()) {
                (Some(_), _) => free_heap.pop(),
                (None, Some(_)) if free > 0 => eligible.pop(),
                _ => None,
            };
            let Some(Reverse((_, p))) = pick else { break };
            if nodes[p].holds_slot {
                free -= 1;
            }
            sequence.push(p);
            start_ms[p] = now;
            started += 1;
            // A step taking no time (a milestone) is reached the moment it starts, as the
            // executor reaches it: its dependents compete for the slots at this same moment,
            // not after the steps already eligible took them.
            let instant = nodes[p].weight_ms == 0;
            if instant {
                ready_ms[p] = now;
                if nodes[p].holds_slot {
                    free += 1;
                }
            } else {
                events.push(Reverse((now + nodes[p].weight_ms, Ev::Ready(p))));
            }
            for &(dep, condition) in &dependents[p] {
                if condition == Condition::Started || instant {
                    remaining[dep] -= 1;
                    if remaining[dep] == 0 {
                        newly.push(dep);
                    }
                }
            }
            for dep in newly.drain(..) {
                push(&mut eligible, &mut free_heap, dep);
            }
        }
        let Some(Reverse((at, _))) = events.peek().copied() else {
            break;
        };
        now = at;
        while let Some(Reverse((at, Ev::Ready(p)))) = events.peek().copied() {
            if at != now {
                break;
            }
            events.pop();
            ready_ms[p] = now;
            if nodes[p].holds_slot {
                free += 1;
            }
            for &(dep, condition) in &dependents[p] {
                if condition != Condition::Started {
                    remaining[dep] -= 1;
                    if remaining[dep] == 0 {
                        push(&mut eligible, &mut free_heap, dep);
                    }
                }
            }
        }
    }
    debug_assert_eq!(
        started, n,
        "plan order is topological, so every step starts"
    );
    let makespan_ms = ready_ms.iter().copied().max().unwrap_or(0);
    Simulation {
        start_ms,
        ready_ms,
        makespan_ms,
        sequence,
    }
}

/// Length of the longest weighted dependency chain and its positions, first to last.
/// A `started` edge lets the dependent begin when its dependency begins.
pub fn critical_path(nodes: &[SimNode]) -> (u64, Vec<usize>) {
    let n = nodes.len();
    let mut earliest = vec![0u64; n];
    let mut via: Vec<Option<usize>> = vec![None; n];
    for (p, node) in nodes.iter().enumerate() {
        for &(d, condition) in &node.deps {
            let at = match condition {
                Condition::Started => earliest[d],
                _ => earliest[d] + nodes[d].weight_ms,
            };
            if at > earliest[p] || (at == earliest[p] && via[p].is_none() && at > 0) {
                earliest[p] = at;
                via[p] = Some(d);
            }
        }
    }
    let Some(end) = (0..n).max_by_key(|&p| (earliest[p] + nodes[p].weight_ms, Reverse(p))) else {
        return (0, Vec::new());
    };
    let length = earliest[end] + nodes[end].weight_ms;
    let mut path = vec![end];
    let mut current = end;
    while let Some(prev) = via[current] {
        path.push(prev);
        current = prev;
    }
    path.reverse();
    (length, path)
}

/// For each position, the longest weighted path from its start to the end of any sink
/// (its own weight included): the rank used by critical-path list scheduling.
/// `nodes` must be in a topological order.
pub fn ranks(nodes: &[SimNode]) -> Vec<u64> {
    let mut rank: Vec<u64> = nodes.iter().map(|n| n.weight_ms).collect();
    for p in (0..nodes.len()).rev() {
        let own = rank[p];
        for &(d, condition) in &nodes[p].deps {
            let through = match condition {
                Condition::Started => own,
                _ => nodes[d].weight_ms + own,
            };
            if through > rank[d] {
                rank[d] = through;
            }
        }
    }
    rank
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(deps: &[usize], weight_ms: u64) -> SimNode {
        SimNode {
            deps: deps.iter().map(|&d| (d, Condition::Ready)).collect(),
            weight_ms,
            holds_slot: true,
        }
    }

    #[test]
    fn chain_adds_up_and_diamond_overlaps() {
        let chain = [node(&[], 100), node(&[0], 200), node(&[1], 300)];
        let sim = simulate(&chain, 4);
        assert_eq!(sim.start_ms, vec![0, 100, 300]);
        assert_eq!(sim.makespan_ms, 600);
        let diamond = [
            node(&[], 100),
            node(&[0], 200),
            node(&[0], 300),
            node(&[1, 2], 50),
        ];
        let sim = simulate(&diamond, 4);
        assert_eq!(sim.start_ms, vec![0, 100, 100, 400]);
        assert_eq!(critical_path(&diamond), (450, vec![0, 2, 3]));
    }

    #[test]
    fn parallelism_limits_overlap() {
        let wide = [node(&[], 100), node(&[], 100), node(&[], 100)];
        let sim = simulate(&wide, 2);
        assert_eq!(sim.start_ms, vec![0, 0, 100]);
        assert_eq!(sim.makespan_ms, 200);
    }

    #[test]
    fn started_edges_do_not_wait_for_ready() {
        let nodes = [
            node(&[], 500),
            SimNode {
                deps: vec![(0, Condition::Started)],
                weight_ms: 100,
                holds_slot: true,
            },
        ];
        let sim = simulate(&nodes, 2);
        assert_eq!(sim.start_ms, vec![0, 0]);
        assert_eq!(ranks(&nodes), vec![500, 100]);
    }

    #[test]
    fn milestones_take_no_slot() {
        let nodes = [
            node(&[], 100),
            SimNode {
                deps: vec![],
                weight_ms: 0,
                holds_slot: false,
            },
            node(&[1], 100),
        ];
        let sim = simulate(&nodes, 1);
        assert_eq!(sim.start_ms, vec![0, 0, 100]);
    }

    #[test]
    fn a_milestones_dependent_competes_for_slots_the_moment_it_is_reached() {
        // Key order: the milestone, then `b` behind it, before `z` and `a`, which are
        // eligible at 0 too. Reached at 0, the milestone frees `b` to take a slot at 0.
        let milestone = SimNode {
            deps: vec![],
            weight_ms: 0,
            holds_slot: false,
        };
        let nodes = [node(&[], 100), milestone, node(&[1], 500), node(&[], 200)];
        let sim = simulate_keyed(&nodes, 2, &[3, 0, 1, 2]);
        assert_eq!(sim.start_ms, vec![200, 0, 0, 0]);
        assert_eq!(sim.makespan_ms, 500);
    }

    #[test]
    fn ranks_are_longest_paths_to_a_sink() {
        let diamond = [
            node(&[], 100),
            node(&[0], 200),
            node(&[0], 300),
            node(&[1, 2], 50),
        ];
        assert_eq!(ranks(&diamond), vec![450, 250, 350, 50]);
    }
}
