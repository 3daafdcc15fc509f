//! Each table (mode) of a name is a Delta Lake table, in the store's folder (`<name>/<mode>/`) or
//! on an object store (`s3://`, `gs://`, `az://`), which every lakehouse engine reads as a table:
//! a commit of the store writes one version ([`publish`]: the new snapshot's files the table
//! lacks added, those it no longer holds removed, the export's metadata in the commit), so every
//! export is a version ([`history`]) and an earlier one can be read ([`open_version`]) while its
//! files are kept.
//!
//! Writers on several machines resolve by Delta's optimistic commit protocol: a version is a
//! conditional write of its log entry, and a writer that loses a race reads the table again and
//! commits its own export as the next version (the last one committed is current).

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use arrow::datatypes::Schema;
use datafusion::catalog::{Session, TableProvider};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, MetadataExt, StructType};
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::{DeltaOperation, MergePredicate, SaveMode};
use deltalake::{DeltaTableBuilder, DeltaTableError};
use futures::future::{FutureExt, LocalBoxFuture};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use serde::Serialize;
use url::Url;

use super::TableFile;
use crate::{Error, Result};

/// The key of fhirflight's metadata in a commit's `commitInfo`.
pub const COMMIT_KEY: &str = "fhirflight";

/// What a version does to the table, as its log tells other engines (`DESCRIBE HISTORY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// A full export: `WRITE` (overwrite).
    Overwrite,
    /// An incremental refresh: `MERGE` of the changed resources by id, which `deletes` when
    /// the export had tombstones.
    Upsert { deletes: bool },
}

/// Commits a version of the Delta table at `table` (creating it) that holds exactly `files`
/// (paths relative to the table, there already: [`upload`]) and `info` under [`COMMIT_KEY`] in
/// its `commitInfo`: it adds the files the table lacks and removes those it has beyond, so a
/// file carried over from the version before is in neither. With a `schema` (the type's
/// columns, which never shrink), the table's becomes it with a metadata action, never a rewrite
/// of a file; without, the table's stays. A commit another writer won first is retried on the
/// table as it then is. Returns the version.
pub(super) fn publish(
    table: &Url,
    files: &[TableFile],
    schema: Option<&Schema>,
    info: serde_json::Value,
    change: Change,
) -> Result<u64> {
    let failed = |e: &dyn std::fmt::Display| Error::snapshot(format!("Delta table {table}: {e}"));
    let columns: Option<StructType> = schema
        .map(|s| s.try_into_kernel())
        .transpose()
        .map_err(|e| failed(&e))?;
    let modified = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let adds: Vec<Action> = files
        .iter()
        .map(|f| {
            Action::Add(Add {
                path: f.path.clone(),
                size: f.bytes as i64,
                modification_time: modified,
                data_change: true,
                // Exact, from the conversion: an engine may answer `count(*)` from it.
                stats: Some(serde_json::json!({ "numRecords": f.rows }).to_string()),
                ..Default::default()
            })
        })
        .collect();
    let properties = CommitProperties::default().with_metadata([(COMMIT_KEY.to_owned(), info)]);
    let committed = block_on(|| async {
        let mut attempt = 0;
        loop {
            let committed = commit(table, &columns, &adds, &properties, change).await;
            match committed {
                Err(e) if attempt < MAX_RACES && lost_race(&e) => attempt += 1,
                committed => break committed,
            }
        }
    })?;
    committed.map_err(|e| failed(&e))
}

/// Uploads each local file of `files` that `table` (an object store's URL: a Delta table, or
/// the snapshots' home beside it) does not have yet (no object of that path and size) to its
/// path there, in parts, four files at a time: before [`publish`] names them, and outside the
/// store's commit lock. A file carried over from an earlier version is there already, unless
/// a vacuum took it.
pub(super) fn upload(table: &Url, files: &[(PathBuf, String)]) -> Result<()> {
    transfer(table, "uploading to", |store| {
        let each = files
            .iter()
            .map(|(from, to)| upload_file(Arc::clone(&store), from, to));
        each.map(FutureExt::boxed_local).collect()
    })
}

