//! The manifest of a snapshot (`<Type>/manifest.json`, the commit point) and what it lists, the
//! format of its times, and how it is written: atomically.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Version of the manifest format written by this crate.
pub const MANIFEST_FORMAT: u32 = 1;

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
    /// Errors the server reported for this type (OperationOutcome texts), and skipped lines.
    #[serde(default)]
    pub errors: Vec<String>,
}

impl SnapshotManifest {
    /// Number of resources in the snapshot.
    pub fn resources(&self) -> u64 {
        self.raw.iter().map(|r| r.resources).sum()
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
}

/// The Parquet files of one table (mode) of a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableFiles {
    /// The files, relative to the snapshot folder.
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
}

impl TableFiles {
    /// Makes the file paths relative to the snapshot folder (they are written relative to the
    /// table folder `mode`).
    pub(super) fn relative_to(mut self, mode: &str) -> Self {
        for f in &mut self.files {
            f.path = format!("{mode}/{}", f.path);
        }
        self
    }
}

/// One Parquet file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableFile {
    /// Path relative to the snapshot folder.
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
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

/// `time` as RFC 3339 in UTC with milliseconds (`2024-01-31T12:00:00.000Z`).
pub fn rfc3339(time: SystemTime) -> String {
    let d = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (days, secs) = ((d.as_secs() / 86_400) as i64, d.as_secs() % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789); // leap day 2024
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
    }
}
