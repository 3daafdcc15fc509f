//! Raw NDJSON (gzip or plain) to the Parquet table of a snapshot.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

use super::parquet::write_parquet;
use super::{Column, TableFile, TableFiles};
use crate::ndjson::{
    DEFAULT_MAX_COLUMNS, DecodeOptions, OVERFLOW_COLUMN, SchemaInference, TableMode,
    decode_readers, infer_readers,
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
/// (created): one pass infers the schema over all files, a second decodes against it, both on all
/// cores, in batches and with the strictness and line bound of `options`, while the Parquet
/// columns are encoded on all cores too (`snapshot/parquet.rs`). With
/// [`Strictness::Lenient`](crate::ndjson::Strictness::Lenient), bad lines are skipped and counted:
/// a [`WarningKind::SkippedLines`] warning naming the first few comes with the table;
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
    let started = std::time::Instant::now();
    fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    // Each file's path names it in errors.
    let options = options.clone().with_resource_type(resource_type);

    // All files in one run of chunks: an export may come as many small files. Each is named
    // in errors as the snapshot lists it (`raw/Patient.000.ndjson.gz`): the folder it is
    // written in is temporary.
    let base = out_dir.parent().unwrap_or(out_dir);
    let name = |p: &Path| p.strip_prefix(base).unwrap_or(p).display().to_string();
    let sources = || raw.iter().map(|p| Ok::<_, Error>((name(p), open_raw(p)?)));
    let mut inference = SchemaInference::with_options(mode, options.clone());
    infer_readers(sources(), &mut inference)?;
    let mut schema = inference.schema();
    if schema.fields().is_empty() {
        // No resources: still a readable table with the columns every resource has.
        schema = Arc::new(Schema::new(vec![
            Field::new("resourceType", DataType::Utf8, true),
            Field::new("id", DataType::Utf8, true),
        ]));
    }

    let inferred = started.elapsed();

    let out = out_dir.join("part-0.parquet");
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let file = File::create(&out).map_err(|e| Error::io(&out, e))?;
    let (summary, file) = write_parquet(
        file,
        &out,
        Arc::clone(&schema),
        props,
        ROW_GROUP_ROWS,
        |sink| {
            decode_readers(sources(), Arc::clone(&schema), mode, options, |batch| {
                check_stopping()?;
                sink(&batch)?;
                on_rows(batch.num_rows() as u64);
                Ok(())
            })
        },
    )?;
    file.sync_all().map_err(|e| Error::io(&out, e))?;
    tracing::debug!(
        "{resource_type}: {} rows, {} columns to {}: schema inferred in {:.3} s, decoded and \
         written in {:.3} s",
        summary.rows,
        schema.fields().len(),
        out.display(),
        inferred.as_secs_f64(),
        (started.elapsed() - inferred).as_secs_f64(),
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
    let bytes = file.metadata().map_err(|e| Error::io(&out, e))?.len();
    let table = TableFiles {
        files: vec![TableFile {
            path: "part-0.parquet".into(),
            rows,
            bytes,
        }],
        rows,
        bytes,
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
