//! The committed schemas agree with razar's types: every property a schema declares is used
//! by a fixture razar accepts, every fixture and documented example passes both the schema
//! and razar, every plan razar writes passes the plan schema, and the checked-in example
//! plan is what `razar plan` prints today.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use crate::support::{Sandbox, fixture, razar, repo, stderr, stdout};

fn schema(name: &str) -> Value {
    let path = repo().join("schemas").join(name);
    let text = std::fs::read_to_string(&path).expect("schema is readable");
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{name} is not JSON: {err}"))
}

/// The schema file describing a config file, by razar's file-name conventions.
fn schema_for(file: &str) -> &'static str {
    match file {
        "boot_config.json" => "boot_config.schema.json",
        "razar_config.yaml" => "razar_config.schema.json",
        "razar_env.yaml" => "razar_env.schema.json",
        "component_priorities.yaml" => "component_priorities.schema.json",
        _ => "razar.schema.json",
    }
}

/// A YAML or JSON document as a JSON value.
fn document(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("document is readable");
    serde_yaml::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn violations(schema: &Value, instance: &Value) -> Vec<String> {
    let validator = jsonschema::validator_for(schema).expect("schema compiles");
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Schema properties no instance uses: walks `schema` and the `instances` it describes
/// together (through `$ref`, `items` and `properties`; free-form maps are not walked).
fn unused(root: &Value, node: &Value, instances: &[&Value], at: &str, out: &mut BTreeSet<String>) {
    if let Some(reference) = node.get("$ref").and_then(Value::as_str) {
        let target = reference.trim_start_matches('#');
        let resolved = root.pointer(target).expect("$ref resolves");
        return unused(root, resolved, instances, at, out);
    }
    if let Some(items) = node.get("items") {
        let elements: Vec<&Value> = instances
            .iter()
            .filter_map(|i| i.as_array())
            .flatten()
            .collect();
        unused(root, items, &elements, &format!("{at}[]"), out);
    }
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        for (name, sub) in properties {
            let values: Vec<&Value> = instances.iter().filter_map(|i| i.get(name)).collect();
            let path = format!("{at}/{name}");
            if values.is_empty() {
                out.insert(path);
            } else {
                unused(root, sub, &values, &path, out);
            }
        }
    }
}

#[test]
fn every_native_schema_property_is_used_by_a_fixture_razar_accepts() {
    let schema = schema("razar.schema.json");
    let every = document(&fixture("good/every_field.yaml"));
    let mut missing = BTreeSet::new();
    unused(&schema, &schema, &[&every], "", &mut missing);
    assert!(
        missing.is_empty(),
        "schemas/razar.schema.json declares properties tests/fixtures/good/every_field.yaml never uses: {missing:?}"
    );
    assert_eq!(violations(&schema, &every), Vec::<String>::new());
    let output = razar()
        .arg("validate")
        .arg("-c")
        .arg(fixture("good/every_field.yaml"))
        .output()
        .expect("razar runs");
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn every_abzu_schema_property_is_used_by_the_abzu_fixtures() {
    for file in [
        "boot_config.json",
        "razar_config.yaml",
        "razar_env.yaml",
        "component_priorities.yaml",
    ] {
        let schema = schema(schema_for(file));
        let instance = document(&fixture(&format!("abzu/{file}")));
        let mut missing = BTreeSet::new();
        unused(&schema, &schema, &[&instance], "", &mut missing);
        assert!(
            missing.is_empty(),
            "{file}: unused schema properties {missing:?}"
        );
        assert_eq!(
            violations(&schema, &instance),
            Vec::<String>::new(),
            "{file}"
        );
    }
}

#[test]
fn fixtures_pass_both_their_schema_and_razar() {
    let mut configs = vec![
        ("good/every_field.yaml".to_owned(), "every_field.yaml"),
        ("abzu/boot_config.json".to_owned(), "boot_config.json"),
        ("abzu/razar_config.yaml".to_owned(), "razar_config.yaml"),
        ("abzu/razar_env.yaml".to_owned(), "razar_env.yaml"),
        (
            "abzu/component_priorities.yaml".to_owned(),
            "component_priorities.yaml",
        ),
    ];
    configs.push((
        repo().join("config/demo.yaml").display().to_string(),
        "demo.yaml",
    ));
    for (path, name) in configs {
        let path = if Path::new(&path).is_absolute() {
            path.into()
        } else {
            fixture(&path)
        };
        let schema = schema(schema_for(name));
        assert_eq!(
            violations(&schema, &document(&path)),
            Vec::<String>::new(),
            "{name}"
        );
        let output = razar()
            .arg("validate")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("razar runs");
        assert!(output.status.success(), "{name}: {}", stderr(&output));
    }
}

#[test]
fn json_configs_have_the_same_shape_as_yaml_ones() {
    // every_field.yaml written as JSON plans identically (but for its name and hash).
    let sandbox = Sandbox::with(&["good/every_field.yaml"]);
    let value = document(&fixture("good/every_field.yaml"));
    sandbox.write(
        "every_field.json",
        serde_json::to_string_pretty(&value).expect("serialises"),
    );
    let plan = |file: &str| {
        let output = sandbox.run(&["plan", "-c", file, "--format", "json"]);
        assert!(output.status.success(), "{file}: {}", stderr(&output));
        let mut plan: Value = serde_json::from_slice(&output.stdout).expect("JSON");
        plan["config_hash"] = Value::Null;
        plan["sources"] = Value::Null;
        for step in plan["steps"].as_array_mut().expect("steps") {
            step["origin"]["file"] = Value::Null;
        }
        plan
    };
    assert_eq!(plan("every_field.yaml"), plan("every_field.json"));
}

/// Plans of every fixture, printed by the binary, plus one built through the library with
/// an excluded component (the CLI has no way to exclude yet: quarantine comes with `apply`).
fn plans() -> Vec<(String, Value)> {
    let sandbox = Sandbox::with(&[
        "good/every_field.yaml",
        "abzu/boot_config.json",
        "abzu/razar_config.yaml",
        "abzu/razar_env.yaml",
        "abzu/component_priorities.yaml",
        "abzu/system_blueprint.md",
    ]);
    let mut out = Vec::new();
    for args in [
        vec!["-c", "every_field.yaml", "-c", "razar_env.yaml"],
        vec![
            "-c",
            "every_field.yaml",
            "--strategy",
            "critical-path",
            "api",
        ],
        vec!["-c", "boot_config.json"],
        vec![
            "-c",
            "razar_config.yaml",
            "-c",
            "component_priorities.yaml",
            "-c",
            "system_blueprint.md",
        ],
    ] {
        let mut full = vec!["plan"];
        full.extend_from_slice(&args);
        full.extend_from_slice(&["--format", "json"]);
        let output = sandbox.run(&full);
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        out.push((
            format!("{args:?}"),
            serde_json::from_slice(&output.stdout).expect("JSON"),
        ));
    }
    let graph = razar::graph::load(&[fixture("good/every_field.yaml")]).expect("fixture loads");
    let selected = graph.select(&[]).expect("no targets");
    // Crown suggestions from each source, one applied and one rejected.
    let suggestion = |source, item: Value| razar::plan::suggest::Sourced {
        source,
        suggestion: serde_json::from_value(item).expect("suggestion shape"),
    };
    let options = razar::plan::Options {
        exclude: BTreeMap::from([(
            "migrate".to_owned(),
            "quarantined after 3 attempts".to_owned(),
        )]),
        suggestions: vec![
            suggestion(
                razar::plan::suggest::Source::Handshake {
                    at: "2025-10-04T09:15:01.927Z".to_owned(),
                },
                serde_json::json!({"action": "prioritize", "component": "vision", "reason": "GPU is idle"}),
            ),
            suggestion(
                razar::plan::suggest::Source::File {
                    path: "advice.json".into(),
                },
                serde_json::json!({"action": "teleport", "component": "api"}),
            ),
        ],
        ..razar::plan::Options::default()
    };
    let plan = razar::plan::build(&graph, &selected, &options);
    let text = plan.to_json(repo());
    let back = razar::plan::Plan::from_json(&text, repo()).expect("reads back");
    assert_eq!(
        back, plan,
        "a plan file reads back as the plan it was written from"
    );
    out.push((
        "library, migrate excluded".to_owned(),
        serde_json::from_str(&text).expect("JSON"),
    ));
    // What history adds: the explore strategy's report and failure counts.
    let first = graph.components()[0].name.clone();
    let learned = razar::plan::Options {
        strategy: razar::plan::Strategy::Explore,
        failures: BTreeMap::from([(first, (1, 4))]),
        ..razar::plan::Options::default()
    };
    let plan = razar::plan::build(&graph, &selected, &learned);
    let text = plan.to_json(repo());
    // Before the excluded plan, which the test below expects last.
    out.insert(
        out.len() - 1,
        (
            "library, explore with failures".to_owned(),
            serde_json::from_str(&text).expect("JSON"),
        ),
    );
    out
}

#[test]
fn every_plan_passes_the_plan_schema_and_uses_all_of_it() {
    let schema = schema("plan.schema.json");
    let plans = plans();
    for (what, plan) in &plans {
        assert_eq!(violations(&schema, plan), Vec::<String>::new(), "{what}");
    }
    let all: Vec<&Value> = plans.iter().map(|(_, plan)| plan).collect();
    let mut missing = BTreeSet::new();
    unused(&schema, &schema, &all, "", &mut missing);
    assert!(
        missing.is_empty(),
        "schemas/plan.schema.json declares properties no plan has: {missing:?}"
    );
    // The excluded component's dependents are blocked, with the reason.
    let (_, excluded) = plans.last().expect("the library plan");
    assert_eq!(excluded["excluded"][0]["name"], "migrate");
    let worker = excluded["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == "worker")
        .expect("worker is planned");
    assert_eq!(
        worker["blocked"],
        "blocked: depends on `migrate`, which is excluded (quarantined after 3 attempts)"
    );
}

/// Config examples in the docs: fenced blocks whose info string names a file, as in
/// ```` ```yaml razar.yaml ````.
fn documented_examples() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut docs = vec![repo().join("README.md")];
    for entry in std::fs::read_dir(repo().join("docs")).expect("docs/ exists") {
        let path = entry.expect("readable").path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    docs.sort();
    for doc in docs {
        let text = std::fs::read_to_string(&doc).expect("doc is readable");
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let Some(info) = line.strip_prefix("```") else {
                continue;
            };
            let mut words = info.split_whitespace();
            let (Some(_language), Some(file)) = (words.next(), words.next()) else {
                // Unnamed blocks are not examples of a whole file; skip their body.
                for inner in lines.by_ref() {
                    if inner.starts_with("```") {
                        break;
                    }
                }
                continue;
            };
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.starts_with("```"))
                .collect();
            out.push((
                doc.file_name()
                    .expect("named")
                    .to_string_lossy()
                    .into_owned(),
                file.to_owned(),
                body.join("\n") + "\n",
            ));
        }
    }
    out
}

#[test]
fn documented_examples_pass_both_their_schema_and_razar() {
    let examples = documented_examples();
    let per_doc: BTreeSet<&str> = examples.iter().map(|(doc, _, _)| doc.as_str()).collect();
    assert!(
        per_doc.contains("README.md") && per_doc.contains("formats.md"),
        "{per_doc:?}"
    );
    for (doc, file, body) in &examples {
        let sandbox = Sandbox::new();
        sandbox.write(file, body);
        if !file.ends_with(".md") {
            let instance = document(&sandbox.path().join(file));
            let schema = schema(schema_for(file));
            assert_eq!(
                violations(&schema, &instance),
                Vec::<String>::new(),
                "{doc}: example {file}"
            );
        }
        let output = sandbox.run(&["validate", "-c", file]);
        assert!(
            output.status.success(),
            "{doc}: example {file} does not validate:\n{}",
            stderr(&output)
        );
    }
}

#[test]
fn the_checked_in_example_plan_is_current() {
    // Planned in a copy, so state a local demo run left in the checkout (history, a stored
    // order, quarantines) cannot change it: the checked-in plan is the config's alone.
    let sandbox = Sandbox::new();
    sandbox.copy(
        &repo().join("config/demo.yaml"),
        "config/demo.yaml".as_ref(),
    );
    let output = razar()
        .current_dir(sandbox.path())
        .args(["plan", "-c", "config/demo.yaml", "--format", "json"])
        .output()
        .expect("razar runs");
    assert!(output.status.success(), "{}", stderr(&output));
    let checked_in =
        std::fs::read_to_string(repo().join("plans/demo.json")).expect("plans/demo.json exists");
    assert!(
        stdout(&output) == checked_in,
        "plans/demo.json is stale: run `cargo run -- plan -c config/demo.yaml -o plans/demo.json`"
    );
    let plan: Value = serde_json::from_str(&checked_in).expect("JSON");
    assert_eq!(
        violations(&schema("plan.schema.json"), &plan),
        Vec::<String>::new()
    );
    // Portable: no absolute path of the machine it was made on.
    assert!(!checked_in.contains(&repo().display().to_string()));
    assert!(!checked_in.contains(&sandbox.path().display().to_string()));
}
