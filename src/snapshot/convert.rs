//! Raw NDJSON (gzip or plain) to the Parquet table of a snapshot.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use std::sync::mpsc::{Receiver, sync_channel};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

use super::parquet::write_parquet;
use super::raw::{Copied, open_copying};
use super::{Column, TableFile, TableFiles};
use crate::ndjson::{
    DEFAULT_MAX_COLUMNS, DecodeOptions, DecodeSummary, Fitting, FlattenOptions, GrownColumns,
    OVERFLOW_COLUMN, SchemaInference, TableMode, decode_growing, decode_readers, infer_readers,
};
use crate::warning::{Warning, WarningKind};
use crate::{Error, Result};

/// Rows per Parquet row group: small enough for row-group pruning on filters to matter.
const ROW_GROUP_ROWS: usize = 64 * 1024;

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
/// (created), on all cores, in batches and with the strictness and line bound of `options`, the
/// Parquet columns encoded on all cores too (`snapshot/parquet.rs`).
///
/// A flattened table takes one walk of the lines (`ndjson::decode_growing`): each worker makes the
/// columns as it meets them, and the batches go to Parquet files `part-<n>.parquet`, each with
/// the columns known when it began: a batch with values in a column its file lacks (or of a
/// wider type) begins the next. The last file has all the table's columns (one without rows
/// when a column came after the last batch's file began); the others lack some, which a scan
/// reads as null, or have Int64 where the table has Float64, which it casts. Where the values of
/// a column conflict (a number in one place and a string in another: the column is Utf8 with
/// the numbers' JSON text as written, which the batches no longer have), or the columns reach
/// the width bound, the table is made as a nested one always is: one pass infers the schema
/// over all files, a second decodes against it, into one file.
///
/// With [`Strictness::Lenient`](crate::ndjson::Strictness::Lenient), bad lines are skipped and
/// counted: a [`WarningKind::SkippedLines`] warning naming the first few comes with the table;
/// [`Strictness::Strict`](crate::ndjson::Strictness::Strict) fails on the first instead, naming
/// its file and line. Resources with paths beyond the width bound of a flattened `mode` come with
/// a [`WarningKind::WideResources`] warning. Paths in the result are relative to `out_dir`.
/// `on_rows` is told the rows of each batch written, for progress lines.
pub fn convert_raw(
    raw: &[PathBuf],
    resource_type: &str,
    mode: &TableMode,
    options: &DecodeOptions,
    out_dir: &Path,
    on_rows: &dyn Fn(u64),
) -> Result<(TableFiles, Vec<Warning>)> {
    let raw: Vec<RawInput<'_>> = raw
        .iter()
        .map(|path| RawInput {
            path,
            copy_of: None,
        })
        .collect();
    convert(&raw, resource_type, mode, options, out_dir, on_rows)
}

/// A raw file of a conversion: `path`, in the snapshot, or copied there from `copy_of` as the
/// conversion's first pass reads it ([`open_copying`]: the input is read once for both).
#[derive(Debug)]
pub(super) struct RawInput<'a> {
    pub(super) path: &'a Path,
    pub(super) copy_of: Option<(&'a Path, Arc<Mutex<Copied>>)>,
}

