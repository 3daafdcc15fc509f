//! The decoder's runs over whole streams on all cores: each line-aligned chunk
//! ([`crate::chunks`]) is inferred or decoded on its own by a worker, and the results are put back
//! in order, with the line numbers of errors counted in their source.

use std::io::Read;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use super::{DecodeError, DecodeOptions, Decoder, SchemaInference, TableMode};
use crate::chunks::{CHUNK, Chunk, SourceError, run_chunks};

/// What stops [`infer_reader`]: a bad line (strict mode), or the reader failing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// A bad line, or a schema the decoder cannot fill.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The reader failed.
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// What [`decode_reader`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeSummary {
    /// Rows in the batches delivered.
    pub rows: u64,
    /// Bad lines skipped (lenient mode).
    pub skipped_count: u64,
    /// The first bad lines skipped (at most 100).
    pub skipped: Vec<DecodeError>,
    /// Rows with paths beyond the width bound, in the [`OVERFLOW_COLUMN`](super::OVERFLOW_COLUMN).
    pub overflowed: u64,
}

/// Reads all of `reader` (one file) into `inference` on all cores, as if pushed and ended there.
///
/// The inference's options (strictness, resource type, source name) apply to the file.
pub fn infer_reader(reader: impl Read, inference: &mut SchemaInference) -> Result<(), ReadError> {
    let source = inference.lines.options.source.clone();
    infer_readers([Ok((source, reader))], inference)
}

/// Reads the files of `sources` (each a name for its errors and a reader, opened in turn) into
/// `inference` on all cores, as [`infer_reader`] reads one. Each reader's name stands in for the
/// inference's source in its errors. The run fails with the error type `E` of `sources` (the
/// failure to open one), which a bad line or a failing reader converts into.
///
/// The chunks of consecutive files are worked on at once: an export cut into many small files
/// (a thousand resources each, say) keeps every core busy, where one file at a time would leave
/// all but one idle.
pub fn infer_readers<R: Read, E>(
    sources: impl IntoIterator<Item = Result<(String, R), E>>,
    inference: &mut SchemaInference,
) -> Result<(), E>
where
    E: From<DecodeError> + From<SourceError> + Send,
{
    infer_chunks(sources, inference, CHUNK)
}

pub(super) fn infer_chunks<R: Read, E>(
    sources: impl IntoIterator<Item = Result<(String, R), E>>,
    inference: &mut SchemaInference,
    chunk_size: usize,
) -> Result<(), E>
where
    E: From<DecodeError> + From<SourceError> + Send,
{
    let (mode, options) = (inference.mode.clone(), inference.lines.options.clone());
    run_chunks(
        sources,
        chunk_size,
        options.max_line_bytes,
        // An inference per worker, kept from chunk to chunk: its paths carry over.
        || Ok(SchemaInference::with_options(&mode, options.clone())),
        |worker, chunk| -> Result<SchemaInference, E> {
            worker.lines.restart(&chunk.source, !chunk.starts_source);
            worker
                .push(&chunk.bytes)
                .map_err(|e| renumber_error(chunk, e))?;
            chunk.counted(worker.lines.seen);
            worker.end_stream().map_err(|e| renumber_error(chunk, e))?;
            // A part per chunk, merged in file order: columns keep their first-seen order (a
            // column new to this worker but seen in an earlier chunk is known by then).
            let mut part = worker.take_part();
            renumber(chunk, &mut part.lines.skipped);
            Ok(part)
        },
        |part| {
            inference.merge(&part);
            Ok(())
        },
    )
}

/// Decodes all of `reader` (one file) on all cores into batches of `schema`, handed to `on_batch`
/// in file order.
///
/// Batches hold at most `options.batch_size` rows (fewer at the end of each 2 MiB chunk). In
/// strict mode the first bad line in file order is the error. The run fails with the error type
/// `E` of `on_batch`, which a bad line or a failing reader converts into.
pub fn decode_reader<E>(
    reader: impl Read,
    schema: SchemaRef,
    mode: &TableMode,
    options: DecodeOptions,
    on_batch: impl FnMut(RecordBatch) -> Result<(), E>,
) -> Result<DecodeSummary, E>
where
    E: From<DecodeError> + From<SourceError> + Send,
{
    let source = options.source.clone();
    decode_readers([Ok((source, reader))], schema, mode, options, on_batch)
}

