//! JSON Schema validation of parsed documents against the schemas in `schemas/`, compiled
//! into the binary. Validation never touches the network: jsonschema is built without its
//! remote-`$ref` resolver and every schema is self-contained.

use std::sync::OnceLock;

use jsonschema::Validator;
use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value;

use super::Format;

pub const NATIVE: &str = include_str!("../../schemas/razar.schema.json");
pub const BOOT_CONFIG: &str = include_str!("../../schemas/boot_config.schema.json");
pub const RAZAR_CONFIG: &str = include_str!("../../schemas/razar_config.schema.json");
pub const RAZAR_ENV: &str = include_str!("../../schemas/razar_env.schema.json");
pub const PRIORITIES: &str = include_str!("../../schemas/component_priorities.schema.json");

/// A schema, parsed, with its compiled validator.
struct Compiled {
    schema: Value,
    validator: Validator,
}

fn compile(text: &str) -> Compiled {
    let schema: Value = serde_json::from_str(text).expect("schemas/ are valid JSON (tested)");
    let validator =
        jsonschema::validator_for(&schema).expect("schemas/ are valid JSON Schemas (tested)");
    Compiled { schema, validator }
}

fn compiled(format: Format) -> Option<&'static Compiled> {
    static NATIVE_V: OnceLock<Compiled> = OnceLock::new();
    static BOOT_V: OnceLock<Compiled> = OnceLock::new();
    static RAZAR_V: OnceLock<Compiled> = OnceLock::new();
    static ENV_V: OnceLock<Compiled> = OnceLock::new();
    static PRIO_V: OnceLock<Compiled> = OnceLock::new();
    Some(match format {
        Format::Native => NATIVE_V.get_or_init(|| compile(NATIVE)),
        Format::BootConfig => BOOT_V.get_or_init(|| compile(BOOT_CONFIG)),
        Format::RazarConfig => RAZAR_V.get_or_init(|| compile(RAZAR_CONFIG)),
        Format::RazarEnv => ENV_V.get_or_init(|| compile(RAZAR_ENV)),
        Format::Priorities => PRIO_V.get_or_init(|| compile(PRIORITIES)),
        Format::Blueprint => return None,
    })
}

/// The native schema's `#/$defs/component`, for checking list items one at a time. Its
/// `$defs` are the native schema's, so schema paths in errors read the same in both.
fn component() -> &'static Compiled {
    static COMPONENT_V: OnceLock<Compiled> = OnceLock::new();
    COMPONENT_V.get_or_init(|| {
        let native: Value = serde_json::from_str(NATIVE).expect("schemas/ are valid JSON (tested)");
        let schema = serde_json::json!({
            "$schema": native["$schema"],
            "$defs": native["$defs"],
            "$ref": "#/$defs/component",
        });
        let validator =
            jsonschema::validator_for(&schema).expect("the component definition compiles (tested)");
        Compiled { schema, validator }
    })
}

/// One schema violation: where, and what is wrong (without the where).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// JSON pointer to the offending value (or to the mapping holding an unknown key).
    pub pointer: String,
    pub message: String,
}

impl Violation {
    /// The message a user reads, led by the field path once `pointer` is the full one:
    /// "components[3].priority: expected an integer, found the string `high`".
    pub fn describe(&self) -> String {
        match field_path(&self.pointer) {
            Some(field) => format!("{field}: {}", self.message),
            None => self.message.clone(),
        }
    }
}

/// Every schema violation of a document in `format`.
pub fn validate(format: Format, value: &Value) -> Vec<Violation> {
    match compiled(format) {
        Some(compiled) => violations(compiled, value),
        None => Vec::new(),
    }
}

/// Violations of one native component (pointers relative to the component).
pub fn validate_component(value: &Value) -> Vec<Violation> {
    violations(component(), value)
}

fn violations(compiled: &Compiled, value: &Value) -> Vec<Violation> {
    if compiled.validator.is_valid(value) {
        return Vec::new();
    }
    let mut problems: Vec<Violation> = compiled
        .validator
        .iter_errors(value)
        .flat_map(|err| {
            let pointer = err.instance_path().to_string();
            match err.kind() {
                // One problem per unexpected key, located at the key itself.
                ValidationErrorKind::AdditionalProperties { unexpected } => {
                    let allowed = allowed_keys(&compiled.schema, &err.schema_path().to_string());
                    unexpected
                        .iter()
                        .map(|key| Violation {
                            pointer: pointer.clone(),
                            message: unknown_field(key, &allowed),
                        })
                        .collect::<Vec<_>>()
                }
                kind => vec![Violation {
                    pointer,
                    message: message(kind, err.instance(), &err),
                }],
            }
        })
        .collect();
    problems.sort();
    problems.dedup();
    problems
}

