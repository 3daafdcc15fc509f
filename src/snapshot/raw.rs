//! Raw NDJSON files of a snapshot: copies of the fetched files as they are (read as they grow),
//! and the merge of an incremental export.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, LazyLock, Mutex};

use serde::Deserialize;

use super::convert::check_stopping;
use crate::chunks::LineCounter;
use crate::{Error, Result};

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
}

/// The `id` of one NDJSON line, if it is a JSON object with a string `id`.
fn line_id(line: &[u8]) -> Option<String> {
    serde_json::from_slice::<IdOnly>(line)
        .ok()?
        .id
        .map(Cow::into_owned)
}

/// Calls `f` on every non-blank line of the NDJSON files (gzip or plain), without the newline
/// and trimmed. A line of more than `max_line` bytes is given cut to its first `max_line + 1`
/// bytes, untrimmed: never held whole, it stays a line that the decoder tells too long, at its
/// place.
fn for_each_line(
    paths: &[PathBuf],
    max_line: usize,
    mut f: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<()> {
    let mut line = Vec::with_capacity(1 << 14);
    for path in paths {
        let mut reader = open_raw(path)?;
        while read_line(&mut reader, &mut line, max_line).map_err(|e| Error::io(path, e))? {
            let line = match line.len() > max_line {
                true => &line[..],
                false => line.trim_ascii(),
            };
            if !line.is_empty() {
                f(line).map_err(|e| Error::io(path, e))?;
            }
        }
    }
    Ok(())
}

/// Reads the next line into `line`, without its newline, keeping at most `max + 1` bytes of it.
/// Returns false at the end of `reader`.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>, max: usize) -> std::io::Result<bool> {
    line.clear();
    let mut read = false;
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(read);
        }
        read = true;
        let (end, found) = match memchr::memchr(b'\n', buffer) {
            Some(i) => (i, true),
            None => (buffer.len(), false),
        };
        let keep = end.min(max.saturating_add(1).saturating_sub(line.len()));
        line.extend_from_slice(&buffer[..keep]);
        reader.consume(end + usize::from(found));
        if found {
            return Ok(true);
        }
    }
}

/// The ids of the resources in the NDJSON files (lines of at most `max_line` bytes).
pub fn resource_ids(paths: &[PathBuf], max_line: usize) -> Result<HashSet<String>> {
    let mut ids = HashSet::new();
    for_each_line(paths, max_line, |line| {
        ids.extend(line_id(line));
        Ok(())
    })?;
    Ok(ids)
}

/// Whether the NDJSON file at `path` (gzip or plain) holds a resource whose id is in `ids`; it
/// stops reading at the first.
pub(super) fn holds_id(path: &Path, ids: &HashSet<String>, max_line: usize) -> Result<bool> {
    let mut found = false;
    let scanned = for_each_line(
        std::slice::from_ref(&path.to_path_buf()),
        max_line,
        |line| {
            check_stopping().map_err(|_| std::io::Error::from(std::io::ErrorKind::Interrupted))?;
            found = line_id(line).is_some_and(|id| ids.contains(&id));
            match found {
                true => Err(std::io::Error::other("found")),
                false => Ok(()),
            }
        },
    );
    check_stopping()?;
    match (found, scanned) {
        (true, _) => Ok(true),
        (false, scanned) => scanned.map(|()| false),
    }
}

/// Writes the resources of `inputs` (NDJSON, gzip or plain) as one plain NDJSON file `out`
/// (compressing anew would cost more than the refresh it serves), leaving out those whose id is
/// in `drop` (lines without a readable id are kept, so the decoder
/// reports them). A line of more than `max_line` bytes is copied cut to `max_line + 1` bytes, so
/// that the decoder still reports it as too long (and it is never held whole). Returns the number
/// of resources and the file size; the file is not synced (a snapshot's commit syncs it).
pub fn write_raw(
    inputs: &[PathBuf],
    drop: Option<&HashSet<String>>,
    max_line: usize,
    out: &Path,
) -> Result<(u64, u64)> {
    let file = create_private(out).map_err(|e| Error::io(out, e))?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 16, file);
    let mut resources = 0u64;
    let copied = for_each_line(inputs, max_line, |line| {
        if check_stopping().is_err() {
            return Err(std::io::Error::from(std::io::ErrorKind::Interrupted));
        }
        if drop.is_some_and(|d| line_id(line).is_some_and(|id| d.contains(&id))) {
            return Ok(());
        }
        resources += 1;
        writer.write_all(line)?;
        writer.write_all(b"\n")
    });
    check_stopping()?;
    copied?;
    let file = writer
        .into_inner()
        .map_err(|e| Error::io(out, e.into_error()))?;
    let bytes = file.metadata().map_err(|e| Error::io(out, e))?.len();
    Ok((resources, bytes))
}

