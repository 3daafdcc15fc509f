//! [`SnapshotWriter`]: a snapshot being written aside, converted to Parquet and committed
//! atomically (renamed into place, then its manifest replaced, under the store's lock).

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arrow::datatypes::SchemaRef;

use super::convert::{TableParts, check_stopping};
use super::lease::LEASE_FILE;
use super::manifest::{MANIFEST_FILE, to_json, write_atomic};
use super::names::is_filtered;
use super::raw::{RawCopy, holds_id, is_gzip};
use super::upsert::{self, MAX_SMALL_FILES, Previous, SMALL_RAW_BYTES};
use super::{
    Lease, RawFile, Snapshot, SnapshotManifest, SnapshotStore, TableFile, copy_raw, mode_key,
    write_raw,
};
use super::{delta, home};
use crate::chunks::run_jobs;
use crate::ndjson::{DecodeOptions, TableMode};
use crate::warning::{Warning, WarningKind};
use crate::{Error, Result, lock_file};

/// A snapshot being written; nothing is visible until [`SnapshotWriter::commit`].
#[derive(Debug)]
pub struct SnapshotWriter {
    pub(super) store: SnapshotStore,
    pub(super) name: String,
    pub(super) resource_type: String,
    pub(super) id: String,
    pub(super) dir: PathBuf,
    /// Its folder of `tmp/`, gone with the writer unless committed.
    pub(super) _tmp: TmpFolder,
    /// The tables converted so far, part by part ([`Self::convert_part`]), by mode key.
    pub(super) tables: Vec<(String, TableParts)>,
    /// The raw files (paths relative to the snapshot folder) in those parts.
    pub(super) converted: Vec<String>,
    /// The previous snapshot whose tables this one carries over ([`Self::carry_over`]).
    pub(super) carry: Option<Box<Carry>>,
}

/// An incremental refresh's previous snapshot, with the ids its resources lose and the raw files
/// of this snapshot that hold the rest.
#[derive(Debug)]
pub(super) struct Carry {
    prev: Snapshot,
    drop: HashSet<String>,
    covers: Vec<String>,
}

/// Writers alive in the process ([`writes_in_progress`]).
static WRITERS: AtomicUsize = AtomicUsize::new(0);

/// Snapshot writers alive in the process: a process about to exit calls
/// [`stop_writes`](super::stop_writes) and waits for this to reach 0, so that no half-written
/// folder stays behind.
pub fn writes_in_progress() -> usize {
    WRITERS.load(Ordering::SeqCst)
}

/// A snapshot's folder in `tmp/` while it is written (a conversion, an adoption), counted
/// among the [writes in progress](writes_in_progress): what of it was not committed (renamed
/// away) goes when this drops.
#[derive(Debug)]
pub(super) struct TmpFolder {
    dir: PathBuf,
    /// Held while it lives: a folder of `tmp/` whose lock nobody holds belongs to a process
    /// that died ([`SnapshotStore::open`] removes it).
    _owner: File,
}

impl TmpFolder {
    /// Takes the folder `dir`, locked before it exists, so that no sweep ever takes it.
    pub(super) fn take(dir: &Path) -> Result<Self> {
        let lock = owner_lock(dir);
        let owner = lock_file::lock_exclusive(&lock).map_err(|e| Error::io(&lock, e))?;
        WRITERS.fetch_add(1, Ordering::SeqCst);
        Ok(Self {
            dir: dir.to_owned(),
            _owner: owner,
        })
    }
}

