//! Bad input: every broken config in tests/fixtures/bad/ (and a few generated ones) ends
//! with exit code 2, the expected message at the expected line, no panic, and no file
//! created anywhere — not the state directory, not the `-o` plan file.

use crate::support::{Sandbox, assert_bad_input, fixture, problems, stderr};

/// A broken config and what razar must say about it: a message fragment, and the line it
/// is reported at (`None`: a problem with the file as a whole).
struct Case {
    fixture: &'static str,
    fragment: &'static str,
    line: Option<usize>,
}

const fn case(fixture: &'static str, fragment: &'static str, line: Option<usize>) -> Case {
    Case {
        fixture,
        fragment,
        line,
    }
}

const CASES: &[Case] = &[
    // Syntax.
    case(
        "bad/invalid_yaml.yaml",
        "invalid YAML: did not find expected ','",
        Some(5),
    ),
    case(
        "bad/invalid_json.json",
        "invalid JSON: trailing comma",
        Some(5),
    ),
    case(
        "bad/tab_indent.yaml",
        "invalid YAML: found a tab character",
        Some(4),
    ),
    case("bad/duplicate_key.yaml", "duplicate key `command`", Some(6)),
    case(
        "bad/unknown_anchor.yaml",
        "invalid YAML: unknown anchor",
        Some(5),
    ),
    case("bad/alias_bomb.yaml", "repetition limit exceeded", Some(3)),
    case(
        "bad/deeply_nested.yaml",
        "recursion limit exceeded",
        Some(4),
    ),
    case(
        "bad/deeply_nested.json",
        "recursion limit exceeded",
        Some(1),
    ),
    // Not a text config at all.
    case("bad/empty.yaml", "config file is empty", None),
    case(
        "bad/only_comments.yaml",
        "config is empty (only comments), expected a mapping",
        Some(1),
    ),
    case(
        "bad/list_top_level.yaml",
        "config is a list, expected a mapping",
        Some(2),
    ),
    case(
        "bad/binary_garbage.bin",
        "config is not UTF-8 text",
        Some(1),
    ),
    case("bad/latin1.yaml", "config is not UTF-8 text", Some(3)),
    case("bad/nul_bytes.yaml", "contains a NUL byte", Some(3)),
    case(
        "bad/unknown_format.yaml",
        "cannot tell which config format this is",
        None,
    ),
    // Types and fields (the schema).
    case(
        "bad/wrong_type_priority.yaml",
        "components[0].priority: expected an integer, found the string `high`",
        Some(5),
    ),
    case(
        "bad/wrong_type_components.yaml",
        "components: expected a list, found a mapping",
        Some(2),
    ),
    case(
        "bad/unknown_field_component.yaml",
        "components[0]: unknown field `colour`",
        Some(5),
    ),
    case(
        "bad/unknown_field_top.yaml",
        "unknown field `paralellism`; did you mean `parallelism`?",
        Some(2),
    ),
    case(
        "bad/bad_condition.yaml",
        "the string `done` is not one of `started`, `ready`, `completed`",
        Some(8),
    ),
    case(
        "bad/negative_duration.yaml",
        "-1 is less than the minimum of 0",
        Some(5),
    ),
    case(
        "bad/jitter_out_of_range.yaml",
        "1.5 is greater than the maximum of 1",
        Some(5),
    ),
    case(
        "bad/max_attempts_zero.yaml",
        "0 is less than the minimum of 1",
        Some(7),
    ),
    case(
        "bad/parallelism_zero.yaml",
        "0 is less than the minimum of 1",
        Some(2),
    ),
    case(
        "bad/version_2.yaml",
        "version: must be `1`, found the number `2`",
        Some(1),
    ),
    // Field values.
    case(
        "bad/bad_duration.yaml",
        "unparsable duration: `ten seconds` is not a duration",
        Some(7),
    ),
    case("bad/empty_command_list.yaml", "empty command", Some(4)),
    case("bad/empty_command_string.yaml", "empty command", Some(5)),
    case(
        "bad/probe_two_checks.yaml",
        "a probe needs exactly one of tcp, http, exec, log (found 2)",
        Some(5),
    ),
    case(
        "bad/tcp_without_port.yaml",
        "tcp probe `localhost` has no port",
        Some(5),
    ),
    case(
        "bad/tcp_port_out_of_range.yaml",
        "tcp probe: `127.0.0.1:99999` is not host:port",
        Some(5),
    ),
    case(
        "bad/http_without_host.yaml",
        "http probe: `:80` is not host:port",
        Some(6),
    ),
    case(
        "bad/huge_duration.yaml",
        "`500000000000y` is longer than razar accepts",
        Some(7),
    ),
    case(
        "bad/crown_retries_overflow.yaml",
        "invalid value: integer `4294967296`, expected u32",
        Some(4),
    ),
    case(
        "bad/crown_timeout_zero.yaml",
        "`timeout` is 0: no handshake could ever be answered",
        Some(4),
    ),
    case(
        "bad/env_float.yaml",
        "is read as `3.1`, which may not be what the program should see",
        Some(7),
    ),
    case(
        "bad/env_name_with_equals.yaml",
        "`A=B` cannot be an environment variable name",
        Some(7),
    ),
    case(
        "bad/nul_in_command.yaml",
        "command contains a NUL byte",
        Some(4),
    ),
    case(
        "bad/task_with_probe.yaml",
        "task `migrate` has a readiness probe, which a task never uses",
        Some(6),
    ),
    case(
        "bad/task_restart_always.yaml",
        "task `migrate` has `restart: always`, so it could never complete",
        Some(7),
    ),
    case("bad/https_probe.yaml", "is not an http:// URL", Some(6)),
    case("bad/bad_log_regex.yaml", "invalid log regex", Some(6)),
    case(
        "bad/unknown_signal.yaml",
        "unknown stop signal `SIGSTOPPLEASE`",
        Some(6),
    ),
    // Names.
    case(
        "bad/duplicate_name.yaml",
        "duplicate component name `api`",
        Some(7),
    ),
    case(
        "bad/name_with_slash.yaml",
        "invalid component name `services/api`",
        Some(3),
    ),
    case(
        "bad/name_dotdot.yaml",
        "invalid component name `..`",
        Some(3),
    ),
    case(
        "bad/name_traversal.yaml",
        "invalid component name `../../etc/passwd`",
        Some(5),
    ),
    case(
        "bad/unicode_name.yaml",
        "invalid component name `dämon`: `ä` is not allowed",
        Some(3),
    ),
    case("bad/name_too_long.yaml", "it is 65 bytes long", Some(3)),
    // The graph.
    case(
        "bad/cycle.yaml",
        "dependency cycle: db -> queue -> cache -> db",
        Some(5),
    ),
    case(
        "bad/unknown_dependency.yaml",
        "`api` depends on unknown component `redsi`",
        Some(7),
    ),
    case(
        "bad/self_dependency.yaml",
        "`api` depends on itself",
        Some(6),
    ),
    case(
        "bad/completed_on_service.yaml",
        "which a service never is",
        Some(8),
    ),
    case(
        "bad/many_problems.yaml",
        "`web` depends on unknown component `ap`",
        Some(5),
    ),
    // ABZU formats.
    case(
        "bad/abzu/boot_config.json",
        "components[0]: missing required field `health_check`",
        Some(3),
    ),
    case(
        "bad/abzu/razar_config.yaml",
        "components[1].priority: expected an integer",
        Some(7),
    ),
    case(
        "bad/abzu/razar_env.yaml",
        "layers.inanna: expected a list, found the string `requests`",
        Some(4),
    ),
    case(
        "bad/abzu/component_priorities.yaml",
        "does not match \"^P[0-9]$\"",
        Some(5),
    ),
    case(
        "bad/abzu/duplicate_stage.md",
        "`Memory Store` is listed twice",
        Some(7),
    ),
    case(
        "bad/abzu/no_startup_order.md",
        "no `## Staged Startup Order` section",
        None,
    ),
];

