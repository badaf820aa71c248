//! `razar plan`: the order ABZU intended for its own files, TARGET selection, every output
//! format, plan files with their content hash, and byte-identical output across runs.

use std::path::Path;

use razar::plan::Plan;

use crate::support::{Sandbox, repo, stderr, stdout};

fn plan_ok(sandbox: &Sandbox, args: &[&str]) -> String {
    let mut full = vec!["plan"];
    full.extend_from_slice(args);
    let output = sandbox.run(&full);
    assert!(
        output.status.success(),
        "razar {full:?} failed:\n{}",
        stderr(&output)
    );
    stdout(&output)
}

fn plan_json(sandbox: &Sandbox, args: &[&str]) -> Plan {
    let mut full = args.to_vec();
    full.extend_from_slice(&["--format", "json"]);
    let text = plan_ok(sandbox, &full);
    Plan::from_json(&text, sandbox.path()).expect("razar writes plans it can read")
}

fn names(plan: &Plan) -> Vec<&str> {
    plan.steps.iter().map(|s| s.name.as_str()).collect()
}

/// Step names grouped by wave, in plan order.
fn waves(plan: &Plan) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = Vec::new();
    for step in &plan.steps {
        if out.len() <= step.wave {
            out.resize(step.wave + 1, Vec::new());
        }
        out[step.wave].push(&step.name);
    }
    out
}

#[test]
fn the_blueprint_boots_in_its_staged_startup_order() {
    let sandbox = Sandbox::with(&["abzu/system_blueprint.md"]);
    let plan = plan_json(&sandbox, &["-c", "system_blueprint.md"]);
    assert_eq!(
        names(&plan),
        [
            "razar_startup_orchestrator",
            "memory_store",
            "chat_gateway",
            "operator_console_service",
            "crown_llm",
            "vision_adapter",
            "audio_device",
            "avatar",
            "video",
        ]
    );
    // Avatar and Video share stage 7: both wait for stage 6 only.
    let video = plan.step("video").expect("video is planned");
    assert_eq!(video.depends_on.len(), 1);
    assert_eq!(video.depends_on[0].name, "audio_device");
    // "optional" entries are kept, and marked.
    assert!(
        plan.step("operator_console_service")
            .expect("kept")
            .optional
    );
    // Health check prose from the `### Title` sections travels with the step.
    let chat = plan.step("chat_gateway").expect("planned");
    assert!(
        chat.notes
            .contains(&"health check: Probe `/chat/health` and watch latency.".to_owned()),
        "{:?}",
        chat.notes
    );
}

#[test]
fn razar_config_priorities_are_stages() {
    let sandbox = Sandbox::with(&["abzu/razar_config.yaml"]);
    let plan = plan_json(&sandbox, &["-c", "razar_config.yaml"]);
    assert_eq!(
        waves(&plan),
        [
            vec!["memory_store"],
            vec!["chat_gateway", "crown_llm", "vision_adapter"],
            vec!["audio_device"],
            vec!["avatar"],
            vec!["video"],
        ]
    );
    // Every priority-3 component waits for every priority-2 one.
    let audio = plan.step("audio_device").expect("planned");
    let mut deps: Vec<&str> = audio.depends_on.iter().map(|d| d.name.as_str()).collect();
    deps.sort_unstable();
    assert_eq!(deps, ["chat_gateway", "crown_llm", "vision_adapter"]);
    // razar_config commands run to completion; `stop:` and quarantine_on_fail are kept.
    let vision = plan.step("vision_adapter").expect("planned");
    assert_eq!(vision.kind, razar::config::Kind::Task);
    assert!(vision.stop.command.is_some());
}

#[test]
fn boot_config_boots_in_file_order_with_exec_probes() {
    let sandbox = Sandbox::with(&["abzu/boot_config.json"]);
    let plan = plan_json(&sandbox, &["-c", "boot_config.json"]);
    assert_eq!(names(&plan), ["basic_service", "complex_service"]);
    let complex = plan.step("complex_service").expect("planned");
    assert_eq!(complex.depends_on[0].name, "basic_service");
    assert!(complex.daemonizes, "ABZU launched and did not wait");
    assert!(matches!(
        complex.ready.as_ref().map(|p| &p.check),
        Some(razar::config::ProbeCheck::Exec(_))
    ));
}