/// Downloads each object of `files` (paths relative to `at`, an object store's URL or a
/// folder's) to its local path, four at a time, skipping one there already at that size (an
/// earlier download, a file carried over).
pub(super) fn download(at: &Url, files: &[(String, PathBuf)]) -> Result<()> {
    transfer(at, "downloading from", |store| {
        let each = files
            .iter()
            .map(|(from, to)| download_file(Arc::clone(&store), from, to));
        each.map(FutureExt::boxed_local).collect()
    })
}

/// Runs the file transfers `jobs` makes for the object store at `url`, four at a time; an
/// error says `what` (`uploading to`), `url` and the file's.
fn transfer<'a, F>(url: &Url, what: &str, jobs: F) -> Result<()>
where
    F: FnOnce(
            deltalake::logstore::ObjectStoreRef,
        ) -> Vec<LocalBoxFuture<'a, std::result::Result<(), String>>>
        + Send,
{
    let done = block_on(|| async {
        let store = object_store(url)?;
        futures::stream::iter(jobs(store))
            .buffer_unordered(4)
            .try_collect::<Vec<()>>()
            .await
    })?;
    done.map(|_| ())
        .map_err(|e| Error::snapshot(format!("{what} {url}: {e}")))
}

/// The object store rooted at `url` (a table's, or the folder of a name's tables), opened as
/// deltalake opens tables, so both reach it with the same credentials.
pub(super) fn object_store(
    url: &Url,
) -> std::result::Result<deltalake::logstore::ObjectStoreRef, String> {
    register_stores();
    let built = DeltaTableBuilder::from_url(url.clone()).and_then(|b| b.build());
    Ok(built
        .map_err(|e| e.to_string())?
        .log_store()
        .object_store(None))
}

/// How many times a commit is tried again after other writers won.
const MAX_RACES: usize = 8;

/// Whether `e` says another writer committed first (the version, or data this one read).
fn lost_race(e: &DeltaTableError) -> bool {
    use deltalake::kernel::transaction::TransactionError;
    matches!(
        e,
        DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_)
                    | TransactionError::VersionAlreadyExists(_)
            }
    )
}

/// One try of [`publish`]'s commit, on the table as it is now.
async fn commit(
    url: &Url,
    columns: &Option<StructType>,
    adds: &[Action],
    properties: &CommitProperties,
    change: Change,
) -> std::result::Result<u64, DeltaTableError> {
    let mut table = DeltaTableBuilder::from_url(url.clone())?.build()?;
    // Asked first: loading a folder without a log logs an error of the kernel's.
    match (table.log_store().is_delta_table_location().await?, columns) {
        (true, _) => table.load().await?,
        (false, None) => return Err(DeltaTableError::NotATable(format!("{url}: no Delta table"))),
        (false, Some(columns)) => {
            let created = table
                .create()
                .with_columns(columns.fields().cloned())
                .with_actions(adds.to_vec())
                .with_commit_properties(properties.clone())
                .await?;
            return Ok(created.version().unwrap_or_default());
        }
    }
    let snapshot = table.snapshot()?;
    let mut actions = Vec::new();
    if let Some(columns) = columns
        .as_ref()
        .filter(|c| snapshot.schema().as_ref() != *c)
    {
        let widened = snapshot.metadata().clone().with_schema(columns)?;
        actions.push(Action::Metadata(widened));
    }
    let files: Vec<_> = snapshot
        .snapshot()
        .file_views(table.log_store().as_ref(), None)
        .try_collect()
        .await?;
    let has: HashSet<String> = files.iter().map(|f| f.path().to_string()).collect();
    let adding: HashSet<&str> = adds
        .iter()
        .filter_map(|a| match a {
            Action::Add(add) => Some(add.path.as_str()),
            _ => None,
        })
        .collect();
    // A path the table has and keeps (a file carried over, a conversion redone for the same
    // snapshot) is neither removed nor added: one action per path and version at most.
    actions.extend(
        files
            .iter()
            .filter(|f| !adding.contains(f.path().as_ref()))
            .map(|f| Action::Remove(f.remove_action(true))),
    );
    actions.extend(
        adds.iter()
            .filter(|a| !matches!(a, Action::Add(add) if has.contains(&add.path)))
            .cloned(),
    );
    let operation = match change {
        Change::Overwrite => DeltaOperation::Write {
            mode: SaveMode::Overwrite,
            partition_by: None,
            predicate: None,
        },
        // Without a predicate, a merge reads the whole table: a version another writer commits
        // meanwhile is a conflict, and the commit is made again on the table as it then is.
        Change::Upsert { deletes } => DeltaOperation::Merge {
            predicate: None,
            merge_predicate: Some("target.id = source.id".to_owned()),
            matched_predicates: ["update", "delete"][..1 + usize::from(deletes)]
                .iter()
                .map(|action| merge_predicate(action, None))
                .collect(),
            not_matched_predicates: vec![merge_predicate("insert", None)],
            not_matched_by_source_predicates: Vec::new(),
        },
    };
    let commit = CommitBuilder::from(properties.clone())
        .with_actions(actions)
        .build(Some(snapshot), table.log_store(), operation)
        .await?;
    Ok(commit.version())
}

