//! Raw NDJSON (gzip or plain) to the Parquet table of a snapshot.

use std::fs;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::parquet::write_file;
use super::raw::open_raw;
use super::{TableFile, TableFiles};
use crate::chunks::{CHUNK, Source};
#[cfg(feature = "cluster")]
use crate::ndjson::InferredColumns;
use crate::ndjson::{
    DEFAULT_MAX_COLUMNS, DecodeOptions, DecodeSummary, Guess, OVERFLOW_COLUMN, SchemaInference,
    TableMode, Unforeseen, decode_chunks, decode_guessing, infer_chunks, infer_first,
};
use crate::warning::{Warning, WarningKind};
use crate::{Error, Result};

/// The name of a mode's table in a snapshot: `flattened`, `flattened-max<N>` (bounded lists),
/// `flattened-cols<N>` (a width bound other than [`DEFAULT_MAX_COLUMNS`]), both
/// (`flattened-max<N>-cols<M>`), `nested`.
pub fn mode_key(mode: &TableMode) -> String {
    match mode {
        TableMode::Flattened(o) => {
            let mut key = "flattened".to_owned();
            if let Some(n) = o.max_list_items() {
                key.push_str(&format!("-max{n}"));
            }
            if o.max_columns() != DEFAULT_MAX_COLUMNS {
                key.push_str(&format!("-cols{}", o.max_columns()));
            }
            key
        }
        TableMode::Nested => "nested".to_owned(),
    }
}

/// Set by [`stop_writes`]: snapshot writes in progress end with [`Error::Cancelled`].
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Stops every snapshot write of the process at its next batch or line: the conversions and raw
/// copies end with [`Error::Cancelled`] and their writers remove their temporary folders, so a
/// process that exits on a signal leaves nothing half-written behind. Nothing already committed
/// is touched, and there is no way back: call it when the process is about to exit.
pub fn stop_writes() {
    STOPPING.store(true, Ordering::SeqCst);
}

/// [`Error::Cancelled`] once [`stop_writes`] was called.
pub(super) fn check_stopping() -> Result<()> {
    match STOPPING.load(Ordering::Relaxed) {
        true => Err(Error::Cancelled),
        false => Ok(()),
    }
}

/// Skipped lines a warning names (all are counted).
const SKIPPED_SHOWN: usize = 5;

/// Converts the raw files of one resource type into the Parquet table of `mode` in `out_dir`
/// (created), in parts (`TableParts::add`): the schema of the first lines is a guess the rest is
/// decoded against in one pass, a new part starting where a line brings what the guess lacks,
/// and parts whose types the later lines changed are decoded again; the decoding runs on all
/// cores, in batches and with the strictness and line bound of `options`, while the Parquet
/// columns are encoded on all cores too (`snapshot/parquet.rs`).
/// With [`Strictness::Lenient`](crate::ndjson::Strictness::Lenient), bad lines are skipped and
/// counted: a [`WarningKind::SkippedLines`] warning naming the first few comes with the table;
/// [`Strictness::Strict`](crate::ndjson::Strictness::Strict) fails on the first instead, naming
/// its file and line. Resources with paths beyond the width bound of a flattened `mode` come with
/// a [`WarningKind::WideResources`] warning. Paths in the result are relative to `out_dir`; the
/// table's Arrow schema comes with it. `on_rows` is told the rows of each batch written, for
/// progress lines.
pub fn convert_raw(
    raw: &[PathBuf],
    resource_type: &str,
    mode: &TableMode,
    options: &DecodeOptions,
    out_dir: &Path,
    on_rows: &dyn Fn(u64),
) -> Result<(TableFiles, SchemaRef, Vec<Warning>)> {
    let mut parts = TableParts::new(resource_type, mode, options, out_dir)?;
    parts.add(raw, on_rows)?;
    parts.finish()
}

