//! Each table (mode) of a name is a Delta Lake table at `<name>/<mode>/`, which every lakehouse
//! engine reads as a table: a commit of the store writes one version ([`publish`]: the new
//! snapshot's files added, the files of the one it supersedes removed, the export's metadata in
//! the commit), so every export is a version ([`history`]) and an earlier one can be read
//! ([`open_version`]) while its files are kept.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::Schema;
use datafusion::catalog::{Session, TableProvider};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, MetadataExt, StructType};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTableBuilder, DeltaTableError};
use futures::TryStreamExt;
use serde::Serialize;

use super::TableFile;
use crate::{Error, Result};

/// The key of fhirflight's metadata in a commit's `commitInfo`.
pub const COMMIT_KEY: &str = "fhirflight";

/// Commits a version of the Delta table at `root` (creating it) that holds exactly `files`
/// (paths relative to `root`) with the columns of `schema`, and `info` under [`COMMIT_KEY`] in
/// its `commitInfo`. The table's schema becomes `schema` (the type's columns, which never
/// shrink) with a metadata action, never a rewrite of a file. Returns the version.
pub(super) fn publish(
    root: &Path,
    files: &[TableFile],
    schema: &Schema,
    info: serde_json::Value,
) -> Result<u64> {
    let failed =
        |e: &dyn std::fmt::Display| Error::snapshot(format!("Delta table {}: {e}", root.display()));
    let columns: StructType = schema.try_into_kernel().map_err(|e| failed(&e))?;
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
                // `count(*)` is answered from it: exact, from the conversion.
                stats: Some(serde_json::json!({ "numRecords": f.rows }).to_string()),
                ..Default::default()
            })
        })
        .collect();
    let properties = CommitProperties::default().with_metadata([(COMMIT_KEY.to_owned(), info)]);
    let committed = block_on(|| async {
        let mut table = DeltaTableBuilder::from_url(table_url(root)?)?.build()?;
        // Asked first: loading a folder without a log logs an error of the kernel's.
        match table.log_store().is_delta_table_location().await? {
            true => table.load().await?,
            false => {
                let created = table
                    .create()
                    .with_columns(columns.fields().cloned())
                    .with_actions(adds)
                    .with_commit_properties(properties)
                    .await?;
                return Ok(created.version().unwrap_or_default());
            }
        }
        let snapshot = table.snapshot()?;
        let mut actions = Vec::new();
        if snapshot.schema().as_ref() != &columns {
            actions.push(Action::Metadata(
                snapshot.metadata().clone().with_schema(&columns)?,
            ));
        }
        // A path added again (a conversion redone for the same snapshot) is replaced by its
        // add: one action per path and version.
        let removes: Vec<Action> = snapshot
            .snapshot()
            .file_views(table.log_store().as_ref(), None)
            .try_filter(|f| {
                let kept = files.iter().all(|n| n.path != f.path().as_ref());
                async move { kept }
            })
            .map_ok(|f| Action::Remove(f.remove_action(true)))
            .try_collect()
            .await?;
        actions.extend(removes);
        actions.extend(adds);
        let operation = DeltaOperation::Write {
            mode: SaveMode::Overwrite,
            partition_by: None,
            predicate: None,
        };
        let commit = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(snapshot), table.log_store(), operation)
            .await?;
        Ok::<_, DeltaTableError>(commit.version())
    })?;
    committed.map_err(|e| failed(&e))
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
    /// The Delta operation (`CREATE TABLE`, `WRITE`).
    pub operation: String,
    /// What fhirflight recorded with it (the snapshot, the export's server, request,
    /// `transactionTime`, counts, warnings); `null` for a commit another writer made.
    pub export: serde_json::Value,
}

/// The versions of the Delta table at `root`, newest first; none when there is no table.
pub fn history(root: &Path) -> Result<Vec<TableVersion>> {
    let listed = block_on(|| async {
        let mut table = DeltaTableBuilder::from_url(table_url(root)?)?.build()?;
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
    listed.map_err(|e| Error::snapshot(format!("Delta table {}: {e}", root.display())))
}

/// The Delta table at `root` as it was at `version`, as a DataFusion table (its files read by
/// deltalake's own scan, in the session `state`). It loads on a thread of its own, so it may be
/// called from planning, which is synchronous inside an async runtime.
pub fn open_version(
    root: &Path,
    version: u64,
    state: &dyn Session,
) -> Result<Arc<dyn TableProvider>> {
    let opened = block_on(|| async {
        let mut table = DeltaTableBuilder::from_url(table_url(root)?)?.build()?;
        table.load_version(version).await?;
        table.update_datafusion_session(state)?;
        table.table_provider().await
    })?;
    opened.map_err(|e| {
        Error::snapshot(format!(
            "Delta table {} at version {version}: {e}",
            root.display()
        ))
    })
}

/// The `file://` URL of the table folder `root` (absolute).
fn table_url(root: &Path) -> std::result::Result<url::Url, DeltaTableError> {
    let absolute = std::path::absolute(root)
        .map_err(|e| DeltaTableError::InvalidTableLocation(e.to_string()))?;
    url::Url::from_directory_path(&absolute)
        .map_err(|()| DeltaTableError::InvalidTableLocation(absolute.display().to_string()))
}

/// Runs the future `make` makes to completion, on a thread and a runtime of its own: the store
/// is synchronous, and may be called from inside an async runtime (planning, a blocking task,
/// a caller's own), where blocking on that runtime would panic.
fn block_on<F: Future>(make: impl FnOnce() -> F + Send) -> Result<F::Output>
where
    F::Output: Send,
{
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
    use crate::ndjson::{DecodeOptions, Strictness, TableMode};
    use crate::snapshot::{RawFile, Snapshot, SnapshotManifest, SnapshotStore, write_raw};

    /// Commits `lines` of Patient as a snapshot with `transactionTime` `time`.
    fn commit(store: &SnapshotStore, lines: &[&str], time: &str) -> Snapshot {
        let input = store.dir().join(format!("{time}.ndjson"));
        std::fs::write(&input, lines.join("\n")).unwrap();
        let writer = store.begin("Patient").unwrap();
        let (path, rel) = writer.raw_path(0, true);
        let (resources, bytes) = write_raw(&[input], None, usize::MAX, &path).unwrap();
        let manifest = SnapshotManifest {
            raw: vec![RawFile {
                path: rel,
                resources,
                bytes,
            }],
            transaction_time: time.to_owned(),
            ..SnapshotManifest::default()
        };
        let options = DecodeOptions::default().with_strictness(Strictness::Lenient);
        let modes = [TableMode::default()];
        writer.commit(manifest, &modes, &options, &|_| {}).unwrap()
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
        let root = store.dir().join("Patient").join("flattened");

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
}
