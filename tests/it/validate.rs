//! `razar validate` on good configs, the default config path, merging, `--help` and
//! shell completions.

use crate::support::{Sandbox, fixture, razar, repo, stderr, stdout};

fn validate_ok(sandbox: &Sandbox, args: &[&str]) -> String {
    let mut full = vec!["validate"];
    full.extend_from_slice(args);
    let output = sandbox.run(&full);
    assert!(
        output.status.success(),
        "razar {full:?} failed:\n{}",
        stderr(&output)
    );
    stdout(&output)
}

#[test]
fn good_configs_validate_with_their_counts_and_write_nothing() {
    let sandbox = Sandbox::with(&[
        "good/every_field.yaml",
        "abzu/boot_config.json",
        "abzu/razar_config.yaml",
        "abzu/razar_env.yaml",
        "abzu/component_priorities.yaml",
        "abzu/system_blueprint.md",
    ]);
    sandbox.copy(&repo().join("config/demo.yaml"), "demo.yaml".as_ref());
    let before = sandbox.tree();
    for (file, expected) in [
        ("demo.yaml", "ok: 5 components, 5 dependencies\n"),
        ("every_field.yaml", "ok: 6 components, 8 dependencies\n"),
        ("boot_config.json", "ok: 2 components, 1 dependency\n"),
        ("razar_config.yaml", "ok: 7 components, 8 dependencies\n"),
        ("razar_env.yaml", "ok: 3 components, 0 dependencies\n"),
        (
            "component_priorities.yaml",
            "ok: 18 components, 20 dependencies\n",
        ),
        ("system_blueprint.md", "ok: 9 components, 8 dependencies\n"),
    ] {
        assert_eq!(validate_ok(&sandbox, &["-c", file]), expected, "{file}");
    }
    // Validation reads; it never creates the state directory or anything else.
    assert_eq!(before, sandbox.tree());
}

#[test]
fn the_default_config_is_razar_yaml_then_config_razar_yaml() {
    let sandbox = Sandbox::new();
    sandbox.write(
        "config/razar.yaml",
        "components:\n  - name: a\n    command: [a]\n",
    );
    assert_eq!(
        validate_ok(&sandbox, &[]),
        "ok: 1 component, 0 dependencies\n"
    );
    sandbox.write(
        "razar.yaml",
        "components:\n  - name: a\n    command: [a]\n  - name: b\n    command: [b]\n    depends_on: [a]\n",
    );
    assert_eq!(
        validate_ok(&sandbox, &[]),
        "ok: 2 components, 1 dependency\n"
    );
}

