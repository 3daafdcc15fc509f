//! [`SnapshotStore`]: the snapshots of one source in one cache folder (opening it, the current
//! snapshot of a name, adding a mode's table, eviction of filtered snapshots, garbage
//! collection), and [`Snapshot`], a committed one as the store hands it out.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::datatypes::{Schema, SchemaRef};
use datafusion::parquet;

use super::TableFile;
use super::delta;
use super::lease::LEASE_FILE;
use super::manifest::{MANIFEST_FILE, read_manifest, to_json, write_atomic};
use super::names::{
    check_name, is_filtered, is_filtered_name, is_snapshot_id, new_snapshot_id, snapshot_time,
    source_key,
};
use super::writer::{TmpFolder, export_info, publish_tables};
use super::{Lease, SnapshotManifest, SnapshotWriter, TableFiles, convert_raw, mode_key};
use crate::error::quoted;
use crate::ndjson::{DecodeOptions, Strictness, TableMode};
use crate::r4::check_type_name;
use crate::{Error, Result};
use crate::{lock_file, private_dir};

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
    /// How long a superseded snapshot stays ([`SnapshotStore::with_retention`]).
    retention: Duration,
    /// Where the Delta tables are when not in `dir` ([`SnapshotStore::with_table_location`]).
    tables: Option<url::Url>,
}

impl SnapshotStore {
    /// Opens (creating it if needed) the store of `source` (a base URL or a folder path) under
    /// `cache_root`. The folder name is readable and unique: host or folder name plus a hash.
    pub fn open(cache_root: &Path, source: &str) -> Result<Self> {
        let dir = cache_root.join(source_key(source));
        for sub in ["tmp", "staging"] {
            private_dir::create(&dir.join(sub)).map_err(|e| Error::io(dir.join(sub), e))?;
        }
        // Everything of the source lies in `dir`: owner only, also when an earlier version
        // made it with the default mode.
        if let Err(e) = private_dir::restrict(&dir) {
            tracing::warn!("{} stays readable by others: {e}", dir.display());
        }
        let info = dir.join("source.json");
        if !info.exists() {
            write_atomic(&info, &to_json(&serde_json::json!({ "source": source }))?)?;
        }
        remove_orphans(&dir.join("tmp"));
        Ok(Self::at(dir))
    }

    /// The store in `dir`, a folder [`SnapshotStore::open`] made.
    pub(super) fn at(dir: PathBuf) -> Self {
        Self {
            dir,
            retention: Duration::ZERO,
            tables: None,
        }
    }

    /// Writes the types' Delta tables at `location` (`s3://bucket/prefix`, `gs://...`,
    /// `az://...`, or a folder's `file://` URL) instead of the store's folder: each commit
    /// uploads the new snapshot's files to `<location>/<source-key>/<Type>/<mode>/<snapshot>/`
    /// and commits a version there, where other engines (and other machines) read them
    /// (filtered snapshots' tables stay in the store's folder, [`SnapshotStore::table_url`]).
    /// The store's folder keeps its copy of the files, which fhirflight's own queries read, and
    /// the raw NDJSON. Each snapshot's raw NDJSON and manifest go there too
    /// (`<Type>/<snapshot>/`), so that another machine with the same location adopts the latest
    /// snapshot instead of exporting again ([`SnapshotStore::adopt`]). Credentials come from
    /// each cloud's standard environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`). Fails for a location
    /// no object store serves.
    pub fn with_table_location(self, location: url::Url) -> Result<Self> {
        super::delta::check_location(&location)?;
        Ok(Self {
            tables: Some(location),
            ..self
        })
    }

    /// Whether the Delta tables of `name` are at the tables' location rather than in the
    /// store's folder ([`SnapshotStore::table_url`]).
    pub(super) fn table_elsewhere(&self, name: &str) -> bool {
        self.tables.is_some() && !is_filtered(name)
    }

    /// The Delta table of `mode` of the snapshots named `name`: at the tables' location for a
    /// resource type, else in the store's folder (`<name>/<mode>/`). A filtered snapshot's table
    /// stays there: a subset of the type that serves the queries of its filters, evicted with
    /// them, not a table for others.
    pub fn table_url(&self, name: &str, mode: &str) -> Result<url::Url> {
        let check = |c: char| c.is_ascii_alphanumeric() || c == '-';
        if !mode.chars().all(check) || mode.is_empty() {
            return Err(Error::snapshot(format!("{} is not a mode", quoted(mode))));
        }
        self.delta_url(name, mode)
    }

    /// Where other machines read the `mode` files of `snapshot` (a cluster's executors): its
    /// Delta table at the tables' location, where each commit uploads them; none when they are
    /// only in the store's folder (no location, a filtered snapshot, format 1).
    pub fn table_location(&self, snapshot: &Snapshot, mode: &str) -> Result<Option<url::Url>> {
        match self.published(snapshot) {
            true => self.table_url(&snapshot.name(), mode).map(Some),
            false => Ok(None),
        }
    }

    /// Where other machines read the Parquet copy of the view `key` over `snapshot`: the view's
    /// Delta table at the tables' location, where [`SnapshotStore::publish_view`] uploads the
    /// copy made for a current snapshot; none as for [`SnapshotStore::table_location`].
    pub fn view_location(&self, snapshot: &Snapshot, key: &str) -> Result<Option<url::Url>> {
        match self.published(snapshot) {
            true => self.view_url(&snapshot.name(), key).map(Some),
            false => Ok(None),
        }
    }

    /// Whether `snapshot`'s tables are published at the tables' location.
    fn published(&self, snapshot: &Snapshot) -> bool {
        snapshot.manifest.format >= 2 && self.table_elsewhere(&snapshot.name())
    }

    /// The Delta table of the view `key` (`<view>-<hash>`, [`Snapshot::view_dir`]) over the
    /// snapshots named `name`: `<name>/views/<key>/`, where [`SnapshotStore::table_url`] puts
    /// the name's tables.
    pub fn view_url(&self, name: &str, key: &str) -> Result<url::Url> {
        let check = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if !key.chars().all(check) || key.is_empty() {
            return Err(Error::snapshot(format!("{} is not a view", quoted(key))));
        }
        self.delta_url(name, &format!("{VIEWS}/{key}"))
    }

    /// The Delta table at `path` (checked by the caller) in the folder of `name`.
    fn delta_url(&self, name: &str, path: &str) -> Result<url::Url> {
        let Some(home) = self.home_url(name)? else {
            return super::delta::local_url(&self.dir.join(name).join(path));
        };
        home.join(&format!("{path}/"))
            .map_err(|e| Error::config(format!("{home}: {e}")))
    }

    /// The folder of `name` at the tables' location, `<location>/<source-key>/<name>/`, where
    /// its Delta tables are and its snapshots' home ([`super::home`]); none when its tables
    /// are in the store's folder.
    pub(super) fn home_url(&self, name: &str) -> Result<Option<url::Url>> {
        let name = check_name(name)?;
        match self.table_elsewhere(name) {
            true => self.at_location(&format!("{name}/")),
            false => Ok(None),
        }
    }

