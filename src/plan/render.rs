//! Human renderings of a plan: the text table (with a Gantt bar per step) and a mermaid gantt.

use std::fmt::Write as _;
use std::time::Duration;

use super::{Plan, ReasonKind, WeightSource};
use crate::duration::display;

fn ms(value: u64) -> String {
    display(Duration::from_millis(value))
}

/// One row per step in boot order: position, wave, priority, dependencies, predicted window,
/// and the reasons; then excluded components and a summary line. `gantt` adds a bar chart
/// column scaled to `width` characters.
pub fn render_text(plan: &Plan, gantt: bool) -> String {
    let mut out = String::new();
    let name_w = plan
        .steps
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:>3}  {:<name_w$}  {:>4}  {:>4}  {:<9}  {:>15}  reason",
        "#", "step", "wave", "prio", "kind", "start → ready"
    );
    let width = 30u64;
    let scale = plan.timeline.makespan_ms.max(1);
    for (n, step) in plan.steps.iter().enumerate() {
        let kind = match (&step.command, step.kind) {
            (None, _) => "milestone",
            (Some(_), crate::config::Kind::Service) => "service",
            (Some(_), crate::config::Kind::Task) => "task",
        };
        let window = format!(
            "{} → {}",
            ms(step.predicted_start_ms),
            ms(step.predicted_ready_ms)
        );
        let reasons: Vec<String> = step
            .reasons
            .iter()
            .map(|r| match r.kind {
                ReasonKind::Dependency if step.depends_on.len() > MAX_LISTED => {
                    abbreviated_dependencies(step)
                }
                _ => r.text.clone(),
            })
            .collect();
        let _ = write!(
            out,
            "{:>3}  {:<name_w$}  {:>4}  {:>4}  {:<9}  {:>15}  {}",
            n + 1,
            step.name,
            step.wave,
            step.priority,
            kind,
            window,
            reasons.join("; ")
        );
        if step.optional {
            out.push_str(" (optional)");
        }
        if let Some(f) = step.failures.filter(|f| f.failed > 0 && !f.flaky) {
            let _ = write!(out, "; failed {} of last {} attempts", f.failed, f.attempts);
        }
        if gantt {
            let from = step.predicted_start_ms * width / scale;
            let to = (step.predicted_ready_ms * width)
                .div_ceil(scale)
                .max(from + 1);
            let bar: String = (0..width)
                .map(|x| if x >= from && x < to { '█' } else { '·' })
                .collect();
            let _ = write!(out, "\n     {bar}");
        }
        out.push('\n');
    }
    for excluded in &plan.excluded {
        let _ = writeln!(
            out,
            "  -  {:<name_w$}  excluded: {}",
            excluded.name, excluded.reason
        );
    }
    out.push_str(&super::suggest::render(plan));
    let t = &plan.timeline;
    let blocked = plan.steps.iter().filter(|s| s.blocked.is_some()).count();
    let _ = writeln!(
        out,
        "{} step{} ({} blocked, {} excluded), {} dependenc{}; strategy {}, parallelism {}; predicted {} (lower bound {}, critical path {}: {})",
        plan.steps.len(),
        if plan.steps.len() == 1 { "" } else { "s" },
        blocked,
        plan.excluded.len(),
        plan.dependency_count(),
        if plan.dependency_count() == 1 {
            "y"
        } else {
            "ies"
        },
        plan.strategy.as_str(),
        plan.parallelism,
        ms(t.makespan_ms),
        ms(t.lower_bound_ms),
        ms(t.critical_path_ms),
        if t.critical_path.is_empty() {
            "-".to_owned()
        } else {
            t.critical_path.join(" → ")
        },
    );
    if let Some(explored) = &plan.explored {
        let from = match explored.source {
            super::ExploreSource::Search => {
                format!("found by search ({} simulations)", explored.evaluations)
            }
            super::ExploreSource::Stored => {
                "stored for this configuration by an earlier search".to_owned()
            }
        };
        let _ = writeln!(
            out,
            "explored order: {from}; predicted {} vs {} for the critical-path schedule ({} step(s) moved earlier)",
            ms(explored.makespan_ms),
            ms(explored.critical_path_makespan_ms),
            explored.moved
        );
    }
    let learned = plan
        .steps
        .iter()
        .filter(|s| {
            matches!(
                s.weight_source,
                WeightSource::HistoryP50 | WeightSource::HistoryP90
            )
        })
        .count();
    if learned > 0 {
        // Milestones run nothing and blocked steps do not run: neither has a time to learn.
        let timed = plan
            .steps
            .iter()
            .filter(|s| s.command.is_some() && s.blocked.is_none())
            .count();
        let _ = writeln!(
            out,
            "weights: {learned} of {timed} step(s) from history ({})",
            if plan
                .steps
                .iter()
                .any(|s| s.weight_source == WeightSource::HistoryP90)
            {
                "p90, --pessimistic"
            } else {
                "p50"
            }
        );
    }
    let guessed = plan
        .steps
        .iter()
        .filter(|s| s.weight_source == WeightSource::Default && s.blocked.is_none())
        .count();
    if guessed > 0 {
        let _ = writeln!(
            out,
            "note: {guessed} {} no history or `estimate:`; predicted times assume {} for {}",
            if guessed == 1 {
                "step has"
            } else {
                "steps have"
            },
            ms(crate::duration::millis(super::DEFAULT_ESTIMATE)),
            if guessed == 1 { "it" } else { "each" },
        );
    }
    out
}

/// Dependencies named in full in a table row; longer lists are shortened (the plan file
/// keeps them whole).
const MAX_LISTED: usize = 4;

/// "after 10 components: a, b, c, …" for a step with many dependencies.
fn abbreviated_dependencies(step: &super::Step) -> String {
    let names: Vec<&str> = step
        .depends_on
        .iter()
        .take(MAX_LISTED - 1)
        .map(|d| d.name.as_str())
        .collect();
    format!(
        "after {} components: {}, …",
        step.depends_on.len(),
        names.join(", ")
    )
}

/// A mermaid `gantt` chart of the predicted timeline.
pub fn render_gantt_mermaid(plan: &Plan) -> String {
    let mut out = String::from(
        "gantt\n    title razar boot plan (predicted)\n    dateFormat x\n    axisFormat %S.%Ls\n",
    );
    // One section per wave (steps in plan order within it: the plan's order interleaves
    // waves), and each task's id its position in the plan: names differing only in `.`,
    // `-` and `_` would make the same id.
    let mut by_wave: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    // Blocked steps never run: no bar.
    for (i, step) in plan.steps.iter().enumerate() {
        if step.blocked.is_none() {
            by_wave.entry(step.wave).or_default().push(i);
        }
    }
    for (wave, steps) in by_wave {
        let _ = writeln!(out, "    section wave {wave}");
        for i in steps {
            let step = &plan.steps[i];
            let critical = if plan.timeline.critical_path.contains(&step.name) {
                "crit, "
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "    {} :{critical}s{i}, {}, {}",
                step.name.replace(':', "_"),
                step.predicted_start_ms,
                step.predicted_ready_ms.max(step.predicted_start_ms + 1)
            );
        }
    }
    out
}
