//! The Crown wire protocol, version 1: what razar sends, what it accepts, and how a received
//! frame becomes a typed message or a [`Rejected`] reason.
//!
//! Every message is one JSON object in one text frame, tagged by `type`. Parsing never fails
//! the caller: a frame that is too large, not JSON, not an object, of an unknown type or with
//! a malformed body becomes a [`Rejected`] value that the link logs and skips. This module
//! does no I/O; docs/crown-protocol.md describes every message with examples, and
//! `schemas/crown/` holds a JSON Schema for each.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::plan::suggest::Suggestion;

/// The protocol version razar speaks (sent in every handshake).
pub const PROTOCOL: u32 = 1;

/// Largest frame or message razar accepts: anything larger is refused by the WebSocket layer.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// What razar tells Crown before a boot (ABZU's mission brief).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Brief {
    /// Component → priority, as the plan orders them (lower boots earlier).
    #[serde(default)]
    pub priority_map: BTreeMap<String, i64>,
    /// Component → last known state (`ready`, `completed`, `failed`, `quarantined`, …).
    #[serde(default)]
    pub current_status: BTreeMap<String, String>,
    /// Problems Crown should know about: quarantined components with their reasons.
    #[serde(default)]
    pub open_issues: Vec<OpenIssue>,
}

/// One open issue in a brief, in ABZU's shape (`{"id": …, "detail": …}`); a bare string is
/// read as the id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenIssue {
    pub id: String,
    pub detail: String,
}

impl<'de> Deserialize<'de> for OpenIssue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Detail {
            id: String,
            #[serde(default)]
            detail: String,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Id(String),
            Detail(Detail),
        }
        match Raw::deserialize(deserializer) {
            Ok(Raw::Id(id)) => Ok(OpenIssue {
                id,
                detail: String::new(),
            }),
            Ok(Raw::Detail(d)) => Ok(OpenIssue {
                id: d.id,
                detail: d.detail,
            }),
            Err(_) => Err(serde::de::Error::custom(
                "an open issue is a string or {\"id\": …, \"detail\": …}",
            )),
        }
    }
}

/// razar → Crown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outgoing {
    /// Opens every connection: the mission brief.
    Handshake { protocol: u32, brief: Brief },
    /// A component changed state during a boot.
    Status {
        component: String,
        state: String,
        /// RFC 3339 UTC time of the change.
        at: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A component failed for good: Crown may answer with a `repair_suggestion`.
    Repair {
        component: String,
        error: String,
        log_tail: String,
        class: String,
    },
}

impl Outgoing {
    pub fn handshake(brief: Brief) -> Self {
        Outgoing::Handshake {
            protocol: PROTOCOL,
            brief,
        }
    }

    /// The frame text.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("outgoing messages serialise: plain data, string keys")
    }

    /// The message `type`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Outgoing::Handshake { .. } => "handshake",
            Outgoing::Status { .. } => "status",
            Outgoing::Repair { .. } => "repair",
        }
    }
}

/// Crown's answer to a handshake.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HandshakeAck {
    /// `ok` (or ABZU's `accepted`/`ack`) accepts the brief; anything else refuses it.
    pub ack: String,
    /// The protocol version Crown speaks, when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    /// Models Crown already serves.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Components under maintenance: skipped for this boot.
    #[serde(default)]
    pub downtime: BTreeMap<String, Downtime>,
    #[serde(default)]
    pub suggestions: Vec<Suggestion>,
    /// Why Crown refused, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Suggestions that did not parse, with why: left out, the rest of the reply stands.
    #[serde(skip)]
    pub malformed: Vec<String>,
}

impl HandshakeAck {
    /// Whether Crown accepted the brief.
    pub fn accepted(&self) -> bool {
        matches!(
            self.ack.trim().to_ascii_lowercase().as_str(),
            "ok" | "ack" | "accepted"
        )
    }
}

/// One downtime entry: `{"description": …}`, or a bare string (taken as the description).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Downtime {
    pub description: String,
    /// When the maintenance is expected to end, as Crown wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

impl<'de> Deserialize<'de> for Downtime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Detail {
            #[serde(default)]
            description: String,
            #[serde(default)]
            until: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Detail(Detail),
        }
        Ok(match Raw::deserialize(deserializer)? {
            Raw::Text(description) => Downtime {
                description,
                until: None,
            },
            Raw::Detail(d) => Downtime {
                description: d.description,
                until: d.until,
            },
        })
    }
}

/// Crown → razar.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    HandshakeAck(HandshakeAck),
    /// Advice for the plan; during a boot it applies to steps not yet started.
    Suggestions(Vec<Suggestion>),
    /// Crown's answer to a `repair` request.
    RepairSuggestion(RepairSuggestion),
}

