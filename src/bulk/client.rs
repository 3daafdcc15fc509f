//! The export client: kick-off, status polling, manifest, parallel downloads, job lifecycle.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use reqwest::header::{ACCEPT, CONTENT_LOCATION, CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use url::Url;

use super::download::{self, Fetcher, count_file, remove_quietly};
use super::origins::TokenOrigins;
use super::{
    ClientOptions, DownloadedFile, ExportOutcome, ExportPhase, ExportProgress, ExportRequest,
    Manifest, OutputFile, deleted_resources,
};
use crate::error::quoted;
use crate::http::{self, outcome_text, redact_url};
use crate::r4::check_type_name;
use crate::smart::{SmartAuth, SmartConfig, join};
use crate::warning::{Warning, WarningKind};
use crate::{Error, Result};

/// The job-state file: written right after kick-off, removed once the job is deleted.
const JOB_FILE: &str = ".fhirflight-job.json";
/// The manifest as the server gave it (pages merged).
const MANIFEST_FILE: &str = "manifest.json";

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
    auth: Option<SmartAuth>,
    origins: TokenOrigins,
    options: ClientOptions,
}

/// What a restarted process needs to pick the job up again.
#[derive(Serialize, Deserialize)]
struct JobState {
    base_url: String,
    request: ExportRequest,
    status_url: String,
}

/// Which list of the manifest a file comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Output,
    Deleted,
    Error,
}

