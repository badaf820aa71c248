//! ABZU's `docs/system_blueprint.md`: the numbered "Staged Startup Order" list gives the
//! components and their stages; `### Title` sections anywhere in the document add
//! `**Priority:**`, `**Health Check:**` and `**Layer:**` lines to the entry whose title matches.
//!
//! Titles are matched by normalisation ("Vision Adapter (YOLOE)" = `vision_adapter`), and a
//! section title may extend an entry's title ("Avatar Subsystem" describes "Avatar"). Entries
//! marked optional are kept, unlike ABZU's own parser.

use std::collections::HashMap;
use std::path::Path;

use regex::Regex;

use super::{Decl, Origin, Parsed, normalize};
use crate::diag::{Diagnostics, Problem};

struct Entry {
    stage: i64,
    title: String,
    priority: Option<i64>,
    optional: bool,
    layer: Option<String>,
    line: usize,
}

#[derive(Default)]
struct Section {
    priority: Option<i64>,
    health_check: Option<String>,
    layer: Option<String>,
}

/// Whether `line` is the `## Staged Startup Order` heading.
fn is_startup_heading(line: &str) -> bool {
    line.trim_start().starts_with("## ") && normalize(line) == "staged_startup_order"
}

/// Whether a text of unknown format is a blueprint (cheap: looks only at `## ` lines).
pub(crate) fn has_startup_order(text: &str) -> bool {
    text.lines().any(is_startup_heading)
}

pub(crate) fn parse(path: &Path, text: &str, diags: &mut Diagnostics) -> Option<Parsed> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| is_startup_heading(l)) else {
        diags.push(
            Problem::file(path, "no `## Staged Startup Order` section in this Markdown file")
                .with_hint("razar reads ABZU's system_blueprint.md: a numbered list under `## Staged Startup Order`"),
        );
        return None;
    };
    let item = Regex::new(r"^\s*(\d+)\.\s+(.+?)\s*$").expect("static regex");
    let mut entries = Vec::new();
    for (offset, line) in lines[start + 1..].iter().enumerate() {
        if line.starts_with("## ") || line.starts_with("# ") {
            break;
        }
        let Some(caps) = item.captures(line) else {
            continue;
        };
        let stage: i64 = caps[1].parse().unwrap_or(i64::MAX);
        entries.push(parse_entry(stage, &caps[2], start + offset + 2));
    }
    if entries.is_empty() {
        diags.push(Problem::at(
            path,
            text,
            start + 1,
            1,
            lines[start].len(),
            "the staged startup order lists no components",
        ));
        return None;
    }
    let sections = sections(&lines);
    let mut decls = Vec::with_capacity(entries.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for entry in entries {
        let name = normalize(&entry.title);
        if name.is_empty() {
            diags.push(Problem::at(
                path,
                text,
                entry.line,
                1,
                1,
                format!("cannot derive a component name from `{}`", entry.title),
            ));
            continue;
        }
        if let Some(first) = seen.insert(name.clone(), entry.line) {
            diags.push(
                Problem::at(
                    path,
                    text,
                    entry.line,
                    1,
                    1,
                    format!(
                        "`{}` is listed twice in the staged startup order",
                        entry.title
                    ),
                )
                .with_hint(format!("it is first listed on line {first}")),
            );
            continue;
        }
        let section = find_section(&sections, &name);
        let mut notes = vec![format!("blueprint stage {}: {}", entry.stage, entry.title)];
        if let Some(layer) = entry
            .layer
            .as_ref()
            .or(section.and_then(|s| s.layer.as_ref()))
        {
            notes.push(format!("layer: {layer}"));
        }
        if let Some(check) = section.and_then(|s| s.health_check.as_ref()) {
            notes.push(format!("health check: {check}"));
        }
        let priority = entry.priority.or(section.and_then(|s| s.priority));
        decls.push(Decl {
            name,
            priority,
            stage: Some(entry.stage),
            // Only a positive mark is information: unmarked entries leave `optional` to other files.
            optional: entry.optional.then_some(true),
            notes,
            origin: Origin {
                file: path.to_path_buf(),
                pointer: None,
                line: Some(entry.line),
            },
            ..Decl::default()
        });
    }
    Some(Parsed {
        decls,
        ..Parsed::default()
    })
}

