//! Where raw NDJSON comes from: a FHIR server's Bulk Data export, or a local folder of files from
//! an earlier export. The catalog asks a [`FhirSource`] for "these types, changed since then" and
//! turns what comes back into snapshots.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::bulk::{BulkClient, ExportLevel, ExportPhase, ExportProgress, ExportRequest};
use crate::r4::check_type_name;
use crate::warning::Warning;
use crate::{Error, Result};

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
}

/// One NDJSON file of a [`FetchOutcome`].
#[derive(Debug, Clone)]
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
}

/// A provider of raw FHIR NDJSON: a Bulk Data server or a local folder.
///
/// 1. [`FhirSource::location`] names the source: it keys the snapshot store and is recorded in
///    every manifest, so it must be stable across runs (a base URL, a canonical folder path).
/// 2. [`FhirSource::resource_types`] lists the types the catalog shows as tables. It may do I/O
///    (a CapabilityStatement request) and is called once, when the catalog is created. A name
///    that is not a resource type name ([`check_type_name`]) is dropped by the catalog.
/// 3. [`FhirSource::fetch`] writes or finds the NDJSON of the requested types. It gets a folder
///    that survives a crash of the process: a source that can resume (a Bulk Data job) keeps its
///    state there, and the next fetch with the same request resumes it.
#[async_trait]
pub trait FhirSource: Debug + Send + Sync {
    /// The stable name of the source: a base URL or a canonical folder path.
    fn location(&self) -> &str;

    /// The resource types this source can provide.
    async fn resource_types(&self) -> Result<Vec<String>>;

    /// Fetches the NDJSON of `request.types` into (or found beside) `dir`.
    async fn fetch(
        &self,
        request: &FetchRequest,
        dir: &Path,
        progress: &watch::Sender<FetchProgress>,
    ) -> Result<FetchOutcome>;
}

/// A folder of NDJSON files from an earlier export: `<Type>.ndjson`, `<Type>.<n>.ndjson`, each
/// optionally gzip-compressed (`.ndjson.gz`); other files, and names whose `<Type>` is not a
/// resource type name ([`check_type_name`]), are ignored. Reading it needs no server; `_since` and
/// `_typeFilter` are ignored (every fetch is complete).
#[derive(Debug, Clone)]
pub struct LocalFolder {
    dir: PathBuf,
    location: String,
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

    /// The NDJSON files of the folder with their resource types, sorted by name.
    fn files(&self) -> Result<Vec<FetchedFile>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let path = entry.map_err(|e| Error::io(&self.dir, e))?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let Some(stem) = name
                .strip_suffix(".ndjson.gz")
                .or_else(|| name.strip_suffix(".ndjson"))
            else {
                continue;
            };
            let resource_type = stem.split('.').next().unwrap_or_default();
            if check_type_name(resource_type).is_ok() {
                files.push(FetchedFile {
                    resource_type: resource_type.to_owned(),
                    path: path.clone(),
                });
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }
}

#[async_trait]
impl FhirSource for LocalFolder {
    fn location(&self) -> &str {
        &self.location
    }

    async fn resource_types(&self) -> Result<Vec<String>> {
        let mut types: Vec<String> = self.files()?.into_iter().map(|f| f.resource_type).collect();
        types.dedup();
        types.sort();
        types.dedup();
        Ok(types)
    }

    async fn fetch(
        &self,
        request: &FetchRequest,
        _dir: &Path,
        progress: &watch::Sender<FetchProgress>,
    ) -> Result<FetchOutcome> {
        let files: Vec<FetchedFile> = self
            .files()?
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
        });
        Ok(FetchOutcome {
            request: format!("{} ({})", self.location, request.types.join(",")),
            transaction_time: crate::snapshot::rfc3339(std::time::SystemTime::now()),
            files,
            complete: true,
            ..FetchOutcome::default()
        })
    }
}

/// A FHIR server: each fetch is a Bulk Data `$export` (system level unless configured) run by a
/// [`BulkClient`] into the catalog's staging folder, which resumes a job a killed run left.
#[derive(Debug, Clone)]
pub struct BulkSource {
    client: BulkClient,
    level: ExportLevel,
    location: String,
}

impl BulkSource {
    /// A system-level export source over `client`.
    pub fn new(client: BulkClient) -> Self {
        let location = client.base_url().to_string();
        Self {
            client,
            level: ExportLevel::System,
            location,
        }
    }

    /// Exports at `level` (`Patient`, `Group(id)`) instead of system level.
    pub fn with_level(self, level: ExportLevel) -> Self {
        Self { level, ..self }
    }
}

#[async_trait]
impl FhirSource for BulkSource {
    fn location(&self) -> &str {
        &self.location
    }

    async fn resource_types(&self) -> Result<Vec<String>> {
        self.client.resource_types().await
    }

    async fn fetch(
        &self,
        request: &FetchRequest,
        dir: &Path,
        progress: &watch::Sender<FetchProgress>,
    ) -> Result<FetchOutcome> {
        let mut export = ExportRequest::new(self.level.clone())
            .with_types(request.types.clone())
            .with_type_filters(request.type_filters.clone());
        if let Some(since) = &request.since {
            export = export.with_since(since.clone());
        }
        let (tx, mut rx) = watch::channel(ExportProgress::default());
        // The export runs as a task of its own, so progress is relayed while it runs. Dropping
        // this fetch drops `stop`, which drops the export future (the client then DELETEs the job).
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (done, result) = tokio::sync::oneshot::channel();
        let (client, dir) = (self.client.clone(), dir.to_path_buf());
        tokio::spawn(async move {
            tokio::select! {
                outcome = client.export_to_dir(&export, &dir, &tx) => { let _ = done.send(outcome); }
                _ = stopped => {}
            }
        });
        let _stop = stop;
        let relay = |p: &ExportProgress| {
            progress.send_replace(FetchProgress {
                phase: FetchPhase::Export(p.phase),
                percent: p.server_progress.as_deref().and_then(parse_percent),
                files_total: p.files_total as u64,
                files: p.files_done as u64,
                bytes: p.bytes_downloaded,
            });
        };
        tokio::pin!(result);
        let outcome = loop {
            tokio::select! {
                outcome = &mut result => break outcome.map_err(|_| Error::Cancelled)??,
                Ok(()) = rx.changed() => relay(&rx.borrow_and_update()),
            }
        };
        // The export may end before its last progress was relayed.
        relay(&rx.borrow());
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
