//! Local snapshot store: raw NDJSON (gzip) + Parquet + a manifest per resource type, committed
//! atomically, merged incrementally.
//!
//! # Layout
//!
//! One folder per data source (FHIR server or local folder) under the cache root
//! (default `<user cache dir>/fhirflight`, see [`default_cache_dir`]):
//!
//! ```text
//! <cache>/<source-key>/                  e.g. 127.0.0.1_8080-3f2a9c1e5b7d0a46
//!   source.json                          {"source": "<base url or folder>"}
//!   <Type>/manifest.json                 THE commit point: names the current snapshot of <Type>
//!   <Type>/<snapshot-id>/raw/<Type>.<n>.ndjson.gz      raw resources, the source of truth
//!   <Type>/<snapshot-id>/<mode>/part-<n>.parquet       one table per mode (flattened, nested)
//!   <Type>@<filters>-<hash>/...          the same for an export restricted by filter pushdown
//!                                        (`_typeFilter`, `_since`): a subset of the type, used
//!                                        only by queries with the same filters
//!   <Type>@<filters>-<hash>/.readers     held (shared lock) by whoever reads that snapshot;
//!                                        its modification time is the snapshot's last use
//!   staging/<job-key>/                   downloads of an export in progress (resumable)
//!   tmp/<snapshot-id>/                   a snapshot being written
//!   .lock                                held while committing
//! ```
//!
//! Every path the store builds stays inside its folder: a `<Type>` is a resource type name
//! ([`crate::r4::check_type_name`]), a filtered snapshot's name, a snapshot id, a job key and a
//! file path listed in a manifest each pass a strict rule of their own before they are joined
//! (a manifest on disk may have been tampered with), and garbage collection removes only
//! folders whose names it made.
//!
//! Another engine reads a table by reading `<Type>/manifest.json` and then the files it lists
//! under `tables.<mode>.files` (paths relative to the snapshot folder), for example in DuckDB
//! `SELECT * FROM read_parquet('<cache>/<source-key>/Patient/<snapshot>/flattened/*.parquet')`,
//! or in pandas `pd.read_parquet('<...>/Patient/<snapshot>/flattened')`. The Arrow schema is in
//! each Parquet footer; the manifest repeats it as `columns` for people.
//!
//! # Atomicity
//!
//! A snapshot is written in `tmp/`, renamed into `<Type>/<snapshot-id>/`, and becomes visible only
//! when `<Type>/manifest.json` is replaced (written aside, synced, renamed). A crash at any moment
//! leaves the old manifest (and snapshot) or the new one; leftovers are removed by later commits.
//! Commits take an exclusive lock on `.lock`, so processes sharing a cache folder serialise their
//! commits; the previous snapshot's files are kept one generation so a query planned on it in
//! another process can still read them.
//!
//! # Filtered snapshots are bounded
//!
//! Every distinct pushdown makes its own filtered snapshot, so they are evicted, least recently
//! used first, beyond a number per type ([`SnapshotStore::evict_filtered`]; full snapshots are
//! never evicted). Reading a filtered snapshot holds a [`Lease`]: a shared lock on its
//! `.readers` file, taken before its manifest is read and kept by every table and scan of it (in
//! any process), which eviction respects: it removes only snapshots whose lock it can take
//! exclusively, the manifest first, under the store's commit lock.

mod convert;
mod raw;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::datatypes::SchemaRef;
use datafusion::parquet;
use serde::{Deserialize, Serialize};

use crate::error::quoted;
use crate::r4::check_type_name;
use crate::{Error, Result};

pub(crate) use convert::open_raw;
pub use convert::{convert_raw, mode_key};

use crate::ndjson::TableMode;
pub use raw::{resource_ids, write_raw};

/// Version of the manifest format written by this crate.
pub const MANIFEST_FORMAT: u32 = 1;

/// The file whose shared lock a reader of a filtered snapshot holds (see [`Lease`]).
const LEASE_FILE: &str = ".readers";

