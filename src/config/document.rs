//! Config text → one parsed document, read once.
//!
//! Two things serde does not do for us here. Duplicate keys are refused (serde_json's own
//! `Value` keeps the last of `command: a` / `command: b` silently). And a large YAML file's
//! `components:` list is split at item boundaries into pieces that are parsed, converted
//! and dropped on every core: libyaml buffers a whole document's events before building
//! anything, which for 100k components costs more time and memory than everything else
//! razar does with them.
//!
//! The split is only an optimisation: when it does not apply, or a piece fails to parse on
//! its own, the whole text is parsed as one document, so values and errors are exactly
//! those of a plain parse. This module knows YAML and JSON, nothing of razar's formats.

use std::ops::Range;

use rayon::prelude::*;
use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Below this size a YAML text is parsed in one piece (splitting would not pay).
pub const PARALLEL_THRESHOLD: usize = 1 << 20;

/// Text per piece when a component list is split. libyaml's buffered events take about
/// fifty times the text they come from, so pieces are kept small.
const PIECE_BYTES: usize = 64 * 1024;

/// The message prefix of a duplicate-key error (`load` locates the key precisely).
pub const DUPLICATE_KEY: &str = "duplicate key";

/// The list whose items are parsed and converted separately.
pub const LIST_KEY: &str = "components";

/// A parsed config document: its top-level mapping, and the items of its `components:`
/// list kept apart, so callers convert them one by one, in parallel, instead of holding the
/// values of a whole 100k-component document at once.
pub struct Document<'a> {
    /// The top-level mapping, without `components` when that is a list.
    pub header: Map<String, Value>,
    list: List,
    text: &'a str,
}

enum List {
    /// No `components:` list (absent, or not a list: then it stays in the header).
    Absent,
    /// Parsed with the rest of the document.
    Parsed(Vec<Value>),
    /// Byte ranges of YAML pieces, each starting at an item, parsed when the items are
    /// asked for.
    Pieces(Vec<Range<usize>>),
}

/// A syntax error from either parser.
#[derive(Debug)]
pub enum ParseError {
    Json(serde_json::Error),
    Yaml(serde_yaml::Error),
}

impl<'a> Document<'a> {
    fn from_value(text: &'a str, value: Value) -> Result<Self, Value> {
        let Value::Object(mut header) = value else {
            return Err(value);
        };
        let list = match header.remove(LIST_KEY) {
            Some(Value::Array(items)) => List::Parsed(items),
            Some(other) => {
                header.insert(LIST_KEY.to_owned(), other);
                List::Absent
            }
            None => List::Absent,
        };
        Ok(Document { header, list, text })
    }

    /// Whether the document has a `components:` list.
    pub fn has_list(&self) -> bool {
        !matches!(self.list, List::Absent)
    }

    /// A piece did not parse on its own (e.g. an alias to an anchor in another piece):
    /// parse the whole text as one document, which gives the same value or the real error.
    fn unsplit(&mut self) -> Result<(), ParseError> {
        let value = whole(self.text).map_err(ParseError::Yaml)?;
        if let Ok(document) = Document::from_value(self.text, value) {
            self.header = document.header;
            self.list = document.list;
        }
        Ok(())
    }

    /// The first item of the list, for format detection.
    pub fn first_item(&mut self) -> Result<Option<Value>, ParseError> {
        if let List::Pieces(pieces) = &self.list {
            let first = pieces.first().cloned().unwrap_or(0..0);
            match whole(&self.text[first]) {
                Ok(Value::Array(mut items)) if !items.is_empty() => {
                    return Ok(Some(items.swap_remove(0)));
                }
                _ => self.unsplit()?,
            }
        }
        Ok(match &self.list {
            List::Parsed(items) => items.first().cloned(),
            List::Absent | List::Pieces(_) => None,
        })
    }

    /// Converts every list item with `convert`, in parallel, keeping list order.
    pub fn items<T: Send>(
        &mut self,
        convert: impl Fn(Value) -> T + Sync,
    ) -> Result<Vec<T>, ParseError> {
        if let List::Pieces(pieces) = &self.list {
            let text = self.text;
            // Each piece is parsed, converted and dropped on one thread: only the pieces
            // in flight hold parsed values.
            let converted: Option<Vec<Vec<T>>> = pieces
                .par_iter()
                .map(|range| match whole(&text[range.clone()]) {
                    Ok(Value::Array(items)) => Some(items.into_iter().map(&convert).collect()),
                    _ => None,
                })
                .collect();
            match converted {
                Some(converted) => {
                    self.list = List::Absent;
                    let mut items = Vec::with_capacity(converted.iter().map(Vec::len).sum());
                    for piece in converted {
                        items.extend(piece);
                    }
                    return Ok(items);
                }
                None => self.unsplit()?,
            }
        }
        match std::mem::replace(&mut self.list, List::Absent) {
            List::Parsed(items) => Ok(items.into_par_iter().map(&convert).collect()),
            List::Absent | List::Pieces(_) => Ok(Vec::new()),
        }
    }

