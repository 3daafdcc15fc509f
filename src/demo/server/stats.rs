//! [`DemoStats`]: what a demo server has been asked, for tests to assert on.

use axum::extract::State;
use axum::response::Response;

use super::{KickoffLevel, Shared};

/// Counts every request in [`DemoStats::requests`].
pub(super) async fn count_request(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    state.stats().requests += 1;
    next.run(request).await
}

/// One kick-off request as the server saw it.
#[derive(Debug, Clone)]
pub struct KickoffRecord {
    /// The export level.
    pub level: KickoffLevel,
    /// `GET` or `POST`.
    pub method: String,
    /// `_type` values (split at commas), empty when not given.
    pub types: Vec<String>,
    /// Every parameter as (name, value) text, from the query or the `Parameters` body.
    pub params: Vec<(String, String)>,
    /// The HTTP status answered.
    pub status: u16,
}

/// What the server has been asked so far.
#[derive(Debug, Clone, Default)]
pub struct DemoStats {
    /// Every kick-off, accepted or not.
    pub kickoffs: Vec<KickoffRecord>,
    /// Status polls (any answer).
    pub status_polls: usize,
    /// Requests for manifest pages after the first (any answer).
    pub manifest_pages: usize,
    /// Output file downloads started (any answer).
    pub downloads: usize,
    /// Downloads served gzip-compressed (the client sent `Accept-Encoding: gzip`).
    pub gzip_downloads: usize,
    /// DELETE requests on status URLs.
    pub deletes: usize,
    /// Token requests (any answer).
    pub token_requests: usize,
    /// Access tokens issued.
    pub tokens_issued: usize,
    /// Requests refused for a missing, unknown or expired bearer token.
    pub unauthorized: usize,
    /// Requests that came through [`Faults::foreign_origin`](super::Faults::foreign_origin), in order.
    pub foreign_requests: Vec<ForeignRequest>,
    /// Every request, of any kind and answer.
    pub requests: usize,
    /// File downloads started while their job was still running (the files of partial
    /// manifests, with `allowPartialManifests`).
    pub downloads_while_running: usize,
}

/// A request that came through [`Faults::foreign_origin`](super::Faults::foreign_origin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignRequest {
    /// `GET`, `DELETE`.
    pub method: String,
    /// The URL path, e.g. `/files/{job}/0.ndjson`.
    pub path: String,
    /// Whether it carried an `Authorization` header.
    pub authorization: bool,
}