/// The default cache root: `<user cache dir>/fhirflight` (for example `~/.cache/fhirflight`).
pub fn default_cache_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("fhirflight")
}

/// The snapshots of one data source (a FHIR server or a local folder), in one cache folder.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    /// Opens (creating it if needed) the store of `source` (a base URL or a folder path) under
    /// `cache_root`. The folder name is readable and unique: host or folder name plus a hash.
    pub fn open(cache_root: &Path, source: &str) -> Result<Self> {
        let dir = cache_root.join(source_key(source));
        for sub in ["tmp", "staging"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| Error::io(dir.join(sub), e))?;
        }
        let info = dir.join("source.json");
        if !info.exists() {
            write_atomic(&info, &to_json(&serde_json::json!({ "source": source }))?)?;
        }
        Ok(Self { dir })
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder where an export of the given key keeps its downloads (so a killed run resumes).
    /// A key is ASCII letters, digits, `_` and `-` (at most 100), so it names a folder of
    /// `staging/` and nothing else.
    pub fn staging_dir(&self, job_key: &str) -> Result<PathBuf> {
        let valid = !job_key.is_empty()
            && job_key.len() <= 100
            && job_key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        match valid {
            true => Ok(self.dir.join("staging").join(job_key)),
            false => Err(Error::Snapshot(format!(
                "{} is not a staging folder name",
                quoted(job_key)
            ))),
        }
    }

    /// The current snapshot named `name` (a resource type, or a filtered snapshot's name), if one
    /// was committed.
    ///
    /// A filtered snapshot comes with a [`Lease`] (taken before its manifest is read), so it is
    /// not evicted while the returned snapshot, or a table or scan made from it, lives. One
    /// being evicted is absent.
    pub fn current(&self, name: &str) -> Result<Option<Snapshot>> {
        let lease = match is_filtered(name) {
            true => match self.lease(name)? {
                Some(lease) => Some(lease),
                None => return Ok(None),
            },
            false => None,
        };
        let path = self.manifest_path(name)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let manifest: SnapshotManifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Snapshot(format!("{}: {e}", path.display())))?;
        check_manifest_paths(&manifest)
            .map_err(|e| Error::Snapshot(format!("{}: {e}", path.display())))?;
        let dir = self.named_dir(name)?.join(&manifest.snapshot);
        Ok(Some(Snapshot {
            dir,
            manifest,
            lease,
        }))
    }

    /// A lease on the filtered snapshot `name`, recording its use; `None` when it does not
    /// exist or is being evicted.
    fn lease(&self, name: &str) -> Result<Option<Lease>> {
        let path = self.named_dir(name)?.join(LEASE_FILE);
        // Eviction may remove the folder between our open and our lock, and a new export may
        // make it again: the lock counts only on the file the path names now.
        for _ in 0..3 {
            let file = match File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io(&path, e)),
            };
            match file.try_lock_shared() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => return Ok(None),
                Err(fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
            if same_file(&file, &path) {
                // The last use orders eviction; failing to record it only makes eviction earlier.
                let _ = file.set_modified(SystemTime::now());
                return Ok(Some(Lease {
                    _locked: Arc::new(file),
                }));
            }
        }
        Ok(None)
    }

    /// Evicts the filtered snapshots of `resource_type` (`<Type>@...`) beyond the `keep` most
    /// recently used, skipping those somebody holds a [`Lease`] on (they may stay above `keep`
    /// until a later eviction). The type's full snapshot is never touched. Returns the names
    /// evicted.
    pub fn evict_filtered(&self, resource_type: &str, keep: usize) -> Result<Vec<String>> {
        let prefix = format!("{}@", check_type_name(resource_type)?);
        let _lock = self.lock()?;
        let mut filtered: Vec<(SystemTime, String)> = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && is_filtered_name(&name) && entry.path().is_dir() {
                let dir = entry.path();
                let used = [dir.join(LEASE_FILE), self.manifest_path(&name)?, dir]
                    .iter()
                    .filter_map(|p| p.metadata().and_then(|m| m.modified()).ok())
                    .max()
                    .unwrap_or(UNIX_EPOCH);
                filtered.push((used, name));
            }
        }
        filtered.sort_by(|a, b| b.cmp(a));
        let mut evicted = Vec::new();
        for (_, name) in filtered.into_iter().skip(keep) {
            let dir = self.named_dir(&name)?;
            let path = dir.join(LEASE_FILE);
            let Ok(lock) = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            else {
                continue;
            };
            // Held until the folder is gone, so that no reader leases it in between.
            if lock.try_lock().is_err() {
                continue; // being read
            }
            // Unpublished first: a crash leaves a folder without a manifest, evicted later.
            let manifest = self.manifest_path(&name)?;
            match fs::remove_file(&manifest) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(manifest, e)),
            }
            fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            drop(lock);
            evicted.push(name);
        }
        Ok(evicted)
    }

    /// Resource types that have a committed (full) snapshot, sorted.
    pub fn resource_types(&self) -> Result<Vec<String>> {
        let mut types = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if check_type_name(&name).is_ok() && entry.path().join("manifest.json").is_file() {
                types.push(name);
            }
        }
        types.sort();
        Ok(types)
    }

    /// Starts writing a new snapshot of `resource_type` in a private temporary folder.
    pub fn begin(&self, resource_type: &str) -> Result<SnapshotWriter> {
        self.begin_named(resource_type, resource_type)
    }

    /// Starts writing a snapshot of `resource_type` to be committed under another `name` (a
    /// filtered export's, which must not replace the type's full snapshot).
    pub fn begin_named(&self, name: &str, resource_type: &str) -> Result<SnapshotWriter> {
        check_name(name)?;
        check_type_name(resource_type)?;
        let id = new_snapshot_id();
        let dir = self.dir.join("tmp").join(&id);
        fs::create_dir_all(dir.join("raw")).map_err(|e| Error::io(&dir, e))?;
        Ok(SnapshotWriter {
            store: self.clone(),
            name: name.to_owned(),
            resource_type: resource_type.to_owned(),
            id,
            dir,
        })
    }

    /// Adds the Parquet table of `mode` to a committed snapshot that lacks it (switching mode
    /// reads the snapshot's raw NDJSON again; no export). Returns the updated snapshot.
    pub fn add_table(
        &self,
        snapshot: &Snapshot,
        mode: &TableMode,
        batch_size: usize,
    ) -> Result<Snapshot> {
        let key = mode_key(mode);
        let tmp = snapshot
            .dir
            .join(format!(".{key}-{}", uuid::Uuid::new_v4().simple()));
        let (table, _) = convert_raw(
            &snapshot.raw_paths(),
            &snapshot.manifest.resource_type,
            mode,
            batch_size,
            &tmp,
        )?;
        let _lock = self.lock()?;
        // Someone else may have committed a newer snapshot meanwhile: only touch ours.
        let target = snapshot.dir.join(&key);
        if target.exists() {
            fs::remove_dir_all(&target).map_err(|e| Error::io(&target, e))?;
        }
        fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
        let mut manifest = snapshot.manifest.clone();
        manifest.tables.insert(key.clone(), table.relative_to(&key));
        let name = snapshot.name();
        let path = self.manifest_path(&name)?;
        let current = self.current(&name)?;
        if current.is_some_and(|c| c.manifest.snapshot == manifest.snapshot) {
            write_atomic(&path, &to_json(&manifest)?)?;
        }
        Ok(Snapshot {
            dir: snapshot.dir.clone(),
            manifest,
            lease: snapshot.lease.clone(),
        })
    }

    /// The folder of the snapshots named `name` (a type's, or a filtered export's): checked by
    /// [`check_name`], so never a path outside the store.
    fn named_dir(&self, name: &str) -> Result<PathBuf> {
        Ok(self.dir.join(check_name(name)?))
    }

    fn manifest_path(&self, name: &str) -> Result<PathBuf> {
        Ok(self.named_dir(name)?.join("manifest.json"))
    }

    /// Exclusive lock of the store, released on drop (also when the process dies).
    fn lock(&self) -> Result<File> {
        let path = self.dir.join(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.lock().map_err(|e| Error::io(&path, e))?;
        Ok(file)
    }

    /// Removes snapshot folders in `type_dir` other than `keep`, and temporary folders older
    /// than a day (a crashed writer's). Only folders named like snapshot ids are touched: the
    /// store made those, whatever else lies there is not its own.
    fn collect_garbage(&self, type_dir: &Path, keep: &[&str]) {
        let stale = |p: &Path| {
            p.metadata()
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(86_400))
                .unwrap_or(false)
        };
        let snapshot_dirs = |dir: &Path| {
            fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_str().is_some_and(is_snapshot_id))
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect::<Vec<_>>()
        };
        for path in snapshot_dirs(type_dir) {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if !keep.contains(&name.as_ref()) {
                let _ = fs::remove_dir_all(&path);
            }
        }
        for path in snapshot_dirs(&self.dir.join("tmp")) {
            if stale(&path) {
                let _ = fs::remove_dir_all(&path);
            }
        }
    }
}

