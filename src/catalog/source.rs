//! Where raw NDJSON comes from: a FHIR server's Bulk Data export, or a local folder of files from
//! an earlier export. The catalog asks a [`FhirSource`] for "these types, changed since then" and
//! turns what comes back into snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::bulk::{
    BulkClient, DownloadedFile, ExportLevel, ExportPhase, ExportProgress, ExportRequest,
};
use crate::error::quoted;
use crate::r4::check_type_name;
use crate::warning::{Warning, WarningKind};
use crate::{Error, Result};

/// What a source declares: its resource types and the searches it supports.
///
/// A Bulk Data server declares them in its CapabilityStatement (`GET [base]/metadata`):
///
/// 1. `rest[].resource[].type`: the resource types (a server may export more; every resource
///    type name is a table anyway, see [`FhirCatalog`](super::FhirCatalog)).
/// 2. `rest[].resource[].searchParam[].name`: the search parameters of each type.
/// 3. `_typeFilter`: the Bulk Data IG gives a server no machine-readable way to declare it, so
///    fhirflight takes it as declared when an `export` operation of the statement (`rest[].
///    operation[]` or a type's `operation[]`, named `export`, `patient-export` or
///    `group-export`) names `_typeFilter` anywhere in its entry (its `documentation`, or an
///    extension's value), or when `rest[].searchParam[]` lists it.
///
/// Pushdown in the `auto` mode ([`PushdownMode`](super::PushdownMode)) pushes a `_typeFilter`
/// only with 3, and only parameters of 2: a server that accepts a filter it does not implement
/// can then not change an answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Capabilities {
    /// The declared resource types (names that are not resource type names are dropped).
    pub resource_types: Vec<String>,
    /// The declared search parameters of each type.
    pub search_params: BTreeMap<String, BTreeSet<String>>,
    /// Whether `_typeFilter` is declared.
    pub type_filter: bool,
}

impl Capabilities {
    /// What the CapabilityStatement `statement` declares; `what` names it in warnings.
    pub fn from_statement(statement: &Value, what: &str) -> Self {
        let mut capabilities = Self::default();
        let is_export = |op: &Value| {
            matches!(
                op["name"].as_str(),
                Some("export" | "patient-export" | "group-export")
            )
        };
        let names_type_filter = |op: &Value| op.to_string().contains("_typeFilter");
        for rest in list(statement, "rest") {
            let operations = list(rest, "operation");
            capabilities.type_filter |= operations
                .iter()
                .any(|op| is_export(op) && names_type_filter(op))
                || list(rest, "searchParam")
                    .iter()
                    .any(|p| p["name"] == "_typeFilter");
            for resource in list(rest, "resource") {
                let Some(t) = resource["type"].as_str() else {
                    continue;
                };
                if check_type_name(t).is_err() {
                    tracing::warn!(
                        "{what} lists the type {}, which is not a resource type name: ignored",
                        quoted(t)
                    );
                    continue;
                }
                capabilities.type_filter |= list(resource, "operation")
                    .iter()
                    .any(|op| is_export(op) && names_type_filter(op));
                let params = capabilities.search_params.entry(t.to_owned()).or_default();
                params.extend(
                    list(resource, "searchParam")
                        .iter()
                        .filter_map(|p| p["name"].as_str().map(str::to_owned)),
                );
                capabilities.resource_types.push(t.to_owned());
            }
        }
        capabilities.resource_types.sort();
        capabilities.resource_types.dedup();
        capabilities
    }

    /// Whether `_typeFilter` with the search parameter `param` of `resource_type` is declared.
    pub fn supports_filter(&self, resource_type: &str, param: &str) -> bool {
        self.type_filter
            && self
                .search_params
                .get(resource_type)
                .is_some_and(|params| params.contains(param))
    }
}

/// What the catalog asks a source for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FetchRequest {
    /// Resource types (`_type`).
    pub types: Vec<String>,
    /// Only resources changed after this instant (`_since`): an incremental refresh.
    pub since: Option<String>,
    /// Search queries (`_typeFilter`), e.g. `Observation?code=8867-4`.
    pub type_filters: Vec<String>,
}