/// Creates `path` for writing, readable and writable by its owner only (patient data: the
/// folders are too, see [`crate::private_dir`]); it must not exist.
fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// The first bytes of a gzip stream.
pub(super) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Whether the file at `path` is gzip (by its magic bytes).
pub(super) fn is_gzip(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 2];
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let n = file.read(&mut magic).map_err(|e| Error::io(path, e))?;
    Ok(n == 2 && magic == GZIP_MAGIC)
}

/// Opens a raw NDJSON file, inflating it when it is gzip (by its magic bytes). A file still
/// being copied ([`RawCopy`]) is read as the copy grows, to its end.
pub(crate) fn open_raw(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let growing = COPYING
        .lock()
        .expect("no thread panics holding it")
        .get(path)
        .cloned();
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file: Box<dyn Read + Send> = match growing {
        Some(grown) => Box::new(Trailing {
            file,
            read: 0,
            grown,
        }),
        None => Box::new(file),
    };
    let mut reader = BufReader::with_capacity(1 << 16, file);
    // A first read holds the whole file or a copy's step: at least the magic's two bytes.
    let gzip = reader.fill_buf().map_err(|e| Error::io(path, e))?;
    Ok(match gzip.starts_with(&GZIP_MAGIC) {
        true => Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::bufread::MultiGzDecoder::new(reader),
        )),
        false => Box::new(reader),
    })
}

/// The raw files being copied, by path: what [`open_raw`] follows.
static COPYING: LazyLock<Mutex<HashMap<PathBuf, Arc<Grown>>>> = LazyLock::new(Default::default);

/// How far the copy of a raw file has come.
#[derive(Default)]
struct Grown {
    state: Mutex<Growth>,
    told: Condvar,
}

#[derive(Default)]
enum Growth {
    /// Nothing is copied yet.
    #[default]
    Started,
    /// This many bytes are in the copy.
    Bytes(u64),
    /// The copy is whole.
    Whole,
    /// The copy failed: why.
    Failed(String),
}

impl Grown {
    fn tell(&self, growth: Growth) {
        *self.state.lock().expect("no thread panics holding it") = growth;
        self.told.notify_all();
    }

    /// Waits until the copy holds more than `read` bytes or ended: how many it holds (`None`
    /// once whole).
    fn beyond(&self, read: u64) -> std::io::Result<Option<u64>> {
        let mut state = self.state.lock().expect("no thread panics holding it");
        loop {
            match &*state {
                Growth::Bytes(bytes) if *bytes > read => return Ok(Some(*bytes)),
                Growth::Whole => return Ok(None),
                Growth::Failed(why) => return Err(std::io::Error::other(why.clone())),
                _ => state = self.told.wait(state).expect("no thread panics holding it"),
            }
        }
    }
}

/// A raw file being copied: created, and followed by [`open_raw`] until [`Self::run`] ends.
pub(super) struct RawCopy {
    out: PathBuf,
    grown: Arc<Grown>,
}

impl RawCopy {
    /// Creates `out` (readable and writable by its owner only) for a copy that [`open_raw`]
    /// follows from now on. It holds no open file: a folder of thousands of files may start
    /// all its copies at once.
    pub(super) fn start(out: &Path) -> Result<Self> {
        create_private(out).map_err(|e| Error::io(out, e))?;
        let grown = Arc::new(Grown::default());
        let mut copying = COPYING.lock().expect("no thread panics holding it");
        copying.insert(out.to_owned(), Arc::clone(&grown));
        Ok(Self {
            out: out.to_owned(),
            grown,
        })
    }