/// The Parquet table of one mode built part by part, so that the files of an export are
/// converted while the rest downloads: each part is a batch of raw files with the schema
/// inferred from its own lines; [`finish`](Self::finish) merges those into the table's schema
/// (what one inference over all files gives) and decodes again, against it, only the parts a
/// reader would have to cast (a Delta table's files have its types: Spark reads no integer file
/// of a decimal column) or that sent paths to the overflow column.
/// A part lacking some of the table's columns is kept: its resources have none of those paths,
/// and a reader fills them with nulls. When the parts differ from the table, a first file of no
/// rows carries its schema ([`Self::schema_part`]).
#[derive(Debug)]
pub(crate) struct TableParts {
    resource_type: String,
    mode: TableMode,
    options: DecodeOptions,
    out_dir: PathBuf,
    /// The inference over every part's lines.
    inference: SchemaInference,
    parts: Vec<Part>,
}

/// One part: the stretches of raw files it holds, and the Parquet file they were decoded into.
#[derive(Debug)]
struct Part {
    spans: Vec<Span>,
    file: TableFile,
    schema: arrow::datatypes::SchemaRef,
    summary: DecodeSummary,
}

impl TableParts {
    /// A table of `mode` written in `out_dir` (created).
    pub(crate) fn new(
        resource_type: &str,
        mode: &TableMode,
        options: &DecodeOptions,
        out_dir: &Path,
    ) -> Result<Self> {
        fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
        // Each file's path names it in errors.
        let options = options.clone().with_resource_type(resource_type);
        Ok(Self {
            resource_type: resource_type.to_owned(),
            inference: SchemaInference::with_options(mode, options.clone()),
            mode: mode.clone(),
            options,
            out_dir: out_dir.to_path_buf(),
            parts: Vec::new(),
        })
    }

    /// Converts `raw` as the next parts of the table, in one pass where it can: the schema of the
    /// first lines ([`GUESS_BYTES`]) is a [`Guess`] the rest is decoded against. A line
    /// the guess has no place for ends that part at the chunk holding it, and the next one
    /// starts there with a guess that knows the lines after it too; after [`GUESSES`] guesses the
    /// rest is inferred whole first (two passes), as a file whose lines keep bringing new paths
    /// wants.
    /// `on_rows` is told the rows of each batch written.
    pub(crate) fn add(&mut self, raw: &[PathBuf], on_rows: &dyn Fn(u64)) -> Result<()> {
        let mut rest = Span::wholes(raw);
        // The guesses start from the table's columns so far: the files of an export's next
        // part mostly have the paths of the last.
        let mut known = SchemaInference::with_options(&self.mode, self.options.clone());
        known.merge(&self.inference);
        for _ in 0..GUESSES {
            let started = std::time::Instant::now();
            let Some(guess) = self.guess(&rest, &mut known)? else {
                break;
            };
            let path = part_name(self.parts.len());
            let (file, summary, unforeseen) =
                self.write_part(&path, &guess.schema, on_rows, |on_batch| {
                    let sources = self.sources(&rest);
                    let (mode, options) = (&self.mode, self.options.clone());
                    decode_guessing(sources, &guess, mode, options, on_batch)
                })?;
            let spans = match unforeseen {
                Some(at) => split_spans(&mut rest, at),
                None => std::mem::take(&mut rest),
            };
            if spans.is_empty() {
                // Unforeseen in the first chunk, whose lines the guess was inferred from: not a
                // path or kind the guess lacks, but a batch the decoder cannot hold (over 2 GiB
                // of text), which the plain decode reports as it always did.
                break;
            }
            tracing::debug!(
                "{}: {} rows, {} columns to {}: decoded against the schema of its first lines \
                 and written in {:.3} s{}",
                self.resource_type,
                summary.rows,
                guess.schema.fields().len(),
                self.out_dir.join(&file.path).display(),
                started.elapsed().as_secs_f64(),
                if rest.is_empty() {
                    ""
                } else {
                    ", up to a line that schema lacks"
                },
            );
            self.parts.push(Part {
                spans,
                file,
                schema: guess.schema,
                summary,
            });
            if rest.is_empty() {
                self.inference = known;
                return Ok(());
            }
        }
        self.inference = known;
        self.add_inferred(rest, on_rows)
    }

    /// The guess for `spans`: `known` (what the lines before them gave) with the lines of their
    /// first [`GUESS_BYTES`] added. None in the nested mode and past the width bound.
    fn guess(&self, spans: &[Span], known: &mut SchemaInference) -> Result<Option<Guess>> {
        if !matches!(self.mode, TableMode::Flattened(_)) {
            return Ok(None);
        }
        let mut first = SchemaInference::with_options(&self.mode, self.options.clone());
        infer_first(self.sources(spans), &mut first, CHUNK, GUESS_BYTES)?;
        known.merge(&first);
        // A table needs a column (see `with_columns`): lines without any are inferred whole.
        Ok(known.guess().filter(|g| !g.schema.fields().is_empty()))
    }

