//! What a cache folder holds, as `fhirflight cache list` and `cache path` show it: each store's
//! source and the current snapshot of each of its names, read from `source.json` and the
//! manifests alone.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::manifest::{MANIFEST_FILE, read_manifest};
use super::names::check_name;
use super::store::{store_dirs, table_root};
use super::{SnapshotManifest, SnapshotStore};
use crate::{Error, Result};

/// One store of a cache folder: a data source and the current snapshots of its names.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedSource {
    /// The source, as its `source.json` names it: a base URL, a folder, or a demo population
    /// (`demo:seed=42,patients=100`).
    pub source: String,
    /// The store's folder, `<cache>/<source-key>`.
    pub dir: PathBuf,
    /// The current snapshot of each name (a resource type, or a filtered export's name),
    /// sorted by name.
    pub snapshots: Vec<CachedSnapshot>,
}

impl CachedSource {
    /// Whether `text` names this source: its source as recorded (a trailing `/` aside) or its
    /// folder's name (the source key).
    pub fn is_named(&self, text: &str) -> bool {
        let key = self.dir.file_name().and_then(|n| n.to_str());
        self.source.trim_end_matches('/') == text.trim_end_matches('/') || key == Some(text)
    }

    /// The current snapshot named `name`, if any.
    pub fn snapshot(&self, name: &str) -> Option<&CachedSnapshot> {
        self.snapshots.iter().find(|s| s.name == name)
    }

    /// The store, to clear it ([`SnapshotStore::clear`]) or read from it.
    pub fn store(&self) -> SnapshotStore {
        SnapshotStore::at(self.dir.clone())
    }
}

/// The current snapshot of one name, as its manifest describes it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedSnapshot {
    /// The name it is committed under: a resource type, or `<Type>@<filters>-<hash>`.
    pub name: String,
    /// The resource type.
    pub resource_type: String,
    /// The snapshot id (its folder's name).
    pub id: String,
    /// The snapshot's folder.
    pub dir: PathBuf,
    /// When it was committed (RFC 3339, UTC).
    pub created_at: String,
    /// The same, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The export's `transactionTime` (for a local folder: when it was read).
    pub transaction_time: String,
    /// The filters of a filtered export; empty for a full snapshot.
    pub pushdown: Vec<String>,
    /// Resources in its raw NDJSON.
    pub resources: u64,
    /// Bytes of its raw NDJSON (gzip).
    pub raw_bytes: u64,
    /// Its Parquet tables by mode ([`mode_key`](super::mode_key)).
    pub tables: BTreeMap<String, CachedTable>,
    /// Warnings its export and conversions finished with.
    pub warnings: usize,
}

impl CachedSnapshot {
    fn new(name: String, dir: PathBuf, manifest: SnapshotManifest) -> Self {
        let tables = manifest.tables.iter().map(|(mode, table)| {
            let root = table_root(&dir, manifest.format, mode);
            let files = table.files.iter().map(|f| root.join(&f.path)).collect();
            let table = CachedTable {
                rows: table.rows,
                bytes: table.bytes,
                files,
                delta: match &table.delta_table {
                    Some(url) => Some(url.clone()),
                    None => table
                        .delta_version
                        .and_then(|_| super::delta::local_url(&root).ok()),
                },
                delta_version: table.delta_version,
            };
            (mode.clone(), table)
        });
        Self {
            tables: tables.collect(),
            resources: manifest.resources(),
            raw_bytes: manifest.raw.iter().map(|r| r.bytes).sum(),
            warnings: manifest.warnings.len(),
            name,
            dir,
            resource_type: manifest.resource_type,
            id: manifest.snapshot,
            created_at: manifest.created_at,
            created_unix_ms: manifest.created_unix_ms,
            transaction_time: manifest.transaction_time,
            pushdown: manifest.pushdown,
        }
    }

    /// Bytes of its raw NDJSON and of its tables.
    pub fn bytes(&self) -> u64 {
        self.raw_bytes + self.tables.values().map(|t| t.bytes).sum::<u64>()
    }

    /// Time since it was committed.
    pub fn age(&self) -> Duration {
        let created = UNIX_EPOCH + Duration::from_millis(self.created_unix_ms);
        SystemTime::now()
            .duration_since(created)
            .unwrap_or_default()
    }
}

/// One Parquet table (mode) of a [`CachedSnapshot`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedTable {
    /// Rows over all files.
    pub rows: u64,
    /// Bytes over all files.
    pub bytes: u64,
    /// The absolute paths of its Parquet files: exactly the snapshot's rows, what another
    /// engine reads (a glob over the type's folder would also take superseded snapshots that
    /// a running query still holds).
    pub files: Vec<PathBuf>,
    /// The Delta table that holds them (`file://.../<name>/<mode>/`, or on an object store):
    /// what another engine reads as a table (its current version is this snapshot, earlier ones
    /// are earlier exports). None for a snapshot written before tables were Delta tables, or one
    /// Delta refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<url::Url>,
    /// The Delta version holding this snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_version: Option<u64>,
}

