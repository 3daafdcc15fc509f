//! Streaming download of one manifest file into a folder: temporary name, `Range` resume, gzip
//! inflated here (so that its expansion is bounded), resource count, bounds on the bytes of a
//! file and of an export, rename when complete.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use reqwest::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_RANGE, RANGE};
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use url::Url;

use super::origins::TokenOrigins;
use super::{ClientOptions, OutputFile};
use crate::chunks::LineCounter;
use crate::http::{Retries, TokenSource, redact_url, transport_error, transport_retryable};
use crate::warning::{Warning, WarningKind};
use crate::{Error, Result};

/// What a finished download left in the folder.
#[derive(Debug)]
pub(crate) struct Downloaded {
    pub(crate) path: PathBuf,
    pub(crate) lines: u64,
    pub(crate) bytes: u64,
}

/// Everything one download needs from the client.
pub(crate) struct Fetcher<'a> {
    /// A client that does not inflate gzip itself ([`ClientOptions::http_client`]).
    pub(crate) http: &'a reqwest::Client,
    /// Retries and the bounds on files.
    pub(crate) options: &'a ClientOptions,
    /// The token source when the manifest says `requiresAccessToken`.
    pub(crate) auth: Option<&'a dyn TokenSource>,
    /// Which file URLs may get the token.
    pub(crate) origins: &'a TokenOrigins,
    /// Called with the number of new bytes as they arrive.
    pub(crate) on_bytes: &'a (dyn Fn(u64) + Sync),
    /// The bytes the export's downloads have kept so far, against
    /// [`ClientOptions::with_max_export_bytes`].
    pub(crate) export_bytes: &'a AtomicU64,
}

impl Fetcher<'_> {
    /// Counts `n` more bytes kept by the export: an error past its bound.
    pub(crate) fn keep(&self, n: u64, url: &Url) -> Result<()> {
        let max = self.options.max_export_bytes;
        if self.export_bytes.fetch_add(n, Ordering::Relaxed) + n > max {
            return Err(too_large(url, "the export is", max, "max_export_bytes"));
        }
        (self.on_bytes)(n);
        Ok(())
    }
}

/// The error of a download past one of its bounds, naming the setting.
fn too_large(url: &Url, what: &str, max: u64, setting: &str) -> Error {
    Error::Protocol {
        url: redact_url(url),
        message: format!(
            "{what} larger than {} (limits.{setting}); the download was stopped",
            crate::size::display(max)
        ),
        source: None,
    }
}

/// `done`, the download of `file`, when its lines are the manifest's advisory `count` (or it
/// gives none); else it is downloaded once more, then taken with a warning, or refused with
/// `strict` counts.
pub(crate) async fn check_count(
    fetcher: &Fetcher<'_>,
    file: &OutputFile,
    count: Option<u64>,
    strict: bool,
    done: Downloaded,
) -> Result<(Downloaded, Option<Warning>)> {
    let Some(count) = count.filter(|count| *count != done.lines) else {
        return Ok((done, None));
    };
    let url = redact_url(&file.url);
    tracing::warn!(
        "{url}: {} lines, the manifest says count = {count}; downloading it again",
        done.lines
    );
    remove_quietly(&done.path).await;
    let done = download(fetcher, &file.url, &done.path).await?;
    if done.lines == count {
        return Ok((done, None));
    }
    if strict {
        remove_quietly(&done.path).await;
        return Err(Error::Protocol {
            url,
            message: format!(
                "downloaded twice with {} lines, the manifest says count = {count} (strict counts)",
                done.lines
            ),
            source: None,
        });
    }
    let message = format!(
        "{url}: downloaded twice with {} lines, the manifest says count = {count}",
        done.lines
    );
    let warning =
        Warning::new(WarningKind::CountMismatch, message).with_resource_type(&file.resource_type);
    Ok((done, Some(warning)))
}

/// A bearer token given rather than got: a cluster's executor has no key to get one, and
/// fetches an export's files with the short-lived token its coordinator hands each task. A
/// refused one stays refused.
#[cfg(feature = "cluster")]
struct GivenToken(crate::redacted::Redacted<std::sync::Arc<str>>);

