//! The export client: kick-off, status polling (partial manifests too), downloads that start
//! as files are listed, the job's lifecycle across runs.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use futures::{StreamExt, TryStreamExt};
use reqwest::header::{ACCEPT, CONTENT_LOCATION, CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, watch};
use url::Url;

use super::download::{self, Downloaded, Fetcher, count_file, remove_quietly};
use super::error_file::outcome_warning;
use super::origins::TokenOrigins;
use super::pages::{Collector, FileKind, InOrder, PlannedFile};
use super::{
    ClientOptions, DownloadedFile, ExportOutcome, ExportPhase, ExportProgress, ExportRequest,
    Manifest, deleted_resources,
};
use crate::error::quoted;
use crate::http::{self, TokenSource, redact_url, seconds};
use crate::r4::check_type_name;
use crate::smart::{SmartAuth, SmartConfig, join};
use crate::warning::Warning;
use crate::{Error, Result};

/// The job-state file: written right after kick-off, removed once the job is deleted.
pub(crate) const JOB_FILE: &str = ".fhirflight-job.json";
/// The manifest as the server gave it (pages merged), once every file is in the folder.
const MANIFEST_FILE: &str = "manifest.json";
/// The complete manifest while its files download: a resumed run reads it instead of asking
/// the server again, and it becomes [`MANIFEST_FILE`] when the export is done, so that a
/// folder's `manifest.json` never lists files that are not there.
const PENDING_MANIFEST_FILE: &str = ".fhirflight-manifest.json";
/// What an export that fails and keeps its job says.
const RESUME_HINT: &str = "the export job is kept on the server: run again with the same folder to resume it, or cancel it (fhirflight export --cancel)";

/// A FHIR Bulk Data client for one server.
///
/// Cheap to clone; clones share the HTTP connection pool and the SMART token.
///
/// ```no_run
/// # async fn run() -> fhirflight::Result<()> {
/// use fhirflight::bulk::{BulkClient, ClientOptions, ExportLevel, ExportRequest};
/// use fhirflight::smart::{SigningKey, SmartConfig};
///
/// let key = SigningKey::from_file("jwks.json", None)?;
/// let auth = SmartConfig::new("my-client", key);
/// let base = url::Url::parse("https://fhir.example/r4/").unwrap();
/// // No request yet: discovery and the first token happen on first use.
/// let client = BulkClient::try_new(base, Some(auth), ClientOptions::default()).await?;
/// let request = ExportRequest::new(ExportLevel::System).with_types(["Patient", "Condition"]);
/// let (progress, _watch) = tokio::sync::watch::channel(Default::default());
/// let outcome = client.export_to_dir(&request, "out".as_ref(), &progress).await?;
/// for file in &outcome.files {
///     println!("{} {} lines", file.path.display(), file.lines);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct BulkClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    base: Url,
    http: reqwest::Client,
    /// The client of file downloads: it hands over gzip bodies as they come, so that their
    /// expansion is bounded ([`ClientOptions::with_max_gzip_ratio`]).
    files_http: reqwest::Client,
    auth: Option<SmartAuth>,
    origins: TokenOrigins,
    options: ClientOptions,
    /// By export folder: held by a kick-off from its request until its job state is saved, and
    /// taken by a cancel before it reads that state ([`BulkClient::kick_off_lock`]).
    kick_offs: std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

/// What a restarted process needs to pick the job up again.
#[derive(Serialize, Deserialize)]
struct JobState {
    base_url: String,
    request: ExportRequest,
    status_url: String,
}

/// What becomes of the job when its export fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Kept on the server with its state, so that the next run resumes it: the failure may go
    /// away (a network failure, a server error, a time limit of the client's).
    Keep,
    /// DELETEd and forgotten: the server refused something for good (4xx other than 408 and
    /// 429, a manifest that breaks the protocol), and resuming would only meet it again.
    Delete,
    /// The job or its files are gone (404, 410 Gone: the files expired): DELETE it and start a
    /// new export, once.
    Restart,
}

/// An export's failure and what it means for the job.
#[derive(Debug)]
struct JobError {
    error: Error,
    fate: Fate,
}

impl From<Error> for JobError {
    fn from(error: Error) -> Self {
        let fate = match &error {
            Error::Http {
                status: 408 | 429, ..
            } => Fate::Keep,
            Error::Http {
                status: 400..=499, ..
            }
            | Error::Protocol { .. } => Fate::Delete,
            _ => Fate::Keep,
        };
        Self { error, fate }
    }
}

/// The error of an export that took longer than `deadline` (its job, at `url`, is kept).
fn past_deadline(url: &Url, deadline: std::time::Duration) -> Error {
    Error::Protocol {
        url: redact_url(url),
        message: format!(
            "the export took longer than its deadline of {} (export_deadline); the job is kept \
             on the server",
            seconds(deadline)
        ),
        source: None,
    }
}