/// What `cache_root` holds: its stores sorted by folder, each with the current snapshot of every
/// name. Reads `source.json` and the manifests only; an unreadable one fails the listing, naming
/// the file. A cache folder that does not exist holds nothing.
///
/// ```
/// # fn main() -> fhirflight::Result<()> {
/// let cache = std::env::temp_dir().join("fhirflight-listing-example");
/// for source in fhirflight::snapshot::list_cache(&cache)? {
///     for snapshot in &source.snapshots {
///         let flattened = snapshot.tables.get("flattened");
///         let files = flattened.map(|t| t.files.len()).unwrap_or(0);
///         println!("{} {}: {} rows in {files} files", source.source, snapshot.name, snapshot.resources);
///     }
/// }
/// # Ok(()) }
/// ```
pub fn list_cache(cache_root: &Path) -> Result<Vec<CachedSource>> {
    store_dirs(cache_root)?
        .into_iter()
        .map(list_store)
        .collect()
}

fn list_store(dir: PathBuf) -> Result<CachedSource> {
    #[derive(serde::Deserialize)]
    struct SourceFile {
        source: String,
    }
    let path = dir.join("source.json");
    let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let SourceFile { source } = serde_json::from_slice(&bytes)
        .map_err(|e| Error::snapshot_with(path.display().to_string(), e))?;
    let mut snapshots = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if check_name(&name).is_err() || !entry.path().is_dir() {
            continue;
        }
        if let Some(manifest) = read_manifest(&entry.path().join(MANIFEST_FILE))? {
            let snapshot_dir = entry.path().join(&manifest.snapshot);
            snapshots.push(CachedSnapshot::new(name, snapshot_dir, manifest));
        }
    }
    snapshots.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(CachedSource {
        source,
        dir,
        snapshots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::snapshot::store::tests::commit;

    #[test]
    fn the_listing_names_each_sources_current_snapshots_and_their_files() {
        let cache = tempfile::tempdir().unwrap();
        assert!(list_cache(&cache.path().join("none")).unwrap().is_empty());
        let store = SnapshotStore::open(cache.path(), "http://example.org/fhir").unwrap();
        SnapshotStore::open(cache.path(), "/data/empty").unwrap();
        commit(&store, "Patient");
        // Superseded while read: its folder stays, the listing names the current one only.
        let read = store.current("Patient").unwrap().unwrap();
        commit(&store, "Patient");
        commit(&store, "Patient@a-0000000a");
        let current = store.current("Patient").unwrap().unwrap();
        assert!(read.dir().exists() && read.dir() != current.dir());

        let sources = list_cache(cache.path()).unwrap();
        let names: Vec<&str> = sources.iter().map(|s| s.source.as_str()).collect();
        assert_eq!(names, ["/data/empty", "http://example.org/fhir"]);
        assert!(sources[0].snapshots.is_empty());
        let source = &sources[1];
        assert_eq!(source.dir, store.dir());
        let names: Vec<&str> = source.snapshots.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["Patient", "Patient@a-0000000a"]);
        let patient = source.snapshot("Patient").unwrap();
        assert_eq!(patient.id, current.manifest().snapshot);
        assert_eq!(patient.dir, current.dir());
        assert_eq!((patient.resources, patient.warnings), (1, 0));
        assert_eq!(patient.created_at, current.manifest().created_at);
        let table = &patient.tables["flattened"];
        let expected: Vec<PathBuf> = current.manifest().tables["flattened"]
            .files
            .iter()
            .map(|f| current.table_root("flattened").join(&f.path))
            .collect();
        assert_eq!(table.files, expected);
        let delta = store.dir().join("Patient").join("flattened");
        let delta = crate::snapshot::delta::local_url(&delta).unwrap();
        assert_eq!(table.delta.as_ref(), Some(&delta));
        assert_eq!(table.delta_version, Some(1), "the second commit of Patient");
        assert!(table.files.iter().all(|f| f.is_absolute() && f.is_file()));
        assert_eq!(table.rows, 1);
        assert_eq!(patient.bytes(), patient.raw_bytes + table.bytes);
        assert!(patient.raw_bytes > 0 && table.bytes > 0);
        assert!(patient.age() < Duration::from_secs(600));

        let key = store.dir().file_name().unwrap().to_str().unwrap();
        for name in ["http://example.org/fhir", "http://example.org/fhir/", key] {
            assert!(source.is_named(name), "{name}");
        }
        assert!(!source.is_named("http://example.org") && !source.is_named("/data/empty"));

        // A tampered manifest fails the listing, naming its file.
        let manifest = store.dir().join("Patient").join("manifest.json");
        fs::write(&manifest, "{").unwrap();
        let err = list_cache(cache.path()).unwrap_err().to_string();
        assert!(err.contains(&manifest.display().to_string()), "{err}");
    }
}
