//! Compiles a [`Config`] into a checked dependency DAG ([`Graph`]) and draws it.
//!
//! A `Graph` can only be built by [`compile`], which refuses unknown or self dependencies,
//! impossible conditions and cycles, reporting every problem at once; everything downstream
//! may therefore rely on the graph being acyclic. Ordering is the planner's job, not this one's.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::config::{self, Component, Condition, Config, Kind};
use crate::diag::{Diagnostics, Problem};

/// A configuration whose dependencies are known to form a DAG.
#[derive(Debug, Clone)]
pub struct Graph {
    config: Config,
    /// Node weight: index into `config.components`. Edge `a -> b`: b depends on a.
    dag: DiGraph<usize, Condition>,
    /// Component indices in a topological order (every dependency before its dependents).
    topo: Vec<usize>,
    /// Longest number of edges from a root to each node (its wave), by component index.
    waves: Vec<usize>,
}

impl Graph {
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn components(&self) -> &[Component] {
        &self.config.components
    }

    pub fn len(&self) -> usize {
        self.config.components.len()
    }

    pub fn is_empty(&self) -> bool {
        self.config.components.is_empty()
    }

    pub fn edge_count(&self) -> usize {
        self.dag.edge_count()
    }

    /// Every component index, each after all of its dependencies.
    pub fn topological(&self) -> &[usize] {
        &self.topo
    }

    /// The wave (depth) of component `i`: 0 for roots, else 1 + the deepest dependency.
    pub fn wave(&self, i: usize) -> usize {
        self.waves[i]
    }

    /// Component indices that `i` depends on, with the condition each must reach.
    pub fn dependencies(&self, i: usize) -> impl Iterator<Item = (usize, Condition)> + '_ {
        self.dag
            .edges_directed(NodeIndex::new(i), Direction::Incoming)
            .map(|e| (self.dag[petgraph::visit::EdgeRef::source(&e)], *e.weight()))
    }

    /// Component indices that depend on `i`.
    pub fn dependents(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.dag
            .neighbors_directed(NodeIndex::new(i), Direction::Outgoing)
            .map(|n| self.dag[n])
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.config.index_of(name)
    }

    /// The targets plus everything they transitively depend on, as a sorted index set.
    /// Unknown targets are reported with the nearest existing name.
    pub fn select(&self, targets: &[String]) -> Result<BTreeSet<usize>, Diagnostics> {
        if targets.is_empty() {
            return Ok((0..self.len()).collect());
        }
        let mut diags = Diagnostics::new();
        let mut selected = BTreeSet::new();
        let mut stack = Vec::new();
        for target in targets {
            match self.index_of(target) {
                Some(i) => stack.push(i),
                None => {
                    let mut problem = Problem::file(
                        std::path::Path::new("command line"),
                        format!("unknown target `{target}`"),
                    );
                    if let Some(near) = nearest(
                        target,
                        self.config.components.iter().map(|c| c.name.as_str()),
                    ) {
                        problem = problem.with_hint(format!("did you mean `{near}`?"));
                    }
                    diags.push(problem);
                }
            }
        }
        diags.into_result()?;
        while let Some(i) = stack.pop() {
            if selected.insert(i) {
                stack.extend(self.dependencies(i).map(|(d, _)| d));
            }
        }
        Ok(selected)
    }

    /// Graphviz dot of the selected components, edges labelled with non-default conditions.
    pub fn to_dot(&self, selected: &BTreeSet<usize>) -> String {
        let mut out = String::from(
            "digraph razar {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for &i in selected {
            let c = &self.config.components[i];
            let shape = match (c.kind, c.command.is_some()) {
                (_, false) => "plaintext",
                (Kind::Service, true) => "box",
                (Kind::Task, true) => "ellipse",
            };
            let style = if c.optional { ", style=dashed" } else { "" };
            let _ = writeln!(out, "  \"{}\" [shape={shape}{style}];", c.name);
        }
        for &i in selected {
            for (d, condition) in self.sorted_dependencies(i) {
                if !selected.contains(&d) {
                    continue;
                }
                let label = self.edge_label(d, condition);
                let attrs = label
                    .map(|l| format!(" [label=\"{l}\"]"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  \"{}\" -> \"{}\"{attrs};",
                    self.config.components[d].name, self.config.components[i].name
                );
            }
        }
        out.push_str("}\n");
        out
    }

    /// A mermaid flowchart in the style of ABZU's docs: `flowchart TD`, `A[name] --> B[name]`.
    pub fn to_mermaid(&self, selected: &BTreeSet<usize>) -> String {
        let mut out = String::from("flowchart TD\n");
        let id = |i: usize| format!("c{i}");
        for &i in selected {
            let c = &self.config.components[i];
            let label = c.name.replace('"', "'");
            let node = match (c.kind, c.command.is_some()) {
                (_, false) => format!("{}{{{{\"{label}\"}}}}", id(i)),
                (Kind::Service, true) => format!("{}[\"{label}\"]", id(i)),
                (Kind::Task, true) => format!("{}(\"{label}\")", id(i)),
            };
            let _ = writeln!(out, "    {node}");
        }
        for &i in selected {
            for (d, condition) in self.sorted_dependencies(i) {
                if !selected.contains(&d) {
                    continue;
                }
                match self.edge_label(d, condition) {
                    Some(label) => {
                        let _ = writeln!(out, "    {} -->|{label}| {}", id(d), id(i));
                    }
                    None => {
                        let _ = writeln!(out, "    {} --> {}", id(d), id(i));
                    }
                }
            }
        }
        out
    }

    /// Dependencies of `i` sorted by component index, for stable output.
    pub fn sorted_dependencies(&self, i: usize) -> Vec<(usize, Condition)> {
        let mut deps: Vec<(usize, Condition)> = self.dependencies(i).collect();
        deps.sort_unstable();
        deps
    }

    /// The label worth drawing on an edge: only conditions other than the natural one
    /// (ready for a service, completed for a task).
    fn edge_label(&self, dependency: usize, condition: Condition) -> Option<&'static str> {
        let natural = match self.config.components[dependency].kind {
            Kind::Service => Condition::Ready,
            Kind::Task => Condition::Completed,
        };
        let effective = if condition == Condition::Ready && natural == Condition::Completed {
            Condition::Completed
        } else {
            condition
        };
        (effective != natural).then_some(effective.as_str())
    }
}

