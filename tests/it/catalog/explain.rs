//! What `EXPLAIN` tells: the snapshot's files and the statistics from its manifest, and the
//! filters pushed into the export apart from those the Parquet scan keeps; pushdown over a source
//! that ignores it still returns the right rows and keeps the full snapshot apart.

use std::sync::Arc;

use fhirflight::catalog::{self, Freshness};

use super::{context, rows, scan_lines, seeded};

#[tokio::test]
async fn explain_shows_the_snapshot_files_and_statistics_come_from_the_manifest() {
    let cache = tempfile::tempdir().unwrap();
    let (ctx, fhir) = context(seeded() as _, cache.path(), Freshness::Never).await;
    // A full snapshot first: the filtered query below prefers it to a filtered export.
    rows(&ctx, "SELECT count(*) FROM src.fhir.patient").await;
    let plan = rows(
        &ctx,
        "EXPLAIN SELECT id FROM src.fhir.patient WHERE gender = 'male'",
    )
    .await
    .join("\n");
    let snapshot = fhir
        .snapshots()
        .unwrap()
        .into_iter()
        .find(|s| s.manifest().resource_type == "Patient")
        .unwrap();
    assert!(
        plan.contains(&format!(
            "Patient/flattened/{}/part-0.parquet",
            snapshot.manifest().snapshot
        )),
        "{plan}"
    );
    assert!(
        plan.contains("predicate="),
        "filter pushed into the Parquet scan: {plan}"
    );
    let table = fhir.table("Patient").await.unwrap();
    let stats = datafusion::catalog::TableProvider::statistics(&table).unwrap();
    assert_eq!(
        stats.num_rows,
        datafusion::common::stats::Precision::Exact(3)
    );
}

#[tokio::test]
async fn pushdown_over_a_source_that_ignores_it_keeps_rows_right_and_the_full_snapshot_apart() {
    let cache = tempfile::tempdir().unwrap();
    let source = seeded();
    let (ctx, fhir) = context(Arc::clone(&source) as _, cache.path(), Freshness::Never).await;
    let query = "SELECT p.id FROM src.fhir.patient p WHERE p.gender = 'female'";
    // MemorySource ignores `_typeFilter`: DataFusion applies the filter again.
    assert_eq!(rows(&ctx, query).await, ["p1", "p3"]);
    let fetches = source.fetches();
    assert_eq!(fetches.len(), 1);
    assert_eq!(fetches[0].type_filters, ["Patient?gender=female"]);
    let plan = rows(&ctx, &format!("EXPLAIN {query}")).await.join("\n");
    assert!(plan.contains("Patient@gender=female-"), "{plan}");
    assert_eq!(source.fetches().len(), 1, "same pushdown, same snapshot");
    // The filtered export is not the type's snapshot: an unfiltered query exports everything.
    assert!(fhir.snapshots().unwrap().is_empty());
    assert_eq!(
        rows(&ctx, "SELECT count(*) FROM src.fhir.patient").await,
        ["3"]
    );
    let fetches = source.fetches();
    assert_eq!(fetches.len(), 2);
    assert!(fetches[1].type_filters.is_empty(), "{fetches:?}");
    // Now the full snapshot serves the filtered query too, without an export.
    assert_eq!(rows(&ctx, query).await, ["p1", "p3"]);
    assert_eq!(
        rows(
            &ctx,
            "SELECT id FROM src.fhir.patient WHERE gender = 'male'"
        )
        .await,
        ["p2"]
    );
    assert_eq!(source.fetches().len(), 2);
}

#[tokio::test]
async fn explain_names_the_filters_pushed_into_the_export_and_the_parquet_scan_keeps_its_own() {
    let cache = tempfile::tempdir().unwrap();
    let (ctx, fhir) = context(seeded() as _, cache.path(), Freshness::Never).await;
    let pushed = "SELECT id FROM src.fhir.patient WHERE gender = 'female'";
    assert_eq!(rows(&ctx, pushed).await, ["p1", "p3"]);
    let plan = rows(&ctx, &format!("EXPLAIN {pushed}")).await.join("\n");
    assert!(fhir.snapshots().unwrap().is_empty(), "no full snapshot yet");
    let pushdown = catalog::Pushdown {
        since: None,
        type_filter: Some("Patient?gender=female".into()),
    };
    let filtered = fhir
        .store()
        .current(&pushdown.snapshot_name("Patient"))
        .unwrap()
        .unwrap();
    let (scan, source) = scan_lines(&plan);
    assert_eq!(
        scan,
        format!(
            "FhirScanExec: type=Patient, snapshot={}, pushed=[_typeFilter=Patient?gender=female]",
            filtered.manifest().snapshot
        )
    );
    assert!(source.contains("predicate=gender@"), "{plan}");

    // Nothing pushed: a full snapshot serves the same filter, which still prunes row groups.
    assert_eq!(
        rows(&ctx, "SELECT count(*) FROM src.fhir.patient").await,
        ["3"]
    );
    let full = fhir.snapshots().unwrap().remove(0);
    assert_eq!(rows(&ctx, pushed).await, ["p1", "p3"]);
    let plan = rows(&ctx, &format!("EXPLAIN {pushed}")).await.join("\n");
    let (scan, source) = scan_lines(&plan);
    assert_eq!(
        scan,
        format!(
            "FhirScanExec: type=Patient, snapshot={}, pushed=[]",
            full.manifest().snapshot
        )
    );
    assert!(source.contains("predicate=gender@"), "{plan}");
    let analyzed = rows(
        &ctx,
        "EXPLAIN ANALYZE SELECT id FROM src.fhir.patient WHERE gender = 'none'",
    )
    .await
    .join("\n");
    // Pruned by the Parquet statistics (here the one file with its one row group).
    assert!(
        analyzed.contains("files_ranges_pruned_statistics=1 total \u{2192} 0 matched"),
        "{analyzed}"
    );
    // Dynamic filters (a TopK's) still reach the Parquet scan through FhirScanExec.
    let plan = rows(
        &ctx,
        "EXPLAIN SELECT id FROM src.fhir.patient ORDER BY \"birthDate\" DESC LIMIT 1",
    )
    .await
    .join("\n");
    assert!(scan_lines(&plan).1.contains("DynamicFilter"), "{plan}");
}
