//! Output file downloads (`/files/{job}/{file}`): `Range` requests (206, 416), gzip when the
//! client accepts it, and the faults of a download (a broken connection, a slow network, no
//! ranges, a token revoked mid-export).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::export::JobFile;
use super::faults::{presigned, take};
use super::outcome::Outcome;
use super::token::bearer;
use super::{ServerState, Shared};

pub(super) async fn download(
    State(state): State<Shared>,
    Path((job, file)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    state.stats().downloads += 1;
    let result = (|| {
        let revoke = take(&mut state.faults.lock().expect("faults").download_token_revoked);
        if revoke && let Some(token) = bearer(&headers) {
            state.tokens.lock().expect("tokens").revoke(token);
        }
        state.authorize(&headers)?;
        // On a foreign origin without the token, the URL's signature is the credential.
        if state.foreign_origin(&headers) == Some(false) && query != Some(presigned(&job)) {
            return Err(Outcome::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the presigned URL's signature is missing or wrong",
            ));
        }
        let missing = || Outcome::not_found(format!("no file `{file}` in export job `{job}`"));
        let index: usize = file
            .strip_suffix(".ndjson")
            .map(|n| {
                n.trim_start_matches("deleted-")
                    .trim_start_matches("error-")
            })
            .and_then(|n| n.parse().ok())
            .ok_or_else(missing)?;
        let output = state.job(&job)?;
        if output.files_gone {
            return Err(Outcome::new(
                StatusCode::GONE,
                "expired",
                format!("the files of export job `{job}` have expired; export again"),
            ));
        }
        let file = output
            .output
            .get()
            .and_then(|(files, _)| files.get(index))
            .cloned()
            .ok_or_else(missing)?;
        file.fetched
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if !output.complete.load(std::sync::atomic::Ordering::SeqCst) {
            state.stats().downloads_while_running += 1;
        }
        Ok::<_, Outcome>(serve_file(&state, &file, &headers))
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}

/// An output file's body: `Range` (206), gzip when accepted, and the download-break fault.
fn serve_file(state: &ServerState, file: &Arc<JobFile>, headers: &HeaderMap) -> Response {
    let faults = state.faults.lock().expect("faults").clone();
    let len = file.len;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| !faults.no_range)
        .map(|r| parse_range(r, len));
    let (status, start, end) = match range {
        None | Some(RangeRequest::Ignore) => (StatusCode::OK, 0, len),
        Some(RangeRequest::Bytes(start, end)) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(RangeRequest::Unsatisfiable) => {
            let mut response = Outcome::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "invalid",
                format!("the file has {len} bytes"),
            )
            .into_response();
            let value = HeaderValue::from_str(&format!("bytes */{len}")).expect("ASCII");
            response.headers_mut().insert(header::CONTENT_RANGE, value);
            return response;
        }
    };
    // A range is served as is: its offsets count the identity bytes the client already holds.
    let gzip = status == StatusCode::OK && (accepts_gzip(headers) || faults.bomb_files.is_some());
    let endless = faults.endless_files && status == StatusCode::OK;
    let mut chunks: Box<dyn Iterator<Item = Bytes> + Send> = match endless {
        true => {
            let file = Arc::clone(file);
            Box::new(std::iter::repeat(()).flat_map(move |()| file.chunks(0, len)))
        }
        false => Box::new(file.chunks(start, end)),
    };
    if let Some(newlines) = faults.bomb_files {
        chunks = Box::new(chunks.chain(filler(b'\n', newlines)));
    }
    if gzip {
        state.stats().gzip_downloads += 1;
        // A bomb packs its padding as tightly as gzip can (about 1000 to 1).
        let level = match faults.bomb_files {
            Some(_) => flate2::Compression::best(),
            None => flate2::Compression::fast(),
        };
        chunks = Box::new(gzip_chunks(chunks, level));
    }
    // The break needs bytes left to break off; a body that fits whole is served whole.
    let cut = faults
        .break_download_after
        .filter(|n| gzip || (*n as u64) < end - start)
        .filter(|_| file.take_break());
    let body = match (cut, faults.download_chunk_delay) {
        (None, Some(delay)) => {
            use futures::StreamExt;
            let slow = futures::stream::iter(chunks).then(move |chunk| async move {
                tokio::time::sleep(delay).await;
                Ok::<_, std::io::Error>(chunk)
            });
            Body::from_stream(slow)
        }
        (None, None) => {
            Body::from_stream(futures::stream::iter(chunks.map(Ok::<_, std::io::Error>)))
        }
        (Some(limit), _) => {
            use futures::StreamExt;
            let head = futures::stream::iter(truncate(chunks, limit).map(Ok));
            let reset = futures::stream::once(async {
                // Pending once first, so the connection flushes the bytes sent so far before it breaks.
                tokio::task::yield_now().await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "demo fault: download broken",
                ))
            });
            Body::from_stream(head.chain(reset))
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+ndjson"),
    );
    if !faults.no_range {
        out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if gzip {
        out.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        out.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    } else if !endless {
        out.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{len}", end.saturating_sub(1));
        out.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&value).expect("ASCII"),
        );
    }
    response
}