    /// Converts `spans` as the next part, its schema inferred from all its lines first.
    fn add_inferred(&mut self, spans: Vec<Span>, on_rows: &dyn Fn(u64)) -> Result<()> {
        let started = std::time::Instant::now();
        let mut inference = SchemaInference::with_options(&self.mode, self.options.clone());
        infer_chunks(self.sources(&spans), &mut inference, CHUNK)?;
        let schema = with_columns(inference.schema());
        let inferred = started.elapsed();
        let path = part_name(self.parts.len());
        let (file, summary) = self.decode(&spans, &path, &schema, on_rows)?;
        tracing::debug!(
            "{}: {} rows, {} columns to {}: schema inferred in {:.3} s, decoded and written in \
             {:.3} s",
            self.resource_type,
            summary.rows,
            schema.fields().len(),
            self.out_dir.join(&path).display(),
            inferred.as_secs_f64(),
            (started.elapsed() - inferred).as_secs_f64(),
        );
        self.inference.merge(&inference);
        self.parts.push(Part {
            spans,
            file,
            schema,
            summary,
        });
        Ok(())
    }

    /// Converts `raw` as the one part of a table whose schema another process merges (a
    /// cluster's coordinator, `snapshot/distributed.rs`): against the columns `against` when
    /// given, else against its own, inferred here. Returns its file, the columns it was
    /// decoded against with the JSON kinds seen in each, and the lines it skipped. Flattened
    /// modes only: the nested mode's inference does not travel.
    #[cfg(feature = "cluster")]
    pub(super) fn one_part(
        mut self,
        raw: &[PathBuf],
        against: Option<&InferredColumns>,
    ) -> Result<(TableFile, InferredColumns, Skipped)> {
        let (file, summary) = match against {
            Some(columns) => {
                self.inference.merge_columns(columns);
                let schema = self.schema();
                self.decode(&Span::wholes(raw), &part_name(0), &schema, &|_| {})?
            }
            None => {
                self.add_inferred(Span::wholes(raw), &|_| {})?;
                let part = self.parts.pop().expect("the part just added");
                (part.file, part.summary)
            }
        };
        let columns = self.inference.columns().ok_or_else(|| {
            Error::snapshot("a conversion spread over processes makes flattened tables only")
        })?;
        Ok((file, columns, Skipped::of(&summary)))
    }

    /// The table's schema so far: what [`Self::finish`] makes the parts agree with.
    pub(crate) fn schema(&self) -> SchemaRef {
        with_columns(self.inference.schema())
    }

    /// The table's mode.
    pub(crate) fn mode(&self) -> &TableMode {
        &self.mode
    }

    /// The resources of the raw file `path` its parts decoded (lines that are not blank, bad
    /// ones skipped included): the file's count for the manifest, counted on the way.
    pub(crate) fn resources(&self, path: &Path) -> u64 {
        let per_span = self.parts.iter().flat_map(|p| {
            let counts = p.summary.resources_per_source.iter();
            p.spans.iter().zip(counts)
        });
        per_span
            .filter(|(span, _)| span.path == path)
            .map(|(_, n)| n)
            .sum()
    }

    /// The table: its parts made to agree with the merged schema, that schema, and the
    /// conversion's warnings.
    pub(crate) fn finish(mut self) -> Result<(TableFiles, SchemaRef, Vec<Warning>)> {
        let schema = self.schema();
        for n in 0..self.parts.len() {
            if agrees(&self.parts[n].schema, &schema) {
                continue;
            }
            let part = &self.parts[n];
            tracing::debug!(
                "{}: {} decoded again against the table's schema",
                self.resource_type,
                part.file.path
            );
            let (spans, path) = (part.spans.clone(), part.file.path.clone());
            let (file, summary) = self.decode(&spans, &path, &schema, &|_| {})?;
            let part = &mut self.parts[n];
            (part.file, part.summary, part.schema) = (file, summary, Arc::clone(&schema));
        }
        let warnings = conversion_warnings(
            &self.resource_type,
            &self.mode,
            self.parts.iter().map(|p| Skipped::of(&p.summary)),
        );
        let skipped_lines = self.parts.iter().map(|p| p.summary.skipped_count).sum();
        let mut files: Vec<TableFile> = Vec::with_capacity(self.parts.len() + 1);
        if self
            .parts
            .iter()
            .any(|p| p.schema.fields() != schema.fields())
        {
            files.push(self.schema_part(&schema)?);
        }
        files.extend(self.parts.into_iter().map(|p| p.file));
        let table = TableFiles::of(files, skipped_lines, &schema);
        Ok((table, schema, warnings))
    }

