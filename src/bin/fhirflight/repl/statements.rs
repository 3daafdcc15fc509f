//! Input to statements: lines in, whole statements and meta commands out. A statement ends at a
//! `;` that the SQL tokenizer DataFusion parses with (sqlparser, the session's dialect) reads as
//! one, so a `;` in a string, a quoted name or a comment does not end it; a line that starts
//! with `\` between statements is a meta command. The dialect is DataFusion's default, the
//! session's unless a statement `SET`s another: inputs are split before the session is built.

use datafusion::config::ConfigOptions;
use datafusion::sql::sqlparser::dialect::{Dialect, GenericDialect, dialect_from_str};
use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};

/// What the input holds, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A SQL statement without its `;`, and the line it starts on.
    Sql { text: String, line: usize },
    /// A meta command line (`\d Patient`), and its line.
    Meta { text: String, line: usize },
}

/// Collects lines into statements.
pub(crate) struct StatementReader {
    dialect: Box<dyn Dialect>,
    /// The start of a statement not ended yet: never only blanks and comments.
    buffer: String,
    /// The line `buffer` starts on.
    first_line: usize,
    /// Lines read.
    lines: usize,
}

impl StatementReader {
    pub(crate) fn new() -> Self {
        let dialect = dialect_from_str(ConfigOptions::default().sql_parser.dialect);
        Self::with_dialect(dialect.unwrap_or_else(|| Box::new(GenericDialect {})))
    }

    fn with_dialect(dialect: Box<dyn Dialect>) -> Self {
        Self {
            dialect,
            buffer: String::new(),
            first_line: 1,
            lines: 0,
        }
    }

    /// True when a statement has begun and awaits its `;` (the shell's continuation prompt).
    pub(crate) fn is_pending(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// Forgets the statement begun (Ctrl-C at a continuation prompt).
    pub(crate) fn clear(&mut self) {
        self.buffer.clear();
    }

    /// Reads one line (without its line break) and returns what it ended.
    pub(crate) fn push_line(&mut self, line: &str) -> Vec<Entry> {
        self.lines += 1;
        if self.buffer.is_empty() {
            self.first_line = self.lines;
            if line.trim_start().starts_with('\\') {
                return vec![Entry::Meta {
                    text: line.trim().to_owned(),
                    line: self.lines,
                }];
            }
        }
        self.buffer.push_str(line);
        self.buffer.push('\n');
        let Ok(tokens) =
            Tokenizer::new(self.dialect.as_ref(), &self.buffer).tokenize_with_location()
        else {
            // An open string, quoted name or comment: the statement goes on on the next line
            // (at the end of the input, the parser names what is open).
            return Vec::new();
        };
        let offsets = LineOffsets::new(&self.buffer);
        let mut entries = Vec::new();
        let mut start = 0;
        let mut blank = true;
        for token in &tokens {
            match token.token {
                Token::SemiColon => {
                    let end = offsets.byte(token.span.start);
                    if !blank {
                        entries.push(self.entry(start, end));
                    }
                    start = offsets.byte(token.span.end);
                    blank = true;
                }
                Token::Whitespace(_) => {}
                _ => blank = false,
            }
        }
        if blank {
            self.buffer.clear();
        } else {
            self.first_line += self.buffer[..start].matches('\n').count();
            self.buffer.drain(..start);
        }
        entries
    }

    /// The last statement when the input ends without its `;`.
    pub(crate) fn finish(&mut self) -> Option<Entry> {
        let entry = self.is_pending().then(|| self.entry(0, self.buffer.len()));
        self.buffer.clear();
        entry
    }

    /// The statement in `buffer[start..end]`, its blank lines and spaces around it left out.
    fn entry(&self, start: usize, end: usize) -> Entry {
        let text = &self.buffer[start..end];
        let trimmed = text.trim_start();
        let skipped = &self.buffer[..start + text.len() - trimmed.len()];
        Entry::Sql {
            text: trimmed.trim_end().to_owned(),
            line: self.first_line + skipped.matches('\n').count(),
        }
    }
}

/// Byte offsets of the tokenizer's locations (1-based lines, columns in characters).
struct LineOffsets<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineOffsets<'a> {
    fn new(text: &'a str) -> Self {
        let breaks = text.match_indices('\n').map(|(i, _)| i + 1);
        Self {
            text,
            starts: std::iter::once(0).chain(breaks).collect(),
        }
    }

    fn byte(&self, location: Location) -> usize {
        let line = usize::try_from(location.line).unwrap_or(usize::MAX);
        let Some(&start) = self.starts.get(line.saturating_sub(1)) else {
            return self.text.len();
        };
        let column = usize::try_from(location.column).unwrap_or(usize::MAX);
        self.text[start..]
            .char_indices()
            .nth(column.saturating_sub(1))
            .map_or(self.text.len(), |(i, _)| start + i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &str) -> Vec<Entry> {
        let mut reader = StatementReader::new();
        let mut entries: Vec<Entry> = input.lines().flat_map(|l| reader.push_line(l)).collect();
        entries.extend(reader.finish());
        entries
    }

    fn sql(text: &str, line: usize) -> Entry {
        Entry::Sql {
            text: text.to_owned(),
            line,
        }
    }

    #[test]
    fn statements_end_at_semicolons_outside_strings_names_and_comments() {
        let input = "SELECT 'a;b' AS \"x;y\"; -- c;d\nSELECT /* ; */ 2;SELECT 3\n;";
        assert_eq!(
            read(input),
            [
                sql("SELECT 'a;b' AS \"x;y\"", 1),
                sql("SELECT /* ; */ 2", 2),
                sql("SELECT 3", 2),
            ]
        );
    }

    #[test]
    fn a_statement_spans_lines_and_the_last_needs_no_semicolon() {
        let mut reader = StatementReader::new();
        assert!(reader.push_line("SELECT 'open").is_empty());
        assert!(reader.is_pending(), "an open string goes on");
        assert!(reader.push_line("string'").is_empty());
        assert_eq!(reader.push_line(";"), [sql("SELECT 'open\nstring'", 1)]);
        assert!(!reader.is_pending());
        assert!(reader.push_line("").is_empty());
        assert!(reader.push_line("  -- a comment alone").is_empty());
        assert!(
            !reader.is_pending(),
            "blanks and comments begin no statement"
        );
        assert!(reader.push_line("SELECT").is_empty());
        assert!(reader.push_line("  2").is_empty());
        assert_eq!(reader.finish(), Some(sql("SELECT\n  2", 6)));
        assert_eq!(reader.finish(), None);
    }

    #[test]
    fn meta_commands_are_lines_between_statements() {
        let input = "\\d\nSELECT 1;\n  \\d Patient  \nSELECT\n\\d\n;;";
        assert_eq!(
            read(input),
            [
                Entry::Meta {
                    text: "\\d".into(),
                    line: 1
                },
                sql("SELECT 1", 2),
                Entry::Meta {
                    text: "\\d Patient".into(),
                    line: 3
                },
                // Within a statement a backslash is the SQL's (the parser will say it is wrong).
                sql("SELECT\n\\d", 4),
            ]
        );
    }

    #[test]
    fn locations_in_multibyte_text_map_to_bytes() {
        assert_eq!(
            read("SELECT 'é'; SELECT 'ü'"),
            [sql("SELECT 'é'", 1), sql("SELECT 'ü'", 1)]
        );
    }
}
