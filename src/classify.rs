//! Failure classification: why a quarantined component failed, as one of five classes, decided
//! by an ordered rule table over its log tail (the successor of ABZU's issue analyzer).
//!
//! The table is data ([`RULES`]) so docs/state.md can print it verbatim (a test keeps the two
//! identical). This module only reads text: it never touches processes or files.

use std::fmt;
use std::sync::OnceLock;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use crate::exec::ExitInfo;

/// What kind of problem made a component fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Something the component needs is not installed or not importable.
    Dependency,
    /// The component is started or set up wrongly (paths, permissions, settings, probe).
    Config,
    /// The component's own code failed.
    Logic,
    /// A service or network it talks to is unavailable.
    External,
    /// The machine ran out of something (disk, memory, ports, file descriptors).
    Resource,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Dependency => "dependency",
            Class::Config => "config",
            Class::Logic => "logic",
            Class::External => "external",
            Class::Resource => "resource",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the classification table: a case-insensitive regex over one log line.
#[derive(Debug)]
pub struct Rule {
    /// Stable identifier, recorded in quarantine records.
    pub id: &'static str,
    pub class: Class,
    pub pattern: &'static str,
    /// What the operator should try.
    pub hint: &'static str,
}

/// The rules, in the order they are tried on each line. Earlier rows win on the same line, so
/// specific causes (a missing module) come before the generic symptoms that accompany them (a
/// traceback).
pub const RULES: &[Rule] = &[
    Rule {
        id: "disk-full",
        class: Class::Resource,
        pattern: r"no space left on device|disk quota exceeded|\bENOSPC\b",
        hint: "free disk space (or raise the quota) on the volume the component writes to",
    },
    Rule {
        id: "out-of-memory",
        class: Class::Resource,
        pattern: r"cannot allocate memory|out of memory|\bMemoryError\b|std::bad_alloc|memory allocation of \d+ bytes failed|\boom[- ]?kill",
        hint: "give the component more memory or run fewer components at once (`parallelism`)",
    },
    Rule {
        id: "file-descriptors",
        class: Class::Resource,
        pattern: r"too many open files|\bEMFILE\b",
        hint: "raise the open-file limit (`ulimit -n`) for razar and its components",
    },
    Rule {
        id: "port-in-use",
        class: Class::Resource,
        pattern: r"address already in use|\bEADDRINUSE\b|AddrInUse",
        hint: "another process holds the port: stop it or configure a free port",
    },
    Rule {
        id: "process-limit",
        class: Class::Resource,
        pattern: r"resource temporarily unavailable|\bEAGAIN\b|cannot fork|fork: retry",
        hint: "the process or thread limit is reached (`ulimit -u`); lower `parallelism`",
    },
    Rule {
        id: "python-import",
        class: Class::Dependency,
        pattern: r"ModuleNotFoundError|no module named|\bImportError\b|cannot import name|circular import",
        hint: "install the missing Python package in the component's environment (its `layer`), or fix the import cycle",
    },
    Rule {
        id: "shared-library",
        class: Class::Dependency,
        pattern: r"error while loading shared libraries|cannot open shared object file|library not loaded",
        hint: "install the missing system library",
    },
    Rule {
        id: "program-missing",
        class: Class::Dependency,
        pattern: r"command not found|executable file not found|(spawn|exec)\w*\b.*(no such file or directory|not found)",
        hint: "install the program or fix `command` (razar runs argv directly, without a shell, unless the command is a string)",
    },
    Rule {
        id: "package-missing",
        class: Class::Dependency,
        pattern: r"cannot find module|MODULE_NOT_FOUND|could not find a version that satisfies|no matching distribution|package \S+ (is )?not (found|installed)|unresolved import",
        hint: "install the missing package",
    },
    Rule {
        id: "permission",
        class: Class::Config,
        pattern: r"permission denied|\bEACCES\b|operation not permitted|\bEPERM\b",
        hint: "fix file permissions or the user the component runs as",
    },
    Rule {
        id: "missing-file",
        class: Class::Config,
        pattern: r"no such file or directory|\bENOENT\b|file not found|FileNotFoundError",
        hint: "a path the component uses does not exist: check `cwd`, `env` and its arguments",
    },
    Rule {
        id: "bad-setting",
        class: Class::Config,
        pattern: r"\bKeyError\b|environment variable \S+ (is )?(not set|missing)|missing (required )?(config|setting|option|argument|environment)|invalid (config|configuration|setting|value|option|argument)|unrecognized (option|argument)|unknown (option|flag|argument)|^usage:",
        hint: "a setting, argument or environment variable is missing or wrong: check the component's `command` and `env`",
    },
    Rule {
        id: "bad-config-file",
        class: Class::Config,
        pattern: r"JSONDecodeError|\b(yaml|toml|json|ini)\b.*\b(error|invalid)\b",
        hint: "a configuration file the component reads does not parse",
    },
    Rule {
        id: "never-ready",
        class: Class::Config,
        pattern: r"not ready (with)?in|readiness probe|health check failed",
        hint: "the service runs but its probe never passed: check the probe's address, or raise `ready.timeout`",
    },
    Rule {
        id: "connection-refused",
        class: Class::External,
        pattern: r"connection refused|\bECONNREFUSED\b|connection reset|\bECONNRESET\b|broken pipe",
        hint: "a service it connects to is down: declare it in `depends_on` or start it first",
    },
    Rule {
        id: "name-resolution",
        class: Class::External,
        pattern: r"name or service not known|temporary failure in name resolution|could not resolve|getaddrinfo|no route to host|network is unreachable",
        hint: "the network or DNS is unavailable",
    },
    Rule {
        id: "timeout",
        class: Class::External,
        pattern: r"timed out|\btimeout\b|deadline exceeded|\bETIMEDOUT\b",
        hint: "something it waits for answers too slowly or not at all",
    },
    Rule {
        id: "remote-error",
        class: Class::External,
        pattern: r"HTTP (error )?5\d\d|service unavailable|bad gateway|certificate|\bSSL\b|TLS handshake|401 unauthorized|403 forbidden|rate limit",
        hint: "a remote service refused or failed the request: check its status and the credentials",
    },
    Rule {
        id: "crash",
        class: Class::Logic,
        pattern: r"traceback \(most recent call last\)|panicked at|segmentation fault|core dumped|assertion failed|\bAssertionError\b|stack overflow|null pointer|\b(TypeError|ValueError|NameError|AttributeError|IndexError|ZeroDivisionError|RuntimeError|SyntaxError)\b",
        hint: "the component's code failed: read the log (`razar logs NAME`) and fix the bug",
    },
    Rule {
        id: "error-line",
        class: Class::Logic,
        pattern: r"\b(error|exception|fatal)\b",
        hint: "the component reported an error: read the log (`razar logs NAME`)",
    },
];