/// The closest name by edit distance, if any is reasonably close.
pub fn nearest<'a>(wanted: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    names
        .map(|name| (strsim::normalized_damerau_levenshtein(wanted, name), name))
        .filter(|(score, _)| *score >= 0.5)
        .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, name)| name)
}

/// Loads the config files and compiles them, reporting the problems of both stages together.
pub fn load(paths: &[std::path::PathBuf]) -> Result<Graph, Diagnostics> {
    let (config, mut diags) = config::load_partial(paths);
    let Some(config) = config else {
        return Err(diags);
    };
    match compile(config) {
        Ok(graph) if diags.is_empty() => Ok(graph),
        Ok(_) => Err(diags),
        Err(more) => {
            diags.absorb(more);
            Err(diags)
        }
    }
}

/// Checks every dependency of `config` and builds the DAG. All problems are reported at once.
pub fn compile(config: Config) -> Result<Graph, Diagnostics> {
    let mut diags = Diagnostics::new();
    for source in &config.sources {
        diags.add_source(&source.path, source.text.clone());
    }
    let edges: usize = config.components.iter().map(|c| c.depends_on.len()).sum();
    let mut dag: DiGraph<usize, Condition> = DiGraph::with_capacity(config.components.len(), edges);
    for i in 0..config.components.len() {
        dag.add_node(i);
    }
    // Dependency indices already added for the current component (lists are short).
    let mut seen: Vec<usize> = Vec::new();
    for component in &config.components {
        diags.extend(check_kind(&config, component));
    }
    for (i, component) in config.components.iter().enumerate() {
        seen.clear();
        for (k, dep) in component.depends_on.iter().enumerate() {
            if let Some(problem) = check_dependency(&config, component, k, &seen) {
                diags.push(problem);
                continue;
            }
            let d = config
                .index_of(&dep.name)
                .expect("check_dependency refused unknown names");
            seen.push(d);
            dag.add_edge(NodeIndex::new(d), NodeIndex::new(i), dep.condition);
        }
    }
    // Sorting succeeds on every valid config; cycles are only searched for when it fails.
    let sorted = sort(&dag);
    let cycles = if sorted.is_none() {
        cycles(&dag)
    } else {
        Vec::new()
    };
    for cycle in cycles {
        let names: Vec<&str> = cycle
            .iter()
            .map(|&i| config.components[i].name.as_str())
            .collect();
        // The edge from the last member back to the first closes the cycle.
        let (from, to) = (cycle[cycle.len() - 1], cycle[0]);
        let component = &config.components[to];
        let k = component
            .depends_on
            .iter()
            .position(|d| d.name == config.components[from].name)
            .expect("every cycle edge comes from a depends_on entry");
        let mut path = names.join(" -> ");
        path.push_str(" -> ");
        path.push_str(names[0]);
        diags.push(
            config::problem_at(
                &config,
                &component.origin,
                &dependency_field(component, k),
                format!("dependency cycle: {path}"),
            )
            .with_hint(format!(
                "remove the dependency of `{}` on `{}` to break this cycle",
                config.components[to].name, config.components[from].name
            )),
        );
    }
    diags.into_result()?;
    let (topo, waves) = sorted.expect("a graph without problems has no cycle, so it sorts");
    Ok(Graph {
        config,
        dag,
        topo,
        waves,
    })
}

