//! Line-aligned chunking on all cores: the bytes of one or more sources are cut at line ends into
//! chunks of about 2 MiB, worked on by the process-wide pool of worker threads (one per core), and
//! the results handed on in order. The NDJSON decoder ([`crate::ndjson`]) and the view runner
//! ([`crate::view`]) both run on it; it knows nothing of either, nor of the crate's error type:
//! a run fails with its caller's error type, which a [`SourceError`] converts into.

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::ControlFlow;
use std::sync::mpsc::{channel, sync_channel};
use std::sync::{Arc, Condvar, LazyLock, Mutex};

/// Bytes per chunk (cut at the last line end within). Small enough that the chunks in flight stay
/// in the last-level cache between the reader's copy and the worker's walk, and that the buffers
/// are few (fresh ones cost page faults): 2 MiB took 7% less CPU than 8 MiB on Observation.
pub(crate) const CHUNK: usize = 2 << 20;

/// A source could not be read: its name (a file's path) and the I/O error.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {source}")]
pub struct SourceError {
    /// The source's name, as given with its reader.
    pub source_name: String,
    /// The error reading it.
    pub source: std::io::Error,
}

/// One source of a run: a name for errors, its reader, and the number of its first line, which
/// is 1 unless the source continues a file read in part before (a conversion picking up where
/// it stopped).
pub(crate) struct Source<R> {
    pub(crate) name: String,
    pub(crate) reader: R,
    pub(crate) first_line: u64,
}

impl<R> From<(String, R)> for Source<R> {
    fn from((name, reader): (String, R)) -> Self {
        Source {
            name,
            reader,
            first_line: 1,
        }
    }
}

/// A piece of a source that ends at a line end (or at the end of the source).
pub(crate) struct Chunk {
    /// Its bytes are the first `len`; the rest is room a read had, initialized, so that the
    /// buffer is read into again without clearing (see [`next_chunk`]).
    buffer: Vec<u8>,
    len: usize,
    /// The source's name, for errors.
    pub(crate) source: Arc<str>,
    /// Whether it is the first of its source.
    pub(crate) starts_source: bool,
    /// Its source's place among the run's sources, from 0.
    pub(crate) source_index: usize,
    /// Where its bytes start in its source's reader.
    pub(crate) offset: u64,
    /// The number of its source's first line.
    source_first_line: u64,
    /// Its place among the chunks of all sources, from 0.
    index: usize,
    ledger: Arc<Ledger>,
    counted: bool,
}

impl Chunk {
    /// Its bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buffer[..self.len]
    }

    /// The number of its first line in its source, from 1. It is known once the chunks before
    /// it are counted, so this may wait for them: only errors need it.
    pub(crate) fn first_line(&self) -> u64 {
        if self.starts_source {
            return self.source_first_line;
        }
        let mut state = self.ledger.state.lock().expect("no worker panicked");
        loop {
            if let Some(first) = state.first_line(self.index) {
                return first;
            }
            state = self.ledger.counted.wait(state).expect("no worker panicked");
        }
    }

    /// Its place among the chunks of all sources, from 0: results are handed on in this order.
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// Whether its first line starts a file: only there may a byte order mark open it.
    pub(crate) fn starts_file(&self) -> bool {
        self.starts_source && self.source_first_line == 1
    }

    /// Tells the line ends in `bytes`, which a worker that walked every line knows, so that they
    /// need not be counted again. Chunks not told of are counted after their work.
    pub(crate) fn counted(&mut self, lines: u64) {
        if !std::mem::replace(&mut self.counted, true) {
            let mut state = self.ledger.state.lock().expect("no worker panicked");
            let starts = self.starts_source.then_some(self.source_first_line);
            state.count(self.index, lines, starts);
            self.ledger.counted.notify_all();
        }
    }

    /// Counts the chunk's lines unless a worker told them.
    fn settle(&mut self) {
        if !self.counted {
            let lines = memchr::memchr_iter(b'\n', self.bytes()).count();
            self.counted(lines as u64);
        }
    }
}

impl Drop for Chunk {
    /// A chunk dropped uncounted (its work failed, panicked or never ran) is counted here, so
    /// that no worker waits for it in [`Chunk::first_line`].
    fn drop(&mut self) {
        self.settle();
    }
}

/// The line count of each chunk, for the line numbers of errors (from 1 in each source).
///
/// Counting a chunk's lines before its work would cost a pass over its bytes on the reader's
/// thread (5% of a conversion); the workers count them on the way instead.
struct Ledger {
    state: Mutex<LedgerState>,
    counted: Condvar,
}

