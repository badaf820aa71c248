//! JSON Schema validation of parsed documents against the schemas in `schemas/`, compiled
//! into the binary. Validation never touches the network: jsonschema is built without its
//! remote-`$ref` resolver and every schema is self-contained.

use std::sync::OnceLock;

use jsonschema::Validator;
use serde_json::Value;

use super::Format;

pub const NATIVE: &str = include_str!("../../schemas/razar.schema.json");
pub const BOOT_CONFIG: &str = include_str!("../../schemas/boot_config.schema.json");
pub const RAZAR_CONFIG: &str = include_str!("../../schemas/razar_config.schema.json");
pub const RAZAR_ENV: &str = include_str!("../../schemas/razar_env.schema.json");
pub const PRIORITIES: &str = include_str!("../../schemas/component_priorities.schema.json");

fn compile(text: &str) -> Validator {
    let schema: Value = serde_json::from_str(text).expect("schemas/ are valid JSON (tested)");
    jsonschema::validator_for(&schema).expect("schemas/ are valid JSON Schemas (tested)")
}

fn validator(format: Format) -> Option<&'static Validator> {
    static NATIVE_V: OnceLock<Validator> = OnceLock::new();
    static BOOT_V: OnceLock<Validator> = OnceLock::new();
    static RAZAR_V: OnceLock<Validator> = OnceLock::new();
    static ENV_V: OnceLock<Validator> = OnceLock::new();
    static PRIO_V: OnceLock<Validator> = OnceLock::new();
    Some(match format {
        Format::Native => NATIVE_V.get_or_init(|| compile(NATIVE)),
        Format::BootConfig => BOOT_V.get_or_init(|| compile(BOOT_CONFIG)),
        Format::RazarConfig => RAZAR_V.get_or_init(|| compile(RAZAR_CONFIG)),
        Format::RazarEnv => ENV_V.get_or_init(|| compile(RAZAR_ENV)),
        Format::Priorities => PRIO_V.get_or_init(|| compile(PRIORITIES)),
        Format::Blueprint => return None,
    })
}

/// The native schema's `#/$defs/component`, for checking list items one at a time.
fn component_validator() -> &'static Validator {
    static COMPONENT_V: OnceLock<Validator> = OnceLock::new();
    COMPONENT_V.get_or_init(|| {
        let native: Value = serde_json::from_str(NATIVE).expect("schemas/ are valid JSON (tested)");
        let schema = serde_json::json!({
            "$schema": native["$schema"],
            "$defs": native["$defs"],
            "$ref": "#/$defs/component",
        });
        jsonschema::validator_for(&schema).expect("the component definition compiles (tested)")
    })
}

/// Every schema violation as (JSON pointer, message).
pub fn validate(format: Format, value: &Value) -> Vec<(String, String)> {
    match validator(format) {
        Some(validator) => violations(validator, value),
        None => Vec::new(),
    }
}

/// Violations of one native component (pointers relative to the component).
pub fn validate_component(value: &Value) -> Vec<(String, String)> {
    violations(component_validator(), value)
}

fn violations(validator: &Validator, value: &Value) -> Vec<(String, String)> {
    if validator.is_valid(value) {
        return Vec::new();
    }
    let mut problems: Vec<(String, String)> = validator
        .iter_errors(value)
        .flat_map(|err| {
            let pointer = err.instance_path().to_string();
            match err.kind() {
                // One problem per unexpected key, located at the key itself.
                jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                    unexpected
                        .iter()
                        .map(|key| {
                            (
                                pointer.clone(),
                                format!("unknown field `{key}`, not allowed here by the schema"),
                            )
                        })
                        .collect::<Vec<_>>()
                }
                _ => vec![(pointer, format!("{err}"))],
            }
        })
        .collect();
    problems.sort();
    problems.dedup();
    problems
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
            assert!(validator(format).is_some());
        }
        assert!(validate_component(&serde_json::json!({"name": "a"})).is_empty());
        assert!(!validate_component(&serde_json::json!({"name": 1})).is_empty());
    }

    #[test]
    fn violations_carry_pointers() {
        let value =
            serde_json::json!({"components": [{"name": "a", "kind": "daemon", "colour": 1}]});
        let problems = validate(Format::Native, &value);
        assert!(
            problems
                .iter()
                .any(|(p, m)| p == "/components/0" && m.contains("unknown field `colour`")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|(p, _)| p == "/components/0/kind"),
            "{problems:?}"
        );
    }
}
