//! When the catalog exports: one export per statement for all the types it needs, shared by
//! concurrent statements and reused by the next ones; `fhir_refresh` and `Freshness::Always`
//! export again (when run, never when planned); browsing the catalog exports nothing; a
//! cancelled export fails its queries and leaves the cache usable.

use std::sync::Arc;

use fhirflight::catalog::{self, CatalogOptions, ExportState, Freshness};
use fhirflight::ndjson::TableMode;

use super::{MemorySource, condition, context, context_with, patient, rows, seeded};

const JOIN: &str = "SELECT p.gender, count(*) AS n FROM src.fhir.patient p \
    JOIN src.fhir.condition c ON c.subject_reference = concat('Patient/', p.id) GROUP BY p.gender";

#[tokio::test]
async fn join_of_two_types_starts_one_export_and_the_next_query_reuses_it() {
    let cache = tempfile::tempdir().unwrap();
    let source = seeded();
    let (ctx, fhir) = context(Arc::clone(&source) as _, cache.path(), Freshness::Never).await;

    assert_eq!(rows(&ctx, JOIN).await, ["female|2", "male|1"]);
    let fetches = source.fetches();
    assert_eq!(fetches.len(), 1, "{fetches:?}");
    assert_eq!(fetches[0].types, ["Condition", "Patient"]);
    assert_eq!(fetches[0].since, None);

    assert_eq!(rows(&ctx, JOIN).await, ["female|2", "male|1"]);
    assert_eq!(
        rows(&ctx, "SELECT count(*) FROM src.fhir.Patient").await,
        ["3"]
    );
    assert_eq!(
        source.fetches().len(),
        1,
        "the second query reuses the snapshots"
    );
    let exports = fhir.exports();
    assert_eq!(exports.len(), 1);
    assert_eq!(exports[0].state, ExportState::Done);
}

#[tokio::test]
async fn concurrent_queries_share_the_export_in_flight() {
    let cache = tempfile::tempdir().unwrap();
    let source = Arc::new(MemorySource::gated());
    source.upsert(patient("p1", "female"));
    source.upsert(condition("c1", "p1", "44054006"));
    let (ctx, fhir) = context(Arc::clone(&source) as _, cache.path(), Freshness::Never).await;

    let first = tokio::spawn({
        let ctx = ctx.clone();
        async move { rows(&ctx, JOIN).await }
    });
    let second = tokio::spawn({
        let ctx = ctx.clone();
        async move { rows(&ctx, "SELECT id FROM src.fhir.patient").await }
    });
    // Both queries are waiting once the export is running and the second joined it.
    crate::until("the shared export to run", || {
        !source.fetches().is_empty() && !fhir.exports().is_empty()
    })
    .await;
    tokio::task::yield_now().await;
    source.gate.as_ref().unwrap().add_permits(1);
    assert_eq!(first.await.unwrap(), ["female|1"]);
    assert_eq!(second.await.unwrap(), ["p1"]);
    assert_eq!(source.fetches().len(), 1, "{:?}", source.fetches());
}

#[tokio::test]
async fn refresh_returns_updated_and_deleted_rows() {
    let cache = tempfile::tempdir().unwrap();
    let source = seeded();
    let (ctx, _fhir) = context(Arc::clone(&source) as _, cache.path(), Freshness::Never).await;
    assert_eq!(
        rows(&ctx, "SELECT id, gender FROM src.fhir.patient").await,
        ["p1|female", "p2|male", "p3|female"]
    );

    source.upsert(patient("p2", "other"));
    source.upsert(patient("p4", "male"));
    source.delete("Patient", "p3");
    // Freshness `never`: no refresh until asked.
    assert_eq!(
        rows(&ctx, "SELECT count(*) FROM src.fhir.patient").await,
        ["3"]
    );

    let refreshed = rows(
        &ctx,
        "SELECT resource_type, resources, changed, deleted FROM fhir_refresh('src', 'Patient')",
    )
    .await;
    assert_eq!(refreshed, ["Patient|3|2|1"]);
    let fetches = source.fetches();
    assert_eq!(fetches.len(), 2);
    assert_eq!(
        fetches[1].since.as_deref(),
        Some("6"),
        "incremental from the first transactionTime"
    );
    assert_eq!(
        rows(&ctx, "SELECT id, gender FROM src.fhir.patient").await,
        ["p1|female", "p2|other", "p4|male"]
    );
}