impl JobError {
    /// A failure of the job itself or of its files: 404 and 410 mean they are gone.
    fn gone(error: Error) -> Self {
        match error {
            Error::Http {
                status: 404 | 410, ..
            } => Self {
                error,
                fate: Fate::Restart,
            },
            error => error.into(),
        }
    }
}

impl BulkClient {
    /// A client for the FHIR server at `base_url`. With `auth`, SMART Backend Services is set up
    /// (the token endpoint discovered unless given); without, the server is taken to be open.
    ///
    /// Does no network I/O: discovery and the first token happen on the first request, so a
    /// caller that answers from a cache never calls the server, and one that is down fails the
    /// first request (naming the cause), not the setup.
    ///
    /// The access token goes only to the origin of `base_url` and to the options'
    /// [token origins](ClientOptions::with_token_origins); with an https `base_url`, no request
    /// (token endpoint, status, manifest pages, files, redirects) may use plain http.
    pub async fn try_new(
        base_url: Url,
        auth: Option<SmartConfig>,
        options: ClientOptions,
    ) -> Result<Self> {
        let origins = TokenOrigins::try_new(&base_url, &options.token_origins)?;
        let (http, files_http) = options.http_clients()?;
        let auth = match auth {
            Some(config) => {
                // The token comes back from its endpoint: that must not be plain http either.
                if let Some(endpoint) = &config.token_endpoint {
                    origins.token_allowed(endpoint)?;
                }
                let check = origins.clone();
                Some(SmartAuth::try_new_with(
                    &base_url,
                    config,
                    http.clone(),
                    options.retry,
                    options.max_response_bytes,
                    Box::new(move |endpoint| check.token_allowed(endpoint).map(drop)),
                ))
            }
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                base: base_url,
                http,
                files_http,
                auth,
                origins,
                options,
                kick_offs: Default::default(),
            }),
        })
    }

    /// The FHIR base URL.
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// The SMART authorization in use, if any.
    pub fn auth(&self) -> Option<&SmartAuth> {
        self.inner.auth.as_ref()
    }

    /// The server's CapabilityStatement (`GET [base]/metadata`), as JSON.
    pub async fn capability_statement(&self) -> Result<Value> {
        let url = join(&self.inner.base, "metadata")?;
        let response = self
            .send(Method::GET, &url, |r| {
                r.header(ACCEPT, "application/fhir+json")
            })
            .await?;
        self.read_json(&url, response).await
    }

    /// The resource types the server's CapabilityStatement lists (`rest.resource[].type`). A type
    /// that is not a resource type name ([`check_type_name`]) is left out with a warning: it
    /// would become a table and a folder, and one bad entry need not cost the others.
    pub async fn resource_types(&self) -> Result<Vec<String>> {
        let url = join(&self.inner.base, "metadata")?;
        let response = self
            .send(Method::GET, &url, |r| {
                r.header(ACCEPT, "application/fhir+json")
            })
            .await?;
        let statement: Value = self.read_json(&url, response).await?;
        let mut seen = HashSet::new();
        Ok(statement["rest"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|rest| rest["resource"].as_array().into_iter().flatten())
            .filter_map(|resource| resource["type"].as_str())
            .filter(|t| {
                let valid = check_type_name(t).is_ok();
                if !valid {
                    tracing::warn!(
                        url = %redact_url(&url),
                        "the CapabilityStatement lists the type {}, which is not a resource type name: ignored",
                        quoted(t)
                    );
                }
                valid
            })
            .filter(|t| seen.insert(*t))
            .map(str::to_string)
            .collect())
    }

    /// Sends the kick-off request and returns the status URL (`Content-Location`).
    pub async fn kick_off(&self, request: &ExportRequest) -> Result<Url> {
        let url = request.kickoff_url(&self.inner.base)?;
        let post = request.uses_post();
        let body = post.then(|| request.parameters_resource().to_string());
        let method = if post { Method::POST } else { Method::GET };
        let response = self
            .send(method.clone(), &url, |r| {
                let r = r
                    .header(ACCEPT, "application/fhir+json")
                    .header("Prefer", "respond-async");
                match &body {
                    Some(body) => r
                        .header(CONTENT_TYPE, "application/fhir+json")
                        .body(body.clone()),
                    None => r,
                }
            })
            .await?;
        let protocol = |message: String| Error::Protocol {
            url: redact_url(&url),
            message,
            source: None,
        };
        if response.status() != StatusCode::ACCEPTED {
            return Err(protocol(format!(
                "kick-off answered {} instead of 202 Accepted (is this a Bulk Data server?)",
                response.status()
            )));
        }
        let location = response
            .headers()
            .get(CONTENT_LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| protocol("202 Accepted without a Content-Location header".into()))?;
        let status_url = url.join(location).map_err(|e| {
            Error::protocol_with(
                redact_url(&url),
                format!("bad Content-Location {location:?}"),
                e,
            )
        })?;
        tracing::info!(status = %redact_url(&status_url), "export kicked off with {method} {}", redact_url(&url));
        Ok(status_url)
    }

    /// Deletes the job at `status_url` (cancels it, or tells the server its files may go).
    pub async fn delete_job(&self, status_url: &Url) -> Result<()> {
        self.send(Method::DELETE, status_url, |r| {
            r.header(ACCEPT, "application/fhir+json")
        })
        .await?;
        tracing::debug!(status = %redact_url(status_url), "export job deleted");
        Ok(())
    }

    /// Cancels the export whose job `dir` holds (an interrupted [`export_to_dir`](Self::export_to_dir)):
    /// DELETEs the job on the server, then removes the job state, the saved manifest and the
    /// files downloaded so far. Returns whether `dir` held a job; a job the server no longer
    /// knows counts as cancelled.
    ///
    /// ```no_run
    /// # async fn run(client: fhirflight::bulk::BulkClient) -> fhirflight::Result<()> {
    /// if !client.cancel_export("out".as_ref()).await? {
    ///     println!("no export job in out/");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn cancel_export(&self, dir: &Path) -> Result<bool> {
        // A kick-off under way (its export being aborted) saves its job first.
        let _kick_off = self.kick_off_lock(dir).lock_owned().await;
        let state_path = dir.join(JOB_FILE);
        let Some(state) = read_state(&state_path).await? else {
            return Ok(false);
        };
        let status_url = Url::parse(&state.status_url).ok();
        match status_url {
            Some(url) if state.base_url == self.inner.base.as_str() => {
                match self.delete_job(&url).await {
                    Ok(())
                    | Err(Error::Http {
                        status: 404 | 410, ..
                    }) => {}
                    Err(error) => return Err(error),
                }
                tracing::info!(status = %redact_url(&url), "export job cancelled");
            }
            Some(_) => {
                return Err(Error::config(format!(
                    "{}: the export job there belongs to another FHIR server than {}",
                    state_path.display(),
                    redact_url(&self.inner.base)
                )));
            }
            None => tracing::warn!("{}: no valid status URL", state_path.display()),
        }
        remove_quietly(&state_path).await;
        clear_earlier_export(dir).await?;
        Ok(true)
    }

    /// Runs an export into `dir`: kick off (or resume the job whose state `dir` holds), poll,
    /// download every file in parallel as soon as it is listed, DELETE the job.
    ///
    /// `dir` gets `<Type>.<n>.ndjson` per output file (`n` counts that type's files from 0, the
    /// bytes as served), `deleted.<n>.ndjson` and `error.<n>.ndjson` for the other two lists,
    /// and, only once every file is there, the server's `manifest.json` (all pages merged).
    /// While the job lives, `dir` also holds `.fhirflight-job.json` (the job) and, once the
    /// manifest is complete, `.fhirflight-manifest.json`. A new export first removes the NDJSON
    /// files and manifests of an earlier one from `dir`.
    ///
    /// * With [`ExportRequest::with_allow_partial_manifests`], files listed while the export
    ///   still runs are downloaded at once; the export ends with the final manifest.
    /// * Counts are advisory: a data file with another number of lines than its `count` is
    ///   downloaded once more, then taken with a [`WarningKind::CountMismatch`](crate::warning::WarningKind::CountMismatch) warning (or
    ///   refused, with [`ClientOptions::with_strict_counts`]). The OperationOutcomes of the
    ///   `error` files become [`WarningKind::ServerError`](crate::warning::WarningKind::ServerError) warnings; deletions are reported once
    ///   each, however many `deleted` files list them.
    /// * Interrupted (the future dropped: Ctrl-C, a cancelled statement, a client gone) or
    ///   failed for a reason that may go away (network, 5xx, a time limit), the job and its
    ///   state are kept: running again with the same folder resumes it, keeping finished files
    ///   and resuming partial ones with `Range`. Only [`cancel_export`](Self::cancel_export)
    ///   cancels it.
    /// * A failure known to be permanent (4xx other than 408/429, a manifest that is refused)
    ///   DELETEs the job and forgets it. Files gone (404, 410: they expired) DELETE the job and
    ///   start a new export, once.
    /// * The whole export may take [`ClientOptions::with_export_deadline`]; status polls
    ///   without progress are limited by [`ClientOptions::with_max_polls_without_progress`].
    pub async fn export_to_dir(
        &self,
        request: &ExportRequest,
        dir: &Path,
        progress: &watch::Sender<ExportProgress>,
    ) -> Result<ExportOutcome> {
        self.export_to_dir_streaming(request, dir, progress, &mpsc::unbounded_channel().0)
            .await
    }

    /// As [`export_to_dir`](Self::export_to_dir), handing each data file to `ready` as soon as
    /// it and every file listed before it are in the folder (manifest order, the outcome's
    /// `files`), so that a caller converts them while the rest downloads. An export started
    /// over (its files had expired) hands over nothing more and says
    /// [`restarted`](ExportOutcome::restarted): what it handed over before is not its files.
    pub async fn export_to_dir_streaming(
        &self,
        request: &ExportRequest,
        dir: &Path,
        progress: &watch::Sender<ExportProgress>,
        ready: &mpsc::UnboundedSender<DownloadedFile>,
    ) -> Result<ExportOutcome> {
        let deadline = self.inner.options.export_deadline;
        let export = self.export_in(request, dir, progress, ready);
        match tokio::time::timeout(deadline, export).await {
            Ok(outcome) => outcome,
            Err(_) => {
                tracing::warn!("{RESUME_HINT}");
                Err(past_deadline(
                    &request.kickoff_url(&self.inner.base)?,
                    deadline,
                ))
            }
        }
    }

    /// Kicks off `request` and polls it to completion, downloading only its `error` (and
    /// `deleted`) files, into `dir`: the status URL, the manifest (every page), its data files
    /// in manifest order (each checked as an export's are), for other processes to fetch
    /// ([`Self::file_token`]; a cluster's executors), and the warnings of the error files'
    /// OperationOutcomes. The caller deletes the job ([`Self::delete_job`]) once the files are
    /// fetched; a failure deletes it here when it is known to be permanent.
    #[cfg(feature = "cluster")]
    pub(crate) async fn export_manifest(
        &self,
        request: &ExportRequest,
        dir: &Path,
        progress: &watch::Sender<ExportProgress>,
    ) -> Result<(Url, Manifest, Vec<PlannedFile>, Vec<Warning>)> {
        let status_url = self.kick_off(request).await?;
        let (files, mut planned) = mpsc::unbounded_channel();
        let mut collector = Collector::new(dir, &self.inner.origins, progress, files);
        let deadline = self.inner.options.export_deadline;
        let polled = self.poll_job(request, &status_url, &mut collector, progress);
        let failure = match tokio::time::timeout(deadline, polled).await {
            Ok(Ok(())) => None,
            Ok(Err(failure)) => Some(failure),
            Err(_) => Some(JobError {
                error: past_deadline(&status_url, deadline),
                fate: Fate::Keep,
            }),
        };
        let listed = async {
            if let Some(failure) = failure {
                return Err(failure);
            }
            let manifest = collector.finish().expect("a finished job has a manifest");
            let (mut data, (others, rest)) = (Vec::new(), mpsc::unbounded_channel());
            while let Ok(file) = planned.try_recv() {
                match file.kind {
                    FileKind::Output => data.push(file),
                    _ => drop(others.send(file)),
                }
            }
            drop(others);
            let read = self
                .download_files(rest, false, progress, InOrder::new(None))
                .await?;
            let outcome = self.outcome(request, manifest, read).await?;
            Ok((outcome.manifest, data, outcome.warnings))
        };
        match listed.await {
            Ok((manifest, data, warnings)) => Ok((status_url, manifest, data, warnings)),
            Err(failure) => {
                if !matches!(failure.fate, Fate::Keep)
                    && let Err(e) = self.delete_job(&status_url).await
                {
                    tracing::warn!("deleting the export job failed: {e}");
                }
                Err(failure.error)
            }
        }
    }

    /// Whether a file whose lines are not its manifest `count` twice fails the export
    /// ([`ClientOptions::with_strict_counts`]).
    #[cfg(feature = "cluster")]
    pub(crate) fn strict_counts(&self) -> bool {
        self.inner.options.strict_counts
    }

    /// The bearer token another process sends for `file` (of [`Self::export_manifest`]): none
    /// when the manifest says it needs none or its origin may not get it (the server's own, or
    /// one of `token_origins`). The token is this client's, as fresh as its cache keeps it:
    /// short-lived, and never logged.
    #[cfg(feature = "cluster")]
    pub(crate) async fn file_token(&self, file: &PlannedFile) -> Result<Option<Arc<str>>> {
        match &self.inner.auth {
            Some(auth)
                if file.requires_token && self.inner.origins.token_allowed(&file.file.url)? =>
            {
                Ok(Some(Arc::from(auth.token().await?.secret())))
            }
            _ => Ok(None),
        }
    }

    async fn export_in(
        &self,
        request: &ExportRequest,
        dir: &Path,
        progress: &watch::Sender<ExportProgress>,
        ready: &mpsc::UnboundedSender<DownloadedFile>,
    ) -> Result<ExportOutcome> {
        // A new folder is the owner's only: it will hold patient data.
        crate::private_dir::create(dir).map_err(|e| Error::io(dir, e))?;
        let state_path = dir.join(JOB_FILE);
        let mut saved = self.read_job(&state_path, request).await?;
        let mut restarted = false;
        loop {
            let (status_url, resumed) = match saved.take() {
                Some(status_url) => (status_url, true),
                None => (
                    self.start_job(request, dir, &state_path, progress).await?,
                    false,
                ),
            };
            progress.send_modify(|p| {
                p.phase = ExportPhase::Waiting;
                p.resumed = resumed;
            });
            let ready = InOrder::new((!restarted).then(|| ready.clone()));
            let failure = match self
                .run_job(request, dir, &status_url, resumed, progress, ready)
                .await
            {
                Ok(mut outcome) => {
                    self.finish_job(dir, &status_url, progress).await?;
                    outcome.restarted = restarted;
                    return Ok(outcome);
                }
                Err(failure) => failure,
            };
            match failure.fate {
                Fate::Restart if !restarted => {
                    restarted = true;
                    tracing::warn!(
                        "{}: the export job or its files are gone (expired); deleting the job and starting a new export",
                        failure.error
                    );
                    self.forget_job(&status_url, &state_path).await;
                    progress.send_modify(|p| *p = ExportProgress::default());
                }
                Fate::Keep => {
                    tracing::warn!("{RESUME_HINT}");
                    return Err(failure.error);
                }
                Fate::Delete | Fate::Restart => {
                    tracing::warn!(
                        "the export failed for good: its job is deleted on the server, there is nothing to resume"
                    );
                    self.forget_job(&status_url, &state_path).await;
                    return Err(failure.error);
                }
            }
        }
    }

    /// Polls the job at `status_url` and downloads its files as they are listed: from the saved
    /// complete manifest when a resumed run has one, else from the server's status responses.
    async fn run_job(
        &self,
        request: &ExportRequest,
        dir: &Path,
        status_url: &Url,
        resumed: bool,
        progress: &watch::Sender<ExportProgress>,
        ready: InOrder,
    ) -> Result<ExportOutcome, JobError> {
        let (files, planned) = mpsc::unbounded_channel();
        let pending = dir.join(PENDING_MANIFEST_FILE);
        let listing = async move {
            let mut collector = Collector::new(dir, &self.inner.origins, progress, files);
            let saved = match resumed {
                true => read_manifest(&pending).await.filter(|saved| {
                    // Stored without its URLs' signatures: the server hands them out again.
                    let whole = saved.is_whole();
                    if !whole {
                        tracing::info!("the saved manifest's file URLs had secrets, not stored; asking the server for them again");
                    }
                    whole
                }),
                false => None,
            };
            if let Some(manifest) = &saved {
                tracing::info!(
                    "resuming the downloads of the manifest saved in {}",
                    pending.display()
                );
                collector.add(manifest)?;
            } else {
                self.poll_job(request, status_url, &mut collector, progress)
                    .await?;
            }
            let manifest = collector.finish().expect("a finished job has a manifest");
            if saved.is_none() {
                let stored = manifest.without_secrets();
                let json = serde_json::to_vec_pretty(&stored).expect("a manifest serializes");
                write_atomically(&pending, &json).await?;
            }
            Ok::<_, JobError>(manifest)
        };
        let downloads = self.download_files(planned, resumed, progress, ready);
        let (manifest, downloaded) = tokio::try_join!(listing, downloads)?;
        Ok(self.outcome(request, manifest, downloaded).await?)
    }

    /// Polls `status_url` until the export is complete, handing the files of partial manifests
    /// (when asked for) and of the final one, all pages, to `collector`. Waits as `Retry-After`
    /// says (within the policy's bounds), or with growing backoff when it is silent.
    async fn poll_job(
        &self,
        request: &ExportRequest,
        status_url: &Url,
        collector: &mut Collector<'_>,
        progress: &watch::Sender<ExportProgress>,
    ) -> Result<(), JobError> {
        let limit = self.inner.options.max_polls_without_progress;
        let mut known_pages = KnownPages::default();
        let (mut polls, mut idle, mut last_progress) = (0u32, 0u32, None);
        loop {
            let response = self
                .send(Method::GET, status_url, |r| {
                    r.header(ACCEPT, "application/json")
                })
                .await
                .map_err(JobError::gone)?;
            polls += 1;
            let status = response.status();
            if status != StatusCode::OK && status != StatusCode::ACCEPTED {
                return Err(Error::Protocol {
                    url: redact_url(status_url),
                    message: format!("status answered {status}; expected 202 or 200"),
                    source: None,
                }
                .into());
            }
            let server_progress = header_text(response.headers(), "x-progress");
            let wait = self.inner.options.retry.wait(response.headers(), polls - 1);
            let body = self.read_bytes(status_url, response).await?;
            let complete = status == StatusCode::OK;
            // In progress, a server asked for partial manifests may list the files ready so far.
            let partial = !complete && request.allow_partial_manifests && is_manifest(&body);
            let new_files = if complete || partial {
                let page = Manifest::parse(&body, status_url)?;
                self.read_pages(page, status_url, collector, &mut known_pages)
                    .await?
            } else {
                false
            };
            if complete {
                return Ok(());
            }
            progress.send_modify(|p| {
                p.status_polls += 1;
                p.server_progress.clone_from(&server_progress);
            });
            idle = if new_files || server_progress != last_progress {
                0
            } else {
                idle + 1
            };
            if idle >= limit {
                return Err(JobError {
                    error: Error::Protocol {
                        url: redact_url(status_url),
                        message: format!(
                            "no progress in {idle} status polls in a row (X-Progress {}); the limit \
                             is {limit} (max_polls_without_progress); the job is kept on the server",
                            server_progress.as_deref().map_or("absent".into(), quoted)
                        ),
                        source: None,
                    },
                    fate: Fate::Keep,
                });
            }
            last_progress = server_progress;
            tracing::debug!(status = %redact_url(status_url), "export in progress; next status poll in {}", seconds(wait));
            tokio::time::sleep(wait).await;
        }
    }

    /// Hands the files of `first` (a status response's manifest) and of the pages it links to
    /// `collector`; whether any was new. A page known to link on is not asked for again (a
    /// server may add a `link` to a page it served, nothing else); the last one is, on every
    /// call, until it links on too.
    async fn read_pages(
        &self,
        first: Manifest,
        status_url: &Url,
        collector: &mut Collector<'_>,
        known: &mut KnownPages,
    ) -> Result<bool> {
        let mut new = collector.add(&first)?;
        let mut next = first.next_page().cloned();
        let mut seen = HashSet::from([status_url.clone()]);
        while let Some(url) = next {
            if !seen.insert(url.clone()) {
                return Err(Error::Protocol {
                    url: redact_url(&url),
                    message: "manifest pages loop".into(),
                    source: None,
                });
            }
            if let Some(after) = known.links.iter().find(|(page, _)| *page == url) {
                next = Some(after.1.clone());
                continue;
            }
            let response = self
                .send(Method::GET, &url, |r| r.header(ACCEPT, "application/json"))
                .await?;
            let page = Manifest::parse(&self.read_bytes(&url, response).await?, &url)?;
            new |= collector.add(&page)?;
            next = page.next_page().cloned();
            if let Some(after) = &next {
                known.links.push((url, after.clone()));
            }
        }
        Ok(new)
    }

    /// Downloads the files that arrive on `planned`, `parallel_downloads` at a time, until the
    /// listing ends; in any order, each with what it finished despite. The data files go to
    /// `ready` in manifest order as they are done.
    async fn download_files(
        &self,
        planned: mpsc::UnboundedReceiver<PlannedFile>,
        resumed: bool,
        progress: &watch::Sender<ExportProgress>,
        ready: InOrder,
    ) -> Result<Vec<(PlannedFile, Downloaded, Option<Warning>)>, JobError> {
        let ready = &std::sync::Mutex::new(ready);
        let on_bytes = |n: u64| progress.send_modify(|p| p.bytes_downloaded += n);
        let on_bytes = &on_bytes;
        let export_bytes = &AtomicU64::new(0);
        let planned = futures::stream::unfold(planned, |mut rx| async move {
            rx.recv().await.map(|file| (file, rx))
        });
        planned
            .map(|file| async move {
                let fetcher = Fetcher {
                    http: &self.inner.files_http,
                    options: &self.inner.options,
                    auth: (self.inner.auth.as_ref())
                        .filter(|_| file.requires_token)
                        .map(|a| a as &dyn TokenSource),
                    origins: &self.inner.origins,
                    on_bytes,
                    export_bytes,
                };
                progress.send_modify(|p| p.phase = ExportPhase::Downloading);
                let (done, warning) = self.fetch_file(&fetcher, &file, resumed).await?;
                progress.send_modify(|p| {
                    p.files_done += 1;
                    p.lines_downloaded += done.lines;
                });
                let data =
                    (file.kind == FileKind::Output).then(|| DownloadedFile::of(&file, &done));
                ready
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .done(file.index, data);
                Ok::<_, JobError>((file, done, warning))
            })
            .buffer_unordered(self.inner.options.parallel_downloads)
            .try_collect()
            .await
    }

    /// One file into the folder (kept when a resumed run finds it there), its line count
    /// checked against the manifest's advisory `count`: on a mismatch it is downloaded once
    /// more, then taken with a warning, or refused with strict counts.
    async fn fetch_file(
        &self,
        fetcher: &Fetcher<'_>,
        planned: &PlannedFile,
        resumed: bool,
    ) -> Result<(Downloaded, Option<Warning>), JobError> {
        let PlannedFile {
            kind, file, path, ..
        } = planned;
        let done = if resumed && tokio::fs::try_exists(path).await.unwrap_or(false) {
            let (counter, bytes) = count_file(path).await?;
            fetcher.keep(bytes, &file.url)?;
            Downloaded {
                path: path.clone(),
                lines: counter.lines(),
                bytes,
            }
        } else {
            download::download(fetcher, &file.url, path)
                .await
                .map_err(JobError::gone)?
        };
        // Counts of `deleted` and `error` files count Bundles and OperationOutcomes, and are
        // no check of anything the export keeps.
        let count = file.count.filter(|_| *kind == FileKind::Output);
        let strict = self.inner.options.strict_counts;
        download::check_count(fetcher, file, count, strict, done)
            .await
            .map_err(JobError::gone)
    }

    /// The outcome of a finished job: its data files in manifest order, each deletion once,
    /// the warnings of the count checks and of the `error` files.
    async fn outcome(
        &self,
        request: &ExportRequest,
        manifest: Manifest,
        mut downloaded: Vec<(PlannedFile, Downloaded, Option<Warning>)>,
    ) -> Result<ExportOutcome> {
        downloaded.sort_by_key(|(file, ..)| file.index);
        // The types an error file may concern: those asked for, else those exported.
        let mut types = request.types.clone();
        if types.is_empty() {
            types.extend(manifest.output.iter().map(|f| f.resource_type.clone()));
            types.sort();
            types.dedup();
        }
        let mut outcome = ExportOutcome {
            manifest,
            files: Vec::new(),
            deleted: Vec::new(),
            warnings: Vec::new(),
            restarted: false,
        };
        let mut deleted = HashSet::new();
        for (planned, done, warning) in downloaded {
            outcome.warnings.extend(warning);
            match planned.kind {
                FileKind::Output => outcome.files.push(DownloadedFile::of(&planned, &done)),
                // A server may list the same tombstone in two files.
                FileKind::Deleted => {
                    for_each_line(&done.path, |line| {
                        let fresh = deleted_resources(line)
                            .into_iter()
                            .filter(|d| deleted.insert(d.clone()));
                        outcome.deleted.extend(fresh);
                    })
                    .await?
                }
                FileKind::Error => {
                    for_each_line(&done.path, |line| {
                        outcome.warnings.extend(outcome_warning(line, &types))
                    })
                    .await?
                }
            }
        }
        for warning in &outcome.warnings {
            tracing::warn!("{warning}");
        }
        Ok(outcome)
    }

    /// A finished export: its manifest takes its public name, the job is DELETEd (the server may
    /// drop the files) and forgotten.
    async fn finish_job(
        &self,
        dir: &Path,
        status_url: &Url,
        progress: &watch::Sender<ExportProgress>,
    ) -> Result<()> {
        let pending = dir.join(PENDING_MANIFEST_FILE);
        let manifest = dir.join(MANIFEST_FILE);
        tokio::fs::rename(&pending, &manifest)
            .await
            .map_err(|e| Error::io(&manifest, e))?;
        progress.send_modify(|p| p.phase = ExportPhase::CleaningUp);
        if let Err(e) = self.delete_job(status_url).await {
            tracing::warn!("export done, but deleting the job failed: {e}");
        }
        remove_quietly(&dir.join(JOB_FILE)).await;
        progress.send_modify(|p| p.phase = ExportPhase::Done);
        Ok(())
    }

    /// DELETEs a job that is of no more use and removes its state (its data stays until the
    /// next export into the folder clears it).
    async fn forget_job(&self, status_url: &Url, state_path: &Path) {
        if let Err(e) = self.delete_job(status_url).await {
            tracing::warn!("deleting the export job failed: {e}");
        }
        remove_quietly(state_path).await;
        if let Some(dir) = state_path.parent() {
            remove_quietly(&dir.join(PENDING_MANIFEST_FILE)).await;
        }
    }

    /// The status URL saved in `state_path` for this same server and request, if any; the job
    /// of another export of this server saved there is cancelled, that of another server (a
    /// demo server of an earlier run, on another port) forgotten without a request.
    async fn read_job(&self, state_path: &Path, request: &ExportRequest) -> Result<Option<Url>> {
        let state = match read_state(state_path).await {
            Ok(None) => return Ok(None),
            Ok(Some(state)) => Some(state),
            Err(error @ Error::Io { .. }) => return Err(error),
            // Unreadable: whatever job it held cannot be found again.
            Err(_) => None,
        };
        let status_url = state.as_ref().and_then(|s| Url::parse(&s.status_url).ok());
        match (state, status_url) {
            (Some(state), Some(url))
                if state.base_url == self.inner.base.as_str() && state.request == *request =>
            {
                tracing::info!(status = %redact_url(&url), "resuming the export job saved in {}", state_path.display());
                Ok(Some(url))
            }
            (state, url) => {
                let ours = state.is_some_and(|s| s.base_url == self.inner.base.as_str());
                tracing::warn!(
                    "{} belongs to another export; that job is {}",
                    state_path.display(),
                    if ours { "cancelled" } else { "forgotten" }
                );
                if let Some(url) = url.filter(|_| ours)
                    && let Err(e) = self.delete_job(&url).await
                {
                    tracing::warn!("cancelling the earlier job failed: {e}");
                }
                remove_quietly(state_path).await;
                Ok(None)
            }
        }
    }

    /// Clears `dir` of an earlier export, kicks off, and saves the job state.
    async fn start_job(
        &self,
        request: &ExportRequest,
        dir: &Path,
        state_path: &Path,
        progress: &watch::Sender<ExportProgress>,
    ) -> Result<Url> {
        progress.send_modify(|p| p.phase = ExportPhase::KickOff);
        clear_earlier_export(dir).await?;
        // Kicked off and saved by a task of its own, which an aborted export does not stop, under
        // the lock a cancel takes: a job the server has is always in the state file, where the
        // cancel finds it and DELETEs it.
        let kick_off = self.kick_off_lock(dir).lock_owned().await;
        let (this, request, state_path) = (self.clone(), request.clone(), state_path.to_owned());
        let saved = tokio::spawn(async move {
            let _kick_off = kick_off;
            this.kick_off_and_save(&request, &state_path).await
        });
        saved
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    async fn kick_off_and_save(&self, request: &ExportRequest, state_path: &Path) -> Result<Url> {
        let status_url = self.kick_off(request).await?;
        let state = JobState {
            base_url: self.inner.base.to_string(),
            request: request.clone(),
            status_url: status_url.to_string(),
        };
        let written = write_atomically(
            state_path,
            &serde_json::to_vec_pretty(&state).expect("state serializes"),
        )
        .await;
        if let Err(error) = written {
            // Without the state file a restart could not find the job: do not leave it behind.
            let _ = self.delete_job(&status_url).await;
            return Err(error);
        }
        Ok(status_url)
    }

    /// The lock of the export folder `dir` between a kick-off and a cancel (idle ones are
    /// forgotten).
    fn kick_off_lock(&self, dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.kick_offs.lock().expect("kick-off locks");
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        Arc::clone(locks.entry(dir.to_owned()).or_default())
    }

    /// One request with the client's retry policy, the bearer token where it may go, and the
    /// request timeout.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let Inner {
            http,
            auth,
            origins,
            options,
            ..
        } = &*self.inner;
        origins
            .send(
                http,
                &options.retry,
                auth.as_ref().map(|a| a as _),
                method,
                url,
                |r| Ok(build(r.timeout(options.request_timeout))),
            )
            .await
    }

    async fn read_bytes(&self, url: &Url, response: reqwest::Response) -> Result<Vec<u8>> {
        http::read_body(url, response, self.inner.options.max_response_bytes).await
    }

    async fn read_json(&self, url: &Url, response: reqwest::Response) -> Result<Value> {
        let bytes = self.read_bytes(url, response).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::protocol_with(redact_url(url), "not JSON", e))
    }
}

