//! Raw NDJSON (gzip or plain) to the Parquet table of a snapshot.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::parquet::write_file;
use super::{TableFile, TableFiles};
#[cfg(feature = "cluster")]
use crate::ndjson::InferredColumns;
use crate::ndjson::{
    DEFAULT_MAX_COLUMNS, DecodeOptions, DecodeSummary, OVERFLOW_COLUMN, SchemaInference, TableMode,
    decode_readers, infer_readers,
};
use crate::warning::{Warning, WarningKind};
use crate::{Error, Result};

/// Whether the file at `path` is gzip (by its magic bytes).
pub(crate) fn is_gzip(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 2];
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let n = file.read(&mut magic).map_err(|e| Error::io(path, e))?;
    Ok(n == 2 && magic == GZIP_MAGIC)
}

/// The first bytes of a gzip stream.
pub(super) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Opens a raw NDJSON file, decompressing it when it is gzip (detected by its magic bytes).
pub(crate) fn open_raw(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let gzip = is_gzip(path)?;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(match gzip {
        true => Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::read::MultiGzDecoder::new(file),
        )),
        false => Box::new(BufReader::with_capacity(1 << 16, file)),
    })
}

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
/// (created), as one part (`TableParts`): one pass infers the schema over all files, a second
/// decodes against it, both on all cores, in batches and with the strictness and line bound of
/// `options`, while the Parquet columns are encoded on all cores too (`snapshot/parquet.rs`).
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

/// One part: its raw files, and the Parquet file they were decoded into.
#[derive(Debug)]
struct Part {
    raw: Vec<PathBuf>,
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

    /// Converts `raw` as the next part: its schema inferred from its lines, then decoded.
    /// `on_rows` is told the rows of each batch written.
    pub(crate) fn add(&mut self, raw: &[PathBuf], on_rows: &dyn Fn(u64)) -> Result<()> {
        let started = std::time::Instant::now();
        let mut inference = SchemaInference::with_options(&self.mode, self.options.clone());
        infer_readers(self.sources(raw), &mut inference)?;
        let schema = with_columns(inference.schema());
        let inferred = started.elapsed();
        let path = part_name(self.parts.len());
        let (file, summary) = self.decode(raw, &path, &schema, on_rows)?;
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
            raw: raw.to_vec(),
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
                self.decode(raw, &part_name(0), &schema, &|_| {})?
            }
            None => {
                self.add(raw, &|_| {})?;
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
            let (raw, path) = (part.raw.clone(), part.file.path.clone());
            let (file, summary) = self.decode(&raw, &path, &schema, &|_| {})?;
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

    /// The raw files, each named in errors as the snapshot lists it (`raw/Patient.000.ndjson.gz`):
    /// the folder it is written in is temporary.
    fn sources<'a>(
        &self,
        raw: &'a [PathBuf],
    ) -> impl Iterator<Item = Result<(String, Box<dyn BufRead + Send>)>> + 'a {
        let base = self.out_dir.parent().unwrap_or(&self.out_dir).to_path_buf();
        raw.iter().map(move |p| {
            let name = p.strip_prefix(&base).unwrap_or(p).display().to_string();
            Ok((name, open_raw(p)?))
        })
    }

    /// Decodes `raw` against `schema` into the durable Parquet file `path` (in the table's
    /// folder, replacing what it held).
    fn decode(
        &self,
        raw: &[PathBuf],
        path: &str,
        schema: &arrow::datatypes::SchemaRef,
        on_rows: &dyn Fn(u64),
    ) -> Result<(TableFile, DecodeSummary)> {
        let out = self.out_dir.join(path);
        let (summary, bytes) = write_file(&out, Arc::clone(schema), |sink| {
            decode_readers(
                self.sources(raw),
                Arc::clone(schema),
                &self.mode,
                self.options.clone(),
                |batch| {
                    check_stopping()?;
                    sink(&batch)?;
                    on_rows(batch.num_rows() as u64);
                    Ok(())
                },
            )
        })?;
        let file = TableFile {
            path: path.to_owned(),
            rows: summary.rows,
            bytes,
        };
        Ok((file, summary))
    }
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