    /// The whole document as one value (for formats converted in one piece).
    pub fn into_value(mut self) -> Result<Value, ParseError> {
        let had_list = self.has_list();
        let items = self.items(|item| item)?;
        if had_list {
            self.header.insert(LIST_KEY.to_owned(), Value::Array(items));
        }
        Ok(Value::Object(self.header))
    }
}

/// Parses JSON text, refusing duplicate keys.
pub fn json(text: &str) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = Strict.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Parses YAML text as one document, refusing duplicate keys.
pub fn yaml(text: &str) -> Result<Value, serde_yaml::Error> {
    whole(text)
}

/// Parses a config document, JSON or YAML; a large YAML component list is split into
/// pieces parsed later, in parallel. `Ok(Err(value))`: the top level is not a mapping.
pub fn parse(text: &str, json_syntax: bool) -> Result<Result<Document<'_>, Value>, ParseError> {
    parse_split(text, json_syntax, PARALLEL_THRESHOLD, PIECE_BYTES)
}

fn parse_split(
    text: &str,
    json_syntax: bool,
    threshold: usize,
    piece_bytes: usize,
) -> Result<Result<Document<'_>, Value>, ParseError> {
    if json_syntax {
        return json(text)
            .map(|value| Document::from_value(text, value))
            .map_err(ParseError::Json);
    }
    if text.len() >= threshold
        && let Some(split) = split(text, piece_bytes)
        && let Ok(Value::Object(mut header)) = whole(&split.header)
        // The header must say `components:` with nothing else: another spelling of the
        // same key would make the document mean something else.
        && header.get(LIST_KEY) == Some(&Value::Null)
    {
        header.remove(LIST_KEY);
        return Ok(Ok(Document {
            header,
            list: List::Pieces(split.pieces),
            text,
        }));
    }
    whole(text)
        .map(|value| Document::from_value(text, value))
        .map_err(ParseError::Yaml)
}

fn whole(text: &str) -> Result<Value, serde_yaml::Error> {
    Strict.deserialize(serde_yaml::Deserializer::from_str(text))
}

/// A YAML document cut into its text without the component items, and the byte ranges of
/// the items' text in pieces that each start at an item.
struct Split {
    header: String,
    pieces: Vec<Range<usize>>,
}

/// Finds a top-level `components:` block sequence and cuts it at item boundaries. `None`
/// when the document has another shape (flow list, several documents, directives...).
fn split(text: &str, piece_bytes: usize) -> Option<Split> {
    let mut offset = 0;
    let mut lines = Vec::new();
    for line in text.split_inclusive('\n') {
        lines.push((offset, line));
        offset += line.len();
    }
    let mut start = None;
    for (k, &(_, line)) in lines.iter().enumerate() {
        let content = line.trim_end();
        if content.starts_with('%') || (k > 0 && (content == "---" || content == "...")) {
            return None;
        }
        if is_components_key(content) {
            if start.is_some() {
                return None;
            }
            start = Some(k + 1);
        }
    }
    let start = start?;
    // The first item fixes the indentation every item starts at.
    let first = lines[start..]
        .iter()
        .position(|(_, line)| !is_blank_or_comment(line))?
        + start;
    let indent = indentation(lines[first].1);
    if !is_item(lines[first].1, indent) {
        return None;
    }
    let mut end = lines.len();
    let mut item_starts = Vec::new();
    for (k, &(_, line)) in lines.iter().enumerate().skip(first) {
        if is_blank_or_comment(line) {
            continue;
        }
        let here = indentation(line);
        if here < indent || (here == indent && !is_item(line, indent) && indent == 0) {
            end = k;
            break;
        }
        if here == indent && is_item(line, indent) {
            item_starts.push(k);
        }
    }
    let body_start = lines[start].0;
    let body_end = lines.get(end).map_or(text.len(), |&(offset, _)| offset);
    let mut pieces = Vec::new();
    let mut piece_start = body_start;
    for &k in &item_starts {
        let at = lines[k].0;
        if at - piece_start >= piece_bytes {
            pieces.push(piece_start..at);
            piece_start = at;
        }
    }
    pieces.push(piece_start..body_end);
    let mut header = String::with_capacity(body_start + text.len() - body_end);
    header.push_str(&text[..body_start]);
    header.push_str(&text[body_end..]);
    Some(Split { header, pieces })
}

/// `components:` at column 0, optionally followed by a comment.
fn is_components_key(line: &str) -> bool {
    line.strip_prefix("components:")
        .is_some_and(|rest| rest.trim().is_empty() || rest.trim_start().starts_with('#'))
}