/// What a source fetched.
#[derive(Debug, Clone, Default)]
pub struct FetchOutcome {
    /// The request as sent (kick-off URL), or the folder read.
    pub request: String,
    /// The export's `transactionTime`: the next incremental refresh asks `_since` this instant.
    pub transaction_time: String,
    /// The NDJSON files (gzip or plain), each of one resource type.
    pub files: Vec<FetchedFile>,
    /// Tombstones (`deleted[]` of the manifest): `(resource type, id)`.
    pub deleted: Vec<(String, String)>,
    /// What the fetch finished despite (the server's OperationOutcomes, ...).
    pub warnings: Vec<Warning>,
    /// True when `files` hold every resource of the types (the source ignored `since`), so the
    /// snapshot is replaced rather than merged.
    pub complete: bool,
    /// True when the fetch started over after handing files to its `ready` channel: those
    /// were not its files.
    pub restarted: bool,
}

/// One NDJSON file of a [`FetchOutcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedFile {
    /// Resource type of every line.
    pub resource_type: String,
    /// Where it is on disk.
    pub path: PathBuf,
}

/// What a fetch is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum FetchPhase {
    /// Not begun yet.
    #[default]
    Starting,
    /// Reading files already on disk (a local folder).
    Reading,
    /// A Bulk Data export, in this phase.
    Export(ExportPhase),
    /// Converting the NDJSON into a snapshot.
    Converting,
}

impl FetchPhase {
    /// Whether data is moving (downloaded or converted), as opposed to waiting on the server.
    pub fn is_transferring(self) -> bool {
        matches!(
            self,
            FetchPhase::Export(ExportPhase::Downloading) | FetchPhase::Converting
        )
    }
}

impl std::fmt::Display for FetchPhase {
    /// One word, as `ListExports` reports it: `starting`, `reading`, `kickoff`, `waiting`,
    /// `downloading`, `cleaningup`, `done`, `converting`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FetchPhase::Starting => "starting",
            FetchPhase::Reading => "reading",
            FetchPhase::Export(ExportPhase::KickOff) => "kickoff",
            FetchPhase::Export(ExportPhase::Waiting) => "waiting",
            FetchPhase::Export(ExportPhase::Downloading) => "downloading",
            FetchPhase::Export(ExportPhase::CleaningUp) => "cleaningup",
            FetchPhase::Export(ExportPhase::Done) => "done",
            FetchPhase::Converting => "converting",
        })
    }
}

/// How far a fetch has come, for progress bars and the Flight server's export listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FetchProgress {
    /// What is happening now.
    pub phase: FetchPhase,
    /// The server's `X-Progress`, when it sent a percentage.
    pub percent: Option<f32>,
    /// Files to fetch, once known (0 before the manifest arrives).
    pub files_total: u64,
    /// Files downloaded so far.
    pub files: u64,
    /// Bytes downloaded so far.
    pub bytes: u64,
    /// Resources (rows) converted into snapshots so far.
    pub rows_converted: u64,
}

impl From<&ExportProgress> for FetchProgress {
    /// A Bulk Data export's progress; the `X-Progress` text only when it is a percentage.
    fn from(p: &ExportProgress) -> Self {
        FetchProgress {
            phase: FetchPhase::Export(p.phase),
            percent: p.server_progress.as_deref().and_then(parse_percent),
            files_total: p.files_total as u64,
            files: p.files_done as u64,
            bytes: p.bytes_downloaded,
            ..FetchProgress::default()
        }
    }
}

/// The array `value[key]`, empty when it is none.
fn list<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value[key].as_array().map_or(&[], Vec::as_slice)
}

/// A provider of raw FHIR NDJSON: a Bulk Data server or a local folder.
///
/// 1. [`FhirSource::location`] names the source: it keys the snapshot store and is recorded in
///    every manifest, so it must be stable across runs (a base URL, a canonical folder path).
/// 2. [`FhirSource::capabilities`] says what the source declares: the types browsing lists
///    besides the exported ones, and the searches pushdown may use ([`Capabilities`]). It may do
///    I/O (a CapabilityStatement request), so the catalog calls it only when browsing or
///    pushdown needs it, and once (it keeps the answer). A name that is not a resource type name
///    ([`check_type_name`]) is dropped.
/// 3. [`FhirSource::fetch`] writes or finds the NDJSON of the requested types. It gets a folder
///    that survives a crash of the process: a source that can resume (a Bulk Data job) keeps its
///    state there, and the next fetch with the same request resumes it.
#[async_trait]
pub trait FhirSource: Debug + Send + Sync {
    /// The stable name of the source: a base URL or a canonical folder path.
    fn location(&self) -> &str;