/// Fixtures that are not text: their problems are located but not quoted.
const NOT_TEXT: &[&str] = &["binary_garbage.bin", "latin1.yaml", "nul_bytes.yaml"];

/// Runs `validate` and `plan -o` on one config in a sandbox and checks what a user sees.
fn check(
    sandbox: &Sandbox,
    config: &str,
    fragment: &str,
    line: Option<usize>,
) -> Result<(), String> {
    let before = sandbox.tree();
    for args in [
        vec!["validate", "-c", config],
        vec!["plan", "-c", config, "-o", "plans/out.json"],
        vec!["plan", "-c", config, "--format", "json"],
    ] {
        let output = sandbox.run(&args);
        assert_bad_input(&output);
        let err = stderr(&output);
        let found = problems(&err);
        let hit = found
            .iter()
            .find(|p| p.message.contains(fragment) && p.file == config);
        match hit {
            None => {
                return Err(format!(
                    "{args:?}: no problem containing {fragment:?}:\n{err}"
                ));
            }
            Some(p) if p.line != line => {
                return Err(format!(
                    "{args:?}: {fragment:?} reported at line {:?}, expected {line:?}:\n{err}",
                    p.line
                ));
            }
            Some(_) => {}
        }
        // The offending line of a text file is shown and underlined (bytes that are not
        // text are not echoed to the terminal).
        if line.is_some() && !NOT_TEXT.contains(&config) && !err.contains("╰── here") {
            return Err(format!("{args:?}: no source excerpt:\n{err}"));
        }
    }
    let after = sandbox.tree();
    if before != after {
        return Err(format!(
            "files changed on bad input: {before:?} -> {after:?}"
        ));
    }
    Ok(())
}

