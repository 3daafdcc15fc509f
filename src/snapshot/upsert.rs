//! The tables of an incremental refresh ([`SnapshotWriter::carry_over`](super::SnapshotWriter::carry_over)):
//! the previous snapshot's Parquet files are carried into the new snapshot as they are, but for
//! those holding a resource that changed or was deleted, which are written again without it, and
//! the changes come as parts of their own. The Delta version then adds and removes only those
//! files: an upsert by id that touches what changed, not the whole table.

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::convert::check_stopping;
use super::parquet::{ROW_GROUP_ROWS, write_file};
use super::store::footer_schema;
use super::{TableFile, TableFiles};
use crate::ndjson::{OVERFLOW_COLUMN, TableMode};
use crate::{Error, Result};

/// The column an upsert matches resources by.
const ID: &str = "id";

/// The previous snapshot's table of one mode, which the new snapshot's carries over.
#[derive(Debug)]
pub(super) struct Previous<'a> {
    /// Its Delta table's folder, which its file paths are relative to.
    pub root: std::path::PathBuf,
    pub table: &'a TableFiles,
    pub schema: SchemaRef,
}

/// Whether files of `prev`'s columns can stay as they are beside parts of `part`'s columns in a
/// table of `mode`: both have the id column, the columns both have are of one type, neither has
/// the overflow column (which of a resource's paths are columns depends on all resources), and
/// the columns together stay within the mode's width bound. Otherwise the table is converted
/// whole.
pub(super) fn agrees(prev: &Schema, part: &Schema, mode: &TableMode) -> bool {
    let same_types = part.fields().iter().all(|f| {
        prev.field_with_name(f.name())
            .map_or(true, |p| p.data_type() == f.data_type())
    });
    let added = part
        .fields()
        .iter()
        .filter(|f| prev.field_with_name(f.name()).is_err())
        .count();
    let within = match mode {
        TableMode::Flattened(o) => prev.fields().len() + added <= o.max_columns(),
        TableMode::Nested => true,
    };
    let overflow = |s: &Schema| s.field_with_name(OVERFLOW_COLUMN).is_ok();
    let id = |s: &Schema| s.field_with_name(ID).is_ok_and(|f| is_text(f.data_type()));
    same_types && within && id(prev) && !overflow(prev) && !overflow(part)
}

