//! A view over a whole NDJSON stream on all cores: the bytes are cut at line ends into chunks,
//! each chunk is run by a worker, and the batches are handed on in stream order.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;

use super::{ViewDefinition, ViewRunner};
use crate::{Error, Result};

/// Bytes of NDJSON per unit of work (cut at a line end): some hundreds of resources.
const CHUNK: usize = 2 << 20;

type Answer = Result<Vec<RecordBatch>>;

/// A piece of the stream, cut at a line end, and where its answer goes.
struct Job {
    first_line: u64,
    bytes: Vec<u8>,
    done: SyncSender<Answer>,
}

/// Runs `view` over all of `reader` (NDJSON, one resource per line) on all cores and hands its
/// record batches to `on_batch` in stream order; returns the number of rows. `source` names the
/// stream in errors (with the line number). At most two chunks per core are in flight, so memory
/// stays bounded whatever the size of the stream.
///
/// ```
/// # use std::sync::Arc;
/// # use fhirflight::view::{ViewDefinition, run_reader};
/// let view = Arc::new(ViewDefinition::from_paths("Patient", &[("id", "id")])?);
/// let ndjson = "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Patient\",\"id\":\"b\"}\n";
/// let rows = run_reader(&view, ndjson.as_bytes(), "inline", 8192, |batch| Ok(()))?;
/// assert_eq!(rows, 2);
/// # Ok::<(), fhirflight::Error>(())
/// ```
pub fn run_reader(
    view: &Arc<ViewDefinition>,
    reader: impl Read,
    source: &str,
    batch_size: usize,
    on_batch: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<u64> {
    run_chunks(view, reader, source, batch_size, CHUNK, on_batch)
}

fn run_chunks(
    view: &Arc<ViewDefinition>,
    mut reader: impl Read,
    source: &str,
    batch_size: usize,
    chunk_size: usize,
    mut on_batch: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<u64> {
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    let (jobs, queue) = channel::<Job>();
    let queue = Mutex::new(queue);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                // The lock is held only while waiting for the next job.
                while let Ok(job) = queue.lock().expect("no worker panicked").recv() {
                    let _ = job.done.send(run_chunk(view, source, batch_size, &job));
                }
            });
        }
        // Dropped when this closure returns, early or not: the workers then stop.
        let jobs = jobs;
        let mut rows = 0;
        let mut emit = |answer: Receiver<Answer>| -> Result<()> {
            for batch in answer.recv().expect("a worker answers every job")? {
                rows += batch.num_rows() as u64;
                on_batch(batch)?;
            }
            Ok(())
        };
        let mut pending = VecDeque::new();
        let (mut carry, mut next_line) = (Vec::new(), 1);
        while let Some(bytes) =
            next_chunk(&mut reader, chunk_size, &mut carry).map_err(|e| Error::io(source, e))?
        {
            if pending.len() >= 2 * workers {
                emit(pending.pop_front().expect("pending is not empty"))?;
            }
            let (done, answer) = sync_channel(1);
            let first_line = next_line;
            next_line += memchr::memchr_iter(b'\n', &bytes).count() as u64;
            let job = Job {
                first_line,
                bytes,
                done,
            };
            jobs.send(job).expect("workers outlive the job queue");
            pending.push_back(answer);
        }
        pending.into_iter().try_for_each(&mut emit)?;
        Ok(rows)
    })
}

fn run_chunk(view: &Arc<ViewDefinition>, source: &str, batch_size: usize, job: &Job) -> Answer {
    let mut runner =
        ViewRunner::new(Arc::clone(view), batch_size).with_source(source, job.first_line);
    let (mut bytes, mut batches) = (&job.bytes[..], Vec::new());
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

/// The next `chunk_size` bytes or so of `reader`, ending at a line end (or at the end of the
/// stream); `carry` keeps the bytes after it. A line longer than a chunk is read whole.
fn next_chunk(
    reader: &mut impl Read,
    chunk_size: usize,
    carry: &mut Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = std::mem::take(carry);
    loop {
        let scanned = bytes.len();
        let n = reader
            .by_ref()
            .take(chunk_size as u64)
            .read_to_end(&mut bytes)?;
        if n == 0 {
            return Ok((!bytes.is_empty()).then_some(bytes));
        }
        if let Some(i) = memchr::memrchr(b'\n', &bytes[scanned..]) {
            carry.extend_from_slice(&bytes[scanned + i + 1..]);
            bytes.truncate(scanned + i + 1);
            return Ok(Some(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::AsArray;

    use super::*;

    #[test]
    fn chunks_end_at_line_ends_and_keep_long_lines_whole() {
        let text = format!("a\n{}\nb\nc", "x".repeat(100));
        let (mut reader, mut carry, mut chunks) = (text.as_bytes(), Vec::new(), Vec::new());
        while let Some(c) = next_chunk(&mut reader, 8, &mut carry).unwrap() {
            chunks.push(String::from_utf8(c).unwrap());
        }
        assert_eq!(chunks.concat(), text);
        assert_eq!(chunks.len(), 4, "{chunks:?}");
        assert_eq!(chunks[1].len(), 101);
        assert!(chunks[..3].iter().all(|c| c.ends_with('\n')));
    }

    #[test]
    fn many_chunks_keep_stream_order_and_bad_lines_are_named() {
        let lines: String = (0..3000)
            .map(|i| format!("{{\"resourceType\":\"Patient\",\"id\":\"p{i}\"}}\n\n"))
            .collect();
        let view = Arc::new(ViewDefinition::from_paths("Patient", &[("id", "id")]).unwrap());
        let mut ids = Vec::new();
        let rows = run_chunks(&view, lines.as_bytes(), "x.ndjson", 100, 1000, |b| {
            assert!(b.num_rows() <= 100);
            ids.extend(
                b.column(0)
                    .as_string::<i32>()
                    .iter()
                    .map(|s| s.unwrap().to_owned()),
            );
            Ok(())
        })
        .unwrap();
        let expected: Vec<String> = (0..3000).map(|i| format!("p{i}")).collect();
        assert_eq!((rows, ids), (3000, expected));

        let bad = format!("{lines}{{oops\n");
        let err = run_chunks(&view, bad.as_bytes(), "x.ndjson", 100, 1000, |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("view Patient: x.ndjson line 6001: not a JSON resource"),
            "{err}"
        );
    }
}
