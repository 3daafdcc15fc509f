//! Faults a real server shows, injected on demand ([`Faults`]): throttling and transient errors
//! (counted down by [`take`] through [`ServerState::refuse_if`]), parts of a job on another
//! origin ([`ForeignOrigin`], told apart by `Host` and recorded by [`record_foreign`]), and the
//! path-like type names of a hostile server ([`HOSTILE_TYPES`]). The faults of downloads are
//! applied where files are served ([`super::files`]), those of a job's content by
//! [`super::export`].

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use url::Url;

use super::outcome::Outcome;
use super::{ForeignRequest, ServerState, Shared};

/// Faults the server injects, for tests of the client's resilience. Counters count down per request.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Kick-offs answered 503 with an OperationOutcome of code `transient`.
    pub kickoff_transient: u32,
    /// Kick-offs answered 429 (`Retry-After: 0`).
    pub kickoff_429: u32,
    /// Answer an accepted kick-off this much later, its job made (and the kick-off recorded)
    /// before: a slow server, or a slow way back.
    pub kickoff_delay: Option<Duration>,
    /// Status polls answered 503 with an OperationOutcome of code `transient`.
    pub status_transient: u32,
    /// Status polls answered 429 (`Retry-After: 0`).
    pub status_429: u32,
    /// Cut the connection after this many body bytes, on the first download of each file.
    pub break_download_after: Option<usize>,
    /// Add an OperationOutcome file to the manifest's `error[]` (jobs kicked off while set).
    pub error_file: bool,
    /// Cut the first line of the first output file in half (jobs kicked off while set).
    pub malformed_line: bool,
    /// Ignore `Range` headers (always 200 with the whole file) and advertise no `Accept-Ranges`.
    pub no_range: bool,
    /// File downloads that revoke the bearer token they carry and answer 401, as if it had
    /// expired mid-export.
    pub download_token_revoked: u32,
    /// Wait this long before each body chunk (64 KiB) of a download: a slow network.
    pub download_chunk_delay: Option<Duration>,
    /// Behave like a hostile server: list [`HOSTILE_TYPES`] in the CapabilityStatement, and add
    /// an output file of each to the manifest (jobs kicked off while set), trying to make the
    /// client write outside its folders.
    pub hostile_type_names: bool,
    /// Put parts of jobs kicked off while set on another origin (presigned storage URLs).
    pub foreign_origin: Option<ForeignOrigin>,
    // Real-server faults (issue 14, catalog)
    /// Resource types the CapabilityStatement leaves out, though they are exported.
    pub capability_omits: Vec<String>,
    /// Over-filter: declare no search support (no `searchParam`, no `_typeFilter`), yet accept
    /// `_typeFilter` and answer it with no resource of the filtered type (jobs kicked off while
    /// set), as a real server did.
    pub filters_overfilter: bool,
    /// Refuse kick-offs that ask for one of these types with 400 and an OperationOutcome of
    /// code `not-supported`, as a server does for a type it cannot export.
    pub refused_types: Vec<String>,
    /// Declare search support, yet ignore `_typeFilter` (every resource of the type is exported;
    /// jobs kicked off while set).
    pub filters_ignored: bool,

    // Real-server faults (issue 14, bulk client)
    /// List the first output file in the manifest with a `count` one more than its lines
    /// (jobs kicked off while set).
    pub count_off_by_one: bool,
    /// Fail this type: leave its output files out and add an error file whose OperationOutcome
    /// names it (in `expression` and the diagnostics), as a server does when one type of an
    /// export fails (jobs kicked off while set).
    pub failed_type: Option<String>,
    /// The files of the next job kicked off answer 410 Gone, as expired files do; the fault
    /// then clears itself, so the job after it is served normally.
    pub files_gone_once: bool,
    /// Status polls answer 202 forever, always with the same `X-Progress`: a stuck job.
    pub status_stuck: bool,
    /// The job does not complete while set (202; with partial manifests, every page but the
    /// last is released): a long export whose first files are ready well before its end.
    pub hold_completion: bool,
    /// In-progress status responses carry `Retry-After` as an absolute time in epoch seconds,
    /// this many seconds from now, as some servers send.
    pub retry_after_epoch: Option<u64>,
    /// List every tombstone of `deleted[]` again in one more file (jobs kicked off while set).
    pub duplicate_tombstones: bool,

    // Hostile data: responses and files (issue 12, item 4)
    /// The complete status response is a gzip bomb: its manifest after this many spaces (valid
    /// JSON, all of it), gzip-compressed whatever the client accepts.
    pub bomb_manifest: Option<u64>,
    /// Output file downloads never end: the file's lines, over and over.
    pub endless_files: bool,
    /// Output file downloads are gzip bombs: the file's lines and then this many newlines,
    /// gzip-compressed whatever the client accepts.
    pub bomb_files: Option<u64>,
    /// A blank line (`" \r"`) after every resource of the output files (jobs kicked off while
    /// set); the manifest's `count` counts resources.
    pub blank_lines: bool,
}