/// Manifest pages known to link on: (page, its `next`), in the order met.
#[derive(Default)]
struct KnownPages {
    links: Vec<(Url, Url)>,
}

/// Whether an in-progress status body is a (partial) manifest rather than nothing or an
/// OperationOutcome.
fn is_manifest(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| v.get("transactionTime").is_some())
}

/// The job state saved in `path`: `None` when there is none; an error when it cannot be read
/// or is not a job state.
async fn read_state(path: &Path) -> Result<Option<JobState>> {
    let text = match tokio::fs::read(path).await {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| Error::config_with(format!("{}: not an export job state", path.display()), e))
}

/// The complete manifest an earlier run saved in `path`, if it is there and readable.
async fn read_manifest(path: &Path) -> Option<Manifest> {
    let bytes = tokio::fs::read(path).await.ok()?;
    serde_json::from_slice(&bytes)
        .inspect_err(|e| tracing::warn!("{}: ignored, not a manifest: {e}", path.display()))
        .ok()
}

/// Removes what an earlier export left in `dir` (NDJSON files, parts, manifests).
async fn clear_earlier_export(dir: &Path) -> Result<()> {
    let mut entries = tokio::fs::read_dir(dir)
        .await
        .map_err(|e| Error::io(dir, e))?;
    while let Some(entry) = entries.next_entry().await.map_err(|e| Error::io(dir, e))? {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let manifest = name == MANIFEST_FILE || name == PENDING_MANIFEST_FILE;
        if name.ends_with(".ndjson") || name.ends_with(".ndjson.part") || manifest {
            remove_quietly(&entry.path()).await;
        }
    }
    Ok(())
}

/// Calls `f` with each line of an NDJSON file parsed as JSON, skipping lines that are not.
async fn for_each_line(path: &Path, mut f: impl FnMut(&Value)) -> Result<()> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::io(path, e))?;
    let mut lines = tokio::io::BufReader::new(file).lines();
    let mut number = 0;
    while let Some(line) = lines.next_line().await.map_err(|e| Error::io(path, e))? {
        number += 1;
        match serde_json::from_str::<Value>(&line) {
            Ok(value) => f(&value),
            Err(e) if !line.trim().is_empty() => {
                tracing::warn!("{}:{number}: not JSON: {e}", path.display())
            }
            Err(_) => {}
        }
    }
    Ok(())
}

async fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    tokio::fs::write(&tmp, bytes)
        .await
        .map_err(|e| Error::io(&tmp, e))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| Error::io(path, e))
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
