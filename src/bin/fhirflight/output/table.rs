//! The table format: a header and a line per row between `+---+` borders, written as the rows
//! come. The first rows (up to [`LAYOUT_ROWS`], or the rows shown when fewer) set the column
//! widths; a later value wider than its column is written whole and pushes its row's border out,
//! so that a long result is neither held back nor cut, as it would be to fit every row.

use std::borrow::Cow;
use std::io::Write;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatchWriter;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use unicode_width::{UnicodeWidthChar as _, UnicodeWidthStr as _};

/// Rows held to set the column widths before the first line is written.
const LAYOUT_ROWS: usize = 1000;

/// The narrowest a column is cut to when fitting a terminal.
const MIN_WIDTH: usize = 4;

/// Writes record batches as a table to `out`.
pub(super) struct TableWriter<W> {
    out: W,
    header: Vec<String>,
    /// Numbers are right-aligned.
    right: Vec<bool>,
    /// Rows shown; the others are skipped (the caller counts them).
    max_rows: usize,
    /// The terminal width the table is fitted to; `None`: values are written whole.
    width: Option<usize>,
    /// Rows taken to be shown: held or written.
    taken: usize,
    /// Rows held until the column widths are set.
    held: Vec<Vec<String>>,
    /// Set once the header is written.
    widths: Option<Vec<usize>>,
}

impl<W: Write> TableWriter<W> {
    /// A table of `schema`'s columns showing `max_rows` rows (`None`: all), fitted to `width`
    /// columns (`None`: as wide as the values).
    pub(super) fn new(
        out: W,
        schema: &Schema,
        max_rows: Option<usize>,
        width: Option<usize>,
    ) -> Self {
        Self {
            out,
            header: schema
                .fields()
                .iter()
                .map(|f| printable(f.name().clone()))
                .collect(),
            right: schema
                .fields()
                .iter()
                .map(|f| f.data_type().is_numeric())
                .collect(),
            max_rows: max_rows.unwrap_or(usize::MAX),
            width,
            taken: 0,
            held: Vec::new(),
            widths: None,
        }
    }

    /// Sets the column widths from the header and the held rows, and writes them.
    fn lay_out(&mut self) -> Result<(), ArrowError> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.width()).collect();
        for row in &self.held {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.width());
            }
        }
        if let Some(total) = self.width {
            fit(&mut widths, total);
        }
        let border = border(&widths);
        writeln!(self.out, "{border}")?;
        // The header is left-aligned whatever its column holds: no `right` for it.
        let cut = self.width.is_some();
        write_line(&mut self.out, &self.header, &widths, &[], cut)?;
        writeln!(self.out, "{border}")?;
        for row in std::mem::take(&mut self.held) {
            write_line(&mut self.out, &row, &widths, &self.right, cut)?;
        }
        self.widths = Some(widths);
        Ok(())
    }
}

impl<W: Write> RecordBatchWriter for TableWriter<W> {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        let take = batch.num_rows().min(self.max_rows - self.taken);
        if take == 0 {
            return Ok(());
        }
        self.taken += take;
        let rows = cells(batch, take)?;
        match &self.widths {
            Some(widths) => {
                for row in &rows {
                    write_line(
                        &mut self.out,
                        row,
                        widths,
                        &self.right,
                        self.width.is_some(),
                    )?;
                }
            }
            None => {
                self.held.extend(rows);
                if self.held.len() >= LAYOUT_ROWS.min(self.max_rows) {
                    self.lay_out()?;
                }
            }
        }
        // Each batch reaches the screen as it comes.
        self.out.flush()?;
        Ok(())
    }

    fn close(mut self) -> Result<(), ArrowError> {
        if self.widths.is_none() {
            self.lay_out()?;
        }
        let widths = self.widths.as_deref().unwrap_or_default();
        writeln!(self.out, "{}", border(widths))?;
        Ok(self.out.flush()?)
    }
}

/// Writes a row of `cells`, each padded to its width (on the left where `right` says so), or
/// `cut` to it.
fn write_line(
    out: &mut impl Write,
    cells: &[String],
    widths: &[usize],
    right: &[bool],
    cut_to_width: bool,
) -> std::io::Result<()> {
    let mut line = String::from("|");
    for (i, (cell, &width)) in cells.iter().zip(widths).enumerate() {
        let (text, used) = if cut_to_width {
            cut(cell, width)
        } else {
            (Cow::from(cell.as_str()), cell.width())
        };
        let pad = " ".repeat(width.saturating_sub(used));
        let (before, after) = match right.get(i) {
            Some(true) => (pad.as_str(), ""),
            _ => ("", pad.as_str()),
        };
        line.push_str(&format!(" {before}{text}{after} |"));
    }
    writeln!(out, "{line}")
}