#[test]
fn every_broken_fixture_is_refused_at_its_line_with_nothing_written() {
    let mut failures = Vec::new();
    for case in CASES {
        let sandbox = Sandbox::with(&[case.fixture]);
        let name = fixture(case.fixture)
            .file_name()
            .and_then(|n| n.to_str())
            .expect("fixture names are UTF-8")
            .to_owned();
        if let Err(failure) = check(&sandbox, &name, case.fragment, case.line) {
            failures.push(format!("{}: {failure}", case.fixture));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_suite_covers_every_fixture_in_the_bad_folder() {
    let mut listed: Vec<&str> = CASES.iter().map(|c| c.fixture).collect();
    listed.sort_unstable();
    let mut on_disk = Vec::new();
    for dir in ["bad", "bad/abzu"] {
        for entry in std::fs::read_dir(fixture(dir)).expect("fixture dir is readable") {
            let path = entry.expect("entries are readable").path();
            if path.is_file() {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .expect("UTF-8 names");
                on_disk.push(format!("{dir}/{name}"));
            }
        }
    }
    on_disk.sort_unstable();
    assert_eq!(
        listed, on_disk,
        "every bad fixture needs a case, and every case a fixture"
    );
    assert!(
        CASES.len() >= 30,
        "the issue asks for at least 30 broken configs"
    );
}

#[test]
fn every_problem_in_a_file_is_reported_at_once_sorted_by_line() {
    let sandbox = Sandbox::with(&["bad/many_problems.yaml"]);
    let output = sandbox.run(&["validate", "-c", "many_problems.yaml"]);
    assert_bad_input(&output);
    let found = problems(&stderr(&output));
    let summary: Vec<(Option<usize>, &str)> =
        found.iter().map(|p| (p.line, p.message.as_str())).collect();
    assert_eq!(
        summary,
        vec![
            (Some(5), "`web` depends on unknown component `ap`"),
            (Some(7), "empty command"),
            (Some(8), "`api` depends on itself"),
            (
                Some(9),
                "invalid component name `bad name`: spaces are not allowed"
            ),
            (
                Some(13),
                "unparsable duration: `soon` is not a duration; write e.g. `500ms`, `10s` or `2m`"
            ),
        ]
    );
    let err = stderr(&output);
    assert!(err.contains("help: did you mean `api`?"), "{err}");
    assert!(
        err.contains("5 problems found; nothing was started or written"),
        "{err}"
    );
}

#[test]
fn a_cycle_names_every_member_and_an_edge_that_breaks_it() {
    let sandbox = Sandbox::with(&["bad/cycle.yaml"]);
    let output = sandbox.run(&["validate", "-c", "cycle.yaml"]);
    assert_bad_input(&output);
    let err = stderr(&output);
    assert!(
        err.contains("dependency cycle: db -> queue -> cache -> db"),
        "{err}"
    );
    assert!(
        err.contains("help: remove the dependency of `db` on `cache` to break this cycle"),
        "{err}"
    );
    // `web` depends on the cycle but is not part of it.
    assert!(!err.contains("web ->"), "{err}");
}

#[test]
fn a_layer_no_razar_env_yaml_given_declares_is_refused() {
    let sandbox = Sandbox::with(&["abzu/razar_env.yaml"]);
    sandbox.write(
        "app.yaml",
        "version: 1\ncomponents:\n  - {name: x, command: \"true\", layer: nosuch}\n",
    );
    let output = sandbox.run(&["validate", "-c", "app.yaml", "-c", "razar_env.yaml"]);
    assert_bad_input(&output);
    let err = stderr(&output);
    assert!(
        err.contains("app.yaml:3:") && err.contains("`x` runs in layer `nosuch`"),
        "{err}"
    );
    assert!(
        err.contains("the layers declared are: crown, inanna, razar"),
        "{err}"
    );
}

#[test]
fn conflicting_files_are_both_named_with_their_lines() {
    let sandbox = Sandbox::new();
    sandbox.copy(&fixture("bad/conflict/base.yaml"), "base.yaml".as_ref());
    sandbox.copy(
        &fixture("bad/conflict/override.yaml"),
        "override.yaml".as_ref(),
    );
    let before = sandbox.tree();
    let output = sandbox.run(&[
        "plan",
        "-c",
        "base.yaml",
        "-c",
        "override.yaml",
        "-o",
        "p.json",
    ]);
    assert_bad_input(&output);
    let found = problems(&stderr(&output));
    let summary: Vec<(&str, Option<usize>, &str)> = found
        .iter()
        .map(|p| (p.file.as_str(), p.line, p.message.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "override.yaml",
                Some(2),
                "`parallelism` is 4 here but 2 in base.yaml:2"
            ),
            (
                "override.yaml",
                Some(5),
                "conflicting definitions of `redis`: `command` here differs from base.yaml:5"
            ),
        ]
    );
    assert!(
        stderr(&output)
            .contains("component `redis` is declared in both base.yaml and override.yaml"),
        "{}",
        stderr(&output)
    );
    assert_eq!(before, sandbox.tree());
}

#[test]
fn a_ten_megabyte_config_with_one_mistake_at_the_end_is_reported_at_its_line() {
    // About 10 MB of valid components (split into parallel pieces), then a duplicate name.
    let sandbox = Sandbox::new();
    let mut text = String::from("version: 1\ncomponents:\n");
    let mut n = 0;
    while text.len() < 10 * 1024 * 1024 {
        let deps = if n > 0 {
            format!("c{:06}", n - 1)
        } else {
            String::new()
        };
        text.push_str(&format!(
            "  - name: c{n:06}\n    command: [\"true\", \"{n}\"]\n    depends_on: [{deps}]\n    priority: {}\n",
            n % 5
        ));
        n += 1;
    }
    text.push_str("  - name: c000007\n    command: [\"again\"]\n");
    let last_line = text.lines().count() - 1;
    sandbox.write("big.yaml", &text);
    let before = sandbox.tree();
    let output = sandbox.run(&["plan", "-c", "big.yaml", "-o", "plans/big.json"]);
    assert_bad_input(&output);
    let found = problems(&stderr(&output));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].message, "duplicate component name `c000007`");
    assert_eq!(found[0].line, Some(last_line));
    assert!(
        stderr(&output).contains("already declared at big.yaml:31"),
        "{}",
        stderr(&output)
    );
    assert_eq!(before, sandbox.tree());
}