fn merge_predicate(action_type: &str, predicate: Option<&str>) -> MergePredicate {
    MergePredicate {
        action_type: action_type.to_owned(),
        predicate: predicate.map(str::to_owned),
    }
}

/// Uploads the file `from` to `to` of `store` (the table's), in parts; an error names the file
/// and says the store's answer.
async fn upload_file(
    store: deltalake::logstore::ObjectStoreRef,
    from: &Path,
    to: &str,
) -> std::result::Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let target = deltalake::Path::from(to);
    let size = tokio::fs::metadata(from).await.map(|m| m.len());
    if let (Ok(there), Ok(size)) = (store.head(&target).await, size)
        && there.size == size
    {
        return Ok(());
    }
    let mut writer = object_store::buffered::BufWriter::new(store, target);
    let copied = async {
        let mut file = tokio::fs::File::open(from).await?;
        tokio::io::copy(&mut file, &mut writer).await?;
        writer.shutdown().await
    };
    copied.await.map_err(|e| format!("{to}: {e}"))
}

/// Downloads the object `from` of `store` to the file `to` (its folder made), unless a file of
/// its size is there; an error names the object and says the store's answer.
async fn download_file(
    store: deltalake::logstore::ObjectStoreRef,
    from: &str,
    to: &Path,
) -> std::result::Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let source = deltalake::Path::from(from);
    let failed = |e: &dyn std::fmt::Display| format!("{from}: {e}");
    let meta = store.head(&source).await.map_err(|e| failed(&e))?;
    if tokio::fs::metadata(to)
        .await
        .is_ok_and(|m| m.len() == meta.size)
    {
        return Ok(());
    }
    if let Some(parent) = to.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| failed(&e))?;
    }
    let mut stream = store
        .get(&source)
        .await
        .map_err(|e| failed(&e))?
        .into_stream();
    let mut file = tokio::fs::File::create(to).await.map_err(|e| failed(&e))?;
    while let Some(bytes) = stream.next().await {
        file.write_all(&bytes.map_err(|e| failed(&e))?)
            .await
            .map_err(|e| failed(&e))?;
    }
    file.sync_all().await.map_err(|e| failed(&e))
}

/// How old a file that no version names must be before [`vacuum`] takes it (an upload whose
/// commit never came: its process died, or its table was not published): a commit still
/// uploading has younger files. Delta's own default retention, for the same reason.
pub(super) const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Makes each version of the Delta table at `table` older than `retention` unreadable by
/// removing the files only such versions hold, then removes the files no version names that are
/// older than [`ORPHAN_AGE`] (and `retention`); returns how many went. The store's own folder is
/// collected with its snapshots: this is for a table elsewhere.
pub(super) fn vacuum(table: &Url, retention: std::time::Duration) -> Result<usize> {
    let age =
        |d: std::time::Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let vacuumed = block_on(|| async {
        let table = DeltaTableBuilder::from_url(table.clone())?.load().await?;
        let (table, superseded) = table
            .vacuum()
            .with_retention_period(age(retention))
            .with_enforce_retention_duration(false)
            .await?;
        let (_, orphans) = table
            .vacuum()
            .with_mode(VacuumMode::Full)
            .with_retention_period(age(retention.max(ORPHAN_AGE)))
            .with_enforce_retention_duration(false)
            .await?;
        Ok::<_, DeltaTableError>(superseded.files_deleted.len() + orphans.files_deleted.len())
    })?;
    vacuumed.map_err(|e| Error::snapshot(format!("Delta table {table}: {e}")))
}

