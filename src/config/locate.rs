//! Maps JSON pointers (`/components/3/ready/tcp`) back to line and column in a YAML or JSON
//! source, for diagnostics.
//!
//! Valid configs never pay for this: the index is built on first use, by a second pass over
//! the text with an event parser that reports positions.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::OnceLock;

use saphyr_parser::{Event, Parser, Span};

use crate::diag::Problem;

/// Where a node sits in the source: byte offset and length of the value, and of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub offset: usize,
    pub len: usize,
    pub key: Option<(usize, usize)>,
}

/// Lazily built pointer → position index over one source text.
#[derive(Debug)]
pub struct Locator {
    text: std::sync::Arc<str>,
    index: OnceLock<HashMap<String, Place>>,
}

impl Locator {
    pub fn new(text: std::sync::Arc<str>) -> Self {
        Self {
            text,
            index: OnceLock::new(),
        }
    }

    /// The text this locator indexes.
    pub fn text(&self) -> std::sync::Arc<str> {
        self.text.clone()
    }

    fn index(&self) -> &HashMap<String, Place> {
        self.index.get_or_init(|| build(&self.text))
    }

    /// Whether the node at `pointer` itself exists in the source.
    pub fn exists(&self, pointer: &str) -> bool {
        self.index().contains_key(pointer)
    }

    /// The place of the node at `pointer`, or of its nearest ancestor that exists.
    pub fn place(&self, pointer: &str) -> Option<Place> {
        let index = self.index();
        let mut current = pointer;
        loop {
            if let Some(place) = index.get(current) {
                return Some(*place);
            }
            if current.is_empty() {
                return None;
            }
            current = current.rfind('/').map_or("", |i| &current[..i]);
        }
    }

    /// A problem located at the value `pointer` names (or the key, for unknown fields).
    pub fn problem(&self, path: &Path, text: &str, pointer: &str, message: String) -> Problem {
        let key_pointer = unknown_field(&message).map(|field| format!("{pointer}/{field}"));
        let place = key_pointer
            .as_deref()
            .and_then(|p| self.index().get(p).copied())
            .map(|place| {
                let (offset, len) = place.key.unwrap_or((place.offset, place.len));
                (offset, len)
            })
            .or_else(|| self.place(pointer).map(|p| (p.offset, p.len)));
        match place {
            Some((offset, len)) => Problem::at_offset(path, text, offset, len.max(1), message),
            None => Problem::file(path, message),
        }
    }

    /// 1-based line of the node at `pointer` (1 when unknown).
    pub fn line(&self, pointer: &str) -> usize {
        self.place(pointer)
            .map_or(1, |p| crate::diag::line_col(&self.text, p.offset).0)
    }
}

impl Locator {
    /// Byte offset of the first alias (`*name`), if any.
    pub fn first_alias(&self) -> Option<usize> {
        let chars_to_bytes = CharIndex::new(&self.text);
        Parser::new_from_str(&self.text)
            .map_while(Result::ok)
            .find(|(event, _)| matches!(event, Event::Alias(_)))
            .map(|(_, span)| chars_to_bytes.span(&span).0)
    }

