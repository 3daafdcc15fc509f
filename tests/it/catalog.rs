//! The DataFusion catalog over sources that need no server: an in-memory source that counts
//! its exports, and local folders (including `../shared/data/synthea-100`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use fhirflight::catalog::{
    self, CatalogOptions, ExportState, FetchOutcome, FetchProgress, FetchRequest, FetchedFile,
    FhirCatalog, FhirSource, Freshness, LocalFolder,
};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

/// A source holding resources in memory; every fetch is recorded. `transactionTime` is a
/// generation number, so `_since` returns what changed after it, and deletions as tombstones.
#[derive(Debug, Default)]
struct MemorySource {
    state: Mutex<MemoryState>,
    /// When set, each fetch waits for a permit (to hold an export in flight).
    gate: Option<Semaphore>,
}

#[derive(Debug, Default)]
struct MemoryState {
    generation: u64,
    /// (type, id) -> (generation of last change, resource or None when deleted)
    resources: BTreeMap<(String, String), (u64, Option<Value>)>,
    fetches: Vec<FetchRequest>,
}

impl MemorySource {
    fn gated() -> Self {
        Self {
            gate: Some(Semaphore::new(0)),
            ..Self::default()
        }
    }

    fn upsert(&self, resource: Value) {
        let mut s = self.state.lock().unwrap();
        s.generation += 1;
        let key = (
            resource["resourceType"].as_str().unwrap().to_owned(),
            resource["id"].as_str().unwrap().to_owned(),
        );
        let generation = s.generation;
        s.resources.insert(key, (generation, Some(resource)));
    }

    fn delete(&self, resource_type: &str, id: &str) {
        let mut s = self.state.lock().unwrap();
        s.generation += 1;
        let generation = s.generation;
        s.resources
            .insert((resource_type.into(), id.into()), (generation, None));
    }

    fn fetches(&self) -> Vec<FetchRequest> {
        self.state.lock().unwrap().fetches.clone()
    }
}

#[async_trait]
impl FhirSource for MemorySource {
    fn location(&self) -> &str {
        "memory://test"
    }

    async fn resource_types(&self) -> fhirflight::Result<Vec<String>> {
        Ok(vec![
            "Condition".into(),
            "Observation".into(),
            "Patient".into(),
        ])
    }

    async fn fetch(
        &self,
        request: &FetchRequest,
        dir: &Path,
        _progress: &watch::Sender<FetchProgress>,
    ) -> fhirflight::Result<FetchOutcome> {
        self.state.lock().unwrap().fetches.push(request.clone());
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        let s = self.state.lock().unwrap();
        let since: u64 = request.since.as_deref().map_or(0, |t| t.parse().unwrap());
        let mut outcome = FetchOutcome {
            request: format!("memory?_type={}", request.types.join(",")),
            transaction_time: s.generation.to_string(),
            ..FetchOutcome::default()
        };
        for t in &request.types {
            let path = dir.join(format!("{t}.1.ndjson"));
            let mut text = String::new();
            for ((rt, id), (generation, resource)) in &s.resources {
                if rt != t || *generation <= since {
                    continue;
                }
                match resource {
                    Some(r) => text.push_str(&format!("{r}\n")),
                    None if since > 0 => outcome.deleted.push((rt.clone(), id.clone())),
                    None => {}
                }
            }
            std::fs::write(&path, text).unwrap();
            outcome.files.push(FetchedFile {
                resource_type: t.clone(),
                path,
            });
        }
        Ok(outcome)
    }
}

fn patient(id: &str, gender: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "gender": gender, "birthDate": "1970-01-01"})
}

