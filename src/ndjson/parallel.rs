//! Whole streams on all cores: the bytes are cut at line ends into chunks, each chunk is inferred
//! or decoded on its own by a worker, and the results are put back in order.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::mpsc::{channel, sync_channel};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use super::{DecodeError, DecodeOptions, Decoder, SchemaInference, TableMode};

/// Bytes per chunk (cut at the last line end within). Small enough that the chunks in flight stay
/// in the last-level cache between the reader's copy and the worker's walk, and that the buffers
/// are few (fresh ones cost page faults): 2 MiB took 7% less CPU than 8 MiB on Observation.
pub(crate) const CHUNK: usize = 2 << 20;

/// What [`decode_reader`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeSummary {
    /// Rows in the batches delivered.
    pub rows: u64,
    /// Bad lines skipped (lenient mode).
    pub skipped_count: u64,
    /// The first bad lines skipped (at most 100).
    pub skipped: Vec<DecodeError>,
}

/// Reads all of `reader` (one file) into `inference` on all cores, as if pushed and ended there.
///
/// The inference's options (strictness, resource type, source name) apply to the file.
pub fn infer_reader(reader: impl Read, inference: &mut SchemaInference) -> crate::Result<()> {
    infer_chunks(reader, inference, CHUNK)
}

pub(super) fn infer_chunks(
    reader: impl Read,
    inference: &mut SchemaInference,
    chunk_size: usize,
) -> crate::Result<()> {
    let (mode, options) = (inference.mode.clone(), inference.lines.options.clone());
    run_chunks(
        reader,
        chunk_size,
        &options.source,
        || Ok(()),
        |(), chunk| {
            // A part per chunk, merged in file order: columns keep their first-seen order.
            let mut part = SchemaInference::with_options(
                &mode,
                options.clone().with_first_line(chunk.first_line),
            );
            part.push(&chunk.bytes)?;
            part.end_stream()?;
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
/// strict mode the first bad line in file order is the error.
pub fn decode_reader(
    reader: impl Read,
    schema: SchemaRef,
    mode: &TableMode,
    options: DecodeOptions,
    on_batch: impl FnMut(RecordBatch) -> crate::Result<()>,
) -> crate::Result<DecodeSummary> {
    decode_chunks(reader, schema, mode, options, on_batch, CHUNK)
}

pub(super) fn decode_chunks(
    reader: impl Read,
    schema: SchemaRef,
    mode: &TableMode,
    options: DecodeOptions,
    mut on_batch: impl FnMut(RecordBatch) -> crate::Result<()>,
    chunk_size: usize,
) -> crate::Result<DecodeSummary> {
    // Fail on a bad schema before reading anything.
    Decoder::new(Arc::clone(&schema), mode, options.clone())?;
    let mut summary = DecodeSummary::default();
    run_chunks(
        reader,
        chunk_size,
        &options.source,
        // A decoder per worker, kept from chunk to chunk: its paths and buffer sizes carry over.
        || Decoder::new(Arc::clone(&schema), mode, options.clone()),
        |decoder, chunk| {
            decoder.restart(chunk.first_line, chunk.lines);
            let mut batches = Vec::new();
            let mut bytes = &chunk.bytes[..];
            while !bytes.is_empty() {
                let n = decoder.decode(bytes)?;
                bytes = &bytes[n..];
                batches.extend(decoder.flush()?);
            }
            batches.extend(decoder.finish()?);
            let skipped = std::mem::take(&mut decoder.lines.skipped);
            Ok((
                batches,
                std::mem::take(&mut decoder.lines.skipped_count),
                skipped,
            ))
        },
        |(batches, skipped_count, skipped)| {
            summary.skipped_count += skipped_count;
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

/// A piece of the stream that ends at a line end (or at the end of the stream).
pub(crate) struct Chunk {
    pub(crate) bytes: Vec<u8>,
    /// The number of its first line in the stream, from 1.
    pub(crate) first_line: u64,
    /// Line ends in `bytes`.
    pub(crate) lines: usize,
}

/// Runs `work` on chunks of `reader` in worker threads (each with its own state from `init`) and
/// `emit`s the results in stream order, with at most two chunks per worker in flight (memory stays
/// bounded). Chunk buffers go back to the reader for reuse: fresh memory costs the kernel a page
/// fault and a page clearing per 4 KiB.
pub(crate) fn run_chunks<S, T: Send>(
    mut reader: impl Read,
    chunk_size: usize,
    source: &str,
    init: impl Fn() -> crate::Result<S> + Sync,
    work: impl Fn(&mut S, &Chunk) -> crate::Result<T> + Sync,
    mut emit: impl FnMut(T) -> crate::Result<()>,
) -> crate::Result<()> {
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    let in_flight = 2 * workers;
    let (job_tx, job_rx) = sync_channel::<(usize, Chunk)>(in_flight);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = channel();
    let (free_tx, free_rx) = channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        // Dropped when this closure returns, early or not: the workers then stop.
        let (job_tx, done_rx) = (job_tx, done_rx);
        for _ in 0..workers {
            let (job_rx, done_tx, free_tx) = (&job_rx, done_tx.clone(), free_tx.clone());
            let (init, work) = (&init, &work);
            scope.spawn(move || {
                let mut state = None;
                loop {
                    // The lock is held only while waiting for the next job.
                    let job = job_rx.lock().expect("no worker panicked").recv();
                    let Ok((index, chunk)) = job else { break };
                    let result = match &mut state {
                        Some(state) => work(state, &chunk),
                        None => init().and_then(|s| work(state.insert(s), &chunk)),
                    };
                    if result.is_err() {
                        // A failed chunk may leave the state half-way: start afresh.
                        state = None;
                    }
                    // The reader may have stopped; then the buffer is simply dropped.
                    let _ = free_tx.send(chunk.bytes);
                    if done_tx.send((index, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop((done_tx, free_tx));

        let mut done = BTreeMap::new();
        let (mut sent, mut emitted) = (0, 0);
        let mut emit_ready = |done: &mut BTreeMap<usize, crate::Result<T>>, emitted: &mut usize| {
            while let Some(result) = done.remove(emitted) {
                *emitted += 1;
                emit(result?)?;
            }
            Ok::<(), crate::Error>(())
        };
        let mut carry = Vec::new();
        let mut next_line = 1;
        loop {
            let buffer = free_rx.try_recv().unwrap_or_default();
            let Some(chunk) = next_chunk(
                &mut reader,
                buffer,
                chunk_size,
                &mut carry,
                &mut next_line,
                source,
            )?
            else {
                break;
            };
            while sent - emitted >= in_flight {
                let (index, result) = done_rx.recv().expect("workers outlive their jobs");
                done.insert(index, result);
                emit_ready(&mut done, &mut emitted)?;
            }
            job_tx
                .send((sent, chunk))
                .expect("workers outlive the job queue");
            sent += 1;
            while let Ok((index, result)) = done_rx.try_recv() {
                done.insert(index, result);
            }
            emit_ready(&mut done, &mut emitted)?;
        }
        drop(job_tx);
        while emitted < sent {
            let (index, result) = done_rx.recv().expect("workers outlive their jobs");
            done.insert(index, result);
            emit_ready(&mut done, &mut emitted)?;
        }
        Ok(())
    })
}

/// The next chunk of about `chunk_size` bytes ending at a line end; `carry` holds the bytes after it.
/// `buffer` is an empty or used one to fill.
fn next_chunk(
    reader: &mut impl Read,
    mut bytes: Vec<u8>,
    chunk_size: usize,
    carry: &mut Vec<u8>,
    next_line: &mut u64,
    source: &str,
) -> crate::Result<Option<Chunk>> {
    bytes.clear();
    bytes.extend_from_slice(carry);
    carry.clear();
    bytes.reserve(chunk_size);
    let cut = loop {
        let start = bytes.len();
        let want = chunk_size.saturating_sub(start).max(chunk_size / 4).max(1) as u64;
        let n = reader
            .by_ref()
            .take(want)
            .read_to_end(&mut bytes)
            .map_err(|e| crate::Error::io(source, e))?;
        if n == 0 {
            break bytes.len();
        }
        // A line longer than a chunk: keep reading until it ends.
        if bytes.len() >= chunk_size
            && let Some(i) = memchr::memrchr(b'\n', &bytes)
        {
            break i + 1;
        }
    };
    if bytes.is_empty() {
        return Ok(None);
    }
    carry.extend_from_slice(&bytes[cut..]);
    bytes.truncate(cut);
    let first_line = *next_line;
    let lines = memchr::memchr_iter(b'\n', &bytes).count();
    *next_line += lines as u64;
    Ok(Some(Chunk {
        bytes,
        first_line,
        lines,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunks_end_at_line_ends_keep_long_lines_whole_and_count_lines() {
        let text = format!("a\n{}\nb\nc", "x".repeat(100));
        let (mut reader, mut carry, mut next_line) = (text.as_bytes(), Vec::new(), 1);
        let mut chunks = Vec::new();
        while let Some(c) =
            super::next_chunk(&mut reader, Vec::new(), 8, &mut carry, &mut next_line, "t").unwrap()
        {
            chunks.push((String::from_utf8(c.bytes).unwrap(), c.first_line, c.lines));
        }
        let texts: Vec<&str> = chunks.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(texts.concat(), text);
        assert!(texts.iter().any(|t| t.len() == 101), "{texts:?}");
        assert!(texts[..texts.len() - 1].iter().all(|t| t.ends_with('\n')));
        let lines: Vec<(u64, usize)> = chunks.iter().map(|c| (c.1, c.2)).collect();
        let mut first = 1;
        for &(first_line, n) in &lines {
            assert_eq!(first_line, first);
            first += n as u64;
        }
        assert_eq!(first, 4, "{lines:?}");
    }
}