    /// Copies the NDJSON file `input` (gzip or plain) as it is, byte for byte, checking `stop`
    /// between steps; returns the size of the copy.
    pub(super) fn run(self, input: &Path, stop: impl Fn() -> Result<()>) -> Result<u64> {
        /// What is copied between two checks for a stop, and ahead of the readers.
        const STEP: u64 = 8 << 20;
        let out = &self.out;
        let copy = || {
            let mut reader = File::open(input).map_err(|e| Error::io(input, e))?;
            let file = std::fs::OpenOptions::new().write(true).open(out);
            let mut file = file.map_err(|e| Error::io(out, e))?;
            let mut bytes = 0u64;
            loop {
                stop()?;
                // File to file, `io::copy` copies in the kernel (copy_file_range): the bytes
                // never pass through this process.
                match std::io::copy(&mut (&mut reader).take(STEP), &mut file) {
                    Ok(0) => return Ok(bytes),
                    Ok(n) => bytes += n,
                    Err(e) => return Err(Error::io(input, e)),
                }
                self.grown.tell(Growth::Bytes(bytes));
            }
        };
        let copied = copy();
        self.grown.tell(match &copied {
            Ok(_) => Growth::Whole,
            Err(e) => Growth::Failed(e.to_string()),
        });
        copied
    }
}

impl Drop for RawCopy {
    /// The copy ends: readers opened from now on read the file as it is. A copy that failed,
    /// never ran or panicked ends its readers with an error, and removes the file, so that no
    /// reader takes what it holds for the whole.
    fn drop(&mut self) {
        let state = self
            .grown
            .state
            .lock()
            .expect("no thread panics holding it");
        let whole = matches!(*state, Growth::Whole);
        let failed = matches!(*state, Growth::Failed(_));
        drop(state);
        if !whole {
            let _ = std::fs::remove_file(&self.out);
        }
        if !whole && !failed {
            let why = format!("{} was not copied whole", self.out.display());
            self.grown.tell(Growth::Failed(why));
        }
        let mut copying = COPYING.lock().expect("no thread panics holding it");
        copying.remove(&self.out);
    }
}

/// Copies the NDJSON file `input` (gzip or plain) into `out` as it is, byte for byte: the
/// snapshot keeps its own copy (the input may change once read, a user's folder as much as a
/// download) without compressing anew what the source compressed or not. The copy is readable by
/// its owner only, not synced (a snapshot's commit syncs it). Returns the number of resources
/// (lines that are not blank, counted in the copy, inflated when gzip) and the size of the copy.
pub fn copy_raw(input: &Path, out: &Path) -> Result<(u64, u64)> {
    let copy = RawCopy::start(out)?;
    std::thread::scope(|scope| {
        // The count follows the copy, on another core.
        let counting =
            scope.spawn(|| count_resources(open_raw(out)?).map_err(|e| Error::io(input, e)));
        let copied = copy.run(input, check_stopping);
        let counted = counting
            .join()
            .unwrap_or_else(|_| Err(Error::snapshot("counting the resources panicked")));
        // A failed copy fails its count too: the copy's error says why.
        let copied = copied?;
        Ok((counted?, copied))
    })
}

/// The resources (lines that are not blank) of NDJSON.
fn count_resources(mut reader: impl BufRead) -> std::io::Result<u64> {
    let mut lines = LineCounter::default();
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(lines.lines());
        }
        lines.feed(buffer);
        let n = buffer.len();
        reader.consume(n);
    }
}

/// A raw file being copied, read as far as its copy has come ([`Grown`]), to its end once whole.
struct Trailing {
    file: File,
    read: u64,
    grown: Arc<Grown>,
}

