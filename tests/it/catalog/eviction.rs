//! Filtered snapshots (those of exports with pushed filters) are bounded: the least recently used
//! go first, never one being read.

use std::sync::Arc;

use datafusion::prelude::SessionContext;
use fhirflight::catalog::{self, CatalogOptions, FhirCatalog, Freshness};

use super::{patient, rows, seeded};

/// The filtered snapshots of `resource_type` in the store, sorted.
fn filtered_snapshots(fhir: &FhirCatalog, resource_type: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fhir.store().dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{resource_type}@")))
        .map(|n| n.split('-').next().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn filtered_snapshots_are_bounded_least_recently_used_first_and_never_while_read() {
    let cache = tempfile::tempdir().unwrap();
    let source = seeded();
    source.upsert(patient("p4", "other"));
    source.upsert(patient("p5", "unknown"));
    let options = CatalogOptions::default()
        .with_cache_dir(cache.path())
        .with_freshness(Freshness::Never)
        .with_max_filtered_snapshots(2);
    let fhir = FhirCatalog::try_new(Arc::clone(&source) as _, options)
        .await
        .unwrap();
    let ctx = SessionContext::new();
    ctx.register_catalog("src", Arc::new(fhir.clone()));
    let query = |gender: &str| format!("SELECT id FROM src.fhir.patient WHERE gender = '{gender}'");
    let snapshot = |gender: &str| format!("Patient@gender={gender}");

    for gender in ["female", "male", "other"] {
        rows(&ctx, &query(gender)).await;
    }
    assert_eq!(
        filtered_snapshots(&fhir, "Patient"),
        [snapshot("male"), snapshot("other")]
    );
    // Using `male` makes `other` the least recently used.
    assert_eq!(rows(&ctx, &query("male")).await, ["p2"]);
    assert_eq!(rows(&ctx, &query("unknown")).await, ["p5"]);
    assert_eq!(source.fetches().len(), 4);
    assert_eq!(
        filtered_snapshots(&fhir, "Patient"),
        [snapshot("male"), snapshot("unknown")]
    );
    // The newest answer without an export.
    assert_eq!(rows(&ctx, &query("unknown")).await, ["p5"]);
    assert_eq!(source.fetches().len(), 4);

    // A planned query holds its snapshot: two newer ones do not evict it.
    let planned = catalog::sql(&ctx, &query("male")).await.unwrap();
    assert_eq!(rows(&ctx, &query("female")).await, ["p1", "p3"]);
    assert_eq!(rows(&ctx, &query("other")).await, ["p4"]);
    assert_eq!(
        filtered_snapshots(&fhir, "Patient"),
        [snapshot("female"), snapshot("male"), snapshot("other")]
    );
    let batches = planned.collect().await.unwrap();
    assert_eq!(crate::row_strings(&batches[0]).collect::<Vec<_>>(), ["p2"]);
    drop(batches);
    // Released, it goes at the next eviction.
    assert_eq!(rows(&ctx, &query("unknown")).await, ["p5"]);
    assert_eq!(
        filtered_snapshots(&fhir, "Patient"),
        [snapshot("other"), snapshot("unknown")]
    );
    assert_eq!(source.fetches().len(), 7);

    // The full snapshot is never evicted, however many filtered exports follow.
    assert_eq!(
        rows(&ctx, "SELECT count(*) FROM src.fhir.patient").await,
        ["5"]
    );
    let full = fhir.snapshots().unwrap().remove(0);
    let always = CatalogOptions::default()
        .with_cache_dir(cache.path())
        .with_freshness(Freshness::Always)
        .with_max_filtered_snapshots(1);
    let (always_ctx, always_fhir) = {
        let fhir = FhirCatalog::try_new(Arc::clone(&source) as _, always)
            .await
            .unwrap();
        let ctx = SessionContext::new();
        ctx.register_catalog("src", Arc::new(fhir.clone()));
        (ctx, fhir)
    };
    for gender in ["female", "male"] {
        rows(&always_ctx, &query(gender)).await;
    }
    assert_eq!(
        filtered_snapshots(&always_fhir, "Patient"),
        [snapshot("male")]
    );
    let still = always_fhir.store().current("Patient").unwrap().unwrap();
    assert_eq!(still.manifest().snapshot, full.manifest().snapshot);
    assert!(still.dir().is_dir());
}
