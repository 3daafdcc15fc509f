//! The decoder's runs over whole streams on all cores: each line-aligned chunk
//! ([`crate::chunks`]) is inferred or decoded on its own by a worker, and the results are put back
//! in order, with the line numbers of errors counted in their source.

use std::cell::Cell;
use std::io::Read;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use super::{
    DecodeError, DecodeErrorKind, DecodeOptions, Decoder, Guess, SchemaInference, TableMode,
};
use crate::chunks::{CHUNK, Chunk, Source, SourceError, run_chunks};

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
    /// The resources of each source, by its place among the sources: its lines that are not
    /// blank, rows and skipped lines alike (a raw file's count, without reading it again).
    pub resources_per_source: Vec<u64>,
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

pub(crate) fn infer_chunks<R: Read, E>(
    sources: impl IntoIterator<Item = Result<impl Into<Source<R>>, E>>,
    inference: &mut SchemaInference,
    chunk_size: usize,
) -> Result<(), E>
where
    E: From<DecodeError> + From<SourceError> + Send,
{
    infer_first(sources, inference, chunk_size, u64::MAX)
}

/// Reads the first chunks of `sources` into `inference` on all cores, as [`infer_readers`]
/// reads them all, up to the one that makes them at least `bytes`: the schema a decode against
/// a [`Guess`] starts from.
pub(crate) fn infer_first<R: Read, E>(
    sources: impl IntoIterator<Item = Result<impl Into<Source<R>>, E>>,
    inference: &mut SchemaInference,
    chunk_size: usize,
    bytes: u64,
) -> Result<(), E>
where
    E: From<DecodeError> + From<SourceError> + Send,
{
    let (mode, options) = (inference.mode.clone(), inference.lines.options.clone());
    let mut merged = 0;
    run_chunks(
        sources,
        chunk_size,
        options.max_line_bytes,
        // An inference per worker, kept from chunk to chunk: its paths carry over.
        || Ok(SchemaInference::with_options(&mode, options.clone())),
        |worker, chunk| -> Result<(SchemaInference, u64), E> {
            worker.lines.restart(&chunk.source, !chunk.starts_file());
            worker
                .push(chunk.bytes())
                .map_err(|e| renumber_error(chunk, e))?;
            chunk.counted(worker.lines.seen);
            worker.end_stream().map_err(|e| renumber_error(chunk, e))?;
            // A part per chunk, merged in file order: columns keep their first-seen order (a
            // column new to this worker but seen in an earlier chunk is known by then).
            let mut part = worker.take_part();
            renumber(chunk, &mut part.lines.skipped);
            Ok((part, chunk.bytes().len() as u64))
        },
        |(part, read)| {
            inference.merge(&part);
            merged += read;
            Ok(match merged < bytes {
                true => ControlFlow::Continue(()),
                false => ControlFlow::Break(()),
            })
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
/// assert_eq!(summary.resources_per_source, [1, 1]);
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

pub(crate) fn decode_chunks<R: Read, E>(
    sources: impl IntoIterator<Item = Result<impl Into<Source<R>>, E>>,
    schema: SchemaRef,
    mode: &TableMode,
    options: DecodeOptions,
    on_batch: impl FnMut(RecordBatch) -> Result<(), E>,
    chunk_size: usize,
) -> Result<DecodeSummary, E>
where
    E: From<DecodeError> + From<SourceError> + Send,
{
    let run = decode_run(sources, &schema, mode, options, on_batch, chunk_size)?;
    Ok(run.0)
}

/// Where a decode against a [`Guess`] stopped ([`decode_guessing`]): the first chunk holding a
/// line the guess has no place for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unforeseen {
    /// The chunk's source, by its place among the sources.
    pub(crate) source: usize,
    /// Where the chunk starts in its source's reader.
    pub(crate) offset: u64,
    /// The number of the chunk's first line in its source.
    pub(crate) first_line: u64,
}

/// Decodes `sources` on all cores against `guess`, as [`decode_readers`] decodes, until the
/// first chunk with a line the guess has no place for: the batches handed on are those of the
/// chunks before it, and the run says where it stopped (none if it decoded everything).
pub(crate) fn decode_guessing<R: Read, E>(
    sources: impl IntoIterator<Item = Result<Source<R>, E>>,
    guess: &Guess,
    mode: &TableMode,
    options: DecodeOptions,
    on_batch: impl FnMut(RecordBatch) -> Result<(), E>,
) -> Result<(DecodeSummary, Option<Unforeseen>), E>
where
    E: From<DecodeError> + From<SourceError> + Send,
{
    let options = options.guessing(guess);
    decode_run(sources, &guess.schema, mode, options, on_batch, CHUNK)
}

/// What a worker made of one chunk.
enum Decoded {
    /// Its batches.
    Batches {
        /// The chunk's source, by its place among the sources.
        source: usize,
        batches: Vec<RecordBatch>,
        /// Bad lines skipped: their count and the first few.
        skipped_count: u64,
        skipped: Vec<DecodeError>,
        /// Rows with paths beyond the width bound.
        overflowed: u64,
    },
    /// A line the guess has no place for.
    Unforeseen(Unforeseen),
    /// Nothing: it comes after an unforeseen line, and the run stops before it.
    Dropped,
}

/// The decode of [`decode_chunks`] and [`decode_guessing`]: under a guess (`options.guessed`),
/// the first chunk with a line that does not fit ends the run there.
fn decode_run<R: Read, E>(
    sources: impl IntoIterator<Item = Result<impl Into<Source<R>>, E>>,
    schema: &SchemaRef,
    mode: &TableMode,
    options: DecodeOptions,
    mut on_batch: impl FnMut(RecordBatch) -> Result<(), E>,
    chunk_size: usize,
) -> Result<(DecodeSummary, Option<Unforeseen>), E>
where
    E: From<DecodeError> + From<SourceError> + Send,
{
    let guessing = options.guessed.is_some();
    let decoder = || Decoder::new(Arc::clone(schema), mode, options.clone());
    // Fail on a bad schema before reading anything.
    decoder()?;
    let mut summary = DecodeSummary::default();
    let mut unforeseen = None;
    // The first chunk known to hold an unforeseen line: the workers skip those after it.
    let stop = AtomicUsize::new(usize::MAX);
    let opened = Cell::new(0);
    let sources = sources
        .into_iter()
        .inspect(|_| opened.set(opened.get() + 1));
    run_chunks(
        sources,
        chunk_size,
        options.max_line_bytes,
        // A decoder per worker, kept from chunk to chunk: its paths and buffer sizes carry over.
        || Ok(decoder()?),
        |worker, chunk| -> Result<_, E> {
            if chunk.index() > stop.load(Ordering::Relaxed) {
                return Ok(Decoded::Dropped);
            }
            match decode_chunk(worker, chunk) {
                Err(e) if guessing && e.kind == DecodeErrorKind::DoesNotFitSchema => {
                    stop.fetch_min(chunk.index(), Ordering::Relaxed);
                    // The decoder stopped half-way through the chunk.
                    *worker = decoder()?;
                    Ok(Decoded::Unforeseen(Unforeseen {
                        source: chunk.source_index,
                        offset: chunk.offset,
                        first_line: chunk.first_line(),
                    }))
                }
                result => Ok(result?),
            }
        },
        |decoded| {
            let (source, batches, skipped_count, skipped, overflowed) = match decoded {
                Decoded::Batches {
                    source,
                    batches,
                    skipped_count,
                    skipped,
                    overflowed,
                } => (source, batches, skipped_count, skipped, overflowed),
                Decoded::Unforeseen(at) => {
                    unforeseen = Some(at);
                    return Ok(ControlFlow::Break(()));
                }
                Decoded::Dropped => unreachable!("the run stops at the unforeseen line first"),
            };
            summary.skipped_count += skipped_count;
            summary.overflowed += overflowed;
            let room = super::KEEP_SKIPPED.saturating_sub(summary.skipped.len());
            summary.skipped.extend(skipped.into_iter().take(room));
            let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
            summary.rows += rows;
            // A chunk's source is open by now: the count has its place.
            summary.resources_per_source.resize(opened.get(), 0);
            summary.resources_per_source[source] += rows + skipped_count;
            for batch in batches {
                on_batch(batch)?;
            }
            Ok(ControlFlow::Continue(()))
        },
    )?;
    // Sources after the last chunk's (empty files) count too.
    summary.resources_per_source.resize(opened.get(), 0);
    Ok((summary, unforeseen))
}

/// The batches of `chunk` by `decoder`, with its bad lines numbered in their source.
fn decode_chunk(decoder: &mut Decoder, chunk: &mut Chunk) -> Result<Decoded, DecodeError> {
    decoder.lines.restart(&chunk.source, !chunk.starts_file());
    let overflowed_before = decoder.overflowed_count();
    let mut batches = Vec::new();
    let mut bytes = chunk.bytes();
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
    let skipped_count = std::mem::take(&mut decoder.lines.skipped_count);
    Ok(Decoded::Batches {
        source: chunk.source_index,
        batches,
        skipped_count,
        skipped,
        overflowed,
    })
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