struct LedgerState {
    /// Line counts of chunks counted before a chunk ahead of them, and for those that start a
    /// source, the number of its first line.
    early: BTreeMap<usize, (u64, Option<u64>)>,
    /// Chunks `..summed` are counted; `next_line` is the first line of chunk `summed`.
    summed: usize,
    next_line: u64,
    /// First lines of the counted chunks not yet emitted.
    first_lines: BTreeMap<usize, u64>,
}

impl LedgerState {
    fn new() -> Self {
        LedgerState {
            early: BTreeMap::new(),
            summed: 0,
            next_line: 1,
            first_lines: BTreeMap::new(),
        }
    }

    fn count(&mut self, index: usize, lines: u64, starts: Option<u64>) {
        self.early.insert(index, (lines, starts));
        while let Some((lines, starts)) = self.early.remove(&self.summed) {
            if let Some(first_line) = starts {
                self.next_line = first_line;
            }
            self.first_lines.insert(self.summed, self.next_line);
            self.next_line += lines;
            self.summed += 1;
        }
    }

    fn first_line(&self, index: usize) -> Option<u64> {
        if index == self.summed {
            return Some(self.next_line);
        }
        self.first_lines.get(&index).copied()
    }

    /// Chunks before `index` are emitted: their workers are done with them.
    fn forget_before(&mut self, index: usize) {
        self.first_lines = self.first_lines.split_off(&index);
    }
}

/// Counts the resources of an NDJSON byte stream split anywhere: lines that are not blank (a
/// blank line holds only spaces, tabs or `\r`; the decoder skips them), the last one with or
/// without its newline.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LineCounter {
    lines: u64,
    /// The line not ended yet has a byte that is not blank.
    open_line: bool,
}

impl LineCounter {
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        // A resource line starts with `{`: `is_blank` stops at its first byte.
        let is_blank = |line: &[u8]| line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r'));
        while let Some(end) = memchr::memchr(b'\n', bytes) {
            if self.open_line || !is_blank(&bytes[..end]) {
                self.lines += 1;
            }
            self.open_line = false;
            bytes = &bytes[end + 1..];
        }
        self.open_line |= !is_blank(bytes);
    }

    pub(crate) fn lines(&self) -> u64 {
        self.lines + u64::from(self.open_line)
    }
}

/// The worker threads of all runs in the process at once: one per core. Concurrent conversions
/// (queries of several users, a view beside an export) share them instead of each starting a
/// thread per core, which would multiply the threads, and each one's memory in flight, by the
/// number of runs.
static WORKERS: LazyLock<Workers> = LazyLock::new(|| Workers {
    free: Mutex::new(std::thread::available_parallelism().map_or(2, usize::from)),
    freed: Condvar::new(),
});

struct Workers {
    free: Mutex<usize>,
    freed: Condvar,
}

/// Worker threads taken from [`WORKERS`], given back when dropped.
struct Taken(usize);

impl Workers {
    /// Up to `wanted` of the free workers, waiting until at least one is free.
    fn take(&self, wanted: usize) -> Taken {
        let mut free = self.free.lock().expect("no thread panics holding it");
        while *free == 0 {
            free = self.freed.wait(free).expect("no thread panics holding it");
        }
        let taken = wanted.clamp(1, *free);
        *free -= taken;
        Taken(taken)
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        *WORKERS.free.lock().expect("no thread panics holding it") += self.0;
        WORKERS.freed.notify_all();
    }
}

/// Runs `work` on each of `0..jobs` in worker threads taken from the process-wide pool (at least
/// one, waited for), so that it shares the cores with concurrent runs; returns the results in
/// job order. A panic of `work` is the caller's.
pub(crate) fn run_jobs<T: Send>(jobs: usize, work: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if jobs == 0 {
        return Vec::new();
    }
    let taken = WORKERS.take(jobs);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = || {
        let mut done = Vec::new();
        loop {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n >= jobs {
                return done;
            }
            done.push((n, work(n)));
        }
    };
    let mut done: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..taken.0).map(|_| scope.spawn(worker)).collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    done.sort_by_key(|(n, _)| *n);
    done.into_iter().map(|(_, t)| t).collect()
}