    /// Byte offset of the first key repeated within one mapping, if any (the parsers
    /// report a duplicate at its mapping; users look for the key).
    pub fn first_duplicate_key(&self) -> Option<usize> {
        let chars_to_bytes = CharIndex::new(&self.text);
        // Per open container: for mappings, the keys seen and whether the next scalar is a
        // key; sequences need no state.
        let mut stack: Vec<Option<(HashSet<String>, bool)>> = Vec::new();
        for item in Parser::new_from_str(&self.text) {
            let Ok((event, span)) = item else { break };
            let is_key = matches!(stack.last(), Some(Some((_, true))));
            match event {
                Event::Scalar(value, ..) if is_key => {
                    let Some(Some((keys, expecting))) = stack.last_mut() else {
                        unreachable!("is_key checked the top frame")
                    };
                    if !keys.insert(value.into_owned()) {
                        return Some(chars_to_bytes.span(&span).0);
                    }
                    *expecting = false;
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    if let Some(Some((_, expecting))) = stack.last_mut() {
                        // A container as a key (rare) or as a value: either way the next
                        // scalar of this mapping is a key again once it closes.
                        *expecting = false;
                    }
                    stack.push(
                        matches!(event, Event::MappingStart(..)).then(|| (HashSet::new(), true)),
                    );
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    if let Some(Some((_, expecting))) = stack.last_mut() {
                        *expecting = true;
                    }
                }
                Event::Scalar(..) | Event::Alias(_) => {
                    if let Some(Some((_, expecting))) = stack.last_mut() {
                        *expecting = true;
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// Extracts `foo` from "unknown field `foo`, expected …" (serde's or the schema check's,
/// possibly after a field path).
fn unknown_field(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once("unknown field `")?;
    rest.split('`').next()
}

enum Frame {
    /// In a mapping; `key` holds the pending key (text and span) until its value arrives.
    Map {
        pointer: String,
        key: Option<(String, (usize, usize))>,
    },
    Seq {
        pointer: String,
        next: usize,
    },
}

/// Walks the event stream, recording each node's pointer. Stops quietly at a syntax error:
/// what was indexed before it still locates problems.
fn build(text: &str) -> HashMap<String, Place> {
    let chars_to_bytes = CharIndex::new(text);
    let mut index = HashMap::new();
    let mut stack: Vec<Frame> = Vec::new();
    for item in Parser::new_from_str(text) {
        let Ok((event, span)) = item else { break };
        let (start, len) = chars_to_bytes.span(&span);
        match event {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map {
                    key: key @ None, ..
                }) = stack.last_mut()
                {
                    *key = Some((value.into_owned(), (start, len)));
                    continue;
                }
                let Some(pointer) = child_pointer(&mut stack) else {
                    continue;
                };
                let key = take_key(&mut stack);
                index.insert(
                    pointer,
                    Place {
                        offset: start,
                        len,
                        key,
                    },
                );
            }
            Event::Alias(_) => {
                if let Some(Frame::Map {
                    key: key @ None, ..
                }) = stack.last_mut()
                {
                    *key = Some((String::new(), (start, len)));
                    continue;
                }
                if let Some(pointer) = child_pointer(&mut stack) {
                    let key = take_key(&mut stack);
                    index.insert(
                        pointer,
                        Place {
                            offset: start,
                            len,
                            key,
                        },
                    );
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let pointer = if stack.is_empty() {
                    Some(String::new())
                } else {
                    child_pointer(&mut stack)
                };
                let Some(pointer) = pointer else { break };
                let key = take_key(&mut stack);
                // A block container starts at its first child; the key line (`ready:`) is
                // where a reader looks for it, so point there when there is one.
                let at = key.map_or(start, |(k, _)| k);
                let line_len = text[at..].find('\n').unwrap_or(text.len() - at);
                index.insert(
                    pointer.clone(),
                    Place {
                        offset: at,
                        len: line_len.max(1),
                        key,
                    },
                );
                stack.push(if matches!(event, Event::MappingStart(..)) {
                    Frame::Map { pointer, key: None }
                } else {
                    Frame::Seq { pointer, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
    index
}

/// The pointer of the next child of the innermost container (without consuming a map key).
fn child_pointer(stack: &mut [Frame]) -> Option<String> {
    match stack.last_mut()? {
        Frame::Map { pointer, key } => {
            let (name, _) = key.as_ref()?;
            Some(format!(
                "{pointer}/{}",
                name.replace('~', "~0").replace('/', "~1")
            ))
        }
        Frame::Seq { pointer, next } => {
            let child = format!("{pointer}/{next}");
            *next += 1;
            Some(child)
        }
    }
}

fn take_key(stack: &mut [Frame]) -> Option<(usize, usize)> {
    match stack.last_mut()? {
        Frame::Map { key, .. } => key.take().map(|(_, span)| span),
        Frame::Seq { .. } => None,
    }
}

/// saphyr reports character indices; diagnostics need byte offsets.
struct CharIndex {
    /// Byte offset of every character (only built for non-ASCII text).
    offsets: Option<Vec<usize>>,
    len: usize,
}

impl CharIndex {
    fn new(text: &str) -> Self {
        let offsets = (!text.is_ascii()).then(|| text.char_indices().map(|(i, _)| i).collect());
        Self {
            offsets,
            len: text.len(),
        }
    }

    fn byte(&self, char_index: usize) -> usize {
        match &self.offsets {
            Some(offsets) => offsets.get(char_index).copied().unwrap_or(self.len),
            None => char_index.min(self.len),
        }
    }

    fn span(&self, span: &Span) -> (usize, usize) {
        let start = self.byte(span.start.index());
        let end = self.byte(span.end.index()).max(start);
        (start, end - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(text: &str, pointer: &str) -> usize {
        let locator = Locator::new(text.into());
        let place = locator.place(pointer).expect("pointer located");
        crate::diag::line_col(text, place.offset).0
    }

    #[test]
    fn locates_nested_yaml_values() {
        let text = "version: 1\ncomponents:\n  - name: a\n    command: [x]\n  - name: b\n    ready:\n      tcp: \"127.0.0.1\"\n";
        assert_eq!(line_of(text, "/components/1/ready/tcp"), 7);
        assert_eq!(line_of(text, "/components/0/command/0"), 4);
        assert_eq!(line_of(text, "/components/1"), 5);
        // A missing child falls back to its parent.
        assert_eq!(line_of(text, "/components/1/ready/http"), 6);
    }

    #[test]
    fn locates_json_values() {
        let text = "{\n  \"components\": [\n    {\"name\": \"a\",\n     \"command\": []}\n  ]\n}\n";
        assert_eq!(line_of(text, "/components/0/command"), 4);
    }

    #[test]
    fn finds_the_repeated_key() {
        let text = "a: 1\nb:\n  c: [1, 2]\n  d: {e: 1}\n  c: 3\n";
        let offset = Locator::new(text.into())
            .first_duplicate_key()
            .expect("`c` repeats");
        assert_eq!(crate::diag::line_col(text, offset), (5, 3));
        assert_eq!(
            Locator::new("a: {b: 1}\nb: 2\n".into()).first_duplicate_key(),
            None
        );
    }

    #[test]
    fn unknown_fields_point_at_the_key() {
        let text = "components:\n  - name: a\n    colour: red\n";
        let locator = Locator::new(text.into());
        let problem = locator.problem(
            Path::new("x.yaml"),
            text,
            "/components/0",
            "unknown field `colour`, expected one of `name`".to_owned(),
        );
        assert_eq!((problem.line, problem.column), (3, 5));
    }
}