/// Fields a task with a command would never use: a readiness probe (a task is up once it
/// exits 0) and `restart: always` (it would never complete). A milestone runs nothing, so
/// neither applies to it either.
fn check_kind(config: &Config, component: &Component) -> Vec<Problem> {
    let mut problems = Vec::new();
    if component.kind != Kind::Task || component.command.is_none() {
        return problems;
    }
    let at = |field: &str, message: String| {
        config::problem_at(config, &component.origin, field, message)
    };
    if component.ready.is_some() {
        problems.push(
            at(
                "/ready",
                format!(
                    "task `{}` has a readiness probe, which a task never uses: it is up once it exits 0",
                    component.name
                ),
            )
            .with_hint("remove `ready`, or declare the component with `kind: service`"),
        );
    }
    if component.restart.policy == config::RestartMode::Always {
        problems.push(
            at(
                "/restart/policy",
                format!(
                    "task `{}` has `restart: always`, so it could never complete",
                    component.name
                ),
            )
            .with_hint(
                "use `on-failure` (or `never`), or declare the component with `kind: service`",
            ),
        );
    }
    problems
}

/// The problem with the k-th dependency of `component`, if any: a self-dependency, an
/// unknown name, a repeated entry, or a condition the dependency can never reach.
fn check_dependency(
    config: &Config,
    component: &Component,
    k: usize,
    seen: &[usize],
) -> Option<Problem> {
    let dep = &component.depends_on[k];
    let at = |message: String| {
        config::problem_at(
            config,
            &component.origin,
            &dependency_field(component, k),
            message,
        )
    };
    if dep.name == component.name {
        return Some(
            at(format!("`{}` depends on itself", component.name))
                .with_hint("remove it from its own depends_on"),
        );
    }
    let Some(d) = config.index_of(&dep.name) else {
        let problem = at(format!(
            "`{}` depends on unknown component `{}`",
            component.name, dep.name
        ));
        let names = config.components.iter().map(|c| c.name.as_str());
        return Some(match nearest(&dep.name, names) {
            Some(near) => problem.with_hint(format!("did you mean `{near}`?")),
            None => problem.with_hint("declare it, or remove the dependency"),
        });
    };
    if seen.contains(&d) {
        return Some(
            at(format!(
                "`{}` lists dependency `{}` twice",
                component.name, dep.name
            ))
            .with_hint("keep one entry"),
        );
    }
    let target = &config.components[d];
    if dep.condition == Condition::Completed && target.kind == Kind::Service {
        return Some(
            at(format!(
                "`{}` waits for service `{}` to be `completed`, which a service never is",
                component.name, dep.name
            ))
            .with_hint(format!(
                "use `ready` (or `started`), or declare `{}` with `kind: task`",
                dep.name
            )),
        );
    }
    None
}