#[cfg(feature = "cluster")]
#[async_trait::async_trait]
impl TokenSource for GivenToken {
    async fn bearer(&self) -> Result<crate::redacted::Redacted<std::sync::Arc<str>>> {
        Ok(crate::redacted::Redacted(std::sync::Arc::clone(&self.0)))
    }

    async fn refused(&self, _rejected: &crate::redacted::Redacted<std::sync::Arc<str>>) {}
}

/// Downloads the export file `file` to `path` as an export does ([`download`], its lines
/// checked against `count` with [`check_count`]), with `token` (its coordinator's, which
/// checked that the file's origin may get it) when the file needs one: a cluster's executor
/// fetching a file of an export run elsewhere. The token goes to the file's origin only, and a
/// 401 ends the download (a new token comes with the coordinator's next job).
#[cfg(feature = "cluster")]
pub(crate) async fn download_given(
    file: &OutputFile,
    token: Option<std::sync::Arc<str>>,
    (count, strict): (Option<u64>, bool),
    path: &Path,
) -> Result<(Downloaded, Option<Warning>)> {
    let options = ClientOptions::default();
    let (_, http) = options.http_clients()?;
    let origins = TokenOrigins::try_new(&file.url, &[])?;
    let token = token.map(|t| GivenToken(crate::redacted::Redacted(t)));
    let fetcher = Fetcher {
        http: &http,
        options: &options,
        auth: token.as_ref().map(|t| t as &dyn TokenSource),
        origins: &origins,
        on_bytes: &|_| {},
        export_bytes: &AtomicU64::new(0),
    };
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| Error::io(dir, e))?;
    }
    let done = download(&fetcher, &file.url, path).await?;
    check_count(&fetcher, file, count, strict, done).await
}

/// Counts the resources and bytes of a file (a finished one that a resumed export reports, or a
/// part that a download resumes).
pub(crate) async fn count_file(path: &Path) -> Result<(LineCounter, u64)> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut counter, mut bytes) = (LineCounter::default(), 0u64);
    loop {
        let n = file.read(&mut buf).await.map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok((counter, bytes));
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
    let mut retries = Retries::new(&fetcher.options.retry);
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
            // What was kept is the start of a body past a bound: nothing to resume.
            Err(Fetch::Refused(error)) => {
                remove_quietly(&part).await;
                return Err(error);
            }
            Err(Fetch::Broken(error)) => {
                let wait = fetcher.options.retry.backoff(retries.attempt());
                if !retries.next(wait, false, &error) {
                    return Err(error);
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// How one attempt failed: `Broken` streams are resumed, `Fatal` errors end the download, and
/// `Refused` bodies (past a bound) end it and remove the part.
enum Fetch {
    Broken(Error),
    Fatal(Error),
    Refused(Error),
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
            &fetcher.options.retry,
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
                    r.header(ACCEPT_ENCODING, "gzip")
                })
            },
        )
        .await
        .map_err(Fetch::Fatal)?;
    let io = |e| Fetch::Fatal(Error::io(part, e));
    let resumed = resume_from > 0
        && response.status() == StatusCode::PARTIAL_CONTENT
        && content_range_start(response.headers()) == Some(resume_from);
    let mut inflate = match response
        .headers()
        .get(CONTENT_ENCODING)
        .map(|v| v.as_bytes())
    {
        None | Some(b"identity") => None,
        Some(b"gzip" | b"x-gzip") => Some(flate2::write::MultiGzDecoder::new(Vec::new())),
        Some(other) => {
            return Err(Fetch::Fatal(Error::Protocol {
                url: redact_url(url),
                message: format!(
                    "Content-Encoding {:?} was not asked for (gzip or none)",
                    String::from_utf8_lossy(other)
                ),
                source: None,
            }));
        }
    };
    let (counter, bytes, file) = if resumed {
        tracing::debug!("{}: resuming at byte {resume_from}", redact_url(url));
        let (counter, bytes) = count_file(part).await.map_err(Fetch::Fatal)?;
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(part)
            .await
            .map_err(io)?;
        (counter, bytes, file)
    } else {
        let file = tokio::fs::File::create(part).await.map_err(io)?;
        (LineCounter::default(), 0, file)
    };
    let mut sink = Sink {
        fetcher,
        url,
        part,
        out: BufWriter::with_capacity(256 * 1024, file),
        counter,
        bytes,
        wire: 0,
        kept: 0,
    };
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                sink.out.flush().await.map_err(io)?;
                let retry = transport_retryable(&error);
                let error = transport_error(&Method::GET, url, error);
                return Err(if retry {
                    Fetch::Broken(error)
                } else {
                    Fetch::Fatal(error)
                });
            }
        };
        sink.wire += chunk.len() as u64;
        match &mut inflate {
            None => sink.write(&chunk).await?,
            // In small steps: one step inflates to at most about 1000 times its input.
            Some(decoder) => {
                for piece in chunk.chunks(INFLATE_STEP) {
                    // Flushed, so that a broken stream leaves all it inflated to resume from.
                    let inflated = decoder.write_all(piece).and_then(|()| decoder.flush());
                    inflated.map_err(|e| sink.corrupt(e))?;
                    sink.write(decoder.get_ref()).await?;
                    decoder.get_mut().clear();
                }
            }
        }
    }
    if let Some(mut decoder) = inflate {
        decoder.try_finish().map_err(|e| sink.corrupt(e))?;
        sink.write(decoder.get_ref()).await?;
    }
    sink.out.flush().await.map_err(io)?;
    sink.out.into_inner().sync_all().await.map_err(io)?;
    Ok((sink.counter.lines(), sink.bytes))
}

