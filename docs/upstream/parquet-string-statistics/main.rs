//! Reproducer: the Parquet writer's string statistics cost, per value, on FHIR-like columns.
//!
//! Writes the same batches (string columns as a flattened FHIR Observation table has them: a
//! constant status, a code system URL, a few hundred codes, patient references in runs, unique
//! ids) with the default statistics (page level) and with none, best of `reps`, and prints the
//! times, each column's chunk minimum and maximum, and a hash of the whole file (page statistics
//! and column index included): a patched writer must print the same.
//!
//!     cargo run --release -- [rows] [reps]

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{FileReader, SerializedFileReader};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let rows = args.next().transpose()?.unwrap_or(2_000_000).max(1);
    let reps = args.next().transpose()?.unwrap_or(5).max(1);
    let batches = batches(rows, 8192)?;

    let mut times = Vec::new();
    for statistics in [EnabledStatistics::Page, EnabledStatistics::None] {
        let props = WriterProperties::builder()
            .set_statistics_enabled(statistics)
            .build();
        let runs = (0..reps)
            .map(|_| write(&batches, props.clone()))
            .collect::<Result<Vec<_>>>()?;
        let (best, file) = runs
            .into_iter()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .ok_or("no run")?;
        println!(
            "statistics {statistics:?}: {best:.3} s, {} bytes",
            file.len()
        );
        if statistics == EnabledStatistics::Page {
            let mut hasher = std::hash::DefaultHasher::new();
            file.hash(&mut hasher);
            println!("  file hash {:016x}", hasher.finish());
            print_statistics(file)?;
        }
        times.push(best);
    }
    println!("with statistics / without: {:.2}x", times[0] / times[1]);
    Ok(())
}

/// Writes `batches` to a Parquet file in memory: seconds taken and the file.
fn write(batches: &[RecordBatch], props: WriterProperties) -> Result<(f64, Vec<u8>)> {
    let started = Instant::now();
    let mut writer = ArrowWriter::try_new(Vec::new(), batches[0].schema(), Some(props))?;
    for batch in batches {
        writer.write(batch)?;
    }
    let file = writer.into_inner()?;
    Ok((started.elapsed().as_secs_f64(), file))
}

/// Each column's chunk minimum and maximum in the first row group.
fn print_statistics(file: Vec<u8>) -> Result<()> {
    let reader = SerializedFileReader::new(bytes::Bytes::from(file))?;
    let group = reader.metadata().row_group(0);
    for column in group.columns() {
        let stats = column.statistics().ok_or("no statistics")?;
        let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
        println!(
            "  {}: min {:?} max {:?}",
            column.column_path(),
            text(stats.min_bytes_opt()),
            text(stats.max_bytes_opt())
        );
    }
    Ok(())
}

/// `rows` rows in batches of `size`, from a fixed pseudo-random sequence.
fn batches(rows: usize, size: usize) -> Result<Vec<RecordBatch>> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let codes: Vec<String> = (0..300)
        .map(|i| format!("{}-{}", 1000 + i * 37, i % 10))
        .collect();
    (0..rows.div_ceil(size))
        .map(|b| {
            let n = size.min(rows - b * size);
            let start = b * size;
            let column = |f: &mut dyn FnMut(usize) -> String| -> ArrayRef {
                Arc::new(StringArray::from_iter_values((start..start + n).map(f)))
            };
            RecordBatch::try_from_iter([
                ("status", column(&mut |_| "final".to_owned())),
                (
                    "code_coding_0_system",
                    column(&mut |_| "http://loinc.org".to_owned()),
                ),
                (
                    "code_coding_0_code",
                    column(&mut |_| codes[next() as usize % codes.len()].clone()),
                ),
                (
                    "subject_reference",
                    column(&mut |i| format!("Patient/{:08x}-4e1b-9c3a", i / 200)),
                ),
                (
                    "id",
                    column(&mut |_| format!("{:016x}{:016x}", next(), next())),
                ),
            ])
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(Into::into)
}