    /// Makes room for `part-0.parquet`, no rows and every column of `schema`, ahead of the
    /// parts (renamed one up): the table's schema is its first file's, for us
    /// ([`Snapshot::schema`](super::Snapshot::schema)) and for engines that read a folder
    /// that way (pandas), and each part lacks only columns none of its resources have.
    fn schema_part(&mut self, schema: &arrow::datatypes::SchemaRef) -> Result<TableFile> {
        for n in (0..self.parts.len()).rev() {
            let (from, to) = (part_name(n), part_name(n + 1));
            let path = self.out_dir.join(&to);
            fs::rename(self.out_dir.join(&from), &path).map_err(|e| Error::io(&path, e))?;
            self.parts[n].file.path = to;
        }
        let (file, _) = self.decode(&[], &part_name(0), schema, &|_| {})?;
        Ok(file)
    }

    /// The stretches of raw files, each named in errors as the snapshot lists its file
    /// (`raw/Patient.000.ndjson.gz`): the folder it is written in is temporary.
    fn sources<'a>(
        &self,
        spans: &'a [Span],
    ) -> impl Iterator<Item = Result<Source<Box<dyn BufRead + Send>>>> + 'a {
        let base = self.out_dir.parent().unwrap_or(&self.out_dir).to_path_buf();
        spans.iter().map(move |span| {
            let name = span.path.strip_prefix(&base).unwrap_or(&span.path);
            Ok(Source {
                name: name.display().to_string(),
                reader: span.open()?,
                first_line: span.first_line,
            })
        })
    }

    /// Decodes `spans` against `schema` into the durable Parquet file `path` (in the table's
    /// folder, replacing what it held).
    fn decode(
        &self,
        spans: &[Span],
        path: &str,
        schema: &SchemaRef,
        on_rows: &dyn Fn(u64),
    ) -> Result<(TableFile, DecodeSummary)> {
        let (file, summary, ()) = self.write_part(path, schema, on_rows, |on_batch| {
            let sources = self.sources(spans);
            let (mode, options) = (&self.mode, self.options.clone());
            decode_chunks(sources, Arc::clone(schema), mode, options, on_batch, CHUNK)
                .map(|summary| (summary, ()))
        })?;
        Ok((file, summary))
    }

    /// Writes the durable Parquet file `path` (in the table's folder, replacing what it held)
    /// of `schema` with the batches `run` decodes, telling `on_rows` their rows; returns it with
    /// what `run` returned. The process stopping ends it ([`stop_writes`]).
    fn write_part<T>(
        &self,
        path: &str,
        schema: &SchemaRef,
        on_rows: &dyn Fn(u64),
        run: impl FnOnce(&mut dyn FnMut(RecordBatch) -> Result<()>) -> Result<(DecodeSummary, T)>,
    ) -> Result<(TableFile, DecodeSummary, T)> {
        let out = self.out_dir.join(path);
        let ((summary, more), bytes) = write_file(&out, Arc::clone(schema), |sink| {
            run(&mut |batch| {
                check_stopping()?;
                sink(&batch)?;
                on_rows(batch.num_rows() as u64);
                Ok(())
            })
        })?;
        let file = TableFile {
            path: path.to_owned(),
            rows: summary.rows,
            bytes,
        };
        Ok((file, summary, more))
    }
}

/// Guesses per [`TableParts::add`] at most: a file whose lines keep bringing new paths is
/// inferred whole past them, so that the chunks decoded in vain stay few.
const GUESSES: usize = 8;

