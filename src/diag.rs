//! Problems found in user input, with the file, line and column they point at, rendered as
//! miette diagnostics that underline the offending source line.
//!
//! Every loader and check collects [`Problem`]s instead of stopping at the first one, so a user
//! sees everything wrong with a config in one run. This module formats; it decides nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource};

/// One thing wrong with the input, located in a source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file as the user named it.
    pub path: PathBuf,
    /// 1-based line; 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
    /// Byte range to underline, when known.
    pub span: Option<(usize, usize)>,
    /// What is wrong, lowercase, identifiers in backticks.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Problem {
    /// A problem with the file as a whole (unreadable, empty, unknown format).
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            line: 0,
            column: 0,
            span: None,
            message: message.into(),
            hint: None,
        }
    }

    /// A problem at a 1-based line and column of `text`, underlining `len` bytes from there.
    pub fn at(
        path: &Path,
        text: &str,
        line: usize,
        column: usize,
        len: usize,
        message: impl Into<String>,
    ) -> Self {
        let offset = offset_of(text, line, column);
        let len = len
            .min(text.len().saturating_sub(offset))
            .max(usize::from(offset < text.len()));
        Self {
            path: path.to_path_buf(),
            line,
            column,
            span: Some((offset, len)),
            message: message.into(),
            hint: None,
        }
    }

    /// A problem at a byte offset of `text`.
    pub fn at_offset(
        path: &Path,
        text: &str,
        offset: usize,
        len: usize,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = line_col(text, offset);
        Self::at(path, text, line, column, len, message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    fn sort_key(&self) -> (&Path, usize, usize, &str) {
        (&self.path, self.line, self.column, &self.message)
    }
}

impl fmt::Display for Problem {
    /// The one-line form: `file:line:col: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column.max(1))?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one load, with the sources needed to show them.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    problems: Vec<Problem>,
    sources: BTreeMap<PathBuf, Arc<str>>,
}

impl Diagnostics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers a file's text so its problems can be underlined.
    pub fn add_source(&mut self, path: &Path, text: Arc<str>) {
        self.sources.insert(path.to_path_buf(), text);
    }

    pub fn push(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    pub fn extend(&mut self, problems: impl IntoIterator<Item = Problem>) {
        self.problems.extend(problems);
    }

    /// Moves another collection's problems and sources into this one.
    pub fn absorb(&mut self, other: Diagnostics) {
        self.problems.extend(other.problems);
        self.sources.extend(other.sources);
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn len(&self) -> usize {
        self.problems.len()
    }

    /// Problems sorted by file, line, column and message, duplicates removed.
    pub fn problems(&self) -> Vec<&Problem> {
        let mut sorted: Vec<&Problem> = self.problems.iter().collect();
        sorted.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        sorted.dedup();
        sorted
    }

    /// `Err(self)` when any problem was recorded.
    pub fn into_result(self) -> Result<(), Diagnostics> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }

    /// Renders every problem, sorted, with the source line underlined where known.
    pub fn render(&self, color: bool) -> String {
        let theme = if color {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        // Unwrapped: each problem's `file:line:col: message` stays on one line, for grep
        // and for editors that jump to `file:line`.
        let handler = GraphicalReportHandler::new_themed(theme)
            .with_width(100)
            .with_wrap_lines(false);
        let mut out = String::new();
        for problem in self.problems() {
            // A snippet of a very long line (minified JSON, a generated one-line flow mapping)
            // would be unreadable, and miette cannot draw columns past 65,535: the problem is
            // shown by its `file:line:col` alone.
            let source = self
                .sources
                .get(&problem.path)
                .filter(|text| !spans_a_long_line(text, problem.span))
                .cloned();
            let report = Rendered { problem, source };
            if handler.render_report(&mut out, &report).is_err() {
                out.push_str(&format!("error: {problem}\n"));
            }
        }
        let count = self.problems().len();
        out.push_str(&format!(
            "{count} problem{} found; nothing was started or written\n",
            if count == 1 { "" } else { "s" }
        ));
        out
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in self.problems() {
            writeln!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Longest source line shown in a snippet, in bytes.
const SNIPPET_LINE_MAX: usize = 1000;

/// Whether the span starts or ends on a line of `text` longer than [`SNIPPET_LINE_MAX`].
fn spans_a_long_line(text: &str, span: Option<(usize, usize)>) -> bool {
    let Some((offset, len)) = span else {
        return false;
    };
    let long = |at: usize| {
        let at = floor_char_boundary(text, at.min(text.len()));
        let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        end - start > SNIPPET_LINE_MAX
    };
    long(offset) || long(offset.saturating_add(len))
}

/// Adapter presenting one [`Problem`] to miette.
struct Rendered<'a> {
    problem: &'a Problem,
    source: Option<Arc<str>>,
}

impl fmt::Debug for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.problem, f)
    }
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.problem, f)
    }
}