fn condition(id: &str, patient: &str, code: &str) -> Value {
    json!({"resourceType": "Condition", "id": id, "subject": {"reference": format!("Patient/{patient}")},
           "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]}})
}

fn seeded() -> Arc<MemorySource> {
    let source = Arc::new(MemorySource::default());
    source.upsert(patient("p1", "female"));
    source.upsert(patient("p2", "male"));
    source.upsert(patient("p3", "female"));
    source.upsert(condition("c1", "p1", "44054006"));
    source.upsert(condition("c2", "p1", "38341003"));
    source.upsert(condition("c3", "p2", "44054006"));
    source
}

async fn context(
    source: Arc<dyn FhirSource>,
    cache: &Path,
    freshness: Freshness,
) -> (SessionContext, FhirCatalog) {
    let options = CatalogOptions::default()
        .with_cache_dir(cache)
        .with_freshness(freshness);
    let fhir = FhirCatalog::try_new(source, options.clone()).await.unwrap();
    let ctx = SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_information_schema(true),
    );
    ctx.register_catalog("src", Arc::new(fhir.clone()));
    catalog::register_functions(&ctx, options);
    (ctx, fhir)
}

/// Runs `sql` through [`catalog::sql`] and returns the rows as strings, sorted.
async fn rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let batches = catalog::sql(ctx, sql)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for batch in &batches {
        out.extend(crate::row_strings(batch));
    }
    out.sort();
    out
}

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
/// again), and a run dropped mid-export withdraws from it (cancelled, no one else waits).
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
    assert!(err.contains("Nope is not a resource type"), "{err}");

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
    crate::until("the export's cancellation", || {
        fhir.exports().last().unwrap().state == ExportState::Cancelled
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
            "Patient/{}/flattened/part-0.parquet",
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

fn write_folder(dir: &Path, files: &[(&str, &[Value])]) {
    for (name, resources) in files {
        let text: String = resources.iter().map(|r| format!("{r}\n")).collect();
        if name.ends_with(".gz") {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(
                std::fs::File::create(dir.join(name)).unwrap(),
                flate2::Compression::fast(),
            );
            gz.write_all(text.as_bytes()).unwrap();
            gz.finish().unwrap();
        } else {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
}

#[tokio::test]
async fn local_folder_and_create_external_table_stored_as_fhir() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    write_folder(
        data.path(),
        &[
            ("Patient.1.ndjson", &[patient("a", "female")]),
            (
                "Patient.2.ndjson.gz",
                &[patient("b", "male"), patient("c", "male")],
            ),
            ("Condition.ndjson", &[condition("x", "a", "1")]),
            ("notes.txt", &[]),
        ],
    );
    let folder = Arc::new(LocalFolder::try_new(data.path()).unwrap());
    assert_eq!(
        folder.resource_types().await.unwrap(),
        ["Condition", "Patient"]
    );

    let ctx = SessionContext::new();
    catalog::register_functions(&ctx, CatalogOptions::default().with_cache_dir(cache.path()));
    let location = data.path().display();
    catalog::sql(&ctx, &format!("CREATE EXTERNAL TABLE people STORED AS FHIR LOCATION '{location}' OPTIONS ('type' 'Patient')"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        rows(&ctx, "SELECT gender, count(*) FROM people GROUP BY gender").await,
        ["female|1", "male|2"]
    );
    let err = catalog::sql(
        &ctx,
        &format!(
            "CREATE EXTERNAL TABLE x STORED AS FHIR LOCATION '{location}' OPTIONS ('colour' 'red')"
        ),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("unknown FHIR table option"),
        "{err}"
    );
}

fn synthea() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/synthea-100");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipped: {} is absent", dir.display());
        None
    }
}

#[tokio::test]
async fn synthea_folder_gives_the_notebook_counts() {
    let Some(dir) = synthea() else { return };
    let cache = tempfile::tempdir().unwrap();
    let (ctx, fhir) = context(
        Arc::new(LocalFolder::try_new(&dir).unwrap()),
        cache.path(),
        Freshness::Never,
    )
    .await;
    assert_eq!(fhir.resource_types().len(), 17);
    let patients = catalog::sql(
        &ctx,
        "SELECT id, gender, \"birthDate\" FROM src.fhir.patient",
    )
    .await
    .unwrap()
    .collect()
    .await
    .unwrap();
    assert_eq!(patients.iter().map(|b| b.num_rows()).sum::<usize>(), 100);
    let per_gender = rows(
        &ctx,
        "SELECT gender, count(*) FROM src.fhir.patient GROUP BY gender",
    )
    .await;
    assert_eq!(per_gender.len(), 2, "{per_gender:?}");
    let conditions = catalog::sql(
        &ctx,
        "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM src.fhir.condition",
    )
    .await
    .unwrap()
    .collect()
    .await
    .unwrap();
    let n = conditions[0].column(0).as_primitive::<Int64Type>().value(0);
    let ids = conditions[0].column(1).as_primitive::<Int64Type>().value(0);
    assert_eq!((n, ids), (639, 639));
    assert!(conditions[0].column(0).null_count() == 0);

    // The notebook's Patient columns (id, gender, birthDate, maritalStatus.coding[0].code): the
    // rows it printed, and the counts of its data.
    let picked = rows(
        &ctx,
        "SELECT id, gender, \"birthDate\", \"maritalStatus_coding_0_code\" FROM src.fhir.patient \
         WHERE id IN ('6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2', 'c536dee9-9ef6-4807-ae20-9f1045c9c7d6', \
         '5efb1ac1-d29b-40a5-a3d1-2d682f10bfa7')",
    )
    .await;
    assert_eq!(
        picked,
        [
            "5efb1ac1-d29b-40a5-a3d1-2d682f10bfa7|male|1995-10-19|S",
            "6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2|male|1965-01-13|M",
            "c536dee9-9ef6-4807-ae20-9f1045c9c7d6|male|1990-11-18|S",
        ]
    );
    assert_eq!(per_gender, ["female|40", "male|60"]);
    assert_eq!(
        rows(
            &ctx,
            "SELECT \"maritalStatus_coding_0_code\", count(*) FROM src.fhir.patient GROUP BY 1"
        )
        .await,
        ["M|48", "S|52"]
    );
    // Conditions per code: the notebook's first rows, the most frequent codes, the statuses.
    assert_eq!(
        rows(
            &ctx,
            "SELECT code_coding_0_code, code_text FROM src.fhir.condition \
             WHERE id = 'a5a38601-b6fe-46b4-a67e-cde9d5957dde'"
        )
        .await,
        ["40055000|Chronic sinusitis (disorder)"]
    );
    assert_eq!(
        rows(
            &ctx,
            "SELECT code_coding_0_code, count(*) AS n FROM src.fhir.condition \
             GROUP BY 1 ORDER BY n DESC LIMIT 3"
        )
        .await,
        ["10509002|47", "195662009|69", "444814009|106"]
    );
    assert_eq!(
        rows(
            &ctx,
            "SELECT \"clinicalStatus_coding_0_code\", count(*) FROM src.fhir.condition GROUP BY 1"
        )
        .await,
        ["active|258", "resolved|381"]
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

/// The `FhirScanExec` line of an `EXPLAIN`, and the `DataSourceExec` line below it (operators
/// that keep the order, such as a sort pushed down, may come between).
fn scan_lines(plan: &str) -> (String, String) {
    let mut lines = plan.lines().skip_while(|l| !l.contains("FhirScanExec:"));
    let scan = lines
        .next()
        .unwrap_or_else(|| panic!("no FhirScanExec: {plan}"));
    let mut below = lines.skip_while(|l| !l.contains("DataSourceExec:"));
    let source = below
        .next()
        .unwrap_or_else(|| panic!("no scan below: {plan}"));
    (scan.trim().to_owned(), source.trim().to_owned())
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

/// A Flight SQL server over `ctx` and a client logged in to it; `query` runs a statement and
/// returns its rows as `|`-joined lines.
struct FlightFixture {
    server: fhirflight::flight::RunningServer,
    client: arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
}

impl FlightFixture {
    async fn over(ctx: datafusion::prelude::SessionContext) -> Self {
        use fhirflight::flight::{FlightSqlServer, Users};
        let server = FlightSqlServer::new(ctx)
            .with_users(Users::new().with_user("alice", "wonderland"))
            .bind("127.0.0.1:0")
            .await
            .unwrap();
        let channel = tonic::transport::Endpoint::new(format!("http://{}", server.local_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
        client.handshake("alice", "wonderland").await.unwrap();
        Self { server, client }
    }

    async fn query(&mut self, sql: &str) -> String {
        use futures::TryStreamExt;
        let info = self.client.execute(sql.to_owned(), None).await.unwrap();
        let mut out = Vec::new();
        for endpoint in info.endpoint {
            let stream = self.client.do_get(endpoint.ticket.unwrap()).await.unwrap();
            for batch in stream.try_collect::<Vec<_>>().await.unwrap() {
                out.extend(crate::row_strings(&batch));
            }
        }
        out.join("\n")
    }
}

#[tokio::test]
async fn explain_over_flight_names_the_pushed_filters() {
    let cache = tempfile::tempdir().unwrap();
    let (ctx, _fhir) = context(seeded() as _, cache.path(), Freshness::Never).await;
    let mut flight = FlightFixture::over(ctx).await;
    let plan = flight
        .query("EXPLAIN SELECT id FROM src.fhir.condition WHERE code_coding_0_code = '44054006'")
        .await;
    assert!(
        scan_lines(&plan)
            .0
            .ends_with(", pushed=[_typeFilter=Condition?code=44054006]"),
        "{plan}"
    );
    flight.server.shutdown().await.unwrap();
}

/// Over Flight too, `EXPLAIN` of `fhir_refresh` exports nothing, and running it exports once:
/// GetFlightInfo only plans it, DoGet runs it.
#[tokio::test]
async fn fhir_refresh_over_flight_exports_only_when_run() {
    let cache = tempfile::tempdir().unwrap();
    let source = seeded();
    let (ctx, _fhir) = context(Arc::clone(&source) as _, cache.path(), Freshness::Never).await;
    assert_eq!(rows(&ctx, "SELECT id FROM src.fhir.patient").await.len(), 3);
    let mut flight = FlightFixture::over(ctx).await;
    let plan = flight
        .query("EXPLAIN SELECT * FROM fhir_refresh('src', 'Patient')")
        .await;
    assert!(
        plan.contains("FhirEffectExec: action=refresh, catalog=src, types=[Patient]"),
        "{plan}"
    );
    assert_eq!(source.fetches().len(), 1);
    let refreshed = flight
        .query("SELECT resource_type, changed FROM fhir_refresh('src', 'Patient')")
        .await;
    assert_eq!(refreshed, "Patient|0");
    assert_eq!(source.fetches().len(), 2);
    flight.server.shutdown().await.unwrap();
}

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

#[allow(dead_code, unreachable_pub)]
#[path = "../../examples/embed.rs"]
mod embed;

mod demo_server {
    use super::*;
    use fhirflight::bulk::{BulkClient, ClientOptions};
    use fhirflight::catalog::BulkSource;
    use fhirflight::demo::{DemoConfig, DemoServer, Faults};
    use fhirflight::smart::{SigningKey, SmartConfig};
    use std::time::Duration;

    async fn demo_catalog(cache: &Path) -> (DemoServer, SessionContext, FhirCatalog) {
        let server = DemoServer::start(DemoConfig::default().with_seed(7).with_patients(12))
            .await
            .unwrap();
        let (ctx, fhir) = catalog_of(&server, cache).await;
        (server, ctx, fhir)
    }

    async fn catalog_of(server: &DemoServer, cache: &Path) -> (SessionContext, FhirCatalog) {
        let creds = server.credentials();
        let key = SigningKey::from_pem(creds.rs384().private_pem())
            .unwrap()
            .with_kid(creds.rs384().kid());
        let auth = SmartConfig::new(creds.client_id(), key);
        let options = ClientOptions::default()
            .with_retry_after_bounds(Duration::from_millis(1), Duration::from_millis(20));
        let client = BulkClient::try_new(server.base_url(), Some(auth), options)
            .await
            .unwrap();
        context(Arc::new(BulkSource::new(client)), cache, Freshness::Never).await
    }

    fn type_filters(server: &DemoServer, kickoff: usize) -> Vec<String> {
        let kickoffs = server.stats().kickoffs;
        kickoffs[kickoff]
            .params
            .iter()
            .filter(|(k, _)| k == "_typeFilter" || k == "_since")
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    #[tokio::test]
    async fn pushdown_sends_type_filter_and_since_and_returns_the_same_rows() {
        let (pushed_cache, full_cache) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (server, ctx, _fhir) = demo_catalog(pushed_cache.path()).await;
        let (full_ctx, _) = catalog_of(&server, full_cache.path()).await;
        server.upsert(json!({"resourceType": "Patient", "id": "late", "gender": "female"}));
        let since =
            fhirflight::snapshot::rfc3339(std::time::SystemTime::now() - Duration::from_secs(3600));
        let queries = [
            "SELECT id FROM src.fhir.patient WHERE gender = 'female'".to_owned(),
            "SELECT o.id, o.status FROM src.fhir.observation o \
             WHERE o.code_coding_0_code = '8867-4' AND o.status = 'final'"
                .to_owned(),
            format!("SELECT id FROM src.fhir.patient WHERE \"meta_lastUpdated\" >= '{since}'"),
        ];
        let mut pushed = Vec::new();
        for (i, query) in queries.iter().enumerate() {
            pushed.push(rows(&ctx, query).await);
            assert_eq!(server.stats().kickoffs.len(), i + 1);
        }
        assert!(
            pushed[0].contains(&"late".to_owned()) && pushed[0].len() < 13,
            "{:?}",
            pushed[0]
        );
        assert!(
            !pushed[1].is_empty(),
            "the demo has heart-rate observations"
        );
        assert!(pushed[2].contains(&"late".to_owned()), "{:?}", pushed[2]);
        assert_eq!(
            type_filters(&server, 0),
            ["_typeFilter=Patient?gender=female"]
        );
        assert_eq!(
            type_filters(&server, 1),
            ["_typeFilter=Observation?code=8867-4&status=final"]
        );
        let sent = type_filters(&server, 2);
        assert_eq!(sent.len(), 1);
        assert!(sent[0].starts_with("_since="), "{sent:?}");

        let plan = rows(&ctx, &format!("EXPLAIN {}", queries[1]))
            .await
            .join("\n");
        assert!(
            plan.contains("Observation@code=8867-4_status=final-"),
            "EXPLAIN names the filtered snapshot: {plan}"
        );
        assert!(
            scan_lines(&plan)
                .0
                .ends_with("pushed=[_typeFilter=Observation?code=8867-4&status=final]"),
            "{plan}"
        );
        let plan = rows(&ctx, &format!("EXPLAIN {}", queries[2]))
            .await
            .join("\n");
        assert!(
            scan_lines(&plan)
                .0
                .ends_with(&format!("pushed=[{}]", sent[0])),
            "EXPLAIN shows the _since sent: {plan}"
        );
        assert_eq!(
            server.stats().kickoffs.len(),
            3,
            "EXPLAIN reuses the snapshot"
        );

        // The same queries over full snapshots (another cache): the same rows.
        for table in ["patient", "observation"] {
            rows(&full_ctx, &format!("SELECT count(*) FROM src.fhir.{table}")).await;
        }
        for (query, pushed) in queries.iter().zip(&pushed) {
            assert_eq!(&rows(&full_ctx, query).await, pushed, "{query}");
        }
        let kickoffs = server.stats().kickoffs;
        assert!(
            kickoffs[3..]
                .iter()
                .all(|k| k.params.iter().all(|(k, _)| k != "_typeFilter"))
        );
    }

    #[tokio::test]
    async fn a_query_dropped_while_its_export_runs_cancels_the_export() {
        let cache = tempfile::tempdir().unwrap();
        // Every export takes 40 status polls (each 1 to 20 ms apart).
        let server = DemoServer::start(
            DemoConfig::default()
                .with_seed(7)
                .with_patients(12)
                .with_status_polls(40)
                .with_retry_after(Duration::from_secs(1)),
        )
        .await
        .unwrap();
        let (ctx, fhir) = catalog_of(&server, cache.path()).await;
        let query = tokio::spawn({
            let ctx = ctx.clone();
            async move { rows(&ctx, "SELECT id FROM src.fhir.patient").await }
        });
        crate::until("a status poll", || server.stats().status_polls > 0).await;
        query.abort();
        assert!(query.await.unwrap_err().is_cancelled());
        crate::until("the export's cancellation", || {
            fhir.exports()[0].state != ExportState::Running && server.stats().deletes > 0
        })
        .await;
        assert_eq!(fhir.exports()[0].state, ExportState::Cancelled);
        assert_eq!(server.stats().deletes, 1, "the server job is deleted");
        assert!(fhir.store().current("Patient").unwrap().is_none());

        // A later query exports again and completes.
        assert_eq!(
            rows(&ctx, "SELECT id FROM src.fhir.patient").await.len(),
            12
        );
        let exports = fhir.exports();
        assert_eq!(exports.len(), 2);
        assert_eq!(exports[1].state, ExportState::Done);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_killed_during_download_leaves_the_cache_usable() {
        let cache = tempfile::tempdir().unwrap();
        let server = DemoServer::start(DemoConfig::default().with_seed(7).with_patients(12))
            .await
            .unwrap();
        server.set_faults(Faults {
            download_chunk_delay: Some(Duration::from_secs(600)),
            ..Faults::default()
        });
        let creds = server.credentials();
        let key_file = cache.path().join("key.jwk.json");
        std::fs::write(&key_file, creds.rs384().private_jwk()).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fhirflight"))
            .args(["sql", "SELECT count(*) FROM patient", "--server"])
            .arg(server.base_url().as_str())
            .args(["--client-id", creds.client_id(), "--key-file"])
            .arg(&key_file)
            .arg("--cache-dir")
            .arg(cache.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        crate::until("a download", || {
            assert!(
                child.try_wait().unwrap().is_none(),
                "fhirflight ended early"
            );
            server.stats().downloads > 0
        })
        .await;
        child.kill().unwrap(); // SIGKILL, mid-download
        child.wait().unwrap();
        server.set_faults(Faults::default());

        let (ctx, fhir) = catalog_of(&server, cache.path()).await;
        let store = fhir.store();
        assert!(
            store.current("Patient").unwrap().is_none(),
            "no half snapshot"
        );
        assert_eq!(
            rows(&ctx, "SELECT count(*) FROM src.fhir.patient").await,
            ["12"]
        );
        assert_eq!(
            server.stats().kickoffs.len(),
            1,
            "the next run resumed the killed run's job"
        );
        let snapshot = store.current("Patient").unwrap().unwrap();
        assert_eq!(snapshot.table("flattened").unwrap().rows, 12);
        // No folder left behind (a lock file beside a finished job's folder is harmless).
        let folders = |sub: &str| {
            std::fs::read_dir(store.dir().join(sub))
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().is_dir())
                .count()
        };
        assert_eq!((folders("tmp"), folders("staging")), (0, 0));
    }

    #[tokio::test]
    async fn the_embedding_example_runs() {
        let cache = tempfile::tempdir().unwrap();
        let server = DemoServer::start(DemoConfig::default().with_seed(7).with_patients(12))
            .await
            .unwrap();
        let batches = embed::conditions_per_gender(&server, cache.path())
            .await
            .unwrap();
        let (ctx, _) = catalog_of(&server, cache.path()).await;
        let expected = rows(
            &ctx,
            "SELECT p.gender, count(*) FROM src.fhir.patient p \
             JOIN src.fhir.condition c ON c.subject_reference = concat('Patient/', p.id) GROUP BY p.gender",
        )
        .await;
        let got: Vec<String> = batches.iter().flat_map(crate::row_strings).collect();
        assert!(!got.is_empty());
        assert_eq!(got, expected);
        assert_eq!(
            server.stats().kickoffs.len(),
            1,
            "the example's snapshot is reused"
        );
    }

    #[tokio::test]
    async fn join_starts_one_export_on_the_server_and_refresh_merges_changes() {
        let cache = tempfile::tempdir().unwrap();
        let (server, ctx, _fhir) = demo_catalog(cache.path()).await;
        let join = "SELECT count(*) FROM src.fhir.patient p \
            JOIN src.fhir.condition c ON c.subject_reference = concat('Patient/', p.id)";
        let first = rows(&ctx, join).await;
        let kickoffs = server.stats().kickoffs;
        assert_eq!(kickoffs.len(), 1, "{kickoffs:?}");
        let mut types = kickoffs[0].types.clone();
        types.sort();
        assert_eq!(types, ["Condition", "Patient"]);
        assert_eq!(rows(&ctx, join).await, first);
        assert_eq!(
            server.stats().kickoffs.len(),
            1,
            "the second query reuses the snapshot"
        );

        let patients = rows(&ctx, "SELECT id FROM src.fhir.patient").await;
        assert_eq!(patients.len(), 12);
        server.upsert(json!({"resourceType": "Patient", "id": "new-one", "gender": "unknown"}));
        server.delete("Patient", &patients[0]);
        let refreshed = rows(
            &ctx,
            "SELECT resources, deleted FROM fhir_refresh('src', 'Patient')",
        )
        .await;
        assert_eq!(refreshed, ["12|1"]);
        let kickoffs = server.stats().kickoffs;
        assert!(
            kickoffs[1].params.iter().any(|(k, _)| k == "_since"),
            "{:?}",
            kickoffs[1]
        );
        let after = rows(
            &ctx,
            &format!(
                "SELECT id, gender FROM src.fhir.patient WHERE id IN ('new-one', '{}')",
                patients[0]
            ),
        )
        .await;
        assert_eq!(after, ["new-one|unknown"]);
    }
}