#[test]
fn razar_env_layers_become_tasks_that_layer_components_wait_for() {
    let sandbox = Sandbox::with(&["abzu/razar_env.yaml", "good/every_field.yaml"]);
    let plan = plan_json(
        &sandbox,
        &["-c", "every_field.yaml", "-c", "razar_env.yaml"],
    );
    let worker = plan.step("worker").expect("planned");
    assert!(
        worker
            .depends_on
            .iter()
            .any(|d| d.name == "venv.inanna" && d.condition == razar::config::Condition::Completed),
        "{:?}",
        worker.depends_on
    );
    let state_dir = sandbox.path().join("var/razar");
    assert_eq!(worker.path, [state_dir.join("venv/inanna/bin")]);
    let build = plan
        .step("venv.inanna")
        .expect("the layer's task is planned");
    assert_eq!(build.kind, razar::config::Kind::Task);
    assert_eq!(build.cwd.as_deref(), Some(state_dir.as_path()));
    let command = build.command.as_ref().expect("builds something").display();
    assert!(
        command.contains("python3 -m venv") && command.contains("'requests'"),
        "{command}"
    );
    // Tasks of unused layers are planned too (ABZU built every layer).
    assert!(plan.step("venv.razar").is_some());
}

#[test]
fn targets_select_components_and_everything_they_depend_on() {
    let sandbox = Sandbox::with(&["good/every_field.yaml"]);
    let plan = plan_json(&sandbox, &["-c", "every_field.yaml", "api"]);
    assert_eq!(names(&plan), ["redis", "migrate", "api"]);
    assert_eq!(plan.targets, ["api"]);
    let plan = plan_json(&sandbox, &["-c", "every_field.yaml", "worker", "redis"]);
    assert_eq!(names(&plan), ["redis", "migrate", "worker"]);
    let plan = plan_json(&sandbox, &["-c", "every_field.yaml", "online"]);
    assert_eq!(
        names(&plan),
        ["redis", "migrate", "worker", "api", "online"]
    );
}

#[test]
fn the_demo_plan_reads_as_documented() {
    let sandbox = Sandbox::new();
    sandbox.copy(
        &repo().join("config/demo.yaml"),
        "config/demo.yaml".as_ref(),
    );
    let text = plan_ok(&sandbox, &["-c", "config/demo.yaml"]);
    assert_eq!(
        text,
        "  #  step     wave  prio  kind         start → ready  reason
  1  prepare     0     0  task            0s → 100ms  no dependencies; priority 0
  2  catalog     1     0  service      100ms → 400ms  after prepare (completed); priority 0: first among the ready components
  3  users       1     1  service      100ms → 400ms  after prepare (completed); priority 1: 1 ready component ranked before it
  4  gateway     2     0  service      400ms → 700ms  after catalog (ready), users (ready); priority 0
  5  smoke       3     0  task         700ms → 900ms  after gateway (ready); priority 0
5 steps (0 blocked, 0 excluded), 5 dependencies; strategy priority, parallelism 4; predicted 900ms (lower bound 900ms, critical path 900ms: prepare → catalog → gateway → smoke)
"
    );
    // The README's quick start shows this output verbatim.
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md exists");
    assert!(
        readme.contains(&text),
        "README.md's quick start output is stale:\n{text}"
    );
}