/// A snapshot being written; nothing is visible until [`SnapshotWriter::commit`].
#[derive(Debug)]
pub struct SnapshotWriter {
    store: SnapshotStore,
    name: String,
    resource_type: String,
    id: String,
    dir: PathBuf,
}

impl SnapshotWriter {
    /// The folder the snapshot is written in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path for the `n`th raw file of this snapshot (relative path as stored in the manifest).
    pub fn raw_path(&self, n: usize) -> (PathBuf, String) {
        let rel = format!("raw/{}.{n:03}.ndjson.gz", self.resource_type);
        (self.dir.join(&rel), rel)
    }

    /// Converts the raw files to the Parquet tables of `modes`, then commits: the new snapshot
    /// replaces the current one atomically. `manifest.snapshot`, `resource_type`, `tables` and
    /// `created_at` are filled in here.
    pub fn commit(
        self,
        mut manifest: SnapshotManifest,
        modes: &[TableMode],
        batch_size: usize,
    ) -> Result<Snapshot> {
        let raw: Vec<PathBuf> = manifest
            .raw
            .iter()
            .map(|r| self.dir.join(&r.path))
            .collect();
        for mode in modes {
            let key = mode_key(mode);
            let (table, errors) = convert_raw(
                &raw,
                &self.resource_type,
                mode,
                batch_size,
                &self.dir.join(&key),
            )?;
            manifest.tables.insert(key.clone(), table.relative_to(&key));
            if manifest.errors.is_empty() {
                manifest.errors.extend(errors);
            }
        }
        manifest.format = MANIFEST_FORMAT;
        manifest.resource_type = self.resource_type.clone();
        manifest.snapshot = self.id.clone();
        let now = SystemTime::now();
        manifest.created_at = rfc3339(now);
        manifest.created_unix_ms = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;

        let store = &self.store;
        let type_dir = store.named_dir(&self.name)?;
        let _lock = store.lock()?;
        // Under the lock: eviction removes filtered snapshots' folders under it too.
        fs::create_dir_all(&type_dir).map_err(|e| Error::io(&type_dir, e))?;
        let previous = store.current(&self.name)?.map(|s| s.manifest.snapshot);
        let target = type_dir.join(&self.id);
        fs::rename(&self.dir, &target).map_err(|e| Error::io(&target, e))?;
        write_atomic(&store.manifest_path(&self.name)?, &to_json(&manifest)?)?;
        let keep: Vec<&str> = [Some(self.id.as_str()), previous.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        store.collect_garbage(&type_dir, &keep);
        let lease = match is_filtered(&self.name) {
            true => store.lease(&self.name)?,
            false => None,
        };
        Ok(Snapshot {
            dir: target,
            manifest,
            lease,
        })
    }
}

/// A committed snapshot of one resource type.
#[derive(Debug, Clone)]
pub struct Snapshot {
    dir: PathBuf,
    manifest: SnapshotManifest,
    lease: Option<Lease>,
}

/// A hold on a filtered snapshot (a shared lock on its `.readers` file): while one exists in
/// any process, [`SnapshotStore::evict_filtered`] leaves that snapshot alone. Cloning shares it;
/// the lock is released when the last clone is dropped (or the process ends).
#[derive(Debug, Clone)]
pub struct Lease {
    _locked: Arc<File>,
}

/// Whether `name` is a filtered snapshot's (`<Type>@<filters>-<hash>`).
fn is_filtered(name: &str) -> bool {
    name.contains('@')
}

/// `name` when it may name a folder of the store: a resource type name, or a filtered
/// snapshot's name.
fn check_name(name: &str) -> Result<&str> {
    let valid = match is_filtered(name) {
        false => check_type_name(name).is_ok(),
        true => is_filtered_name(name),
    };
    match valid {
        true => Ok(name),
        false => Err(Error::Snapshot(format!(
            "{} is neither a resource type name nor a filtered snapshot name",
            quoted(name)
        ))),
    }
}

/// Whether `name` has the shape `Pushdown::snapshot_name` gives: a resource type name, `@`,
/// at most 80 of `A-Za-z0-9-_.=`, `-`, then 8 lowercase hex digits.
fn is_filtered_name(name: &str) -> bool {
    let Some((resource_type, rest)) = name.split_once('@') else {
        return false;
    };
    let Some((filters, hash)) = rest.rsplit_once('-') else {
        return false;
    };
    check_type_name(resource_type).is_ok()
        && filters.len() <= 80
        && filters
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.=".contains(&b))
        && is_lower_hex(hash, 8)
}

/// Whether `id` has the shape [`new_snapshot_id`] gives: 17 digits, `-`, 8 lowercase hex digits.
fn is_snapshot_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(stamp, rand)| {
        stamp.len() == 17 && stamp.bytes().all(|b| b.is_ascii_digit()) && is_lower_hex(rand, 8)
    })
}

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks what a manifest read from disk makes paths of: its snapshot id, and its files, which
/// must be relative paths of plain names (`A-Za-z0-9_.-`, not starting with `.`) inside the
/// snapshot folder.
fn check_manifest_paths(manifest: &SnapshotManifest) -> std::result::Result<(), String> {
    if !is_snapshot_id(&manifest.snapshot) {
        return Err(format!(
            "snapshot {} is not a snapshot id",
            quoted(&manifest.snapshot)
        ));
    }
    let raw = manifest.raw.iter().map(|r| &r.path);
    let tables = manifest.tables.values().flat_map(|t| &t.files);
    for path in raw.chain(tables.map(|f| &f.path)) {
        let plain = |part: &str| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        };
        if !path.split('/').all(plain) {
            return Err(format!(
                "file {} is not a path inside the snapshot",
                quoted(path)
            ));
        }
    }
    Ok(())
}