    /// What the source declares (see [`Capabilities`]).
    async fn capabilities(&self) -> Result<Capabilities>;

    /// Fetches the NDJSON of `request.types` into (or found beside) `dir`. A source that
    /// downloads may hand each file of the outcome's `files` to `ready` as soon as it is
    /// complete, in their order: the catalog converts them while the rest downloads, and keeps
    /// that work when what it was handed is `files` exactly and the outcome is not
    /// [`restarted`](FetchOutcome::restarted).
    async fn fetch(
        &self,
        request: &FetchRequest,
        dir: &Path,
        progress: &watch::Sender<FetchProgress>,
        ready: &mpsc::UnboundedSender<FetchedFile>,
    ) -> Result<FetchOutcome>;

    /// Cancels for good what a fetch that stopped keeps in `dir` for its resume (a Bulk Data
    /// job: DELETEd on the server, its files removed). Called by an explicit cancel only; a
    /// fetch that is merely dropped stays resumable. Nothing to do by default.
    async fn cancel(&self, dir: &Path) -> Result<()> {
        let _ = dir;
        Ok(())
    }

    /// The files of a fetch's folder that hold what its resume needs, in the order they are
    /// written (small: a job's status URL). With a tables' location, they are mirrored there
    /// while the fetch runs, so that another machine resumes a fetch this one left
    /// ([`crate::snapshot::Claim`]). None by default: the fetch starts again.
    fn resume_files(&self) -> &'static [&'static str] {
        &[]
    }

    /// The Bulk Data client and kick-off that fetch `request`, when this source is a Bulk Data
    /// server: a cluster's coordinator runs that export itself and has its executors fetch and
    /// convert the files ([`Cluster::export`](crate::cluster::Cluster::export)). None by
    /// default: the source is read in this process.
    fn bulk_export(&self, request: &FetchRequest) -> Option<(BulkClient, ExportRequest)> {
        let _ = request;
        None
    }
}

/// The longest first line [`LocalFolder`] reads to find a file's `resourceType`.
const MAX_FIRST_LINE: u64 = 1 << 20;

/// A folder of NDJSON files from an earlier export, read as it is, each file optionally
/// gzip-compressed. Which files hold which type:
///
/// 1. With a `manifest.json` (a Bulk Data manifest, as `fhirflight export` and servers write
///    it), its `output[]` entries: `type`, and the file named by the last segment of `url`,
///    which must be a plain file name of the folder (a URL's host and path, a `..` or a
///    separator are never followed). `error[]` and `deleted[]` files, and the folder's other
///    files, are skipped.
/// 2. Without one, every `*.ndjson` and `*.ndjson.gz` file, typed by the `resourceType` of its
///    first non-blank line (read up to 1 MiB), so server names like `1.Patient.ndjson` or
///    `<job>-0.patient.ndjson` work.
///
/// A type must be a resource type name ([`check_type_name`]). Every file skipped is reported
/// with why: a [`WarningKind::SkippedFile`] warning of each fetch, and a log line. Reading needs
/// no server; `_since` and `_typeFilter` are ignored (every fetch is complete).
#[derive(Debug, Clone)]
pub struct LocalFolder {
    dir: PathBuf,
    location: String,
}

/// The files of a [`LocalFolder`] with their types, and those skipped.
#[derive(Debug, Default)]
struct FolderFiles {
    files: Vec<FetchedFile>,
    skipped: Vec<Warning>,
}

impl FolderFiles {
    fn skip(&mut self, name: &str, why: impl std::fmt::Display) {
        self.skipped.push(Warning::new(
            WarningKind::SkippedFile,
            format!("{}: {why}", quoted(name)),
        ));
    }
}

