//! Tab completion of table and column names in the shell: the names browsing knows (tables, and
//! the columns of those with a snapshot or a view's schema), so completing never exports.

use std::sync::{Arc, Mutex};

use rustyline::completion::Completer;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};

/// The line editor's helper: completes from a list of names the shell refreshes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Names {
    names: Arc<Mutex<Vec<String>>>,
}

impl Names {
    /// Replaces the names (sorted, no duplicates).
    pub(crate) fn set(&self, mut names: Vec<String>) {
        names.sort_unstable();
        names.dedup();
        *self.names.lock().unwrap_or_else(|e| e.into_inner()) = names;
    }
}

/// The start of the word before `pos` in `line` and the names it begins, case-insensitively. No
/// word, no names: a Tab after a space would list hundreds of columns.
fn complete(names: &[String], line: &str, pos: usize) -> (usize, Vec<String>) {
    let before = &line[..pos];
    let start = before
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_alphanumeric() || *c == '_')
        .last()
        .map_or(pos, |(i, _)| i);
    let word = before[start..].to_lowercase();
    if word.is_empty() {
        return (pos, Vec::new());
    }
    let matching = names
        .iter()
        .filter(|name| name.to_lowercase().starts_with(&word))
        .cloned()
        .collect();
    (start, matching)
}

impl Completer for Names {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        Ok(complete(&names, line, pos))
    }
}

impl Hinter for Names {
    type Hint = String;
}
impl Highlighter for Names {}
impl Validator for Names {}
impl Helper for Names {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_the_word_before_the_cursor_whatever_its_case() {
        let names: Vec<String> = [
            "Patient",
            "birthDate",
            "gender",
            "name_0_family",
            "Practitioner",
        ]
        .map(String::from)
        .into();
        let (start, found) = complete(&names, "SELECT gen FROM pa", 18);
        assert_eq!((start, found), (16, vec!["Patient".to_owned()]));
        let (start, found) = complete(&names, "SELECT BIRTH", 12);
        assert_eq!((start, found), (7, vec!["birthDate".to_owned()]));
        let (start, found) = complete(&names, "SELECT name_0_f, x FROM P", 15);
        assert_eq!((start, found), (7, vec!["name_0_family".to_owned()]));
        let (_, found) = complete(&names, "SELECT * FROM P", 15);
        assert_eq!(found, ["Patient", "Practitioner"]);
        assert!(
            complete(&names, "SELECT ", 7).1.is_empty(),
            "no word, no list"
        );
        let (start, found) = complete(&names, "SELECT é", "SELECT é".len());
        assert_eq!((start, found.len()), (7, 0));
    }

    #[test]
    fn names_are_replaced_sorted_without_duplicates() {
        let names = Names::default();
        names.set(vec!["b".into(), "a".into(), "b".into()]);
        assert_eq!(*names.names.lock().unwrap(), ["a", "b"]);
    }
}
