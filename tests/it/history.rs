//! History-driven planning through the binary: `razar plan` after real applies (learned
//! weights, critical-path default, flaky flag), `razar bench` real and `--simulate`, and the
//! explored order stored by bench and used by later plans.

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

fn razar(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("razar").expect("razar binary");
    cmd.current_dir(dir).env_remove("RAZAR_LOG");
    cmd
}

fn stdout(cmd: &mut Command) -> String {
    let out = cmd
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .expect("razar runs");
    assert!(
        out.status.success(),
        "razar failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn json(cmd: &mut Command) -> Value {
    serde_json::from_str(&stdout(cmd)).expect("JSON output")
}

fn step<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step `{name}` in {plan}"))
}

/// `slow` is estimated short and `quick` long: only history tells the planner the truth.
/// `shaky` fails its first attempt ever (then a marker file exists) and succeeds on restart.
const LEARNING: &str = r#"
version: 1
parallelism: 1
state_dir: state
defaults:
  restart: {policy: on-failure, max_attempts: 3, backoff: {initial: 10ms, max: 20ms, jitter: 0}}
components:
  - name: quick
    kind: task
    command: ["sleep", "0.05"]
    estimate: 2s
  - name: slow
    kind: task
    command: ["sleep", "0.4"]
    estimate: 10ms
  - name: tail
    kind: task
    command: ["sleep", "0.05"]
    depends_on: [slow]
  - name: shaky
    kind: task
    command: "test -e marker || { touch marker; exit 1; }"
"#;

#[test]
fn plan_learns_weights_critical_path_and_flakiness_from_applies() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("razar.yaml"), LEARNING).expect("write config");

    let before = json(razar(dir.path()).args(["plan", "--format", "json"]));
    assert_eq!(before["strategy"], "priority", "no history yet: priority");
    assert_eq!(step(&before, "slow")["weight_source"], "estimate");

    for _ in 0..2 {
        let out = stdout(razar(dir.path()).args(["apply", "--until-ready"]));
        assert!(
            out.contains("predicted") && out.contains("vs actual"),
            "the summary compares predicted and actual:\n{out}"
        );
    }

    let plan = json(razar(dir.path()).args(["plan", "--format", "json"]));
    assert_eq!(
        plan["strategy"], "critical-path",
        "history makes it the default"
    );
    let slow = step(&plan, "slow");
    assert_eq!(slow["weight_source"], "history-p50");
    let learned = slow["weight_ms"].as_u64().expect("weight");
    assert!(
        (380..5_000).contains(&learned),
        "slow's learned weight is its sleep: {learned} ms"
    );
    assert!(step(&plan, "quick")["weight_ms"].as_u64().expect("weight") < 1_000);
    // With one slot, the long chain slow → tail goes first.
    assert_eq!(plan["steps"][0]["name"], "slow");
    assert_eq!(plan["timeline"]["critical_path"][0], "slow");
    let timeline = &plan["timeline"];
    assert!(timeline["makespan_ms"].as_u64() >= timeline["lower_bound_ms"].as_u64());
    assert!(
        step(&plan, "tail")["predicted_start_ms"].as_u64() >= slow["predicted_ready_ms"].as_u64()
    );

    // shaky failed once in three attempts: 33% is over the default 20% threshold.
    let shaky = step(&plan, "shaky");
    assert_eq!(shaky["failures"]["failed"], 1);
    assert_eq!(shaky["failures"]["attempts"], 3);
    assert_eq!(shaky["failures"]["flaky"], true);
    assert_eq!(shaky["reasons"][0]["kind"], "flaky");

    let text = stdout(razar(dir.path()).arg("plan"));
    assert!(text.contains("on critical path"), "{text}");
    assert!(
        text.contains("flaky: failed 1 of last 3 attempts"),
        "{text}"
    );
    assert!(
        text.contains("weights: 4 of 4 step(s) from history (p50)"),
        "{text}"
    );

    let lenient =
        json(razar(dir.path()).args(["plan", "--format", "json", "--flaky-threshold", "0.5"]));
    assert_eq!(step(&lenient, "shaky")["failures"]["flaky"], false);
    let pessimistic = json(razar(dir.path()).args(["plan", "--format", "json", "--pessimistic"]));
    assert_eq!(step(&pessimistic, "slow")["weight_source"], "history-p90");
    let priority =
        json(razar(dir.path()).args(["plan", "--format", "json", "--strategy", "priority"]));
    assert_eq!(priority["strategy"], "priority");
    assert_eq!(priority["steps"][0]["name"], "quick");

    let out = razar(dir.path())
        .args(["plan", "--flaky-threshold", "2"])
        .output()
        .expect("razar runs");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a rate above 1 is a usage error"
    );
}

/// Independent jobs of 5, 4, 3, 3 and 3 units on two slots: the rank schedule takes 10 units,
/// the optimum 9. Estimates only, so nothing needs to run.
const ANOMALY: &str = r#"
version: 1
parallelism: 2
state_dir: state
components:
  - {name: j5, kind: task, command: ["sleep", "0.5"], estimate: 500ms}
  - {name: j4, kind: task, command: ["sleep", "0.4"], estimate: 400ms}
  - {name: k1, kind: task, command: ["sleep", "0.3"], estimate: 300ms}
  - {name: k2, kind: task, command: ["sleep", "0.3"], estimate: 300ms}
  - {name: k3, kind: task, command: ["sleep", "0.3"], estimate: 300ms}
"#;