impl LocalFolder {
    /// A source over `dir`, which must exist.
    pub fn try_new(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir
            .as_ref()
            .canonicalize()
            .map_err(|e| Error::io(dir.as_ref(), e))?;
        if !dir.is_dir() {
            return Err(Error::config(format!("{} is not a folder", dir.display())));
        }
        Ok(Self {
            location: dir.display().to_string(),
            dir,
        })
    }

    /// The NDJSON files of the folder with their resource types (sorted by path), and the files
    /// skipped.
    fn files(&self) -> Result<FolderFiles> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        let manifest = self.dir.join("manifest.json");
        let mut found = match names.iter().any(|n| n == "manifest.json") {
            true => {
                let text = std::fs::read(&manifest).map_err(|e| Error::io(&manifest, e))?;
                let value: Value = serde_json::from_slice(&text)
                    .map_err(|e| Error::config_with(manifest.display().to_string(), e))?;
                self.listed(&value, &names)
            }
            false => self.typed_by_content(&names),
        };
        found.files.sort_by(|a, b| a.path.cmp(&b.path));
        for warning in &found.skipped {
            tracing::warn!(folder = %self.dir.display(), "skipped {}", warning.message);
        }
        Ok(found)
    }

    /// The files `manifest` lists in `output[]`; the folder's other files are skipped. An entry
    /// is the file its URL names, or the one [`BulkClient::export_to_dir`] saved it as
    /// (`<Type>.<n>.ndjson`, `deleted.<n>.ndjson`, `error.<n>.ndjson`, `n` counting from 0 in
    /// the manifest's order), whose `manifest.json` keeps the server's URLs.
    fn listed(&self, manifest: &Value, names: &[String]) -> FolderFiles {
        let mut found = FolderFiles::default();
        let mut used = BTreeSet::from(["manifest.json".to_owned()]);
        let mut saved_as = std::collections::HashMap::<String, usize>::new();
        let mut local_name = |stem: &str, url: &str| {
            let n = saved_as.entry(stem.to_owned()).or_default();
            let saved = format!("{stem}.{n}.ndjson");
            *n += 1;
            // Either is one of the folder's own names, or no file is taken.
            match file_name(url) {
                Some(name) if names.contains(&name) => Some(name),
                _ if names.contains(&saved) => Some(saved),
                named => named,
            }
        };
        for (key, role) in [("error", "an error file"), ("deleted", "a deleted file")] {
            for entry in list(manifest, key) {
                let url = entry["url"].as_str().unwrap_or_default();
                if let Some(name) = local_name(key, url)
                    && names.contains(&name)
                    && used.insert(name.clone())
                {
                    found.skip(&name, format!("{role} of manifest.json, not resources"));
                }
            }
        }
        for entry in list(manifest, "output") {
            let url = entry["url"].as_str().unwrap_or_default();
            let resource_type = entry["type"].as_str().unwrap_or_default();
            let Some(name) = local_name(resource_type, url) else {
                found.skip(url, "manifest.json names no plain file name of the folder");
                continue;
            };
            if !used.insert(name.clone()) {
                found.skip(&name, "listed more than once in manifest.json: read once");
                continue;
            }
            if let Err(e) = check_type_name(resource_type) {
                found.skip(&name, format!("manifest.json: {e}"));
                continue;
            }
            if !names.contains(&name) {
                found.skip(&name, "listed in manifest.json but not in the folder");
                continue;
            }
            found.files.push(FetchedFile {
                resource_type: resource_type.to_owned(),
                path: self.dir.join(&name),
            });
        }
        for name in names.iter().filter(|n| !used.contains(*n)) {
            found.skip(name, "not listed in manifest.json");
        }
        found
    }

    /// Every NDJSON file, typed by the `resourceType` of its first non-blank line.
    fn typed_by_content(&self, names: &[String]) -> FolderFiles {
        let mut found = FolderFiles::default();
        for name in names {
            if !(name.ends_with(".ndjson") || name.ends_with(".ndjson.gz")) {
                found.skip(name, "not NDJSON (.ndjson or .ndjson.gz)");
                continue;
            }
            let path = self.dir.join(name);
            match first_resource_type(&path) {
                Ok(resource_type) => found.files.push(FetchedFile {
                    resource_type,
                    path,
                }),
                Err(why) => found.skip(name, why),
            }
        }
        found
    }
}