/// Runs `work` on chunks of the `sources`, read one after the other, in worker threads (each with
/// its own state from `init`) and `emit`s the results in order, with at most two chunks per
/// worker in flight (memory stays bounded). Chunk buffers go back to the reader for reuse: fresh
/// memory costs the kernel a page fault and a page clearing per 4 KiB. The workers are those
/// free in the process-wide pool (at least one, waited for), so concurrent runs share the cores.
///
/// A line of more than `max_line` bytes comes cut to its first `max_line + 1` bytes, or whole
/// if one read of about a chunk held it (see [`next_chunk`]): the work tells it too long by its
/// length, and a chunk holds at most the bound and a chunk of it, however long it is.
///
/// `emit` may end the run early ([`ControlFlow::Break`]): nothing more is read, and the results
/// of the chunks after that one are dropped.
pub(crate) fn run_chunks<R: Read, S, T: Send, E: From<SourceError> + Send>(
    sources: impl IntoIterator<Item = Result<impl Into<Source<R>>, E>>,
    chunk_size: usize,
    max_line: usize,
    init: impl Fn() -> Result<S, E> + Sync,
    work: impl Fn(&mut S, &mut Chunk) -> Result<T, E> + Sync,
    mut emit: impl FnMut(T) -> Result<ControlFlow<()>, E>,
) -> Result<(), E> {
    let taken = WORKERS.take(usize::MAX);
    let workers = taken.0;
    let in_flight = 2 * workers;
    let (job_tx, job_rx) = sync_channel::<(usize, Chunk)>(in_flight);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = channel();
    let (free_tx, free_rx) = channel::<Vec<u8>>();
    let ledger = Arc::new(Ledger {
        state: Mutex::new(LedgerState::new()),
        counted: Condvar::new(),
    });
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
                    let Ok((index, mut chunk)) = job else { break };
                    let result = match &mut state {
                        Some(state) => work(state, &mut chunk),
                        None => init().and_then(|s| work(state.insert(s), &mut chunk)),
                    };
                    if result.is_err() {
                        // A failed chunk may leave the state half-way: start afresh.
                        state = None;
                    }
                    chunk.settle();
                    // The reader may have stopped; then the buffer is simply dropped.
                    chunk.len = 0;
                    let _ = free_tx.send(std::mem::take(&mut chunk.buffer));
                    if done_tx.send((index, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop((done_tx, free_tx));

        let mut done = BTreeMap::new();
        let (mut sent, mut emitted) = (0, 0);
        let mut emit_ready = |done: &mut BTreeMap<usize, Result<T, E>>, emitted: &mut usize| {
            while let Some(result) = done.remove(emitted) {
                *emitted += 1;
                if emit(result?)?.is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            let mut state = ledger.state.lock().expect("no worker panicked");
            state.forget_before(*emitted);
            Ok::<_, E>(ControlFlow::Continue(()))
        };
        let mut carry = Vec::new();
        for (source_index, source) in sources.into_iter().enumerate() {
            let Source {
                name,
                reader,
                first_line,
            } = source?.into();
            let name: Arc<str> = name.into();
            let mut reader = Counting { reader, read: 0 };
            let mut starts_source = true;
            loop {
                let buffer = free_rx.try_recv().unwrap_or_default();
                let offset = reader.read - carry.len() as u64;
                let Some((buffer, len)) =
                    next_chunk(&mut reader, buffer, chunk_size, max_line, &mut carry, &name)?
                else {
                    break;
                };
                let chunk = Chunk {
                    buffer,
                    len,
                    source: Arc::clone(&name),
                    starts_source: std::mem::take(&mut starts_source),
                    source_index,
                    offset,
                    source_first_line: first_line,
                    index: sent,
                    ledger: Arc::clone(&ledger),
                    counted: false,
                };
                while sent - emitted >= in_flight {
                    let (index, result) = done_rx.recv().expect("workers outlive their jobs");
                    done.insert(index, result);
                    if emit_ready(&mut done, &mut emitted)?.is_break() {
                        return Ok(());
                    }
                }
                job_tx
                    .send((sent, chunk))
                    .expect("workers outlive the job queue");
                sent += 1;
                while let Ok((index, result)) = done_rx.try_recv() {
                    done.insert(index, result);
                }
                if emit_ready(&mut done, &mut emitted)?.is_break() {
                    return Ok(());
                }
            }
        }
        drop(job_tx);
        while emitted < sent {
            let (index, result) = done_rx.recv().expect("workers outlive their jobs");
            done.insert(index, result);
            if emit_ready(&mut done, &mut emitted)?.is_break() {
                break;
            }
        }
        Ok(())
    })
}

/// A reader that counts the bytes read from it: where each chunk starts.
struct Counting<R> {
    reader: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.reader.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// The next chunk of about `chunk_size` bytes ending at a line end, as the first bytes of
/// `buffer` (an empty or used one; returned with their count); `carry` holds the bytes after it.
/// A line longer than `max_line` that does not end within the bytes read is cut to its first
/// `max_line + 1` bytes and its newline, the rest read past unkept.
///
/// The buffer's whole length stays initialized, so a reused buffer is read into as it is: with
/// `read_to_end`, std clears the room of each read first (a `Read` takes initialized bytes), a
/// second pass over every byte read, 4% of a first query's instructions on Observation.
fn next_chunk(
    reader: &mut impl Read,
    mut buffer: Vec<u8>,
    chunk_size: usize,
    max_line: usize,
    carry: &mut Vec<u8>,
    source: &str,
) -> Result<Option<(Vec<u8>, usize)>, SourceError> {
    let failed = |e| SourceError {
        source_name: source.to_owned(),
        source: e,
    };
    let mut len = carry.len();
    if buffer.len() < len {
        buffer.resize(len, 0);
    }
    buffer[..len].copy_from_slice(carry);
    carry.clear();
    // Where the last line starts (the carry of a line cut short may hold whole lines).
    let mut line_start = memchr::memrchr(b'\n', &buffer[..len]).map_or(0, |i| i + 1);
    let cut = loop {
        if len - line_start > max_line {
            len = line_start + max_line + 1;
            if skip_line(reader, carry).map_err(failed)? {
                // Rare: the room after it is given up (the cut may end at the buffer's end).
                buffer.truncate(len);
                buffer.push(b'\n');
                len += 1;
            }
            break len;
        }
        // A line longer than a chunk (and within the bound): keep reading until it ends.
        if len >= chunk_size && line_start > 0 {
            break line_start;
        }
        let want = chunk_size.saturating_sub(len).max(chunk_size / 4).max(1);
        if buffer.len() < len + want {
            buffer.resize(len + want, 0);
        }
        let n = read_some(reader, &mut buffer[len..len + want]).map_err(failed)?;
        if n == 0 {
            break len;
        }
        // Searching back stops at the last line end: about a line's bytes per read.
        if let Some(i) = memchr::memrchr(b'\n', &buffer[len..len + n]) {
            line_start = len + i + 1;
        }
        len += n;
    };
    if len == 0 {
        return Ok(None);
    }
    carry.extend_from_slice(&buffer[cut..len]);
    Ok(Some((buffer, cut)))
}

/// One read into `buffer`, tried again when a signal interrupted it.
fn read_some(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match reader.read(buffer) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            read => return read,
        }
    }
}