impl BulkClient {
    /// A client for the FHIR server at `base_url`. With `auth`, SMART Backend Services is set up
    /// (the token endpoint discovered unless given); without, the server is taken to be open.
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
        let http = options.http_client()?;
        let auth = match auth {
            Some(config) => {
                let auth =
                    SmartAuth::try_new_with(&base_url, config, http.clone(), options.retry).await?;
                // The token comes back from its endpoint: that must not be plain http either.
                origins.token_allowed(auth.token_endpoint())?;
                Some(auth)
            }
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                base: base_url,
                http,
                auth,
                origins,
                options,
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

    /// Polls `status_url` until the export is complete and returns its manifest, all pages
    /// merged. Waits as `Retry-After` says (clamped), or with growing backoff when it is silent.
    pub async fn wait_for_manifest(
        &self,
        status_url: &Url,
        progress: &watch::Sender<ExportProgress>,
    ) -> Result<Manifest> {
        let mut polls = 0;
        let response = loop {
            let response = self
                .send(Method::GET, status_url, |r| {
                    r.header(ACCEPT, "application/json")
                })
                .await?;
            polls += 1;
            if response.status() != StatusCode::ACCEPTED {
                break response;
            }
            let server_progress = header_text(response.headers(), "x-progress");
            progress.send_modify(|p| {
                p.status_polls += 1;
                p.server_progress = server_progress;
            });
            let wait = self.inner.options.retry.wait(response.headers(), polls - 1);
            tokio::time::sleep(wait).await;
        };
        if response.status() != StatusCode::OK {
            return Err(Error::Protocol {
                url: redact_url(status_url),
                message: format!("status answered {}; expected 202 or 200", response.status()),
                source: None,
            });
        }
        let mut manifest =
            Manifest::parse(&self.read_bytes(status_url, response).await?, status_url)?;
        let mut seen = HashSet::from([status_url.clone()]);
        while let Some(next) = manifest.next_page().cloned() {
            if !seen.insert(next.clone()) {
                return Err(Error::Protocol {
                    url: redact_url(&next),
                    message: "manifest pages loop".into(),
                    source: None,
                });
            }
            let response = self
                .send(Method::GET, &next, |r| r.header(ACCEPT, "application/json"))
                .await?;
            let page = Manifest::parse(&self.read_bytes(&next, response).await?, &next)?;
            manifest.link = page.link.clone();
            manifest.append_page(page);
        }
        // A file URL that may not be requested fails the job now, before any download.
        let files = manifest.output.iter().chain(&manifest.deleted);
        for file in files.chain(&manifest.error) {
            self.inner.origins.token_allowed(&file.url)?;
        }
        Ok(manifest)
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

    /// Runs an export into `dir`: kick off (or resume the job whose state `dir` holds), poll,
    /// download every file in parallel, DELETE the job.
    ///
    /// `dir` gets `<Type>.<n>.ndjson` per output file (`n` counts that type's files from 0, the
    /// bytes as served), `deleted.<n>.ndjson` and `error.<n>.ndjson` for the other two lists,
    /// `manifest.json`, and while the job lives `.fhirflight-job.json`. A new export first removes
    /// the NDJSON files and manifest of an earlier one from `dir`.
    ///
    /// * A restarted process finds the job file and resumes polling instead of starting anew;
    ///   finished files are kept and partial ones resume with `Range`.
    /// * If the future is dropped (Ctrl-C, a timeout), the job is DELETEd in the background.
    /// * If a download fails, the job and its state are kept, so running again resumes.
    pub async fn export_to_dir(
        &self,
        request: &ExportRequest,
        dir: &Path,
        progress: &watch::Sender<ExportProgress>,
    ) -> Result<ExportOutcome> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| Error::io(dir, e))?;
        let state_path = dir.join(JOB_FILE);
        let mut pending = self.read_job(&state_path, request).await?;
        let (mut guard, manifest, resumed) = loop {
            let (status_url, resumed) = match pending.take() {
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
            let guard = JobGuard {
                client: self.clone(),
                status_url,
                state_path: state_path.clone(),
                armed: true,
            };
            match self.wait_for_manifest(&guard.status_url, progress).await {
                Ok(manifest) => break (guard, manifest, resumed),
                Err(Error::Http {
                    status: 404 | 410, ..
                }) if resumed => {
                    tracing::warn!(
                        "the saved export job is gone from the server; starting a new export"
                    );
                }
                // The job failed on the server: the guard deletes it and forgets the state.
                Err(error) => return Err(error),
            }
        };
        // A manifest refused here ends the job (the guard deletes it): resuming would meet it again.
        let plan = plan_files(&manifest, dir)?;
        let manifest_json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
        write_atomically(&dir.join(MANIFEST_FILE), &manifest_json).await?;
        match self.download_all(&manifest, plan, resumed, progress).await {
            Ok(outcome) => {
                progress.send_modify(|p| p.phase = ExportPhase::CleaningUp);
                if let Err(e) = self.delete_job(&guard.status_url).await {
                    tracing::warn!("export done, but deleting the job failed: {e}");
                }
                guard.armed = false;
                remove_quietly(&state_path).await;
                progress.send_modify(|p| p.phase = ExportPhase::Done);
                Ok(outcome)
            }
            Err(error) => {
                guard.armed = false;
                tracing::warn!(
                    "export job kept on the server; run again with the same folder to resume"
                );
                Err(error)
            }
        }
    }

    /// The status URL saved in `state_path` for this same server and request, if any.
    async fn read_job(&self, state_path: &Path, request: &ExportRequest) -> Result<Option<Url>> {
        let text = match tokio::fs::read(state_path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(state_path, e)),
        };
        let state = serde_json::from_slice::<JobState>(&text).ok();
        let status_url = state.as_ref().and_then(|s| Url::parse(&s.status_url).ok());
        match (state, status_url) {
            (Some(state), Some(url))
                if state.base_url == self.inner.base.as_str() && state.request == *request =>
            {
                tracing::info!(status = %redact_url(&url), "resuming the export job saved in {}", state_path.display());
                Ok(Some(url))
            }
            (_, url) => {
                tracing::warn!(
                    "{} belongs to another export; that job is cancelled",
                    state_path.display()
                );
                if let Some(url) = url
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

    /// Downloads the files of `manifest` as `plan` says ([`plan_files`]), `parallel_downloads`
    /// at a time.
    async fn download_all(
        &self,
        manifest: &Manifest,
        plan: Vec<(FileKind, OutputFile, PathBuf)>,
        resumed: bool,
        progress: &watch::Sender<ExportProgress>,
    ) -> Result<ExportOutcome> {
        progress.send_modify(|p| {
            p.phase = ExportPhase::Downloading;
            p.files_total = plan.len();
        });
        let on_bytes = |n: u64| progress.send_modify(|p| p.bytes_downloaded += n);
        let fetcher = Fetcher {
            http: &self.inner.http,
            retry: &self.inner.options.retry,
            auth: if manifest.requires_access_token {
                self.inner.auth.as_ref()
            } else {
                None
            },
            origins: &self.inner.origins,
            on_bytes: &on_bytes,
        };
        let fetcher = &fetcher;
        let results: Vec<(FileKind, String, download::Downloaded)> = futures::stream::iter(plan)
            .map(|(kind, file, path)| async move {
                let done = if resumed && tokio::fs::try_exists(&path).await.unwrap_or(false) {
                    let (lines, bytes) = count_file(&path).await?;
                    (fetcher.on_bytes)(bytes);
                    download::Downloaded { path, lines, bytes }
                } else {
                    download::download(fetcher, &file, &path).await?
                };
                progress.send_modify(|p| {
                    p.files_done += 1;
                    p.lines_downloaded += done.lines;
                });
                Ok::<_, Error>((kind, file.resource_type.clone(), done))
            })
            .buffered(self.inner.options.parallel_downloads)
            .try_collect()
            .await?;
        let mut outcome = ExportOutcome {
            manifest: manifest.clone(),
            files: Vec::new(),
            deleted: Vec::new(),
            warnings: Vec::new(),
        };
        for (kind, resource_type, done) in results {
            match kind {
                FileKind::Output => outcome.files.push(DownloadedFile {
                    resource_type,
                    path: done.path,
                    lines: done.lines,
                    bytes: done.bytes,
                }),
                FileKind::Deleted => {
                    for_each_line(&done.path, |line| {
                        outcome.deleted.extend(deleted_resources(line))
                    })
                    .await?
                }
                FileKind::Error => {
                    for_each_line(&done.path, |line| {
                        outcome.warnings.extend(
                            outcome_text(line)
                                .map(|text| Warning::new(WarningKind::ServerError, text)),
                        )
                    })
                    .await?;
                }
            }
        }
        for warning in &outcome.warnings {
            tracing::warn!("server: {warning}");
        }
        Ok(outcome)
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
            .send(http, &options.retry, auth.as_ref(), method, url, |r| {
                Ok(build(r.timeout(options.request_timeout)))
            })
            .await
    }

    async fn read_bytes(&self, url: &Url, response: reqwest::Response) -> Result<bytes::Bytes> {
        response
            .bytes()
            .await
            .map_err(|e| http::transport_error(&Method::GET, url, e))
    }

    async fn read_json(&self, url: &Url, response: reqwest::Response) -> Result<Value> {
        let bytes = self.read_bytes(url, response).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::protocol_with(redact_url(url), "not JSON", e))
    }
}

/// Deletes the job if an export is abandoned (its future dropped) before it ends.
struct JobGuard {
    client: BulkClient,
    status_url: Url,
    state_path: PathBuf,
    armed: bool,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.state_path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", self.state_path.display());
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(status = %redact_url(&self.status_url), "export abandoned outside a runtime; job not deleted");
            return;
        };
        let (client, status_url) = (self.client.clone(), self.status_url.clone());
        tracing::info!(status = %redact_url(&status_url), "export abandoned; deleting the job");
        runtime.spawn(async move {
            if let Err(e) = client.delete_job(&status_url).await {
                tracing::warn!("deleting the abandoned export job failed: {e}");
            }
        });
    }
}