/// The plain file name `url` names: the last segment of its path (of a URL too), when that is
/// the name of a file within a folder (no separator, not `.` or `..`, nothing escaped).
fn file_name(url: &str) -> Option<String> {
    let last = match url::Url::parse(url) {
        Ok(u) => u.path_segments()?.next_back()?.to_owned(),
        Err(_) => url.rsplit('/').next()?.to_owned(),
    };
    let plain = !last.is_empty()
        && last != "."
        && last != ".."
        && !last.contains(['\\', '%', '\0', ':', '?', '#']);
    plain.then_some(last)
}

/// The `resourceType` of the first non-blank line of the NDJSON(.gz) file at `path`, or why
/// there is none.
fn first_resource_type(path: &Path) -> std::result::Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "resourceType")]
        resource_type: String,
    }
    let mut reader = crate::snapshot::open_raw(path)
        .map_err(|e| e.to_string())?
        .take(MAX_FIRST_LINE);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("unreadable: {e}"))?;
        if n == 0 {
            return Err(match reader.limit() {
                0 => format!("no line break in its first {MAX_FIRST_LINE} bytes"),
                _ => "no resource (empty)".to_owned(),
            });
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let head: Head = serde_json::from_slice(&line)
            .map_err(|e| format!("the first line has no resourceType: {e}"))?;
        return check_type_name(&head.resource_type)
            .map(str::to_owned)
            .map_err(|e| e.to_string());
    }
}

#[async_trait]
impl FhirSource for LocalFolder {
    fn location(&self) -> &str {
        &self.location
    }

    async fn capabilities(&self) -> Result<Capabilities> {
        let mut types: Vec<String> = self
            .files()?
            .files
            .into_iter()
            .map(|f| f.resource_type)
            .collect();
        types.sort();
        types.dedup();
        Ok(Capabilities {
            resource_types: types,
            ..Capabilities::default()
        })
    }

    async fn fetch(
        &self,
        request: &FetchRequest,
        _dir: &Path,
        progress: &watch::Sender<FetchProgress>,
        _ready: &mpsc::UnboundedSender<FetchedFile>,
    ) -> Result<FetchOutcome> {
        let FolderFiles { files, skipped } = self.files()?;
        let files: Vec<FetchedFile> = files
            .into_iter()
            .filter(|f| request.types.contains(&f.resource_type))
            .collect();
        let bytes = files
            .iter()
            .filter_map(|f| f.path.metadata().ok())
            .map(|m| m.len())
            .sum();
        progress.send_replace(FetchProgress {
            phase: FetchPhase::Reading,
            percent: Some(100.0),
            files_total: files.len() as u64,
            files: files.len() as u64,
            bytes,
            ..FetchProgress::default()
        });
        Ok(FetchOutcome {
            request: format!("{} ({})", self.location, request.types.join(",")),
            transaction_time: crate::snapshot::rfc3339(std::time::SystemTime::now()),
            files,
            warnings: skipped,
            complete: true,
            ..FetchOutcome::default()
        })
    }
}

/// A FHIR server: each fetch is a Bulk Data `$export` (system level unless configured) run by a
/// [`BulkClient`] into the catalog's staging folder, which resumes a job a killed run left.
///
/// The export level and `patient` list are part of the source's [`location`](FhirSource::location)
/// (`https://x/fhir [group:g1]`), so snapshots of different levels, groups or patient lists are
/// kept apart; the system level without patients is the base URL alone.
#[derive(Debug, Clone)]
pub struct BulkSource {
    client: BulkClient,
    level: ExportLevel,
    patients: Vec<String>,
    allow_partial_manifests: bool,
    name: Option<String>,
    location: String,
}

impl BulkSource {
    /// A system-level export source over `client`.
    pub fn new(client: BulkClient) -> Self {
        let location = client.base_url().to_string();
        Self {
            client,
            level: ExportLevel::System,
            patients: Vec::new(),
            allow_partial_manifests: false,
            name: None,
            location,
        }
    }