#[test]
fn bench_simulate_compares_strategies_and_stores_the_explored_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("razar.yaml"), ANOMALY).expect("write config");
    let args = [
        "bench",
        "--simulate",
        "--runs",
        "7",
        "--json",
        "--jitter",
        "0.02",
    ];
    let report = json(razar(dir.path()).args(args));
    assert_eq!(report["mode"], "simulated");
    let strategies = report["strategies"].as_array().expect("strategies");
    let names: Vec<&str> = strategies
        .iter()
        .map(|s| s["strategy"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["priority", "critical-path", "explore"]);
    for s in strategies {
        assert_eq!(s["runs_ms"].as_array().map(Vec::len), Some(7));
        assert!(s["ratio"].as_f64().expect("ratio") >= 1.0, "{s}");
        assert!(s["min_ms"].as_u64() <= s["median_ms"].as_u64());
        assert!(s["median_ms"].as_u64() <= s["max_ms"].as_u64());
    }
    let median = |k: usize| strategies[k]["median_ms"].as_u64().expect("median");
    assert!(
        median(2) < median(1),
        "explore beats critical path: {report}"
    );
    assert_eq!(strategies[2]["predicted_ms"], 900);
    assert_eq!(report["stored_order"]["makespan_ms"], 900);

    // Reproducible with the same seed, different with another; a second bench reuses the
    // stored order and says so.
    let again = json(razar(dir.path()).args(args));
    assert_eq!(again["strategies"], report["strategies"]);
    assert!(again["stored_order"].is_null(), "{again}");
    assert_eq!(again["reused_order"]["makespan_ms"], 900, "{again}");
    let other = json(razar(dir.path()).args(args).args(["--seed", "9"]));
    assert_ne!(
        other["strategies"][0]["runs_ms"],
        report["strategies"][0]["runs_ms"]
    );

    // The stored order is what `razar plan` now uses, labelled.
    let plan = json(razar(dir.path()).args(["plan", "--format", "json"]));
    assert_eq!(plan["strategy"], "explore");
    assert_eq!(plan["explored"]["source"], "stored");
    assert_eq!(plan["timeline"]["makespan_ms"], 900);
    let text = stdout(razar(dir.path()).arg("plan"));
    assert!(
        text.contains("explored order: stored for this configuration"),
        "{text}"
    );
    let table = stdout(razar(dir.path()).args(["bench", "--simulate", "--runs", "3"]));
    assert!(
        table.contains("simulated bench: 5 components, parallelism 2"),
        "{table}"
    );
    assert!(table.contains("critical-path"), "{table}");
    assert!(
        table.contains("explore: used the order an earlier search stored, predicting 900ms"),
        "{table}"
    );
}

#[test]
fn bench_boots_the_stack_per_strategy_and_records_every_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("razar.yaml"),
        r#"
version: 1
parallelism: 2
state_dir: state
components:
  - {name: one, kind: task, command: ["sleep", "0.05"]}
  - {name: two, kind: task, command: ["sleep", "0.1"], depends_on: [one]}
  - {name: three, kind: task, command: ["sleep", "0.05"]}
"#,
    )
    .expect("write config");
    let report = json(razar(dir.path()).args([
        "bench",
        "--runs",
        "2",
        "--strategies",
        "priority,critical-path",
        "--json",
    ]));
    assert_eq!(report["mode"], "real");
    for s in report["strategies"].as_array().expect("strategies") {
        let runs = s["runs_ms"].as_array().expect("runs");
        assert_eq!(runs.len(), 2);
        for ms in runs {
            // one → two is 150 ms of sleeping at least.
            assert!(ms.as_u64().expect("ms") >= 150, "{s}");
        }
        assert!(s["ratio"].as_f64().expect("ratio") >= 0.9, "{s}");
    }
    let history = json(razar(dir.path()).args(["history", "--json"]));
    for c in history["components"].as_array().expect("components") {
        assert_eq!(c["samples"], 4, "every run is recorded: {c}");
    }
    // Clean shutdown between runs: nothing is left for `razar down`.
    let status = json(razar(dir.path()).args(["status", "--json"]));
    assert_eq!(status["apply"]["running"], false);
    for c in status["components"].as_array().expect("components") {
        assert_ne!(c["alive"], true, "nothing left running: {c}");
    }
}

#[test]
fn bench_stops_at_a_failed_boot_with_exit_code_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("razar.yaml"),
        "version: 1\nstate_dir: state\ncomponents:\n  - {name: broken, kind: task, command: [\"false\"], restart: {policy: never}}\n",
    )
    .expect("write config");
    let out = razar(dir.path())
        .args(["bench", "--runs", "3"])
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .expect("razar runs");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("stopped: run 1 of `priority` failed"),
        "{text}"
    );
}

#[test]
fn milestones_have_no_history_and_do_not_count_as_timed_steps() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("razar.yaml"),
        "version: 1\nstate_dir: state\ncomponents:\n  - {name: a, kind: task, command: [\"true\"]}\n  - {name: m, depends_on: [a]}\n  - {name: later, kind: task, command: [\"true\"], optional: true}\n",
    )
    .expect("write config");
    let boot = razar(dir.path())
        .args(["apply", "--until-ready", "a"])
        .output()
        .expect("razar runs");
    assert!(boot.status.success(), "{boot:?}");
    let plan = stdout(razar(dir.path()).arg("plan"));
    assert!(
        plan.contains("weights: 1 of 2 step(s) from history"),
        "{plan}"
    );
    let m = stdout(razar(dir.path()).args(["history", "m"]));
    assert!(m.contains("`m` is a milestone"), "{m}");
    let later = stdout(razar(dir.path()).args(["history", "later"]));
    assert!(later.contains("no samples for `later` yet"), "{later}");
}