/// A machine's options: its own cache folder, tables at the shared folder's URL, and a
/// snapshot an hour old still fresh.
fn sharing(cache: &std::path::Path, shared: &std::path::Path) -> CatalogOptions {
    CatalogOptions::default()
        .with_cache_dir(cache)
        .with_freshness(Freshness::MaxAge(std::time::Duration::from_secs(3600)))
        .with_table_location(url::Url::from_directory_path(shared).unwrap())
}

/// Machines sharing a table location: the second adopts the first one's fresh snapshots (its
/// raw files too: another mode is made from them) instead of exporting, and its next refresh
/// is incremental from them; the first adopts that refresh in turn.
#[tokio::test]
async fn a_machine_sharing_the_table_location_adopts_the_fresh_snapshots_there() {
    let (a_cache, b_cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let shared = tempfile::tempdir().unwrap();
    let options = |cache: &std::path::Path| sharing(cache, shared.path());
    let source = seeded();
    let (a, _) = context_with(Arc::clone(&source) as _, options(a_cache.path())).await;
    assert_eq!(rows(&a, JOIN).await, ["female|2", "male|1"]);
    assert_eq!(source.fetches().len(), 1);

    let nested = options(b_cache.path()).with_mode(TableMode::Nested);
    let (b, _) = context_with(Arc::clone(&source) as _, nested).await;
    let genders = "SELECT gender, count(*) FROM src.fhir.patient GROUP BY gender";
    assert_eq!(rows(&b, genders).await, ["female|2", "male|1"]);
    let conditions = "SELECT code['coding'][1]['code'] FROM src.fhir.condition WHERE id = 'c2'";
    assert_eq!(rows(&b, conditions).await, ["38341003"]);
    assert_eq!(
        source.fetches().len(),
        1,
        "adopted, not exported: {:?}",
        source.fetches()
    );

    source.upsert(patient("p2", "other"));
    let refresh = "SELECT changed FROM fhir_refresh('src', 'Patient')";
    assert_eq!(rows(&b, refresh).await, ["1"]);
    let fetches = source.fetches();
    assert_eq!(fetches.len(), 2);
    assert_eq!(
        fetches[1].since.as_deref(),
        Some("6"),
        "incremental from the adopted one"
    );

    // The first machine's own snapshot is fresh: it stays. A third machine adopts the refresh
    // (whose unchanged raw files are the first snapshot's, where they were first uploaded).
    assert_eq!(rows(&a, genders).await, ["female|2", "male|1"]);
    let c_cache = tempfile::tempdir().unwrap();
    let (c, _) = context_with(Arc::clone(&source) as _, options(c_cache.path())).await;
    assert_eq!(rows(&c, genders).await, ["female|2", "other|1"]);
    assert_eq!(
        rows(&c, "SELECT count(*) FROM src.fhir.condition").await,
        ["3"]
    );
    assert_eq!(source.fetches().len(), 2, "the refresh adopted");
}

/// Machines sharing a table location export a request once: while one holds its claim, another
/// waits, then adopts its snapshot.
#[tokio::test]
async fn a_machine_waits_for_the_export_another_one_claimed_and_adopts_it() {
    let (a_cache, b_cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let shared = tempfile::tempdir().unwrap();
    let options = |cache: &std::path::Path| sharing(cache, shared.path());
    let source = Arc::new(MemorySource::gated());
    source.upsert(patient("p1", "female"));
    let (a, a_fhir) = context_with(Arc::clone(&source) as _, options(a_cache.path())).await;
    let (b, b_fhir) = context_with(Arc::clone(&source) as _, options(b_cache.path())).await;
    let query = |ctx: &datafusion::prelude::SessionContext| {
        let ctx = ctx.clone();
        tokio::spawn(async move { rows(&ctx, "SELECT id FROM src.fhir.patient").await })
    };
    let first = query(&a);
    crate::until("the first machine's export", || source.fetches().len() == 1).await;
    let second = query(&b);
    crate::until("the second machine's wait", || !b_fhir.exports().is_empty()).await;
    // Long enough for the second machine to look at the claim, and find it held, twice.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(source.fetches().len(), 1, "the second machine waits");
    source.gate.as_ref().unwrap().add_permits(1);
    assert_eq!(first.await.unwrap(), ["p1"]);
    assert_eq!(second.await.unwrap(), ["p1"]);
    assert_eq!(source.fetches().len(), 1, "{:?}", source.fetches());
    let snapshot =
        |fhir: &catalog::FhirCatalog| fhir.store().current("Patient").unwrap().unwrap().name();
    assert_eq!(snapshot(&a_fhir), snapshot(&b_fhir), "adopted");
}

#[tokio::test]
async fn freshness_always_exports_for_every_statement_once() {
    let cache = tempfile::tempdir().unwrap();
    let source = seeded();
    let (ctx, _fhir) = context(Arc::clone(&source) as _, cache.path(), Freshness::Always).await;
    assert_eq!(rows(&ctx, JOIN).await, ["female|2", "male|1"]);
    assert_eq!(source.fetches().len(), 1);
    source.upsert(condition("c4", "p3", "1234"));
    assert_eq!(rows(&ctx, JOIN).await, ["female|3", "male|1"]);
    let fetches = source.fetches();
    assert_eq!(fetches.len(), 2, "{fetches:?}");
    assert_eq!(fetches[1].since.as_deref(), Some("6"));
}

/// `fhir_refresh` exports when its plan runs, never when it is planned: `EXPLAIN` and physical
/// planning fetch nothing, every run of the plan refreshes again (as DataFusion's sinks write
/// again), and a run dropped mid-export detaches from it (the export runs on and commits).
#[tokio::test]
async fn fhir_refresh_exports_when_run_never_when_planned() {
    let cache = tempfile::tempdir().unwrap();
    let source = Arc::new(MemorySource::gated());
    let gate = source.gate.as_ref().unwrap();
    source.upsert(patient("p1", "female"));
    let (ctx, fhir) = context(Arc::clone(&source) as _, cache.path(), Freshness::Never).await;
    gate.add_permits(1);
    assert_eq!(rows(&ctx, "SELECT id FROM src.fhir.patient").await, ["p1"]);

    for (sql, types) in [
        ("SELECT * FROM fhir_refresh('src', 'patient')", "[Patient]"),
        ("SELECT resources FROM fhir_refresh('src')", "[Patient]"),
        ("SELECT * FROM fhir_refresh('src', '')", "[Patient]"),
    ] {
        let plan = rows(&ctx, &format!("EXPLAIN {sql}")).await.join("\n");
        let node = format!("FhirEffectExec: action=refresh, catalog=src, types={types}");
        assert!(plan.contains(&node), "{plan}");
    }
    assert_eq!((source.fetches().len(), fhir.exports().len()), (1, 1));
    let err = catalog::sql(&ctx, "EXPLAIN SELECT * FROM fhir_refresh('src', 'Nope')")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("resource type \"Nope\" not found: not a table of this catalog"),
        "{err}"
    );

    let plan = catalog::sql(
        &ctx,
        "SELECT resource_type, resources FROM fhir_refresh('src', 'Patient')",
    )
    .await
    .unwrap()
    .create_physical_plan()
    .await
    .unwrap();
    assert_eq!(source.fetches().len(), 1);
    source.upsert(patient("p2", "male"));
    gate.add_permits(2);
    for fetches in [2, 3] {
        let batches = datafusion::physical_plan::collect(Arc::clone(&plan), ctx.task_ctx())
            .await
            .unwrap();
        let got: Vec<String> = batches.iter().flat_map(crate::row_strings).collect();
        assert_eq!(got, ["Patient|2"]);
        assert_eq!(source.fetches().len(), fetches);
    }

    let run = tokio::spawn(datafusion::physical_plan::collect(
        Arc::clone(&plan),
        ctx.task_ctx(),
    ));
    crate::until("the refresh's fetch", || source.fetches().len() == 4).await;
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    assert_eq!(fhir.exports().last().unwrap().state, ExportState::Running);
    gate.add_permits(1);
    crate::until("the detached export's commit", || {
        fhir.exports().last().unwrap().state == ExportState::Done
    })
    .await;
    assert_eq!(
        rows(&ctx, "SELECT id FROM src.fhir.patient").await,
        ["p1", "p2"]
    );
}

#[tokio::test]
async fn browsing_never_exports() {
    let cache = tempfile::tempdir().unwrap();
    let source = seeded();
    let (ctx, _fhir) = context(Arc::clone(&source) as _, cache.path(), Freshness::Always).await;
    let tables = rows(
        &ctx,
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'src'",
    )
    .await;
    assert!(tables.contains(&"Patient".to_owned()), "{tables:?}");
    let shown = rows(&ctx, "SHOW TABLES").await;
    assert!(shown.iter().any(|r| r.contains("Condition")), "{shown:?}");
    assert_eq!(
        rows(
            &ctx,
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'fhir'"
        )
        .await,
        ["0"]
    );
    assert!(source.fetches().is_empty(), "{:?}", source.fetches());

    // Once a snapshot exists, browsing shows its columns, still without exporting again.
    rows(&ctx, "SELECT count(*) FROM src.fhir.patient").await;
    let columns = rows(
        &ctx,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'Patient'",
    )
    .await;
    assert!(columns.contains(&"gender".to_owned()), "{columns:?}");
    assert_eq!(source.fetches().len(), 1);
}

#[tokio::test]
async fn cancelled_export_fails_its_queries_and_leaves_the_cache_usable() {
    let cache = tempfile::tempdir().unwrap();
    let source = Arc::new(MemorySource::gated());
    source.upsert(patient("p1", "female"));
    let (ctx, fhir) = context(Arc::clone(&source) as _, cache.path(), Freshness::Never).await;
    source.gate.as_ref().unwrap().add_permits(1);
    assert_eq!(rows(&ctx, "SELECT id FROM src.fhir.patient").await, ["p1"]);

    source.upsert(patient("p2", "male"));
    let refresh = tokio::spawn({
        let fhir = fhir.clone();
        async move { fhir.refresh(&["Patient".to_owned()]).await }
    });
    crate::until("the refresh's fetch", || source.fetches().len() >= 2).await;
    let running = fhir
        .exports()
        .into_iter()
        .find(|e| e.state == ExportState::Running)
        .unwrap();
    assert!(fhir.cancel(running.id));
    let err = refresh.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");
    // The old snapshot still answers; a new refresh completes.
    assert_eq!(rows(&ctx, "SELECT id FROM src.fhir.patient").await, ["p1"]);
    source.gate.as_ref().unwrap().add_permits(1);
    fhir.refresh(&["Patient".to_owned()]).await.unwrap();
    assert_eq!(
        rows(&ctx, "SELECT id FROM src.fhir.patient").await,
        ["p1", "p2"]
    );
}

#[tokio::test]
async fn files_handed_over_before_a_fetch_started_over_are_not_in_its_snapshots() {
    let cache = tempfile::tempdir().unwrap();
    let source = seeded();
    source.state.lock().unwrap().restart_once = true;
    let (ctx, _) = context(Arc::clone(&source) as _, cache.path(), Freshness::Never).await;
    assert_eq!(
        rows(&ctx, "SELECT id FROM src.fhir.patient").await,
        ["p1", "p2", "p3"]
    );
}