/// Decodes the files of `sources` (each a name for its errors and a reader, opened in turn) on
/// all cores, as [`decode_reader`] decodes one, into one run of batches in file order; the
/// chunks of consecutive files are worked on at once (see [`infer_readers`]). Each reader's name
/// stands in for `options`' source in its errors. The run fails with the error type `E` of
/// `sources` and `on_batch`, which a bad line or a failing reader converts into.
///
/// ```
/// use fhirflight::ndjson::{DecodeOptions, SchemaInference, TableMode, decode_readers, infer_readers};
///
/// let files = [
///     ("Patient.1.ndjson", "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n"),
///     ("Patient.2.ndjson", "{\"resourceType\":\"Patient\",\"id\":\"b\",\"gender\":\"female\"}\n"),
/// ];
/// // Opened one after the other (a failure to open one is an error of the run).
/// let sources = || {
///     files
///         .iter()
///         .map(|(name, text)| Ok::<_, fhirflight::Error>((name.to_string(), text.as_bytes())))
/// };
/// let mode = TableMode::default();
/// let mut inference = SchemaInference::new(&mode);
/// infer_readers(sources(), &mut inference)?;
/// let mut rows = 0;
/// let summary = decode_readers(sources(), inference.schema(), &mode, DecodeOptions::default(), |batch| {
///     assert_eq!(batch.num_columns(), 3); // resourceType, id, gender
///     rows += batch.num_rows();
///     Ok(())
/// })?;
/// assert_eq!((rows, summary.rows), (2, 2));
/// # Ok::<(), fhirflight::Error>(())
/// ```
pub fn decode_readers<R: Read, E>(
    sources: impl IntoIterator<Item = Result<(String, R), E>>,
    schema: SchemaRef,
    mode: &TableMode,
    options: DecodeOptions,
    on_batch: impl FnMut(RecordBatch) -> Result<(), E>,
) -> Result<DecodeSummary, E>
where
    E: From<DecodeError> + From<SourceError> + Send,
{
    decode_chunks(sources, schema, mode, options, on_batch, CHUNK)
}

pub(super) fn decode_chunks<R: Read, E>(
    sources: impl IntoIterator<Item = Result<(String, R), E>>,
    schema: SchemaRef,
    mode: &TableMode,
    options: DecodeOptions,
    mut on_batch: impl FnMut(RecordBatch) -> Result<(), E>,
    chunk_size: usize,
) -> Result<DecodeSummary, E>
where
    E: From<DecodeError> + From<SourceError> + Send,
{
    // Fail on a bad schema before reading anything.
    Decoder::new(Arc::clone(&schema), mode, options.clone())?;
    let mut summary = DecodeSummary::default();
    run_chunks(
        sources,
        chunk_size,
        options.max_line_bytes,
        // A decoder per worker, kept from chunk to chunk: its paths and buffer sizes carry over.
        || Ok(Decoder::new(Arc::clone(&schema), mode, options.clone())?),
        |decoder, chunk| -> Result<_, E> {
            decoder.lines.restart(&chunk.source, !chunk.starts_source);
            let overflowed_before = decoder.overflowed_count();
            let mut batches = Vec::new();
            let mut bytes = &chunk.bytes[..];
            while !bytes.is_empty() {
                let n = decoder
                    .decode(bytes)
                    .map_err(|e| renumber_error(chunk, e))?;
                bytes = &bytes[n..];
                batches.extend(decoder.flush()?);
            }
            chunk.counted(decoder.lines.seen);
            batches.extend(decoder.finish().map_err(|e| renumber_error(chunk, e))?);
            let mut skipped = std::mem::take(&mut decoder.lines.skipped);
            renumber(chunk, &mut skipped);
            let overflowed = decoder.overflowed_count() - overflowed_before;
            Ok((
                batches,
                std::mem::take(&mut decoder.lines.skipped_count),
                skipped,
                overflowed,
            ))
        },
        |(batches, skipped_count, skipped, overflowed)| {
            summary.skipped_count += skipped_count;
            summary.overflowed += overflowed;
            let room = super::KEEP_SKIPPED.saturating_sub(summary.skipped.len());
            summary.skipped.extend(skipped.into_iter().take(room));
            for batch in batches {
                summary.rows += batch.num_rows() as u64;
                on_batch(batch)?;
            }
            Ok(())
        },
    )?;
    Ok(summary)
}

/// Renumbers errors of lines numbered from 1 within `chunk` ([`DecodeOptions::mid_stream`]) as
/// lines of its source.
fn renumber(chunk: &Chunk, errors: &mut [DecodeError]) {
    if let Some(first) = errors.first().map(|_| chunk.first_line()) {
        for e in errors {
            e.line += first - 1;
        }
    }
}

/// `e`, of a line numbered from 1 within `chunk`, as an error of its source's line.
fn renumber_error(chunk: &Chunk, mut e: DecodeError) -> DecodeError {
    renumber(chunk, std::slice::from_mut(&mut e));
    e
}
