//! What the snapshot tests share: snapshots of Patient committed from lines, and their rows.

use std::collections::HashSet;
use std::fs;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::prelude::SessionContext;

use crate::catalog::FhirTable;
use crate::ndjson::{DecodeOptions, TableMode};
use crate::snapshot::{Incremental, RawFile, Snapshot, SnapshotManifest, SnapshotStore, write_raw};

pub(super) fn patient(id: &str, gender: &str) -> String {
    format!(r#"{{"resourceType":"Patient","id":"{id}","gender":{gender}}}"#)
}

/// Commits `parts` (each converted as a part of its own: a file each) as a snapshot of
/// Patient; with `prev`, as its incremental refresh that drops `drop` and adds `parts`.
pub(super) fn commit(
    store: &SnapshotStore,
    parts: &[&[String]],
    prev: Option<(Snapshot, &[&str])>,
) -> Snapshot {
    let mut writer = store.begin("Patient").unwrap();
    let options = DecodeOptions::default();
    let mode = TableMode::default();
    let mut manifest = SnapshotManifest::default();
    let carried = prev.map(|(prev, drop)| {
        let drop: HashSet<String> = drop.iter().map(|s| s.to_string()).collect();
        manifest.raw = writer.keep_raw(&prev, &drop, usize::MAX).unwrap();
        (prev, drop)
    });
    let kept = manifest.raw.len();
    let mut raw = |inputs: &[std::path::PathBuf], drop: Option<&HashSet<String>>| {
        let (path, rel) = writer.raw_path(manifest.raw.len(), false);
        let (resources, bytes) = write_raw(inputs, drop, usize::MAX, &path).unwrap();
        manifest.raw.push(RawFile {
            path: rel,
            resources,
            bytes,
            origin: None,
        });
        manifest.raw.last().unwrap().clone()
    };
    let inputs: Vec<_> = parts
        .iter()
        .enumerate()
        .map(|(n, lines)| {
            let input = store.dir().join(format!("in-{n}.ndjson"));
            fs::write(&input, lines.join("\n")).unwrap();
            raw(&[input], None)
        })
        .collect();
    for part in &inputs {
        writer
            .convert_part(
                std::slice::from_ref(part),
                std::slice::from_ref(&mode),
                &options,
                &|_| {},
            )
            .unwrap();
    }
    if let Some((prev, drop)) = carried {
        manifest.incremental = Some(Incremental {
            previous: prev.manifest().snapshot.clone(),
            ..Incremental::default()
        });
        let covers = manifest.raw[..kept].to_vec();
        writer.carry_over(prev, drop, &covers);
    }
    writer.commit(manifest, &[mode], &options, &|_| {}).unwrap()
}

/// The first column of `sql`'s rows over `table` (named `t`), as text.
pub(super) async fn query(table: Arc<dyn TableProvider>, sql: &str) -> Vec<String> {
    let ctx = SessionContext::new();
    ctx.register_table("t", table).unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches
        .iter()
        .flat_map(|b| {
            let column = cast(b.column(0), &DataType::Utf8).unwrap();
            let strings = column.as_string::<i32>().clone();
            (0..strings.len()).map(move |i| strings.value(i).to_owned())
        })
        .collect()
}

/// fhirflight's own table of `snapshot`.
pub(super) fn fhir(snapshot: &Snapshot) -> Arc<dyn TableProvider> {
    Arc::new(FhirTable::try_new(snapshot.clone(), &TableMode::default()).unwrap())
}

/// `id|gender` of every row fhirflight reads from `snapshot`, sorted.
pub(super) async fn rows(snapshot: &Snapshot) -> Vec<String> {
    let sql = "SELECT id || '|' || coalesce(CAST(gender AS VARCHAR), '-') FROM t ORDER BY 1";
    query(fhir(snapshot), sql).await
}
