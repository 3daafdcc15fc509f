//! A view over a whole NDJSON stream on all cores: the bytes are cut at line ends into chunks
//! ([`crate::chunks`]), each chunk is run by a worker, and the batches are handed on in stream
//! order.

use std::io::Read;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;

use super::{ViewDefinition, ViewRunner};
use crate::Result;
use crate::chunks::{CHUNK, Chunk, run_chunks};

/// Runs `view` over all of `reader` (NDJSON, one resource per line) on all cores and hands its
/// record batches to `on_batch` in stream order; returns the number of rows. `source` names the
/// stream in errors (with the line number). A line of more than `max_line_bytes` is an error
/// ([`ViewRunner::with_max_line_bytes`]) and is never held whole. At most two chunks per core
/// are in flight, so memory stays bounded whatever the size of the stream or of a line.
///
/// ```
/// # use std::sync::Arc;
/// # use fhirflight::ndjson::DEFAULT_MAX_LINE_BYTES;
/// # use fhirflight::view::{ViewDefinition, run_reader};
/// let view = Arc::new(ViewDefinition::from_paths("Patient", &[("id", "id")])?);
/// let ndjson = "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Patient\",\"id\":\"b\"}\n";
/// let rows = run_reader(&view, ndjson.as_bytes(), "inline", 8192, DEFAULT_MAX_LINE_BYTES, |batch| Ok(()))?;
/// assert_eq!(rows, 2);
/// # Ok::<(), fhirflight::Error>(())
/// ```
pub fn run_reader(
    view: &Arc<ViewDefinition>,
    reader: impl Read,
    source: &str,
    batch_size: usize,
    max_line_bytes: usize,
    on_batch: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<u64> {
    let sources = [Ok((source.to_owned(), reader))];
    run_readers(view, sources, batch_size, max_line_bytes, on_batch)
}

/// [`run_reader`] over the files of `sources` (each a name for its errors and a reader, opened in
/// turn) as one stream: the chunks of consecutive files are worked on at once, so many small
/// files keep every core busy (see [`crate::ndjson::infer_readers`]).
pub fn run_readers<R: Read>(
    view: &Arc<ViewDefinition>,
    sources: impl IntoIterator<Item = Result<(String, R)>>,
    batch_size: usize,
    max_line_bytes: usize,
    on_batch: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<u64> {
    run_view_chunks(view, sources, batch_size, CHUNK, max_line_bytes, on_batch)
}

fn run_view_chunks<R: Read>(
    view: &Arc<ViewDefinition>,
    sources: impl IntoIterator<Item = Result<(String, R)>>,
    batch_size: usize,
    chunk_size: usize,
    max_line_bytes: usize,
    mut on_batch: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<u64> {
    let mut rows = 0;
    let runner =
        || ViewRunner::new(Arc::clone(view), batch_size).with_max_line_bytes(max_line_bytes);
    run_chunks(
        sources,
        chunk_size,
        max_line_bytes,
        || Ok(()),
        |(), chunk| run_chunk(&runner, chunk),
        |batches| {
            for batch in batches {
                rows += batch.num_rows() as u64;
                on_batch(batch)?;
            }
            Ok(ControlFlow::Continue(()))
        },
    )?;
    Ok(rows)
}

/// The view's rows of `chunk`. Its first line's number in its file is known only once the
/// chunks before it are counted, so the lines are numbered from 1, and a failed chunk is run
/// again from its real first line for the error to name the right one.
fn run_chunk(runner: &impl Fn() -> ViewRunner, chunk: &Chunk) -> Result<Vec<RecordBatch>> {
    run_lines(runner(), chunk, 1).or_else(|_| run_lines(runner(), chunk, chunk.first_line()))
}

fn run_lines(runner: ViewRunner, chunk: &Chunk, first_line: u64) -> Result<Vec<RecordBatch>> {
    let (bytes, source) = (chunk.bytes(), &*chunk.source);
    let mut runner = runner.with_source(source, first_line);
    let (mut bytes, mut batches) = (bytes, Vec::new());
    while !bytes.is_empty() {
        let n = runner.push_ndjson(bytes)?;
        bytes = &bytes[n..];
        if runner.is_full() {
            batches.extend(runner.flush()?);
        }
    }
    batches.extend(runner.flush()?);
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use arrow::array::AsArray;

    use super::*;

    #[test]
    fn many_chunks_keep_stream_order_and_bad_lines_are_named() {
        let lines: String = (0..3000)
            .map(|i| format!("{{\"resourceType\":\"Patient\",\"id\":\"p{i}\"}}\n\n"))
            .collect();
        let view = Arc::new(ViewDefinition::from_paths("Patient", &[("id", "id")]).unwrap());
        let mut ids = Vec::new();
        let rows = run_view_chunks(
            &view,
            [Ok(("x.ndjson".into(), lines.as_bytes()))],
            100,
            1000,
            usize::MAX,
            |b| {
                assert!(b.num_rows() <= 100);
                ids.extend(
                    b.column(0)
                        .as_string::<i32>()
                        .iter()
                        .map(|s| s.unwrap().to_owned()),
                );
                Ok(())
            },
        )
        .unwrap();
        let expected: Vec<String> = (0..3000).map(|i| format!("p{i}")).collect();
        assert_eq!((rows, ids), (3000, expected));

        let bad = format!("{lines}{{oops\n");
        let err = run_view_chunks(
            &view,
            [Ok(("x.ndjson".into(), bad.as_bytes()))],
            100,
            1000,
            usize::MAX,
            |_| Ok(()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("view Patient: x.ndjson line 6001: not a JSON resource"),
            "{err}"
        );

        // A line beyond the bound, cut across chunks, is an error naming its line.
        let long = format!(
            "{lines}{{\"resourceType\":\"Patient\",\"id\":\"{}\"}}\n",
            "x".repeat(1_000_000)
        );
        let run = |max_line| {
            run_view_chunks(
                &view,
                [Ok(("x.ndjson".into(), long.as_bytes()))],
                100,
                1000,
                max_line,
                |_| Ok(()),
            )
        };
        let err = run(1024).unwrap_err().to_string();
        assert!(
            err.contains("view Patient: x.ndjson line 6001: line of more than 1024 bytes"),
            "{err}"
        );
        assert_eq!(run(usize::MAX).unwrap(), 3001);
    }
}
