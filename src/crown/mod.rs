//! The Crown link: razar's only WebSocket. [`protocol`] defines the messages (version 1);
//! [`link`] connects, performs the handshake and keeps the status stream, with timeouts,
//! retries and backoff. Nothing here writes files or decides plans: what Crown says is
//! returned to the caller, which hands suggestions to `plan` and records exchanges in `state`.

pub mod link;
pub mod protocol;
pub mod session;

#[cfg(test)]
mod tests {
    //! The schemas in `schemas/crown/` against the examples in docs/crown-protocol.md and
    //! the messages razar builds: a change to either that breaks the other fails here.

    use std::path::Path;

    use serde_json::{Value, json};

    use super::protocol::{Brief, OpenIssue, Outgoing};
    use crate::exec::{Event, EventKind, ExitInfo};

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    fn validator(schema: &str) -> jsonschema::Validator {
        let path = root().join(schema);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{schema}: {e}"));
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{schema}: {e}"));
        jsonschema::validator_for(&value).unwrap_or_else(|e| panic!("{schema}: {e}"))
    }

    fn assert_valid(schema: &str, instance: &Value) {
        let errors: Vec<String> = validator(schema)
            .iter_errors(instance)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{instance} against {schema}: {errors:?}");
    }

    #[test]
    fn every_documented_example_matches_its_schema() {
        let doc = std::fs::read_to_string(root().join("docs/crown-protocol.md")).unwrap();
        let mut schema: Option<String> = None;
        let mut block: Option<String> = None;
        let mut checked = 0;
        for line in doc.lines() {
            if let Some(text) = block.as_mut() {
                if line.starts_with("```") {
                    let text = block.take().expect("inside a block");
                    if let Some(schema) = schema.take() {
                        let value: Value = serde_json::from_str(&text)
                            .unwrap_or_else(|e| panic!("example for {schema}: {e}\n{text}"));
                        assert_valid(&schema, &value);
                        checked += 1;
                    }
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            } else if line.starts_with("```json") {
                block = Some(String::new());
            } else if let Some(rest) = line.strip_prefix("Schema: `") {
                schema = Some(rest.trim_end_matches('`').to_owned());
            }
        }
        assert!(checked >= 10, "only {checked} examples found");
    }

    #[test]
    fn every_schema_is_documented() {
        let doc = std::fs::read_to_string(root().join("docs/crown-protocol.md")).unwrap();
        for entry in std::fs::read_dir(root().join("schemas/crown")).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let schema = format!("schemas/crown/{name}");
            let _ = validator(&schema);
            assert!(
                doc.contains(&schema),
                "{schema} is not described in docs/crown-protocol.md"
            );
        }
    }

    #[test]
    fn messages_razar_builds_match_the_schemas() {
        let brief = Brief {
            priority_map: [("api".to_owned(), 1)].into(),
            current_status: [("api".to_owned(), "unknown".to_owned())].into(),
            open_issues: vec![OpenIssue {
                id: "worker".to_owned(),
                detail: "quarantined".to_owned(),
            }],
        };
        let handshake: Value = serde_json::from_str(&Outgoing::handshake(brief).to_text()).unwrap();
        assert_valid("schemas/crown/handshake.schema.json", &handshake);
        let repair = Outgoing::Repair {
            component: "api".to_owned(),
            error: "boom".to_owned(),
            log_tail: "trace".to_owned(),
            class: "crash".to_owned(),
        };
        assert_valid(
            "schemas/crown/repair.schema.json",
            &serde_json::from_str(&repair.to_text()).unwrap(),
        );
        let exit = ExitInfo {
            code: Some(1),
            signal: None,
        };
        let c = || "api".to_owned();
        let kinds = vec![
            EventKind::Adopted {
                component: c(),
                pid: 1,
                pgid: 1,
            },
            EventKind::Skipped {
                component: c(),
                reason: "done".to_owned(),
            },
            EventKind::Blocked {
                component: c(),
                reason: "db failed".to_owned(),
            },
            EventKind::Spawned {
                component: c(),
                attempt: 1,
                pid: 1,
                pgid: 1,
                start_time: 1,
            },
            EventKind::Ready {
                component: c(),
                attempt: 1,
                after_ms: 5,
            },
            EventKind::Completed {
                component: c(),
                attempt: 1,
                after_ms: 5,
            },
            EventKind::AttemptFailed {
                component: c(),
                attempt: 1,
                reason: "exit".to_owned(),
                exit: Some(exit),
                log_tail: vec![],
            },
            EventKind::RestartScheduled {
                component: c(),
                next_attempt: 2,
                delay_ms: 200,
            },
            EventKind::Quarantined {
                component: c(),
                attempts: 3,
                reason: "exit".to_owned(),
                exit: None,
                log_tail: vec![],
            },
            EventKind::Exited {
                component: c(),
                exit,
                uptime_ms: 9,
            },
            EventKind::Stopping {
                component: c(),
                signal: "SIGTERM".to_owned(),
            },
            EventKind::Stopped {
                component: c(),
                exit: None,
                forced: false,
            },
        ];
        for kind in kinds {
            let event = Event {
                at_ms: 1,
                time: "2025-10-04T09:15:02.183Z".to_owned(),
                kind,
            };
            let status = super::link::status_of(&event).expect("a component state change");
            assert_valid(
                "schemas/crown/status.schema.json",
                &serde_json::from_str(&status.to_text()).unwrap(),
            );
        }
        let entry = crate::state::crown::Interaction {
            timestamp: "t".to_owned(),
            initiator: "crown".to_owned(),
            action: "suggestions".to_owned(),
            response_summary: "2 applied".to_owned(),
        };
        assert_valid(
            "schemas/crown/interaction_log.schema.json",
            &serde_json::to_value(entry).unwrap(),
        );
        let settings = super::link::Settings::resolve(None, Some("ws://u:p@127.0.0.1:9/crown?t=1"))
            .expect("a valid URL");
        let failed = super::link::Failed {
            sent: handshake,
            at: "t".to_owned(),
            attempts: 2,
            elapsed: std::time::Duration::from_millis(300),
            errors: vec![
                "attempt 1: cannot connect".to_owned(),
                "attempt 2: cannot connect".to_owned(),
            ],
            refused: None,
            rejected: vec![],
        };
        let offline = super::session::offline_response(&settings, &failed);
        assert_eq!(offline["url"], json!("ws://127.0.0.1:9/crown"));
        assert_valid("schemas/crown/offline_response.schema.json", &offline);
    }
}