/// The bytes a guess is inferred from (at least; whole chunks): inference costs a fraction of
/// decoding, and the rarer paths of a type mostly show within its first thousands of
/// resources, so a part ends seldom, and never after a few lines.
const GUESS_BYTES: u64 = 16 << 20;

/// A stretch of a raw file: its NDJSON (inflated when gzip) from byte `start`, line
/// `first_line`, up to byte `end` or the end.
#[derive(Debug, Clone)]
struct Span {
    path: PathBuf,
    start: u64,
    end: Option<u64>,
    first_line: u64,
}

impl Span {
    /// The files `raw`, each whole.
    fn wholes(raw: &[PathBuf]) -> Vec<Span> {
        let whole = |path: &PathBuf| Span {
            path: path.clone(),
            start: 0,
            end: None,
            first_line: 1,
        };
        raw.iter().map(whole).collect()
    }

    fn open(&self) -> Result<Box<dyn BufRead + Send>> {
        let mut reader = open_raw(&self.path)?;
        let skipped = std::io::copy(&mut reader.by_ref().take(self.start), &mut std::io::sink())
            .map_err(|e| Error::io(&self.path, e))?;
        if skipped < self.start {
            let message = format!("{} is shorter than when it was read", self.path.display());
            return Err(Error::snapshot(message));
        }
        Ok(match self.end {
            Some(end) => Box::new(reader.take(end - self.start)),
            None => reader,
        })
    }
}

/// Splits `spans` where a decode against a guess stopped (`at`, of the sources `spans` were):
/// returns the stretches before, and leaves those from there on in `spans`.
fn split_spans(spans: &mut Vec<Span>, at: Unforeseen) -> Vec<Span> {
    let mut from = spans.split_off(at.source);
    let cut = &mut from[0];
    let start = cut.start + at.offset;
    if at.offset > 0 {
        spans.push(Span {
            end: Some(start),
            ..cut.clone()
        });
    }
    (cut.start, cut.first_line) = (start, at.first_line);
    std::mem::replace(spans, from)
}

/// Whether a part of schema `part` can stay as it is in a table of schema `table`: without an
/// overflow column of its own, every path of its resources is one of its columns, which the
/// table's column of that name holds as it is.
pub(super) fn agrees(part: &Schema, table: &Schema) -> bool {
    part.fields().iter().all(|f| {
        f.name() != OVERFLOW_COLUMN
            && table
                .field_with_name(f.name())
                .is_ok_and(|g| f.data_type() == g.data_type())
    })
}

/// The lines one part skipped: how many, and the first few (as errors name them).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Skipped {
    pub(super) lines: u64,
    pub(super) first: Vec<String>,
    /// Resources with paths beyond the width bound.
    pub(super) overflowed: u64,
}

impl Skipped {
    pub(super) fn of(summary: &DecodeSummary) -> Self {
        Self {
            lines: summary.skipped_count,
            first: summary
                .skipped
                .iter()
                .take(SKIPPED_SHOWN)
                .map(ToString::to_string)
                .collect(),
            overflowed: summary.overflowed,
        }
    }
}

/// The warnings of a table of `mode` made of parts that skipped `parts`: the lines skipped
/// (the first few named), and the resources beyond a flattened table's width.
pub(super) fn conversion_warnings(
    resource_type: &str,
    mode: &TableMode,
    parts: impl Iterator<Item = Skipped>,
) -> Vec<Warning> {
    let (mut skipped_lines, mut overflowed, mut first) = (0, 0, Vec::new());
    for part in parts {
        skipped_lines += part.lines;
        overflowed += part.overflowed;
        let room = SKIPPED_SHOWN.saturating_sub(first.len());
        first.extend(part.first.into_iter().take(room));
    }
    let skipped = (skipped_lines > 0).then(|| {
        let more = if skipped_lines > first.len() as u64 {
            "; ..."
        } else {
            ""
        };
        Warning::new(
            WarningKind::SkippedLines,
            format!(
                "{skipped_lines} {} skipped: {}{more}",
                if skipped_lines == 1 { "line" } else { "lines" },
                first.join("; ")
            ),
        )
        .with_resource_type(resource_type)
        .with_count(skipped_lines)
    });
    let wide = match mode {
        TableMode::Flattened(o) if overflowed > 0 => {
            Some(wide_resources(resource_type, o.max_columns(), overflowed))
        }
        _ => None,
    };
    skipped.into_iter().chain(wide).collect()
}