impl Incoming {
    pub fn kind(&self) -> &'static str {
        match self {
            Incoming::HandshakeAck(_) => "handshake_ack",
            Incoming::Suggestions(_) => "suggestions",
            Incoming::RepairSuggestion(_) => "repair_suggestion",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepairSuggestion {
    pub component: String,
    /// A unified diff.
    pub patch: String,
    /// Commands to run against the patched component before trusting it.
    #[serde(default)]
    pub tests: Vec<Value>,
}

#[derive(Deserialize)]
struct SuggestionsBody {
    items: Vec<Suggestion>,
}

/// Why a received frame was not acted on. Never fatal: the link logs it and reads on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("frame of {0} bytes is over the 1 MiB limit")]
    TooLarge(usize),
    #[error("binary frame: Crown speaks JSON text frames")]
    Binary,
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("message is not a JSON object")]
    NotAnObject,
    #[error("message has no `type` (and is not ABZU's bare `ack` reply)")]
    NoType,
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    #[error("malformed `{kind}` message: {detail}")]
    Malformed { kind: String, detail: String },
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Incoming, Rejected> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(Rejected::TooLarge(text.len()));
    }
    let value: Value =
        serde_json::from_str(text).map_err(|err| Rejected::InvalidJson(err.to_string()))?;
    parse_value(value)
}

/// Parses an already decoded message.
pub fn parse_value(value: Value) -> Result<Incoming, Rejected> {
    let Value::Object(map) = &value else {
        return Err(Rejected::NotAnObject);
    };
    let kind = match map.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(_) => return Err(Rejected::NoType),
        // ABZU's Crown answered with a bare {ack, capabilities, downtime}.
        None if map.contains_key("ack") => "handshake_ack".to_owned(),
        None => return Err(Rejected::NoType),
    };
    let malformed = |err: serde_json::Error| Rejected::Malformed {
        kind: kind.clone(),
        detail: err.to_string(),
    };
    let mut body = value.clone();
    if let Value::Object(map) = &mut body {
        map.remove("type");
    }
    match kind.as_str() {
        "handshake_ack" => {
            // One suggestion that does not parse is left out, not the whole reply with it.
            let bad = take_malformed_suggestions(&mut body, "suggestions");
            serde_json::from_value::<HandshakeAck>(body)
                .map(|mut ack| {
                    ack.malformed = bad;
                    Incoming::HandshakeAck(ack)
                })
                .map_err(malformed)
        }
        "suggestions" => {
            for why in take_malformed_suggestions(&mut body, "items") {
                tracing::warn!(target: "razar::crown", "suggestions message: {why}");
            }
            serde_json::from_value::<SuggestionsBody>(body)
                .map(|b| Incoming::Suggestions(b.items))
                .map_err(malformed)
        }
        "repair_suggestion" => serde_json::from_value(body)
            .map(Incoming::RepairSuggestion)
            .map_err(malformed),
        // Crown names the type: what is logged of it is bounded.
        _ => Err(Rejected::UnknownType(clipped(&kind, 80))),
    }
}