#[test]
fn several_files_merge_by_component_name() {
    let sandbox = Sandbox::new();
    sandbox.write(
        "base.yaml",
        "parallelism: 2\ncomponents:\n  - name: redis\n    command: [redis-server]\n  - name: api\n    command: [api]\n    depends_on: [redis]\n",
    );
    // Same values for a component agree; new fields add to it; new components join.
    sandbox.write(
        "more.json",
        r#"{"parallelism": 2, "components": [
            {"name": "redis", "command": ["redis-server"], "priority": -1},
            {"name": "worker", "command": "python3 -m worker", "depends_on": {"redis": "started"}}
        ]}"#,
    );
    assert_eq!(
        validate_ok(&sandbox, &["-c", "base.yaml", "-c", "more.json"]),
        "ok: 3 components, 2 dependencies\n"
    );
    let output = sandbox.run(&[
        "plan",
        "-c",
        "base.yaml",
        "-c",
        "more.json",
        "--format",
        "json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).expect("plan is JSON");
    let redis = &plan["steps"][0];
    assert_eq!(redis["name"], "redis");
    assert_eq!(redis["priority"], -1, "priority came from the second file");
    assert_eq!(
        plan["sources"],
        serde_json::json!(["base.yaml", "more.json"])
    );
}

#[test]
fn abzu_files_merge_with_each_other() {
    let sandbox = Sandbox::with(&[
        "abzu/razar_config.yaml",
        "abzu/component_priorities.yaml",
        "abzu/system_blueprint.md",
        "abzu/razar_env.yaml",
    ]);
    assert_eq!(
        validate_ok(
            &sandbox,
            &[
                "-c",
                "razar_config.yaml",
                "-c",
                "component_priorities.yaml",
                "-c",
                "system_blueprint.md",
                "-c",
                "razar_env.yaml"
            ]
        ),
        "ok: 22 components, 24 dependencies\n"
    );
}

#[test]
fn format_is_detected_from_content_when_the_name_says_nothing() {
    let sandbox = Sandbox::new();
    sandbox.copy(&fixture("abzu/boot_config.json"), "boot.json".as_ref());
    sandbox.copy(&fixture("abzu/razar_config.yaml"), "runtime.yaml".as_ref());
    sandbox.copy(&fixture("abzu/razar_env.yaml"), "layers.yaml".as_ref());
    sandbox.copy(
        &fixture("abzu/component_priorities.yaml"),
        "tiers.yaml".as_ref(),
    );
    sandbox.copy(
        &fixture("abzu/system_blueprint.md"),
        "blueprint.txt".as_ref(),
    );
    for (file, expected) in [
        ("boot.json", "ok: 2 components, 1 dependency\n"),
        ("runtime.yaml", "ok: 7 components, 8 dependencies\n"),
        ("layers.yaml", "ok: 3 components, 0 dependencies\n"),
        ("tiers.yaml", "ok: 18 components, 20 dependencies\n"),
        ("blueprint.txt", "ok: 9 components, 8 dependencies\n"),
    ] {
        assert_eq!(validate_ok(&sandbox, &["-c", file]), expected, "{file}");
    }
}

#[test]
fn help_is_available_on_every_command() {
    for args in [
        vec!["--help"],
        vec!["validate", "--help"],
        vec!["plan", "--help"],
        vec!["completions", "--help"],
        vec!["help", "plan"],
    ] {
        let output = razar().args(&args).output().expect("razar runs");
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        let text = stdout(&output);
        assert!(text.contains("Usage: razar"), "{args:?}:\n{text}");
        if args.contains(&"plan") {
            for flag in [
                "--config",
                "--format",
                "--out",
                "--parallelism",
                "[TARGET]...",
            ] {
                assert!(text.contains(flag), "plan --help lacks {flag}:\n{text}");
            }
            assert!(text.contains("Exit codes:"), "{text}");
        }
    }
    let output = razar().arg("--version").output().expect("razar runs");
    assert_eq!(
        stdout(&output),
        format!("razar {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = razar()
            .args(["completions", shell])
            .output()
            .expect("razar runs");
        assert!(output.status.success(), "{shell}: {}", stderr(&output));
        let script = stdout(&output);
        for word in ["validate", "plan", "completions", "format"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
        // The shells that complete values offer the output formats.
        if ["bash", "zsh", "fish"].contains(&shell) {
            assert!(
                script.contains("mermaid-gantt"),
                "{shell} completion lacks formats"
            );
        }
    }
    // The bash script is valid bash.
    let sandbox = Sandbox::new();
    let output = razar()
        .args(["completions", "bash"])
        .output()
        .expect("razar runs");
    let script = sandbox.write("razar.bash", &output.stdout);
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash is installed");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn a_byte_order_mark_is_not_part_of_the_config() {
    let sandbox = Sandbox::new();
    let yaml = "version: 1\ncomponents:\n  - {name: a, kind: task, command: \"true\"}\n";
    let json = r#"{"components": [{"name": "a", "kind": "task", "command": "true"}]}"#;
    for (name, text) in [("bom.yaml", yaml), ("bom.json", json)] {
        let mut bytes = b"\xef\xbb\xbf".to_vec();
        bytes.extend_from_slice(text.as_bytes());
        sandbox.write(name, bytes);
        assert_eq!(
            validate_ok(&sandbox, &["-c", name]),
            "ok: 1 component, 0 dependencies\n"
        );
    }
}

#[test]
fn a_config_streamed_past_the_size_limit_is_refused() {
    // A pipe has no size to check beforehand: it is read up to the limit, not to the end.
    let output = razar()
        .args(["validate", "-c", "/dev/stdin"])
        .write_stdin(vec![b'#'; 65 * 1024 * 1024])
        .output()
        .expect("razar runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("config is over 64 MiB"),
        "{}",
        stderr(&output)
    );
}