#[test]
fn a_ten_megabyte_file_of_garbage_is_refused_without_reading_it_as_text() {
    let sandbox = Sandbox::new();
    let mut bytes = Vec::with_capacity(10 * 1024 * 1024);
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    while bytes.len() < 10 * 1024 * 1024 {
        // xorshift: deterministic noise, invalid UTF-8 within the first bytes.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    sandbox.write("noise.yaml", &bytes);
    let before = sandbox.tree();
    let output = sandbox.run(&["validate", "-c", "noise.yaml"]);
    assert_bad_input(&output);
    let found = problems(&stderr(&output));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].message.starts_with("config is not UTF-8 text"),
        "{found:?}"
    );
    assert_eq!(before, sandbox.tree());
}

#[test]
fn files_that_cannot_be_read_are_reported_with_a_hint() {
    let sandbox = Sandbox::new();
    std::fs::create_dir(sandbox.path().join("conf.d")).expect("dir");
    let before = sandbox.tree();
    let output = sandbox.run(&["validate", "-c", "missing.yaml", "-c", "conf.d"]);
    assert_bad_input(&output);
    let found = problems(&stderr(&output));
    let messages: Vec<&str> = found.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].starts_with("is a directory, not a config file"),
        "{messages:?}"
    );
    assert!(
        messages[1].starts_with("cannot read config: No such file"),
        "{messages:?}"
    );
    assert_eq!(before, sandbox.tree());
}

#[test]
fn an_unknown_target_suggests_the_nearest_component() {
    let sandbox = Sandbox::with(&["good/every_field.yaml"]);
    let before = sandbox.tree();
    let output = sandbox.run(&["plan", "-c", "every_field.yaml", "apii", "-o", "p.json"]);
    assert_bad_input(&output);
    let err = stderr(&output);
    assert!(
        err.contains("× command line: unknown target `apii`"),
        "{err}"
    );
    assert!(err.contains("help: did you mean `api`?"), "{err}");
    assert_eq!(before, sandbox.tree());
}

#[test]
fn usage_errors_exit_2() {
    let sandbox = Sandbox::new();
    let output = sandbox.run(&["validate"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("neither ./razar.yaml nor ./config/razar.yaml exists"),
        "{}",
        stderr(&output)
    );
    let output = sandbox.run(&["plan", "--parallelism", "0"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--parallelism"),
        "{}",
        stderr(&output)
    );
    let output = sandbox.run(&["plan", "--format", "yaml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(sandbox.tree().is_empty());
}
