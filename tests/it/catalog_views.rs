//! SQL on FHIR views as catalog tables, over the demo Bulk Data server: browsing needs no export,
//! a statement exports once, rows equal the runner's over the exported NDJSON, and the ways to
//! add a view (folder, SQL function, shorthand) each make a working table.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::prelude::{SessionConfig, SessionContext};
use fhirflight::bulk::{BulkClient, ClientOptions};
use fhirflight::catalog::{self, BulkSource, CatalogOptions, FhirCatalog, Freshness};
use fhirflight::demo::{DemoConfig, DemoServer};
use fhirflight::smart::{SigningKey, SmartConfig};
use fhirflight::view::{ViewDefinition, ViewRunner};
use serde_json::{Value, json};

const PATIENTS: usize = 15;

/// The ViewDefinition most tests use: a column per kind of type, and a `forEach`.
fn patient_names() -> Value {
    json!({
        "resourceType": "ViewDefinition", "name": "patient_names", "resource": "Patient",
        "select": [
            {"column": [{"name": "id", "path": "getResourceKey()", "type": "id"},
                        {"name": "gender", "path": "gender", "type": "code"},
                        {"name": "deceased", "path": "deceased.exists()", "type": "boolean"}]},
            {"forEach": "name", "column": [{"name": "family", "path": "family", "type": "string"}]}
        ]
    })
}

async fn demo() -> DemoServer {
    DemoServer::start(DemoConfig::default().with_seed(11).with_patients(PATIENTS))
        .await
        .unwrap()
}

/// A session with the demo server's catalog registered as `src` (also the default catalog).
async fn session(
    server: &DemoServer,
    options: CatalogOptions,
) -> fhirflight::Result<(SessionContext, FhirCatalog)> {
    let creds = server.credentials();
    let key = SigningKey::from_pem(creds.rs384().private_pem())?.with_kid(creds.rs384().kid());
    let auth = SmartConfig::new(creds.client_id(), key);
    let client_options = ClientOptions::default()
        .with_retry_after_bounds(Duration::from_millis(1), Duration::from_millis(20));
    let client = BulkClient::try_new(server.base_url(), Some(auth), client_options).await?;
    let options = options.with_freshness(Freshness::Never);
    let fhir = FhirCatalog::try_new(Arc::new(BulkSource::new(client)), options.clone()).await?;
    let ctx = SessionContext::new_with_config(
        SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("src", "fhir"),
    );
    ctx.register_catalog("src", Arc::new(fhir.clone()));
    catalog::register_functions(&ctx, options);
    Ok((ctx, fhir))
}

async fn rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
    try_rows(ctx, sql).await.unwrap()
}

/// The rows of `sql` (run through [`catalog::sql`]) as `|`-joined strings, sorted.
async fn try_rows(ctx: &SessionContext, sql: &str) -> datafusion::error::Result<Vec<String>> {
    let batches = catalog::sql(ctx, sql).await?.collect().await?;
    let mut out = Vec::new();
    for batch in &batches {
        out.extend(crate::row_strings(batch));
    }
    out.sort();
    Ok(out)
}

fn kickoff_types(server: &DemoServer) -> Vec<Vec<String>> {
    server
        .stats()
        .kickoffs
        .into_iter()
        .map(|k| {
            let mut types = k.types;
            types.sort();
            types
        })
        .collect()
}

/// The rows the runner makes of the catalog's raw NDJSON of `resource_type`, one batch at a time.
fn runner_rows(fhir: &FhirCatalog, view: ViewDefinition) -> Vec<String> {
    let snapshot = fhir.store().current(view.resource()).unwrap().unwrap();
    let mut runner = ViewRunner::new(Arc::new(view), 4);
    let mut out = Vec::new();
    let mut take = |batch: arrow::array::RecordBatch| {
        out.extend(crate::row_strings(&batch));
    };
    for path in snapshot.raw_paths() {
        // The export's files, kept as they came (plain NDJSON).
        let ndjson = std::fs::read(&path).unwrap();
        let mut bytes = &ndjson[..];
        while !bytes.is_empty() {
            let n = runner.push_ndjson(bytes).unwrap();
            bytes = &bytes[n..];
            if runner.is_full() {
                take(runner.flush().unwrap().unwrap());
            }
        }
    }
    runner.flush().unwrap().into_iter().for_each(take);
    out.sort();
    out
}