/// Each file of the manifest with its kind and its path in `dir`.
///
/// Every entry's type must be a resource type name ([`check_type_name`]), in all three lists,
/// or the export fails naming the entry: a server that sends a path-like type is broken or
/// hostile, and skipping the entry would quietly give a table without its data.
///
/// The entries are owned: borrowed ones, captured by the download closures, make the export
/// future not provably `Send` (a rustc limitation with higher-ranked lifetimes).
fn plan_files(manifest: &Manifest, dir: &Path) -> Result<Vec<(FileKind, OutputFile, PathBuf)>> {
    let mut counters: HashMap<String, usize> = HashMap::new();
    let mut plan = Vec::new();
    let lists = [
        ("output", FileKind::Output, &manifest.output),
        ("deleted", FileKind::Deleted, &manifest.deleted),
        ("error", FileKind::Error, &manifest.error),
    ];
    for (list, kind, files) in lists {
        for (index, file) in files.iter().enumerate() {
            if check_type_name(&file.resource_type).is_err() {
                return Err(Error::Protocol {
                    url: manifest.request.clone(),
                    message: format!(
                        "manifest {list}[{index}] ({}) has the type {}, which is not a resource type name: export refused",
                        redact_url(&file.url),
                        quoted(&file.resource_type)
                    ),
                    source: None,
                });
            }
            let stem = match kind {
                FileKind::Output => file.resource_type.as_str(),
                FileKind::Deleted | FileKind::Error => list,
            };
            let counter = counters.entry(stem.to_string()).or_default();
            let path = dir.join(format!("{stem}.{counter}.ndjson"));
            plan.push((kind, file.clone(), path));
            *counter += 1;
        }
    }
    Ok(plan)
}

/// Removes what an earlier export left in `dir` (NDJSON files, parts, manifest).
async fn clear_earlier_export(dir: &Path) -> Result<()> {
    let mut entries = tokio::fs::read_dir(dir)
        .await
        .map_err(|e| Error::io(dir, e))?;
    while let Some(entry) = entries.next_entry().await.map_err(|e| Error::io(dir, e))? {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".ndjson") || name.ends_with(".ndjson.part") || name == MANIFEST_FILE {
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