    /// Where the export `job_key` (the name of its [staging folder](Self::staging_dir)) is
    /// staged at the tables' location, `<location>/<source-key>/staging/<job-key>/`, for the
    /// machines sharing it ([`super::Claim`]); none without a location.
    pub fn staging_home(&self, job_key: &str) -> Result<Option<url::Url>> {
        self.staging_dir(job_key)?;
        self.at_location(&format!("staging/{job_key}/"))
    }

    /// A random id of this store's folder, made once: a claim names it
    /// ([`super::Claim::take`]), so that another process of this folder knows the claim of one
    /// that died.
    pub fn folder_id(&self) -> Result<String> {
        let path = self.dir.join("folder-id");
        if let Ok(id) = fs::read_to_string(&path) {
            return Ok(id);
        }
        // Written aside and linked into place: the first process's id is everyone's.
        let id = uuid::Uuid::new_v4().simple().to_string();
        let aside = self.dir.join("tmp").join(format!("folder-id.{id}"));
        write_atomic(&aside, id.as_bytes())?;
        let linked = fs::hard_link(&aside, &path);
        let _ = fs::remove_file(&aside);
        match linked {
            Ok(()) => Ok(id),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                fs::read_to_string(&path).map_err(|e| Error::io(&path, e))
            }
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// `<location>/<source-key>/<path>` at the tables' location, if there is one.
    fn at_location(&self, path: &str) -> Result<Option<url::Url>> {
        let Some(location) = &self.tables else {
            return Ok(None);
        };
        let key = self.dir.file_name().unwrap_or_default().to_string_lossy();
        let base = location.as_str().trim_end_matches('/');
        let url = url::Url::parse(&format!("{base}/{key}/{path}"));
        url.map(Some)
            .map_err(|e| Error::config(format!("{location}: {e}")))
    }

    /// Commits the Parquet copy of the view `key` over `snapshot` (the one `file` in its
    /// [`Snapshot::view_dir`], of `schema`) as a version of the view's Delta table
    /// ([`SnapshotStore::view_url`]), the export's metadata and the view's name in the commit,
    /// when `snapshot` is still the current one of its name: a copy made for an older snapshot
    /// (or one of format 1) stays fhirflight's own. Returns the version, none when not current.
    pub fn publish_view(
        &self,
        snapshot: &Snapshot,
        key: &str,
        file: &TableFile,
        schema: &Schema,
    ) -> Result<Option<u64>> {
        if snapshot.manifest.format < 2 {
            return Ok(None);
        }
        let name = snapshot.name();
        let url = self.view_url(&name, key)?;
        let id = &snapshot.manifest.snapshot;
        let local = snapshot.view_dir(key).join(&file.path);
        let file = TableFile {
            path: format!("{id}/{}", file.path),
            ..file.clone()
        };
        if self.table_elsewhere(&name) {
            delta::upload(&url, &[(local, file.path.clone())])?;
        }
        let _lock = self.lock()?;
        let current = read_manifest(&self.manifest_path(&name)?)?;
        if current.is_none_or(|m| m.snapshot != *id) {
            return Ok(None);
        }
        let mut info = export_info(&snapshot.manifest);
        info["view"] = key.into();
        let version = delta::publish(&url, &[file], Some(schema), info, delta::Change::Overwrite)?;
        Ok(Some(version))
    }

    /// Keeps a snapshot for `retention` after a newer commit of its name supersedes it (default
    /// zero: until nobody reads it), so that its version of the Delta tables stays readable:
    /// `fhir_snapshot`, another engine's time travel. Commits and [`SnapshotStore::clean`]
    /// remove it after that, once nobody reads it; [`SnapshotStore::clear`] does not wait.
    pub fn with_retention(self, retention: Duration) -> Self {
        Self { retention, ..self }
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long a superseded snapshot stays ([`SnapshotStore::with_retention`]).
    pub fn retention(&self) -> Duration {
        self.retention
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
            false => Err(Error::snapshot(format!(
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
        // A commit may supersede (and garbage-collect) the snapshot between the manifest read
        // and the hold on its folder: then the manifest names a newer one.
        for _ in 0..3 {
            let Some(manifest) = read_manifest(&path)? else {
                return Ok(None);
            };
            let dir = self.named_dir(name)?.join(&manifest.snapshot);
            if let Some(reading) = Lease::take(&dir.join(LEASE_FILE))? {
                return Ok(Some(Snapshot {
                    dir,
                    manifest,
                    lease: lease.clone(),
                    _reading: reading,
                }));
            }
        }
        Err(Error::snapshot(format!(
            "{}: replaced three times while being opened",
            path.display()
        )))
    }

    /// A lease on the filtered snapshot `name`, recording its use; `None` when it does not
    /// exist or is being evicted.
    pub(super) fn lease(&self, name: &str) -> Result<Option<Lease>> {
        Lease::take(&self.named_dir(name)?.join(LEASE_FILE))
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
            // Held until the folder is gone, so that no reader leases it in between.
            let Ok(Some(lock)) = lock_file::try_lock_exclusive(&path) else {
                continue; // being read
            };
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
            if check_type_name(&name).is_ok() && entry.path().join(MANIFEST_FILE).is_file() {
                types.push(name);
            }
        }
        types.sort();
        Ok(types)
    }

    /// The columns of `resource_type`'s tables of `mode` (a [`mode_key`]): `schemas[0]` (a
    /// snapshot's own, whose fields come first and keep their types), then every other column of
    /// `schemas` and of every earlier call for this type and mode, which are kept in
    /// `columns/<Type>.<mode>.arrow`. So a type's columns never shrink: a snapshot without one
    /// (an empty or filtered export) reads it as null. A column with two types keeps the first.
    pub fn columns(
        &self,
        resource_type: &str,
        mode: &str,
        schemas: &[SchemaRef],
    ) -> Result<SchemaRef> {
        use arrow::datatypes::Fields;
        let check = |c: char| c.is_ascii_alphanumeric() || c == '-';
        if !mode.chars().all(check) {
            return Err(Error::snapshot(format!("{} is not a mode", quoted(mode))));
        }
        let dir = self.dir.join("columns");
        let path = dir.join(format!("{}.{mode}.arrow", check_type_name(resource_type)?));
        let _lock = self.lock()?;
        let kept = match fs::File::open(&path) {
            Ok(file) => arrow::ipc::reader::FileReader::try_new(file, None)
                .map_err(|e| Error::snapshot_with(path.display().to_string(), e))?
                .schema(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SchemaRef::new(Schema::empty()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let union = |schemas: &mut dyn Iterator<Item = &SchemaRef>| {
            let mut fields: Vec<arrow::datatypes::FieldRef> = Vec::new();
            for field in schemas.flat_map(|s| s.fields().iter()) {
                if !fields.iter().any(|f| f.name() == field.name()) {
                    fields.push(std::sync::Arc::clone(field));
                }
            }
            Fields::from(fields)
        };
        let all = union(&mut std::iter::once(&kept).chain(schemas));
        if all.len() > kept.fields().len() {
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            let schema = Schema::new(all.clone());
            let mut bytes = Vec::new();
            let written = arrow::ipc::writer::FileWriter::try_new(&mut bytes, &schema)
                .and_then(|mut w| w.finish());
            written.map_err(|e| Error::snapshot_with(path.display().to_string(), e))?;
            write_atomic(&path, &bytes)?;
        }
        let own = schemas
            .first()
            .map(|s| s.fields().clone())
            .unwrap_or_default();
        let mut fields: Vec<arrow::datatypes::FieldRef> = own.iter().cloned().collect();
        for field in all.iter().filter(|f| own.find(f.name()).is_none()) {
            fields.push(std::sync::Arc::new(
                field.as_ref().clone().with_nullable(true),
            ));
        }
        Ok(SchemaRef::new(Schema::new(fields)))
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
        let tmp = TmpFolder::take(&dir)?;
        fs::create_dir_all(dir.join("raw")).map_err(|e| Error::io(&dir, e))?;
        Ok(SnapshotWriter {
            store: self.clone(),
            name: name.to_owned(),
            resource_type: resource_type.to_owned(),
            id,
            dir,
            _tmp: tmp,
            tables: Vec::new(),
            converted: Vec::new(),
            carry: None,
        })
    }

    /// Adds the Parquet table of `mode` to a committed snapshot that lacks it (switching mode
    /// reads the snapshot's raw NDJSON again; no export), with the batch size and line bound of
    /// `options`. Returns the updated snapshot.
    pub fn add_table(
        &self,
        snapshot: &Snapshot,
        mode: &TableMode,
        options: DecodeOptions,
    ) -> Result<Snapshot> {
        let key = mode_key(mode);
        let target = snapshot.table_dir(&key);
        let parent = target.parent().unwrap_or(&snapshot.dir);
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let id = &snapshot.manifest.snapshot;
        let tmp = parent.join(format!(".{id}.{}", uuid::Uuid::new_v4().simple()));
        // The snapshot was committed with its bad lines skipped (or none): the same again.
        let (table, schema, warnings) = convert_raw(
            &snapshot.raw_paths(),
            &snapshot.manifest.resource_type,
            mode,
            &options.with_strictness(Strictness::Lenient),
            &tmp,
            &|_| {},
        )?;
        let delta = snapshot.manifest.format >= 2;
        let columns = match delta {
            true => {
                let resource_type = &snapshot.manifest.resource_type;
                vec![(key.clone(), self.columns(resource_type, &key, &[schema])?)]
            }
            false => Vec::new(),
        };
        let _lock = self.lock()?;
        // Someone else may have committed a newer snapshot meanwhile: only touch ours.
        if target.exists() {
            fs::remove_dir_all(&target).map_err(|e| Error::io(&target, e))?;
        }
        fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
        let mut manifest = snapshot.manifest.clone();
        let folder = match delta {
            true => &manifest.snapshot,
            false => &key,
        };
        manifest
            .tables
            .insert(key.clone(), table.relative_to(folder));
        manifest.add_conversion_warnings(warnings);
        let name = snapshot.name();
        let current = self.current(&name)?;
        if current.is_some_and(|c| c.manifest.snapshot == manifest.snapshot) {
            publish_tables(&mut manifest, self, &name, &columns);
            write_atomic(&self.manifest_path(&name)?, &to_json(&manifest)?)?;
        }
        Ok(Snapshot {
            dir: snapshot.dir.clone(),
            manifest,
            lease: snapshot.lease.clone(),
            _reading: snapshot._reading.clone(),
        })
    }

    /// The folder of the snapshots named `name` (a type's, or a filtered export's): checked by
    /// [`check_name`], so never a path outside the store.
    pub(super) fn named_dir(&self, name: &str) -> Result<PathBuf> {
        Ok(self.dir.join(check_name(name)?))
    }

    pub(super) fn manifest_path(&self, name: &str) -> Result<PathBuf> {
        Ok(self.named_dir(name)?.join(MANIFEST_FILE))
    }

    /// Exclusive lock of the store, released on drop (also when the process dies).
    pub(super) fn lock(&self) -> Result<File> {
        let path = self.dir.join(".lock");
        lock_file::lock_exclusive(&path).map_err(|e| Error::io(&path, e))
    }

    /// Removes the snapshots in `type_dir` other than `keep` that were superseded at least
    /// `retention` ago and that nobody reads (whose `.readers` lock it can take exclusively; one
    /// being read stays for a later collection): each snapshot's folder and its tables' folders
    /// in the Delta tables beside it (`<mode>/<snapshot>/`, whose versions then read no more),
    /// but for the files a snapshot that stays holds (an incremental refresh carries files
    /// over). Then the tables' folders whose snapshot is gone, with the same exception, and the
    /// temporary folders of writers that are gone. Only folders named like snapshot ids (or a
    /// conversion's `.<snapshot>.<hex>`) are touched: the store made those, whatever else lies
    /// there is not its own. Returns the folders and files removed and their bytes.
    pub(super) fn collect_garbage(
        &self,
        type_dir: &Path,
        keep: &[&str],
        retention: Duration,
    ) -> Vec<(PathBuf, u64)> {
        let entries = |dir: &Path| -> Vec<(String, PathBuf)> {
            fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| Some((e.file_name().to_str()?.to_owned(), e.path())))
                .collect()
        };
        let (snapshots, others): (Vec<_>, Vec<_>) = entries(type_dir)
            .into_iter()
            .partition(|(n, _)| is_snapshot_id(n));
        // The tables' folders (`<mode>/`, `views/<view>/`, a Delta table each).
        let tables: Vec<PathBuf> = others
            .into_iter()
            .flat_map(|(name, path)| match name == VIEWS {
                true => entries(&path).into_iter().map(|(_, p)| p).collect(),
                false => vec![path],
            })
            .collect();
        // A snapshot was superseded when the next one of its name was made (ids begin with
        // their creation time); one that none follows is not kept.
        let retained = |id: &str| {
            let next = snapshots
                .iter()
                .map(|(n, _)| n.as_str())
                .chain(keep.iter().copied());
            let since = next.filter(|n| *n > id).min().and_then(snapshot_time);
            since.is_some_and(|t| t.elapsed().unwrap_or_default() < retention)
        };
        // Each held until its folders are gone, so that no reader takes them in between.
        let going: Vec<_> = snapshots
            .iter()
            .filter(|(n, _)| !keep.contains(&n.as_str()) && !retained(n))
            .filter_map(
                |(id, path)| match lock_file::try_lock_exclusive(&path.join(LEASE_FILE)) {
                    Ok(Some(unread)) => Some((id, path, unread)),
                    _ => None,
                },
            )
            .collect();
        let staying = snapshots
            .iter()
            .filter(|(n, _)| !going.iter().any(|(id, _, _)| *id == n))
            .map(|(_, path)| path.as_path());
        let Some(held) = held_files(staying) else {
            // What a snapshot that stays holds is not known: its tables' files all stay.
            return remove_orphans(&self.dir.join("tmp"));
        };
        let mut removed = Vec::new();
        let mut remove = |path: &Path| removed.extend(remove_unheld(path, &held));
        for (id, path, _unread) in &going {
            for table in &tables {
                let folder = table.join(id);
                if folder.is_dir() {
                    remove(&folder);
                }
            }
            remove(path);
        }
        // A table's folder whose snapshot is gone (a commit that died midway), or a
        // conversion's (`.<snapshot>.<hex>`, whose process died: a live one holds its snapshot).
        for (name, path) in tables.iter().flat_map(|t| entries(t)) {
            let id = name
                .strip_prefix('.')
                .map_or(name.as_str(), |n| n.split_once('.').map_or(n, |(id, _)| id));
            let live = keep.contains(&id) || snapshots.iter().any(|(n, _)| n == id);
            if is_snapshot_id(id) && !live {
                remove(&path);
            }
        }
        removed.extend(remove_orphans(&self.dir.join("tmp")));
        removed
    }
}

/// The table files (absolute paths) that the snapshots in the folders `staying` hold in other
/// snapshots' folders, as each snapshot's own manifest lists them (one without holds only its
/// own folders'); none when a manifest cannot be read.
fn held_files<'a>(staying: impl Iterator<Item = &'a Path>) -> Option<HashSet<PathBuf>> {
    let mut held = HashSet::new();
    for dir in staying {
        let manifest = match read_manifest(&dir.join(MANIFEST_FILE)) {
            Ok(Some(manifest)) => manifest,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("{e}: its tables' files all stay");
                return None;
            }
        };
        for (mode, table) in &manifest.tables {
            let root = table_root(dir, manifest.format, mode);
            held.extend(table.files.iter().map(|f| root.join(&f.path)));
        }
    }
    Some(held)
}

/// Removes the folder `path`, but for the files of `held` in it (then only the others go).
/// Returns what was removed and its bytes.
fn remove_unheld(path: &Path, held: &HashSet<PathBuf>) -> Vec<(PathBuf, u64)> {
    let mut removed = Vec::new();
    let mut remove = |path: PathBuf, gone: std::io::Result<()>, bytes: u64| match gone {
        Ok(()) => removed.push((path, bytes)),
        Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
    };
    if !held.iter().any(|f| f.starts_with(path)) {
        let bytes = folder_bytes(path);
        remove(path.to_owned(), fs::remove_dir_all(path), bytes);
        return removed;
    }
    for entry in fs::read_dir(path).into_iter().flatten().flatten() {
        let file = entry.path();
        if !held.contains(&file) {
            let bytes = entry.metadata().map_or(0, |m| m.len());
            remove(file.clone(), fs::remove_file(&file), bytes);
        }
    }
    removed
}

impl SnapshotStore {
    /// The cleanup policy, as `fhirflight cache gc` applies it; it never removes what a running
    /// process reads, writes or exports into. First, a Delta table whose latest version is not
    /// the current snapshot (a commit died between the two) gets a version that is again. Then:
    /// 1. snapshot folders superseded by a newer commit of their name more than the store's
    ///    [retention](SnapshotStore::with_retention) ago, once nobody reads them (commits do
    ///    this too), with their tables' folders; at [the tables' location](SnapshotStore::with_table_location),
    ///    the files only versions superseded that long ago hold (Delta's vacuum), and the
    ///    snapshots superseded that long ago with their raw files;
    /// 2. `tmp/` folders of writers that are gone (opening the store does this too);
    /// 3. `staging/` folders (the downloads a stopped export keeps for its resume) that no
    ///    export holds and that nothing touched for `staging_max_age`: by then the server's
    ///    files have expired and the job cannot be resumed; and lock files left without their
    ///    folder. At the tables' location, the staging of exports nothing claimed for that
    ///    long ([`super::Claim`]).
    ///
    /// Returns each folder removed with its bytes.
    pub fn clean(&self, staging_max_age: Duration) -> Result<Vec<(PathBuf, u64)>> {
        let _lock = self.lock()?;
        let mut removed = Vec::new();
        let mut staging_home = None;
        for entry in fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if check_name(&name).is_err() || !entry.path().is_dir() {
                continue;
            }
            // The manifest names the current snapshot; without one, none is current. One that
            // cannot be read names nothing for certain: its folders stay.
            let current = match read_manifest(&self.manifest_path(&name)?) {
                Ok(manifest) => manifest.map(|m| {
                    // The exports' staging is beside the types at the tables' location.
                    let table = m.tables.values().find_map(|t| t.delta_table.as_ref());
                    staging_home = staging_home
                        .take()
                        .or_else(|| table?.join("../../staging/").ok());
                    self.vacuum(&name, self.reconcile(&name, m)).snapshot
                }),
                Err(e) => {
                    tracing::warn!("{name} left as it is: {e}");
                    continue;
                }
            };
            let keep: Vec<&str> = current.as_deref().into_iter().collect();
            removed.extend(self.collect_garbage(&entry.path(), &keep, self.retention));
        }
        removed.extend(remove_orphans(&self.dir.join("tmp")));
        removed.extend(self.clean_staging(staging_max_age));
        if let Some(home) = staging_home {
            match super::staging::collect(&home, staging_max_age) {
                Ok(0) => {}
                Ok(n) => tracing::info!("{home}: {n} files of stopped exports removed"),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        Ok(removed)
    }

    /// Makes each Delta table of `manifest` (the current snapshot of `name`) in the store's
    /// folder hold that snapshot again when a later version does not: a commit that died
    /// between its Delta versions and its manifest left them naming files that are no
    /// snapshot's, which collection removes.
    /// Returns the manifest, with the new versions recorded.
    fn reconcile(&self, name: &str, mut manifest: SnapshotManifest) -> SnapshotManifest {
        let Ok(type_dir) = self.named_dir(name) else {
            return manifest;
        };
        let mut info = export_info(&manifest);
        info["reconciled"] = true.into();
        let mut changed = false;
        // Only the store's own tables: a later version of a table elsewhere is another
        // machine's export (or one of ours that died, whose uploaded files still read there).
        let own = manifest
            .tables
            .iter_mut()
            .filter(|(_, t)| t.delta_table.is_none());
        for (key, table) in own {
            let Ok(url) = delta::local_url(&type_dir.join(key)) else {
                continue;
            };
            let ahead = match (table.delta_version, delta::latest_version(&url)) {
                (Some(ours), Ok(Some(latest))) => latest > ours,
                (_, Err(e)) => {
                    tracing::warn!("{e}");
                    false
                }
                _ => false,
            };
            if ahead {
                match delta::publish(
                    &url,
                    &table.files,
                    None,
                    info.clone(),
                    delta::Change::Overwrite,
                ) {
                    Ok(version) => (table.delta_version, changed) = (Some(version), true),
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        }
        if changed {
            let written = self
                .manifest_path(name)
                .and_then(|path| write_atomic(&path, &to_json(&manifest)?));
            if let Err(e) = written {
                tracing::warn!("{e}");
            }
        }
        manifest
    }

    /// Removes, from each Delta table of `manifest` and of the views of `name` at the tables'
    /// location, the files only versions superseded more than the retention ago hold, and
    /// uploads no version names (`delta::ORPHAN_AGE`); the store's own folder is collected with
    /// its snapshots. Returns the manifest.
    fn vacuum(&self, name: &str, manifest: SnapshotManifest) -> SnapshotManifest {
        let tables: Vec<url::Url> = manifest
            .tables
            .values()
            .filter_map(|t| t.delta_table.clone())
            .collect();
        // The views' tables are beside the type's ([`SnapshotStore::view_url`]), where a store
        // opened without the location (`cache gc`) finds them too.
        let views = fs::read_dir(self.dir.join(name).join(VIEWS));
        let views = views.into_iter().flatten().flatten().filter_map(|e| {
            let key = e.file_name().to_str()?.to_owned();
            self.view_url(name, &key).ok()?;
            tables.first()?.join(&format!("../{VIEWS}/{key}/")).ok()
        });
        let views: Vec<url::Url> = views.collect();
        for url in tables.iter().chain(&views) {
            match delta::vacuum(url, self.retention) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    "{url}: {n} files removed (of superseded versions, or uploads no version names)"
                ),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        // The snapshots' home is the tables' folder ([`SnapshotStore::home_url`]).
        if let Some(home) = tables.first().and_then(|t| t.join("../").ok()) {
            match super::home::collect(&home, &manifest.snapshot, self.retention) {
                Ok(0) => {}
                Ok(n) => tracing::info!("{home}: {n} files of superseded snapshots removed"),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        manifest
    }

    /// Point 3 of [`SnapshotStore::clean`].
    fn clean_staging(&self, max_age: Duration) -> Vec<(PathBuf, u64)> {
        let staging = self.dir.join("staging");
        let mut removed = Vec::new();
        for entry in fs::read_dir(&staging).into_iter().flatten().flatten() {
            let path = entry.path();
            let Some(key) = path.file_stem().and_then(|k| k.to_str()) else {
                continue;
            };
            let Ok(dir) = self.staging_dir(key) else {
                continue;
            };
            let lock = dir.with_extension("lock");
            // Held while an export runs there; held here until the folder is gone.
            let Ok(Some(_idle)) = lock_file::try_lock_exclusive(&lock) else {
                continue;
            };
            if dir.is_dir() {
                if last_touched(&dir).elapsed().unwrap_or_default() < max_age {
                    continue;
                }
                let bytes = folder_bytes(&dir);
                match fs::remove_dir_all(&dir) {
                    Ok(()) => removed.push((dir, bytes)),
                    Err(e) => {
                        tracing::warn!("cannot remove {}: {e}", dir.display());
                        continue;
                    }
                }
            }
            let _ = fs::remove_file(&lock);
        }
        removed
    }
}

/// What [`SnapshotStore::clear`] removed, and what it left to running processes.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Cleared {
    /// Each folder or file removed, with its bytes.
    pub removed: Vec<(PathBuf, u64)>,
    /// Snapshot folders a running process reads: no longer current, they go once unread (at
    /// the next commit of their name, or [`SnapshotStore::clean`]).
    pub kept: Vec<PathBuf>,
}

impl SnapshotStore {
    /// Removes the snapshots of `resource_type` (its full and filtered ones, and the columns
    /// kept for it) or, with `None`, all the store holds: also the folders of writers that are
    /// gone and the downloads of stopped exports no export holds (they are not resumed then).
    ///
    /// It never removes what a running process reads or exports into: each manifest goes first,
    /// so no new reader takes its snapshot (the next query exports again), then every snapshot
    /// folder nobody reads; one still read is [kept](Cleared::kept). The store's folder stays,
    /// as a running process may have the store open.
    ///
    /// ```
    /// # fn main() -> fhirflight::Result<()> {
    /// let cache = tempfile::tempdir().unwrap();
    /// let store = fhirflight::snapshot::SnapshotStore::open(cache.path(), "https://fhir.example/r4")?;
    /// let cleared = store.clear(Some("Patient"))?;
    /// assert!(cleared.removed.is_empty() && cleared.kept.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn clear(&self, resource_type: Option<&str>) -> Result<Cleared> {
        let resource_type = resource_type.map(check_type_name).transpose()?;
        // `Patient` and `Patient@...`, its columns `Patient.<mode>.arrow`; or everything.
        let of_type = |name: &str, separator: char| {
            resource_type.is_none_or(|t| {
                name.strip_prefix(t)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(separator))
            })
        };
        let _lock = self.lock()?;
        let mut cleared = Cleared::default();
        for entry in fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if check_name(&name).is_ok() && entry.path().is_dir() && of_type(&name, '@') {
                self.clear_name(&name, &mut cleared)?;
            }
        }
        let columns = self.dir.join("columns");
        for entry in fs::read_dir(&columns).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".arrow") && of_type(&name, '.') {
                let bytes = entry.metadata().map_or(0, |m| m.len());
                fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
                cleared.removed.push((entry.path(), bytes));
            }
        }
        if resource_type.is_none() {
            cleared
                .removed
                .extend(remove_orphans(&self.dir.join("tmp")));
            cleared.removed.extend(self.clean_staging(Duration::ZERO));
        }
        Ok(cleared)
    }

    /// Unpublishes the snapshots named `name` and removes those nobody reads; the named folder
    /// goes too once empty.
    fn clear_name(&self, name: &str, cleared: &mut Cleared) -> Result<()> {
        let dir = self.named_dir(name)?;
        // Every reader of a filtered snapshot also holds its named folder's lease: taken here,
        // nobody reads any of it, and nobody leases it before it is gone.
        let unleased = match is_filtered(name) {
            true => lock_file::try_lock_exclusive(&dir.join(LEASE_FILE))
                .ok()
                .flatten(),
            false => None,
        };
        let manifest = dir.join("manifest.json");
        let bytes = manifest.metadata().map_or(0, |m| m.len());
        match fs::remove_file(&manifest) {
            Ok(()) => cleared.removed.push((manifest, bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(manifest, e)),
        }
        cleared
            .removed
            .extend(self.collect_garbage(&dir, &[], Duration::ZERO));
        let read: Vec<PathBuf> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(is_snapshot_id))
            .map(|e| e.path())
            .collect();
        if read.is_empty() && (unleased.is_some() || !is_filtered(name)) {
            // Its Delta tables (its views' too), whose files are gone.
            let folders = |dir: &Path| -> Vec<PathBuf> {
                let entries = fs::read_dir(dir).into_iter().flatten().flatten();
                entries.map(|e| e.path()).collect()
            };
            let views = dir.join(VIEWS);
            for table in folders(&dir)
                .into_iter()
                .chain(folders(&views))
                .filter(|p| p.join("_delta_log").is_dir())
            {
                let bytes = folder_bytes(&table);
                fs::remove_dir_all(&table).map_err(|e| Error::io(&table, e))?;
                cleared.removed.push((table, bytes));
            }
            let _ = fs::remove_dir(&views);
            if unleased.is_some() {
                let _ = fs::remove_file(dir.join(LEASE_FILE));
            }
            // Not empty when it holds what the store did not make: then it stays.
            let _ = fs::remove_dir(&dir);
        }
        cleared.kept.extend(read);
        Ok(())
    }
}

/// The stores of `cache_root`: its folders holding a `source.json`, sorted; none when it does
/// not exist.
pub(super) fn store_dirs(cache_root: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(cache_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(cache_root, e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let dir = entry.map_err(|e| Error::io(cache_root, e))?.path();
        if dir.join("source.json").is_file() {
            dirs.push(dir);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Removes what [`SnapshotStore::clean`] would in every store of `cache_root` (each folder
/// holding a `source.json`), with superseded snapshots kept for `retention`
/// ([`SnapshotStore::with_retention`]); returns each folder removed with its bytes.
pub fn clean_cache(
    cache_root: &Path,
    staging_max_age: Duration,
    retention: Duration,
) -> Result<Vec<(PathBuf, u64)>> {
    let mut removed = Vec::new();
    for dir in store_dirs(cache_root)? {
        let store = SnapshotStore::at(dir).with_retention(retention);
        removed.extend(store.clean(staging_max_age)?);
    }
    Ok(removed)
}

/// When anything in `dir` (the folder or an entry of it) last changed.
fn last_touched(dir: &Path) -> SystemTime {
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    let entries = fs::read_dir(dir).into_iter().flatten().flatten();
    entries
        .filter_map(|e| modified(&e.path()))
        .chain(modified(dir))
        .max()
        .unwrap_or(UNIX_EPOCH)
}

/// The bytes of the files under `path`.
fn folder_bytes(path: &Path) -> u64 {
    fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => folder_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Removes the temporary folders of `tmp` whose writer is gone (a process killed or interrupted
/// mid-write): those whose owner lock ([`owner_lock`]) nobody holds. Returns them with their
/// bytes.
fn remove_orphans(tmp: &Path) -> Vec<(PathBuf, u64)> {
    let mut removed = Vec::new();
    let locks = fs::read_dir(tmp).into_iter().flatten().flatten();
    for lock in locks.map(|e| e.path()) {
        let Some(id) = lock.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if lock.extension().is_none_or(|e| e != "lock") || !is_snapshot_id(id) {
            continue;
        }
        if let Ok(Some(_free)) = lock_file::try_lock_exclusive(&lock) {
            let dir = tmp.join(id);
            if dir.exists() {
                tracing::info!("removing {}, left by a writer that is gone", dir.display());
                let bytes = folder_bytes(&dir);
                if fs::remove_dir_all(&dir).is_ok() {
                    removed.push((dir, bytes));
                }
            }
            let _ = fs::remove_file(&lock);
        }
    }
    removed
}

/// The folder of a name's view tables: `<name>/views/<view>/`, a Delta table each.
const VIEWS: &str = "views";

/// A committed snapshot of one resource type.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(super) dir: PathBuf,
    pub(super) manifest: SnapshotManifest,
    pub(super) lease: Option<Lease>,
    /// The hold on its folder ([`SnapshotStore::current`]): garbage collection passes it by
    /// while this snapshot, or a table or scan made from it, lives.
    pub(super) _reading: Lease,
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

    /// The folder the paths of `mode`'s files are relative to: the Delta table of `mode`
    /// (`<name>/<mode>/`), or for a snapshot of format 1 the snapshot's folder.
    pub fn table_root(&self, mode: &str) -> PathBuf {
        table_root(&self.dir, self.manifest.format, mode)
    }

    /// The folder holding the Parquet files of `mode`: `<name>/<mode>/<snapshot>/` (format 1:
    /// `<name>/<snapshot>/<mode>/`).
    pub fn table_dir(&self, mode: &str) -> PathBuf {
        match self.manifest.format >= 2 {
            true => self.table_root(mode).join(&self.manifest.snapshot),
            false => self.dir.join(mode),
        }
    }

    /// The folder of the Parquet copy of the view `key` (`<view>-<hash>`) over this snapshot:
    /// `<name>/views/<key>/<snapshot>/`, in the view's Delta table (format 1: in the snapshot's
    /// folder, `<snapshot>/views/<key>/`).
    pub fn view_dir(&self, key: &str) -> PathBuf {
        match (self.manifest.format >= 2, self.dir.parent()) {
            (true, Some(named)) => named.join(VIEWS).join(key).join(&self.manifest.snapshot),
            _ => self.dir.join(VIEWS).join(key),
        }
    }

    /// The Arrow schema of the table of `mode`, read from its first Parquet footer.
    pub fn schema(&self, mode: &str) -> Result<SchemaRef> {
        let table = self.table(mode).ok_or_else(|| {
            Error::snapshot(format!(
                "snapshot {} has no {mode} table",
                self.dir.display()
            ))
        })?;
        let first = table.files.first().ok_or_else(|| {
            Error::snapshot(format!(
                "snapshot {} lists no {mode} file",
                self.dir.display()
            ))
        })?;
        footer_schema(&self.table_root(mode).join(&first.path))
    }
}

/// [`Snapshot::table_root`] of the snapshot in `dir` whose manifest has `format`.
pub(super) fn table_root(dir: &Path, format: u32, mode: &str) -> PathBuf {
    match (format >= 2, dir.parent()) {
        (true, Some(named)) => named.join(mode),
        _ => dir.to_owned(),
    }
}

/// The Arrow schema of the Parquet file at `path`, from its footer.
pub(super) fn footer_schema(path: &Path) -> Result<SchemaRef> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::snapshot_with(path.display().to_string(), e))?;
    Ok(std::sync::Arc::clone(builder.schema()))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::snapshot::writer::owner_lock;
    use crate::snapshot::{RawFile, write_raw};

    #[test]
    fn a_dead_writers_folder_goes_a_live_or_dropped_ones_never_stays() {
        let root = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(root.path(), "https://fhir.example/r4").unwrap();
        let tmp = store.dir().join("tmp");
        let live = store.begin("Patient").unwrap();
        // A writer of a process that died: its folder and an unlocked owner lock.
        let dead = tmp.join(new_snapshot_id());
        fs::create_dir_all(dead.join("raw")).unwrap();
        fs::write(owner_lock(&dead), "").unwrap();

        SnapshotStore::open(root.path(), "https://fhir.example/r4").unwrap();
        assert!(!dead.exists() && !owner_lock(&dead).exists());
        assert!(live.dir().exists(), "a live writer's folder is kept");
        let dropped = live.dir().to_owned();
        drop(live);
        assert!(!dropped.exists() && !owner_lock(&dropped).exists());
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    }

    /// Commits a snapshot named `name` of Patient with one resource.
    pub(in crate::snapshot) fn commit(store: &SnapshotStore, name: &str) {
        commit_lines(store, name, &[r#"{"resourceType":"Patient","id":"1"}"#], "");
    }

    /// Commits `lines` of Patient as a snapshot named `name` with `transactionTime` `time`.
    pub(in crate::snapshot) fn commit_lines(
        store: &SnapshotStore,
        name: &str,
        lines: &[&str],
        time: &str,
    ) -> Snapshot {
        let input = store.dir().join(format!("{name}{time}.ndjson"));
        fs::write(&input, lines.join("\n")).unwrap();
        let writer = store.begin_named(name, "Patient").unwrap();
        let (path, rel) = writer.raw_path(0, false);
        let (resources, bytes) = write_raw(&[input], None, usize::MAX, &path).unwrap();
        let manifest = SnapshotManifest {
            raw: vec![RawFile {
                path: rel,
                resources,
                bytes,
                origin: None,
            }],
            transaction_time: time.to_owned(),
            ..SnapshotManifest::default()
        };
        let options = DecodeOptions::default()
            .with_batch_size(64)
            .with_strictness(Strictness::Lenient);
        writer
            .commit(manifest, &[TableMode::default()], &options, &|_| {})
            .unwrap()
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
        let evicting =
            lock_file::lock_exclusive(&store.dir().join("Patient@d-0000000d").join(LEASE_FILE))
                .unwrap();
        assert!(store.current("Patient@d-0000000d").unwrap().is_none());
        drop(evicting);
        assert!(store.current("Patient@d-0000000d").unwrap().is_some());
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
    fn a_snapshot_of_format_1_reads_as_before_and_the_next_commit_makes_the_delta_table() {
        let cache = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(cache.path(), "http://example.org/fhir").unwrap();
        commit(&store, "Patient");
        // Laid out as fhirflight wrote it before its tables were Delta tables.
        let type_dir = store.dir().join("Patient");
        let old = store.current("Patient").unwrap().unwrap();
        let id = old.manifest().snapshot.clone();
        fs::rename(
            type_dir.join("flattened").join(&id),
            old.dir().join("flattened"),
        )
        .unwrap();
        fs::remove_dir_all(type_dir.join("flattened")).unwrap();
        let mut manifest = old.manifest().clone();
        manifest.format = 1;
        let table = manifest.tables.get_mut("flattened").unwrap();
        table.delta_version = None;
        table.files[0].path = "flattened/part-0.parquet".to_owned();
        write_atomic(
            &store.manifest_path("Patient").unwrap(),
            &to_json(&manifest).unwrap(),
        )
        .unwrap();
        drop(old);

        let old = store.current("Patient").unwrap().unwrap();
        assert_eq!(old.table_dir("flattened"), old.dir().join("flattened"));
        assert_eq!(old.schema("flattened").unwrap().fields().len(), 2);
        let listed = super::super::list_cache(cache.path()).unwrap();
        let table = &listed[0].snapshots[0].tables["flattened"];
        assert_eq!(table.files, [old.dir().join("flattened/part-0.parquet")]);
        assert!(table.delta.is_none() && table.delta_version.is_none());

        // The next commit makes the Delta table; the old snapshot goes once unread.
        drop(old);
        commit(&store, "Patient");
        let new = store.current("Patient").unwrap().unwrap();
        assert_eq!(new.table("flattened").unwrap().delta_version, Some(0));
        assert!(type_dir.join("flattened").join("_delta_log").is_dir());
        assert!(!type_dir.join(&id).exists());
    }

    #[test]
    fn a_commit_that_died_before_its_manifest_leaves_a_delta_version_that_cleaning_mends() {
        let cache = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(cache.path(), "http://example.org/fhir").unwrap();
        commit(&store, "Patient");
        let path = store.manifest_path("Patient").unwrap();
        let manifest = fs::read(&path).unwrap();
        let first = store.current("Patient").unwrap().unwrap();
        commit(&store, "Patient");
        let second = store.current("Patient").unwrap().unwrap();
        let orphan = second.table_dir("flattened");
        drop(second);
        // As if the second commit had died after its Delta version, before its manifest.
        fs::write(&path, manifest).unwrap();
        let kept = first.table_dir("flattened");
        drop(first);

        store.clean(Duration::from_secs(3600)).unwrap();
        let root = delta::local_url(&store.dir().join("Patient").join("flattened")).unwrap();
        let versions = delta::history(&root).unwrap();
        assert_eq!(versions.len(), 3);
        let current = store.current("Patient").unwrap().unwrap();
        assert_eq!(versions[0].export["snapshot"], current.manifest().snapshot);
        assert_eq!(versions[0].export["reconciled"], true);
        assert_eq!(current.table("flattened").unwrap().delta_version, Some(2));
        assert!(kept.is_dir() && !orphan.exists());
    }

    #[test]
    fn a_types_tables_go_to_the_table_location_a_filtered_snapshots_stay() {
        let cache = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(cache.path(), "http://example.org/fhir").unwrap();
        let local =
            |name: &str| delta::local_url(&store.dir().join(name).join("flattened")).unwrap();
        assert_eq!(
            store.table_url("Patient", "flattened").unwrap(),
            local("Patient")
        );
        let location = url::Url::parse("s3://lake/fhir/").unwrap();
        let store = store.clone().with_table_location(location).unwrap();
        let key = store
            .dir()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            store.table_url("Patient", "nested").unwrap().as_str(),
            format!("s3://lake/fhir/{key}/Patient/nested/")
        );
        let filtered = "Patient@a-0000000a";
        assert_eq!(
            store.table_url(filtered, "flattened").unwrap(),
            local(filtered)
        );
        for (name, mode) in [("Patient", "../x"), ("Patient", ""), ("../x", "flattened")] {
            assert!(store.table_url(name, mode).is_err(), "{name} {mode}");
        }
        let ftp = url::Url::parse("ftp://lake/fhir").unwrap();
        let err = store.with_table_location(ftp).unwrap_err().to_string();
        assert!(err.contains("not ftp://"), "{err}");
    }

    #[test]
    fn cleaning_removes_uploads_no_version_names_once_a_commit_could_not_still_come() {
        let (cache, lake) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let location = url::Url::from_directory_path(lake.path()).unwrap();
        let store = SnapshotStore::open(cache.path(), "http://example.org/fhir")
            .unwrap()
            .with_table_location(location)
            .unwrap();
        commit(&store, "Patient");
        let table = store.table_url("Patient", "flattened").unwrap();
        let table = table.to_file_path().unwrap();
        // Uploads of commits that never came: one a week and a day old, one of a commit that
        // may be uploading still.
        let upload = |id: &str, age: Duration| {
            let path = table.join(id).join("part-0.parquet");
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            let file = File::create(&path).unwrap();
            file.set_modified(SystemTime::now() - age).unwrap();
            path
        };
        let day = Duration::from_secs(24 * 3600);
        let old = upload("20200101000000000-0000000a", delta::ORPHAN_AGE + day);
        let young = upload("20200101000000000-0000000b", day);
        store.clean(Duration::from_secs(3600)).unwrap();
        assert!(!old.exists());
        assert!(young.exists());
        let current = store.current("Patient").unwrap().unwrap();
        let files = &current.table("flattened").unwrap().files;
        assert!(
            files.iter().all(|f| table.join(&f.path).exists()),
            "{files:?}"
        );
    }

    #[test]
    fn garbage_collection_removes_only_snapshot_folders_nobody_reads() {
        let cache = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(cache.path(), "http://example.org/fhir").unwrap();
        let snapshots = || {
            let mut ids: Vec<String> = fs::read_dir(store.dir().join("Patient"))
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| is_snapshot_id(n))
                .collect();
            ids.sort();
            ids
        };
        commit(&store, "Patient");
        let foreign = store.dir().join("Patient").join("not-ours");
        fs::create_dir_all(&foreign).unwrap();
        // A reader holds the first snapshot (a query planned on it, in any process).
        let read = store.current("Patient").unwrap().unwrap();
        commit(&store, "Patient");
        commit(&store, "Patient");
        assert!(foreign.is_dir(), "a folder the store did not make stays");
        let current = store.current("Patient").unwrap().unwrap();
        let first = read.manifest().snapshot.clone();
        let mut expected = vec![first.clone(), current.manifest().snapshot.clone()];
        expected.sort();
        assert_eq!(snapshots(), expected, "the one read and the current one");
        assert!(read.raw_paths().iter().all(|p| p.exists()));

        // Read no more: the next collection takes it, and reports what it freed.
        let (table, dir) = (read.table_dir("flattened"), read.dir().to_owned());
        assert!(table.starts_with(store.dir().join("Patient").join("flattened")));
        // A view's copy over it (written when a query read the view).
        let view = read.view_dir("names-0123abcd");
        assert!(view.starts_with(store.dir().join("Patient").join("views")));
        fs::create_dir_all(&view).unwrap();
        fs::write(view.join("part-0.parquet"), "view").unwrap();
        drop(read);
        let removed = store.clean(Duration::from_secs(3600)).unwrap();
        let mut folders: Vec<&Path> = removed.iter().map(|(p, _)| p.as_path()).collect();
        assert_eq!(
            folders.pop(),
            Some(dir.as_path()),
            "its tables, then the snapshot"
        );
        folders.sort();
        assert_eq!(folders, [table.as_path(), view.as_path()]);
        assert!(removed.iter().all(|(_, bytes)| *bytes > 0));
        assert_eq!(snapshots(), vec![current.manifest().snapshot.clone()]);
        assert!(current.table_dir("flattened").is_dir());

        // A manifest that cannot be read names no current snapshot for certain: nothing goes.
        drop(current);
        fs::write(store.manifest_path("Patient").unwrap(), "{not json").unwrap();
        assert!(store.clean(Duration::ZERO).unwrap().is_empty());
        assert_eq!(snapshots().len(), 1);
    }

    #[test]
    fn clearing_removes_a_types_snapshots_but_not_what_a_process_reads() {
        let cache = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(cache.path(), "http://example.org/fhir").unwrap();
        commit(&store, "Patient");
        let read = store.current("Patient").unwrap().unwrap();
        commit(&store, "Patient");
        commit(&store, "Patient@a-0000000a");
        commit(&store, "Observation");
        // A view's Delta table beside the type's.
        let observation = store.current("Observation").unwrap().unwrap();
        let view = observation.view_dir("codes-0123abcd");
        fs::create_dir_all(&view).unwrap();
        fs::write(view.join("part-0.parquet"), "view").unwrap();
        let file = TableFile {
            path: "part-0.parquet".to_owned(),
            rows: 0,
            bytes: 4,
        };
        let schema = Schema::new(vec![arrow::datatypes::Field::new(
            "id",
            arrow::datatypes::DataType::Utf8,
            true,
        )]);
        let version = store.publish_view(&observation, "codes-0123abcd", &file, &schema);
        assert_eq!(version.unwrap(), Some(0));
        assert!(view.parent().unwrap().join("_delta_log").is_dir());
        drop(observation);
        let columns = store.dir().join("columns");
        fs::create_dir_all(&columns).unwrap();
        for name in ["Patient.flattened.arrow", "Observation.flattened.arrow"] {
            fs::write(columns.join(name), "").unwrap();
        }
        assert!(store.clear(Some("../x")).is_err());

        let cleared = store.clear(Some("Patient")).unwrap();
        assert_eq!(cleared.kept, [read.dir().to_owned()], "read by a query");
        assert!(read.raw_paths().iter().all(|p| p.exists()));
        assert!(
            store.current("Patient").unwrap().is_none(),
            "no longer current"
        );
        assert!(!store.dir().join("Patient@a-0000000a").exists());
        assert!(!columns.join("Patient.flattened.arrow").exists());
        assert!(cleared.removed.iter().all(|(p, _)| !p.exists()));
        assert!(cleared.removed.iter().map(|(_, b)| b).sum::<u64>() > 0);
        assert!(
            store.current("Observation").unwrap().is_some(),
            "another type"
        );
        assert!(columns.join("Observation.flattened.arrow").exists());

        drop(read);
        let cleared = store.clear(None).unwrap();
        assert!(cleared.kept.is_empty());
        assert!(!store.dir().join("Patient").exists());
        assert!(
            !store.dir().join("Observation").exists(),
            "its view's table too"
        );
        assert!(store.resource_types().unwrap().is_empty());
        assert!(
            store.dir().join("source.json").is_file(),
            "the store stays open"
        );
    }

    #[test]
    fn staging_goes_when_no_export_holds_it_and_it_is_old_enough() {
        let cache = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(cache.path(), "http://example.org/fhir").unwrap();
        let staging = |key: &str| {
            let dir = store.staging_dir(key).unwrap();
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("Patient.0.ndjson"), "{}\n").unwrap();
            dir
        };
        let (running, stopped) = (staging("running"), staging("stopped"));
        let _export = lock_file::lock_exclusive(&running.with_extension("lock")).unwrap();
        fs::write(stopped.with_extension("lock"), "").unwrap();
        let leftover_lock = store.staging_dir("gone").unwrap().with_extension("lock");
        fs::write(&leftover_lock, "").unwrap();

        // Young: a stopped export keeps its downloads for the resume.
        assert_eq!(
            clean_cache(cache.path(), Duration::from_secs(3600), Duration::ZERO)
                .unwrap()
                .len(),
            0
        );
        assert!(stopped.is_dir() && !leftover_lock.exists());

        let removed = clean_cache(cache.path(), Duration::ZERO, Duration::ZERO).unwrap();
        assert_eq!(removed, vec![(stopped.clone(), 3)]);
        assert!(!stopped.exists() && !stopped.with_extension("lock").exists());
        assert!(running.is_dir(), "an export holds it");
    }
}
