//! How `fhirflight sql` prints its result: table, CSV, JSON lines or Parquet. The whole result is
//! collected first.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use fhirflight::{Error, Result};

/// `--format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    Table,
    Csv,
    Json,
    Parquet,
}

/// Writes `batches` in `format` to the file `output`, else to standard output.
pub(crate) fn write_batches(
    batches: &[RecordBatch],
    format: OutputFormat,
    output: Option<&PathBuf>,
) -> Result<()> {
    let mut out: Box<dyn std::io::Write> = match output {
        Some(path) => Box::new(std::fs::File::create(path).map_err(|e| Error::io(path, e))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let io_error = |e: std::io::Error| Error::io(output.cloned().unwrap_or("<stdout>".into()), e);
    match format {
        OutputFormat::Table => {
            let table = datafusion::arrow::util::pretty::pretty_format_batches(batches)?;
            writeln!(out, "{table}").map_err(io_error)?;
        }
        OutputFormat::Csv => {
            let mut writer = datafusion::arrow::csv::Writer::new(out);
            for batch in batches {
                writer.write(batch)?;
            }
        }
        OutputFormat::Json => {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
        OutputFormat::Parquet => {
            let path =
                output.ok_or_else(|| Error::config("--format parquet needs --output FILE"))?;
            let schema = batches
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| Arc::new(datafusion::arrow::datatypes::Schema::empty()));
            let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
            let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(file, schema, None)?;
            for batch in batches {
                writer.write(batch)?;
            }
            writer.close()?;
        }
    }
    Ok(())
}