/// Hint when nothing matches.
const DEFAULT_HINT: &str = "the component failed without saying why: read the log (`razar logs NAME`) and run its command by hand";

/// The class of one failure and what decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    pub class: Class,
    /// The rule that matched (`exit-127` and the like for exit-status fallbacks, `default` when
    /// nothing matched).
    pub rule: String,
    /// The line the rule matched, when one did.
    pub matched: Option<String>,
    pub hint: String,
}

fn compiled() -> &'static [Regex] {
    static COMPILED: OnceLock<Vec<Regex>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        RULES
            .iter()
            .map(|rule| {
                RegexBuilder::new(rule.pattern)
                    .case_insensitive(true)
                    .multi_line(true)
                    .build()
                    .expect("RULES patterns are valid regexes (tested)")
            })
            .collect()
    })
}

/// Classifies a failure. The log lines are read newest first and, on each line, the rules in
/// table order: the first match decides, because the last thing a program says before dying is
/// usually its cause. Then the executor's `reason` is tried the same way; then the exit status
/// (127: program missing, 126: not executable, SIGKILL: out of memory, since razar's own
/// kills come with a reason that matched earlier);
/// otherwise the failure is `logic`.
pub fn classify(log_tail: &[String], reason: &str, exit: Option<ExitInfo>) -> Classification {
    let regexes = compiled();
    let lines = log_tail
        .iter()
        .rev()
        .map(String::as_str)
        .chain(std::iter::once(reason));
    for line in lines {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some((rule, _)) = RULES
            .iter()
            .zip(regexes)
            .find(|(_, regex)| regex.is_match(line))
        {
            return Classification {
                class: rule.class,
                rule: rule.id.to_owned(),
                matched: Some(line.to_owned()),
                hint: rule.hint.to_owned(),
            };
        }
    }
    let fallback = |class: Class, rule: &str, hint: &str| Classification {
        class,
        rule: rule.to_owned(),
        matched: None,
        hint: hint.to_owned(),
    };
    match exit {
        Some(ExitInfo {
            code: Some(127), ..
        }) => fallback(
            Class::Dependency,
            "exit-127",
            "exit code 127 means the shell could not find the program: install it or fix `command`",
        ),
        Some(ExitInfo {
            code: Some(126), ..
        }) => fallback(
            Class::Config,
            "exit-126",
            "exit code 126 means the program is not executable: fix its permissions",
        ),
        Some(ExitInfo {
            code: None,
            signal: Some(9),
        }) => fallback(
            Class::Resource,
            "sigkill",
            "killed by SIGKILL from outside razar, usually the kernel's out-of-memory killer: check `dmesg`",
        ),
        _ => fallback(Class::Logic, "default", DEFAULT_HINT),
    }
}