/// Where the k-th dependency is written: `/depends_on/k` in a list, `/depends_on/name` in a
/// map (the locator takes the first that exists, else falls back to the component).
fn dependency_field(component: &Component, k: usize) -> String {
    let name = component
        .depends_on
        .get(k)
        .map_or(String::new(), |d| escape(&d.name));
    format!("/depends_on/{k}|/depends_on/{name}")
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// One representative cycle per strongly connected component, as node weights in edge order.
/// Kosaraju's search (petgraph's is iterative): Tarjan's recursed once per node of a path and
/// overflowed the stack on a 100,000-component chain that closed a cycle.
fn cycles(dag: &DiGraph<usize, Condition>) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for scc in petgraph::algo::kosaraju_scc(dag) {
        if scc.len() < 2 {
            continue;
        }
        let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
        let start = *members.iter().next().expect("scc has members");
        // Walk inside the SCC until a node repeats; the repeated stretch is a cycle.
        let mut path = vec![start];
        let mut position: HashMap<NodeIndex, usize> = HashMap::from([(start, 0)]);
        let mut current = start;
        loop {
            let next = dag
                .neighbors_directed(current, Direction::Outgoing)
                .filter(|n| members.contains(n))
                .min()
                .expect("every member of a cyclic SCC has a successor inside it");
            if let Some(&at) = position.get(&next) {
                let mut cycle: Vec<usize> = path[at..].iter().map(|&n| dag[n]).collect();
                // Start the printed cycle at its smallest member for stable output.
                let min_at = cycle
                    .iter()
                    .enumerate()
                    .min_by_key(|&(_, v)| *v)
                    .map_or(0, |(i, _)| i);
                cycle.rotate_left(min_at);
                out.push(cycle);
                break;
            }
            position.insert(next, path.len());
            path.push(next);
            current = next;
        }
    }
    out.sort();
    out
}

/// Kahn's algorithm: a topological order of the component indices and each component's
/// wave (longest path from a root, in edges), in one pass. `None` when there is a cycle.
fn sort(dag: &DiGraph<usize, Condition>) -> Option<(Vec<usize>, Vec<usize>)> {
    let n = dag.node_count();
    let mut waiting: Vec<usize> = (0..n)
        .map(|i| {
            dag.neighbors_directed(NodeIndex::new(i), Direction::Incoming)
                .count()
        })
        .collect();
    let mut waves = vec![0usize; n];
    let mut order: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut next = 0;
    while next < order.len() {
        let i = order[next];
        next += 1;
        for dependent in dag.neighbors_directed(NodeIndex::new(i), Direction::Outgoing) {
            let d = dependent.index();
            waves[d] = waves[d].max(waves[i] + 1);
            waiting[d] -= 1;
            if waiting[d] == 0 {
                order.push(d);
            }
        }
    }
    (order.len() == n).then_some((order, waves))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_at_the_end_of_a_long_chain_is_found_without_deep_recursion() {
        // A recursive search would need a stack frame per node of the chain: on a 256 KiB
        // stack, 20,000 of them overflow (as 100,000 did on the main thread's 8 MiB).
        let found = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let mut dag: DiGraph<usize, Condition> = DiGraph::new();
                let nodes: Vec<NodeIndex> = (0..20_000).map(|i| dag.add_node(i)).collect();
                for pair in nodes.windows(2) {
                    dag.add_edge(pair[0], pair[1], Condition::Completed);
                }
                dag.add_edge(nodes[1], nodes[0], Condition::Completed);
                cycles(&dag)
            })
            .expect("thread")
            .join()
            .expect("no stack overflow");
        assert_eq!(found, vec![vec![0, 1]]);
    }

    fn dag(n: usize, edges: &[(usize, usize)]) -> DiGraph<usize, Condition> {
        let mut dag = DiGraph::new();
        for i in 0..n {
            dag.add_node(i);
        }
        for &(a, b) in edges {
            dag.add_edge(NodeIndex::new(a), NodeIndex::new(b), Condition::Ready);
        }
        dag
    }

    #[test]
    fn sort_orders_dependencies_first_and_counts_waves() {
        // 3 -> 1 -> 0, 3 -> 2, 2 -> 0: 0 is two edges deep on its longest path.
        let (order, waves) = sort(&dag(4, &[(3, 1), (1, 0), (3, 2), (2, 0)])).expect("a DAG");
        let at = |i: usize| {
            order
                .iter()
                .position(|&x| x == i)
                .expect("every node sorted")
        };
        assert!(at(3) < at(1) && at(1) < at(0) && at(2) < at(0));
        assert_eq!(waves, vec![2, 1, 1, 0]);
        assert_eq!(sort(&dag(3, &[(0, 1), (1, 2), (2, 1)])), None);
    }

    #[test]
    fn nearest_suggests_close_names_only() {
        let names = ["redis", "postgres", "api"];
        assert_eq!(nearest("rediss", names.iter().copied()), Some("redis"));
        assert_eq!(nearest("zzzzzzzz", names.iter().copied()), None);
    }
}