/// [`convert_raw`] of `raw`, the files to copy copied by its first pass and checked whole.
pub(super) fn convert(
    raw: &[RawInput<'_>],
    resource_type: &str,
    mode: &TableMode,
    options: &DecodeOptions,
    out_dir: &Path,
    on_rows: &dyn Fn(u64),
) -> Result<(TableFiles, Vec<Warning>)> {
    let started = std::time::Instant::now();
    fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    // Each file's path names it in errors.
    let options = options.clone().with_resource_type(resource_type);

    // All files in one run of chunks: an export may come as many small files. Each is named
    // in errors as the snapshot lists it (`raw/Patient.000.ndjson.gz`): the folder it is
    // written in is temporary.
    let base = out_dir.parent().unwrap_or(out_dir);
    let name = |p: &Path| p.strip_prefix(base).unwrap_or(p).display().to_string();
    let open = |r: &RawInput<'_>, first: bool| match (&r.copy_of, first) {
        (Some((input, copied)), true) => open_copying(input, r.path, Arc::clone(copied)),
        _ => open_raw(r.path),
    };
    // The files as the first pass reads them (copying those to copy), or a later one.
    let sources = |first: bool| {
        raw.iter()
            .map(move |r| Ok::<_, Error>((name(r.path), open(r, first)?)))
    };
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    // Rows told: a conversion that starts over tells only those beyond.
    let told = std::cell::Cell::new(0u64);
    let grown = match mode {
        TableMode::Flattened(flatten) => {
            let on_rows = |n: u64| {
                told.set(told.get() + n);
                on_rows(n);
            };
            convert_growing(sources(true), flatten, &options, out_dir, &props, &on_rows)?
        }
        TableMode::Nested => None,
    };
    let one_pass = grown.is_some();
    let (files, schema, summary) = match grown {
        Some(converted) => converted,
        None => {
            // What the one pass wrote goes.
            fs::remove_dir_all(out_dir)
                .and_then(|()| fs::create_dir_all(out_dir))
                .map_err(|e| Error::io(out_dir, e))?;
            let converted = std::cell::Cell::new(0u64);
            let on_rows = |n: u64| {
                let before = converted.replace(converted.get() + n);
                on_rows((before + n).saturating_sub(told.get().max(before)));
            };
            convert_inferred(sources, mode, options, out_dir, &props, &on_rows)?
        }
    };
    for (input, copied) in raw.iter().filter_map(|r| r.copy_of.as_ref()) {
        let len = input.metadata().map_err(|e| Error::io(input, e))?.len();
        let copied = copied.lock().unwrap_or_else(PoisonError::into_inner).bytes;
        if copied != len {
            return Err(Error::snapshot(format!(
                "{}: {len} bytes, of which {copied} were read: it changed while it was read",
                input.display()
            )));
        }
    }
    tracing::debug!(
        "{resource_type}: {} rows, {} columns to {} file(s) in {}: {} in {:.3} s",
        summary.rows,
        schema.fields().len(),
        files.len(),
        out_dir.display(),
        if one_pass {
            "one pass"
        } else {
            "inferred, then decoded"
        },
        started.elapsed().as_secs_f64(),
    );
    let (rows, skipped_lines) = (summary.rows, summary.skipped_count);
    let skipped = (skipped_lines > 0).then(|| {
        let first: Vec<String> = summary
            .skipped
            .iter()
            .take(SKIPPED_SHOWN)
            .map(ToString::to_string)
            .collect();
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
        TableMode::Flattened(o) if summary.overflowed > 0 => Some(wide_resources(
            resource_type,
            o.max_columns(),
            summary.overflowed,
        )),
        _ => None,
    };
    let table = TableFiles {
        bytes: files.iter().map(|f| f.bytes).sum(),
        files,
        rows,
        skipped_lines,
        columns: schema
            .fields()
            .iter()
            .map(|f| Column {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
            })
            .collect(),
    };
    Ok((table, skipped.into_iter().chain(wide).collect()))
}

/// The files of a table, its schema and what decoding it did.
type Converted = (Vec<TableFile>, SchemaRef, DecodeSummary);

/// The schema of a table without resources: still readable, with the columns every resource has.
fn empty_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("resourceType", DataType::Utf8, true),
        Field::new("id", DataType::Utf8, true),
    ]))
}

/// Batches decoded ahead of the Parquet writer.
const QUEUED_BATCHES: usize = 1;

/// The flattened table of `sources` in one walk of its lines ([`convert_raw`]); `None` on a
/// conflict (the files written are then left for the caller to remove).
fn convert_growing<R: Read + Send>(
    sources: impl IntoIterator<Item = Result<(String, R)>> + Send,
    flatten: &FlattenOptions,
    options: &DecodeOptions,
    out_dir: &Path,
    props: &WriterProperties,
    on_rows: &dyn Fn(u64),
) -> Result<Option<Converted>> {
    let (tx, rx) = sync_channel::<RecordBatch>(QUEUED_BATCHES);
    std::thread::scope(|scope| {
        let decoding = scope.spawn(move || {
            decode_growing(sources, flatten, options.clone(), |batch| {
                check_stopping()?;
                // Closed when the writer stopped: its own error (or conflict) says why.
                tx.send(batch)
                    .map_err(|_| Error::snapshot("the Parquet writer stopped"))
            })
        });
        let written = write_grown(&rx, flatten, out_dir, props, on_rows);
        drop(rx);
        let decoded = decoding
            .join()
            .map_err(|_| Error::snapshot("decoding panicked"))?;
        let Some((files, schema)) = written? else {
            return Ok(None);
        };
        Ok(decoded?.map(|summary| (files, schema, summary)))
    })
}

/// What ended a file of [`write_grown`].
enum Next {
    /// A batch the file's columns do not fit: it begins the next file.
    Batch(RecordBatch),
    /// The batches conflict ([`GrownColumns::add`]).
    Conflict,
    /// No more batches.
    End,
}

