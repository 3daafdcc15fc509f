//! How `fhirflight sql` writes its result: batch by batch as the query yields them (a result is
//! never collected whole), in the `--format` asked for, to standard output or the `--output` file.

mod table;

use std::io::{BufWriter, IsTerminal as _, Write};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::ValueEnum as _;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::csv;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::json::{self, writer::JsonArray, writer::LineDelimited};
use datafusion::arrow::record_batch::RecordBatchWriter;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::parquet::arrow::ArrowWriter;
use fhirflight::{Error, Result};
use futures::{Stream, StreamExt};

use self::table::TableWriter;

/// `--format`, with datafusion-cli's names (`nd-json` is accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    /// A table to read.
    Table,
    /// Comma-separated values with a header.
    Csv,
    /// Tab-separated values with a header.
    Tsv,
    /// One JSON array of objects, nulls written out.
    Json,
    /// A JSON object a line, nulls written out.
    #[value(alias = "nd-json")]
    Ndjson,
    /// A Parquet file (needs --output).
    Parquet,
    /// An Arrow IPC stream.
    Arrow,
}

impl std::fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = self.to_possible_value().expect("no format is skipped");
        f.write_str(value.get_name())
    }
}

/// `--maxrows`: a number, or `inf` (`infinite`, `none`) as datafusion-cli spells no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MaxRows(Option<usize>);

impl FromStr for MaxRows {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "inf" | "infinite" | "none" => Ok(MaxRows(None)),
            number => number
                .parse()
                .map(|n| MaxRows(Some(n)))
                .map_err(|_| format!("{text:?}: expected a number of rows or `inf`")),
        }
    }
}

/// Rows a table on a terminal shows unless `--maxrows` says otherwise (datafusion-cli's default).
const TERMINAL_MAX_ROWS: usize = 40;

/// The width of a terminal that does not tell its own.
const DEFAULT_TERMINAL_WIDTH: usize = 80;

/// Standard output's width in columns when it is a terminal: `COLUMNS` when set (it wins, as in
/// `ls`), else what the terminal says, else 80.
pub(crate) fn stdout_terminal_width() -> Option<usize> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let columns = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok());
    let asked = || {
        console::Term::stdout()
            .size_checked()
            .map(|(_, c)| c.into())
    };
    Some(
        columns
            .filter(|&c| c > 0)
            .or_else(asked)
            .unwrap_or(DEFAULT_TERMINAL_WIDTH),
    )
}

/// What `fhirflight sql` writes and where: its flags, checked before the session is built, so
/// that a wrong combination costs no export.
#[derive(Debug)]
pub(crate) struct Output {
    format: OutputFormat,
    path: Option<PathBuf>,
    /// The rows of a table shown (the others are counted); `None`: all.
    max_rows: Option<usize>,
    /// The width a table is fitted to, its wide values cut; `None`: values are written whole.
    width: Option<usize>,
    /// Whether a table has its footer (`--quiet` leaves it out, as datafusion-cli's does).
    footer: bool,
}

impl Output {
    /// The output of the flags `--format`, `--output`, `--maxrows` when standard output is a
    /// terminal of `terminal_width` columns (`None`: a file or a pipe). Only the table on a
    /// terminal that no flag asked for is cut to a screenful; what goes to a file, a pipe or a
    /// chosen format is the whole result.
    pub(crate) fn new(
        format: Option<OutputFormat>,
        path: Option<PathBuf>,
        max_rows: Option<MaxRows>,
        terminal_width: Option<usize>,
    ) -> Result<Self> {
        let screen_width = terminal_width.filter(|_| format.is_none() && path.is_none());
        let format = format.unwrap_or(OutputFormat::Table);
        if max_rows.is_some() && format != OutputFormat::Table {
            return Err(Error::config(format!(
                "--maxrows applies to --format table, not {format}"
            )));
        }
        match (format, &path, terminal_width) {
            (OutputFormat::Parquet, None, _) => Err(Error::config(
                "--format parquet needs --output FILE: Parquet is read from a file, not a stream",
            )),
            (OutputFormat::Arrow, None, Some(_)) => Err(Error::config(
                "--format arrow writes binary data: give --output FILE, or redirect or pipe standard output",
            )),
            _ => Ok(Self {
                format,
                max_rows: match max_rows {
                    Some(MaxRows(max)) => max,
                    None => screen_width.map(|_| TERMINAL_MAX_ROWS),
                },
                width: screen_width,
                path,
                footer: true,
            }),
        }
    }