#[test]
fn graphs_render_as_dot_and_mermaid() {
    let sandbox = Sandbox::with(&["good/every_field.yaml"]);
    let dot = plan_ok(&sandbox, &["-c", "every_field.yaml", "--format", "dot"]);
    assert!(dot.starts_with("digraph razar {\n"), "{dot}");
    assert!(dot.ends_with("}\n"), "{dot}");
    assert!(
        dot.contains("\"redis\" -> \"worker\" [label=\"started\"];"),
        "{dot}"
    );
    assert!(dot.contains("\"migrate\" -> \"api\";"), "{dot}");
    assert!(
        dot.contains("\"migrate\" [shape=ellipse];"),
        "tasks are ellipses:\n{dot}"
    );
    assert!(
        dot.contains("\"online\" [shape=plaintext];"),
        "milestones:\n{dot}"
    );
    assert!(
        dot.contains("\"vision\" [shape=box, style=dashed];"),
        "optional:\n{dot}"
    );
    assert_eq!(dot.matches(" -> ").count(), 8);

    let mermaid = plan_ok(&sandbox, &["-c", "every_field.yaml", "--format", "mermaid"]);
    assert!(mermaid.starts_with("flowchart TD\n"), "{mermaid}");
    assert!(mermaid.contains("    c0[\"redis\"]\n"), "{mermaid}");
    assert!(mermaid.contains("    c1(\"migrate\")\n"), "{mermaid}");
    assert!(mermaid.contains("    c0 -->|started| c2\n"), "{mermaid}");
    assert_eq!(mermaid.matches("-->").count(), 8);

    // Only the selected part of the graph is drawn.
    let dot = plan_ok(
        &sandbox,
        &["-c", "every_field.yaml", "migrate", "--format", "dot"],
    );
    assert_eq!(dot.matches(" -> ").count(), 1, "{dot}");

    let gantt = plan_ok(
        &sandbox,
        &["-c", "every_field.yaml", "--format", "mermaid-gantt"],
    );
    assert!(gantt.starts_with("gantt\n"), "{gantt}");
    assert!(gantt.contains("    redis :crit, s0, 0, 150\n"), "{gantt}");
}

#[test]
fn the_mermaid_gantt_has_one_section_per_wave_and_distinct_task_ids() {
    let sandbox = Sandbox::new();
    // Names that differ only in `.`, `-` and `_`; `late` (wave 0, low priority) is planned
    // after `next` (wave 1).
    sandbox.write(
        "razar.yaml",
        "version: 1\nparallelism: 1\ncomponents:\n  - {name: a.b, kind: task, command: \"true\"}\n  - {name: a-b, kind: task, command: \"true\"}\n  - {name: a_b, kind: task, command: \"true\"}\n  - {name: next, kind: task, command: \"true\", depends_on: [a.b]}\n  - {name: late, kind: task, command: \"true\", priority: 9}\n",
    );
    let gantt = plan_ok(&sandbox, &["--format", "mermaid-gantt"]);
    for wave in ["    section wave 0\n", "    section wave 1\n"] {
        assert_eq!(gantt.matches(wave).count(), 1, "{gantt}");
    }
    let ids: std::collections::BTreeSet<&str> = gantt
        .lines()
        .filter_map(|l| {
            l.split_once(" :")?
                .1
                .split(", ")
                .find(|f| f.starts_with('s'))
        })
        .collect();
    assert_eq!(ids.len(), 5, "{gantt}");
}

#[test]
fn output_is_byte_identical_across_runs() {
    let sandbox = Sandbox::with(&[
        "good/every_field.yaml",
        "abzu/razar_config.yaml",
        "abzu/component_priorities.yaml",
        "abzu/system_blueprint.md",
    ]);
    for format in ["text", "json", "dot", "mermaid", "mermaid-gantt"] {
        for config in [
            vec!["-c", "every_field.yaml"],
            vec![
                "-c",
                "razar_config.yaml",
                "-c",
                "component_priorities.yaml",
                "-c",
                "system_blueprint.md",
            ],
        ] {
            let mut args = config.clone();
            args.extend_from_slice(&["--format", format]);
            let first = plan_ok(&sandbox, &args);
            for _ in 0..3 {
                assert_eq!(plan_ok(&sandbox, &args), first, "{args:?}");
            }
        }
    }
}