/// The first `rows` rows of `batch` as printable cells; a null is an empty cell.
fn cells(batch: &RecordBatch, rows: usize) -> Result<Vec<Vec<String>>, ArrowError> {
    let options = FormatOptions::default();
    let columns = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    (0..rows)
        .map(|row| {
            columns
                .iter()
                .map(|c| c.value(row).try_to_string().map(printable))
                .collect()
        })
        .collect()
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`): a row stays one line, and a
/// value cannot send escape sequences to the terminal.
fn printable(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// `text` cut to `width` terminal columns, ending in `…`, if it is wider; and its width.
fn cut(text: &str, width: usize) -> (Cow<'_, str>, usize) {
    let full = text.width();
    if full <= width {
        return (text.into(), full);
    }
    let mut kept = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        kept.push(c);
        used += w;
    }
    kept.push('…');
    (kept.into(), used + 1)
}

/// Narrows the widest columns to one width so that the table fits in `total` terminal columns,
/// or as nearly as [`MIN_WIDTH`] allows; narrower columns keep their width.
fn fit(widths: &mut [usize], total: usize) {
    // `| ` before the first cell, ` | ` between two, ` |` after the last.
    let mut room = total.saturating_sub(3 * widths.len() + 1);
    let mut sorted = widths.to_vec();
    sorted.sort_unstable();
    let mut left = sorted.len();
    for width in sorted {
        let share = room / left;
        if width > share {
            let cap = share.max(MIN_WIDTH);
            widths.iter_mut().for_each(|w| *w = (*w).min(cap));
            return;
        }
        room -= width;
        left -= 1;
    }
}

fn border(widths: &[usize]) -> String {
    let mut line = String::from("+");
    for width in widths {
        line.push_str(&"-".repeat(width + 2));
        line.push('+');
    }
    line
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};

    use super::*;

    fn batch(ids: &[&str], ns: &[Option<i64>]) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("id", Arc::new(StringArray::from(ids.to_vec())) as ArrayRef),
            ("n", Arc::new(Int64Array::from(ns.to_vec())) as ArrayRef),
        ])
        .unwrap()
    }

    fn table(batches: &[RecordBatch], max_rows: Option<usize>, width: Option<usize>) -> String {
        let mut out = Vec::new();
        let mut writer = TableWriter::new(&mut out, &batches[0].schema(), max_rows, width);
        for batch in batches {
            writer.write(batch).unwrap();
        }
        writer.close().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbers_are_right_aligned_and_nulls_empty() {
        let out = table(&[batch(&["a", "bbb"], &[Some(7), None])], None, None);
        assert_eq!(
            out,
            "+-----+---+\n\
             | id  | n |\n\
             +-----+---+\n\
             | a   | 7 |\n\
             | bbb |   |\n\
             +-----+---+\n"
        );
    }

    #[test]
    fn an_empty_result_keeps_its_header() {
        let out = table(&[batch(&[], &[])], None, None);
        assert_eq!(out, "+----+---+\n| id | n |\n+----+---+\n+----+---+\n");
    }

    #[test]
    fn max_rows_shows_the_first_rows_of_several_batches() {
        let batches = [
            batch(&["a", "b"], &[Some(1), Some(2)]),
            batch(&["c", "d"], &[Some(3), Some(4)]),
        ];
        let out = table(&batches, Some(3), None);
        assert!(out.contains("| c  | 3 |") && !out.contains("| d "), "{out}");
        assert_eq!(
            table(&batches, Some(0), None).lines().count(),
            4,
            "header only"
        );
    }

    #[test]
    fn wide_values_are_cut_to_the_terminal_and_whole_otherwise() {
        let long = "x".repeat(100);
        let batches = [batch(&["a", &long], &[Some(1), Some(2)])];
        let out = table(&batches, None, Some(30));
        assert!(out.lines().all(|l| l.width() <= 30), "{out}");
        assert!(
            out.contains(&format!("| {}… | 2 |", "x".repeat(21))),
            "{out}"
        );
        let out = table(&batches, None, None);
        assert!(out.contains(&format!("| {long} | 2 |")), "{out}");
    }

    #[test]
    fn a_later_wider_value_is_written_whole() {
        let first = batch(&vec!["a"; LAYOUT_ROWS], &vec![Some(1); LAYOUT_ROWS]);
        let out = table(&[first, batch(&["wider"], &[Some(2)])], None, None);
        assert!(out.contains("| a  | 1 |\n| wider | 2 |\n"), "{out}");
    }

    #[test]
    fn control_characters_are_escaped() {
        let out = table(&[batch(&["two\nlines \u{1b}[31m"], &[None])], None, None);
        assert!(out.contains(r"| two\nlines \u{1b}[31m |"), "{out}");
    }

    #[test]
    fn fit_narrows_only_the_widest_columns() {
        let mut widths = vec![2, 50, 30];
        fit(&mut widths, 40);
        assert_eq!(widths, vec![2, 14, 14]);
        assert!(widths.iter().sum::<usize>() + 10 <= 40);
        let mut narrow = vec![2, 3];
        fit(&mut narrow, 80);
        assert_eq!(narrow, vec![2, 3]);
        let mut tiny = vec![20, 20];
        fit(&mut tiny, 5);
        assert_eq!(tiny, vec![MIN_WIDTH, MIN_WIDTH]);
    }
}