/// The latest version of the Delta table at `table`; none when there is no table.
pub(super) fn latest_version(table: &Url) -> Result<Option<u64>> {
    let latest = block_on(|| async {
        let mut table = DeltaTableBuilder::from_url(table.clone())?.build()?;
        if !table.log_store().is_delta_table_location().await? {
            return Ok::<_, DeltaTableError>(None);
        }
        table.load().await?;
        Ok(table.version())
    })?;
    latest.map_err(|e| Error::snapshot(format!("Delta table {table}: {e}")))
}

/// One version of a snapshot's Delta table, as [`history`] lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct TableVersion {
    /// The Delta version.
    pub version: u64,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The Delta operation (`CREATE TABLE`, `WRITE` for a full export, `MERGE` for an
    /// incremental refresh).
    pub operation: String,
    /// What fhirflight recorded with it (the snapshot, the export's server, request,
    /// `transactionTime`, counts, warnings); `null` for a commit no export made (a vacuum's,
    /// another tool's).
    pub export: serde_json::Value,
}

/// The versions of the Delta table at `table`, newest first; none when there is no table.
pub fn history(table: &Url) -> Result<Vec<TableVersion>> {
    let listed = block_on(|| async {
        let mut table = DeltaTableBuilder::from_url(table.clone())?.build()?;
        if !table.log_store().is_delta_table_location().await? {
            return Ok::<_, DeltaTableError>(Vec::new());
        }
        table.load().await?;
        let latest = table.version().unwrap_or_default();
        let infos: Vec<_> = table.history(None).try_collect().await?;
        // Newest first, one per commit file: the log's versions, counted down.
        Ok(infos
            .into_iter()
            .zip((0..=latest).rev())
            .map(|(info, version)| TableVersion {
                version,
                timestamp_ms: info.timestamp.unwrap_or_default(),
                operation: info.operation.unwrap_or_default(),
                export: info
                    .info
                    .get(COMMIT_KEY)
                    .cloned()
                    .unwrap_or(serde_json::Value::Null),
            })
            .collect())
    })?;
    listed.map_err(|e| Error::snapshot(format!("Delta table {table}: {e}")))
}

/// The Delta table at `table` as it was at `version`, as a DataFusion table (its files read by
/// deltalake's own scan, in the session `state`). It loads on a thread of its own, so it may be
/// called from planning, which is synchronous inside an async runtime.
pub fn open_version(
    table: &Url,
    version: u64,
    state: &dyn Session,
) -> Result<Arc<dyn TableProvider>> {
    let opened = block_on(|| async {
        let mut table = DeltaTableBuilder::from_url(table.clone())?.build()?;
        table.load().await?;
        let latest = table.version().unwrap_or_default();
        if version > latest {
            let versions = format!("its versions are 0 to {latest} (fhirflight cache history)");
            return Err(DeltaTableError::Generic(versions).into());
        }
        table.load_version(version).await?;
        table.update_datafusion_session(state)?;
        table.table_provider().await
    })?;
    opened.map_err(|e| Error::snapshot(format!("Delta table {table} at version {version}: {e}")))
}

/// The `file://` URL of the table folder `local` (made absolute).
pub(super) fn local_url(local: &Path) -> Result<Url> {
    let absolute = std::path::absolute(local).map_err(|e| Error::io(local, e))?;
    Url::from_directory_path(&absolute)
        .map_err(|()| Error::snapshot(format!("{} is no folder path", absolute.display())))
}

/// The tables' location `url` (`s3://bucket/prefix`, `gs://`, `az://`, `file:///`), checked:
/// its object store is known, with credentials from each cloud's standard environment.
pub(super) fn check_location(url: &Url) -> Result<()> {
    register_stores();
    match url.scheme() {
        "file" | "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" => Ok(()),
        other => Err(Error::config(format!(
            "{url}: tables go to a folder, s3://, gs:// or az://, not {other}://"
        ))),
    }
}