/// Another origin that reaches the same demo server, such as `http://localhost:PORT/` for one
/// listening on `127.0.0.1:PORT`: where [`Faults::foreign_origin`] puts a job's status URL,
/// manifest pages or files, as servers that hand out presigned storage URLs do. Requests that come
/// through it are recorded in [`DemoStats::foreign_requests`](super::DemoStats::foreign_requests).
#[derive(Debug, Clone)]
pub struct ForeignOrigin {
    /// The origin (`scheme://host:port/`).
    pub url: Url,
    /// The status URL (`Content-Location`) is there.
    pub status: bool,
    /// The manifest's `next` links are there.
    pub pages: bool,
    /// The output, deleted and error files are there.
    pub files: bool,
    /// Requests there need the bearer token too; else whoever has the URL gets in, and file
    /// URLs there are presigned: they carry a signature ([`presigned`]) without which the
    /// file is refused (403).
    pub requires_auth: bool,
}

/// The query of a presigned file URL of job `job` (a signature, as storage services put in
/// theirs): what a client must send, and must never store.
pub fn presigned(job: &str) -> String {
    use sha2::Digest;
    let signature = sha2::Sha256::digest(format!("demo presigned URL of job {job}"));
    let hex: String = signature[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("X-Amz-Expires=3600&X-Amz-Signature={hex}")
}

/// The path-like resource types of the `hostile_type_names` fault.
pub const HOSTILE_TYPES: [&str; 2] = ["../../../victim", "Patient/../x"];

/// Records the requests that come through [`Faults::foreign_origin`].
pub(super) async fn record_foreign(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if state.foreign_origin(request.headers()).is_some() {
        let record = ForeignRequest {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            authorization: request.headers().contains_key(header::AUTHORIZATION),
        };
        state.stats().foreign_requests.push(record);
    }
    next.run(request).await
}

impl ServerState {
    /// Whether the request came through [`Faults::foreign_origin`]: `Some(requires_auth)` if so.
    /// Told by `Host` (the demo speaks HTTP/1.1 only); as with a presigned URL, whoever has the
    /// URL gets through.
    pub(super) fn foreign_origin(&self, headers: &HeaderMap) -> Option<bool> {
        let faults = self.faults.lock().expect("faults");
        let foreign = faults.foreign_origin.as_ref()?;
        let host = headers.get(header::HOST)?.to_str().ok()?;
        let authority = &foreign.url[url::Position::BeforeHost..url::Position::AfterPort];
        (host == authority).then_some(foreign.requires_auth)
    }

    /// A 429 or a transient 503 while the fault counters `which` picks (429s, transients) last.
    pub(super) fn refuse_if(
        &self,
        which: impl FnOnce(&mut Faults) -> (&mut u32, &mut u32),
    ) -> Result<(), Outcome> {
        let mut faults = self.faults.lock().expect("faults");
        let (throttled, transient) = which(&mut faults);
        if take(throttled) {
            return Err(Outcome::throttled());
        }
        if take(transient) {
            return Err(Outcome::transient());
        }
        Ok(())
    }
}

/// Counts a fault counter down; whether it was still running.
pub(super) fn take(counter: &mut u32) -> bool {
    let running = *counter > 0;
    *counter -= u32::from(running);
    running
}