fn write_view_dir(dir: &Path, files: &[(&str, &Value)]) {
    for (name, view) in files {
        std::fs::write(dir.join(name), serde_json::to_vec_pretty(view).unwrap()).unwrap();
    }
}

#[tokio::test]
async fn a_view_is_browsable_without_an_export() {
    let server = demo().await;
    let cache = tempfile::tempdir().unwrap();
    let options = CatalogOptions::default().with_cache_dir(cache.path());
    let (ctx, fhir) = session(&server, options).await.unwrap();
    fhir.add_view(ViewDefinition::from_json(&patient_names()).unwrap())
        .unwrap();

    let tables = rows(
        &ctx,
        "SELECT table_name, table_type FROM information_schema.tables \
         WHERE table_catalog = 'src' AND table_name IN ('patient_names', 'Patient')",
    )
    .await;
    assert_eq!(tables, ["Patient|BASE TABLE", "patient_names|VIEW"]);
    let columns = rows(
        &ctx,
        "SELECT ordinal_position, column_name, data_type FROM information_schema.columns \
         WHERE table_name = 'patient_names'",
    )
    .await;
    assert_eq!(
        columns,
        [
            "0|id|Utf8",
            "1|gender|Utf8",
            "2|deceased|Boolean",
            "3|family|Utf8"
        ]
    );
    let shown = rows(&ctx, "SHOW TABLES").await;
    assert!(
        shown.contains(&"src|fhir|patient_names|VIEW".to_owned()),
        "{shown:?}"
    );
    assert_eq!(fhir.views()[0].name(), Some("patient_names"));
    assert!(server.stats().kickoffs.is_empty(), "browsing exported");
}

#[tokio::test]
async fn a_join_of_a_view_and_a_type_exports_once_and_rows_equal_the_runners() {
    let server = demo().await;
    let cache = tempfile::tempdir().unwrap();
    let view = ViewDefinition::from_json(&patient_names()).unwrap();
    let options = CatalogOptions::default()
        .with_cache_dir(cache.path())
        .with_view(view);
    let (ctx, fhir) = session(&server, options).await.unwrap();

    let join = "SELECT v.gender, count(*) FROM patient_names v \
        JOIN condition c ON c.subject_reference = concat('Patient/', v.id) GROUP BY v.gender";
    let joined = rows(&ctx, join).await;
    assert!(!joined.is_empty());
    assert_eq!(kickoff_types(&server), [["Condition", "Patient"]]);

    let viewed = rows(&ctx, "SELECT * FROM patient_names").await;
    let expected = runner_rows(&fhir, ViewDefinition::from_json(&patient_names()).unwrap());
    assert_eq!(viewed, expected);
    // One row per name: at least one per patient.
    assert!(viewed.len() >= PATIENTS, "{viewed:?}");
    // The view's ids are the flattened table's, whose gender agrees.
    let flattened = rows(&ctx, "SELECT DISTINCT p.id, p.gender FROM patient p").await;
    let mut from_view = rows(&ctx, "SELECT DISTINCT id, gender FROM patient_names").await;
    from_view.sort();
    assert_eq!(from_view, flattened);
    // The second scan reads the view's Parquet copy; nothing is exported.
    assert_eq!(rows(&ctx, join).await, joined);
    assert_eq!(server.stats().kickoffs.len(), 1);
    let snapshot = fhir.store().current("Patient").unwrap().unwrap();
    let views = snapshot.dir().parent().unwrap().join("views");
    let copies: Vec<String> = std::fs::read_dir(&views)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(copies[0].starts_with("patient_names-"), "{copies:?}");
    // The copy is a version of the view's Delta table, which another engine reads.
    let table = fhir.store().view_url("Patient", &copies[0]).unwrap();
    assert_eq!(table.to_file_path().unwrap(), views.join(&copies[0]));
    let history = fhirflight::snapshot::history(&table).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].export["view"], copies[0].as_str());
    assert_eq!(history[0].export["snapshot"], snapshot.manifest().snapshot);
    let state = datafusion::prelude::SessionContext::new().state();
    let delta = fhirflight::snapshot::open_version(&table, 0, &state).unwrap();
    let other = datafusion::prelude::SessionContext::new();
    other.register_table("v", delta).unwrap();
    let count = other.sql("SELECT count(*) FROM v").await.unwrap();
    let count = count.collect().await.unwrap();
    let count =
        arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(count[0].column(0));
    assert_eq!(count.value(0) as usize, viewed.len());
    let plan = rows(&ctx, "EXPLAIN SELECT family FROM patient_names").await;
    assert!(
        plan.iter()
            .any(|l| l.contains("views/patient_names-") && l.contains("part-0.parquet")),
        "{plan:?}"
    );
}

