//! Raw NDJSON files of a snapshot: copies of the fetched files as they are, and the merge of an
//! incremental export.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::convert::{GZIP_MAGIC, check_stopping, open_raw};
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

/// Copies the NDJSON file `input` (gzip or plain) into `out` as it is, byte for byte: the
/// snapshot keeps its own copy (the input may change once read, a user's folder as much as a
/// download) without compressing anew what the source compressed or not. The copy is readable by
/// its owner only, not synced (a snapshot's commit syncs it). Returns the number of resources
/// (lines that are not blank, counted in the copy, inflated when gzip) and the size of the copy.
pub fn copy_raw(input: &Path, out: &Path) -> Result<(u64, u64)> {
    /// What is copied between two checks for a stop, and ahead of the count.
    const STEP: u64 = 8 << 20;
    let mut reader = File::open(input).map_err(|e| Error::io(input, e))?;
    let mut file = create_private(out).map_err(|e| Error::io(out, e))?;
    let copy = File::open(out).map_err(|e| Error::io(out, e))?;
    let (copied_tx, copied) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        // The count follows the copy a step behind, on another core.
        let counting = scope.spawn(move || count_resources(Trailing::new(copy, copied)));
        let mut bytes = 0u64;
        let copying = loop {
            if let Err(e) = check_stopping() {
                break Err(e);
            }
            // File to file, `io::copy` copies in the kernel (copy_file_range): the bytes never
            // pass through this process.
            match std::io::copy(&mut (&mut reader).take(STEP), &mut file) {
                Ok(0) => break Ok(bytes),
                Ok(n) => bytes += n,
                Err(e) => break Err(Error::io(input, e)),
            }
            let _ = copied_tx.send(bytes);
        };
        // The count ends where the copy ended.
        drop(copied_tx);
        let counted = counting
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("counting the resources panicked")));
        let bytes = copying?;
        Ok((counted.map_err(|e| Error::io(input, e))?, bytes))
    })
}

/// The resources (lines that are not blank) of NDJSON, inflated first when it is gzip.
fn count_resources(plain_or_gzip: impl Read) -> std::io::Result<u64> {
    let mut reader = std::io::BufReader::with_capacity(1 << 16, plain_or_gzip);
    let mut lines = LineCounter::default();
    let mut consume = |reader: &mut dyn BufRead| -> std::io::Result<u64> {
        loop {
            let buffer = reader.fill_buf()?;
            if buffer.is_empty() {
                return Ok(lines.lines());
            }
            lines.feed(buffer);
            let n = buffer.len();
            reader.consume(n);
        }
    };
    match reader.fill_buf()?.starts_with(&GZIP_MAGIC) {
        true => consume(&mut std::io::BufReader::with_capacity(
            1 << 16,
            flate2::read::MultiGzDecoder::new(reader),
        )),
        false => consume(&mut reader),
    }
}

/// A file being written, read up to the length its writer last told (`copied`), waiting for
/// more until the writer is gone: then it ends there.
struct Trailing {
    file: File,
    read: u64,
    copied: u64,
    told: std::sync::mpsc::Receiver<u64>,
}

impl Trailing {
    fn new(file: File, told: std::sync::mpsc::Receiver<u64>) -> Self {
        Self {
            file,
            read: 0,
            copied: 0,
            told,
        }
    }
}

impl Read for Trailing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.read == self.copied {
            match self.told.recv() {
                Ok(copied) => self.copied = copied,
                Err(_) => return Ok(0),
            }
        }
        let want = buf.len().min((self.copied - self.read) as usize);
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the copy is shorter than its writer said",
            ));
        }
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
