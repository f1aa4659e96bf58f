//! Plan-file diagnostics: compiler-style `file:line:column: field: message` lines, one per
//! problem, so an editor or CI log can jump straight to each.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::source::{Entry, Kind, Node};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Where in the plan's structure, e.g. `suite[0].test[1].track`; empty for syntax errors.
    pub field: String,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in one plan file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PlanErrors {
    pub file: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            writeln!(f, "{d}")?;
        }
        let n = self.diagnostics.len();
        write!(
            f,
            "{} has {n} problem{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )
    }
}

/// Collects diagnostics while validation walks a file, turning byte spans into lines and columns.
pub struct Sink<'a> {
    file: &'a Path,
    text: &'a str,
    pub diagnostics: Vec<Diagnostic>,
    /// What is allowed but likely not meant: shown by `validate` and `plan`, failing nothing.
    pub warnings: Vec<Diagnostic>,
}

impl<'a> Sink<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        Sink {
            file,
            text,
            diagnostics: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// An empty sink for the same file, for validating part of it on another thread.
    pub fn fork(&self) -> Sink<'a> {
        Sink::new(self.file, self.text)
    }

    pub fn error(
        &mut self,
        span: &Range<usize>,
        field: impl fmt::Display,
        message: impl Into<String>,
    ) {
        self.push(span, field, message.into(), None);
    }

    /// A table's entries; any other value is reported as what it is.
    pub fn table<'t, 'n>(
        &mut self,
        node: &'t Node<'n>,
        field: impl fmt::Display,
    ) -> Option<&'t [Entry<'n>]> {
        match &node.kind {
            Kind::Table(entries) => Some(entries),
            other => {
                let message = format!("expected a table, found {}", other.describe());
                self.error(&node.span, field, message);
                None
            }
        }
    }

    pub fn error_with_help(
        &mut self,
        span: &Range<usize>,
        field: impl fmt::Display,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.push(span, field, message.into(), Some(help.into()));
    }

    pub fn warning(
        &mut self,
        span: &Range<usize>,
        field: impl fmt::Display,
        message: impl Into<String>,
    ) {
        let warning = self.diagnostic(span, field, message.into(), None);
        self.warnings.push(warning);
    }

    fn push(
        &mut self,
        span: &Range<usize>,
        field: impl fmt::Display,
        message: String,
        help: Option<String>,
    ) {
        let error = self.diagnostic(span, field, message, help);
        self.diagnostics.push(error);
    }

    fn diagnostic(
        &self,
        span: &Range<usize>,
        field: impl fmt::Display,
        message: String,
        help: Option<String>,
    ) -> Diagnostic {
        let (line, column) = line_column(self.text, span.start);
        Diagnostic {
            file: self.file.to_owned(),
            line,
            column,
            field: field.to_string(),
            message,
            help,
        }
    }
}

/// The candidate closest to a misspelt `key`, if one is close enough to suggest.
pub fn closest<'c>(key: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|k| (strsim::jaro_winkler(k, key), *k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::line_column;

    #[test]
    fn line_and_column_count_characters() {
        let text = "ab\nçd = 1\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 3), (2, 1));
        assert_eq!(line_column(text, 6), (2, 3));
        assert_eq!(line_column(text, 999), (3, 1));
    }
}