impl Drop for TmpFolder {
    /// A snapshot not committed (an error, an interrupted conversion) leaves nothing behind.
    fn drop(&mut self) {
        if self.dir.exists()
            && let Err(e) = fs::remove_dir_all(&self.dir)
        {
            tracing::warn!("cannot remove {}: {e}", self.dir.display());
        }
        let _ = fs::remove_file(owner_lock(&self.dir));
        // Only now: a process waiting for no writer to be left exits once the folder is gone.
        WRITERS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Commits a version of the Delta table of each table of `manifest` that `columns` names (with
/// the type's columns), recording it in the manifest. A table that cannot be published (a column
/// name Delta refuses) is still fhirflight's, with a warning.
pub(super) fn publish_tables(
    manifest: &mut SnapshotManifest,
    store: &SnapshotStore,
    name: &str,
    columns: &[(String, SchemaRef)],
) {
    let info = export_info(manifest);
    let change = match &manifest.incremental {
        Some(merged) => delta::Change::Upsert {
            deletes: !merged.deleted.is_empty(),
        },
        None => delta::Change::Overwrite,
    };
    for (key, schema) in columns {
        let Some(table) = manifest.tables.get_mut(key) else {
            continue;
        };
        let published = store.table_url(name, key).and_then(|url| {
            let version = delta::publish(&url, &table.files, Some(schema), info.clone(), change)?;
            Ok((version, url))
        });
        match published {
            Ok((version, url)) => {
                table.delta_version = Some(version);
                table.delta_table = store.table_elsewhere(name).then_some(url);
            }
            Err(e) => {
                tracing::warn!("{e}");
                let warning = Warning::new(WarningKind::Client, format!("not a Delta table: {e}"))
                    .with_resource_type(&manifest.resource_type);
                manifest.warnings.push(warning);
            }
        }
    }
}

impl Carry {
    /// The previous snapshot's table of `key`, when the new table can carry its files over:
    /// it has one, in a Delta table's folder, whose columns agree with those of `parts`.
    fn previous(&self, key: &str, parts: &TableParts) -> Result<Option<Previous<'_>>> {
        let Some(table) = self
            .prev
            .table(key)
            .filter(|_| self.prev.manifest.format >= 2)
        else {
            return Ok(None);
        };
        let schema = self.prev.schema(key)?;
        if !upsert::agrees(&schema, &parts.schema(), parts.mode()) {
            tracing::debug!(
                "{}: the changes' columns differ from {}'s; converted whole",
                self.prev.manifest.resource_type,
                self.prev.manifest.snapshot
            );
            return Ok(None);
        }
        Ok(Some(Previous {
            root: self.prev.table_root(key),
            table,
            schema,
        }))
    }
}

/// What a Delta commit records of the export ([`delta::COMMIT_KEY`]).
pub(super) fn export_info(manifest: &SnapshotManifest) -> serde_json::Value {
    serde_json::json!({
        "snapshot": manifest.snapshot,
        "resourceType": manifest.resource_type,
        "source": manifest.source,
        "request": manifest.request,
        "transactionTime": manifest.transaction_time,
        "createdAt": manifest.created_at,
        "resources": manifest.resources(),
        "raw": manifest.raw,
        "pushdown": manifest.pushdown,
        "incremental": manifest.incremental,
        "warnings": manifest.warnings,
    })
}

/// Makes the file at `path` durable.
fn sync(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// The lock file that says a live writer owns the temporary folder `dir`.
pub(super) fn owner_lock(dir: &Path) -> PathBuf {
    dir.with_extension("lock")
}

impl SnapshotWriter {
    /// The folder the snapshot is written in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path for the `n`th raw file of this snapshot (relative path as stored in the manifest):
    /// `raw/<Type>.<n>.ndjson`, with `.gz` when `gzip`.
    pub fn raw_path(&self, n: usize, gzip: bool) -> (PathBuf, String) {
        let gz = if gzip { ".gz" } else { "" };
        let rel = format!("raw/{}.{n:03}.ndjson{gz}", self.resource_type);
        (self.dir.join(&rel), rel)
    }

    /// Copies the NDJSON file `input` (gzip or plain) as it is into the snapshot as its raw
    /// file `n` ([`copy_raw`]), and describes it for the manifest.
    pub fn copy_raw(&self, n: usize, input: &Path) -> Result<RawFile> {
        let (path, rel) = self.raw_path(n, is_gzip(input)?);
        let (resources, bytes) = copy_raw(input, &path)?;
        Ok(RawFile {
            path: rel,
            resources,
            bytes,
            origin: None,
        })
    }

    /// Takes the raw files of `prev` into this snapshot (as its first ones) without the resources
    /// whose id is in `drop`, a file per worker of the process's pool: a file that holds none is
    /// linked as it is (copied where a link cannot be made), the others are written again without
    /// them ([`write_raw`], plain NDJSON); past 16 small files (a refresh adds one each), those
    /// are written again as one. Lines are bounded by `max_line` bytes. Returns them for the
    /// manifest.
    pub fn keep_raw(
        &self,
        prev: &Snapshot,
        drop: &HashSet<String>,
        max_line: usize,
    ) -> Result<Vec<RawFile>> {
        let listed = &prev.manifest.raw;
        let small = |r: &RawFile| r.bytes < SMALL_RAW_BYTES;
        let compact = listed.iter().filter(|r| small(r)).count() > MAX_SMALL_FILES;
        let (compacted, alone): (Vec<usize>, Vec<usize>) =
            (0..listed.len()).partition(|&n| compact && small(&listed[n]));
        let mut jobs: Vec<Vec<usize>> = alone.into_iter().map(|n| vec![n]).collect();
        if !compacted.is_empty() {
            jobs.push(compacted);
        }
        // Job `n` makes raw file `n` of the files `from` lists.
        let keep = |n: usize, from: &[usize]| -> Result<RawFile> {
            let paths: Vec<PathBuf> = from
                .iter()
                .map(|&i| prev.dir.join(&listed[i].path))
                .collect();
            if let [one] = from
                && !holds_id(&paths[0], drop, max_line)?
            {
                let (path, rel) = self.raw_path(n, is_gzip(&paths[0])?);
                if fs::hard_link(&paths[0], &path).is_err() {
                    RawCopy::start(&path)?.run(&paths[0], check_stopping)?;
                }
                let kept = &listed[*one];
                let origin = kept.origin.clone();
                let origin =
                    origin.unwrap_or_else(|| format!("{}/{}", prev.manifest.snapshot, kept.path));
                return Ok(RawFile {
                    path: rel,
                    origin: Some(origin),
                    ..kept.clone()
                });
            }
            let (path, rel) = self.raw_path(n, false);
            let (resources, bytes) = write_raw(&paths, Some(drop), max_line, &path)?;
            Ok(RawFile {
                path: rel,
                resources,
                bytes,
                origin: None,
            })
        };
        run_jobs(jobs.len(), |n| keep(n, &jobs[n]))
            .into_iter()
            .collect()
    }

    /// Makes the raw files `raw` of this snapshot durable now, ahead of [`Self::commit`], which
    /// syncs every raw file (quickly, once they are): an export's files reach the disk while
    /// the rest download, not between the last download and the answer.
    pub(crate) fn sync_raw(&self, raw: &[RawFile]) -> Result<()> {
        raw.iter().try_for_each(|r| sync(&self.dir.join(&r.path)))
    }

    /// Copies the NDJSON files `inputs` into this snapshot as its raw files from `n` (as
    /// [`Self::copy_raw`] does) and converts them meanwhile, as the next part of the tables of
    /// `modes` (as [`Self::convert_part`] does): the conversion reads each copy as it grows, so
    /// that the copy costs no time of its own before it, and counts its resources on the way.
    /// Each copy is synced once whole, while the conversion goes on. Returns the raw files for
    /// the manifest; `modes` must hold at least one (the first one's conversion counts).
    pub fn copy_converting(
        &mut self,
        n: usize,
        inputs: &[PathBuf],
        modes: &[TableMode],
        options: &DecodeOptions,
        on_rows: &dyn Fn(u64),
    ) -> Result<Vec<RawFile>> {
        // The conversion counts the files' resources: there must be one.
        let counting = modes.first().map(mode_key);
        let counting =
            counting.ok_or_else(|| Error::snapshot("a conversion needs a table mode"))?;
        let mut copies = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            let (path, rel) = self.raw_path(n + i, is_gzip(input)?);
            // Followed by the conversion from now on: it may open the file before its copy runs.
            copies.push((input, RawCopy::start(&path)?, path, rel));
        }
        let rels: Vec<String> = copies.iter().map(|(.., rel)| rel.clone()).collect();
        let abandoned = AtomicBool::new(false);
        let stop = || match abandoned.load(Ordering::Relaxed) {
            true => Err(Error::snapshot("the conversion failed")),
            false => check_stopping(),
        };
        let sizes = std::thread::scope(|scope| {
            let copying = scope.spawn(|| {
                let copy = |(input, copy, path, _): (&PathBuf, RawCopy, PathBuf, String)| {
                    let bytes = copy.run(input, stop)?;
                    sync(&path)?;
                    Ok(bytes)
                };
                copies.into_iter().map(copy).collect::<Result<Vec<u64>>>()
            });
            let converted = self.convert(&rels, modes, options, on_rows);
            // A failed conversion (a bad line) stops the copies; a failed copy fails the
            // conversion that follows it, with the copy's error in its own.
            abandoned.store(converted.is_err(), Ordering::Relaxed);
            let copied = copying
                .join()
                .unwrap_or_else(|_| Err(Error::snapshot("copying the raw files panicked")));
            let done = converted.and(copied);
            // A stop ends both, whichever noticed it first: it says so.
            if done.is_err() {
                check_stopping()?;
            }
            done
        })?;
        let (_, parts) = (self.tables.iter().find(|(key, _)| *key == counting))
            .expect("the conversion made the table of its first mode");
        let raw = rels.into_iter().zip(sizes).map(|(rel, bytes)| RawFile {
            resources: parts.resources(&self.dir.join(&rel)),
            path: rel,
            bytes,
            origin: None,
        });
        Ok(raw.collect())
    }

    /// Converts `raw` (files of this snapshot, from [`Self::copy_raw`]) now, as the next part of
    /// the tables of `modes`, with the batch size, strictness and line bound of `options`: an
    /// export's files are converted while the rest downloads. [`Self::commit`] converts the raw
    /// files no part holds, then makes the parts one table per mode. `on_rows` is told the rows
    /// converted as they are.
    pub fn convert_part(
        &mut self,
        raw: &[RawFile],
        modes: &[TableMode],
        options: &DecodeOptions,
        on_rows: &dyn Fn(u64),
    ) -> Result<()> {
        let rels: Vec<String> = raw.iter().map(|r| r.path.clone()).collect();
        self.convert(&rels, modes, options, on_rows)
    }

    /// [`Self::convert_part`] of the raw files at `rels` (relative to the snapshot's folder).
    fn convert(
        &mut self,
        rels: &[String],
        modes: &[TableMode],
        options: &DecodeOptions,
        on_rows: &dyn Fn(u64),
    ) -> Result<()> {
        let paths: Vec<PathBuf> = rels.iter().map(|r| self.dir.join(r)).collect();
        for mode in modes {
            let key = mode_key(mode);
            let at = match self.tables.iter().position(|(k, _)| *k == key) {
                Some(at) => at,
                None => {
                    let parts =
                        TableParts::new(&self.resource_type, mode, options, &self.dir.join(&key))?;
                    self.tables.push((key, parts));
                    self.tables.len() - 1
                }
            };
            self.tables[at].1.add(&paths, on_rows)?;
        }
        self.converted.extend(rels.iter().cloned());
        Ok(())
    }

    /// Makes this snapshot an incremental refresh of `prev`: the raw files `covers` (written by
    /// the caller) hold `prev`'s resources but those whose id is in `drop` (changed or deleted).
    /// [`Self::commit`] then makes each table from `prev`'s files instead of converting `covers`:
    /// the files that hold no id of `drop` are carried over as they are, the others written again
    /// without those rows, and the Delta version adds and removes only those. A table whose
    /// columns the changes do not agree with (a column's type changed, the overflow column) is
    /// converted whole instead. `prev` is held (not collected) until the commit.
    pub fn carry_over(&mut self, prev: Snapshot, drop: HashSet<String>, covers: &[RawFile]) {
        let covers = covers.iter().map(|r| r.path.clone()).collect();
        self.carry = Some(Box::new(Carry { prev, drop, covers }));
    }

    /// Converts the raw files to the Parquet tables of `modes` (with the batch size, strictness
    /// and line bound of `options`), those of [`Self::convert_part`] aside, then commits: the
    /// new snapshot replaces the current one atomically. `manifest.snapshot`, `resource_type`,
    /// `tables` and `created_at` are filled in here, and the conversions' warnings added to
    /// `warnings`. `on_rows` is told the rows converted as they are.
    pub fn commit(
        mut self,
        mut manifest: SnapshotManifest,
        modes: &[TableMode],
        options: &DecodeOptions,
        on_rows: &dyn Fn(u64),
    ) -> Result<Snapshot> {
        let raw: Vec<PathBuf> = manifest
            .raw
            .iter()
            .map(|r| self.dir.join(&r.path))
            .collect();
        let carry = self.carry.take();
        let covered = |r: &&RawFile| carry.as_ref().is_some_and(|c| c.covers.contains(&r.path));
        let rest: Vec<RawFile> = manifest
            .raw
            .iter()
            .filter(|r| !self.converted.contains(&r.path) && !covered(r))
            .cloned()
            .collect();
        let mut schemas = Vec::new();
        // The raw files reach the disk while the conversion keeps the cores busy: both must
        // be durable before the commit.
        std::thread::scope(|scope| {
            let syncing = scope.spawn(|| raw.iter().try_for_each(|path| sync(path)));
            if !rest.is_empty() || self.tables.is_empty() {
                self.convert_part(&rest, modes, options, on_rows)?;
            }
            for (key, mut parts) in std::mem::take(&mut self.tables) {
                let prev = match &carry {
                    Some(carry) => carry.previous(&key, &parts)?,
                    None => None,
                };
                if let (None, Some(carry)) = (&prev, &carry) {
                    let covers: Vec<PathBuf> =
                        carry.covers.iter().map(|p| self.dir.join(p)).collect();
                    parts.add(&covers, on_rows)?;
                }
                let (table, schema, warnings) = parts.finish()?;
                let table = table.relative_to(&self.id);
                let (table, schema) = match (&prev, &carry) {
                    (Some(prev), Some(carry)) => {
                        let out_dir = self.dir.join(&key);
                        upsert::carry_over(prev, &carry.drop, table, &schema, &out_dir, &self.id)?
                    }
                    _ => (table, schema),
                };
                manifest.tables.insert(key.clone(), table);
                manifest.add_conversion_warnings(warnings);
                if let (Some(_), Some(carry)) = (&prev, &carry) {
                    // The lines it skipped are still not in the table.
                    let skipped = carry.prev.manifest.warnings.iter();
                    let skipped = skipped.filter(|w| w.kind == WarningKind::SkippedLines);
                    manifest.add_conversion_warnings(skipped.cloned().collect());
                }
                schemas.push((key, schema));
            }
            syncing
                .join()
                .map_err(|_| Error::snapshot("syncing the raw files panicked"))?
        })?;
        manifest.stamp(&self.resource_type, &self.id);

        let store = &self.store;
        // The Delta tables take the type's columns, which never shrink (outside the lock,
        // which `columns` takes).
        let mut columns = Vec::new();
        for (key, own) in schemas {
            let all = store.columns(&self.resource_type, &key, &[own])?;
            columns.push((key, all));
        }
        // A table elsewhere gets its files before the commit (a crash leaves files no version
        // names there), outside the lock, which would hold every commit for the uploads.
        let elsewhere = store.table_elsewhere(&self.name);
        // Other machines adopt this snapshot from there when all of it is there.
        let mut adoptable = elsewhere;
        let type_dir = store.named_dir(&self.name)?;
        let own = format!("{}/", self.id);
        for (key, table) in manifest.tables.iter().filter(|_| elsewhere) {
            // This snapshot's files are still in its folder; carried ones in their table's.
            let local = |f: &TableFile| match f.path.starts_with(&own) {
                true => self.dir.join(key).join(f.name()),
                false => type_dir.join(key).join(&f.path),
            };
            let files: Vec<(PathBuf, String)> = table
                .files
                .iter()
                .map(|f| (local(f), f.path.clone()))
                .collect();
            let uploaded = store
                .table_url(&self.name, key)
                .and_then(|url| delta::upload(&url, &files));
            if let Err(e) = uploaded {
                // No version names files that are not there: this table waits for the next
                // export; fhirflight's own is committed.
                tracing::warn!("{e}");
                columns.retain(|(k, _)| k != key);
                let warning = Warning::new(WarningKind::Client, format!("not published: {e}"))
                    .with_resource_type(&self.resource_type);
                manifest.warnings.push(warning);
                adoptable = false;
            }
        }
        // Its raw files go to the snapshots' home there too.
        let mut home = store.home_url(&self.name)?.filter(|_| adoptable);
        if let Some(url) = &home
            && let Err(e) = home::upload_raw(url, &self.dir, &manifest)
        {
            tracing::warn!("{e}");
            let warning = Warning::new(WarningKind::Client, format!("not adoptable: {e}"))
                .with_resource_type(&self.resource_type);
            manifest.warnings.push(warning);
            home = None;
        }
        let lock = store.lock()?;
        // Under the lock: eviction removes filtered snapshots' folders under it too.
        fs::create_dir_all(&type_dir).map_err(|e| Error::io(&type_dir, e))?;
        let target = type_dir.join(&self.id);
        fs::rename(&self.dir, &target).map_err(|e| Error::io(&target, e))?;
        // Held before it is published, so that no collection takes it from under us.
        let reading = Lease::take(&target.join(LEASE_FILE))?
            .ok_or_else(|| Error::snapshot(format!("{}: not readable", target.display())))?;
        // Each table into its Delta table's folder (a crash before leaves it in the snapshot's
        // folder, which goes with it), then a version of that table.
        for key in manifest.tables.keys() {
            let root = type_dir.join(key);
            fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
            let (from, to) = (target.join(key), root.join(&self.id));
            fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
        }
        let started = std::time::Instant::now();
        publish_tables(&mut manifest, store, &self.name, &columns);
        tracing::debug!(
            "{}: Delta versions committed in {:.3} s",
            self.name,
            started.elapsed().as_secs_f64()
        );
        // The snapshot as committed, in its folder: which files of earlier snapshots' folders it
        // holds, for collections while it is kept.
        let manifest_json = to_json(&manifest)?;
        write_atomic(&target.join(MANIFEST_FILE), &manifest_json)?;
        write_atomic(&store.manifest_path(&self.name)?, &manifest_json)?;
        // The snapshots it supersedes go once nobody reads them (`prev` too: its files this
        // one holds stay).
        drop(carry);
        store.collect_garbage(&type_dir, &[self.id.as_str()], store.retention());
        drop(lock);
        // Last at the home: the sign that the rest is there.
        if let Some(home) = home
            && let Err(e) = home::upload_manifest(&home, &target, &self.id)
        {
            tracing::warn!("{} is not adoptable: {e}", self.name);
        }
        let lease = match is_filtered(&self.name) {
            true => store.lease(&self.name)?,
            false => None,
        };
        Ok(Snapshot {
            dir: target,
            manifest,
            lease,
            _reading: reading,
        })
    }
}