/// The rule table as a markdown table (docs/state.md prints it).
pub fn rules_markdown() -> String {
    let mut out = String::from("| # | rule | class | matches (case-insensitive regex) | hint |\n");
    out.push_str("| --- | --- | --- | --- | --- |\n");
    for (i, rule) in RULES.iter().enumerate() {
        out.push_str(&format!(
            "| {} | `{}` | {} | `{}` | {} |\n",
            i + 1,
            rule.id,
            rule.class,
            rule.pattern.replace('|', "\\|"),
            rule.hint.replace('|', "\\|"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    fn class_of(text: &str) -> Class {
        classify(&lines(text), "exited with exit code 1", None).class
    }

    #[test]
    fn every_pattern_compiles_and_ids_are_unique() {
        assert_eq!(compiled().len(), RULES.len());
        let mut ids: Vec<_> = RULES.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), RULES.len(), "rule ids must be unique");
    }

    #[test]
    fn python_missing_module_is_a_dependency_not_a_crash() {
        let tail = "Traceback (most recent call last):\n  File \"app.py\", line 1, in <module>\n    import redis\nModuleNotFoundError: No module named 'redis'";
        let c = classify(&lines(tail), "exited with exit code 1", None);
        assert_eq!(c.class, Class::Dependency);
        assert_eq!(c.rule, "python-import");
        assert_eq!(
            c.matched.as_deref(),
            Some("ModuleNotFoundError: No module named 'redis'")
        );
    }

    #[test]
    fn abzu_circular_import_is_a_dependency() {
        // The row in ABZU's quarantine_log.md.
        assert_eq!(
            class_of(
                "ImportError: cannot import name 'run_validated_task' from partially initialized module 'agents.guardian' (most likely due to a circular import)"
            ),
            Class::Dependency
        );
    }

    #[test]
    fn the_newest_line_decides() {
        // An old, recovered connection error does not hide the crash that ended the process.
        let tail = "warning: connection refused, retrying\nconnected\nTraceback (most recent call last):\nZeroDivisionError: division by zero";
        assert_eq!(class_of(tail), Class::Logic);
        let tail = "starting\nredis.exceptions.ConnectionError: Error 111 connecting to localhost:6379. Connection refused.";
        assert_eq!(class_of(tail), Class::External);
    }

    #[test]
    fn each_class_has_a_recognisable_case() {
        assert_eq!(
            class_of("OSError: [Errno 98] Address already in use"),
            Class::Resource
        );
        assert_eq!(
            class_of("write failed: No space left on device"),
            Class::Resource
        );
        assert_eq!(
            class_of("open config.yaml: permission denied"),
            Class::Config
        );
        assert_eq!(class_of("KeyError: 'DATABASE_URL'"), Class::Config);
        assert_eq!(
            class_of("urllib.error.URLError: <urlopen error [Errno -2] Name or service not known>"),
            Class::External
        );
        assert_eq!(
            class_of("thread 'main' panicked at src/main.rs:3:5:\nexplicit panic"),
            Class::Logic
        );
    }

    #[test]
    fn the_reason_is_used_when_the_log_says_nothing() {
        let c = classify(
            &[],
            "not ready within 20s: probe tcp 127.0.0.1:1 failed",
            None,
        );
        assert_eq!((c.class, c.rule.as_str()), (Class::Config, "never-ready"));
        let c = classify(
            &[],
            "cannot spawn `nope`: No such file or directory (os error 2)",
            None,
        );
        assert_eq!(
            (c.class, c.rule.as_str()),
            (Class::Dependency, "program-missing")
        );
    }

    #[test]
    fn exit_status_fallbacks() {
        let exit = |code, signal| Some(ExitInfo { code, signal });
        assert_eq!(
            classify(&[], "exited", exit(Some(127), None)).class,
            Class::Dependency
        );
        assert_eq!(
            classify(&[], "exited", exit(Some(126), None)).class,
            Class::Config
        );
        assert_eq!(
            classify(&[], "exited", exit(None, Some(9))).class,
            Class::Resource
        );
        let c = classify(&lines("\n\n"), "exited", exit(Some(3), None));
        assert_eq!((c.class, c.rule.as_str()), (Class::Logic, "default"));
        assert_eq!(c.matched, None);
    }

    #[test]
    fn docs_print_the_current_table() {
        let docs = include_str!("../docs/state.md");
        assert!(
            docs.contains(&rules_markdown()),
            "docs/state.md must contain the table from classify::rules_markdown(), verbatim:\n{}",
            rules_markdown()
        );
    }
}