    /// Opens the destination: creates the `--output` file (before the query, so that a path
    /// that cannot be written fails before an export).
    pub(crate) fn open(&self) -> Result<Destination> {
        let (sink, name): (Box<dyn Write + Send>, PathBuf) = match &self.path {
            Some(path) => {
                let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
                (Box::new(file), path.clone())
            }
            None => (Box::new(std::io::stdout()), "standard output".into()),
        };
        Ok(Destination {
            sink: BufWriter::new(sink),
            partial: self.path.clone(),
            name,
            closed: false,
        })
    }

    /// Writes the batches of `stream` to `out` as they come. Returns the rows of the result, or
    /// `None` when the reader of standard output closed it first (`| head`): the rest of the
    /// result is not wanted, which is no error.
    pub(crate) async fn write(
        &self,
        mut stream: SendableRecordBatchStream,
        mut out: Destination,
    ) -> Result<Option<usize>> {
        let schema = stream.schema();
        let json = || json::WriterBuilder::new().with_explicit_nulls(true);
        let written = match self.format {
            OutputFormat::Table => {
                let table = TableWriter::new(&mut out, &schema, self.max_rows, self.width);
                drain(&mut stream, Ok(table)).await
            }
            OutputFormat::Csv | OutputFormat::Tsv => {
                let delimiter = if self.format == OutputFormat::Tsv {
                    b'\t'
                } else {
                    b','
                };
                let writer = csv::WriterBuilder::new()
                    .with_delimiter(delimiter)
                    .build(&mut out);
                // A batch of no rows first: the header is written even when no row follows.
                let header = futures::stream::iter([Ok(RecordBatch::new_empty(schema))]);
                drain(header.chain(&mut stream), Ok(writer)).await
            }
            OutputFormat::Json => {
                drain(&mut stream, Ok(json().build::<_, JsonArray>(&mut out))).await
            }
            OutputFormat::Ndjson => {
                drain(&mut stream, Ok(json().build::<_, LineDelimited>(&mut out))).await
            }
            OutputFormat::Parquet => {
                let writer = ArrowWriter::try_new(&mut out, schema, None).map_err(Into::into);
                drain(&mut stream, writer).await
            }
            OutputFormat::Arrow => {
                drain(&mut stream, StreamWriter::try_new(&mut out, &schema)).await
            }
        };
        let written = written.and_then(|rows| {
            if self.format == OutputFormat::Json {
                // The array ends its line, as a text file does.
                writeln!(out)?;
            }
            out.flush()?;
            Ok(rows)
        });
        match written {
            Ok(rows) => {
                out.partial = None;
                Ok(Some(rows))
            }
            Err(_) if out.closed => Ok(None),
            Err(Failed::Query(e)) => Err(e.into()),
            Err(Failed::Write(e)) => Err(Error::io(&out.name, std::io::Error::other(e))),
        }
    }

    /// This output with or without the line under a table.
    pub(crate) fn with_footer(self, footer: bool) -> Self {
        Self { footer, ..self }
    }

    /// The line under a table, `3 rows, 0.012 s` or `50 rows, 40 shown, 0.012 s`, for standard
    /// error: standard output holds the result alone, whether it goes to a screen, a file or a
    /// pipe. None for the other formats, which are read by programs.
    pub(crate) fn footer(&self, rows: usize, elapsed: Duration) -> Option<String> {
        if self.format != OutputFormat::Table || !self.footer {
            return None;
        }
        let noun = if rows == 1 { "row" } else { "rows" };
        let shown = match self.max_rows {
            Some(max) if max < rows => format!(", {max} shown"),
            _ => String::new(),
        };
        Some(format!(
            "{rows} {noun}{shown}, {:.3} s",
            elapsed.as_secs_f64()
        ))
    }
}

/// Standard output or the `--output` file, buffered. Notices when the reader of standard output
/// closes it, whichever writer was writing; removes an `--output` file it did not finish.
pub(crate) struct Destination {
    sink: BufWriter<Box<dyn Write + Send>>,
    /// The `--output` file until the whole result is in it.
    partial: Option<PathBuf>,
    /// The file, or standard output, for errors.
    name: PathBuf,
    /// Standard output's reader went away (`EPIPE`).
    closed: bool,
}

impl Destination {
    fn noting<T>(&mut self, result: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &result
            && e.kind() == std::io::ErrorKind::BrokenPipe
        {
            self.closed = true;
        }
        result
    }
}