    /// Names the source `name` instead of its base URL in its [`location`](FhirSource::location),
    /// for a server whose URL changes between runs while its data does not: the demo server on
    /// a free port is named by its population (`demo:seed=42,patients=100`).
    pub fn with_name(self, name: impl Into<String>) -> Self {
        let name = Some(name.into());
        Self { name, ..self }.located()
    }

    /// The kick-off of `request` at this source's level, for its patients.
    fn export_request(&self, request: &FetchRequest) -> ExportRequest {
        let mut export = ExportRequest::new(self.level.clone())
            .with_types(request.types.clone())
            .with_type_filters(request.type_filters.clone())
            .with_patients(self.patients.clone())
            .with_allow_partial_manifests(self.allow_partial_manifests);
        if let Some(since) = &request.since {
            export = export.with_since(since.clone());
        }
        export
    }

    /// Exports at `level` (`Patient`, `Group(id)`) instead of system level.
    pub fn with_level(self, level: ExportLevel) -> Self {
        Self { level, ..self }.located()
    }

    /// Asks for `allowPartialManifests`: the files of partial manifests are downloaded while
    /// the export runs.
    pub fn with_allow_partial_manifests(self, allow: bool) -> Self {
        Self {
            allow_partial_manifests: allow,
            ..self
        }
    }

    /// Restricts exports to these patients (`Patient/123` or a bare id; the `patient`
    /// parameter, sent by POST), at the patient or group level.
    pub fn with_patients<S: Into<String>>(self, patients: impl IntoIterator<Item = S>) -> Self {
        let patients = patients.into_iter().map(Into::into).collect();
        Self { patients, ..self }.located()
    }

    /// `self` with its location recomputed from the base URL (or name), level and patients.
    fn located(self) -> Self {
        let level = match &self.level {
            ExportLevel::System => "system".to_owned(),
            ExportLevel::Patient => "patient".to_owned(),
            ExportLevel::Group(id) => format!("group:{id}"),
        };
        let mut patients = self.patients.clone();
        patients.sort();
        patients.dedup();
        let base = match &self.name {
            Some(name) => name.clone(),
            None => self.client.base_url().to_string(),
        };
        let location = match (level.as_str(), patients.is_empty()) {
            ("system", true) => base,
            (_, true) => format!("{base} [{level}]"),
            _ => format!("{base} [{level}; patient={}]", patients.join(",")),
        };
        Self { location, ..self }
    }
}

#[async_trait]
impl FhirSource for BulkSource {
    fn location(&self) -> &str {
        &self.location
    }

    async fn capabilities(&self) -> Result<Capabilities> {
        let statement = self.client.capability_statement().await?;
        let what = format!("the CapabilityStatement of {}", self.client.base_url());
        Ok(Capabilities::from_statement(&statement, &what))
    }

    async fn cancel(&self, dir: &Path) -> Result<()> {
        self.client.cancel_export(dir).await.map(|_| ())
    }