impl Read for Trailing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = match self.grown.beyond(self.read)? {
            Some(copied) => {
                let want = buf.len().min((copied - self.read) as usize);
                match self.file.read(&mut buf[..want])? {
                    0 => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the copy is shorter than its writer said",
                        ));
                    }
                    n => n,
                }
            }
            None => self.file.read(buf)?,
        };
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_raw_drops_ids_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.ndjson");
        std::fs::write(&input, "{\"id\":\"a\",\"x\":1}\n\r\n{\"id\":\"b\"}\r\n{\"nested\":{\"id\":\"c\"},\"id\":\"d\"}").unwrap();
        let out = dir.path().join("out.ndjson");
        let drop: HashSet<String> = ["b".to_owned()].into();
        let max = usize::MAX;
        let (n, bytes) = write_raw(std::slice::from_ref(&input), Some(&drop), max, &out).unwrap();
        assert_eq!(n, 2);
        assert_eq!(bytes, std::fs::metadata(&out).unwrap().len());
        let ids = resource_ids(&[out], max).unwrap();
        assert_eq!(ids, ["a".to_owned(), "d".to_owned()].into());
    }

    #[test]
    fn a_copy_is_read_as_it_grows_and_its_failure_ends_its_readers() {
        let dir = tempfile::tempdir().unwrap();
        // Over three of the copy's steps (8 MiB).
        let line = format!("{{\"id\":\"{}\"}}\n", "x".repeat(1000));
        let text = line.repeat(20_000);
        let input = dir.path().join("in.ndjson");
        std::fs::write(&input, &text).unwrap();
        let out = dir.path().join("copy");
        let copy = RawCopy::start(&out).unwrap();
        // Readers that open the file before its copy runs, or while it runs, read it whole.
        let read = |out: &Path| {
            let mut read = String::new();
            open_raw(out)?
                .read_to_string(&mut read)
                .map_err(|e| Error::io(out, e))?;
            Ok::<_, Error>(read)
        };
        std::thread::scope(|scope| {
            let readers: Vec<_> = (0..2).map(|_| scope.spawn(|| read(&out))).collect();
            let copied = copy.run(&input, || Ok(())).unwrap();
            assert_eq!(copied, text.len() as u64);
            for reader in readers {
                assert!(reader.join().unwrap().unwrap() == text);
            }
        });
        // Once the copy ended, the file reads as it is.
        assert!(read(&out).unwrap() == text);

        // A copy that fails, or never runs, ends its readers with an error.
        let missing = dir.path().join("missing.ndjson");
        for (name, run) in [("failed", true), ("dropped", false)] {
            let out = dir.path().join(name);
            let copy = RawCopy::start(&out).unwrap();
            std::thread::scope(|scope| {
                let reader = scope.spawn(|| read(&out));
                match run {
                    true => assert!(copy.run(&missing, || Ok(())).is_err()),
                    false => drop(copy),
                }
                // Opened before the copy ended, or after, when no file is left.
                assert!(reader.join().unwrap().is_err());
                assert!(!out.exists());
            });
        }
    }

    #[test]
    fn copies_are_byte_for_byte_owner_only_and_count_resources() {
        let dir = tempfile::tempdir().unwrap();
        let small = "{\"id\":\"a\"}\n\r\n{\"id\":\"b\"}\n \n{\"id\":\"c\"}".to_owned();
        // Over two of the copy's steps (8 MiB): the count trails the copy across them.
        let line = format!("{{\"id\":\"{}\"}}\n", "x".repeat(1000));
        let large = format!("{}\n  \n", line.repeat(9_000)).repeat(2);
        assert!(large.len() > 16 << 20);
        for (text, resources) in [(small, 3), (large, 18_000)] {
            let plain = dir.path().join("in.ndjson");
            std::fs::write(&plain, &text).unwrap();
            let gzip = dir.path().join("in.ndjson.gz");
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(text.as_bytes()).unwrap();
            std::fs::write(&gzip, gz.finish().unwrap()).unwrap();
            for input in [plain, gzip] {
                let out = dir.path().join("copy");
                let copy = copy_raw(&input, &out).unwrap();
                let copied = std::fs::read(&out).unwrap();
                assert_eq!(copied, std::fs::read(&input).unwrap());
                assert_eq!(copy, (resources, copied.len() as u64));
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::metadata(&out).unwrap().permissions().mode();
                    assert_eq!(mode & 0o777, 0o600);
                }
                std::fs::remove_file(&out).unwrap();
            }
        }
    }

    #[test]
    fn long_lines_are_copied_cut_to_one_byte_beyond_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.ndjson");
        let long = format!("{{\"id\":\"{}\"}}", "x".repeat(100_000));
        std::fs::write(
            &input,
            format!("{{\"id\":\"a\"}}\n{long}\n{{\"id\":\"b\"}}"),
        )
        .unwrap();
        let out = dir.path().join("out.ndjson");
        let (n, _) = write_raw(std::slice::from_ref(&input), None, 1000, &out).unwrap();
        assert_eq!(n, 3);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut open_raw(&out).unwrap(), &mut text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "{\"id\":\"a\"}");
        assert_eq!(lines[1], &long[..1001]);
        assert_eq!(lines[2], "{\"id\":\"b\"}");
        let ids = resource_ids(&[out], 1000).unwrap();
        assert_eq!(ids, ["a".to_owned(), "b".to_owned()].into());
    }
}