fn is_text(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// The table of `prev`'s resources but those whose id is in `drop`, with `changes` (files of the
/// new snapshot, paths relative to the Delta table, in `out_dir` on disk, of `changes_schema`):
/// a first file of no rows with every column (the previous ones first), `prev`'s files that hold
/// no dropped id as they are (their paths, in earlier snapshots' folders), those that do written
/// again into `out_dir` without them (named `part-<n>.parquet` after the parts of `changes`), then
/// the parts of `changes` that have rows; past [`MAX_SMALL_FILES`] small files, `prev`'s small
/// ones are written again as one. `folder` is the new snapshot's id, which its files' paths
/// begin with. Returns the table and its schema.
pub(super) fn carry_over(
    prev: &Previous,
    drop: &HashSet<String>,
    changes: TableFiles,
    changes_schema: &Schema,
    out_dir: &Path,
    folder: &str,
) -> Result<(TableFiles, SchemaRef)> {
    let mut fields: Vec<_> = prev.schema.fields().iter().cloned().collect();
    for field in changes_schema.fields() {
        if prev.schema.field_with_name(field.name()).is_err() {
            fields.push(Arc::new(field.as_ref().clone().with_nullable(true)));
        }
    }
    let schema = Arc::new(Schema::new(fields));
    // A file written here that holds no row goes again.
    let discard = |file: &TableFile| {
        let path = out_dir.join(file.name());
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))
    };
    let kept = |file: TableFile, files: &mut Vec<TableFile>| -> Result<()> {
        if file.rows == 0 {
            return discard(&file);
        }
        files.push(file);
        Ok(())
    };
    // The parts of the changes without rows (a first file with their schema, a part of only
    // deletions) make way for the table's own first file.
    let (parts, empty): (Vec<TableFile>, Vec<TableFile>) =
        changes.files.into_iter().partition(|f| f.rows > 0);
    empty.iter().try_for_each(discard)?;
    let mut next = parts.len() + empty.len();
    let mut name = || {
        next += 1;
        format!("part-{}.parquet", next - 1)
    };
    let started = std::time::Instant::now();
    let mut files = vec![write(out_dir, &name(), &schema, folder, |_| Ok(0))?];
    let live: Vec<&TableFile> = prev.table.files.iter().filter(|f| f.rows > 0).collect();
    // Each refresh adds a file: past a bound, the small ones are written again as one.
    let small = |f: &TableFile| f.rows < ROW_GROUP_ROWS as u64;
    let compact = live.iter().filter(|f| small(f)).count() + parts.len() > MAX_SMALL_FILES;
    let mut compacted = Vec::new();
    for file in live {
        let path = prev.root.join(&file.path);
        if compact && small(file) {
            compacted.push(path);
        } else if holds_any(&path, drop)? {
            let rewritten = write(out_dir, &name(), &footer_schema(&path)?, folder, |sink| {
                without(&path, drop, sink)
            })?;
            tracing::debug!(
                "{}: {} of {} rows carried into {}",
                path.display(),
                rewritten.rows,
                file.rows,
                rewritten.path
            );
            kept(rewritten, &mut files)?;
        } else {
            files.push(file.clone());
        }
    }
    if !compacted.is_empty() {
        // Older files lack the columns that came later: null in the one file.
        let nullable: Vec<_> = schema
            .fields()
            .iter()
            .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
            .collect();
        let nullable = Arc::new(Schema::new(nullable));
        let one = write(out_dir, &name(), &nullable, folder, |sink| {
            let mut rows = 0;
            for path in &compacted {
                rows += without(path, drop, &mut |batch| sink(&realign(batch, &nullable)?))?;
            }
            Ok(rows)
        })?;
        tracing::debug!(
            "{} small files written again as {}",
            compacted.len(),
            one.path
        );
        kept(one, &mut files)?;
    }
    let carried = files.iter().filter(|f| !f.path.starts_with(folder)).count();
    tracing::debug!(
        "{}: {carried} of {} files carried over as they are, the rest written again, in {:.3} s",
        prev.root.display(),
        prev.table.files.len(),
        started.elapsed().as_secs_f64()
    );
    files.extend(parts);
    let skipped_lines = prev.table.skipped_lines + changes.skipped_lines;
    Ok((TableFiles::of(files, skipped_lines, &schema), schema))
}

/// Small files (of fewer rows than a row group, raw files under [`SMALL_RAW_BYTES`]) a refresh
/// leaves before it writes them again as one: each refresh adds one, and a table of thousands of
/// files would cost every query a file opened for each.
pub(super) const MAX_SMALL_FILES: usize = 16;

/// A raw file smaller than this is small ([`MAX_SMALL_FILES`]).
pub(super) const SMALL_RAW_BYTES: u64 = 32 << 20;

/// `batch` with the columns of `schema`, in its order: those it lacks null.
fn realign(
    batch: &arrow::record_batch::RecordBatch,
    schema: &SchemaRef,
) -> Result<arrow::record_batch::RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(column) => Arc::clone(column),
            None => arrow::array::new_null_array(f.data_type(), batch.num_rows()),
        })
        .collect();
    arrow::record_batch::RecordBatch::try_new(Arc::clone(schema), columns)
        .map_err(|e| Error::snapshot_with("compacting small files", e))
}

fn reader(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::snapshot_with(path.display().to_string(), e))
}

