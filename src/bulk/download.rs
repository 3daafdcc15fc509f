//! Streaming download of one manifest file into a folder: temporary name, `Range` resume, line
//! count, rename when complete.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use reqwest::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_RANGE, RANGE};
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use url::Url;

use super::origins::TokenOrigins;
use crate::http::{Retries, RetryPolicy, redact_url, transport_error, transport_retryable};
use crate::smart::SmartAuth;
use crate::{Error, Result};

/// Counts NDJSON lines in a byte stream split anywhere: newlines, plus a last line without one.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LineCounter {
    newlines: u64,
    open_line: bool,
}

impl LineCounter {
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.newlines += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        if let Some(&last) = bytes.last() {
            self.open_line = last != b'\n';
        }
    }

    pub(crate) fn lines(&self) -> u64 {
        self.newlines + u64::from(self.open_line)
    }
}

/// What a finished download left in the folder.
#[derive(Debug)]
pub(crate) struct Downloaded {
    pub(crate) path: PathBuf,
    pub(crate) lines: u64,
    pub(crate) bytes: u64,
}

/// Everything one download needs from the client.
pub(crate) struct Fetcher<'a> {
    pub(crate) http: &'a reqwest::Client,
    pub(crate) retry: &'a RetryPolicy,
    /// The token source when the manifest says `requiresAccessToken`.
    pub(crate) auth: Option<&'a SmartAuth>,
    /// Which file URLs may get the token.
    pub(crate) origins: &'a TokenOrigins,
    /// Called with the number of new bytes as they arrive.
    pub(crate) on_bytes: &'a (dyn Fn(u64) + Sync),
}

/// Counts the lines and bytes of a finished file (a resumed export reports what it already has).
pub(crate) async fn count_file(path: &Path) -> Result<(u64, u64)> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut counter, mut bytes) = (LineCounter::default(), 0u64);
    loop {
        let n = file.read(&mut buf).await.map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok((counter.lines(), bytes));
        }
        counter.feed(&buf[..n]);
        bytes += n as u64;
    }
}

/// Downloads `url` to `path` (via `.{name}.part` beside it), resuming a part left by an earlier
/// attempt or run with `Range` when the server allows. Broken streams are resumed within the
/// retry policy's budget and deadline.
pub(crate) async fn download(fetcher: &Fetcher<'_>, url: &Url, path: &Path) -> Result<Downloaded> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let part = path.with_file_name(format!(".{name}.part"));
    let mut retries = Retries::new(fetcher.retry);
    loop {
        let resume_from = match tokio::fs::metadata(&part).await {
            Ok(meta) => meta.len(),
            Err(_) => 0,
        };
        match fetch_into(fetcher, url, &part, resume_from).await {
            Ok((lines, bytes)) => {
                tokio::fs::rename(&part, path)
                    .await
                    .map_err(|e| Error::io(path, e))?;
                return Ok(Downloaded {
                    path: path.to_path_buf(),
                    lines,
                    bytes,
                });
            }
            // The part was already whole (a run stopped before renaming it): fetch it afresh.
            Err(Fetch::Fatal(Error::Http { status: 416, .. })) if resume_from > 0 => {
                remove_quietly(&part).await
            }
            Err(Fetch::Fatal(error)) => return Err(error),
            Err(Fetch::Broken(error)) => {
                let wait = fetcher.retry.backoff(retries.attempt());
                if !retries.next(wait, false, &error) {
                    return Err(error);
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// How one attempt failed: `Broken` streams are resumed, `Fatal` errors end the download.
enum Fetch {
    Broken(Error),
    Fatal(Error),
}

/// One GET of `url` appended to `part` from byte `resume_from`; returns the part's lines and bytes.
async fn fetch_into(
    fetcher: &Fetcher<'_>,
    url: &Url,
    part: &Path,
    resume_from: u64,
) -> Result<(u64, u64), Fetch> {
    let response = fetcher
        .origins
        .send(
            fetcher.http,
            fetcher.retry,
            fetcher.auth,
            Method::GET,
            url,
            |r| {
                let r = r.header(ACCEPT, "application/fhir+ndjson");
                Ok(if resume_from > 0 {
                    // Byte offsets must count the stored (identity) bytes, not a compressed encoding.
                    r.header(RANGE, format!("bytes={resume_from}-"))
                        .header(ACCEPT_ENCODING, "identity")
                } else {
                    r
                })
            },
        )
        .await
        .map_err(Fetch::Fatal)?;
    let io = |e| Fetch::Fatal(Error::io(part, e));
    let resumed = resume_from > 0
        && response.status() == StatusCode::PARTIAL_CONTENT
        && content_range_start(response.headers()) == Some(resume_from);
    let (mut counter, mut bytes, file) = if resumed {
        tracing::debug!("{}: resuming at byte {resume_from}", redact_url(url));
        let (lines, bytes) = count_file(part).await.map_err(Fetch::Fatal)?;
        let open_line = lines > 0 && last_byte(part).await.map_err(io)? != Some(b'\n');
        let counter = LineCounter {
            newlines: lines - u64::from(open_line),
            open_line,
        };
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(part)
            .await
            .map_err(io)?;
        (counter, bytes, file)
    } else {
        (
            LineCounter::default(),
            0,
            tokio::fs::File::create(part).await.map_err(io)?,
        )
    };
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                out.flush().await.map_err(io)?;
                let retry = transport_retryable(&error);
                let error = transport_error(&Method::GET, url, error);
                return Err(if retry {
                    Fetch::Broken(error)
                } else {
                    Fetch::Fatal(error)
                });
            }
        };
        out.write_all(&chunk).await.map_err(io)?;
        counter.feed(&chunk);
        bytes += chunk.len() as u64;
        (fetcher.on_bytes)(chunk.len() as u64);
    }
    out.flush().await.map_err(io)?;
    out.into_inner().sync_all().await.map_err(io)?;
    Ok((counter.lines(), bytes))
}

/// The first byte position of a `Content-Range: bytes FIRST-LAST/LENGTH` header.
fn content_range_start(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let value = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    value
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

async fn last_byte(path: &Path) -> std::io::Result<Option<u8>> {
    use tokio::io::AsyncSeekExt;
    let mut file = tokio::fs::File::open(path).await?;
    if file.metadata().await?.len() == 0 {
        return Ok(None);
    }
    file.seek(std::io::SeekFrom::End(-1)).await?;
    let mut byte = [0u8];
    file.read_exact(&mut byte).await?;
    Ok(Some(byte[0]))
}

pub(crate) async fn remove_quietly(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}", path.display());
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
    fn content_range_parsing() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(CONTENT_RANGE, "bytes 100-199/200".parse().unwrap());
        assert_eq!(content_range_start(&headers), Some(100));
        headers.insert(CONTENT_RANGE, "bytes */200".parse().unwrap());
        assert_eq!(content_range_start(&headers), None);
    }
}