/// The file name of part `n` of a table.
pub(super) fn part_name(n: usize) -> String {
    format!("part-{n}.parquet")
}

/// The columns of parts converted in other processes ([`TableParts::one_part`]), merged in
/// their order as one inference over all of them, and the table's schema they make.
#[cfg(feature = "cluster")]
pub(super) fn merged_columns<'a>(
    mode: &TableMode,
    parts: impl IntoIterator<Item = &'a InferredColumns>,
) -> (InferredColumns, SchemaRef) {
    let mut inference = SchemaInference::new(mode);
    parts
        .into_iter()
        .for_each(|part| inference.merge_columns(part));
    let columns = inference.columns().unwrap_or_default();
    (columns, with_columns(inference.schema()))
}

/// A Parquet file of no rows and the columns of `schema` at `path`: the first file of a table
/// whose parts lack some of its columns ([`TableParts::schema_part`]).
#[cfg(feature = "cluster")]
pub(super) fn empty_part(path: &Path, schema: SchemaRef) -> Result<u64> {
    let ((), bytes) = write_file(path, schema, |_| Ok(()))?;
    Ok(bytes)
}

/// `schema`, or for no resources the columns every resource has: a table is readable even empty.
fn with_columns(schema: arrow::datatypes::SchemaRef) -> arrow::datatypes::SchemaRef {
    if !schema.fields().is_empty() {
        return schema;
    }
    Arc::new(Schema::new(vec![
        Field::new("resourceType", DataType::Utf8, true),
        Field::new("id", DataType::Utf8, true),
    ]))
}