/// At most `max` characters of `text`, marked with `…` when cut.
fn clipped(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Removes from `body[field]` (a list of suggestions) the items that do not parse as one,
/// returning why each did not.
fn take_malformed_suggestions(body: &mut Value, field: &str) -> Vec<String> {
    let Some(Value::Array(items)) = body.get_mut(field) else {
        return Vec::new();
    };
    let mut bad = Vec::new();
    let mut index = 0;
    items.retain(|item| {
        index += 1;
        match serde_json::from_value::<Suggestion>(item.clone()) {
            Ok(_) => true,
            Err(err) => {
                bad.push(format!("suggestion {index} is malformed ({err}): left out"));
                false
            }
        }
    });
    bad
}

/// Capability names compare equal when they match ignoring case and punctuation:
/// `GLM-4.1V`, `glm 4.1v` and `GLM41V` are one name.
pub fn normalize_capability(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Whether Crown's advertised `capabilities` cover a model known by `name` or any `aliases`.
pub fn advertises(capabilities: &[String], name: &str, aliases: &[String]) -> bool {
    let wanted: Vec<String> = std::iter::once(name)
        .chain(aliases.iter().map(String::as_str))
        .map(normalize_capability)
        .filter(|n| !n.is_empty())
        .collect();
    capabilities
        .iter()
        .map(|c| normalize_capability(c))
        .any(|c| wanted.contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_serialises_as_the_design_shows() {
        let brief = Brief {
            priority_map: BTreeMap::from([("redis".to_owned(), 0)]),
            current_status: BTreeMap::from([("redis".to_owned(), "ready".to_owned())]),
            open_issues: vec![],
        };
        assert_eq!(
            Outgoing::handshake(brief).to_text(),
            r#"{"type":"handshake","protocol":1,"brief":{"priority_map":{"redis":0},"current_status":{"redis":"ready"},"open_issues":[]}}"#
        );
    }

    #[test]
    fn typed_and_bare_abzu_acks_parse_alike() {
        let typed = parse(r#"{"type":"handshake_ack","ack":"ok","capabilities":["GLM4V"],"downtime":{"vision":{"description":"upgrade"}}}"#).unwrap();
        let bare = parse(r#"{"ack":"ok","capabilities":["GLM4V"],"downtime":{"vision":{"description":"upgrade"}}}"#).unwrap();
        assert_eq!(typed, bare);
        let Incoming::HandshakeAck(ack) = typed else {
            panic!("expected an ack")
        };
        assert!(ack.accepted());
        assert_eq!(ack.downtime["vision"].description, "upgrade");
    }

    #[test]
    fn downtime_as_a_bare_string_is_its_description() {
        let Incoming::HandshakeAck(ack) =
            parse(r#"{"ack":"accepted","downtime":{"db":"disk swap"}}"#).unwrap()
        else {
            panic!("expected an ack")
        };
        assert_eq!(ack.downtime["db"].description, "disk swap");
    }

    #[test]
    fn refusals_are_not_accepted() {
        let Incoming::HandshakeAck(ack) = parse(r#"{"ack":"denied"}"#).unwrap() else {
            panic!("expected an ack")
        };
        assert!(!ack.accepted());
    }

    #[test]
    fn a_malformed_suggestion_is_left_out_of_the_reply_not_the_reply() {
        let reply = r#"{"type":"handshake_ack","ack":"ok","downtime":{"cache":"swap"},
            "suggestions":[{"action":"skip","component":7},{"action":"skip","component":"api"}]}"#;
        let Ok(Incoming::HandshakeAck(ack)) = parse(reply) else {
            panic!("the reply stands");
        };
        assert!(ack.accepted());
        assert_eq!(ack.downtime.len(), 1);
        assert_eq!(ack.suggestions.len(), 1);
        assert_eq!(ack.suggestions[0].component.as_deref(), Some("api"));
        assert_eq!(ack.malformed.len(), 1);
        assert!(
            ack.malformed[0].starts_with("suggestion 1 is malformed"),
            "{:?}",
            ack.malformed
        );
    }

    #[test]
    fn bad_frames_become_reasons_not_errors() {
        assert!(matches!(parse("{nope"), Err(Rejected::InvalidJson(_))));
        assert_eq!(parse("[1,2]"), Err(Rejected::NotAnObject));
        assert_eq!(parse(r#"{"hello":1}"#), Err(Rejected::NoType));
        assert_eq!(
            parse(r#"{"type":"gossip"}"#),
            Err(Rejected::UnknownType("gossip".to_owned()))
        );
        // A type name Crown makes huge is logged clipped.
        let long = format!(r#"{{"type":"{}"}}"#, "t".repeat(500_000));
        match parse(&long) {
            Err(Rejected::UnknownType(kind)) => {
                assert_eq!(kind.chars().count(), 81, "{kind}");
                assert!(kind.ends_with('…'));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(r#"{"type":"suggestions","items":"api"}"#),
            Err(Rejected::Malformed { .. })
        ));
        let huge = format!(
            r#"{{"type":"suggestions","pad":"{}"}}"#,
            "x".repeat(MAX_FRAME_BYTES)
        );
        assert!(matches!(parse(&huge), Err(Rejected::TooLarge(_))));
    }

    #[test]
    fn suggestions_keep_unknown_fields_for_the_planner_to_judge() {
        let Incoming::Suggestions(items) = parse(
            r#"{"type":"suggestions","items":[{"action":"prioritize","component":"api","reason":"hot path","command":"rm -rf /"}]}"#,
        )
        .unwrap() else {
            panic!("expected suggestions")
        };
        assert_eq!(items[0].component.as_deref(), Some("api"));
        assert!(items[0].extra.contains_key("command"));
    }

    #[test]
    fn capabilities_compare_without_case_or_punctuation() {
        let caps = vec!["glm-4.1v".to_owned()];
        assert!(advertises(&caps, "GLM4V", &["GLM-4.1V".to_owned()]));
        assert!(!advertises(&caps, "GLM4V", &[]));
        assert!(advertises(&["GLM_4V".to_owned()], "GLM4V", &[]));
        assert!(!advertises(&["".to_owned()], "", &[]));
    }
}