/// The keys the object schema at `schema_path` (ending in `/additionalProperties`) allows.
fn allowed_keys(schema: &Value, schema_path: &str) -> Vec<String> {
    schema_path
        .strip_suffix("/additionalProperties")
        .and_then(|object| schema.pointer(object))
        .and_then(|object| object.get("properties"))
        .and_then(Value::as_object)
        .map(|properties| properties.keys().cloned().collect())
        .unwrap_or_default()
}

/// "unknown field `paralellism`; did you mean `parallelism`?"
fn unknown_field(key: &str, allowed: &[String]) -> String {
    let message = format!("unknown field `{}`", shorten(key));
    if let Some(near) = crate::graph::nearest(key, allowed.iter().map(String::as_str)) {
        format!("{message}; did you mean `{near}`?")
    } else if allowed.is_empty() {
        format!("{message}, not allowed here by the schema")
    } else {
        let names: Vec<String> = allowed.iter().map(|k| format!("`{k}`")).collect();
        format!("{message}; expected one of {}", names.join(", "))
    }
}

/// `components[3].ready.tcp` for `/components/3/ready/tcp` (`None` for the document).
fn field_path(pointer: &str) -> Option<String> {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A violation in words, naming what was found rather than dumping it.
fn message(
    kind: &ValidationErrorKind,
    instance: &Value,
    err: &jsonschema::ValidationError<'_>,
) -> String {
    match kind {
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => describe_type(&t.to_string()),
                TypeKind::Multiple(set) => {
                    let names: Vec<String> =
                        set.iter().map(|t| describe_type(&t.to_string())).collect();
                    names.join(" or ")
                }
            };
            format!("expected {expected}, found {}", describe(instance))
        }
        ValidationErrorKind::Enum { options } => {
            let options: Vec<String> = options
                .as_array()
                .map(|items| items.iter().map(|o| format!("`{}`", plain(o))).collect())
                .unwrap_or_default();
            format!(
                "{} is not one of {}",
                describe(instance),
                options.join(", ")
            )
        }
        ValidationErrorKind::Constant { expected_value } => format!(
            "must be `{}`, found {}",
            plain(expected_value),
            describe(instance)
        ),
        ValidationErrorKind::Required { property } => {
            format!("missing required field `{}`", plain(property))
        }
        _ => shorten(&err.to_string()),
    }
}

fn describe_type(name: &str) -> String {
    match name {
        "array" => "a list".to_owned(),
        "object" => "a mapping".to_owned(),
        "integer" => "an integer".to_owned(),
        "null" => "nothing".to_owned(),
        other => format!("a {other}"),
    }
}

/// What a value is, briefly: "a mapping", "the string `high`", "the number 3".
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".to_owned(),
        Value::Bool(b) => format!("the boolean `{b}`"),
        Value::Number(n) => format!("the number `{n}`"),
        Value::String(s) => format!("the string `{}`", shorten(s)),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a mapping".to_owned(),
    }
}

/// A scalar as written in YAML (strings without quotes).
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => shorten(&other.to_string()),
    }
}

/// Messages quote the offending value; a whole mapping is not worth quoting.
fn shorten(text: &str) -> String {
    const LIMIT: usize = 80;
    if text.chars().count() <= LIMIT {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(LIMIT).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_compiles() {
        for format in [
            Format::Native,
            Format::BootConfig,
            Format::RazarConfig,
            Format::RazarEnv,
            Format::Priorities,
        ] {
            assert!(compiled(format).is_some());
        }
        assert!(validate_component(&serde_json::json!({"name": "a"})).is_empty());
        assert!(!validate_component(&serde_json::json!({"name": 1})).is_empty());
    }

    #[test]
    fn unknown_fields_suggest_the_nearest_allowed_one() {
        let value = serde_json::json!({"paralellism": 2, "components": [
            {"name": "a", "ready": {"tpc": "127.0.0.1:1"}, "zzzzzz": 1}
        ]});
        let messages: Vec<String> = validate(Format::Native, &value)
            .iter()
            .map(Violation::describe)
            .collect();
        assert!(
            messages
                .contains(&"unknown field `paralellism`; did you mean `parallelism`?".to_owned()),
            "{messages:?}"
        );
        assert!(
            messages.contains(
                &"components[0].ready: unknown field `tpc`; did you mean `tcp`?".to_owned()
            ),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m
                .starts_with("components[0]: unknown field `zzzzzz`; expected one of `command`")),
            "{messages:?}"
        );
    }

    #[test]
    fn violations_carry_pointers() {
        let value =
            serde_json::json!({"components": [{"name": "a", "kind": "daemon", "colour": 1}]});
        let problems = validate(Format::Native, &value);
        assert!(
            problems
                .iter()
                .any(|v| v.pointer == "/components/0"
                    && v.message.contains("unknown field `colour`")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|v| v.pointer == "/components/0/kind"
                && v.describe()
                    == "components[0].kind: the string `daemon` is not one of `service`, `task`"),
            "{problems:?}"
        );
    }
}