/// Compressed bytes inflated at a time.
const INFLATE_STEP: usize = 8 * 1024;

/// Bytes inflated before [`ClientOptions::with_max_gzip_ratio`] is checked.
const RATIO_GRACE: u64 = 1 << 20;

/// Where the bytes of one response go: the part file, checked against the bounds on files.
struct Sink<'a, 'f> {
    fetcher: &'a Fetcher<'f>,
    url: &'a Url,
    part: &'a Path,
    out: BufWriter<tokio::fs::File>,
    counter: LineCounter,
    /// Bytes in the part, with those of earlier attempts.
    bytes: u64,
    /// Bytes of this response as they came over the wire, and as kept (inflated).
    wire: u64,
    kept: u64,
}

impl Sink<'_, '_> {
    async fn write(&mut self, data: &[u8]) -> Result<(), Fetch> {
        if data.is_empty() {
            return Ok(());
        }
        let n = data.len() as u64;
        let options = self.fetcher.options;
        if self.bytes + n > options.max_file_bytes {
            return Err(Fetch::Refused(too_large(
                self.url,
                "the file is",
                options.max_file_bytes,
                "max_file_bytes",
            )));
        }
        self.kept += n;
        if self.kept > RATIO_GRACE && self.kept > self.wire.saturating_mul(options.max_gzip_ratio) {
            return Err(Fetch::Refused(Error::Protocol {
                url: redact_url(self.url),
                message: format!(
                    "gzip body inflated more than {} times its size (limits.max_gzip_ratio); \
                     the download was stopped",
                    options.max_gzip_ratio
                ),
                source: None,
            }));
        }
        self.fetcher.keep(n, self.url).map_err(Fetch::Refused)?;
        self.out
            .write_all(data)
            .await
            .map_err(|e| Fetch::Fatal(Error::io(self.part, e)))?;
        self.counter.feed(data);
        self.bytes += n;
        Ok(())
    }

    fn corrupt(&self, error: std::io::Error) -> Fetch {
        Fetch::Refused(Error::protocol_with(
            redact_url(self.url),
            "the gzip body is corrupt",
            error,
        ))
    }
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
    fn content_range_parsing() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(CONTENT_RANGE, "bytes 100-199/200".parse().unwrap());
        assert_eq!(content_range_start(&headers), Some(100));
        headers.insert(CONTENT_RANGE, "bytes */200".parse().unwrap());
        assert_eq!(content_range_start(&headers), None);
    }
}