fn is_blank_or_comment(line: &str) -> bool {
    let trimmed = line.trim_start_matches(' ').trim_end();
    trimmed.is_empty() || trimmed.starts_with('#')
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// A sequence item at exactly `indent`: `- …` or a lone `-`.
fn is_item(line: &str, indent: usize) -> bool {
    let rest = &line[indent.min(line.len())..];
    rest.starts_with("- ") || rest.trim_end() == "-"
}

/// Builds a `serde_json::Value` like its own `Deserialize`, but refuses duplicate keys.
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML or JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // Like serde_json: infinities and NaN have no JSON form.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Strict.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(Strict)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "{DUPLICATE_KEY} `{}`",
                    key.escape_debug()
                )));
            }
            let value = access.next_value_seed(Strict)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// Lets callers use `Strict` where a type is expected (e.g. `serde_path_to_error`).
pub struct StrictValue(pub Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Strict.deserialize(deserializer).map(StrictValue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` with every item boundary a cut, and as one document.
    fn both_ways(text: &str) -> (Result<Value, String>, Result<Value, String>) {
        let whole = whole(text).map_err(|e| e.to_string());
        let split = match parse_split(text, false, 0, 1) {
            Ok(Ok(document)) => document.into_value().map_err(|e| format!("{e:?}")),
            Ok(Err(value)) => Ok(value),
            Err(err) => Err(format!("{err:?}")),
        };
        (whole, split)
    }

    /// The split parse must give exactly what the whole parse gives.
    fn same_both_ways(text: &str) {
        match both_ways(text) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
            (Err(_), Err(_)) => {}
            (whole, split) => panic!("whole {whole:?} vs split {split:?} for {text}"),
        }
    }

    fn items(n: usize, indent: &str) -> String {
        let mut text = String::from("version: 1\n# list\ncomponents:\n");
        for i in 0..n {
            text.push_str(&format!(
                "{indent}- name: c{i}\n{indent}  command: [\"true\", \"{i}\"]\n{indent}  depends_on: [c{}]\n\n",
                i.saturating_sub(1)
            ));
        }
        text.push_str("parallelism: 3\n");
        text
    }

    #[test]
    fn splits_large_lists_into_pieces() {
        let text = items(20_000, "  ");
        let split = split(&text, PIECE_BYTES).expect("a block list splits");
        assert!(split.pieces.len() > 2, "{} pieces", split.pieces.len());
        assert!(split.header.contains("parallelism: 3"));
        same_both_ways(&text);
        same_both_ways(&items(3_000, ""));
        let mut document = parse(&text, false).expect("valid").expect("a mapping");
        let names = document
            .items(|item| item["name"].as_str().map(str::to_owned))
            .expect("pieces parse");
        assert_eq!(names.len(), 20_000);
        assert_eq!(names[19_999].as_deref(), Some("c19999"));
    }

    #[test]
    fn awkward_documents_parse_the_same_either_way() {
        for text in [
            "components:\n  - name: a\n    command: |\n      - not an item\n      echo\n  - name: b\n",
            "components:\n  - name: 'multi\n  - line'\n  - name: c\n",
            "components:\n  - &base\n    name: a\n  - <<: *base\n    name: b\n",
            "defaults: &d {x: 1}\ncomponents:\n  - name: a\n    restart: *d\n",
            "components: [{name: a}, {name: b}]\n",
            "---\ncomponents:\n- name: a\n# comment\n- name: b\nversion: 1\n",
            "components:\n  - name: a\ncomponents:\n  - name: b\n",
            "\"components\": 1\ncomponents:\n  - name: a\n",
            "components:\n  - name: a\n   bad: indent\n  - name: b\n",
            "components:\n  - name: a\n---\ncomponents:\n  - name: b\n",
            "%YAML 1.2\n---\ncomponents:\n  - name: a\n",
            "components:\r\n  - name: a\r\n  - name: b\r\n",
            "components:\n  -\n    name: a\n  - name: b\n",
            "components:\n",
            "components: # the list\n  - name: a\n",
        ] {
            same_both_ways(text);
        }
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let err = whole("a: 1\nb:\n  c: 2\n  c: 3\n").expect_err("duplicate `c`");
        assert!(err.to_string().contains("duplicate key `c`"), "{err}");
        let err = json("{\"a\": 1, \"a\": 2}").expect_err("duplicate `a`");
        assert!(err.to_string().contains("duplicate key `a`"), "{err}");
        let (whole, split) = both_ways("components:\n  - name: a\n  - name: x\n    name: y\n");
        for err in [whole.expect_err("duplicate"), split.expect_err("duplicate")] {
            assert!(err.contains("duplicate key `name`"), "{err}");
        }
    }

    #[test]
    fn values_match_serde_json() {
        let text = "a: [1, -2, 2.5, true, null, ~, 'x']\nb: {c: .inf}\n";
        let ours = whole(text).expect("valid");
        let theirs: Value = serde_yaml::from_str(text).expect("valid");
        assert_eq!(ours, theirs);
    }
}