impl Write for Destination {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.sink.write(buf);
        self.noting(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let flushed = self.sink.flush();
        self.noting(flushed)
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        // A failed or interrupted query leaves no half-written file that looks whole.
        if let Some(path) = self.partial.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Why writing a result stopped.
enum Failed {
    /// The query failed.
    Query(DataFusionError),
    /// The writer failed: the destination, or a value the format cannot hold.
    Write(ArrowError),
}

impl From<std::io::Error> for Failed {
    fn from(error: std::io::Error) -> Self {
        Failed::Write(error.into())
    }
}

/// Writes each batch of `batches` with `writer` as it comes, then closes the writer; returns the
/// rows written.
async fn drain<W: RecordBatchWriter>(
    mut batches: impl Stream<Item = datafusion::error::Result<RecordBatch>> + Unpin,
    writer: Result<W, ArrowError>,
) -> Result<usize, Failed> {
    let mut writer = writer.map_err(Failed::Write)?;
    let mut rows = 0;
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(Failed::Query)?;
        rows += batch.num_rows();
        writer.write(&batch).map_err(Failed::Write)?;
    }
    writer.close().map_err(Failed::Write)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(
        format: Option<OutputFormat>,
        path: Option<&str>,
        max_rows: Option<&str>,
        terminal: Option<usize>,
    ) -> Result<Output> {
        let max_rows = max_rows.map(|m| m.parse().unwrap());
        Output::new(format, path.map(PathBuf::from), max_rows, terminal)
    }

    #[test]
    fn only_the_unasked_table_on_a_terminal_is_cut_to_a_screenful() {
        let screen = output(None, None, None, Some(120)).unwrap();
        assert_eq!((screen.max_rows, screen.width), (Some(40), Some(120)));
        let piped = output(None, None, None, None).unwrap();
        assert_eq!((piped.max_rows, piped.width), (None, None));
        for asked in [
            output(Some(OutputFormat::Table), None, None, Some(120)),
            output(None, Some("out.txt"), None, Some(120)),
        ] {
            let asked = asked.unwrap();
            assert_eq!((asked.max_rows, asked.width), (None, None));
        }
        let limited = output(None, None, Some("5"), None).unwrap();
        assert_eq!((limited.max_rows, limited.width), (Some(5), None));
        let unlimited = output(None, None, Some("inf"), Some(120)).unwrap();
        assert_eq!((unlimited.max_rows, unlimited.width), (None, Some(120)));
    }

    #[test]
    fn flag_combinations_that_cannot_work_are_refused() {
        let refused = |o: Result<Output>| o.unwrap_err().to_string();
        let csv = output(Some(OutputFormat::Csv), None, Some("5"), None);
        assert!(refused(csv).contains("--maxrows applies to --format table, not csv"));
        let parquet = output(Some(OutputFormat::Parquet), None, None, None);
        assert!(refused(parquet).contains("--format parquet needs --output FILE"));
        let arrow = output(Some(OutputFormat::Arrow), None, None, Some(80));
        assert!(refused(arrow).contains("--format arrow writes binary data"));
        // An IPC stream goes to a pipe; Parquet to a file.
        assert!(output(Some(OutputFormat::Arrow), None, None, None).is_ok());
        assert!(
            output(
                Some(OutputFormat::Parquet),
                Some("a.parquet"),
                None,
                Some(80)
            )
            .is_ok()
        );
    }

    #[test]
    fn maxrows_reads_as_datafusion_cli_reads_it() {
        assert_eq!("40".parse(), Ok(MaxRows(Some(40))));
        assert_eq!("0".parse(), Ok(MaxRows(Some(0))));
        for unlimited in ["inf", "Infinite", "none"] {
            assert_eq!(unlimited.parse(), Ok(MaxRows(None)));
        }
        assert!(
            "-1".parse::<MaxRows>()
                .unwrap_err()
                .contains("expected a number")
        );
    }

    #[test]
    fn the_footer_counts_rows_and_says_how_many_are_shown() {
        let second = Duration::from_millis(1234);
        let screen = output(None, None, None, Some(80)).unwrap();
        assert_eq!(screen.footer(1, second).unwrap(), "1 row, 1.234 s");
        assert_eq!(screen.footer(40, second).unwrap(), "40 rows, 1.234 s");
        assert_eq!(
            screen.footer(1000, second).unwrap(),
            "1000 rows, 40 shown, 1.234 s"
        );
        let csv = output(Some(OutputFormat::Csv), None, None, Some(80)).unwrap();
        assert_eq!(csv.footer(3, second), None);
    }
}