/// The warning that `resources` of `resource_type` had paths beyond `max_columns` columns.
fn wide_resources(resource_type: &str, max_columns: usize, resources: u64) -> Warning {
    let message = format!(
        "{resources} {} more paths than the {max_columns} columns the table may have: those \
         beyond are in column {OVERFLOW_COLUMN}, as JSON text",
        if resources == 1 {
            "resource has"
        } else {
            "resources have"
        },
    );
    Warning::new(WarningKind::WideResources, message)
        .with_resource_type(resource_type)
        .with_count(resources)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use arrow::array::{ArrayRef, new_null_array};
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;
    use crate::ndjson::{Strictness, decode_readers, infer_readers};

    /// Lines past which something new comes: a path, a decimal in an integer column, a value
    /// in a column of nulls, a bad line. Each lies beyond the chunks the guess before it was
    /// inferred from (16 MiB, some 42,000 patients).
    const NEW_PATH: usize = 45_000;
    const DECIMAL: usize = 70_000;
    const VALUE: usize = 95_000;
    const BAD: usize = 110_000;

    /// Patients of about 400 bytes, `n` of them, numbered from `from`, with the bad line after
    /// patient [`BAD`] when `bad_line`.
    fn patients(from: usize, n: usize, bad_line: bool) -> String {
        let pad = "x".repeat(300);
        let mut text = String::new();
        for i in from..from + n {
            let a = if i == DECIMAL {
                "1.5".to_owned()
            } else {
                i.to_string()
            };
            let n = if i == VALUE { "7" } else { "null" };
            let c = if (NEW_PATH..NEW_PATH + 3).contains(&i) {
                r#","c":true"#
            } else {
                ""
            };
            text.push_str(&format!(
                r#"{{"resourceType":"Patient","id":"p{i}","a":{a},"b":"{pad}","n":{n}{c}}}"#
            ));
            text.push('\n');
            if bad_line && i == BAD {
                text.push_str("{\"resourceType\":\"Patient\",\n");
            }
        }
        text
    }

    /// Every row of `files` (Parquet, in order) as text, each file's columns taken by name
    /// into `schema` (a column it lacks is null), which must have their types there: a part a
    /// later line typed otherwise was decoded again.
    fn rows_of(files: impl IntoIterator<Item = PathBuf>, schema: &Schema) -> Vec<String> {
        let mut rows = Vec::new();
        for path in files {
            let reader = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(path).unwrap())
                .unwrap()
                .build()
                .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let columns: Vec<ArrayRef> = schema
                    .fields()
                    .iter()
                    .map(|f| match batch.column_by_name(f.name()) {
                        Some(c) => {
                            assert_eq!(c.data_type(), f.data_type(), "{}", f.name());
                            Arc::clone(c)
                        }
                        None => new_null_array(f.data_type(), batch.num_rows()),
                    })
                    .collect();
                rows.extend(text_rows(&columns, batch.num_rows()));
            }
        }
        rows
    }

    fn text_rows(columns: &[ArrayRef], n: usize) -> Vec<String> {
        let options = FormatOptions::default().with_null("∅");
        let formatters: Vec<_> = columns
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        (0..n)
            .map(|row| {
                let values: Vec<String> = formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect();
                values.join("|")
            })
            .collect()
    }

    #[test]
    fn guessed_parts_make_the_table_an_inference_of_every_line_first_would() {
        let dir = tempfile::tempdir().unwrap();
        // A large file (gzip: its stretches are of the inflated lines) and a small one after it
        // with a path of its own.
        let big = dir.path().join("raw/Patient.000.ndjson.gz");
        fs::create_dir_all(big.parent().unwrap()).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(patients(0, 120_000, true).as_bytes()).unwrap();
        fs::write(&big, gz.finish().unwrap()).unwrap();
        let small = dir.path().join("raw/Patient.001.ndjson");
        let d = r#"{"resourceType":"Patient","id":"q","d":"new"}"#;
        fs::write(&small, format!("{}{d}\n", patients(200_000, 10, false))).unwrap();
        let raw = [big, small];
        let mode = TableMode::default();
        let options = DecodeOptions::default()
            .with_strictness(Strictness::Lenient)
            .with_resource_type("Patient");

        let out = dir.path().join("flattened");
        let (table, schema, warnings) =
            convert_raw(&raw, "Patient", &mode, &options, &out, &|_| {}).unwrap();

        // What two passes over every line give.
        let sources = || {
            raw.iter()
                .map(|p| Ok::<_, Error>((p.display().to_string(), open_raw(p)?)))
        };
        let mut inference = SchemaInference::with_options(&mode, options.clone());
        infer_readers(sources(), &mut inference).unwrap();
        let want = inference.schema();
        let mut want_rows = Vec::new();
        let summary = decode_readers(sources(), Arc::clone(&want), &mode, options, |b| {
            want_rows.extend(text_rows(b.columns(), b.num_rows()));
            Ok::<_, Error>(())
        })
        .unwrap();

        assert_eq!(schema.fields(), want.fields());
        let types: Vec<_> = ["a", "n", "c", "d"]
            .map(|c| schema.field_with_name(c).unwrap().data_type().clone())
            .into();
        assert_eq!(
            types,
            [
                DataType::Float64,
                DataType::Int64,
                DataType::Boolean,
                DataType::Utf8
            ]
        );
        // The guesses cut the big file into parts; the parts before the decimal and the value
        // among nulls were decoded again with the table's types.
        assert!(table.files.len() > 3, "{:?}", table.files);
        let files = table.files.iter().map(|f| out.join(&f.path));
        assert_eq!(rows_of(files, &schema), want_rows);
        assert_eq!((table.rows, table.skipped_lines), (summary.rows, 1));
        assert_eq!(table.rows, 120_011);
        // The bad line is named where it is in its file, past the parts that split it.
        assert_eq!(warnings.len(), 1);
        let message = &warnings[0].message;
        assert!(
            message.contains(&format!("raw/Patient.000.ndjson.gz line {}:", BAD + 2)),
            "{message}"
        );
    }

    #[test]
    fn a_bad_line_past_a_guess_fails_a_strict_conversion_naming_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw/Patient.000.ndjson");
        fs::create_dir_all(raw.parent().unwrap()).unwrap();
        fs::write(&raw, patients(0, BAD + 10, true)).unwrap();
        let options = DecodeOptions::default().with_resource_type("Patient");
        let out = dir.path().join("flattened");
        let mode = TableMode::default();
        let err = convert_raw(&[raw], "Patient", &mode, &options, &out, &|_| {}).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&format!("raw/Patient.000.ndjson line {}:", BAD + 2)),
            "{message}"
        );
    }
}
