//! The manifest of a snapshot (`<Type>/manifest.json`, the commit point) and what it lists, the
//! format of its times, and how it is written: atomically.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use arrow::datatypes::Schema;
use serde::{Deserialize, Serialize};

use super::names::check_manifest_paths;

pub use crate::time::rfc3339;
use crate::warning::Warning;
use crate::{Error, Result};

/// Version of the manifest format written by this crate: 2 since each table is a Delta table
/// (`<name>/<mode>/`, its files in `<name>/<mode>/<snapshot>/`); a snapshot of format 1 keeps
/// its tables in its own folder (`<name>/<snapshot>/<mode>/`) and reads as before.
pub const MANIFEST_FORMAT: u32 = 2;

/// The manifest's file name: `<name>/manifest.json` names the current snapshot (the commit
/// point); each snapshot's folder keeps its own as committed.
pub(super) const MANIFEST_FILE: &str = "manifest.json";

/// The manifest of one snapshot of one resource type (`<Type>/manifest.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotManifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The resource type.
    pub resource_type: String,
    /// The snapshot folder name (`<Type>/<snapshot>/`).
    pub snapshot: String,
    /// Where the data came from: the server's base URL or the local folder.
    pub source: String,
    /// The kick-off request (URL with `_type`, `_since`, `_typeFilter`), or the folder read.
    pub request: String,
    /// The export's `transactionTime` (for a local folder: when it was read).
    pub transaction_time: String,
    /// When this snapshot was committed (RFC 3339, UTC).
    pub created_at: String,
    /// The same, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The raw NDJSON files (gzip), relative to the snapshot folder.
    pub raw: Vec<RawFile>,
    /// The Parquet tables by mode (`flattened`, `nested`).
    pub tables: BTreeMap<String, TableFiles>,
    /// The filters the export was restricted by (`_typeFilter=...`, `_since=...`): such a
    /// snapshot holds only the matching resources. Empty for a full snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pushdown: Vec<String>,
    /// Set when this snapshot was merged from the previous one and an export `_since` it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<Incremental>,
    /// What the export and the conversion of this type finished despite: the server's
    /// OperationOutcomes, skipped lines, wide resources. (Manifests of earlier versions call it
    /// `errors`.)
    #[serde(
        default,
        alias = "errors",
        deserialize_with = "crate::warning::deserialize_list"
    )]
    pub warnings: Vec<Warning>,
}

impl SnapshotManifest {
    /// Number of resources in the snapshot.
    pub fn resources(&self) -> u64 {
        self.raw.iter().map(|r| r.resources).sum()
    }

    /// Names this the manifest of snapshot `id` of `resource_type`, committed now, in
    /// [`MANIFEST_FORMAT`].
    pub(super) fn stamp(&mut self, resource_type: &str, id: &str) {
        let now = std::time::SystemTime::now();
        self.format = MANIFEST_FORMAT;
        self.resource_type = resource_type.to_owned();
        self.snapshot = id.to_owned();
        self.created_at = rfc3339(now);
        self.created_unix_ms = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
    }

    /// Adds the warnings of converting a table, those of a kind not yet noted: every mode skips
    /// the same lines, and one table's wide resources are those of another flattened one.
    pub(super) fn add_conversion_warnings(&mut self, warnings: Vec<Warning>) {
        for warning in warnings {
            if !self.warnings.iter().any(|w| w.kind == warning.kind) {
                self.warnings.push(warning);
            }
        }
    }
}

/// One raw NDJSON file of a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawFile {
    /// Path relative to the snapshot folder.
    pub path: String,
    /// Resources (non-empty lines).
    pub resources: u64,
    /// Size of the gzip file.
    pub bytes: u64,
    /// Where these bytes were first committed, relative to the name's folder
    /// (`<snapshot>/raw/<file>`), when an incremental refresh kept the file as it was: a
    /// snapshot home holds it there once, not again for each refresh
    /// ([`SnapshotStore::with_table_location`](super::SnapshotStore::with_table_location)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// The Parquet files of one table (mode) of a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableFiles {
    /// The files, relative to the table's folder: the Delta table `<name>/<mode>/` (as
    /// `<snapshot>/part-<n>.parquet`, the paths of its log), or for a snapshot of format 1 the
    /// snapshot's folder (`<mode>/part-<n>.parquet`).
    pub files: Vec<TableFile>,
    /// Rows over all files.
    pub rows: u64,
    /// Bytes over all files.
    pub bytes: u64,
    /// Lines skipped as bad input (lenient decoding).
    #[serde(default)]
    pub skipped_lines: u64,
    /// The columns, for people and other engines (the Parquet footer is authoritative).
    pub columns: Vec<Column>,
    /// The version of the Delta table that holds these files; none for a snapshot of format 1
    /// or a table Delta refused (the manifest's warnings say why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_version: Option<u64>,
    /// The Delta table when it is not the store's folder `<name>/<mode>/` (an object store's,
    /// [`SnapshotStore::with_table_location`](super::SnapshotStore::with_table_location)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_table: Option<url::Url>,
}

impl TableFiles {
    /// The table of `files` (their rows and bytes summed), with `skipped_lines` and the columns
    /// of `schema`; not a Delta version yet.
    pub(super) fn of(files: Vec<TableFile>, skipped_lines: u64, schema: &Schema) -> Self {
        Self {
            rows: files.iter().map(|f| f.rows).sum(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            files,
            skipped_lines,
            columns: schema
                .fields()
                .iter()
                .map(|f| Column {
                    name: f.name().clone(),
                    data_type: f.data_type().to_string(),
                })
                .collect(),
            delta_version: None,
            delta_table: None,
        }
    }

    /// Makes the file paths relative to the folder holding `folder` (they are written relative
    /// to `folder`).
    pub(super) fn relative_to(mut self, folder: &str) -> Self {
        for f in &mut self.files {
            f.path = format!("{folder}/{}", f.path);
        }
        self
    }
}

/// One Parquet file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableFile {
    /// Path relative to the table's folder ([`TableFiles::files`]).
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
}

impl TableFile {
    /// Its file name: the last segment of its path.
    pub(super) fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// A column of a snapshot table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Arrow data type, as displayed by Arrow.
    #[serde(rename = "type")]
    pub data_type: String,
}

/// What an incremental refresh merged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Incremental {
    /// The previous snapshot's `transactionTime`, sent as `_since`.
    pub since: String,
    /// The previous snapshot folder.
    pub previous: String,
    /// Resources in the export's output (new or updated).
    pub changed: u64,
    /// Ids removed by `deleted[]` tombstones.
    pub deleted: Vec<String>,
}

/// The manifest at `path`, with its paths checked ([`check_manifest_paths`]); `None` when there
/// is none. Errors name the file.
pub(super) fn read_manifest(path: &Path) -> Result<Option<SnapshotManifest>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let manifest: SnapshotManifest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::snapshot_with(path.display().to_string(), e))?;
    check_manifest_paths(&manifest)
        .map_err(|why| Error::snapshot(format!("{}: {why}", path.display())))?;
    Ok(Some(manifest))
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, then renamed.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

pub(super) fn to_json(value: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value)
        .map_err(|e| Error::snapshot_with("cannot serialise manifest", e))
}