impl std::error::Error for Rendered<'_> {}

impl Diagnostic for Rendered<'_> {
    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.problem
            .hint
            .as_ref()
            .map(|hint| Box::new(hint) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        // The labels below are only produced when the source is known.
        self.source
            .as_ref()
            .map(|text| text as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let (offset, len) = self.problem.span?;
        self.source.as_ref()?;
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some("here".to_owned()),
            (offset, len),
        ))))
    }
}

/// The source of a file with its name, for callers that want miette's own rendering.
pub fn named_source(path: &Path, text: &str) -> NamedSource<String> {
    NamedSource::new(path.display().to_string(), text.to_owned())
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Byte offset of a 1-based line and column (in characters); clamps to the text.
pub fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let mut offset = 0;
    for _ in 1..line.max(1) {
        match text[offset..].find('\n') {
            Some(i) => offset += i + 1,
            None => return text.len(),
        }
    }
    let line_text = &text[offset..];
    let line_end = line_text.find('\n').unwrap_or(line_text.len());
    let within: usize = line_text[..line_end]
        .chars()
        .take(column.saturating_sub(1))
        .map(char::len_utf8)
        .sum();
    offset + within
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_round_trips() {
        let text = "a: 1\nbé: 2\nc: 3\n";
        let offset = offset_of(text, 2, 3);
        assert_eq!(&text[offset..offset + 1], ":");
        assert_eq!(line_col(text, offset), (2, 3));
    }

    #[test]
    fn a_problem_on_a_very_long_line_is_shown_by_its_location_alone() {
        let path = Path::new("minified.json");
        // Past column 65,535 miette's drawing panics; past 1,000 bytes a snippet is noise.
        let text = format!("{{\"a\": \"{}\", \"comand\": 1}}\n", "é".repeat(40_000));
        let at = text.find("comand").expect("key");
        let mut diags = Diagnostics::new();
        diags.add_source(path, Arc::from(text.as_str()));
        diags.push(Problem::at_offset(
            path,
            &text,
            at,
            8,
            "unknown key `comand`",
        ));
        let out = diags.render(false);
        assert!(
            out.contains("minified.json:1:40012: unknown key `comand`"),
            "{out}"
        );
        assert!(out.len() < 1000, "{}", out.len());
    }

    #[test]
    fn render_underlines_the_line_and_sorts() {
        let path = Path::new("razar.yaml");
        let text = "components:\n  - name: a\n  - name: b\n";
        let mut diags = Diagnostics::new();
        diags.add_source(path, Arc::from(text));
        diags.push(Problem::at(path, text, 3, 11, 1, "second"));
        diags.push(Problem::at(path, text, 2, 11, 1, "first").with_hint("do this"));
        let out = diags.render(false);
        let first = out.find("first").expect("first rendered");
        let second = out.find("second").expect("second rendered");
        assert!(first < second, "{out}");
        assert!(out.contains("razar.yaml:2:11"), "{out}");
        assert!(out.contains("do this"), "{out}");
        assert!(out.contains("2 problems found"), "{out}");
    }
}
