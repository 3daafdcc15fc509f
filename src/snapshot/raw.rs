//! Raw NDJSON files of a snapshot: gzip copies, and the merge of an incremental export.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Deserialize;

use super::convert::open_raw;
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

/// Calls `f` on every non-blank line of the NDJSON files (gzip or plain), without the newline.
fn for_each_line(paths: &[PathBuf], mut f: impl FnMut(&[u8]) -> std::io::Result<()>) -> Result<()> {
    let mut line = Vec::with_capacity(1 << 14);
    for path in paths {
        let mut reader = open_raw(path)?;
        loop {
            line.clear();
            if reader
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::io(path, e))?
                == 0
            {
                break;
            }
            let trimmed = line.trim_ascii();
            if !trimmed.is_empty() {
                f(trimmed).map_err(|e| Error::io(path, e))?;
            }
        }
    }
    Ok(())
}

/// The ids of the resources in the NDJSON files.
pub fn resource_ids(paths: &[PathBuf]) -> Result<HashSet<String>> {
    let mut ids = HashSet::new();
    for_each_line(paths, |line| {
        ids.extend(line_id(line));
        Ok(())
    })?;
    Ok(ids)
}

/// Writes the resources of `inputs` (NDJSON, gzip or plain) as one gzip NDJSON file `out`,
/// leaving out those whose id is in `drop` (lines without a readable id are kept, so the decoder
/// reports them). Returns the number of resources and the file size; the file is synced.
pub fn write_raw(
    inputs: &[PathBuf],
    drop: Option<&HashSet<String>>,
    out: &Path,
) -> Result<(u64, u64)> {
    let file = File::create(out).map_err(|e| Error::io(out, e))?;
    let mut gz = GzEncoder::new(
        std::io::BufWriter::with_capacity(1 << 16, file),
        Compression::fast(),
    );
    let mut resources = 0u64;
    let copied = for_each_line(inputs, |line| {
        if super::convert::check_stopping().is_err() {
            return Err(std::io::Error::from(std::io::ErrorKind::Interrupted));
        }
        if drop.is_some_and(|d| line_id(line).is_some_and(|id| d.contains(&id))) {
            return Ok(());
        }
        resources += 1;
        gz.write_all(line)?;
        gz.write_all(b"\n")
    });
    super::convert::check_stopping()?;
    copied?;
    let file = gz
        .finish()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(|e| Error::io(out, e))?;
    file.sync_all().map_err(|e| Error::io(out, e))?;
    let bytes = file.metadata().map_err(|e| Error::io(out, e))?.len();
    Ok((resources, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_raw_drops_ids_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.ndjson");
        std::fs::write(&input, "{\"id\":\"a\",\"x\":1}\n\r\n{\"id\":\"b\"}\r\n{\"nested\":{\"id\":\"c\"},\"id\":\"d\"}").unwrap();
        let out = dir.path().join("out.ndjson.gz");
        let drop: HashSet<String> = ["b".to_owned()].into();
        let (n, bytes) = write_raw(std::slice::from_ref(&input), Some(&drop), &out).unwrap();
        assert_eq!(n, 2);
        assert_eq!(bytes, std::fs::metadata(&out).unwrap().len());
        let ids = resource_ids(&[out]).unwrap();
        assert_eq!(ids, ["a".to_owned(), "d".to_owned()].into());
    }
}