/// Whether `file` is the file `path` names now.
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), path.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether `file` is the file `path` names now (elsewhere an open file cannot be removed).
#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

impl Snapshot {
    /// The snapshot's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &SnapshotManifest {
        &self.manifest
    }

    /// The name it is committed under: its resource type, or a filtered export's name.
    pub fn name(&self) -> String {
        let parent = self.dir.parent().and_then(Path::file_name);
        parent.map_or_else(
            || self.manifest.resource_type.clone(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    /// When the snapshot was committed.
    pub fn created(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.manifest.created_unix_ms)
    }

    /// The lease held on it (filtered snapshots only).
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// Time since the snapshot was committed.
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.created())
            .unwrap_or_default()
    }

    /// Absolute paths of the raw NDJSON (gzip) files.
    pub fn raw_paths(&self) -> Vec<PathBuf> {
        self.manifest
            .raw
            .iter()
            .map(|r| self.dir.join(&r.path))
            .collect()
    }

    /// The Parquet table of `mode`, if this snapshot has it.
    pub fn table(&self, mode: &str) -> Option<&TableFiles> {
        self.manifest.tables.get(mode)
    }

    /// The folder holding the Parquet files of `mode`.
    pub fn table_dir(&self, mode: &str) -> PathBuf {
        self.dir.join(mode)
    }

    /// The Arrow schema of the table of `mode`, read from its first Parquet footer.
    pub fn schema(&self, mode: &str) -> Result<SchemaRef> {
        let table = self.table(mode).ok_or_else(|| {
            Error::Snapshot(format!(
                "snapshot {} has no {mode} table",
                self.dir.display()
            ))
        })?;
        let first = table.files.first().ok_or_else(|| {
            Error::Snapshot(format!(
                "snapshot {} lists no {mode} file",
                self.dir.display()
            ))
        })?;
        let path = self.dir.join(&first.path);
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| Error::Snapshot(format!("{}: {e}", path.display())))?;
        Ok(builder.schema().clone())
    }
}

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
    fn relative_to(mut self, mode: &str) -> Self {
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
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value)
        .map_err(|e| Error::Snapshot(format!("cannot serialise manifest: {e}")))
}