#[test]
fn out_writes_the_plan_file_with_a_content_hash_of_the_inputs() {
    let sandbox = Sandbox::with(&["good/every_field.yaml"]);
    let stdout = plan_ok(
        &sandbox,
        &[
            "-c",
            "every_field.yaml",
            "--format",
            "json",
            "-o",
            "plans/every.json",
        ],
    );
    let file = sandbox.read("plans/every.json");
    assert_eq!(file, stdout, "-o writes what --format json prints");
    let plan = Plan::from_json(&file, sandbox.path()).expect("valid plan file");
    assert_eq!(plan.config_hash.len(), 64);
    assert_eq!(plan.sources, [Path::new("every_field.yaml")]);
    // Paths inside the planning directory are written relative to it...
    let raw: serde_json::Value = serde_json::from_str(&file).expect("JSON");
    assert_eq!(raw["state_dir"], "var/razar");
    assert_eq!(raw["steps"][3]["cwd"], "services/api");
    // ...and read back as absolute paths.
    assert_eq!(plan.state_dir, sandbox.path().join("var/razar"));

    // The hash follows the inputs: the same files give the same hash, any edit a new one.
    let again = plan_json(&sandbox, &["-c", "every_field.yaml"]);
    assert_eq!(again.config_hash, plan.config_hash);
    let edited = sandbox
        .read("every_field.yaml")
        .replace("parallelism: 3", "parallelism: 2");
    sandbox.write("every_field.yaml", edited);
    let changed = plan_json(&sandbox, &["-c", "every_field.yaml"]);
    assert_ne!(changed.config_hash, plan.config_hash);
}

#[test]
fn out_refuses_to_overwrite_a_configuration_file() {
    let sandbox = Sandbox::with(&["good/every_field.yaml"]);
    let before = sandbox.read("every_field.yaml");
    for out in ["every_field.yaml", "./every_field.yaml"] {
        let output = sandbox.run(&["plan", "-c", "every_field.yaml", "-o", out]);
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(
            stderr(&output).contains("is the configuration file `every_field.yaml` itself"),
            "{}",
            stderr(&output)
        );
        assert_eq!(sandbox.read("every_field.yaml"), before);
    }
    let output = sandbox.run(&["plan", "-c", "every_field.yaml", "-o", "."]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("`-o .` is a directory"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_plan_made_elsewhere_keeps_absolute_paths() {
    let sandbox = Sandbox::with(&["good/every_field.yaml"]);
    let elsewhere = Sandbox::new();
    let config = sandbox.path().join("every_field.yaml");
    let config = config.to_str().expect("UTF-8 temp path");
    let text = plan_ok(&elsewhere, &["-c", config, "--format", "json"]);
    let raw: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let expected = sandbox.path().join("var/razar");
    assert_eq!(raw["state_dir"], expected.to_str().expect("UTF-8"));
}

#[test]
fn parallelism_and_strategy_shape_the_predicted_timeline() {
    let sandbox = Sandbox::new();
    // Three independent 1 s tasks and a 3 s chain: with one slot everything queues.
    sandbox.write(
        "razar.yaml",
        "components:
  - {name: a, kind: task, command: [a], estimate: 1s}
  - {name: b, kind: task, command: [b], estimate: 1s}
  - {name: c, kind: task, command: [c], estimate: 1s}
  - {name: long1, kind: task, command: [l], estimate: 3s, priority: 5}
  - {name: long2, kind: task, command: [l], estimate: 3s, depends_on: [long1]}
",
    );
    let serial = plan_json(&sandbox, &["--parallelism", "1"]);
    assert_eq!(serial.parallelism, 1);
    assert_eq!(serial.timeline.makespan_ms, 9_000);
    let wide = plan_json(&sandbox, &["--parallelism", "4"]);
    assert_eq!(wide.timeline.makespan_ms, 6_000);
    assert_eq!(wide.timeline.critical_path, ["long1", "long2"]);
    assert_eq!(wide.timeline.lower_bound_ms, 6_000);
    // With two slots, priority order starts long1 last; the critical path starts it first.
    let by_priority = plan_json(&sandbox, &["--parallelism", "2"]);
    assert_eq!(names(&by_priority), ["a", "b", "c", "long1", "long2"]);
    assert_eq!(by_priority.timeline.makespan_ms, 7_000);
    let by_path = plan_json(
        &sandbox,
        &["--parallelism", "2", "--strategy", "critical-path"],
    );
    assert_eq!(names(&by_path)[0], "long1");
    assert_eq!(by_path.timeline.makespan_ms, 6_000);
}