/// `Memory Store (Heart, priority 1)`, `Operator Console Service (Throat, priority 3, optional)`,
/// `RAZAR Startup Orchestrator (external, priority 0) – see [RAZAR Agent](RAZAR_AGENT.md)`.
fn parse_entry(stage: i64, rest: &str, line: usize) -> Entry {
    // Drop a trailing "– see …" / "- see …" remark.
    let rest = rest
        .split(" – ")
        .next()
        .unwrap_or(rest)
        .split(" - see")
        .next()
        .unwrap_or(rest)
        .trim();
    let (title, attrs) = match rest.find('(') {
        Some(open) => (rest[..open].trim(), rest[open + 1..].trim_end_matches(')')),
        None => (rest, ""),
    };
    let mut priority = None;
    let mut optional = false;
    let mut layer = None;
    for attr in attrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let lower = attr.to_ascii_lowercase();
        if let Some(p) = lower.strip_prefix("priority") {
            priority = p.trim().trim_start_matches('p').parse().ok();
        } else if lower == "optional" {
            optional = true;
        } else {
            layer = Some(attr.to_owned());
        }
    }
    Entry {
        stage,
        title: title.to_owned(),
        priority,
        optional,
        layer,
        line,
    }
}

/// Every `### Title` section with its bold fields, keyed by normalised title.
fn sections(lines: &[&str]) -> Vec<(String, Section)> {
    let mut out: Vec<(String, Section)> = Vec::new();
    for line in lines {
        if let Some(title) = line.strip_prefix("### ") {
            out.push((normalize(title), Section::default()));
            continue;
        }
        if line.starts_with("## ") || line.starts_with("# ") {
            out.push((String::new(), Section::default()));
            continue;
        }
        let Some((_, section)) = out.last_mut() else {
            continue;
        };
        let item = line.trim_start().trim_start_matches("- ").trim();
        if let Some(value) = field(item, "Priority") {
            section.priority = value
                .trim_start_matches(['P', 'p'])
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok());
        } else if let Some(value) = field(item, "Health Check") {
            section.health_check = Some(value.to_owned());
        } else if let Some(value) = field(item, "Layer") {
            section.layer = Some(value.to_owned());
        }
    }
    out
}

fn field<'a>(item: &'a str, name: &str) -> Option<&'a str> {
    item.strip_prefix("**")?
        .strip_prefix(name)?
        .strip_prefix(":**")
        .map(str::trim)
}

/// The section describing `name`: an exact normalised match, else one whose title extends it.
fn find_section<'a>(sections: &'a [(String, Section)], name: &str) -> Option<&'a Section> {
    let prefix = format!("{name}_");
    sections
        .iter()
        .find(|(title, _)| title == name)
        .or_else(|| {
            sections
                .iter()
                .find(|(title, _)| title.starts_with(&prefix))
        })
        .map(|(_, section)| section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_optional_and_priority() {
        let entry = parse_entry(
            3,
            "Operator Console Service (Throat, priority 3, optional)",
            9,
        );
        assert_eq!(entry.title, "Operator Console Service");
        assert_eq!(entry.priority, Some(3));
        assert!(entry.optional);
        assert_eq!(entry.layer.as_deref(), Some("Throat"));
        let entry = parse_entry(
            0,
            "RAZAR Startup Orchestrator (external, priority 0) – see [RAZAR Agent](RAZAR_AGENT.md)",
            1,
        );
        assert_eq!(entry.title, "RAZAR Startup Orchestrator");
        assert_eq!(entry.priority, Some(0));
    }

    #[test]
    fn sections_match_by_normalised_prefix() {
        let lines = [
            "### Avatar Subsystem",
            "- **Priority:** 4",
            "- **Health Check:** Verify frames.",
        ];
        let sections = sections(&lines);
        let section = find_section(&sections, "avatar").expect("prefix match");
        assert_eq!(section.priority, Some(4));
        assert_eq!(section.health_check.as_deref(), Some("Verify frames."));
    }
}