/// Writes the `batches` of growing decoders to Parquet files in `out_dir`, a file per run of
/// batches that its columns fit ([`convert_raw`]); returns the files and the table's schema,
/// which the last file has, or `None` on a conflict.
fn write_grown(
    batches: &Receiver<RecordBatch>,
    flatten: &FlattenOptions,
    out_dir: &Path,
    props: &WriterProperties,
    on_rows: &dyn Fn(u64),
) -> Result<Option<(Vec<TableFile>, SchemaRef)>> {
    let mut columns = GrownColumns::new(flatten);
    let mut files = Vec::new();
    let mut last_schema = None;
    let mut next = batches.recv().ok();
    while let Some(batch) = next.take() {
        if !columns.add(&batch) {
            return Ok(None);
        }
        let schema = columns.schema();
        let mut fitting = Fitting::new(Arc::clone(&schema));
        let first = fitting
            .fit(&batch)
            .ok_or_else(|| Error::snapshot("a batch does not fit the columns made for it"))?;
        let (ended, file) = write_file(out_dir, files.len(), &schema, props, |sink| {
            let mut fitted = first;
            loop {
                sink(&fitted)?;
                on_rows(fitted.num_rows() as u64);
                let Ok(batch) = batches.recv() else {
                    return Ok(Next::End);
                };
                if !columns.add(&batch) {
                    return Ok(Next::Conflict);
                }
                fitted = match fitting.fit(&batch) {
                    Some(fitted) => fitted,
                    None => return Ok(Next::Batch(batch)),
                };
            }
        })?;
        files.push(file);
        last_schema = Some(schema);
        match ended {
            Next::Batch(batch) => next = Some(batch),
            Next::Conflict => return Ok(None),
            Next::End => {}
        }
    }
    let schema = match columns.is_empty() {
        true => empty_schema(),
        false => columns.schema(),
    };
    // Columns that came after the last file began (with nulls only): a file without rows
    // gives the table its schema.
    if last_schema.is_none_or(|last| last != schema) {
        let (_, file) = write_file(out_dir, files.len(), &schema, props, |_| Ok(()))?;
        files.push(file);
    }
    Ok(Some((files, schema)))
}

/// The table of `sources` in two passes: the schema inferred over all files (`sources(true)`,
/// the first pass), then the files decoded against it into one Parquet file.
fn convert_inferred<I: IntoIterator<Item = Result<(String, Box<dyn BufRead + Send>)>>>(
    sources: impl Fn(bool) -> I,
    mode: &TableMode,
    options: DecodeOptions,
    out_dir: &Path,
    props: &WriterProperties,
    on_rows: &dyn Fn(u64),
) -> Result<Converted> {
    let mut inference = SchemaInference::with_options(mode, options.clone());
    infer_readers(sources(true), &mut inference)?;
    let mut schema = inference.schema();
    if schema.fields().is_empty() {
        schema = empty_schema();
    }
    let (summary, file) = write_file(out_dir, 0, &schema, props, |sink| {
        decode_readers(
            sources(false),
            Arc::clone(&schema),
            mode,
            options,
            |batch| {
                check_stopping()?;
                sink(&batch)?;
                on_rows(batch.num_rows() as u64);
                Ok(())
            },
        )
    })?;
    Ok((vec![file], schema, summary))
}

/// Writes `part-<n>.parquet` in `out_dir` with the batches `fill` hands to its sink
/// ([`write_parquet`]), synced; returns what `fill` returned and the file as the manifest lists
/// it (relative to `out_dir`).
fn write_file<T>(
    out_dir: &Path,
    n: usize,
    schema: &SchemaRef,
    props: &WriterProperties,
    fill: impl FnOnce(&mut dyn FnMut(&RecordBatch) -> Result<()>) -> Result<T>,
) -> Result<(T, TableFile)> {
    let name = format!("part-{n}.parquet");
    let out = out_dir.join(&name);
    let file = File::create(&out).map_err(|e| Error::io(&out, e))?;
    let mut rows = 0;
    let (filled, file) = write_parquet(
        file,
        &out,
        Arc::clone(schema),
        props.clone(),
        ROW_GROUP_ROWS,
        |sink| {
            fill(&mut |batch| {
                rows += batch.num_rows() as u64;
                sink(batch)
            })
        },
    )?;
    file.sync_all().map_err(|e| Error::io(&out, e))?;
    let bytes = file.metadata().map_err(|e| Error::io(&out, e))?.len();
    let file = TableFile {
        path: name,
        rows,
        bytes,
    };
    Ok((filled, file))
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