/// Makes deltalake open `s3://`, `gs://` and `az://` tables with object_store's own clients,
/// configured from each cloud's standard environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`); its
/// default log store commits a version with a conditional write (`If-None-Match`), so no lock
/// service is needed.
fn register_stores() {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        let stores = Arc::new(CloudStores);
        for scheme in ["s3", "s3a", "gs", "az", "abfs", "abfss"] {
            let Ok(url) = Url::parse(&format!("{scheme}://")) else {
                continue;
            };
            let objects: Arc<dyn deltalake::logstore::ObjectStoreFactory> =
                Arc::clone(&stores) as _;
            let logs: Arc<dyn deltalake::logstore::LogStoreFactory> = Arc::clone(&stores) as _;
            deltalake::logstore::object_store_factories().insert(url.clone(), objects);
            deltalake::logstore::logstore_factories().insert(url, logs);
        }
    });
}

/// The object store of the bucket or container of `url` (`s3://`, `gs://`, else Azure),
/// configured from the cloud's standard environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`): the one
/// client of Delta commits and of the cluster's executors reading the tables.
pub(crate) fn cloud_store(url: &Url) -> object_store::Result<Arc<dyn object_store::ObjectStore>> {
    Ok(match url.scheme() {
        "s3" | "s3a" => Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(url.as_str())
                .build()?,
        ),
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .build()?,
        ),
        _ => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .build()?,
        ),
    })
}

/// The object stores and log stores of [`register_stores`].
#[derive(Debug)]
struct CloudStores;

impl deltalake::logstore::ObjectStoreFactory for CloudStores {
    fn parse_url_opts(
        &self,
        url: &Url,
        _config: &deltalake::logstore::StorageConfig,
    ) -> deltalake::DeltaResult<(deltalake::logstore::ObjectStoreRef, deltalake::Path)> {
        let store = cloud_store(url)?;
        Ok((store, deltalake::Path::from(url.path())))
    }
}

impl deltalake::logstore::LogStoreFactory for CloudStores {
    fn with_options(
        &self,
        prefixed: deltalake::logstore::ObjectStoreRef,
        root: deltalake::logstore::ObjectStoreRef,
        location: &Url,
        options: &deltalake::logstore::StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn deltalake::logstore::LogStore>> {
        Ok(deltalake::logstore::default_logstore(
            prefixed, root, location, options,
        ))
    }
}

/// Runs the future `make` makes to completion, on a thread and a runtime of its own: the store
/// is synchronous, and may be called from inside an async runtime (planning, a blocking task,
/// a caller's own), where blocking on that runtime would panic.
pub(super) fn block_on<F: Future>(make: impl FnOnce() -> F + Send) -> Result<F::Output>
where
    F::Output: Send,
{
    register_stores();
    std::thread::scope(|scope| {
        let run = scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::snapshot(format!("no runtime for Delta: {e}")))?;
            Ok(runtime.block_on(make()))
        });
        run.join()
            .map_err(|_| Error::snapshot("a Delta operation panicked"))?
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::snapshot::{Snapshot, SnapshotStore};

    fn commit(store: &SnapshotStore, lines: &[&str], time: &str) -> Snapshot {
        crate::snapshot::store::tests::commit_lines(store, "Patient", lines, time)
    }

    /// `count(*)` and `count(column)` of `provider`.
    async fn count(provider: Arc<dyn TableProvider>, column: &str) -> (i64, i64) {
        use arrow::array::AsArray;
        use arrow::datatypes::Int64Type;
        let ctx = SessionContext::new();
        ctx.register_table("t", provider).unwrap();
        let sql = format!("SELECT count(*), count({column}) FROM t");
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let value = |i: usize| batches[0].column(i).as_primitive::<Int64Type>().value(0);
        (value(0), value(1))
    }

