//! Raw NDJSON (gzip or plain) to the Parquet table of a snapshot.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::Schema;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

use super::{Column, TableFile, TableFiles};
use crate::{Error, Result};

/// Rows per Parquet row group: small enough for row-group pruning on filters to matter.
const ROW_GROUP_ROWS: usize = 64 * 1024;

/// Opens a raw NDJSON file, decompressing it when it is gzip (detected by its magic bytes).
pub(crate) fn open_raw(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).map_err(|e| Error::io(path, e))?;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(BufReader::with_capacity(1 << 16, flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::with_capacity(1 << 16, file))
    })
}

/// Converts the raw files of one resource type into the Parquet table of `mode` in `out_dir`
/// (created): one pass infers the schema over all files, a second decodes against it. Paths in
/// the result are relative to `out_dir`.
pub fn convert_raw(
    raw: &[PathBuf],
    resource_type: &str,
    mode: &str,
    batch_size: usize,
    out_dir: &Path,
) -> Result<TableFiles> {
    let _ = (resource_type, mode); // TODO(ndjson): use crate::ndjson with the mode once merged
    fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let err = |path: &Path, e: &dyn std::fmt::Display| Error::Snapshot(format!("{}: {e}", path.display()));

    let mut schema = Schema::empty();
    for path in raw {
        let (inferred, _) = arrow::json::reader::infer_json_schema(open_raw(path)?, None).map_err(|e| err(path, &e))?;
        schema = Schema::try_merge([schema, inferred]).map_err(|e| err(path, &e))?;
    }
    let schema = Arc::new(schema);

    let out = out_dir.join("part-0.parquet");
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let file = File::create(&out).map_err(|e| Error::io(&out, e))?;
    let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props)).map_err(|e| err(&out, &e))?;
    let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(&schema))
        .with_batch_size(batch_size)
        .build_decoder()
        .map_err(|e| err(&out, &e))?;
    let mut rows = 0u64;
    for path in raw {
        let mut reader = open_raw(path)?;
        loop {
            let buf = reader.fill_buf().map_err(|e| Error::io(path, e))?;
            let len = buf.len();
            if len == 0 {
                break;
            }
            let consumed = decoder.decode(buf).map_err(|e| err(path, &e))?;
            reader.consume(consumed);
            if consumed < len {
                // The batch is full.
                if let Some(batch) = decoder.flush().map_err(|e| err(path, &e))? {
                    rows += batch.num_rows() as u64;
                    writer.write(&batch).map_err(|e| err(&out, &e))?;
                }
            }
        }
    }
    if let Some(batch) = decoder.flush().map_err(|e| err(&out, &e))? {
        rows += batch.num_rows() as u64;
        writer.write(&batch).map_err(|e| err(&out, &e))?;
    }
    let file = writer.into_inner().map_err(|e| err(&out, &e))?;
    file.sync_all().map_err(|e| Error::io(&out, e))?;
    let bytes = file.metadata().map_err(|e| Error::io(&out, e))?.len();
    Ok(TableFiles {
        files: vec![TableFile { path: "part-0.parquet".into(), rows, bytes }],
        rows,
        bytes,
        skipped_lines: 0,
        columns: schema
            .fields()
            .iter()
            .map(|f| Column { name: f.name().clone(), data_type: f.data_type().to_string() })
            .collect(),
    })
}