    /// The job's state: its status URL is all another machine needs to resume it.
    fn resume_files(&self) -> &'static [&'static str] {
        &[crate::bulk::JOB_FILE]
    }

    fn bulk_export(&self, request: &FetchRequest) -> Option<(BulkClient, ExportRequest)> {
        Some((self.client.clone(), self.export_request(request)))
    }

    async fn fetch(
        &self,
        request: &FetchRequest,
        dir: &Path,
        progress: &watch::Sender<FetchProgress>,
        ready: &mpsc::UnboundedSender<FetchedFile>,
    ) -> Result<FetchOutcome> {
        let export = self.export_request(request);
        let (tx, mut rx) = watch::channel(ExportProgress::default());
        // The export runs as a task of its own, so progress is relayed while it runs. Dropping
        // this fetch drops `stop`, which drops the export future (the job stays resumable).
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (done, result) = tokio::sync::oneshot::channel();
        let (client, dir) = (self.client.clone(), dir.to_path_buf());
        let (downloaded, mut files) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            tokio::select! {
                outcome = client.export_to_dir_streaming(&export, &dir, &tx, &downloaded) => {
                    let _ = done.send(outcome);
                }
                _ = stopped => {}
            }
        });
        let _stop = stop;
        let relay = |p: &ExportProgress| {
            // The rows are the catalog's to count: it converts while the export runs.
            progress.send_modify(|f| {
                *f = FetchProgress {
                    rows_converted: f.rows_converted,
                    ..p.into()
                }
            });
        };
        let hand_over = |file: DownloadedFile| {
            let _ = ready.send(FetchedFile {
                resource_type: file.resource_type,
                path: file.path,
            });
        };
        tokio::pin!(result);
        let outcome = loop {
            tokio::select! {
                outcome = &mut result => break outcome.map_err(|_| Error::Cancelled)??,
                Ok(()) = rx.changed() => relay(&rx.borrow_and_update()),
                Some(file) = files.recv() => hand_over(file),
            }
        };
        // The export may end before its last progress or files were relayed.
        relay(&rx.borrow());
        while let Ok(file) = files.try_recv() {
            hand_over(file);
        }
        Ok(FetchOutcome {
            request: outcome.manifest.request.clone(),
            transaction_time: outcome.manifest.transaction_time.clone(),
            files: outcome
                .files
                .into_iter()
                .map(|f| FetchedFile {
                    resource_type: f.resource_type,
                    path: f.path,
                })
                .collect(),
            deleted: outcome
                .deleted
                .into_iter()
                .map(|d| (d.resource_type, d.id))
                .collect(),
            warnings: outcome.warnings,
            complete: false,
            restarted: outcome.restarted,
        })
    }
}

/// The first number in an `X-Progress` text ("42% done" -> 42).
fn parse_percent(text: &str) -> Option<f32> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .ok()
        .filter(|_| rest[end..].trim_start().starts_with('%'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn capabilities_read_types_search_parameters_and_type_filter() {
        let statement = json!({"resourceType": "CapabilityStatement", "rest": [{
            "resource": [
                {"type": "Patient", "searchParam": [{"name": "gender"}, {"name": "_id"}]},
                {"type": "Observation"},
                {"type": "../x"},
            ],
            "operation": [{"name": "export", "documentation": "supports _typeFilter"}],
        }]});
        let declared = Capabilities::from_statement(&statement, "test");
        assert_eq!(declared.resource_types, ["Observation", "Patient"]);
        assert!(declared.type_filter);
        assert!(declared.supports_filter("Patient", "gender"));
        assert!(!declared.supports_filter("Patient", "birthdate"));
        assert!(!declared.supports_filter("Observation", "code"));

        // Search parameters without `_typeFilter` declared push nothing.
        let mut silent = statement.clone();
        silent["rest"][0]["operation"][0]["documentation"] = json!("bulk export");
        let declared = Capabilities::from_statement(&silent, "test");
        assert!(!declared.type_filter);
        assert!(!declared.supports_filter("Patient", "gender"));
    }

    #[test]
    fn manifest_urls_name_plain_files_only() {
        assert_eq!(
            file_name("https://x.example/files/1.Patient.ndjson?sig=a/b").as_deref(),
            Some("1.Patient.ndjson")
        );
        assert_eq!(
            file_name("Patient.ndjson").as_deref(),
            Some("Patient.ndjson")
        );
        assert_eq!(
            file_name("sub/Patient.ndjson").as_deref(),
            Some("Patient.ndjson")
        );
        for bad in ["", "..", "https://x.example/", "a\\..\\b", "%2e%2e", "x/."] {
            assert_eq!(file_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_files_type_is_its_first_resource_type() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let patient = write(
            "a",
            "\n  \n{\"id\":\"1\",\"resourceType\":\"Patient\"}\n{}\n",
        );
        assert_eq!(first_resource_type(&patient).unwrap(), "Patient");
        let empty = write("b", "\n\n");
        assert_eq!(
            first_resource_type(&empty).unwrap_err(),
            "no resource (empty)"
        );
        let path_like = write("c", "{\"resourceType\":\"../x\"}\n");
        assert!(
            first_resource_type(&path_like)
                .unwrap_err()
                .contains("not a resource type")
        );
        let not_json = write("d", "Patient\n");
        assert!(
            first_resource_type(&not_json)
                .unwrap_err()
                .contains("no resourceType")
        );
    }
}