/// A readable, unique folder name for a source: `host_port-hash` or `folder-hash`.
fn source_key(source: &str) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(source.as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    let readable = match url::Url::parse(source) {
        Ok(u) if u.has_host() => format!(
            "{}_{}",
            u.host_str().unwrap_or(""),
            u.port_or_known_default().unwrap_or(0)
        ),
        _ => Path::new(source)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let readable: String = readable
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{readable}-{hex}")
}

/// A sortable, unique snapshot id: UTC time to the millisecond plus a random suffix.
fn new_snapshot_id() -> String {
    let now = SystemTime::now();
    let stamp: String = rfc3339(now)
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{stamp}-{}", &rand[..8])
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
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789); // leap day 2024
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
    }

    /// Commits a snapshot named `name` of Patient with one resource.
    fn commit(store: &SnapshotStore, name: &str) {
        let input = store.dir().join(format!("{name}.ndjson"));
        fs::write(&input, "{\"resourceType\":\"Patient\",\"id\":\"1\"}\n").unwrap();
        let writer = store.begin_named(name, "Patient").unwrap();
        let (path, rel) = writer.raw_path(0);
        let (resources, bytes) = write_raw(&[input], None, &path).unwrap();
        let manifest = SnapshotManifest {
            raw: vec![RawFile {
                path: rel,
                resources,
                bytes,
            }],
            ..SnapshotManifest::default()
        };
        writer
            .commit(manifest, &[TableMode::default()], 64)
            .unwrap();
    }

    #[test]
    fn eviction_removes_the_least_recently_used_filtered_snapshots_not_leased_ones() {
        let cache = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(cache.path(), "http://example.org/fhir").unwrap();
        for name in [
            "Patient",
            "Patient@a-0000000a",
            "Patient@b-0000000b",
            "Patient@c-0000000c",
        ] {
            commit(&store, name);
        }
        let held = store.current("Patient@a-0000000a").unwrap().unwrap();
        assert!(held.lease().is_some());
        store.current("Patient@c-0000000c").unwrap().unwrap(); // used last
        // `a` is beyond the one kept but leased; `b` goes.
        assert_eq!(
            store.evict_filtered("Patient", 1).unwrap(),
            ["Patient@b-0000000b"]
        );
        assert!(store.current("Patient@b-0000000b").unwrap().is_none());
        assert!(!store.dir().join("Patient@b-0000000b").exists());
        assert_eq!(held.schema("flattened").unwrap().fields().len(), 2);
        drop(held);
        assert_eq!(
            store.evict_filtered("Patient", 1).unwrap(),
            ["Patient@a-0000000a"]
        );
        // The full snapshot is not a filtered one.
        assert!(store.current("Patient").unwrap().unwrap().lease().is_none());
        assert_eq!(
            store.evict_filtered("Patient", 0).unwrap(),
            ["Patient@c-0000000c"]
        );
        assert!(store.current("Patient").unwrap().is_some());

        // One being evicted (its lock held exclusively) is absent to readers.
        commit(&store, "Patient@d-0000000d");
        let evicting = File::options()
            .write(true)
            .open(store.dir().join("Patient@d-0000000d").join(LEASE_FILE))
            .unwrap();
        evicting.lock().unwrap();
        assert!(store.current("Patient@d-0000000d").unwrap().is_none());
        drop(evicting);
        assert!(store.current("Patient@d-0000000d").unwrap().is_some());
    }

    #[test]
    fn names_of_the_store_are_checked() {
        for name in [
            "Patient",
            "Patient@gender=female-0a1b2c3d",
            "Patient@-0a1b2c3d",
        ] {
            assert_eq!(check_name(name).unwrap(), name);
        }
        let rejected = [
            "",
            "..",
            "../../../victim",
            "Patient/..",
            "Patient@../../x-0a1b2c3d",
            "Patient@a/b-0a1b2c3d",
            "Patient@a-0A1B2C3D",
            "Patient@a-123",
            "../x@a-0a1b2c3d",
            "Patient@a",
        ];
        for name in rejected {
            assert!(check_name(name).is_err(), "{name:?} accepted");
        }
        assert!(is_snapshot_id(&new_snapshot_id()));
        for id in ["", "..", "20240101000000000-../../x", "2024-0a1b2c3d", "x"] {
            assert!(!is_snapshot_id(id), "{id:?}");
        }
        let cache = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(cache.path(), "http://example.org/fhir").unwrap();
        assert!(store.begin("../../../victim").is_err());
        assert!(
            store
                .begin_named("Patient@../x-0a1b2c3d", "Patient")
                .is_err()
        );
        assert!(store.current("../../../victim").is_err());
        assert!(store.evict_filtered("../x", 0).is_err());
        assert!(store.staging_dir("../x").is_err());
        assert_eq!(
            cache.path().read_dir().unwrap().count(),
            1,
            "only the store's folder"
        );
    }

    #[test]
    fn a_tampered_manifest_names_no_path_outside_its_snapshot() {
        let cache = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(cache.path(), "http://example.org/fhir").unwrap();
        commit(&store, "Patient");
        let path = store.manifest_path("Patient").unwrap();
        let good: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let tamper = |pointer: &str, value: &str| {
            let mut manifest = good.clone();
            *manifest.pointer_mut(pointer).unwrap() = value.into();
            fs::write(&path, manifest.to_string()).unwrap();
            store.current("Patient").unwrap_err().to_string()
        };
        let err = tamper("/snapshot", "../../..");
        assert!(
            err.contains(r#"snapshot "../../.." is not a snapshot id"#),
            "{err}"
        );
        let err = tamper("/raw/0/path", "../../../../etc/passwd");
        assert!(
            err.contains(r#"file "../../../../etc/passwd" is not a path"#),
            "{err}"
        );
        let err = tamper("/tables/flattened/files/0/path", "/etc/passwd");
        assert!(err.contains("is not a path inside the snapshot"), "{err}");
    }

    #[test]
    fn garbage_collection_removes_only_snapshot_folders() {
        let cache = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(cache.path(), "http://example.org/fhir").unwrap();
        commit(&store, "Patient");
        let foreign = store.dir().join("Patient").join("not-ours");
        fs::create_dir_all(&foreign).unwrap();
        commit(&store, "Patient");
        commit(&store, "Patient");
        assert!(foreign.is_dir(), "a folder the store did not make stays");
        let snapshots = fs::read_dir(store.dir().join("Patient"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(is_snapshot_id))
            .count();
        assert_eq!(snapshots, 2, "the current snapshot and the one before");
    }

    #[test]
    fn source_keys_are_readable_and_distinct() {
        let a = source_key("http://127.0.0.1:8080/fhir");
        let b = source_key("http://127.0.0.1:8080/other");
        assert!(a.starts_with("127.0.0.1_8080-"), "{a}");
        assert_ne!(a, b);
        assert!(source_key("/data/synthea-100").starts_with("synthea-100-"));
    }
}