#[derive(Debug, PartialEq)]
enum RangeRequest {
    /// Serve bytes `start..end`.
    Bytes(u64, u64),
    /// A form the server may ignore (several ranges, other units): serve the whole file.
    Ignore,
    Unsatisfiable,
}

/// One `bytes=` range of RFC 9110: `a-b`, `a-` or `-suffix`.
fn parse_range(value: &str, len: u64) -> RangeRequest {
    let Some(spec) = value
        .trim()
        .strip_prefix("bytes=")
        .filter(|s| !s.contains(','))
    else {
        return RangeRequest::Ignore;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return RangeRequest::Ignore;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.parse::<u64>(), last.parse::<u64>()) {
        (Ok(a), Ok(b)) if a <= b => Some((a, (b + 1).min(len))),
        (Ok(a), Err(_)) if last.is_empty() => Some((a, len)),
        (Err(_), Ok(n)) if first.is_empty() && n > 0 => Some((len.saturating_sub(n), len)),
        _ => None,
    };
    match parsed {
        Some((start, end)) if start < len => RangeRequest::Bytes(start, end),
        Some(_) => RangeRequest::Unsatisfiable,
        None => RangeRequest::Ignore,
    }
}

/// Whether the request accepts a gzip body.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| e.trim() == "gzip" || e.trim().starts_with("gzip;") && !e.contains("q=0"))
}

/// `count` bytes `byte`, in chunks of 64 KiB: the padding of a gzip bomb.
pub(super) fn filler(byte: u8, count: u64) -> impl Iterator<Item = Bytes> + Send {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![byte; CHUNK as usize]);
    (0..count.div_ceil(CHUNK)).map(move |i| chunk.slice(..(count - i * CHUNK).min(CHUNK) as usize))
}

/// Gzip-compresses a stream of chunks as it goes, at `level`.
pub(super) fn gzip_chunks(
    chunks: impl Iterator<Item = Bytes>,
    level: flate2::Compression,
) -> impl Iterator<Item = Bytes> {
    use std::io::Write;
    let mut encoder = Some(flate2::write::GzEncoder::new(Vec::new(), level));
    let mut chunks = chunks.fuse();
    std::iter::from_fn(move || {
        loop {
            let active = encoder.as_mut()?;
            match chunks.next() {
                Some(chunk) => {
                    active.write_all(&chunk).expect("writing to memory");
                    if active.get_ref().len() >= 32 * 1024 {
                        return Some(Bytes::from(std::mem::take(active.get_mut())));
                    }
                }
                None => {
                    return Some(Bytes::from(
                        encoder.take()?.finish().expect("writing to memory"),
                    ));
                }
            }
        }
    })
}

/// The first `limit` bytes of a stream of chunks.
fn truncate(chunks: impl Iterator<Item = Bytes>, limit: usize) -> impl Iterator<Item = Bytes> {
    let mut left = limit;
    chunks.map_while(move |chunk| {
        let take = chunk.len().min(left);
        left -= take;
        (take > 0).then(|| chunk.slice(..take))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeRequest::Bytes(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), RangeRequest::Bytes(90, 100));
        assert_eq!(parse_range("bytes=-10", 100), RangeRequest::Bytes(90, 100));
        assert_eq!(
            parse_range("bytes=50-500", 100),
            RangeRequest::Bytes(50, 100)
        );
        assert_eq!(parse_range("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeRequest::Ignore);
        assert_eq!(parse_range("items=0-1", 100), RangeRequest::Ignore);
    }

    #[test]
    fn truncate_cuts_exactly() {
        let chunks = || vec![Bytes::from_static(b"abcd"), Bytes::from_static(b"efgh")].into_iter();
        assert_eq!(truncate(chunks(), 6).collect::<Vec<_>>(), ["abcd", "ef"]);
        assert_eq!(truncate(chunks(), 4).collect::<Vec<_>>(), ["abcd"]);
        assert_eq!(
            truncate(chunks(), 100).collect::<Vec<_>>(),
            ["abcd", "efgh"]
        );
    }

    #[test]
    fn gzip_round_trip() {
        use std::io::Read;
        let chunks = (0..100).map(|i| Bytes::from(format!("line {i}\n").repeat(200)));
        let expected: Vec<u8> = chunks.clone().flatten().collect();
        let compressed: Vec<u8> = gzip_chunks(chunks, flate2::Compression::fast())
            .flatten()
            .collect();
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, expected);
    }
}