    #[tokio::test]
    async fn every_commit_is_a_version_whose_columns_only_grow_and_which_reads_while_kept() {
        let cache = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(cache.path(), "http://example.org/fhir")
            .unwrap()
            .with_retention(Duration::from_secs(3600));
        let patient = |id: &str| format!(r#"{{"resourceType":"Patient","id":"{id}"}}"#);
        let (a, b, c) = (patient("a"), patient("b"), patient("c"));
        let first = commit(&store, &[&a, &b], "t1");
        let gendered = r#"{"resourceType":"Patient","id":"d","gender":"female"}"#;
        let second = commit(&store, &[gendered, &c], "t2");
        // Nobody reads the first any more: the retention keeps it.
        let first_dir = first.dir().to_owned();
        drop(first);
        assert!(first_dir.is_dir());
        assert_eq!(second.table("flattened").unwrap().delta_version, Some(1));
        let root = local_url(&store.dir().join("Patient").join("flattened")).unwrap();

        let versions = history(&root).unwrap();
        let listed: Vec<(u64, &str)> = versions
            .iter()
            .map(|v| (v.version, v.operation.as_str()))
            .collect();
        assert_eq!(listed, [(1, "WRITE"), (0, "CREATE TABLE")]);
        let export = &versions[0].export;
        assert_eq!(export["snapshot"], second.manifest().snapshot);
        assert_eq!(export["transactionTime"], "t2");
        assert_eq!(export["resources"], 2);
        assert_eq!(export["source"], "");
        assert!(versions[1].timestamp_ms <= versions[0].timestamp_ms);

        // The latest: the second export, with the column it brought; the first as it was,
        // kept for the retention.
        let state = SessionContext::new().state();
        let latest = open_version(&root, 1, &state).unwrap();
        assert_eq!(count(latest, "gender").await, (2, 1));
        let earlier = open_version(&root, 0, &state).unwrap();
        assert!(earlier.schema().field_with_name("gender").is_err());
        assert_eq!(count(earlier, "id").await, (2, 2));

        // A third export without `gender`: the table keeps the column, null for it.
        let third = commit(&store, &[&a], "t3");
        let latest = open_version(&root, 2, &state).unwrap();
        assert!(latest.schema().field_with_name("gender").is_ok());
        assert_eq!(count(latest, "gender").await, (1, 0));
        let err = open_version(&root, 9, &state).unwrap_err().to_string();
        assert!(err.contains("its versions are 0 to 2"), "{err}");

        // Without retention, a superseded snapshot goes once unread: its version no longer
        // reads, and says which file is missing.
        drop((second, third));
        let store = store.with_retention(Duration::ZERO);
        store.clean(Duration::from_secs(3600)).unwrap();
        let err = open_version(&root, 0, &state)
            .and_then(|gone| {
                block_on(|| async {
                    let ctx = SessionContext::new();
                    ctx.register_table("t", gone).unwrap();
                    ctx.sql("SELECT * FROM t").await?.collect().await
                })?
                .map_err(|e| Error::snapshot(e.to_string()))
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("part-0.parquet"), "{err}");
        assert!(!first_dir.exists());
        assert_eq!(
            history(&root).unwrap().len(),
            3,
            "the log keeps every version"
        );
    }

    #[test]
    fn writers_that_lose_a_race_commit_their_export_as_the_next_version() {
        let dir = tempfile::tempdir().unwrap();
        let table = local_url(dir.path()).unwrap();
        let schema = Schema::new(vec![arrow::datatypes::Field::new(
            "id",
            arrow::datatypes::DataType::Utf8,
            true,
        )]);
        let file = |n: usize| TableFile {
            path: format!("s{n}/part-0.parquet"),
            rows: n as u64,
            bytes: 1,
        };
        let info = |n: usize| serde_json::json!({ "snapshot": format!("s{n}") });
        publish(
            &table,
            &[file(0)],
            Some(&schema),
            info(0),
            Change::Overwrite,
        )
        .unwrap();
        // Four writers read version 0 and commit at once: one wins each version, the others
        // read the table again and commit after it.
        let start = std::sync::Barrier::new(4);
        let versions: Vec<u64> = std::thread::scope(|scope| {
            let writers: Vec<_> = (1..=4)
                .map(|n| {
                    let (table, schema, start) = (&table, &schema, &start);
                    scope.spawn(move || {
                        start.wait();
                        publish(table, &[file(n)], Some(schema), info(n), Change::Overwrite)
                            .unwrap()
                    })
                })
                .collect();
            writers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut sorted = versions.clone();
        sorted.sort();
        assert_eq!(sorted, [1, 2, 3, 4], "{versions:?}");
        let history = history(&table).unwrap();
        let mut snapshots: Vec<&str> = history[..4]
            .iter()
            .map(|v| v.export["snapshot"].as_str().unwrap())
            .collect();
        snapshots.sort();
        assert_eq!(snapshots, ["s1", "s2", "s3", "s4"]);
    }
}