/// Reads past the rest of a line, keeping none of it; the bytes read after its end go to
/// `carry`. Returns whether the line ended (else the source did).
fn skip_line(reader: &mut impl Read, carry: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut buffer = vec![0; 1 << 16];
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(i) = memchr::memchr(b'\n', &buffer[..n]) {
            carry.extend_from_slice(&buffer[i + 1..n]);
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_counter_handles_any_split() {
        let text = b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}";
        for split in 0..text.len() {
            let mut counter = LineCounter::default();
            counter.feed(&text[..split]);
            counter.feed(&text[split..]);
            assert_eq!(counter.lines(), 3, "split at {split}");
        }
        let mut counter = LineCounter::default();
        counter.feed(b"x\n");
        counter.feed(b"");
        assert_eq!(counter.lines(), 1);
        assert_eq!(LineCounter::default().lines(), 0);
    }

    #[test]
    fn blank_lines_are_not_resources() {
        let text = b"\n{\"a\":1}\r\n \t\r\n\n{\"b\":2}\n  ";
        for split in 0..text.len() {
            let mut counter = LineCounter::default();
            counter.feed(&text[..split]);
            counter.feed(&text[split..]);
            assert_eq!(counter.lines(), 2, "split at {split}");
        }
    }

    #[test]
    fn chunks_end_at_line_ends_and_keep_long_lines_whole() {
        let text = format!("a\n{}\nb\nc", "x".repeat(100));
        let (mut reader, mut carry) = (text.as_bytes(), Vec::new());
        let mut texts = Vec::new();
        let next = |reader: &mut &[u8], carry: &mut Vec<u8>| {
            next_chunk(reader, Vec::new(), 8, usize::MAX, carry, "t").unwrap()
        };
        while let Some((buffer, len)) = next(&mut reader, &mut carry) {
            texts.push(String::from_utf8(buffer[..len].to_vec()).unwrap());
        }
        assert_eq!(texts.concat(), text);
        assert!(texts.iter().any(|t| t.len() == 101), "{texts:?}");
        assert!(texts[..texts.len() - 1].iter().all(|t| t.ends_with('\n')));
    }

    /// A reader that gives a few bytes a read (as a copy still being written does), into one
    /// buffer used again and again: each chunk is only the bytes read for it.
    #[test]
    fn short_reads_into_a_used_buffer_give_only_the_bytes_read() {
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(3);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let text = format!("{}\nshort\n{}\nend", "a".repeat(40), "b".repeat(20));
        let (mut reader, mut carry, mut buffer) =
            (Trickle(text.as_bytes()), Vec::new(), Vec::new());
        let mut texts = Vec::new();
        while let Some((used, len)) =
            next_chunk(&mut reader, buffer, 16, usize::MAX, &mut carry, "t").unwrap()
        {
            texts.push(String::from_utf8(used[..len].to_vec()).unwrap());
            buffer = used;
        }
        assert_eq!(texts.concat(), text);
        assert!(texts[..texts.len() - 1].iter().all(|t| t.ends_with('\n')));
    }

    /// Lines beyond the bound are cut to one byte beyond it, or (whole within one read, so
    /// bounded by the chunk size) left for the decoder to tell too long: either way a line, at
    /// its place, that is too long.
    #[test]
    fn lines_beyond_the_bound_stay_too_long_lines_in_bounded_chunks() {
        let text = format!("a\n{}\nb\n{}", "x".repeat(100_000), "y".repeat(1000));
        let want: Vec<&str> = text.split('\n').collect();
        for (chunk_size, max_line) in [(8, 10), (4096, 10), (8, 0), (4096, 2000)] {
            let (mut reader, mut carry) = (text.as_bytes(), Vec::new());
            let mut chunks = Vec::new();
            let mut buffer = Vec::new();
            while let Some((used, len)) =
                next_chunk(&mut reader, buffer, chunk_size, max_line, &mut carry, "t").unwrap()
            {
                // At most a chunk, a read beyond it, a bound and the rest of a skip's read.
                assert!(len <= 2 * chunk_size + max_line + 1 + (1 << 16));
                chunks.push(String::from_utf8(used[..len].to_vec()).unwrap());
                // The buffer read into again, with the bytes of this chunk still in it.
                buffer = used;
            }
            let text = chunks.concat();
            let got: Vec<&str> = text.split('\n').collect();
            assert_eq!(got.len(), want.len(), "{chunk_size} {max_line}");
            for (got, want) in got.iter().zip(&want) {
                match want.len() > max_line {
                    true => assert!(got.len() > max_line && want.starts_with(got)),
                    false => assert_eq!(got, want),
                }
            }
        }
    }

    #[test]
    fn concurrent_runs_share_one_worker_per_core() {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let (busy, most) = (Mutex::new(0usize), Mutex::new(0usize));
        let text = "x\n".repeat(64);
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    let sources = [Ok::<_, SourceError>(("t".to_owned(), text.as_bytes()))];
                    let work = |_: &mut (), _: &mut Chunk| {
                        let now = {
                            let mut busy = busy.lock().unwrap();
                            *busy += 1;
                            *busy
                        };
                        let mut most = most.lock().unwrap();
                        *most = (*most).max(now);
                        drop(most);
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        *busy.lock().unwrap() -= 1;
                        Ok(())
                    };
                    let go_on = |()| Ok(ControlFlow::Continue(()));
                    run_chunks(sources, 8, usize::MAX, || Ok(()), work, go_on).unwrap();
                });
            }
        });
        let most = *most.lock().unwrap();
        // Other tests' runs share the pool too, so this may be fewer, never more.
        assert!(
            (1..=cores).contains(&most),
            "{most} workers at once on {cores} cores"
        );
    }

    #[test]
    fn first_lines_are_known_once_the_chunks_before_are_counted_in_any_order() {
        let mut state = LedgerState::new();
        assert_eq!(state.first_line(0), Some(1));
        state.count(2, 7, None);
        state.count(1, 5, None);
        assert_eq!((state.first_line(1), state.first_line(2)), (None, None));
        state.count(0, 3, Some(1));
        let firsts: Vec<_> = (0..4).map(|i| state.first_line(i)).collect();
        assert_eq!(firsts, [Some(1), Some(4), Some(9), Some(16)]);
        state.forget_before(2);
        assert_eq!((state.first_line(1), state.first_line(2)), (None, Some(9)));
        // A chunk that starts a source starts its numbering again, from the source's first line.
        state.count(4, 2, None);
        state.count(3, 4, Some(1));
        assert_eq!(
            (state.first_line(4), state.first_line(5)),
            (Some(5), Some(7))
        );
        state.count(5, 1, Some(40));
        assert_eq!(state.first_line(6), Some(41));
    }
}