#[tokio::test]
async fn fhir_add_view_makes_a_table_from_sql() {
    let server = demo().await;
    let cache = tempfile::tempdir().unwrap();
    let options = CatalogOptions::default().with_cache_dir(cache.path());
    let (ctx, _fhir) = session(&server, options).await.unwrap();
    let definition = json!({
        "resourceType": "ViewDefinition", "name": "conditions", "resource": "Condition",
        "select": [{"column": [
            {"name": "id", "path": "id", "type": "id"},
            {"name": "patient", "path": "subject.getReferenceKey(Patient)", "type": "string"},
            {"name": "codes", "path": "code.coding.code", "type": "code", "collection": true}]}]
    });
    let sql = format!(
        "SELECT * FROM fhir_add_view('src', '{}')",
        definition.to_string().replace('\'', "''")
    );
    assert_eq!(
        rows(&ctx, &sql).await,
        ["conditions|Condition|id Utf8, patient Utf8, codes List(Utf8)"]
    );
    assert!(server.stats().kickoffs.is_empty());
    let counts = rows(
        &ctx,
        "SELECT (SELECT count(*) FROM conditions) AS n, (SELECT count(*) FROM condition) AS m, \
         (SELECT count(*) FROM conditions v JOIN condition c ON c.id = v.id \
          AND c.subject_reference = concat('Patient/', v.patient)) AS joined",
    )
    .await;
    let [n, m, joined]: [&str; 3] = counts[0].split('|').collect::<Vec<_>>().try_into().unwrap();
    assert_eq!((n, joined), (m, m));
    assert_ne!(n, "0");
    assert_eq!(kickoff_types(&server), [["Condition"]]);

    let bad = try_rows(
        &ctx,
        "SELECT * FROM fhir_add_view('src', '{\"resource\": \"Patient\"}')",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(bad.contains("select: expected a non-empty array"), "{bad}");
    let unknown_type = json!({"name": "x", "resource": "Nope", "select": [{"column": [{"name": "id", "path": "id"}]}]});
    let err = try_rows(
        &ctx,
        &format!("SELECT * FROM fhir_add_view('src', '{unknown_type}')"),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("resource Nope is not a resource type of"),
        "{err}"
    );
}

/// `fhir_add_view` is checked when planned and adds its view only when run: `EXPLAIN` of it
/// adds nothing (and a malformed view still fails it).
#[tokio::test]
async fn explain_of_fhir_add_view_adds_nothing() {
    let server = demo().await;
    let cache = tempfile::tempdir().unwrap();
    let options = CatalogOptions::default().with_cache_dir(cache.path());
    let (ctx, fhir) = session(&server, options).await.unwrap();
    let add = format!(
        "SELECT view, resource FROM fhir_add_view('src', '{}')",
        patient_names().to_string().replace('\'', "''")
    );
    let plan = rows(&ctx, &format!("EXPLAIN {add}")).await.join("\n");
    assert!(
        plan.contains(
            "FhirEffectExec: action=add_view, catalog=src, view=patient_names, resource=Patient"
        ),
        "{plan}"
    );
    assert!(fhir.views().is_empty());
    let missing = try_rows(&ctx, "SELECT count(*) FROM patient_names")
        .await
        .unwrap_err()
        .to_string();
    assert!(missing.contains("patient_names"), "{missing}");
    let taken = json!({"name": "patient", "resource": "Patient",
        "select": [{"column": [{"name": "id", "path": "id"}]}]});
    let err = try_rows(
        &ctx,
        &format!("EXPLAIN SELECT * FROM fhir_add_view('src', '{taken}')"),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("is taken by the resource type Patient"),
        "{err}"
    );

    assert_eq!(rows(&ctx, &add).await, ["patient_names|Patient"]);
    assert_eq!(fhir.views().len(), 1);
    assert_ne!(
        rows(&ctx, "SELECT count(*) FROM patient_names").await,
        ["0"]
    );
    assert_eq!(kickoff_types(&server), [["Patient"]]);
}

#[tokio::test]
async fn a_folder_of_views_becomes_tables() {
    let server = demo().await;
    let (cache, views) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut unnamed = patient_names();
    unnamed.as_object_mut().unwrap().remove("name");
    let genders = json!({"name": "genders", "resource": "Patient",
        "select": [{"column": [{"name": "gender", "path": "gender"}]}]});
    write_view_dir(
        views.path(),
        &[("people.json", &unnamed), ("genders.json", &genders)],
    );
    std::fs::write(views.path().join("notes.txt"), "not a view").unwrap();
    let options = CatalogOptions::default()
        .with_cache_dir(cache.path())
        .with_views(views.path());
    let (ctx, fhir) = session(&server, options).await.unwrap();
    let names: Vec<_> = fhir
        .views()
        .iter()
        .map(|v| v.name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["genders", "people"]);
    assert_eq!(
        rows(&ctx, "SELECT count(*) FROM genders").await,
        [PATIENTS.to_string()]
    );
    assert_eq!(
        rows(&ctx, "SELECT count(DISTINCT id) FROM people").await,
        [PATIENTS.to_string()]
    );
    assert_eq!(server.stats().kickoffs.len(), 1);
}

#[tokio::test]
async fn the_notebooks_shorthand_becomes_a_table() {
    let server = demo().await;
    let cache = tempfile::tempdir().unwrap();
    let shorthand = ViewDefinition::from_paths(
        "Patient",
        &[
            ("id", "id"),
            ("gender", "gender"),
            ("date_of_birth", "birthDate"),
            ("marital_status", "maritalStatus.coding[0].code"),
            ("given", "name.given"),
        ],
    )
    .unwrap()
    .with_name("patients");
    let options = CatalogOptions::default()
        .with_cache_dir(cache.path())
        .with_view(shorthand);
    let (ctx, _fhir) = session(&server, options).await.unwrap();
    // Single values unwrapped, the first of several: the flattened table's `_0` columns.
    let from_view = rows(
        &ctx,
        "SELECT id, gender, date_of_birth, marital_status, given FROM patients",
    )
    .await;
    let flattened = rows(
        &ctx,
        "SELECT id, gender, \"birthDate\", \"maritalStatus_coding_0_code\", name_0_given_0 FROM patient",
    )
    .await;
    assert_eq!(from_view.len(), PATIENTS);
    assert_eq!(from_view, flattened);
    assert!(
        from_view.iter().any(|r| r.split('|').nth(3) != Some("")),
        "some patients are married: {from_view:?}"
    );
}

#[tokio::test]
async fn malformed_views_are_errors_naming_the_file() {
    let server = demo().await;
    let (cache, views) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let options = || {
        CatalogOptions::default()
            .with_cache_dir(cache.path())
            .with_views(views.path())
    };
    let bad = json!({"name": "bad", "resource": "Patient",
        "select": [{"column": [{"name": "x", "path": "name.nope()"}]}]});
    write_view_dir(
        views.path(),
        &[("good.json", &patient_names()), ("bad.json", &bad)],
    );
    let err = session(&server, options()).await.err().unwrap().to_string();
    let file = views.path().join("bad.json");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("unknown function"), "{err}");

    std::fs::write(&file, "{ not json").unwrap();
    let err = session(&server, options()).await.err().unwrap().to_string();
    assert!(
        err.contains(&format!("{}: key must be a string", file.display())),
        "{err}"
    );

    let clash = json!({"name": "Patient", "resource": "Patient",
        "select": [{"column": [{"name": "id", "path": "id"}]}]});
    write_view_dir(views.path(), &[("bad.json", &clash)]);
    let err = session(&server, options()).await.err().unwrap().to_string();
    assert!(err.contains("bad.json"), "{err}");
    assert!(
        err.contains("is taken by the resource type Patient"),
        "{err}"
    );

    write_view_dir(views.path(), &[("bad.json", &patient_names())]);
    let err = session(&server, options()).await.err().unwrap().to_string();
    assert!(
        err.contains("good.json: view patient_names is also defined in"),
        "{err}"
    );
    assert!(err.contains("bad.json"), "{err}");
    assert!(server.stats().kickoffs.is_empty());
}