/// Which rows of `batch` to keep: those whose id (the column `at`) is not in `drop`.
fn kept(
    batch: &arrow::record_batch::RecordBatch,
    at: usize,
    drop: &HashSet<String>,
) -> Result<BooleanArray> {
    let ids = cast(batch.column(at), &DataType::Utf8)
        .map_err(|e| Error::snapshot_with("reading the id column", e))?;
    let ids = ids.as_string::<i32>();
    Ok((0..ids.len())
        .map(|i| Some(ids.is_null(i) || !drop.contains(ids.value(i))))
        .collect())
}

/// Whether the Parquet file at `path` holds a row whose id is in `drop` (only its id column is
/// read; a file without one holds resources without ids, which nothing replaces).
fn holds_any(path: &Path, drop: &HashSet<String>) -> Result<bool> {
    if drop.is_empty() {
        return Ok(false);
    }
    let builder = reader(path)?;
    let id = builder
        .parquet_schema()
        .columns()
        .iter()
        .position(|c| c.path().parts() == [ID]);
    let Some(at) = id else {
        return Ok(false);
    };
    let mask = ProjectionMask::leaves(builder.parquet_schema(), [at]);
    let batches = builder
        .with_projection(mask)
        .build()
        .map_err(|e| Error::snapshot_with(path.display().to_string(), e))?;
    for batch in batches {
        let batch = batch.map_err(|e| Error::snapshot_with(path.display().to_string(), e))?;
        if kept(&batch, 0, drop)?.false_count() > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Hands `sink` the rows of the Parquet file at `path` whose id is not in `drop` (all of a file
/// without an id column).
fn without(
    path: &Path,
    drop: &HashSet<String>,
    sink: &mut dyn FnMut(&arrow::record_batch::RecordBatch) -> Result<()>,
) -> Result<u64> {
    let err = |e: &dyn std::fmt::Display| Error::snapshot(format!("{}: {e}", path.display()));
    let builder = reader(path)?;
    let at = builder.schema().index_of(ID).ok();
    let mut rows = 0;
    for batch in builder.build().map_err(|e| err(&e))? {
        check_stopping()?;
        let batch = batch.map_err(|e| err(&e))?;
        let batch = match at {
            Some(at) => {
                filter_record_batch(&batch, &kept(&batch, at, drop)?).map_err(|e| err(&e))?
            }
            None => batch,
        };
        rows += batch.num_rows() as u64;
        sink(&batch)?;
    }
    Ok(rows)
}

/// Writes the durable Parquet file `out_dir/<name>` of `schema` with the rows `fill` hands its
/// sink, and describes it with its path in the new snapshot's folder `folder`.
fn write(
    out_dir: &Path,
    name: &str,
    schema: &SchemaRef,
    folder: &str,
    fill: impl FnOnce(&mut dyn FnMut(&arrow::record_batch::RecordBatch) -> Result<()>) -> Result<u64>,
) -> Result<TableFile> {
    let (rows, bytes) = write_file(&out_dir.join(name), Arc::clone(schema), fill)?;
    Ok(TableFile {
        path: format!("{folder}/{name}"),
        rows,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use datafusion::prelude::SessionContext;

    use crate::snapshot::delta;
    use crate::snapshot::tests::{commit, fhir, patient, query, rows};
    use crate::snapshot::{Snapshot, SnapshotStore, TableFile};

    /// The files of `snapshot`'s table in earlier snapshots' folders: those carried over.
    fn carried_over(snapshot: &Snapshot) -> Vec<String> {
        let files = &snapshot.table("flattened").unwrap().files;
        let own = |f: &&TableFile| f.path.starts_with(&snapshot.manifest().snapshot);
        files
            .iter()
            .filter(|f| !own(f))
            .map(|f| f.path.clone())
            .collect()
    }

    /// The actions of version `version` of the Delta table in `root`: (adds, removes, operation
    /// and its matched predicates).
    fn actions(root: &std::path::Path, version: u64) -> (Vec<String>, Vec<String>, String) {
        let log = root.join("_delta_log").join(format!("{version:020}.json"));
        let (mut adds, mut removes, mut operation) = (Vec::new(), Vec::new(), String::new());
        for line in fs::read_to_string(log).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            let path = |kind: &str| action[kind]["path"].as_str().map(str::to_owned);
            adds.extend(path("add"));
            removes.extend(path("remove"));
            if let Some(op) = action["commitInfo"]["operation"].as_str() {
                let matched = &action["commitInfo"]["operationParameters"]["matchedPredicates"];
                operation = format!("{op} {matched}");
            }
        }
        adds.sort();
        removes.sort();
        (adds, removes, operation)
    }

    #[tokio::test]
    async fn a_refresh_carries_untouched_files_over_and_its_version_touches_only_the_rest() {
        let cache = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(cache.path(), "http://example.org/fhir").unwrap();
        let root = store.dir().join("Patient").join("flattened");
        let g = |g: &str| format!("\"{g}\"");
        let first = commit(
            &store,
            &[
                &[patient("a", &g("female")), patient("b", &g("male"))],
                &[patient("c", &g("female")), patient("d", &g("male"))],
            ],
            None,
        );
        let first_id = first.manifest().snapshot.clone();
        let first_files: Vec<String> = first
            .table("flattened")
            .unwrap()
            .files
            .iter()
            .map(|f| f.path.clone())
            .collect();
        assert_eq!(first_files.len(), 2, "{first_files:?}");

        // `c` changes, `e` comes, `a` goes: the file of `a` and `b` and that of `c` and `d` are
        // both written again; a new column comes with `e`.
        let e = r#"{"resourceType":"Patient","id":"e","gender":"other","active":true}"#.to_owned();
        let second = commit(
            &store,
            &[&[patient("c", &g("other")), e]],
            Some((first, &["a", "c"])),
        );
        assert_eq!(
            rows(&second).await,
            ["b|male", "c|other", "d|male", "e|other"]
        );
        let second_id = second.manifest().snapshot.clone();
        assert_eq!(carried_over(&second), [] as [String; 0]);
        let table = second.table("flattened").unwrap();
        assert_eq!(table.files[0].rows, 0, "a first file with every column");
        let second_first = table.files[0].path.clone();
        assert!(
            second
                .schema("flattened")
                .unwrap()
                .field_with_name("active")
                .is_ok()
        );

        // Only `f` comes: every file of the second snapshot stays where it is, its raw files
        // linked.
        let inode = |path: &std::path::Path| {
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).unwrap())
        };
        let second_raw: Vec<u64> = second.raw_paths().iter().map(|p| inode(p)).collect();
        let f = patient("f", "null");
        let third = commit(&store, &[&[f]], Some((second, &["f"])));
        assert_eq!(
            rows(&third).await,
            ["b|male", "c|other", "d|male", "e|other", "f|-"]
        );
        let table = third.table("flattened").unwrap();
        let third_id = third.manifest().snapshot.clone();
        let (own, carried): (Vec<_>, Vec<_>) = table
            .files
            .iter()
            .partition(|f| f.path.starts_with(&third_id));
        assert_eq!(own.iter().map(|f| f.rows).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(carried.len(), 3, "{:?}", table.files);
        assert!(
            carried
                .iter()
                .all(|f| f.path.starts_with(&second_id) && f.rows > 0)
        );
        assert_eq!(table.rows, 5);
        let raw: Vec<u64> = third.manifest().raw.iter().map(|r| r.resources).collect();
        assert_eq!(raw, [1, 1, 2, 1], "the second's raw files, then the change");
        let third_raw: Vec<u64> = third.raw_paths()[..3].iter().map(|p| inode(p)).collect();
        assert_eq!(third_raw, second_raw);

        // Its version adds its two files and removes only the second's first file.
        let (adds, removes, operation) = actions(&root, 2);
        // No tombstone came: the merge updates, it deletes nothing.
        assert!(operation.starts_with("MERGE "), "{operation}");
        assert!(
            operation.contains("update") && !operation.contains("delete"),
            "{operation}"
        );
        let mut own: Vec<String> = own.iter().map(|f| f.path.clone()).collect();
        own.sort();
        assert_eq!(adds, own);
        assert_eq!(removes, [second_first]);
        assert_eq!(
            actions(&root, 1).1,
            first_files,
            "the second version removed the first's files"
        );

        // The first and second snapshots went, but for the files the third holds.
        assert!(!store.dir().join("Patient").join(&first_id).exists());
        assert!(!root.join(&first_id).exists());
        assert!(!store.dir().join("Patient").join(&second_id).exists());
        let mut left: Vec<String> = fs::read_dir(root.join(&second_id))
            .unwrap()
            .map(|e| format!("{second_id}/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        left.sort();
        let mut held: Vec<String> = carried.iter().map(|f| f.path.clone()).collect();
        held.sort();
        assert_eq!(left, held);

        // Another engine reads the same rows from the Delta table.
        let state = SessionContext::new().state();
        let url = delta::local_url(&root).unwrap();
        let latest = delta::open_version(&url, 2, &state).unwrap();
        assert_eq!(query(latest, "SELECT count(*) FROM t").await, ["5"]);

        // A change of a column's type converts the table whole.
        let typed = commit(&store, &[&[patient("b", "7")]], Some((third, &["b"])));
        assert_eq!(carried_over(&typed), [] as [String; 0]);
        assert_eq!(
            rows(&typed).await,
            ["b|7", "c|other", "d|male", "e|other", "f|-"]
        );
        let (_, removes, _) = actions(&root, 3);
        assert_eq!(removes.len(), 5);
    }

    #[tokio::test]
    async fn the_small_files_of_many_refreshes_are_written_again_as_one() {
        let cache = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(cache.path(), "http://example.org/fhir").unwrap();
        let mut current = commit(&store, &[&[patient("p00", "\"female\"")]], None);
        let mut most = (0, 0);
        for n in 1..=2 * super::MAX_SMALL_FILES {
            let id = format!("p{n:02}");
            let line = match n {
                // A column that came later: null in the earlier resources of a compacted file.
                5 => format!(r#"{{"resourceType":"Patient","id":"{id}","active":true}}"#),
                _ => patient(&id, "null"),
            };
            current = commit(&store, &[&[line]], Some((current, &[id.as_str()])));
            let files = current.table("flattened").unwrap().files.len();
            most = (most.0.max(files), most.1.max(current.manifest().raw.len()));
        }
        // At most the bound, the table's first file and the refresh's own; the raw files alike.
        assert!(most.0 <= super::MAX_SMALL_FILES + 2, "{most:?}");
        assert!(most.1 <= super::MAX_SMALL_FILES + 1, "{most:?}");
        let rows = rows(&current).await;
        assert_eq!(rows.len(), 2 * super::MAX_SMALL_FILES + 1);
        assert_eq!(rows[0], "p00|female");
        let active = query(fhir(&current), "SELECT count(active) FROM t").await;
        assert_eq!(active, ["1"]);
        assert_eq!(
            current.manifest().resources(),
            2 * super::MAX_SMALL_FILES as u64 + 1
        );
    }

    #[tokio::test]
    async fn a_file_of_resources_without_ids_is_carried_over() {
        let cache = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(cache.path(), "http://example.org/fhir").unwrap();
        let anonymous = r#"{"resourceType":"Patient","gender":"male"}"#.to_owned();
        let first = commit(&store, &[&[patient("a", "\"female\"")], &[anonymous]], None);
        let first_id = first.manifest().snapshot.clone();
        let second = commit(
            &store,
            &[&[patient("a", "\"other\"")]],
            Some((first, &["a"])),
        );
        let carried = carried_over(&second);
        assert_eq!(carried.len(), 1, "{carried:?}");
        assert!(carried[0].starts_with(&first_id), "{carried:?}");
        assert_eq!(second.table("flattened").unwrap().rows, 2);
    }
}
